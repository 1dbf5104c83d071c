"""A full disk while saving: one line naming the checkpoint, the error and the free space, a non-zero exit, the
newest complete checkpoint intact and nothing half-written left behind; once there is room, the same command
resumes. On a small tmpfs (skipped where mounting one is not allowed)."""

import os
import subprocess

import pytest

from helpers import read_log, run_here, tiny_args
from pretraining.checkpoints import checkpoint_problem


@pytest.fixture
def small_disk(tmp_path):
    """A 60 MB tmpfs: the tiny model's first checkpoint (about 40 MB: weights, AdamW's moments) fits, not a second."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not allowed here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_one_line_and_the_rerun_resumes_once_there_is_room(small_disk, corpus):
    output_dir = str(small_disk / "run")
    argv = tiny_args(output_dir, *corpus, max_steps=8, save_steps=2)
    result = run_here(argv)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert error[0].startswith(f"error: cannot save {output_dir}/checkpoint-4: ")
    assert " free on that disk); the newest complete checkpoint, checkpoint-2, is intact: make room and run the same " \
           "command to resume" in error[0]
    assert checkpoint_problem(os.path.join(output_dir, "checkpoint-2")) is None
    assert not os.path.exists(os.path.join(output_dir, "checkpoint-4"))  # the half-written one is gone
    assert not [name for name in os.listdir(output_dir) if name.endswith(".tmp") or name.startswith(".final")]

    # again while full: the same line, nothing new left behind
    again = run_here(argv)
    assert again.returncode == 1 and "cannot save" in again.stderr and again.stderr.count("\n") == 1
    assert not [name for name in os.listdir(output_dir) if name.endswith(".tmp")]

    subprocess.run(["mount", "-o", "remount,size=400m", str(small_disk)], check=True)  # room again
    resumed = run_here(argv)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "Resuming from checkpoint-2" in resumed.stdout
    assert [row["step"] for row in read_log(output_dir, "train")] == list(range(1, 9))
