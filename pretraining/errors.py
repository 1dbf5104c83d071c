"""The app's error types and how a failure reaches the user: one line, a meaningful exit status.

Every command (run_pretrain.py, export.py ...) reports bad input and failures as one `error: ...` line on stderr,
with no traceback unless `--traceback` is given, and exits 2 for bad input, 1 for a failed run.
"""

import sys

from transformers import HfArgumentParser


class ArgumentError(ValueError):
    """A command-line value that cannot work; the message names the flag and the value."""


class DataError(ValueError):
    """Bad or unreachable training data; the message names the file, line or value."""


class NonFiniteLossError(RuntimeError):
    """Training diverged: too many non-finite steps in a row."""


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
    """Print `err` as one line (or re-raise it with `show_traceback`) and return the exit status: 1 for a run that
    failed (divergence), 2 for bad input."""
    if show_traceback:
        raise err
    print(f"error: {error_line(err)}", file=sys.stderr)
    return 1 if isinstance(err, NonFiniteLossError) else 2
