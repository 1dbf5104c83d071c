"""Checkpoint integrity, and the choice of the checkpoint a run resumes from.

The Trainer writes a checkpoint file by file with no marker of completion, and `get_last_checkpoint`
takes the highest step number whatever its state. A kill or power loss mid-save then leaves a folder
that looks like the newest checkpoint but cannot be resumed from. Here every file is flushed to disk and
a manifest with their sizes is written last, atomically; a checkpoint counts only if its manifest,
sizes, safetensors headers and trainer state all check out.
"""

import json
import os
import shutil

from safetensors import safe_open
from transformers.trainer_utils import sort_checkpoints

from pretraining.errors import ArgumentError
from pretraining.run_files import MANIFEST, TRAINER_STATE


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(checkpoint: str) -> None:
    """Flush every file of `checkpoint` to disk, then record their sizes in the manifest (atomically)."""
    files = {}
    for root, _, names in os.walk(checkpoint):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, checkpoint)
            if rel in (MANIFEST, MANIFEST + ".tmp"):
                continue
            fsync_path(path)
            files[rel] = os.path.getsize(path)
    tmp = os.path.join(checkpoint, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(checkpoint, MANIFEST))
    fsync_path(checkpoint)


def remove_manifest(checkpoint: str) -> None:
    try:
        os.remove(os.path.join(checkpoint, MANIFEST))
    except FileNotFoundError:
        return
    fsync_path(checkpoint)


def checkpoint_problem(checkpoint: str) -> str | None:
    """Why `checkpoint` cannot be resumed from, or None if it is complete."""
    try:
        with open(os.path.join(checkpoint, MANIFEST), encoding="utf-8") as f:
            files = json.load(f)["files"]
    except FileNotFoundError:
        return "no manifest (the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable manifest ({err})"
    for rel, size in files.items():
        path = os.path.join(checkpoint, rel)
        if not os.path.isfile(path):
            return f"{rel} is missing"
        if os.path.getsize(path) != size:
            return f"{rel} has {os.path.getsize(path)} bytes, expected {size} (truncated or changed)"
        if rel.endswith(".safetensors"):
            try:
                with safe_open(path, framework="pt"):
                    pass
            except Exception as err:  # safetensors raises its own error types for a bad header
                return f"{rel} is corrupt ({err})"
    if TRAINER_STATE not in files:
        return f"{TRAINER_STATE} is missing"
    if saved_step(checkpoint) is None:
        return f"{TRAINER_STATE} is unreadable"
    return None


def saved_step(folder: str) -> int | None:
    """The global step in `folder`'s trainer_state.json (a checkpoint, or a finished run's output_dir), or None."""
    try:
        with open(os.path.join(folder, TRAINER_STATE), encoding="utf-8") as f:
            return int(json.load(f)["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def newest_valid_checkpoint(output_dir: str, warn=print) -> str | None:
    """The newest complete checkpoint; each newer incomplete one is named in a warning and skipped."""
    for checkpoint in reversed(sort_checkpoints(output_dir)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        warn(f"warning: skipping {os.path.basename(checkpoint)}: {problem}")
    return None


def rotate_checkpoints(output_dir: str, save_total_limit: int | None, keep: str | None = None) -> None:
    """Delete the oldest complete checkpoints beyond `save_total_limit`, never `keep` (the best one).

    Only complete checkpoints count and are deleted: transformers' rotation counts every folder, so a newer
    incomplete one (a crash mid-save, skipped at resume) could make it delete the last valid checkpoint.
    """
    if not save_total_limit or save_total_limit <= 0:
        return
    valid = [checkpoint for checkpoint in reversed(sort_checkpoints(output_dir))
             if checkpoint_problem(checkpoint) is None]
    for checkpoint in valid[save_total_limit:]:
        if keep is None or os.path.abspath(checkpoint) != os.path.abspath(keep):
            shutil.rmtree(checkpoint, ignore_errors=True)


def find_resume_checkpoint(output_dir: str, resume_from: str | None) -> str | None:
    """`--resume_from_checkpoint PATH` if given (it must be complete), else the newest complete checkpoint of
    `output_dir` (None: start from step 0)."""
    try:
        checkpoint = resume_from or newest_valid_checkpoint(output_dir)
    except OSError as err:
        raise ArgumentError(f"cannot read output_dir {output_dir}: {err}") from None
    problem = checkpoint and checkpoint_problem(checkpoint)
    if problem:
        raise ArgumentError(f"cannot resume from {checkpoint}: {problem}")
    return checkpoint
