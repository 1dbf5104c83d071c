"""Data mixtures in runs of the app: `tokens_by_source` and per-source evaluation rows, the model card, and a kill
after a checkpoint that resumes exactly (0 and 2 DataLoader workers, torchrun)."""

import itertools
import json
import os

import pytest
import torch

from helpers import (killed_after, losses, mixture, read_log, run_here, run_torchrun, tiny_args, with_flag,
                     without_train_file, write_sources)


@pytest.fixture(scope="module")
def app_sources(tmp_path_factory, corpus):
    with open(corpus[0], encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in itertools.islice(f, 300)]
    return write_sources(tmp_path_factory.mktemp("sources"), texts[:200], texts[200:])


def mixture_argv(output_dir, sources, **overrides):
    argv = tiny_args(output_dir, None, **{"max_steps": 8, "save_steps": 4, "eval_steps": 4, "generation_steps": 0,
                                         **overrides})
    return without_train_file(argv) + ["--dataset_mixture", *mixture(*sources)]


def check_resumed(baseline, output_dir, result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Resuming from checkpoint-4" in result.stdout
    rows = read_log(output_dir, "train")
    assert [row["step"] for row in rows] == list(range(1, 9))  # each step once
    assert losses(output_dir) == pytest.approx(losses(baseline), abs=1e-4)
    counts = {row["step"]: row["tokens_by_source"] for row in read_log(baseline, "train")}
    assert {row["step"]: row["tokens_by_source"] for row in rows} == counts


@pytest.mark.parametrize("num_workers", [0, 2])
def test_mixture_run_logs_each_source_and_resumes_exactly(tmp_path, app_sources, num_workers):
    a, b = app_sources
    names = [f"{a}", f"{b}@content"]
    baseline = str(tmp_path / "baseline")
    argv = mixture_argv(baseline, app_sources, dataloader_num_workers=num_workers)
    result = run_here(argv)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"mixture: 80.0% {a}" in result.stdout and "(text column 'content')" in result.stdout
    rows = read_log(baseline, "train")
    assert all(list(row["tokens_by_source"]) == names for row in rows)
    assert all(sum(row["tokens_by_source"].values()) == row["tokens_seen"] for row in rows)
    evaluations = read_log(baseline, "eval")
    assert [row["step"] for row in evaluations] == [4, 8]
    for row in evaluations:
        per_source = [row[f"eval_loss/{name}"] for name in names]
        assert min(per_source) <= row["eval_loss"] <= max(per_source)
        assert all(row[f"perplexity/{name}"] == pytest.approx(torch.tensor(row[f"eval_loss/{name}"]).exp().item(),
                                                             rel=1e-4) for name in names)
    with open(os.path.join(baseline, "README.md"), encoding="utf-8") as f:
        card = f.read()
    assert f"tokens from `{b}@content`" in card and f"final eval loss on `{a}`" in card

    output_dir = str(tmp_path / "run")
    killed_after(baseline, output_dir, 4)
    check_resumed(baseline, output_dir, run_here(with_flag(argv, "output_dir", output_dir)))


def test_mixture_under_torchrun_resumes_exactly(tmp_path, app_sources):
    """Two gloo processes, each source split file by file between them: tokens_by_source counts both ranks."""
    baseline = str(tmp_path / "baseline")
    argv = mixture_argv(baseline, app_sources)
    result = run_torchrun(argv)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    a, b = app_sources
    assert (f"data split between ranks: {a}: 2 shards split between 2 ranks; {b}@content: 2 shards split between 2 "
            "ranks") in result.stdout
    rows = read_log(baseline, "train")
    assert all(sum(row["tokens_by_source"].values()) == row["tokens_seen"] == 2 * 4 * 64 * row["step"] for row in rows)
    output_dir = str(tmp_path / "run")
    killed_after(baseline, output_dir, 4)
    check_resumed(baseline, output_dir, run_torchrun(with_flag(argv, "output_dir", output_dir)))


