"""hub.py's reading of Hub failures: a server error or a lost connection is an outage (exit 75, try again), told
apart from what the user asked for (a missing repo: bad input), also when a DataLoader worker re-raises it as text.
The errors are huggingface_hub's and httpx's own, built by their code from responses (no server is needed in
process: the tests run with HF_HUB_OFFLINE=1; the e2e tests get them from the local Hub)."""

import pytest
from huggingface_hub.utils import hf_raise_for_status, httpx

from pretraining.errors import EXIT_TRY_AGAIN, HubUnavailableError, report
from pretraining.hub import hub_outage, raise_if_outage, raise_if_server_error, server_error

URL = "http://127.0.0.1:1234/datasets/HuggingFaceTB/smollm-corpus/resolve/main/cosmopedia-v2/train-00003-of-00104.parquet"


def hub_error(status: int) -> Exception:
    """What huggingface_hub raises for a response with `status` (HfHubHTTPError, RepositoryNotFoundError ...)."""
    headers = {"X-Error-Code": "RepoNotFound"} if status == 404 else {}
    response = httpx.Response(status, headers=headers, request=httpx.Request("GET", URL))
    with pytest.raises(Exception) as raised:
        hf_raise_for_status(response)
    return raised.value


def from_a_worker(error: Exception) -> Exception:
    """`error` as the DataLoader re-raises it in the main process (torch's ExceptionWrapper)."""
    from torch._utils import ExceptionWrapper

    try:
        raise error
    except Exception:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(Exception) as raised:
        wrapper.reraise()
    return raised.value


def lost_connection() -> Exception:
    """datasets' ConnectionError once its read retries are spent, raised from httpx's error."""
    try:
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
    except httpx.RemoteProtocolError as err:
        try:
            raise ConnectionError("Server Disconnected") from err
        except ConnectionError as outer:
            return outer


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_server_error_is_an_outage_with_its_status_and_url(status):
    assert server_error(hub_error(status)) == f"the Hub answered {status} for {URL}"
    assert hub_outage(hub_error(status)) == f"the Hub answered {status} for {URL}"


def test_an_error_status_re_raised_by_a_dataloader_worker_is_read_from_its_text():
    error = from_a_worker(hub_error(500))
    assert type(error) is RuntimeError  # torch cannot rebuild an HfHubHTTPError, which needs its response
    assert hub_outage(error) == f"the Hub answered 500 for {URL}"


def test_a_lost_connection_is_an_outage():
    assert hub_outage(lost_connection()) == ("the connection to the Hub failed (peer closed connection without "
                                             "sending complete message body)")
    # from a DataLoader worker only the text is left
    assert hub_outage(from_a_worker(lost_connection())) == hub_outage(lost_connection())
    assert hub_outage(ConnectionError("Connection reset by peer")) is None  # not the Hub's: a collective's, say


def test_what_the_user_asked_for_is_no_outage():
    assert hub_outage(hub_error(404)) is None and server_error(hub_error(404)) is None
    assert hub_outage(ValueError("block_size must be positive")) is None
    raise_if_server_error(hub_error(401), "tokenizer 'someone/private'")  # not raised: bad input, reported elsewhere


def test_a_server_error_at_start_up_says_try_again_later():
    with pytest.raises(HubUnavailableError, match=r"^cannot load tokenizer 'org/name': the Hub answered 502 for "
                                                  rf"{URL}: try again later$"):
        raise_if_server_error(hub_error(502), "tokenizer 'org/name'")


def test_an_outage_mid_run_names_the_step_and_what_to_do(tmp_path, capsys):
    raise_if_outage(ValueError("not the Hub"), 7, str(tmp_path))  # anything else goes on as it was
    with pytest.raises(HubUnavailableError) as raised:
        raise_if_outage(lost_connection(), 7, str(tmp_path))
    assert str(raised.value) == ("the Hub failed while streaming the training data after step 7: the connection to "
                                 "the Hub failed (peer closed connection without sending complete message body), "
                                 "after the clients' retries; no checkpoint "
                                 "was saved yet: run the same command again")
    assert report(raised.value, show_traceback=False) == EXIT_TRY_AGAIN == 75
    assert capsys.readouterr().err == f"error: {raised.value}\n"

