"""The Hub with the real clients against a local HTTP server that answers as the Hub does (HF_ENDPOINT points the
clients at it): failures as one-line errors (hub.py) for a gated repo, a missing repo and a refused token, and what
`--push_to_hub` uploads."""

import base64
import http.server
import json
import os
import re
import subprocess
import sys
import threading

import pytest

from helpers import ROOT, app_env, tiny_args

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

    def do_POST(self):
        """Just enough of the upload API: create a repo, check the card's YAML, every file uploaded inline
        ("regular"), the commit."""
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.startswith("/api/repos/create"):
            payload = {"url": f"http://{self.headers['Host']}/{json.loads(body)['organization']}/"
                              f"{json.loads(body)['name']}"}
        elif self.path.startswith("/api/validate-yaml"):  # the model card's metadata, checked before the upload
            payload = {"errors": [], "warnings": []}
        elif "/preupload/" in self.path:
            files = json.loads(body)["files"]
            payload = {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        elif "/commit/" in self.path:
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.server.uploaded[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            payload = {"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{'1' * 40}", "commitOid": "1" * 40,
                       "pullRequestUrl": None}
        else:
            return self.answer()
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hub():
    """(the server, its address)"""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.uploaded = {}  # path -> content of every file committed
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
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
def test_hub_failures_are_one_line_errors(flags, expected, hub, tmp_path, corpus):
    output_dir = tmp_path / "run"
    result = run_online(tiny_args(str(output_dir), *corpus) + flags, hub[1], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: "), result.stderr[-3000:]
    assert re.search(expected, error[0]), error[0]
    assert not output_dir.exists()


def test_push_to_hub_uploads_the_final_model_and_no_checkpoint(hub, tmp_path, corpus):
    """What `--push_to_hub` sends, as the Hub receives it: everything a user needs to load the model with
    trust_remote_code, and none of the checkpoints."""
    server, endpoint = hub
    output_dir = str(tmp_path / "run")
    argv = tiny_args(output_dir, *corpus, max_steps=4, save_steps=2, eval_steps=4, generation_steps=0,
                     push_to_hub="true", hub_model_id="someone/smollm2-tiny", hub_token="hf_test",
                     hub_strategy="end")
    result = run_online(argv, endpoint, tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Pushed to the Hub: someone/smollm2-tiny" in result.stdout
    uploaded = set(server.uploaded)
    assert {"model.safetensors", "config.json", "configuration_smollm2.py", "modeling_smollm2.py",
            "tokenizer.json", "tokenizer_config.json", "README.md", "generation_config.json",
            "training_log.jsonl", "training_curves.png"} <= uploaded
    assert not [path for path in uploaded if path.startswith("checkpoint-")]
    assert json.loads(server.uploaded["config.json"])["auto_map"]["AutoModelForCausalLM"].startswith("modeling_smollm2")
    assert server.uploaded["model.safetensors"] == open(os.path.join(output_dir, "model.safetensors"), "rb").read()
