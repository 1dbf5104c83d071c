"""What stopping on a signal needs around the callback that does it (`callbacks.StopOnSignal`: SIGTERM, a preemption,
and Ctrl-C, a preemption you asked for, finish the current optimizer step, save a checkpoint and stop): the exit
statuses, and the DataLoader workers' part.

DataLoader workers ignore both signals (`ignore_stop_signals`, their `worker_init_fn`): a scheduler or a terminal
signals the whole process group, and a worker killed by it would end the run before the step does. The main process
decides. At the interpreter's exit, multiprocessing ends the workers still running with terminate(), a SIGTERM they
ignore: `kill_ignoring_workers` ends them with SIGKILL first.
"""

import atexit
import multiprocessing
import multiprocessing.util  # registers multiprocessing's exit handler before ours: atexit runs ours first
import signal

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
