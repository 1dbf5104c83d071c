"""A trained run as the formats serving engines read: a Llama-format folder (vLLM, TGI, MLX, transformers without
remote code, llama.cpp's own converter) or a GGUF file (llama.cpp, Ollama; written by `gguf_writer.py`).

SmolLM2's parameters are Llama's under the same names, so the Llama folder is a strict state-dict copy into
transformers' own `LlamaForCausalLM`, and gives the same logits. `export.py` is the command; the training app calls
`export_run` at the end of a run given `--export_formats`.
"""

import os
import shutil

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from modeling_smollm2 import SmolLM2ForCausalLM
from pretraining.gguf_writer import write_gguf
from pretraining.run_files import RUN_EXPORTS

LLAMA_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FORMATS = tuple(RUN_EXPORTS)  # llama, gguf
DEFAULT_DTYPE = {"llama": "float32", "gguf": "f16"}  # lossless for the folder; llama.cpp's usual unquantized type
# SmolLM2Config fields with no Llama meaning
SMOLLM2_ONLY = ("auto_map",)


class ExportError(ValueError):
    pass


def load_trained(folder: str):
    """(model, tokenizer) of a run's output_dir or checkpoint folder, the model in fp32 with the plain path."""
    if not os.path.isdir(folder):
        raise ExportError(f"no such folder: {folder}")
    if not os.path.isfile(os.path.join(folder, "config.json")) or not any(
            name.endswith(".safetensors") for name in os.listdir(folder)):
        raise ExportError(f"{folder} holds no saved model (config.json and .safetensors weights): pass a run's "
                          "output_dir or one of its checkpoint-N folders")
    try:
        model = SmolLM2ForCausalLM.from_pretrained(folder, dtype=torch.float32)
        # AutoTokenizer reads config.json too, and its auto_map makes it ask on stdin without trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ExportError(f"cannot load the model in {folder}: {str(err).splitlines()[0]}") from None
    return model.eval(), tokenizer


def llama_model(model, dtype: torch.dtype):
    """The same network as transformers' own LlamaForCausalLM: config fields and weights copied one to one."""
    fields = {key: value for key, value in model.config.to_dict().items()
              if key not in SMOLLM2_ONLY + ("model_type", "architectures", "transformers_version")}
    config = LlamaConfig(**fields)
    config.architectures = ["LlamaForCausalLM"]
    llama = LlamaForCausalLM(config)
    llama.load_state_dict(model.state_dict(), strict=True)  # same names: any missing or extra key is a bug
    llama.generation_config = model.generation_config
    return llama.to(dtype).eval()


def write_llama(model, tokenizer, out_dir: str, dtype: str) -> None:
    llama = llama_model(model, LLAMA_DTYPES[dtype])
    llama.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def export_model(model, tokenizer, tokenizer_dir: str, out: str, fmt: str, dtype: str | None = None,
                 name: str | None = None) -> str:
    """Write `model` as format `fmt` to `out` (a folder for llama, a file for gguf) and return `out`.

    Written under a temporary name beside `out` and renamed at the end, so `out` is either the complete export
    or untouched. `tokenizer_dir` holds the tokenizer's files (GGUF reads merges and special tokens from them).
    """
    dtype = dtype or DEFAULT_DTYPE[fmt]
    parent, base = os.path.split(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{base}.tmp-{os.getpid()}")
    try:
        if fmt == "llama":
            write_llama(model, tokenizer, tmp, dtype)
        else:
            write_gguf(model, tokenizer, tokenizer_dir, tmp, dtype,
                       name or os.path.basename(os.path.abspath(tokenizer_dir)))
        remove_path(out)  # an earlier export goes only now: a failed export leaves it intact
        os.replace(tmp, out)
    finally:
        remove_path(tmp)
    return out


def export_run(output_dir: str, formats: list[str]) -> list[str]:
    """The app's --export_formats: each format from the final model in `output_dir`, written beside it under
    RUN_EXPORTS (replacing an export of an earlier run). Returns the paths written."""
    if not formats:
        return []
    model, tokenizer = load_trained(output_dir)
    return [export_model(model, tokenizer, output_dir, os.path.join(output_dir, RUN_EXPORTS[fmt]), fmt)
            for fmt in formats]
