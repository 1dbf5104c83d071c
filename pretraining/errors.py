"""The app's error types and how a failure reaches the user: one line, a meaningful exit status.

Every command (run_pretrain.py, export.py ...) reports bad input and failures as one `error: ...` line on stderr,
with no traceback unless `--traceback` is given, and exits with a status a scheduler can act on: 2 for bad input
(fix the command), 1 for a failed run (divergence), 75 when the Hub failed (retry the same command later).
"""

import os
import sys

from transformers import HfArgumentParser


class ArgumentError(ValueError):
    """A command-line value that cannot work; the message names the flag and the value."""


class DataError(ValueError):
    """Bad or unreachable training data; the message names the file, line or value."""


class NonFiniteLossError(RuntimeError):
    """Training diverged: too many non-finite steps in a row."""


class HubUnavailableError(RuntimeError):
    """The Hub failed (server errors, connections lost) beyond the clients' retries: nothing was wrong with the
    command, and the same command can succeed later."""


EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
# sysexits.h's EX_TEMPFAIL, "temporary failure: the user is invited to retry": what a job script or a scheduler's
# requeue rule can tell apart from bad input
EXIT_TRY_AGAIN = getattr(os, "EX_TEMPFAIL", 75)


class OneLineParser(HfArgumentParser):
    """argparse prints the whole usage before an error; one line naming the problem is enough."""

    def error(self, message):
        raise ArgumentError(message)


def error_line(err: BaseException) -> str:
    """The one line that reports `err`."""
    message = str(err)
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
    if isinstance(err, NonFiniteLossError):
        return EXIT_FAILED
    return EXIT_TRY_AGAIN if isinstance(err, HubUnavailableError) else EXIT_BAD_INPUT
