"""Loading by Hub id or local folder, and why a load from the Hugging Face Hub failed, in one line.

transformers and datasets wrap the errors of `huggingface_hub` in their own (OSError, DatasetNotFoundError ...),
so the cause is looked for along the exception's chain. The Hub is never probed separately: offline means
HF_HUB_OFFLINE=1 or a connection error from huggingface_hub itself, which goes through the proxies and the
HF_ENDPOINT that the user configured.

The Hub failing is told apart from bad input: a server error (5xx, or 429 rate limiting) at start-up, or a server
error or a lost connection while training streams, comes after the clients' own retries (huggingface_hub's
`http_backoff`: 5 retries over about 23 s; datasets' streaming reads: 20 more for a lost connection or a 504) and
ends the run with HubUnavailableError (exit status 75: run the same command again later), never with skipped data.
"""

import os
import re

from datasets.exceptions import DatasetNotFoundError
from huggingface_hub import errors
from huggingface_hub.utils import HFValidationError, validate_repo_id

from pretraining.checkpoints import newest_valid_checkpoint
from pretraining.errors import ArgumentError, HubUnavailableError

LOGIN = "log in with `hf auth login` or set HF_TOKEN"


def causes(error: BaseException):
    """`error` and the exceptions it was raised from or during, outermost first."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def status_code(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def request_url(error: BaseException) -> str | None:
    try:
        return str(error.response.request.url)
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError for a response built without its request
        return None


# httpx's text for an error status (raise_for_status), which is all that is left of an HfHubHTTPError re-raised from
# a DataLoader worker (torch cannot rebuild it, and re-raises a RuntimeError holding the worker's traceback)
STATUS_TEXT = re.compile(r"(?:Server|Client) error '(\d{3})[^']*' for url '([^']+)'")
# an httpx error in such a worker's traceback: its class and message (huggingface_hub's client is httpx)
WORKER_HTTPX_ERROR = re.compile(r"^httpx\w*\.(\w+): (.+)$", re.M)


def server_error(error: BaseException) -> str | None:
    """"the Hub answered 500 for URL" when a server error (5xx) or rate limiting (429) is in `error`'s chain."""
    for cause in causes(error):
        code, url = status_code(cause), request_url(cause)
        if code is None and (found := STATUS_TEXT.search(str(cause))):
            code, url = int(found.group(1)), found.group(2)
        if code is not None and (code >= 500 or code == 429):
            return f"the Hub answered {code} for {url}"
    return None


def hub_outage(error: BaseException) -> str | None:
    """What failed when `error` is the Hub failing rather than the request: a server error, or a connection lost,
    refused or timed out (one of httpx's transport errors, which datasets' own ConnectionError is raised from once
    its retries are spent)."""
    answer = server_error(error)
    if answer:
        return answer
    for cause in causes(error):
        if any(kind.__name__ == "TransportError" for kind in type(cause).__mro__):
            return f"the connection to the Hub failed ({' '.join(str(cause).split())})"
        found = WORKER_HTTPX_ERROR.search(str(cause)) if str(cause).startswith("Caught ") else None
        if found and found.group(1) != "HTTPStatusError":
            return f"the connection to the Hub failed ({found.group(2)})"
    return None


def raise_if_server_error(error: BaseException, what: str) -> None:
    """Raise HubUnavailableError for loading `what` when the Hub answered a server error (after huggingface_hub's
    retries): the request was right and the same command can work later, which "cannot be reached" or "no such
    repo" would not say."""
    answer = server_error(error)
    if answer:
        raise HubUnavailableError(f"cannot load {what}: {answer}: try again later") from error


def raise_if_outage(error: BaseException, step: int, output_dir: str) -> None:
    """Raise HubUnavailableError when training stopped at `step` because the Hub failed mid-stream, past every
    retry. Nothing was skipped: the Trainer saves no checkpoint on an error, so the newest one is where a restart
    resumes, exactly."""
    outage = hub_outage(error)
    if outage is None:
        return
    checkpoint = newest_valid_checkpoint(output_dir, warn=lambda *_: None)
    restart = (f"the last checkpoint, {os.path.basename(checkpoint)}, is intact: run the same command again to "
               "resume from it" if checkpoint else "no checkpoint was saved yet: run the same command again")
    raise HubUnavailableError(f"the Hub failed while streaming the training data after step {step}: {outage}, "
                              f"after the clients' retries; {restart}") from error


def hub_problem(error: BaseException) -> tuple[str, bool] | None:
    """(a one-line reason, whether the Hub may simply not have the name) for a Hub failure somewhere in `error`'s
    chain, or None when it is no Hub failure. The flag is False where the repo exists (gated, a bad token ...)."""
    for cause in causes(error):
        if isinstance(cause, errors.GatedRepoError):
            return f"it is a gated repo: accept its conditions on its Hub page, then {LOGIN}", False
        if isinstance(cause, errors.RepositoryNotFoundError):
            return f"no such repo on the Hub (if it is private, {LOGIN})", True
        if isinstance(cause, DatasetNotFoundError):  # datasets' own, raised without the Hub's error as cause
            return str(cause).splitlines()[0], True
        if isinstance(cause, errors.RevisionNotFoundError):
            return "the repo has no such revision", False
        if isinstance(cause, errors.RemoteEntryNotFoundError):
            return "the repo has no such file", False
        if status_code(cause) == 401:
            return f"the Hub refused the credentials (401 Unauthorized): {LOGIN} with a valid token", False
        if isinstance(cause, (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError, ConnectionError)) or (
            type(cause).__name__ in ("ConnectError", "ConnectTimeout")  # httpx's, which huggingface_hub uses
        ):
            return ("the Hub cannot be reached (HF_HUB_OFFLINE=1, or no network or proxy) and it is not in the local "
                    "cache", True)
    return None


def is_path(name: str) -> bool:
    """True when `name` can only mean a local path: it exists, starts like a path, or is no valid Hub repo id."""
    if os.path.exists(name) or name.startswith((".", "/", "~")):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def from_hub_or_local(load, name: str, what: str, hint: str = "", **kwargs):
    """Call `load(name)`, turning failures into one-line errors that say what went wrong and what to do."""
    missing_folder = f"no such folder: {name}" + ("" if os.path.isabs(name) else f" (relative to {os.getcwd()})")
    if is_path(name):
        if not os.path.exists(name):
            raise ArgumentError(f"cannot load {what}: {missing_folder}")
        try:
            return load(name, **kwargs)
        except (OSError, ValueError) as err:  # the whole message: some (the tokenizer's) run over several lines
            raise ArgumentError(f"cannot load {what} from {name}: {' '.join(str(err).split())}") from err
    try:
        return load(name, **kwargs)
    except (OSError, ValueError) as err:
        raise_if_server_error(err, f"{what} {name!r}")
        reason, not_there = hub_problem(err) or (str(err).splitlines()[0], False)
        if not_there:  # a name like "org/model" is a Hub id or a relative folder: say what failed for both
            reason = f"{missing_folder}, and as a Hub id: {reason}{'; ' + hint if hint else ''}"
        raise ArgumentError(f"cannot load {what} {name!r}: {reason}") from err
