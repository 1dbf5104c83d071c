"""Data stages and the warmup-stable-decay schedule in runs of the app: the stage in every training row and its own
token counts, the start-up lines and the model card naming each stage, a kill after a checkpoint in the first stage
that resumes exactly across the boundary, an extension that keeps the last stage; WSD's warmup, plateau and linear
decay from a config file whose mapping values reach the Trainer."""

import itertools
import json
import os

import pytest
import yaml

import run_pretrain
from helpers import (killed_after, losses, read_log, run_here, tiny_args, with_flag, without_train_file,
                     write_sources)


@pytest.fixture(scope="module")
def stage_sources(tmp_path_factory, corpus):
    with open(corpus[0], encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in itertools.islice(f, 300)]
    return write_sources(tmp_path_factory.mktemp("sources"), texts[:200], texts[200:])


def test_data_stages_switch_log_and_resume_exactly_across_the_boundary(tmp_path, stage_sources):
    """Stage 1 (steps 1-5) is 0.8 A / 0.2 B, stage 2 (steps 6-10) B alone; checkpoints every 3 steps."""
    a, b = stage_sources
    stages = [{"start_step": 0, "dataset_mixture": {a: 0.8, f"{b}@content": 0.2}},
              {"start_step": 5, "dataset_mixture": {f"{b}@content": 1.0}}]
    baseline = str(tmp_path / "baseline")
    argv = without_train_file(tiny_args(baseline, None, max_steps=10, save_steps=3, eval_steps=5, generation_steps=0,
                                        dataloader_num_workers=2)) + ["--data_stages", json.dumps(stages)]
    result = run_here(argv)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "data stage 1: from step 0" in result.stdout and "data stage 2: from step 5" in result.stdout
    rows = read_log(baseline, "train")
    assert [row["data_stage"] for row in rows] == [1] * 5 + [2] * 5
    per_step = 4 * 64
    for row in rows:
        in_stage = row["step"] - (0 if row["data_stage"] == 1 else 5)
        assert sum(row["stage_tokens_by_source"].values()) == in_stage * per_step
    b_alone = rows[-1]["stage_tokens_by_source"]
    # B's, but for the end of the A document each of the two workers was in at the boundary
    assert b_alone[f"{b}@content"] >= 0.8 * 5 * per_step
    assert rows[4]["stage_tokens_by_source"][a] / (5 * per_step) == pytest.approx(0.8, abs=0.1)
    with open(os.path.join(baseline, "README.md"), encoding="utf-8") as f:
        card = f.read()
    assert "from step 0: `" in card and "then from step 5: `" in card
    assert f"- data stage 1: tokens from `{a}`" in card and f"- data stage 2: tokens from `{b}@content`" in card

    # killed after checkpoint-3 (stage 1): the restart crosses into stage 2 as the uninterrupted run did
    output_dir = str(tmp_path / "run")
    killed_after(baseline, output_dir, 3)
    resumed_argv = with_flag(argv, "output_dir", output_dir)
    result = run_here(resumed_argv)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Resuming from checkpoint-3" in result.stdout
    assert losses(output_dir) == pytest.approx(losses(baseline), abs=1e-4)
    assert read_log(output_dir, "train")[-1]["stage_tokens_by_source"] == rows[-1]["stage_tokens_by_source"]

    # extending the finished run: the last stage goes on
    result = run_here(with_flag(resumed_argv, "max_steps", 12))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [row["data_stage"] for row in read_log(output_dir, "train")[10:]] == [2, 2]


def test_a_batch_change_on_resume_keeps_every_counter_exact(tmp_path, stage_sources):
    """10 steps at 4 x 128 tokens, then (after a kill) resumed to 16 steps at 8 x 128 with --allow_changes batch, a
    data stage from step 13: every row's tokens seen is what the steps before it took (11,264 at step 16, not
    16 x 1,024), its tokens per source and per stage add up to it, its tokens/s is over its own step's tokens, the
    stage switches after step 13 as asked, and the model card says 11,264 tokens."""
    a, b = stage_sources
    stages = [{"start_step": 0, "dataset_mixture": {a: 0.5, f"{b}@content": 0.5}},
              {"start_step": 13, "dataset_mixture": {f"{b}@content": 1.0}}]
    baseline = str(tmp_path / "baseline")
    argv = without_train_file(tiny_args(baseline, None, max_steps=16, save_steps=10, eval_steps=100,
                                        generation_steps=0, block_size=128, per_device_train_batch_size=4))
    argv += ["--data_stages", json.dumps(stages)]
    assert run_pretrain.main(argv) == 0
    output_dir = str(tmp_path / "run")
    killed_after(baseline, output_dir, 10)  # the stage is not in the resumed step's past
    more = with_flag(with_flag(argv, "output_dir", output_dir), "per_device_train_batch_size", 8) + ["--allow_changes",
                                                                                                "batch"]
    assert run_pretrain.main(more) == 0
    rows = read_log(output_dir, "train")
    assert [row["step"] for row in rows] == list(range(1, 17))
    per_step = {step: 4 * 128 if step <= 10 else 8 * 128 for step in range(1, 17)}
    for row in rows:
        step = row["step"]
        assert row["tokens_seen"] == sum(per_step[s] for s in range(1, step + 1)), row
        assert row["tokens_per_second"] * row["step_time"] == pytest.approx(per_step[step]), row
        assert sum(row["tokens_by_source"].values()) == row["tokens_seen"], row
        assert row["data_stage"] == (1 if step <= 13 else 2), row
        stage_start = 1 if step <= 13 else 14
        assert sum(row["stage_tokens_by_source"].values()) == sum(per_step[s] for s in range(stage_start, step + 1))
    assert rows[-1]["tokens_seen"] == 10 * 4 * 128 + 6 * 8 * 128 == 11_264
    with open(os.path.join(output_dir, "README.md"), encoding="utf-8") as f:
        card = f.read()
    assert "Trained for 16 optimizer steps on 11,264 tokens" in card
    assert "| changed from step 10: batch | per_device_train_batch_size: 4 -> 8 |" in card


def test_warmup_stable_decay_from_a_config_file(tmp_path, corpus):
    """configs/smollm2-135m-wsd.yaml's schedule at 20 steps: warmup 2 steps (0.1), the peak held, then a linear decay
    over the last 4 (0.2), here to 10% of the peak through a mapping value (lr_scheduler_kwargs) in the YAML file."""
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "smollm2-135m-wsd.yaml"),
              encoding="utf-8") as f:
        recipe = yaml.safe_load(f)
    assert (recipe["lr_scheduler_type"], recipe["decay_steps"]) == ("warmup_stable_decay", 0.2)
    config = tmp_path / "wsd.yaml"
    config.write_text(yaml.safe_dump({key: recipe[key] for key in ("lr_scheduler_type", "warmup_steps", "decay_steps",
                                                                   "learning_rate")}
                                     | {"lr_scheduler_kwargs": {"min_lr_ratio": 0.1}}))
    output_dir = str(tmp_path / "run")
    result = run_here([str(config), *tiny_args(output_dir, *corpus, max_steps=20)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lrs = [row["learning_rate"] for row in read_log(output_dir, "train")]  # the rate each step trained with
    peak = recipe["learning_rate"]
    # transformers' WSD warms up from min_lr_ratio x the peak as well
    assert lrs[:2] == pytest.approx([0.1 * peak, 0.55 * peak]) and lrs[2:16] == pytest.approx([peak] * 14)
    assert lrs[16:] == pytest.approx([peak * (0.1 + 0.9 * (4 - k) / 4) for k in range(4)])  # linear, to 10%
    with open(os.path.join(output_dir, "README.md"), encoding="utf-8") as f:
        card = f.read()
    assert "| lr_scheduler_type | warmup_stable_decay |" in card and "| lr_scheduler num_decay_steps | 4 |" in card
    assert "| lr_scheduler decay_type | linear |" in card and "| lr_scheduler min_lr_ratio | 0.1 |" in card
