"""The curves on sparse and torn logs (synthetic, in process); the real run's curves and card are in
tests/e2e/test_reporting.py."""

import json
import os

import pytest

from helpers import assert_real_png
from pretraining.curves import plot_training_log
from pretraining.run_files import TRAINING_LOG


def write_log(output_dir, rows):
    with open(os.path.join(output_dir, TRAINING_LOG), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


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
