"""The app's error types and how a failure reaches the user: one line, a meaningful exit status.

Every command (run_pretrain.py, export.py ...) reports bad input and failures as one `error: ...` line on stderr,
with no traceback unless `--traceback` is given, and exits with a status a scheduler can act on: 2 for bad input
(fix the command), 1 for a failed run (divergence, a write that failed: a full disk), 75 when the Hub failed (retry
the same command later).
"""

import difflib
import errno
import os
import shutil
import sys

from transformers import HfArgumentParser


class ArgumentError(ValueError):
    """A command-line value that cannot work; the message names the flag and the value."""


class DataError(ValueError):
    """Bad or unreachable training data; the message names the file, line or value."""


class NonFiniteLossError(RuntimeError):
    """Training diverged: too many non-finite steps in a row."""


class SaveError(OSError):
    """A checkpoint or the final model could not be written (a full disk ...); what was there before is intact."""


def free_space(path: str) -> str:
    """The free space on `path`'s disk, for a message ('unknown' where it cannot be read)."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        free = shutil.disk_usage(path or ".").free
    except OSError:
        return "unknown"
    return f"{free / 2**30:.1f} GB" if free >= 2**30 else f"{free / 2**20:.1f} MB"


def disk_problem(err: BaseException) -> str | None:
    """A one-line account of a failed write that names the file and the free space, or None for other errors."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) and err.filename:
        return f"cannot write {err.filename}: {err.strerror} ({free_space(err.filename)} free on that disk)"
    return None


class HubUnavailableError(RuntimeError):
    """The Hub failed (server errors, connections lost) beyond the clients' retries: nothing was wrong with the
    command, and the same command can succeed later."""


EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
# sysexits.h's EX_TEMPFAIL, "temporary failure: the user is invited to retry": what a job script or a scheduler's
# requeue rule can tell apart from bad input
EXIT_TRY_AGAIN = getattr(os, "EX_TEMPFAIL", 75)


class OneLineParser(HfArgumentParser):
    """argparse prints the whole usage before an error; one line naming the problem is enough.

    Abbreviations are off: a typo (`--learning_rat`) is an error that suggests the flag meant, not another flag."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def unknown(self, arguments: list[str]) -> ArgumentError:
        """The error for arguments no flag takes, with the closest flag for a mistyped one."""
        flags = [option for action in self._actions for option in action.option_strings]
        hints = []
        for argument in arguments:
            close = difflib.get_close_matches(argument.split("=")[0], flags, n=1) if argument.startswith("--") else []
            hints += [f"{argument}: did you mean {close[0]}?"] if close else []
        return ArgumentError(f"unrecognized arguments: {' '.join(arguments)}" + (f" ({'; '.join(hints)})" if hints
                                                                                 else " (see --help)"))

    def error(self, message):
        raise ArgumentError(message)


def error_line(err: BaseException) -> str:
    """The one line that reports `err`."""
    message = disk_problem(err) or str(err)
    if isinstance(err, DataError) and message.startswith("Caught DataError"):
        # re-raised from a DataLoader worker with the worker's traceback as text: its last line is the error
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(message.split()) or type(err).__name__


def report(err: BaseException, show_traceback: bool) -> int:
    """Print `err` as one line (or re-raise it with `show_traceback`) and return the exit status: EXIT_FAILED for a
    run that failed (divergence), EXIT_TRY_AGAIN when the Hub failed, EXIT_BAD_INPUT for bad input."""
    if show_traceback:
        raise err
    print(f"error: {error_line(err)}", file=sys.stderr)
    if isinstance(err, (NonFiniteLossError, SaveError)) or disk_problem(err):
        return EXIT_FAILED
    return EXIT_TRY_AGAIN if isinstance(err, HubUnavailableError) else EXIT_BAD_INPUT
