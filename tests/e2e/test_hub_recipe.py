"""The default recipe's real code path, offline: `python run_pretrain.py` with no data, tokenizer or model flags
streams HuggingFaceTB/smollm-corpus (cosmopedia-v2) and loads the tokenizer HuggingFaceTB/SmolLM2-135M from the Hub,
here the local Hub (`local_hub` fixture: the real clients over HTTP, HF_ENDPOINT pointing at it). Each run is the
README's command with only the sizes changed (`hub_recipe_args`: the tiny model, blocks of 64, a few steps).

Streaming, evaluation and checkpoints; an exact resume after kill -9 that reads no finished shard again; two ranks
reading disjoint shards; continued pretraining from the official weights; a mixture of the repo's two configs; the
Hub failing mid-stream, briefly (retried, nothing lost) and for longer than the retries (exit 75, checkpoint intact,
the same command resumes exactly).
"""

import glob
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

from helpers import (hub_env, hub_recipe_args, losses, read_log, run_app, run_torchrun, start_app,
                     wait_for_step)
from local_hub import CORPUS_REPO, MODEL_REPO, Request, downloads
from pretraining.checkpoints import checkpoint_problem

COSMOPEDIA = "cosmopedia-v2/*"
# A pass over cosmopedia-v2's 104 shards here is about 200 steps of 4 x 64 tokens. The shuffled stream reads 8 shards at
# a time through a buffer of 32 documents (hub_recipe_args), so shards are downloaded as the run goes on, and a
# resume opens again only the shards that were open at its checkpoint.
STEPS = {"max_steps": 60, "save_steps": 20, "eval_steps": 30, "generation_steps": 0, "logging_steps": 1}


@dataclass
class HubRun:
    output_dir: str
    argv: list[str]
    result: subprocess.CompletedProcess
    requests: list[Request]  # what the run asked of the Hub


def shard_bytes(requests: list[Request]) -> int:
    return sum(request.sent for request in downloads(requests, COSMOPEDIA))


def failed(result) -> str:
    return result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def recipe_run(local_hub, tmp_path_factory):
    """The default recipe, uninterrupted, through the local Hub: the baseline the interrupted runs must match."""
    output_dir = str(tmp_path_factory.mktemp("recipe"))
    argv = hub_recipe_args(output_dir, **STEPS)
    first = len(local_hub.requests)
    result = run_app(argv, env=hub_env(local_hub, tmp_path_factory.mktemp("hf_home")))
    assert result.returncode == 0, failed(result)
    return HubRun(output_dir, argv, result, local_hub.requests[first:])


def same_run_elsewhere(run: HubRun, output_dir: str) -> list[str]:
    return [output_dir if value == run.output_dir else value for value in run.argv]


def test_the_default_recipe_streams_cosmopedia_trains_evaluates_and_checkpoints(recipe_run):
    run = recipe_run
    assert "data: HuggingFaceTB/smollm-corpus (cosmopedia-v2, streamed)" in run.result.stdout
    assert [row["step"] for row in read_log(run.output_dir, "train")] == list(range(1, 61))
    evals = read_log(run.output_dir, "eval")
    assert [row["step"] for row in evals] == [30, 60]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] < 10  # learned from the streamed text
    for step in (20, 40, 60):
        assert checkpoint_problem(os.path.join(run.output_dir, f"checkpoint-{step}")) is None
    downloaded = {(request.repo, request.file) for request in run.requests if request.method == "GET" and request.file}
    assert (f"model:{MODEL_REPO}", "tokenizer.json") in downloaded
    shards = {file for repo, file in downloaded if repo == f"dataset:{CORPUS_REPO}" and file.endswith(".parquet")}
    assert len(shards) >= 2 and all(re.fullmatch(r"cosmopedia-v2/train-\d{5}-of-00104\.parquet", f) for f in shards)
    assert not [request for request in run.requests if request.status >= 500]


def test_a_killed_run_resumes_exactly_without_reading_finished_shards_again(recipe_run, local_hub, tmp_path):
    """kill -9 after checkpoint-40, the same command again: the losses are the uninterrupted run's. What the restart
    reads again: the held-out documents (every start rebuilds the evaluation set from the stream's first documents),
    and the shards open at the checkpoint, each from the start of its row group in progress (datasets' resume; the
    shuffle buffer's documents are in the checkpoint). Shards finished before that are not downloaded again: the
    restart fetches less than the uninterrupted run, by more than a shard."""
    output_dir = str(tmp_path / "run")
    argv = same_run_elsewhere(recipe_run, output_dir)
    env = hub_env(local_hub, tmp_path / "hf_home")
    process = start_app(argv, env=env)
    try:
        wait_for_step(output_dir, 42, process)
    finally:
        process.kill()
        process.wait()
    first = len(local_hub.requests)
    result = run_app(argv, env=env)
    assert result.returncode == 0, failed(result)
    assert "Resuming from checkpoint-40" in result.stdout
    assert losses(output_dir) == pytest.approx(losses(recipe_run.output_dir), abs=1e-4)
    corpus = local_hub.repo_folder("dataset", CORPUS_REPO)
    largest_shard = max(os.path.getsize(path) for path in glob.glob(os.path.join(corpus, COSMOPEDIA)))
    again, uninterrupted = shard_bytes(local_hub.requests[first:]), shard_bytes(recipe_run.requests)
    assert again < uninterrupted - largest_shard, (again, uninterrupted)


def run_with_outage(hub, argv: list[str], env: dict, faults: list[tuple[str, int | None]]) -> tuple[int, str]:
    """Run the app; once it logs step 21 (checkpoint-20 saved), the shard downloads fail: each (mode, times) of
    `faults` in turn (times None: until the run ends). The Hub recovers at the end. (exit status, output)"""
    process = start_app(argv, env=env)
    try:
        wait_for_step(argv[argv.index("--output_dir") + 1], 21, process)
        for mode, times in faults:
            hub.fail(COSMOPEDIA, mode, times)
        output, _ = process.communicate(timeout=600)
    finally:
        hub.recover()
        process.kill()  # a no-op once it has ended; a failed test leaves no run behind
    return process.returncode, output


def test_a_brief_hub_outage_mid_stream_is_retried_and_loses_no_data(recipe_run, local_hub, tmp_path):
    """After checkpoint-20 the next downloads of shards fail four times in a row (twice the connection drops
    mid-body, twice the Hub answers 500), then the Hub recovers: huggingface_hub retries the same byte range, the
    run goes on and trains on exactly the data of the uninterrupted run."""
    output_dir = str(tmp_path / "run")
    first = len(local_hub.requests)
    status, output = run_with_outage(local_hub, same_run_elsewhere(recipe_run, output_dir),
                                     hub_env(local_hub, tmp_path / "hf_home"), [("drop", 2), ("500", 2)])
    assert status == 0, output[-3000:]
    faults = [request.fault for request in local_hub.requests[first:] if request.fault]
    assert faults == ["drop", "drop", "500", "500"], "the run read no shard after step 21"
    assert "Retrying in" in output  # huggingface_hub's retries, on stderr
    assert losses(output_dir) == pytest.approx(losses(recipe_run.output_dir), abs=1e-4)


def test_an_outage_past_the_retries_stops_with_exit_75_and_the_same_command_resumes(recipe_run, local_hub, tmp_path):
    """After checkpoint-20 every download of a shard answers 500 until the Hub recovers: once huggingface_hub's
    retries are spent (about 23 s) the run stops with one line saying so, exit status 75 (try again), its
    checkpoints intact and nothing skipped; the same command, once the Hub is back, resumes and matches the
    uninterrupted run."""
    output_dir = str(tmp_path / "run")
    argv = same_run_elsewhere(recipe_run, output_dir)
    env = hub_env(local_hub, tmp_path / "hf_home")
    status, output = run_with_outage(local_hub, argv, env, [("500", None)])
    assert status == 75, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    found = re.fullmatch(r"error: the Hub failed while streaming the training data after step (\d+): the Hub answered "
                         r"500 for http://127\.0\.0\.1:\d+/datasets/HuggingFaceTB/smollm-corpus/resolve/\w+/"
                         r"cosmopedia-v2/train-\d{5}-of-00104\.parquet, after the clients' retries; the last checkpoint, "
                         r"(checkpoint-\d+), is intact: run the same command again to resume from it", errors[0])
    assert found, errors[0]
    step, checkpoint = int(found.group(1)), found.group(2)
    assert step > 20 and checkpoint_problem(os.path.join(output_dir, checkpoint)) is None
    result = run_app(argv, env=env)
    assert result.returncode == 0, failed(result)
    assert f"Resuming from {checkpoint}" in result.stdout
    assert losses(output_dir) == pytest.approx(losses(recipe_run.output_dir), abs=1e-4)


def test_two_ranks_read_disjoint_whole_shards(local_hub, tmp_path):
    """torchrun, 2 ranks (gloo): each rank downloads its own shards and none of the other's, so no document is
    trained on twice. (Without the hold-out: every rank reads the held-out documents on purpose, to evaluate on
    the same ones, and here only the training reads are looked at.)"""
    output_dir = str(tmp_path / "run")
    argv = hub_recipe_args(output_dir, max_steps=30, save_steps=30, eval_steps=30, generation_steps=0,
                           validation_documents=0)
    first = len(local_hub.requests)
    result = run_torchrun(argv, env=hub_env(local_hub, tmp_path / "hf_home"))
    assert result.returncode == 0, failed(result)
    assert "data split between ranks: 104 shards split between 2 ranks" in result.stdout
    ranks_by_shard = {}
    for request in local_hub.downloads(first, COSMOPEDIA):
        ranks_by_shard.setdefault(request.file, set()).add(request.rank)
    assert {rank for ranks in ranks_by_shard.values() for rank in ranks} == {0, 1}
    assert all(len(ranks) == 1 for ranks in ranks_by_shard.values()), ranks_by_shard
    assert {"run_state_rank0.pt", "run_state_rank1.pt"} <= set(os.listdir(os.path.join(output_dir, "checkpoint-30")))


def test_continued_pretraining_from_the_official_weights(hub_weights, tmp_path):
    """`--model_name_or_path HuggingFaceTB/SmolLM2-135M --learning_rate 3e-4` (README) downloads the Llama-format
    checkpoint: the first loss is a trained model's (4.2-4.6 measured on these CPython docs, code included, with the
    GGUF's Q4_1 weights), not the ln(49152) = 10.8 of random weights, and the saved run loads anywhere with
    trust_remote_code."""
    output_dir = str(tmp_path / "run")
    argv = hub_recipe_args(output_dir, config_overrides="", model_name_or_path=MODEL_REPO, learning_rate=3e-4,
                           max_steps=2, save_steps=2, eval_steps=2, generation_steps=0, max_eval_samples=2)
    env = hub_env(hub_weights, tmp_path / "hf_home")
    result = run_app(argv, env=env)
    assert result.returncode == 0, failed(result)
    assert "134,515,008 parameters" in result.stdout
    first_loss = read_log(output_dir, "train")[0]["loss"]
    assert first_loss < 6, first_loss
    loaded = subprocess.run([sys.executable, "-c", (
        "import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = tokenizer('The Python interpreter reads a program and executes it.', return_tensors='pt').input_ids\n"
        "print(type(model).__name__, round(model(ids, labels=ids).loss.item(), 2))"), output_dir],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    name, loss = loaded.stdout.split()
    assert name == "SmolLM2ForCausalLM" and float(loss) < 6, loaded.stdout


def test_a_mixture_of_the_two_configs(local_hub, tmp_path):
    """README's `--dataset_mixture HuggingFaceTB/smollm-corpus:cosmopedia-v2=... :fineweb-edu-dedup=...`: both configs
    stream from the Hub, both are trained on and each is evaluated on its own held-out documents."""
    output_dir = str(tmp_path / "run")
    sources = [f"{CORPUS_REPO}:cosmopedia-v2", f"{CORPUS_REPO}:fineweb-edu-dedup"]
    argv = hub_recipe_args(output_dir, max_steps=20, save_steps=20, eval_steps=20, generation_steps=0)
    argv += ["--dataset_mixture", f"{sources[0]}=0.6", f"{sources[1]}=0.4"]
    first = len(local_hub.requests)
    result = run_app(argv, env=hub_env(local_hub, tmp_path / "hf_home"))
    assert result.returncode == 0, failed(result)
    assert local_hub.downloads(first, COSMOPEDIA) and local_hub.downloads(first, "fineweb-edu-dedup/*")
    tokens = read_log(output_dir, "train")[-1]["tokens_by_source"]
    assert set(tokens) == set(sources) and min(tokens.values()) > 0
    evaluation = read_log(output_dir, "eval")[-1]
    assert all(f"eval_loss/{source}" in evaluation for source in sources)
