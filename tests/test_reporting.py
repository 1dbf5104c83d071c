"""Tests of the reporting tools on a real tiny run: plot_training_log.py, model_card.py and generate.py.

    pytest tests/test_reporting.py

The run (30 steps of a 2-layer model on the local corpus, about a minute on CPU) is trained once per module.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from huggingface_hub import ModelCard
from matplotlib.image import imread

from conftest import ROOT
from model_card import write_model_card
from plot_training_log import CURVES_PNG, TRAINING_LOG, plot_training_log, read_training_log

MAX_STEPS = 30
PROMPT = "The for statement"


def run_script(*args, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def run_dir(tiny_run):
    return tiny_run[0]


def write_log(output_dir, rows):
    with open(os.path.join(output_dir, TRAINING_LOG), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def assert_real_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    height, width = image.shape[:2]
    assert 300 <= height <= 3000 and 300 <= width <= 3000
    assert np.var(image[..., :3]) > 0  # not blank


def test_plot_of_a_real_run(run_dir):
    path = plot_training_log(run_dir)
    assert path == os.path.join(run_dir, CURVES_PNG)
    assert_real_png(path)


def test_plot_command_writes_where_asked(run_dir, tmp_path):
    out = str(tmp_path / "curves.png")
    result = run_script("plot_training_log.py", run_dir, "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == out
    assert_real_png(out)


def train_row(step, loss, learning_rate, tokens_per_second, mfu):
    return {"type": "train", "step": step, "loss": loss, "learning_rate": learning_rate,
            "tokens_per_second": tokens_per_second, "mfu": mfu}


@pytest.mark.parametrize("rows", [
    pytest.param([{"type": "train", "step": 1, "loss": 10.9, "learning_rate": 0.0, "tokens_per_second": 500.0}],
                 id="one-row-no-eval-no-mfu"),
    pytest.param([train_row(1, 10.9, 1e-3, 500.0, 0.1), train_row(2, None, 2e-3, None, None),
                  {"type": "eval", "step": 2, "eval_loss": None, "perplexity": None},
                  train_row(3, 9.5, 3e-3, 600.0, 0.2)],
                 id="nulls"),
    pytest.param([], id="empty"),
])
def test_plot_handles_sparse_logs(tmp_path, rows):
    write_log(tmp_path, rows)
    with open(tmp_path / TRAINING_LOG, "a", encoding="utf-8") as f:
        f.write('{"type": "train", "st')  # a torn last line
    assert_real_png(plot_training_log(str(tmp_path)))


def test_model_card_of_a_real_run(run_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    plot_training_log(run_dir)
    config = AutoConfig.from_pretrained(run_dir, trust_remote_code=True)
    num_parameters = AutoModelForCausalLM.from_pretrained(run_dir, trust_remote_code=True).num_parameters()
    path = write_model_card(run_dir, model_config=config, num_parameters=num_parameters,
                            data_description="CPython's bundled documentation.",
                            training_args={"max_steps": MAX_STEPS, "learning_rate": 3e-3, "block_size": 128})
    assert path == os.path.join(run_dir, "README.md")
    card = read_text(path)
    train_rows, eval_rows = read_training_log(run_dir)
    metadata = ModelCard.load(path).data
    assert (metadata.license, metadata.library_name, metadata.pipeline_tag) == ("apache-2.0", "transformers",
                                                                             "text-generation")
    assert "smollm2" in metadata.tags and metadata.metrics == ["loss", "perplexity"]
    assert "SmolLM2" in card and f"{num_parameters:,} parameters" in card
    assert f"Trained for {MAX_STEPS} optimizer steps on {train_rows[-1]['tokens_seen']:,} tokens" in card
    assert f"final training loss: {train_rows[-1]['loss']:.4f}" in card
    assert f"final eval loss: {eval_rows[-1]['eval_loss']:.4f}" in card
    assert f"![Training curves]({CURVES_PNG})" in card
    assert f"Greedy completions at step {MAX_STEPS}" in card
    assert "| learning_rate | 0.003 |" in card
    assert f'pipeline("text-generation", model="{os.path.relpath(run_dir)}", trust_remote_code=True)' in card


def test_model_card_names_the_hub_repo(run_dir):
    config = json.loads(read_text(os.path.join(run_dir, "config.json")))
    path = write_model_card(run_dir, model_config=config, num_parameters=1234567, data_description="docs",
                            training_args={}, hub_model_id="someone/smollm2-tiny", license="mit",
                            datasets=["HuggingFaceTB/smollm-corpus"], base_model="HuggingFaceTB/SmolLM2-135M")
    card = read_text(path)
    assert "# smollm2-tiny" in card and "1,234,567 parameters" in card
    assert 'AutoModelForCausalLM.from_pretrained("someone/smollm2-tiny", trust_remote_code=True)' in card
    metadata = ModelCard.load(path).data
    assert metadata.license == "mit" and metadata.datasets == ["HuggingFaceTB/smollm-corpus"]
    assert metadata.base_model == "HuggingFaceTB/SmolLM2-135M"


@pytest.mark.parametrize("folder", ["", "checkpoint-20"])
def test_generate_from_run_and_checkpoint(run_dir, folder):
    result = run_script("generate.py", os.path.join(run_dir, folder), PROMPT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(PROMPT)


def test_generate_bad_path_is_a_one_line_error(tmp_path):
    result = run_script("generate.py", str(tmp_path / "missing"), PROMPT)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_a_new_metric_is_one_declared_field(tmp_path, corpus, capsys):
    """The learning rate's ratio to its peak, added as one LogField line: the trainer computes it in every training
    row of the log, the progress line prints it and the curves draw it in the learning-rate panel."""
    import run_pretrain
    from apprun import read_log, tiny_args
    from log_fields import LOG_FIELDS, LogField
    from plot_training_log import curves_figure

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
