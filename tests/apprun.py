"""Helpers for tests that run the real app (`run_pretrain.py`) in a subprocess on a tiny model."""

import json
import os
import subprocess
import sys

from conftest import ROOT, TOKENIZER_DIR

TINY = "num_hidden_layers=2,hidden_size=64,intermediate_size=128,num_attention_heads=4,num_key_value_heads=2"


def tiny_args(output_dir, train_file, validation_file=None, **overrides) -> list[str]:
    values = {
        "tokenizer_name": TOKENIZER_DIR, "train_file": train_file, "config_overrides": TINY, "block_size": 64,
        "per_device_train_batch_size": 4, "max_steps": 30, "save_steps": 10, "eval_steps": 10,
        "generation_steps": 10, "generation_max_new_tokens": 8, "logging_steps": 1, "max_eval_samples": 4,
        "output_dir": output_dir,
    }
    if validation_file:
        values["validation_file"] = validation_file
    else:
        values["validation_documents"] = 20
    values.update(overrides)
    argv = []
    for key, value in values.items():
        argv += [f"--{key}", str(value)]
    return argv


def app_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("SMOLLM2_TRACEBACK", None)
    return env


def run_app(argv, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_pretrain.py"), *argv], cwd=ROOT, env=app_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_app(argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "run_pretrain.py"), *argv], cwd=ROOT, env=app_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_log(output_dir, kind=None) -> list[dict]:
    with open(os.path.join(output_dir, "training_log.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [row for row in rows if kind is None or row["type"] == kind]


def losses(output_dir) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_log(output_dir, "train")}
