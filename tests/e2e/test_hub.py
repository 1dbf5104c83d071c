"""The Hub with the real clients against the local Hub (`local_hub` fixture, HF_ENDPOINT pointing at it): failures as
one-line errors (hub.py) for a gated repo, a missing repo, a refused token and a server error, and `--push_to_hub`:
what it uploads, and that a fresh process then loads the model by its repo id."""

import json
import os
import re
import subprocess
import sys

import pytest

from helpers import hub_env, run_app, tiny_args

# repo -> (status, X-Error-Code, X-Error-Message): the headers huggingface_hub reads its error class from (an
# unknown repo, such as someone/missing, is answered 404 RepoNotFound)
REFUSALS = {
    "someone/gated": (403, "GatedRepo", "Access to model someone/gated is restricted."),
    "someone/private": (401, None, "Invalid credentials in Authorization header"),
    "someone/down": (500, None, "Internal Error - We're working hard to fix this as soon as possible!"),
}


@pytest.fixture(scope="module")
def hub(local_hub):
    for repo, answer in REFUSALS.items():
        local_hub.refuse(repo, *answer)
    return local_hub


@pytest.mark.parametrize("flags, status, expected", [
    (["--tokenizer_name", "someone/gated"], 2,
     r"cannot load tokenizer 'someone/gated': it is a gated repo: accept its conditions on its Hub page, then log in"),
    (["--tokenizer_name", "someone/missing"], 2,
     r"cannot load tokenizer 'someone/missing': no such folder: someone/missing \(relative to .*\), and as a Hub id: "
     r"no such repo on the Hub"),
    (["--tokenizer_name", "someone/private"], 2,
     r"cannot load tokenizer 'someone/private': the Hub refused the credentials \(401 Unauthorized\)"),
    (["--train_file", "", "--dataset_name", "someone/missing", "--dataset_config_name", "main"], 2,
     r"cannot load dataset 'someone/missing' \(main\): Dataset 'someone/missing' doesn't exist on the Hub.*; use "
     r"local files with --train_file"),
    # after huggingface_hub's retries (about 23 s): not "cannot be reached", and exit 75, try again later
    (["--train_file", "", "--dataset_name", "someone/down", "--dataset_config_name", "main"], 75,
     r"cannot load dataset 'someone/down' \(main\): the Hub answered 500 for http://127\.0\.0\.1:\d+/datasets/"
     r"someone/down/resolve/main/README\.md: try again later$"),
], ids=["gated", "missing", "bad token", "missing dataset", "server error"])
def test_hub_failures_are_one_line_errors(flags, status, expected, hub, tmp_path, corpus):
    output_dir = tmp_path / "run"
    result = run_app(tiny_args(str(output_dir), *corpus) + flags, env=hub_env(hub, tmp_path / "hf_home"))
    assert result.returncode == status, result.stderr[-3000:]
    # the last line; before it, huggingface_hub's warnings about its retries, if any
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [result.stderr.strip().splitlines()[-1]] and "Traceback" not in result.stderr, result.stderr
    assert re.search(expected, errors[0]), errors[0]
    assert not output_dir.exists()


def test_push_to_hub_uploads_the_final_model_that_loads_by_repo_id(hub, tmp_path, corpus):
    """What `--push_to_hub` sends, as the Hub receives it: everything a user needs to load the model with
    trust_remote_code, and none of the checkpoints; then a fresh process, in another folder, loads it by its repo
    id from the Hub (weights, remote code and tokenizer downloaded) and gets the run's weights."""
    output_dir = str(tmp_path / "run")
    argv = tiny_args(output_dir, *corpus, max_steps=4, save_steps=2, eval_steps=4, generation_steps=0,
                     push_to_hub="true", hub_model_id="someone/smollm2-tiny", hub_token="hf_test",
                     hub_strategy="end")
    env = hub_env(hub, tmp_path / "hf_home")
    result = run_app(argv, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Pushed to the Hub: someone/smollm2-tiny" in result.stdout
    repo = hub.repo_folder("model", "someone/smollm2-tiny")
    uploaded = set(os.listdir(repo))
    assert {"model.safetensors", "config.json", "configuration_smollm2.py", "modeling_smollm2.py", "smollm2_ops.py",
            "tokenizer.json", "tokenizer_config.json", "README.md", "generation_config.json",
            "training_log.jsonl", "training_curves.png"} <= uploaded
    assert not [path for path in uploaded if path.startswith("checkpoint-")]
    with open(os.path.join(repo, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["auto_map"]["AutoModelForCausalLM"].startswith("modeling_smollm2")
    loaded = subprocess.run([sys.executable, "-c", (
        "import sys, torch; from safetensors.torch import load_file\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained('someone/smollm2-tiny', trust_remote_code=True)\n"
        "tokenizer = AutoTokenizer.from_pretrained('someone/smollm2-tiny')\n"
        "saved = load_file(sys.argv[1])\n"
        "state = model.state_dict()\n"
        "assert all(torch.equal(state[name], tensor) for name, tensor in saved.items()), 'other weights'\n"
        "print(type(model).__module__, len(tokenizer))"), os.path.join(output_dir, "model.safetensors")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    module, vocabulary = loaded.stdout.split()
    # the model's code came from the Hub repo (transformers' dynamic modules), not from this project's folder
    assert module.startswith("transformers_modules.") and vocabulary == "49152", loaded.stdout
