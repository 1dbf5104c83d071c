"""export.py and --export_formats: a tiny trained run as a Llama-format folder and as GGUF, read back by
transformers (Llama without remote code; GGUF through its GGUF loader), with the same tokens and logits."""

import json
import os
import subprocess
import sys

import pytest
import torch

import export
from helpers import MIXED_TEXT, app_env, run_here, tiny_args
from pretraining.run_files import RUN_EXPORTS
from pretraining.serving import load_trained

GGUF_TOLERANCE = {"f32": 1e-5, "f16": 1e-2}  # max |logit difference| (fp32 logits of the tiny model are ~1)


@pytest.fixture(scope="module")
def exported_run(corpus, tmp_path_factory):
    """A finished tiny run with --export_formats llama,gguf: its output_dir."""
    output_dir = str(tmp_path_factory.mktemp("export_run"))
    result = run_here(tiny_args(output_dir, *corpus, max_steps=10, export_formats="llama,gguf"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir


@pytest.fixture(scope="module")
def reference(exported_run):
    """(input ids of MIXED_TEXT, fp32 logits of the trained SmolLM2 model on them)."""
    model, tokenizer = load_trained(exported_run)
    ids = tokenizer(MIXED_TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        return ids, model(ids).logits


def test_run_writes_exports_and_says_how_to_serve_them(exported_run):
    llama_dir = os.path.join(exported_run, RUN_EXPORTS["llama"])
    assert os.path.isfile(os.path.join(exported_run, RUN_EXPORTS["gguf"]))
    files = os.listdir(llama_dir)
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= set(files)
    assert not [name for name in files if name.endswith(".py")]
    with open(os.path.join(llama_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] and "use_speed_ops" not in config and "auto_map" not in config
    with open(os.path.join(exported_run, "README.md"), encoding="utf-8") as f:
        card = f.read()
    assert "vllm serve export-llama" in card and "llama-cli -m model-f16.gguf" in card


def test_llama_folder_loads_without_remote_code_in_a_fresh_process(exported_run, reference, tmp_path):
    ids, logits = reference
    llama_dir = os.path.join(exported_run, RUN_EXPORTS["llama"])
    torch.save(ids, tmp_path / "ids.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"  # no trust_remote_code: plain Llama
        "assert type(model).__name__ == 'LlamaForCausalLM', type(model)\n"
        "with torch.no_grad():\n"
        "    torch.save(model(torch.load(sys.argv[2])).logits, sys.argv[3])\n"
    )
    # run from tmp_path: the project's modules are not importable there, so nothing but transformers' Llama serves
    result = subprocess.run([sys.executable, "-c", script, llama_dir, str(tmp_path / "ids.pt"),
                             str(tmp_path / "logits.pt")], cwd=tmp_path, env=app_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (torch.load(tmp_path / "logits.pt") - logits).abs().max().item() <= 1e-5


def test_llama_export_of_a_checkpoint_in_bfloat16(exported_run, tmp_path):
    out = tmp_path / "llama-bf16"
    assert export.main([os.path.join(exported_run, "checkpoint-10"), str(out), "--format", "llama",
                        "--dtype", "bfloat16"]) == 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_gguf_round_trip_through_transformers(exported_run, reference, tmp_path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids, logits = reference
    name = f"model-{dtype}.gguf"
    assert export.main([os.path.join(exported_run, "checkpoint-10"), str(tmp_path / name), "--format", "gguf",
                        "--dtype", dtype]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=name, dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        difference = (model(ids).logits - logits).abs().max().item()
    assert difference <= GGUF_TOLERANCE[dtype], difference
    if dtype == "f32":  # the tokenizer metadata does not depend on the weights' type: read it back once
        tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=name)
        assert tokenizer(MIXED_TEXT, return_tensors="pt").input_ids.tolist() == ids.tolist()
        assert tokenizer.convert_tokens_to_ids("<|im_start|>") == 1 and tokenizer.eos_token_id == 0


def test_gguf_has_llama_cpp_metadata(exported_run):
    import gguf

    reader = gguf.GGUFReader(os.path.join(exported_run, RUN_EXPORTS["gguf"]))
    fields = {name: field.contents() for name, field in reader.fields.items()
              if not name.startswith(("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"))}
    assert fields["general.architecture"] == "llama"
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "smollm"
    assert fields["llama.block_count"] == 2 and fields["llama.attention.head_count_kv"] == 2
    assert fields["tokenizer.ggml.bos_token_id"] == 0 and fields["tokenizer.ggml.eos_token_id"] == 0
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert types[1] == gguf.TokenType.CONTROL and types[100] == gguf.TokenType.NORMAL  # <|im_start|>, a plain token
    names = {tensor.name for tensor in reader.tensors}
    assert "token_embd.weight" in names and "blk.1.attn_q.weight" in names and "output.weight" not in names  # tied


@pytest.mark.parametrize("args, message", [
    (["no/such/run", "{out}", "--format", "llama"], "no such folder"),
    (["{tmp}", "{out}", "--format", "llama"], "holds no saved model"),
    (["{run}", "{out}", "--format", "onnx"], "invalid choice: 'onnx'"),
    (["{run}", "{out}", "--format", "llama", "--dtype", "q8_0"], "--dtype q8_0 is not one for --format llama"),
    (["{run}", "{run}/model.safetensors", "--format", "llama"], "already exists: pass --overwrite"),
])
def test_bad_input_is_a_one_line_error(exported_run, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    args = [arg.format(run=exported_run, out=out, tmp=tmp_path) for arg in args]
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(exported_run))
    assert export.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(exported_run))) == before


def test_cli_error_has_no_traceback(tmp_path):
    result = run_here([str(tmp_path / "missing"), str(tmp_path / "out.gguf"), "--format", "gguf"], export.main)
    assert result.returncode == 2 and result.stderr.startswith("error: no such folder")
    assert result.stderr.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_app_refuses_an_unknown_export_format(corpus, tmp_path):
    output_dir = tmp_path / "run"
    result = run_here(tiny_args(str(output_dir), *corpus, export_formats="llama,onnx"))
    assert result.returncode == 2 and "error: export_formats: unknown format(s) onnx" in result.stderr
    assert not output_dir.exists()
