"""Stopping on a signal: SIGTERM (a preemption) and Ctrl-C (SIGINT, a preemption you asked for) finish the current
optimizer step, save a checkpoint and stop; a second Ctrl-C aborts at once.

With several processes the signal may reach only one of them (a preempted node, a scheduler that signals one
process): the request is shared at every step end by one tiny all-reduce, so that every rank stops after the same
step and takes part in the same checkpoint. A rank that stopped alone would wait in the checkpoint's barrier while
the others wait in the next step's gradient all-reduce: a hang.

DataLoader workers ignore both signals (`ignore_stop_signals`, their `worker_init_fn`): a scheduler or a terminal
signals the whole process group, and a worker killed by it would end the run before the step does. The main process
decides. At the interpreter's exit, multiprocessing ends the workers still running with terminate(), a SIGTERM they
ignore: `kill_ignoring_workers` ends them with SIGKILL first.

transformers' `enable_jit_checkpoint` is not used: it saves before the optimizer step of a batch already taken
from the data stream (and only after a fixed 3 s wait), so a resume would skip that batch. Saving at the step
boundary keeps the resume exact.
"""

import atexit
import multiprocessing
import multiprocessing.util  # registers multiprocessing's exit handler before ours: atexit runs ours first
import os
import signal
import sys

import torch
from transformers import TrainerCallback

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# the exit status after a stop: SIGTERM's is 0 (a preemption is no failure: a scheduler must not count it as one),
# Ctrl-C's the shell's convention for an interrupted command, 128 + SIGINT
EXIT_STATUS = {signal.SIGTERM: 0, signal.SIGINT: 128 + signal.SIGINT}


def stopped_exit_status(signum: signal.Signals, world_size: int) -> int:
    """A run's exit status after a clean stop on `signum`. A rank of several exits 0 either way: torchrun's agent takes
    any rank's non-zero exit for the failure of all and SIGTERMs the others, which may still be writing the
    checkpoint; the launcher that got the Ctrl-C (launch.py) exits 130 itself."""
    return EXIT_STATUS[signum] if world_size == 1 else 0


def ignore_stop_signals(*_) -> None:
    """A DataLoader worker's `worker_init_fn`: the main process handles SIGTERM and SIGINT."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@atexit.register
def kill_ignoring_workers() -> None:
    """What multiprocessing's exit handler does to daemonic children (DataLoader workers are daemonic), with SIGKILL
    instead of SIGTERM: a worker left running (an iterator still referenced at exit) would otherwise hold the exit up
    forever in multiprocessing's join. Everything is saved by then; a worker only reads data."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join()


class StopOnSignal(TrainerCallback):
    """Installs the handlers for training's length; `received` is the signal that stopped the run (or None)."""

    def __init__(self):
        self.received = None
        self.step = 0  # the last finished step, for the abort message
        self._previous = {}
        self._group = None  # a gloo group for the flag (on_train_begin)

    def on_train_begin(self, args, state, control, **kwargs):
        self.step = state.global_step
        self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        if args.world_size > 1 and self._group is None:
            # The flag travels on the host, over gloo: read back from an all-reduce on the GPU (NCCL), it would make
            # the host wait for all queued GPU work at every step, a second sync beside the non-finite check's.
            self._group = torch.distributed.new_group(backend="gloo")

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            # a second Ctrl-C: now, without finishing the step or the save (an unfinished checkpoint has no manifest
            # and is skipped at resume); os._exit, so that no thread or worker holds the process up
            print(f"\nInterrupted again: stopped at once. The newest complete checkpoint (up to step {self.step}) is "
                  "intact: run the same command to resume.", file=sys.stderr, flush=True)
            os._exit(EXIT_STATUS[signal.SIGINT])
        if self.received is None:
            self.received = signal.Signals(signum)
            if signum == signal.SIGINT:
                print("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to stop at once, without "
                      "saving)", file=sys.stderr, flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        self.step = state.global_step
        if args.world_size > 1:
            flag = torch.tensor([float(self.received or 0)])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group)
            if flag.item() and self.received is None:
                self.received = signal.Signals(int(flag.item()))
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
