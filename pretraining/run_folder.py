"""An output folder belongs to one run: its identity (what defines the run), the lock held for the run's life, and
what a resume may change.

- A folder that holds files this app did not write, or another run's (another identity), is refused in one line
  naming what is there, unless `--replace_output_dir` says to replace it. The starting weights are never an output.
- The lock (`.run.lock`, an advisory POSIX record lock that the kernel releases on any exit, a crash included) names
  the host and process that hold it: a second run on the same folder is refused, naming them. A record lock, not
  `flock`: forked children (DataLoader workers) do not inherit it, so a run killed with -9 frees its folder at once
  rather than when its orphaned workers notice and exit.
- The identity (`run_identity.json`, in the folder and in every checkpoint) records what defines the run: the
  model's shape, the tokenizer, the data, the batch layout, the schedule. A resume with another value of any of
  them is refused, listing old and new values; `--allow_changes data,schedule,batch` takes the changes it names
  from the resumed step on (the model and tokenizer never change), and the identity records each segment.
"""

import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager

import torch

from pretraining.checkpoints import find_resume_checkpoint
from pretraining.errors import ArgumentError
from pretraining.run_files import LOCK, RUN_IDENTITY, written_atomically

# what a resume may change with --allow_changes, and what it means
CHANGEABLE = {
    "data": "the data stream starts afresh on the new data (its position in the old data is not used)",
    "schedule": "the new optimizer settings and learning-rate schedule apply from the resumed step",
    "batch": "the new batch layout applies from the resumed step",
}
# the identity's parts, and the flags (ModelArguments, DataArguments, PretrainingArguments) that make each
DATA_FLAGS = ("dataset_name", "dataset_config_name", "train_file", "validation_file", "text_column", "block_size",
              "validation_documents", "dataset_mixture", "data_stages", "document_masking", "shuffle_buffer",
              "shuffle_shards")
SCHEDULE_FLAGS = ("learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "decay_steps",
                  "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim")
BATCH_FLAGS = ("per_device_train_batch_size", "gradient_accumulation_steps")
# the config's own fields that are no part of the architecture
NOT_ARCHITECTURE = ("use_cache",)


def run_identity(config, tokenizer, model_args, data_args, training_args) -> dict:
    """What defines a run, as JSON values: a resume must find the same (or be allowed the changes)."""
    vocabulary = json.dumps(sorted(tokenizer.get_vocab().items())).encode()
    settings = lambda names, args: {name: jsonable(getattr(args, name)) for name in names}  # noqa: E731
    architecture = config.to_dict()  # the fields SmolLM2Config declares: the model's shape (not id2label & co)
    identity = {
        "model": {key: architecture[key] for key in sorted(type(config).__annotations__) if key in architecture
                  and key not in NOT_ARCHITECTURE},
        "tokenizer": {"name": model_args.tokenizer_name, "tokens": len(tokenizer),
                      "vocabulary sha256": hashlib.sha256(vocabulary).hexdigest()},
        "data": {**settings(DATA_FLAGS, data_args), "seed": training_args.seed},
        "schedule": settings(SCHEDULE_FLAGS, training_args),
        "batch": {**settings(BATCH_FLAGS, training_args), "world_size": training_args.world_size},
    }
    return json.loads(json.dumps(identity))  # as the file holds it (tuples as lists, keys as strings)


def jsonable(value):
    value = getattr(value, "value", value)  # enums (lr_scheduler_type, optim)
    return value if isinstance(value, (str, int, float, bool, list, dict, type(None))) else str(value)


def changes(old: dict, new: dict) -> dict[str, list[str]]:
    """Per part of the identity, the settings whose values differ: 'name: old -> new'."""
    found = {}
    for part in new:
        before, after = old.get(part, {}), new[part]
        differing = [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(set(before) | set(after))
                     if before.get(key) != after.get(key)]
        if differing:
            found[part] = differing
    return found


def read_identity(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, RUN_IDENTITY), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ArgumentError(f"cannot read {os.path.join(folder, RUN_IDENTITY)}: {err}") from None


def write_identity(folder: str, record: dict) -> None:
    """Atomically: a crash leaves the old record or the new one."""
    with written_atomically(os.path.join(folder, RUN_IDENTITY)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)


def check_resume(record: dict, identity: dict, allowed: set[str], checkpoint: str, step: int) -> list[str]:
    """The parts that changed since `checkpoint` and are allowed; refuses, in one line, what is not. `record` is
    the run's identity file: its newest segment is what the checkpoint was trained with."""
    found = changes(record["segments"][-1]["identity"], identity)
    never = {part: found.pop(part) for part in ("model", "tokenizer") if part in found}
    if never:
        listed = "; ".join(item for part in never.values() for item in part)
        raise ArgumentError(f"cannot resume from {checkpoint}: this command has another model or tokenizer ({listed}); "
                            "a run's weights keep their shape and vocabulary: use another --output_dir (to start "
                            f"from these weights, --model_name_or_path {checkpoint})")
    if any(item.startswith("world_size:") for item in found.get("batch", ())):
        raise ArgumentError(f"cannot resume from {checkpoint} with another number of processes "
                            f"({'; '.join(found['batch'])}): each rank's data position is its own")
    refused = {part: items for part, items in found.items() if part not in allowed}
    if refused:
        listed = "; ".join(f"{part}: {', '.join(items)}" for part, items in refused.items())
        raise ArgumentError(f"cannot resume from {checkpoint} with other settings than its run's ({listed}): run the "
                            f"same command, or pass --allow_changes {','.join(refused)} to take them from step "
                            f"{step} on")
    return sorted(found)


class OutputFolder:
    """The run's output_dir: its owner checked, and locked for the run's life."""

    def __init__(self, path: str):
        self.path = path
        self.lock_file = None
        self.created = False  # the folder did not exist: a run refused before writing removes it again

    def check_owner(self, replace: bool, starting_points: list[str]) -> None:
        """Refuse a folder of files this app did not write (unless `replace`), and a folder that holds the starting
        weights (always). Reads only."""
        here = os.path.realpath(self.path)
        for start in starting_points:
            if start and os.path.exists(start) and os.path.commonpath([here, os.path.realpath(start)]) == here:
                raise ArgumentError(f"--output_dir {self.path} holds the starting weights {start}: the starting "
                                    "weights are never an output; choose another --output_dir")
        names = sorted(name for name in os.listdir(self.path) if name != LOCK)
        if names and RUN_IDENTITY not in names and not replace:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise ArgumentError(f"output_dir {self.path} holds files this app did not write ({shown}): pass "
                                "--replace_output_dir to replace them, or choose another --output_dir")

    def clear(self) -> None:
        """`--replace_output_dir`: remove what the folder holds (the lock aside)."""
        for name in os.listdir(self.path):
            if name != LOCK:
                target = os.path.join(self.path, name)
                shutil.rmtree(target) if os.path.isdir(target) and not os.path.islink(target) else os.remove(target)

    def lock(self) -> None:
        """Take the lock, creating the folder; refuse, naming the holder, when another run has it."""
        self.created = not os.path.exists(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
            path = os.path.join(self.path, LOCK)
            while True:
                lock_file = open(path, "a+", encoding="utf-8")
                try:
                    fcntl.lockf(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except (BlockingIOError, PermissionError):  # EAGAIN or EACCES, as the system reports a held lock
                    lock_file.seek(0)
                    holder = lock_file.read().strip() or "another process"
                    lock_file.close()
                    raise ArgumentError(f"output_dir {self.path} is in use by another run ({holder}): wait for it "
                                        "to end, or choose another --output_dir") from None
                # the holder before may have removed the file between our open and our lock: lock the file there is
                if os.path.exists(path) and os.stat(path).st_ino == os.fstat(lock_file.fileno()).st_ino:
                    break
                lock_file.close()
            lock_file.seek(0)
            lock_file.truncate()
            lock_file.write(f"host {socket.gethostname()}, pid {os.getpid()}, since "
                            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            lock_file.flush()
        except OSError as err:
            raise ArgumentError(f"output_dir {self.path} is not writable: {err.strerror or err}") from None
        self.lock_file = lock_file

    def release(self) -> None:
        if self.lock_file is None:
            return
        os.remove(os.path.join(self.path, LOCK))  # while still held: a run waiting for it re-checks the file
        self.lock_file.close()
        self.lock_file = None
        if self.created and not os.listdir(self.path):
            os.rmdir(self.path)  # refused before it wrote anything: as if it had never started


@contextmanager
def claimed_output_dir(training_args, starting_points: list[str]):
    """The output folder, owned and locked by this run (on the main process) for the `with` block, and the checkpoint
    to resume from (None: step 0). Decided once, on the main process, and sent to the others: ranks that looked for
    themselves could find the folder in different states (a save or a deletion in progress) and resume from
    different steps. An error is sent too, so that every rank stops with it instead of waiting for the main one."""
    folder = OutputFolder(training_args.output_dir)
    choice = [None, None]  # (checkpoint, error)
    if training_args.process_index == 0:
        try:
            folder.lock()
            folder.check_owner(training_args.replace_output_dir, starting_points)
            if not training_args.replace_output_dir:
                choice[0] = find_resume_checkpoint(training_args.output_dir, training_args.resume_from_checkpoint)
        except ArgumentError as err:
            choice = [None, str(err)]
    if training_args.world_size > 1:
        torch.distributed.broadcast_object_list(choice, src=0)
    try:
        if choice[1]:
            raise ArgumentError(choice[1])
        yield folder, choice[0]
    finally:
        folder.release()
