"""--eval_tasks' pieces: lm-eval's score names as the log's, and a task whose data cannot load refused at start-up
(the scored runs are in tests/e2e/test_eval_tasks.py)."""

import pytest

from pretraining.eval_tasks import check_eval_tasks, score_key, task_scores


def test_task_whose_data_cannot_load_is_refused_at_start_up(tmp_path):
    pytest.importorskip("lm_eval")
    (tmp_path / "broken.yaml").write_text(f"""task: broken_task
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp_path / "missing.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
""", encoding="utf-8")
    problems = check_eval_tasks(["broken_task"], str(tmp_path))
    assert len(problems) == 1 and problems[0].startswith("cannot load eval task(s) broken_task:"), problems


def test_score_names():
    assert score_key("hellaswag", "acc_norm,none") == "hellaswag/acc_norm"
    assert score_key("gsm8k", "exact_match,flexible-extract") == "gsm8k/exact_match_flexible-extract"
    results = {"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.1,
                                        "sample_len": 10}}}
    assert task_scores(results) == {"arc_easy/acc": 0.5}
