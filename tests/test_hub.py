"""Hub failures as one-line errors (hub.py), with the real clients against a local HTTP server that answers as the
Hub does for a gated repo, a missing repo and a refused token (HF_ENDPOINT points the clients at it)."""

import http.server
import os
import re
import subprocess
import sys
import threading

import pytest

from apprun import app_env, tiny_args
from conftest import ROOT

# repo -> (status, X-Error-Code, X-Error-Message), the headers huggingface_hub reads its error class from
ANSWERS = {
    "someone/gated": (403, "GatedRepo", "Access to model someone/gated is restricted."),
    "someone/missing": (404, "RepoNotFound", "Repository not found"),
    "someone/private": (401, None, "Invalid credentials in Authorization header"),
}


class FakeHub(http.server.BaseHTTPRequestHandler):
    def answer(self):
        repo = next((repo for repo in ANSWERS if repo in self.path), None)
        status, code, message = ANSWERS.get(repo, (404, "RepoNotFound", "Repository not found"))
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hub_endpoint():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def run_online(argv, endpoint, tmp_path):
    env = dict(app_env(), HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"))
    env.pop("HF_HUB_OFFLINE")
    env.pop("HF_DATASETS_OFFLINE")
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_pretrain.py"), *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flags, expected", [
    (["--tokenizer_name", "someone/gated"],
     r"cannot load tokenizer 'someone/gated': it is a gated repo: accept its conditions on its Hub page, then log in"),
    (["--tokenizer_name", "someone/missing"],
     r"cannot load tokenizer 'someone/missing': no such folder: someone/missing \(relative to .*\), and as a Hub id: "
     r"no such repo on the Hub"),
    (["--tokenizer_name", "someone/private"],
     r"cannot load tokenizer 'someone/private': the Hub refused the credentials \(401 Unauthorized\)"),
    (["--train_file", "", "--dataset_name", "someone/missing", "--dataset_config_name", "main"],
     r"cannot load dataset 'someone/missing' \(main\): Dataset 'someone/missing' doesn't exist on the Hub.*; use "
     r"local files with --train_file"),
], ids=["gated", "missing", "bad token", "missing dataset"])
def test_hub_failures_are_one_line_errors(flags, expected, hub_endpoint, tmp_path, corpus):
    output_dir = tmp_path / "run"
    result = run_online(tiny_args(str(output_dir), *corpus) + flags, hub_endpoint, tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: "), result.stderr[-3000:]
    assert re.search(expected, error[0]), error[0]
    assert not output_dir.exists()
