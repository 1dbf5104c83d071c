"""The app's own training step, as `run_pretrain.py` runs it: its flags and device defaults (bf16 autocast over fp32
weights where the GPU has bf16), the streamed tokenize-and-pack pipeline with its DataLoader workers, the Trainer and
its callbacks, on a local corpus (CPython's docs, pass after pass). Nothing is saved: no checkpoint, no final model.

    python benchmarks/bench_app.py                                   # SmolLM2-135M at the recipe's 8 x 2048 (a GPU)
    python benchmarks/bench_app.py --torch_compile --chunked_loss    # the same, compiled, with the chunked loss
    python benchmarks/bench_app.py --config tiny --block_size 64 --batch_size 2 --max_steps 6 --logging_steps 2

It prints the app's start-up and progress lines as they come, then one row: the medians of the log rows after the
first `--warmup_rows` (which hold the compilation, if any) of step time, data wait, tokens/s and MFU, and the peak
GPU memory. `--label` names the row; `--log_copy PATH` keeps the run's training_log.jsonl. The variants are compared
by running this once each on the same machine (benchmarks/device_check.sh).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import run_pretrain  # noqa: E402
from demo_corpus import write_corpus  # noqa: E402
from pretraining.arguments import parse_args  # noqa: E402
from pretraining.devices import probe_device  # noqa: E402
from pretraining.jsonl import read_jsonl  # noqa: E402
from pretraining.model import BUNDLED_TOKENIZER, build_model  # noqa: E402
from pretraining.run_files import TRAINING_LOG  # noqa: E402
from transformers import set_seed  # noqa: E402

TINY = "num_hidden_layers=2,hidden_size=64,intermediate_size=128,num_attention_heads=4,num_key_value_heads=2"


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["135m", "tiny"], default="135m",
                        help="SmolLM2-135M, or the tiny test shape")
    parser.add_argument("--batch_size", type=int, default=8, help="sequences per step (the recipe's 8)")
    parser.add_argument("--block_size", type=int, default=2048, help="tokens per sequence (the recipe's 2048)")
    parser.add_argument("--max_steps", type=int, default=40, help="optimizer steps")
    parser.add_argument("--logging_steps", type=int, default=5, help="steps per log row")
    parser.add_argument("--warmup_rows", type=int, default=2, help="log rows left out of the medians")
    parser.add_argument("--torch_compile", action="store_true", help="the app's --torch_compile")
    parser.add_argument("--torch_compile_backend", help="with --torch_compile: the Trainer's compile backend "
                                                        "(default inductor)")
    parser.add_argument("--chunked_loss", action="store_true", help="the app's --chunked_loss")
    parser.add_argument("--label", default="app", help="name of the result row")
    parser.add_argument("--log_copy", help="copy the run's training_log.jsonl here")
    return parser.parse_args(argv)


def app_argv(args, corpus: str, output_dir: str) -> list[str]:
    """run_pretrain's flags for this measurement: the recipe's, on the local corpus, with no evaluation, samples or
    saving."""
    argv = ["--tokenizer_name", BUNDLED_TOKENIZER, "--train_file", corpus, "--validation_documents", "0",
            "--block_size", str(args.block_size), "--per_device_train_batch_size", str(args.batch_size),
            "--max_steps", str(args.max_steps), "--logging_steps", str(args.logging_steps), "--save_strategy", "no",
            "--generation_steps", "0", "--disable_tqdm", "true", "--output_dir", output_dir,
            "--torch_compile", str(args.torch_compile), "--chunked_loss", str(args.chunked_loss)]
    if args.config == "tiny":
        argv += ["--config_overrides", TINY]
    if args.torch_compile and args.torch_compile_backend:  # a backend alone would turn compiling on
        argv += ["--torch_compile_backend", args.torch_compile_backend]
    return argv


def summary(label: str, rows: list[dict]) -> str:
    """One line of medians over `rows` (training log rows); '-' where a field is missing (no MFU without a peak, no
    GPU memory on CPU)."""

    def median(key, fmt, scale=1.0):
        values = [row[key] for row in rows if row.get(key) is not None]
        return fmt.format(statistics.median(values) * scale) if values else "-"

    peak = [row["peak_memory_gb"] for row in rows if row.get("peak_memory_gb") is not None]
    return (f"{label}: step {median('step_time', '{:,.1f} ms', 1e3)} | "
            f"{median('tokens_per_second', '{:,.0f} tok/s')} | MFU {median('mfu', '{:.1f}%', 100)} | "
            f"data wait {median('data_wait', '{:,.2f} ms', 1e3)} | "
            f"peak memory {f'{max(peak):.1f} GiB' if peak else '-'} | median of {len(rows)} log rows")


def main(argv=None) -> None:
    args = parse(argv)
    work = tempfile.mkdtemp(prefix="bench_app_")
    try:
        corpus, _ = write_corpus(os.path.join(work, "corpus"))
        output_dir = os.path.join(work, "run")
        device = probe_device()
        model_args, data_args, training_args = parse_args(app_argv(args, corpus, output_dir), device)
        # as run_pretrain.train builds them: seeded first, the run's inputs, then the model
        set_seed(training_args.seed)
        inputs = run_pretrain.run_inputs(model_args, data_args, training_args)
        model = build_model(model_args, inputs.config)
        trainer = run_pretrain.build_trainer(data_args, training_args, inputs.tokenizer, model, inputs.data,
                                             inputs.run_state)
        run_pretrain.print_summary(model, data_args, training_args, inputs.data, trainer.step_meter.peak_flops, device)
        trainer.train()
        log = os.path.join(output_dir, TRAINING_LOG)
        rows = [row for row in read_jsonl(log) if row["type"] == "train"][args.warmup_rows:]
        if args.log_copy:
            shutil.copyfile(log, args.log_copy)
        print(summary(args.label, rows), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
