"""--eval_tasks: lm-evaluation-harness scores at every evaluation of a tiny run, on a local multiple-choice task that
the test writes (offline); the same numbers as lm-eval gives on the saved model; a one-line error without lm-eval."""

import glob
import json
import os
import random
import sys

import pytest

from helpers import read_log, run_here, tiny_args
from pretraining.eval_tasks import task_scores

TASK = "tiny_arithmetic"
LIMIT = 24


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A folder with one lm-eval multiple-choice task YAML and its 40 questions (jsonl), read offline."""
    folder = tmp_path_factory.mktemp("tasks")
    rng = random.Random(0)
    with open(folder / "items.jsonl", "w", encoding="utf-8") as f:
        for _ in range(40):
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            choices = [a + b, a + b + rng.randint(1, 9), max(0, a + b - rng.randint(1, 9))]
            rng.shuffle(choices)
            f.write(json.dumps({"question": f"Question: what is {a} plus {b}?\nAnswer:",
                                "choices": [f" {c}" for c in choices], "answer": choices.index(a + b)}) + "\n")
    (folder / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "items.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""", encoding="utf-8")
    return str(folder)


@pytest.fixture(scope="module")
def scored_run(corpus, task_dir, tmp_path_factory):
    pytest.importorskip("lm_eval")  # requirements-test.txt installs it
    output_dir = str(tmp_path_factory.mktemp("eval_tasks_run"))
    result = run_here(tiny_args(output_dir, *corpus, max_steps=10, eval_steps=5, eval_tasks=TASK,
                                eval_tasks_path=task_dir, eval_tasks_limit=LIMIT, report_to="tensorboard"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir, result


def test_eval_rows_hold_the_task_scores(scored_run):
    output_dir, result = scored_run
    rows = read_log(output_dir, "eval")
    assert [row["step"] for row in rows] == [5, 10]
    for row in rows:
        assert 0 <= row[f"{TASK}/acc"] <= 1 and 0 <= row[f"{TASK}/acc_norm"] <= 1 and row["tasks_runtime"] > 0
    assert f"{TASK}/acc" in result.stdout  # the printed evaluation line
    with open(os.path.join(output_dir, "README.md"), encoding="utf-8") as f:
        assert f"{TASK}/acc (lm-evaluation-harness)" in f.read()
    # the curves draw the scores against the tokens seen at each evaluation, which its row counts
    from pretraining.curves import curves_figure

    assert [row["tokens_seen"] for row in rows] == [5 * 4 * 64, 10 * 4 * 64]
    scores = curves_figure(output_dir).axes[-1]
    assert scores.get_xlabel() == "tokens seen"
    assert [line.get_xdata().tolist() for line in scores.get_lines()] == [[5 * 4 * 64, 10 * 4 * 64]] * 2


def test_scores_reach_tensorboard(scored_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir, _ = scored_run
    events = EventAccumulator(glob.glob(os.path.join(output_dir, "runs", "*"))[0])
    events.Reload()
    assert [event.step for event in events.Scalars(f"eval/{TASK}/acc")] == [5, 10]


def test_scores_equal_lm_eval_on_the_saved_model(scored_run, task_dir):
    """What a separate lm-eval job on the final folder reports (remote code: the saved SmolLM2)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    output_dir, _ = scored_run
    model = HFLM(pretrained=output_dir, trust_remote_code=True, device="cpu", dtype="float32", batch_size=8)
    results = lm_eval.simple_evaluate(model=model, tasks=[TASK], limit=LIMIT, log_samples=False,
                                      task_manager=TaskManager(include_path=task_dir, include_defaults=False))
    standalone = task_scores(results)
    last = read_log(output_dir, "eval")[-1]
    assert standalone == {key: last[key] for key in standalone}
    assert set(standalone) == {f"{TASK}/acc", f"{TASK}/acc_norm"}


def test_without_lm_eval_a_one_line_error(corpus, task_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` fails, as where it is not installed
    output_dir = tmp_path / "run"
    result = run_here(tiny_args(str(output_dir), *corpus, eval_tasks=TASK, eval_tasks_path=task_dir))
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("error: --eval_tasks needs the lm-eval package") and result.stderr.count("\n") == 1
    assert not output_dir.exists()


def test_unknown_task_is_a_one_line_error(corpus, task_dir, tmp_path):
    pytest.importorskip("lm_eval")
    output_dir = tmp_path / "run"
    result = run_here(tiny_args(str(output_dir), *corpus, eval_tasks=f"{TASK},no_such_task", eval_tasks_path=task_dir))
    assert result.returncode == 2 and "error: unknown eval task(s) no_such_task" in result.stderr
    assert not output_dir.exists()
