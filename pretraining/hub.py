"""Loading by Hub id or local folder, and why a load from the Hugging Face Hub failed, in one line.

transformers and datasets wrap the errors of `huggingface_hub` in their own (OSError, DatasetNotFoundError ...),
so the cause is looked for along the exception's chain. The Hub is never probed separately: offline means
HF_HUB_OFFLINE=1 or a connection error from huggingface_hub itself, which goes through the proxies and the
HF_ENDPOINT that the user configured.
"""

import os

from datasets.exceptions import DatasetNotFoundError
from huggingface_hub import errors
from huggingface_hub.utils import HFValidationError, validate_repo_id

from pretraining.errors import ArgumentError

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
        reason, not_there = hub_problem(err) or (str(err).splitlines()[0], False)
        if not_there:  # a name like "org/model" is a Hub id or a relative folder: say what failed for both
            reason = f"{missing_folder}, and as a Hub id: {reason}{'; ' + hint if hint else ''}"
        raise ArgumentError(f"cannot load {what} {name!r}: {reason}") from err
