"""The reporting tools on a real tiny run (the session's `tiny_run`): plot_training_log.py, model_card.py and
generate.py. A test that writes into the run works on a copy: the run is shared."""

import json
import os
import shutil

import pytest
from huggingface_hub import ModelCard

import generate
import plot_training_log as plot_command
from helpers import assert_real_png, run_here
from pretraining.curves import plot_training_log, read_training_log
from pretraining.model_card import write_model_card
from pretraining.run_files import CURVES_PNG

MAX_STEPS = 30
PROMPT = "The for statement"


@pytest.fixture
def run_dir(tiny_run):
    """The shared run, read only."""
    return tiny_run[0]


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the run, for a test that writes into it."""
    return shutil.copytree(tiny_run[0], tmp_path / "run")


def read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_plot_of_a_real_run(run_copy):
    path = plot_training_log(str(run_copy))
    assert path == os.path.join(run_copy, CURVES_PNG)
    assert_real_png(path)


def test_plot_command_writes_where_asked(run_dir, tmp_path):
    out = str(tmp_path / "curves.png")
    result = run_here([run_dir, "--out", out], plot_command.main)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == out
    assert_real_png(out)


def test_model_card_of_a_real_run(run_copy):
    from transformers import AutoConfig, AutoModelForCausalLM

    run_dir = str(run_copy)
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


def test_model_card_names_the_hub_repo(run_copy):
    run_dir = str(run_copy)
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
    result = run_here([os.path.join(run_dir, folder), PROMPT], generate.main)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(PROMPT)


def test_generate_bad_path_is_a_one_line_error(tmp_path):
    result = run_here([str(tmp_path / "missing"), PROMPT], generate.main)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert result.stdout == ""
