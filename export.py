"""Export a trained SmolLM2 run for serving: a Llama-format folder (vLLM, TGI, MLX, transformers without remote
code, llama.cpp's own converter) or a GGUF file (llama.cpp, Ollama).

    python export.py runs/demo runs/demo-llama --format llama                  # then: vllm serve runs/demo-llama
    python export.py runs/demo/checkpoint-200 demo.gguf --format gguf --dtype q8_0   # then: llama-cli -m demo.gguf

The input is a run's output_dir (the final model) or one of its checkpoint-N folders: both hold the weights, the
config and the tokenizer. The formats are written by `pretraining/serving.py` (the Llama folder, a strict state-dict
copy into transformers' own `LlamaForCausalLM`) and `pretraining/gguf_writer.py`.
"""

import os
import sys

from transformers.utils import logging as hf_logging

from pretraining.errors import OneLineParser, report
from pretraining.gguf_writer import GGUF_DTYPES
from pretraining.serving import FORMATS, LLAMA_DTYPES, ExportError, export_model, load_trained


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
        return report(err, show_traceback="--traceback" in (sys.argv[1:] if argv is None else argv))
    print(f"{args.format} export written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
