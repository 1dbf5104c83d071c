"""Checkpoint integrity (manifest, sizes, headers, trainer state) and rotation among complete checkpoints only."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from pretraining.checkpoints import (checkpoint_problem, newest_valid_checkpoint, rotate_checkpoints, saved_step,
                                     write_manifest)


def make_checkpoint(output_dir, step, complete=True):
    folder = os.path.join(output_dir, f"checkpoint-{step}")
    os.makedirs(folder)
    save_file({"weight": torch.ones(4)}, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "trainer_state.json"), "w") as f:
        json.dump({"global_step": step}, f)
    if complete:
        write_manifest(folder)
    return folder


def test_a_checkpoint_is_complete_only_with_its_manifest_sizes_headers_and_state(tmp_path):
    folder = make_checkpoint(str(tmp_path), 4)
    assert checkpoint_problem(folder) is None and saved_step(folder) == 4
    with open(os.path.join(folder, "extra.bin"), "wb") as f:  # a file the manifest does not list: ignored
        f.write(b"x")
    assert checkpoint_problem(folder) is None
    weights = os.path.join(folder, "model.safetensors")
    size = os.path.getsize(weights)
    os.truncate(weights, size - 1)
    assert checkpoint_problem(folder) == f"model.safetensors has {size - 1} bytes, expected {size} (truncated or changed)"
    with open(weights, "r+b") as f:  # the right size, a garbled header
        f.write(b"\xff" * 16)
    os.truncate(weights, size)
    assert checkpoint_problem(folder).startswith("model.safetensors is corrupt")
    os.remove(weights)
    assert checkpoint_problem(folder) == "model.safetensors is missing"
    assert checkpoint_problem(make_checkpoint(str(tmp_path), 8, complete=False)) == "no manifest (the save did not finish)"


def test_the_newest_complete_checkpoint_is_chosen_and_newer_incomplete_ones_named(tmp_path):
    output_dir = str(tmp_path)
    for step in (2, 10):
        make_checkpoint(output_dir, step)
    make_checkpoint(output_dir, 12, complete=False)
    warnings = []
    assert newest_valid_checkpoint(output_dir, warn=warnings.append) == os.path.join(output_dir, "checkpoint-10")
    assert warnings == ["warning: skipping checkpoint-12: no manifest (the save did not finish)"]
    assert newest_valid_checkpoint(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("limit, kept", [(1, [12, 100]), (2, [9, 12, 100]), (None, [2, 9, 12, 100])])
def test_rotation_counts_and_deletes_complete_checkpoints_only(tmp_path, limit, kept):
    """Numerically ordered (9 before 12), the best one kept, a newer incomplete one neither counted nor deleted."""
    output_dir = str(tmp_path)
    for step in (2, 9, 12):
        make_checkpoint(output_dir, step)
    make_checkpoint(output_dir, 100, complete=False)
    rotate_checkpoints(output_dir, limit)
    assert steps(output_dir) == kept


def test_rotation_never_deletes_the_best_checkpoint(tmp_path):
    output_dir = str(tmp_path)
    for step in (2, 9, 12):
        make_checkpoint(output_dir, step)
    rotate_checkpoints(output_dir, 1, keep=os.path.join(output_dir, "checkpoint-2"))
    assert steps(output_dir) == [2, 12]


def steps(output_dir):
    return sorted(int(name.split("-")[1]) for name in os.listdir(output_dir))
