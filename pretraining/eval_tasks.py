"""Benchmark scores during training: lm-evaluation-harness tasks on the in-memory model at every evaluation.

    python run_pretrain.py configs/demo.yaml --eval_tasks hellaswag,arc_easy --eval_tasks_limit 200
    python run_pretrain.py ... --eval_tasks my_task --eval_tasks_path tasks/     # local task YAMLs (offline)

The trainer runs a `TaskSuite` (`lm_eval.simple_evaluate`) on the main process at every evaluation and adds each
task's scores to that evaluation's metrics as `eval_<task>/<metric>`: the JSONL log keeps them as `<task>/<metric>`
in the evaluation row, TensorBoard shows them under `eval/<task>/<metric>`. `lm-eval` is an optional dependency
(requirements-test.txt); `check_eval_tasks` says in one line when it is missing or a task is unknown.
"""

import functools
import logging
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from pretraining.log_fields import TASKS_RUNTIME


@functools.lru_cache(maxsize=None)
def task_manager(include_path: str | None, tasks: tuple[str, ...] = ()):
    """lm-eval's task index, built once per process (start-up check, then every evaluation). Indexing lm-eval's
    thousands of YAMLs takes seconds: when `include_path` defines every task asked for, only it is read."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if set(tasks) <= set(local.all_tasks):
            return local
    return TaskManager(include_path=include_path)


def check_eval_tasks(tasks: list[str], include_path: str | None) -> list[str]:
    """Problems with `--eval_tasks` (as one-line messages): lm-eval not installed, or tasks it does not know."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return ["--eval_tasks needs the lm-eval package (lm-evaluation-harness): pip install lm-eval"]
    manager = task_manager(include_path, tuple(tasks))
    unknown = [task for task in tasks if task not in set(manager.all_tasks)]
    if unknown:
        where = (f" (with the YAMLs in {include_path})" if include_path
                 else " (add local task YAMLs with --eval_tasks_path)")
        return [f"unknown eval task(s) {', '.join(unknown)}: not an lm-eval task{where}"]
    try:
        # builds each task with its data (downloaded once, then cached): data that cannot load fails now, not at
        # the first evaluation hours into the run
        manager.load(tasks)
    except Exception as err:  # noqa: BLE001 - lm-eval and datasets raise many kinds (network, files, task config)
        reason = (str(err).splitlines() or [""])[0]
        return [f"cannot load eval task(s) {', '.join(tasks)}: {type(err).__name__}: {reason}"]
    return []


def score_key(task: str, metric_filter: str) -> str:
    """lm-eval's "acc,none" (metric, filter) as "acc"; a named filter stays in the name ("exact_match_flexible")."""
    metric, _, filter_name = metric_filter.partition(",")
    return f"{task}/{metric}" if filter_name in ("", "none") else f"{task}/{metric}_{filter_name}"


def task_scores(results: dict) -> dict[str, float]:
    """{"<task>/<metric>": value} from `simple_evaluate`'s results; standard errors and bookkeeping ("alias",
    "sample_len": no "metric,filter" name) left out."""
    scores = {}
    for task, values in results["results"].items():
        for name, value in values.items():
            if "," in name and "_stderr" not in name and isinstance(value, (int, float)):
                scores[score_key(task, name)] = float(value)
    return scores


@torch.no_grad()
def evaluate_tasks(model, tokenizer, tasks: list[str], limit: int | None, include_path: str | None,
                   batch_size: int = 8, bf16: bool = False) -> dict[str, float]:
    """Scores of `model` (in memory, as it is) on lm-eval `tasks`, `limit` examples each; under bf16 autocast
    with `bf16`, like the Trainer's own evaluation.

    lm-eval seeds Python's, NumPy's and torch's global generators with its fixed defaults (so its numbers match a
    standalone `lm_eval` run); their states are restored afterwards, so training draws the same random numbers
    as without it.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its notes on an in-memory model repeat every evaluation
    was_training = model.training
    model.eval()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    device = next(model.parameters()).device
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
                      mixed_precision_dtype=torch.bfloat16 if bf16 else None)
            results = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, log_samples=False,
                                              task_manager=task_manager(include_path, tuple(tasks)),
                                              verbosity="ERROR")
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        model.train(was_training)
    return task_scores(results)


@dataclass(frozen=True)
class TaskSuite:
    """The `--eval_tasks` that the trainer scores at every evaluation."""

    tasks: list[str]
    limit: int | None  # examples per task (None: all)
    include_path: str | None  # a folder of local task YAMLs
    batch_size: int

    def score(self, model, tokenizer, bf16: bool) -> dict[str, float]:
        """`<task>/<metric>` scores of the model as it is, plus `tasks_runtime` (seconds)."""
        start = time.perf_counter()
        scores = evaluate_tasks(model, tokenizer, self.tasks, self.limit, self.include_path, self.batch_size, bf16)
        return {**scores, TASKS_RUNTIME: time.perf_counter() - start}
