"""Export a trained SmolLM2 run for serving: a Llama-format folder (vLLM, TGI, MLX, transformers without remote
code, llama.cpp's own converter) or a GGUF file (llama.cpp, Ollama).

    python export.py runs/demo runs/demo-llama --format llama                  # then: vllm serve runs/demo-llama
    python export.py runs/demo/checkpoint-200 demo.gguf --format gguf --dtype q8_0   # then: llama-cli -m demo.gguf

The input is a run's output_dir (the final model) or one of its checkpoint-N folders: both hold the weights, the
config and the tokenizer. SmolLM2's parameters are Llama's under the same names, so the Llama folder is a strict
state-dict copy into transformers' own `LlamaForCausalLM`, and gives the same logits. The training app calls
`export_run` at the end of a run given `--export_formats`; the GGUF writer is `gguf_export.py`.
"""

import argparse
import os
import shutil
import sys

import torch
from transformers.utils import logging as hf_logging

from gguf_export import GGUF_DTYPES, write_gguf

LLAMA_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FORMATS = ("llama", "gguf")
DEFAULT_DTYPE = {"llama": "float32", "gguf": "f16"}  # lossless for the folder; llama.cpp's usual unquantized type
# what the app writes beside the final model with --export_formats (OUTPUT_DIR/<name>)
RUN_EXPORT_NAMES = {"llama": "export-llama", "gguf": "model-f16.gguf"}
# SmolLM2Config fields with no Llama meaning: training switches of this app
SMOLLM2_ONLY = ("use_speed_ops", "loss_chunk_size", "auto_map")


class ExportError(ValueError):
    pass


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage before an error; one line naming the problem is enough."""

    def error(self, message):
        raise ExportError(message)


def load_trained(folder: str):
    """(model, tokenizer) of a run's output_dir or checkpoint folder, the model in fp32 with the plain path."""
    from transformers import AutoTokenizer

    from modeling_smollm2 import SmolLM2ForCausalLM

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
    model.config.use_speed_ops = False  # checkpoints carry the training switch; export reads plain weights
    return model.eval(), tokenizer


def llama_model(model, dtype: torch.dtype):
    """The same network as transformers' own LlamaForCausalLM: config fields and weights copied one to one."""
    from transformers import LlamaConfig, LlamaForCausalLM

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
    RUN_EXPORT_NAMES (replacing an export of an earlier run). Returns the paths written."""
    if not formats:
        return []
    model, tokenizer = load_trained(output_dir)
    return [export_model(model, tokenizer, output_dir, os.path.join(output_dir, RUN_EXPORT_NAMES[fmt]), fmt)
            for fmt in formats]


def check_request(source: str, out: str, fmt: str, dtype: str | None, overwrite: bool) -> None:
    """Every problem with the command line before anything is loaded or written."""
    allowed = LLAMA_DTYPES if fmt == "llama" else GGUF_DTYPES
    if dtype is not None and dtype not in allowed:
        raise ExportError(f"--dtype {dtype} is not one for --format {fmt}: choose from {', '.join(allowed)}")
    if os.path.lexists(out):
        if not overwrite:
            raise ExportError(f"{out} already exists: pass --overwrite to replace it")
        # --overwrite removes what it replaces: only something an export could have written
        if fmt == "gguf" and os.path.isdir(out):
            raise ExportError(f"{out} is a folder, not a GGUF file: --overwrite replaces only a file")
        if fmt == "llama" and os.path.isdir(out) and os.listdir(out) and not os.path.isfile(
                os.path.join(out, "config.json")):
            raise ExportError(f"{out} is not an earlier export (no config.json): --overwrite replaces only those")
    if os.path.commonpath([os.path.abspath(out), os.path.abspath(source)]) == os.path.abspath(out):
        raise ExportError(f"the output {out} cannot be the input folder or hold it")
    if fmt == "gguf" and not out.endswith(".gguf"):
        raise ExportError(f"a GGUF export is one file named *.gguf, got {out}")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description="Export a trained SmolLM2 run as a Llama-format folder or a GGUF file for "
                                       "serving engines.")
    parser.add_argument("source", help="A run's output_dir (the final model) or one of its checkpoint-N folders.")
    parser.add_argument("out", help="Where to write: a folder for --format llama, a *.gguf file for --format gguf.")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="llama: a Llama-format folder; gguf: a GGUF file.")
    parser.add_argument("--dtype", help=f"Weights' type. llama: {', '.join(LLAMA_DTYPES)} (default float32); "
                                        f"gguf: {', '.join(GGUF_DTYPES)} (default f16; norms stay f32).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace OUT if it exists (only once the new export is complete). Default: refuse.")
    parser.add_argument("--traceback", action="store_true", help="Show the full traceback on errors.")
    hf_logging.disable_progress_bar()  # per-file load/save bars
    try:
        args = parser.parse_args(argv)
        check_request(args.source, args.out, args.format, args.dtype, args.overwrite)
        model, tokenizer = load_trained(args.source)
        export_model(model, tokenizer, args.source, args.out, args.format, args.dtype)
    except (ValueError, OSError) as err:
        if "--traceback" in (sys.argv[1:] if argv is None else argv):
            raise
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"{args.format} export written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
