"""Several processes (torchrun, gloo on CPU): DDP and FSDP2 runs, data split by rank, exact resume, SIGTERM to one
rank."""

import os
import signal
import subprocess
import time

import pytest
import torch

from helpers import ROOT, app_env, losses, read_log, run_torchrun, tiny_args, torchrun_argv, wait_for_step, write_jsonl
from pretraining.checkpoints import checkpoint_problem

FSDP = ["--fsdp", "full_shard auto_wrap", "--fsdp_config", os.path.join(ROOT, "configs", "fsdp.json")]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, corpus):
    output_dir = str(tmp_path_factory.mktemp("ddp"))
    argv = tiny_args(output_dir, *corpus, max_steps=12, save_steps=4, eval_steps=8, generation_steps=8)
    result = run_torchrun(argv)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir, argv, result


def test_ddp_run_logs_once_and_counts_every_rank(ddp_run):
    output_dir, _, result = ddp_run
    rows = read_log(output_dir, "train")
    assert [row["step"] for row in rows] == list(range(1, 13))
    assert rows[-1]["tokens_seen"] == 2 * 4 * 64 * 12
    assert rows[-1]["tokens_per_second"] == pytest.approx(2 * rows[-1]["tokens_per_second_per_device"])
    assert result.stdout.count("step 12/12 | loss") == 1  # only the main process prints
    assert "8 sequences x 64 tokens = 512 tokens/step (per device 4 x grad accum 1 x 2 processes)" in result.stdout
    checkpoint = os.path.join(output_dir, "checkpoint-12")
    assert {"run_state_rank0.pt", "run_state_rank1.pt"} <= set(os.listdir(checkpoint))


def test_killed_ddp_run_resumes_exactly(ddp_run, tmp_path):
    baseline_dir, argv, _ = ddp_run
    output_dir = str(tmp_path / "run")
    argv = [output_dir if value == baseline_dir else value for value in argv]
    process = subprocess.Popen(torchrun_argv(argv), cwd=ROOT, env=app_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    wait_for_step(output_dir, 6, process)  # past checkpoint-4
    # the whole job dies at once, as on a lost node: torchrun and its workers (each in its own session)
    subprocess.run(["pkill", "-9", "-f", output_dir], check=True)
    process.wait()
    while subprocess.run(["pgrep", "-f", output_dir], capture_output=True).returncode == 0:
        time.sleep(0.2)
    result = run_torchrun(argv)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Resuming from checkpoint-" in result.stdout
    assert [row["step"] for row in read_log(output_dir, "train")] == list(range(1, 13))
    assert losses(output_dir) == pytest.approx(losses(baseline_dir), abs=1e-4)


def test_fsdp2_run_matches_ddp(ddp_run, tmp_path):
    baseline_dir, argv, _ = ddp_run
    output_dir = str(tmp_path / "fsdp")
    argv = [output_dir if value == baseline_dir else value for value in argv]
    result = run_torchrun(argv + FSDP)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert losses(output_dir) == pytest.approx(losses(baseline_dir), abs=1e-4)
    assert os.path.isfile(os.path.join(output_dir, "model.safetensors"))
    with open(os.path.join(output_dir, "samples.jsonl"), encoding="utf-8") as f:
        assert f.read().count('"step": 8') == 3  # generation under FSDP, written once


def worker_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The process of torchrun's worker `rank` (a child of the launcher, with RANK in its environment)."""
    children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    for pid in children:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if f"RANK={rank}".encode() in f.read().split(b"\0"):
                return int(pid)
    raise LookupError(f"no worker of rank {rank} among {children}")


def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(tmp_path, corpus):
    """A preempted node or a scheduler may signal one process only: every rank stops after the same step, the
    checkpoint is complete on both, both exit 0 (no hang in a collective), and a restart resumes from it."""
    output_dir = str(tmp_path / "run")
    argv = tiny_args(output_dir, *corpus, max_steps=500, save_steps=1000, eval_steps=1000, generation_steps=0)
    process = subprocess.Popen(torchrun_argv(argv), cwd=ROOT, env=app_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    wait_for_step(output_dir, 3, process)
    os.kill(worker_pid(process, 1), signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    last = read_log(output_dir, "train")[-1]["step"]
    assert f"Stopped by SIGTERM at step {last}" in output
    checkpoint = os.path.join(output_dir, f"checkpoint-{last}")
    assert checkpoint_problem(checkpoint) is None
    assert {"run_state_rank0.pt", "run_state_rank1.pt"} <= set(os.listdir(checkpoint))
    extend = argv[argv.index("--max_steps") + 1]
    result = run_torchrun([str(last + 2) if value is extend else value for value in argv])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Resuming from checkpoint-{last}" in result.stdout
    assert [row["step"] for row in read_log(output_dir, "train")] == list(range(1, last + 3))


def test_ranks_with_unequal_shards_neither_hang_nor_desync(tmp_path, corpus):
    """Rank 1's file holds a tenth of rank 0's tokens: it reads it many times over while rank 0 is in its first
    pass, with gradient accumulation; every step is taken by both ranks together."""
    texts = [f"document {i} " + "word " * (5 + i % 17) for i in range(220)]
    write_jsonl(tmp_path / "part0.jsonl", texts[:200])
    write_jsonl(tmp_path / "part1.jsonl", texts[200:])
    output_dir = str(tmp_path / "run")
    argv = tiny_args(output_dir, str(tmp_path / "part*.jsonl"), corpus[1], max_steps=12, save_steps=6, eval_steps=6,
                     generation_steps=0, gradient_accumulation_steps=2, block_size=32)
    result = run_torchrun(argv, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [row["step"] for row in read_log(output_dir, "train")] == list(range(1, 13))
    for checkpoint in ("checkpoint-6", "checkpoint-12"):
        assert checkpoint_problem(os.path.join(output_dir, checkpoint)) is None
    rank1_state = torch.load(os.path.join(output_dir, "checkpoint-12", "run_state_rank1.pt"), weights_only=True)
    stream = rank1_state["data"]["0"]
    assert stream["pass"] >= 1 and stream["batches"] == 12 * 2  # rank 1 is in a later pass (0 is the first), in step
