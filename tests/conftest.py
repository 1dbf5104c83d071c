"""Shared fixtures: the real SmolLM2 tokenizer (committed under assets/) and a small local corpus."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TOKENIZER_DIR = os.path.join(ROOT, "assets", "smollm2_tokenizer")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(train.jsonl, validation.jsonl) from CPython's bundled docs."""
    from demo_corpus import write_corpus

    return write_corpus(str(tmp_path_factory.mktemp("corpus")))


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def tiny_run(corpus, tmp_path_factory):
    """One real 30-step run of the app (tiny model, TensorBoard on), shared by the tests that only read it:
    (output_dir, the finished process)."""
    from apprun import run_app, tiny_args

    output_dir = str(tmp_path_factory.mktemp("tiny_run"))
    result = run_app(tiny_args(output_dir, *corpus, report_to="tensorboard"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir, result
