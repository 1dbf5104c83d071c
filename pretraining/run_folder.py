"""An output folder belongs to one run: the check of what it holds, and the lock held for the run's life.

- A folder that holds files this app did not write (no run identity, `run_state.py`), or another run's, is refused in
  one line naming what is there, unless `--replace_output_dir` says to replace it. The starting weights are never an
  output.
- The lock (`.run.lock`, an advisory POSIX record lock that the kernel releases on any exit, a crash included) names
  the host and process that hold it: a second run on the same folder is refused, naming them. A record lock, not
  `flock`: forked children (DataLoader workers) do not inherit it, so a run killed with -9 frees its folder at once
  rather than when its orphaned workers notice and exit.

What a resume may change, and the identity that says what the run is, belong to the run state (`run_state.py`).
"""

import fcntl
import os
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from pretraining.checkpoints import find_resume_checkpoint
from pretraining.errors import ArgumentError
from pretraining.run_files import LOCK, RUN_IDENTITY


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


@dataclass
class Claim:
    """What the main process found when it claimed the folder: the checkpoint to resume from (None: step 0), or the
    error that refuses the run."""

    checkpoint: str | None = None
    error: str | None = None


@contextmanager
def claimed_output_dir(training_args, starting_points: list[str]):
    """The output folder, owned and locked by this run (on the main process) for the `with` block, and the checkpoint
    to resume from (None: step 0). Decided once, on the main process, and sent to the others: ranks that looked for
    themselves could find the folder in different states (a save or a deletion in progress) and resume from
    different steps. An error is sent too, so that every rank stops with it instead of waiting for the main one."""
    folder = OutputFolder(training_args.output_dir)
    claim = Claim()
    if training_args.process_index == 0:
        try:
            folder.lock()
            folder.check_owner(training_args.replace_output_dir, starting_points)
            if not training_args.replace_output_dir:
                claim.checkpoint = find_resume_checkpoint(
                    training_args.output_dir, training_args.resume_from_checkpoint)
        except ArgumentError as err:
            claim = Claim(error=str(err))
    if training_args.world_size > 1:
        sent = [claim]
        torch.distributed.broadcast_object_list(sent, src=0)
        claim = sent[0]
    try:
        if claim.error:
            raise ArgumentError(claim.error)
        yield folder, claim.checkpoint
    finally:
        folder.release()
