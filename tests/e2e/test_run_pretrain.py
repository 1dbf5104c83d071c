"""run_pretrain.py end to end: a real tiny run (log, schedule, eval, samples, checkpoints, final model), a new log
field, resume and extend, torch.compile, continued pretraining from the real GGUF weights."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

import run_pretrain
from helpers import (GGUF_NAME, ROOT, app_env, assert_real_png, losses, read_jsonl_file, read_log, run_app, run_here,
                     tiny_args, with_flag)


@pytest.fixture
def finished_run(tiny_run):
    return tiny_run


def test_tiny_run_logs_every_step_once_with_all_fields(finished_run):
    output_dir, result = finished_run
    rows = read_log(output_dir, "train")
    assert [row["step"] for row in rows] == list(range(1, 31))
    for row in rows:
        for key in ("loss", "learning_rate", "grad_norm", "step_time", "tokens_per_second", "tokens_seen"):
            assert isinstance(row[key], float | int), (key, row)
        assert row["tokens_seen"] == row["step"] * 4 * 64
        assert "mfu" not in row  # a CPU has no known peak: no MFU without --peak_tflops
    assert "step 30/30 | loss" in result.stdout and "tok/s" in result.stdout
    assert "no MFU" in result.stdout
    assert ("optimizer: adamw_torch_fused (betas 0.9/0.95, eps 1e-08, weight decay 0.01 (none on norms)) for all 20 "
            "tensors (3,219,776 parameters)") in result.stdout


def test_output_to_a_file_has_no_progress_bar_escapes(finished_run):
    """stdout is a pipe here, as in a log file or CI: plain lines, no tqdm cursor moves or carriage returns."""
    _, result = finished_run
    for output in (result.stdout, result.stderr):
        assert "\x1b" not in output and "\r" not in output
    assert "step 1/30 | loss" in result.stdout


def test_a_finished_run_started_again_changes_nothing_then_extends(finished_run, tmp_path, corpus):
    output_dir = str(tmp_path / "run")
    shutil.copytree(finished_run[0], output_dir)

    def snapshot():
        return {os.path.relpath(os.path.join(root, name), output_dir): os.stat(os.path.join(root, name)).st_mtime_ns
                for root, _, names in os.walk(output_dir) for name in names}

    before = snapshot()
    again = run_here(tiny_args(output_dir, *corpus, report_to="tensorboard"))
    assert again.returncode == 0, again.stderr
    assert "already complete: step 30 of --max_steps 30" in again.stdout and output_dir in again.stdout
    assert "step 31" not in again.stdout and "Resuming" not in again.stdout
    assert snapshot() == before

    # --peak_tflops far above what a CPU does: MFU is logged, below 100%. In a fresh process, whose stderr shows
    # transformers' warnings.
    extended = run_app(tiny_args(output_dir, *corpus, max_steps=35, peak_tflops=1000))
    assert extended.returncode == 0, extended.stderr
    assert "Resuming from checkpoint-30" in extended.stdout
    assert "missing keys" not in extended.stdout + extended.stderr  # the tied lm_head.weight
    rows = read_log(output_dir, "train")
    assert [row["step"] for row in rows] == list(range(1, 36))
    for row in rows[30:]:
        assert row["tokens_seen"] == row["step"] * 4 * 64
        assert 0 < row["mfu"] <= 1
    assert "Trained for 35 optimizer steps" in open(os.path.join(output_dir, "README.md"), encoding="utf-8").read()

    # below what the run does: not an MFU, so none is logged
    low = run_here(tiny_args(output_dir, *corpus, max_steps=37, peak_tflops=1e-9))
    assert low.returncode == 0, low.stderr
    assert "MFU is not logged (check --peak_tflops)" in low.stdout
    assert all("mfu" not in row for row in read_log(output_dir, "train")[35:])

    fewer = run_here(tiny_args(output_dir, *corpus, max_steps=20))
    assert fewer.returncode == 2 and "past --max_steps 20" in fewer.stderr


def test_the_final_model_is_saved_from_the_last_checkpoint_when_the_run_stopped_before_it(finished_run, tmp_path,
                                                                                         corpus):
    """Killed after its last checkpoint but before the final save: started again, it saves and trains nothing."""
    output_dir = str(tmp_path / "run")
    final_files = {"model.safetensors", "trainer_state.json", "README.md"}  # the checkpoints keep theirs
    shutil.copytree(finished_run[0], output_dir,
                    ignore=lambda folder, names: final_files & set(names) if folder == finished_run[0] else ())
    result = run_here(tiny_args(output_dir, *corpus))
    assert result.returncode == 0, result.stderr
    assert "Saving the final model of checkpoint-30" in result.stdout and "step 31" not in result.stdout
    assert [row["step"] for row in read_log(output_dir, "train")] == list(range(1, 31))
    with safe_open(os.path.join(output_dir, "model.safetensors"), framework="pt") as final, \
            safe_open(os.path.join(output_dir, "checkpoint-30", "model.safetensors"), framework="pt") as last:
        assert all(torch.equal(final.get_tensor(key), last.get_tensor(key)) for key in last.keys())
    assert "Trained for 30 optimizer steps" in open(os.path.join(output_dir, "README.md"), encoding="utf-8").read()
    assert "already complete" in run_here(tiny_args(output_dir, *corpus)).stdout


def test_a_relative_path_that_does_not_exist_is_named_as_such(tmp_path, corpus):
    """Run from another folder, the project-relative tokenizer path does not exist: no Hub message for it."""
    argv = tiny_args(str(tmp_path / "run"), *corpus)
    argv[argv.index("--tokenizer_name") + 1] = "assets/smollm2_tokenizer"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "run_pretrain.py"), *argv], cwd=tmp_path,
                            env=app_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert f"no such folder: assets/smollm2_tokenizer (relative to {tmp_path})" in result.stderr
    assert "--tokenizer_name assets/smollm2_tokenizer" not in result.stderr  # the path that failed is no hint
    assert not os.path.exists(tmp_path / "run")


def test_learning_rate_warms_up_then_decays_linearly(finished_run):
    lrs = [row["learning_rate"] for row in read_log(finished_run[0], "train")]
    peak = lrs.index(max(lrs))
    assert 0 < peak < 10 and max(lrs) == pytest.approx(3e-3)
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1 : peak + 1]))
    decay = lrs[peak:]
    steps = [b - a for a, b in zip(decay, decay[1:])]
    assert all(step < 0 for step in steps) and max(steps) - min(steps) < 1e-9  # a straight line down


def test_loss_falls_and_eval_rows_have_perplexity(finished_run):
    output_dir, _ = finished_run
    train = losses(output_dir)
    assert sum(train[s] for s in range(26, 31)) / 5 < sum(train[s] for s in range(1, 6)) / 5 - 1.0
    evals = read_log(output_dir, "eval")
    assert [row["step"] for row in evals] == [10, 20, 30]
    for row in evals:
        assert row["perplexity"] == pytest.approx(torch.tensor(row["eval_loss"]).exp().item(), rel=1e-5)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]


def test_samples_and_checkpoints(finished_run, tokenizer):
    """Samples at every 10th step, each prompt once; those of the last step are what the final model (the same weights)
    completes greedily: text generated by the model being trained, not an empty string or some other model's."""
    from callbacks import generate_samples
    from modeling_smollm2 import SmolLM2ForCausalLM

    output_dir, result = finished_run
    samples = read_jsonl_file(os.path.join(output_dir, "samples.jsonl"))
    prompts = list(dict.fromkeys(row["prompt"] for row in samples))
    assert [(row["step"], row["prompt"]) for row in samples] == [(step, p) for step in (10, 20, 30) for p in prompts]
    final = SmolLM2ForCausalLM.from_pretrained(output_dir)
    assert [row["text"] for row in samples[-len(prompts):]] == generate_samples(final, tokenizer, prompts, 8)
    assert all(row["text"] for row in samples)
    assert "sample @ step 10" in result.stdout
    assert sorted(name for name in os.listdir(output_dir) if name.startswith("checkpoint-")) == [
        "checkpoint-10", "checkpoint-20", "checkpoint-30"]


def test_resume_and_extend_log_each_step_once(tmp_path, corpus):
    output_dir = str(tmp_path / "run")
    first = run_here(tiny_args(output_dir, *corpus, max_steps=20, save_steps=10, eval_steps=10))
    assert first.returncode == 0, first.stderr
    assert "Starting from step 0" in first.stdout
    extended = run_here(tiny_args(output_dir, *corpus, max_steps=25, save_steps=10, eval_steps=10))
    assert extended.returncode == 0, extended.stderr
    assert "Resuming from checkpoint-20" in extended.stdout
    assert "step 21/25 | loss" in extended.stdout and "step 20/25 | loss" not in extended.stdout
    rows = read_log(output_dir, "train")
    assert [row["step"] for row in rows] == list(range(1, 26))
    # the extension follows the 25-step schedule: step 21 trains (lr > 0) and it decays linearly to step 25
    lrs = [row["learning_rate"] for row in rows[20:]]
    warmup = 3  # 10% of 25 steps, rounded up
    assert lrs == pytest.approx([3e-3 * (25 - step) / (25 - warmup) for step in range(20, 25)])
    assert [row["step"] for row in read_log(output_dir, "eval")] == [10, 20, 25]  # and at the end
    assert os.path.isdir(os.path.join(output_dir, "checkpoint-25"))


def test_tensorboard_model_card_and_curves_of_the_run(finished_run):
    output_dir, _ = finished_run
    events = [name for root, _, names in os.walk(output_dir) for name in names if name.startswith("events.out.tfevents")]
    assert events, "--report_to tensorboard wrote no event file"
    card = open(os.path.join(output_dir, "README.md"), encoding="utf-8").read()
    final_loss = read_log(output_dir, "train")[-1]["loss"]
    assert "SmolLM2" in card and "Trained for 30 optimizer steps" in card and f"{final_loss:.4f}" in card
    assert "trust_remote_code=True" in card
    # the curves the run drew: a real picture, of this run's losses and eval losses
    from pretraining.curves import curves_figure

    assert_real_png(os.path.join(output_dir, "training_curves.png"))
    loss_panel = next(ax for ax in curves_figure(output_dir).axes if ax.get_ylabel() == "loss")
    lines = {line.get_label(): line for line in loss_panel.get_lines()}
    assert lines["loss"].get_ydata().tolist() == pytest.approx([row["loss"] for row in read_log(output_dir, "train")])
    assert lines["eval_loss"].get_xdata().tolist() == [10, 20, 30]


def test_torch_compile_run_matches_eager_and_saves_plain_names(tmp_path, corpus):
    runs = {}
    for name, extra in (("eager", {}), ("compiled", {"torch_compile": "true", "torch_compile_backend": "aot_eager"})):
        output_dir = str(tmp_path / name)
        result = run_here(tiny_args(output_dir, *corpus, max_steps=4, generation_steps=4, **extra))
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = output_dir
    assert losses(runs["compiled"]) == pytest.approx(losses(runs["eager"]), abs=1e-4)
    for folder in (runs["compiled"], os.path.join(runs["compiled"], "checkpoint-4")):
        with safe_open(os.path.join(folder, "model.safetensors"), framework="pt") as f:
            assert not [key for key in f.keys() if "_orig_mod" in key]


def test_continued_pretraining_from_the_real_gguf_weights(tmp_path, corpus, gguf_folder):
    output_dir = str(tmp_path / "run")
    argv = tiny_args(output_dir, *corpus, config_overrides="", model_name_or_path=gguf_folder, gguf_file=GGUF_NAME,
                     per_device_train_batch_size=2, max_steps=2, generation_steps=2, learning_rate=3e-5,
                     generation_prompts="The capital of France is")
    result = run_here(argv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "134,515,008 parameters" in result.stdout
    assert losses(output_dir)[1] < 6  # a trained model, not a random one (about 10.8)
    with open(os.path.join(output_dir, "samples.jsonl"), encoding="utf-8") as f:
        assert "Paris" in json.loads(f.readline())["text"]
    # plain weights, not marked quantized: no quantization_config anywhere, and the run goes on from its checkpoint
    for folder in (output_dir, os.path.join(output_dir, "checkpoint-2")):
        assert "quantization_config" not in json.load(open(os.path.join(folder, "config.json"))), folder
    extended = run_here(with_flag(argv, "max_steps", 3))
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert "Resuming from checkpoint-2" in extended.stdout


def test_a_new_metric_is_one_declared_field(tmp_path, corpus, capsys):
    """The learning rate's ratio to its peak, added as one LogField line: the trainer computes it in every training
    row of the log, the progress line prints it and the curves draw it in the learning-rate panel."""
    from pretraining.curves import curves_figure
    from pretraining.log_fields import LOG_FIELDS, LogField

    field = LogField("lr_fraction_of_peak", "lr/peak {:.2f}", "learning rate", twin=True,
                     derive=lambda logs, args: logs["learning_rate"] / args.learning_rate)
    output_dir = str(tmp_path / "run")
    LOG_FIELDS.append(field)
    try:
        argv = tiny_args(output_dir, *corpus, max_steps=4, save_steps=4, eval_steps=4, generation_steps=0,
                         warmup_steps=2, disable_tqdm="true")
        assert run_pretrain.main(argv) == 0
        fig = curves_figure(output_dir)
    finally:
        LOG_FIELDS.remove(field)
    rows = read_log(output_dir, "train")
    ratios = [row["learning_rate"] / max(r["learning_rate"] for r in rows) for row in rows]  # 0, 0.5, 1, 0.5
    assert [row["lr_fraction_of_peak"] for row in rows] == pytest.approx(ratios) and ratios[2] == 1.0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [f"lr/peak {ratio:.2f}" in line for line, ratio in zip(printed, ratios)] == [True] * 4, printed
    lr_axes = [ax for ax in fig.axes if ax.get_ylabel() == "lr_fraction_of_peak"]
    assert len(lr_axes) == 1 and lr_axes[0].lines[0].get_ydata().tolist() == pytest.approx(ratios)
