"""torchrun, with a clean stop: SIGTERM (a preemption) or Ctrl-C sent to the launcher reaches every rank, which
finishes its step and saves a checkpoint, and the launcher then exits 0 for SIGTERM, 130 for Ctrl-C.

    python launch.py --nproc_per_node 8 run_pretrain.py configs/smollm2-135m.yaml    # any torchrun flags

torchrun itself forwards SIGTERM to the ranks too, but then raises (a traceback, exit 1) whatever they did, so a
scheduler that signals it records a failure; Ctrl-C gives a traceback. This is torchrun (`torch.distributed.run`,
every flag the same), but for who handles those two signals: here, this process, which passes each on to the ranks
and waits for them (a second Ctrl-C stops them at once).
"""

import os
import signal
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun

FORWARDED = (signal.SIGTERM, signal.SIGINT)


def ranks() -> list[int]:
    """The processes this launcher started (torch's agent starts the ranks as its children)."""
    pids = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{task}/children", encoding="ascii") as f:
            pids += [int(pid) for pid in f.read().split()]
    return pids


class Forwarder:
    def __init__(self):
        self.received = []

    def __call__(self, signum, frame):
        self.received.append(signum)
        for pid in ranks():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:  # already gone
                pass


def main(argv: list[str]) -> int:
    if any(arg.startswith(("--signals-to-handle", "--signals_to_handle")) for arg in argv):
        print("error: launch.py handles SIGTERM and SIGINT itself: leave out --signals-to-handle", file=sys.stderr)
        return 2
    forward = Forwarder()
    for signum in FORWARDED:
        signal.signal(signum, forward)
    interrupted = 128 + signal.SIGINT
    try:
        # torch's agent leaves SIGTERM and SIGINT alone (it would raise on them), and handles the rest as torchrun
        torchrun(["--signals-to-handle", "SIGHUP,SIGQUIT", *argv])
    except ChildFailedError as err:
        # a second Ctrl-C: the ranks exit 130 at once (the agent SIGTERMs any that is not gone yet)
        if signal.SIGINT in forward.received and all(failure.exitcode in (interrupted, -signal.SIGTERM)
                                                     for failure in err.failures.values()):
            print("Stopped at once by a second Ctrl-C (see above); run the same command to resume.", file=sys.stderr)
            return interrupted
        raise
    if signal.SIGINT in forward.received:  # the ranks stopped cleanly (and exit 0 under torchrun: signals.py)
        print("Stopped by Ctrl-C on every rank (see above); run the same command to resume.", file=sys.stderr)
        return interrupted
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
