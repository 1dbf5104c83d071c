"""The app's own training step, as `run_pretrain.py` runs it: its flags and device defaults (bf16 autocast over fp32
weights where the GPU has bf16), the streamed tokenize-and-pack pipeline with its DataLoader workers, the Trainer and
its callbacks, on a local corpus (CPython's docs, pass after pass). Nothing is saved: no checkpoint, no final model.

    python benchmarks/bench_app.py                                   # SmolLM2-135M at the recipe's 8 x 2048 (a GPU)
    python benchmarks/bench_app.py --torch_compile --chunked_loss    # the same, compiled, with the chunked loss
    python benchmarks/bench_app.py --fp32 --max_steps 10 --results rows.jsonl --compare_losses app  # fp32 vs bf16
    python benchmarks/bench_app.py --config tiny --block_size 64 --batch_size 2 --max_steps 6

It prints the app's start-up and progress lines as they come, then one row: the medians of the log rows after the
first `--warmup_rows` (which hold the compilation, if any) of step time, data wait, tokens/s and MFU, and the peak
GPU memory; compiled, the first step's seconds (the compile warm-up), the graph breaks and the recompiles (each with
its reason, as torch logs them). `--label` names the row; `--results PATH` appends it to a JSONL file, the run's
training log rows included, and `--compare_losses LABEL` prints this run's loss step by step against the row of that
label there (same seed, same data: fp32 against bf16 autocast). The variants are compared by running this once each
on the same machine (benchmarks/device_check.py).
"""

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import run_pretrain  # noqa: E402
from demo_corpus import write_corpus  # noqa: E402
from pretraining.arguments import parse_args  # noqa: E402
from pretraining.devices import probe_device  # noqa: E402
from pretraining.jsonl import append_jsonl, read_jsonl  # noqa: E402
from pretraining.model import BUNDLED_TOKENIZER, build_model  # noqa: E402
from pretraining.run_files import TRAINING_LOG  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback, set_seed  # noqa: E402

TINY = "num_hidden_layers=2,hidden_size=64,intermediate_size=128,num_attention_heads=4,num_key_value_heads=2"


def add_shape_args(parser: argparse.ArgumentParser) -> None:
    """The model and batch shape, the recipe's by default (bench_run.py takes the same)."""
    parser.add_argument("--config", choices=["135m", "tiny"], default="135m",
                        help="SmolLM2-135M, or the tiny test shape")
    parser.add_argument("--batch_size", type=int, default=8, help="sequences per step (the recipe's 8)")
    parser.add_argument("--block_size", type=int, default=2048, help="tokens per sequence (the recipe's 2048)")


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(parser)
    parser.add_argument("--max_steps", type=int, default=30, help="optimizer steps (and the schedule's length)")
    parser.add_argument("--stop_after", type=int,
                        help="end after this many steps, on --max_steps' schedule: a short run to compare losses with")
    parser.add_argument("--logging_steps", type=int, default=1,
                        help="steps per log row (1: every step's loss, for --compare_losses)")
    parser.add_argument("--warmup_rows", type=int, default=5, help="log rows left out of the medians")
    parser.add_argument("--torch_compile", action="store_true", help="the app's --torch_compile")
    parser.add_argument("--torch_compile_backend", help="with --torch_compile: the Trainer's compile backend "
                                                        "(default inductor)")
    parser.add_argument("--chunked_loss", action="store_true", help="the app's --chunked_loss")
    parser.add_argument("--fp32", action="store_true", help="fp32 throughout: the app's --bf16 false")
    parser.add_argument("--label", default="app", help="name of the result row")
    parser.add_argument("--results", help="append the result row (with the run's training log rows) to this JSONL file")
    parser.add_argument("--compare_losses", metavar="LABEL",
                        help="print the loss step by step against the row of this label in --results")
    return parser.parse_args(argv)


def app_argv(args, corpus: str, output_dir: str) -> list[str]:
    """run_pretrain's flags for this measurement: the recipe's, on the local corpus, with no evaluation, samples or
    saving."""
    argv = ["--tokenizer_name", BUNDLED_TOKENIZER, "--train_file", corpus, "--validation_documents", "0",
            "--block_size", str(args.block_size), "--per_device_train_batch_size", str(args.batch_size),
            "--max_steps", str(args.max_steps), "--logging_steps", str(args.logging_steps), "--save_strategy", "no",
            "--generation_steps", "0", "--disable_tqdm", "true", "--output_dir", output_dir,
            "--torch_compile", str(args.torch_compile), "--chunked_loss", str(args.chunked_loss)]
    if args.fp32:
        argv += ["--bf16", "false"]
    if args.config == "tiny":
        argv += ["--config_overrides", TINY]
    if args.torch_compile and args.torch_compile_backend:  # a backend alone would turn compiling on
        argv += ["--torch_compile_backend", args.torch_compile_backend]
    return argv


def measured(rows: list[dict], flops_per_token: float) -> dict:
    """The result's figures from `rows` (training log rows): medians of step time, data wait, tokens/s and MFU, the
    peak GPU memory, and the model FLOP/s that tokens/s means (for MFU against another peak); None where a field is
    missing (no MFU without a peak, no GPU memory on CPU)."""

    def median(key):
        values = [row[key] for row in rows if row.get(key) is not None]
        return statistics.median(values) if values else None

    peak = [row["peak_memory_gb"] for row in rows if row.get("peak_memory_gb") is not None]
    tokens_per_second = median("tokens_per_second")
    return {"step_time": median("step_time"), "data_wait": median("data_wait"), "tokens_per_second": tokens_per_second,
            "mfu": median("mfu"), "peak_memory_gb": max(peak) if peak else None,
            "model_tflops": tokens_per_second * flops_per_token / 1e12 if tokens_per_second else None}


def summary(label: str, figures: dict, rows: int) -> str:
    """One line of `figures` (`measured`); '-' where one is missing."""

    def shown(key, fmt, scale=1.0):
        return "-" if figures[key] is None else fmt.format(figures[key] * scale)

    return (f"{label}: step {shown('step_time', '{:,.1f} ms', 1e3)} | {shown('tokens_per_second', '{:,.0f} tok/s')} | "
            f"MFU {shown('mfu', '{:.1f}%', 100)} | data wait {shown('data_wait', '{:,.2f} ms', 1e3)} | "
            f"peak memory {shown('peak_memory_gb', '{:.1f} GiB')} | median of {rows} log rows")


class FirstStepTimer(TrainerCallback):
    """Seconds from the start of training to the end of its first optimizer step: compiled, the compile warm-up."""

    def __init__(self):
        self.start, self.seconds = None, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.start


class StopAfter(TrainerCallback):
    """Ends training after `steps` optimizer steps, leaving the learning-rate schedule that of --max_steps."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_training_stop = True


class CompileEvents(logging.Handler):
    """Counts torch.compile's graph breaks and recompiles from torch's own logs of them (`torch._logging`), which also
    print each one's reason: dynamo's counters keep no count of recompiles."""

    def __init__(self):
        super().__init__()
        self.graph_breaks, self.recompiles = 0, 0
        torch._logging.set_logs(graph_breaks=True, recompiles=True)
        logging.getLogger("torch._dynamo").addHandler(self)

    def emit(self, record):
        self.graph_breaks += record.name.endswith("__graph_breaks")
        self.recompiles += record.name.endswith("__recompiles")


def loss_differences(rows: list[dict], reference: list[dict]) -> dict[int, float]:
    """|loss - reference loss| at each step both training logs hold a loss for, in the order of `rows` (bench_run.py
    compares a resumed run with an uninterrupted one by it too)."""
    losses = {row["step"]: row.get("loss") for row in reference if row["type"] == "train"}
    return {row["step"]: abs(row["loss"] - losses[row["step"]]) for row in rows
            if row["type"] == "train" and row.get("loss") is not None and losses.get(row["step"]) is not None}


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
        first_step = FirstStepTimer()
        trainer.add_callback(first_step)
        if args.stop_after:
            trainer.add_callback(StopAfter(args.stop_after))
        compile_events = CompileEvents() if args.torch_compile else None
        trainer.train()
        log = list(read_jsonl(os.path.join(output_dir, TRAINING_LOG)))
        timed = [row for row in log if row["type"] == "train"][args.warmup_rows:]
        result = {"stage": args.label, **measured(timed, trainer.step_meter.flops_per_token),
                  "first_step_s": first_step.seconds}
        print(summary(args.label, result, len(timed)), flush=True)
        if compile_events:
            result.update(graph_breaks=compile_events.graph_breaks, recompiles=compile_events.recompiles)
            print(f"{args.label}: first step {first_step.seconds:.1f} s (the compile), "
                  f"{compile_events.graph_breaks} graph breaks, {compile_events.recompiles} recompiles", flush=True)
        if args.compare_losses:
            reference = next(row for row in read_jsonl(args.results) if row["stage"] == args.compare_losses)
            differences = loss_differences(log, reference["log"])
            result["loss_differences"] = differences
            print(f"{args.label} against {args.compare_losses}, |loss difference| by step: "
                  + ", ".join(f"{step}: {value:.4f}" for step, value in differences.items()), flush=True)
        if args.results:
            append_jsonl(args.results, {**result, "log": log})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
