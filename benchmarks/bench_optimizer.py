"""Muon (`--optim muon`) against the recipe's AdamW at equal steps and tokens: each run is the app on the demo corpus
(`run_pretrain.py configs/demo.yaml`, or a deeper and wider shape), all evaluated by the app's evaluation on the same
held-out blocks (every block of demo_data/validation.jsonl) every --eval_steps steps.

    python demo_corpus.py demo_data
    python benchmarks/bench_optimizer.py --optim adamw_torch_fused muon --learning_rate 1e-3 3e-3 1e-2  # the sweep
    python benchmarks/bench_optimizer.py --optim muon --learning_rate 3e-2                  # Muon's best was the edge
    python benchmarks/bench_optimizer.py --optim muon --learning_rate 1e-2 --seed 7                      # another seed
    python benchmarks/bench_optimizer.py --optim adamw_torch_fused --learning_rate 3e-3 --seed 7
    python benchmarks/bench_optimizer.py --shape wide --optim adamw_torch_fused --learning_rate 3e-3      # wide shape
    python benchmarks/bench_optimizer.py --shape wide --optim muon --learning_rate 1e-2
    python benchmarks/bench_optimizer.py                      # the table of every result so far, nothing run
    python benchmarks/bench_optimizer.py --newton_schulz      # Muon's extra FLOPs per step at SmolLM2-135M's shape

Each run appends its row to --results (JSONL; a run already there is not run again): the held-out loss at every
evaluation, the median step time. The table then gives, per shape, each run's final held-out loss and the step at
which it first reaches the final held-out loss of AdamW's best learning rate (averaged over its seeds; linear between
evaluations; '-' where it never does); then each optimizer's best learning rate with its seeds' mean and spread, and
the median step time Muon/AdamW. Runs go one at a time: the step times
of the same machine, compared as a ratio.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHAPES = {  # config_overrides over the demo's 4 layers, hidden 128 (configs/demo.yaml)
    "demo": None,
    "wide": "num_hidden_layers=8,hidden_size=256,intermediate_size=768,num_attention_heads=4,num_key_value_heads=2",
}
ADAMW = "adamw_torch_fused"  # the recipe's: transformers' default


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optim", nargs="*", default=[], help="optimizers to run (--optim of the app)")
    parser.add_argument("--learning_rate", nargs="*", type=float, default=[], help="peak learning rates to run")
    parser.add_argument("--seed", nargs="*", type=int, default=[42], help="seeds to run")
    parser.add_argument("--shape", choices=SHAPES, default="demo", help="the demo model, or 2x deeper and wider")
    parser.add_argument("--max_steps", type=int, default=300, help="steps of every run (the demo's 300)")
    parser.add_argument("--eval_steps", type=int, default=25, help="steps between evaluations")
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "optimizer_results.jsonl"),
                        help="where the rows are kept")
    parser.add_argument("--newton_schulz", action="store_true",
                        help="print Muon's Newton-Schulz FLOPs per step at SmolLM2-135M's shape and batch, and exit")
    return parser.parse_args(argv)


def run(optim: str, learning_rate: float, seed: int, args: argparse.Namespace) -> dict:
    """One run of the app; its row."""
    with tempfile.TemporaryDirectory() as output_dir:
        argv = [sys.executable, os.path.join(ROOT, "run_pretrain.py"), os.path.join(ROOT, "configs", "demo.yaml"),
                "--optim", optim, "--learning_rate", str(learning_rate), "--seed", str(seed),
                "--max_steps", str(args.max_steps), "--eval_steps", str(args.eval_steps),
                "--max_eval_samples", "100000", "--save_steps", "100000", "--generation_steps", "0",
                "--report_to", "none", "--logging_steps", "10", "--output_dir", output_dir]
        if SHAPES[args.shape]:
            argv += ["--config_overrides", SHAPES[args.shape]]
        subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(output_dir, "training_log.jsonl"), encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
    train = [row for row in rows if row["type"] == "train"]
    return {"shape": args.shape, "optim": optim, "learning_rate": learning_rate, "seed": seed,
            "max_steps": args.max_steps, "tokens": train[-1]["tokens_seen"],
            "eval_loss": {str(row["step"]): row["eval_loss"] for row in rows if row["type"] == "eval"},
            "step_time": statistics.median(row["step_time"] for row in train[1:])}


def steps_to_reach(curve: dict[int, float], target: float) -> float | None:
    """The first step at which the held-out loss reaches `target`, linear between evaluations."""
    points = sorted(curve.items())
    for (step0, loss0), (step1, loss1) in zip([(0, float("inf"))] + points, points):
        if loss1 <= target:
            return step1 if loss0 == float("inf") else step0 + (loss0 - target) / (loss0 - loss1) * (step1 - step0)
    return None


def final(row: dict) -> float:
    return row["eval_loss"][str(row["max_steps"])]


def best_setting(rows: list[dict], optim: str) -> tuple[float, list[float]] | None:
    """`optim`'s learning rate with the lowest final held-out loss averaged over its seeds, and those losses."""
    by_lr = {}
    for row in rows:
        if row["optim"] == optim:
            by_lr.setdefault(row["learning_rate"], []).append(final(row))
    return min(by_lr.items(), key=lambda item: statistics.mean(item[1])) if by_lr else None


def table(results: list[dict]) -> str:
    lines = ["| shape | optimizer | lr | seed | tokens | held-out loss | steps to AdamW's best | step time (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    notes = []
    for shape in SHAPES:
        rows = sorted((row for row in results if row["shape"] == shape),
                      key=lambda row: (row["optim"], row["learning_rate"], row["seed"]))
        if not rows:
            continue
        best = {optim: best_setting(rows, optim) for optim in sorted({row["optim"] for row in rows})}
        target = statistics.mean(best[ADAMW][1]) if best.get(ADAMW) else None  # AdamW's best, over its seeds
        for row in rows:
            curve = {int(step): loss for step, loss in row["eval_loss"].items()}
            reached = steps_to_reach(curve, target) if target is not None else None
            lines.append(f"| {shape} | {row['optim']} | {row['learning_rate']:g} | {row['seed']} | {row['tokens']:,} | "
                         f"{final(row):.4f} | {'-' if reached is None else f'{reached:.0f}'} | "
                         f"{row['step_time']:.3f} |")
        for optim, (learning_rate, losses) in best.items():
            spread = f", seed spread {max(losses) - min(losses):.4f}" if len(losses) > 1 else ""
            notes.append(f"{shape}: best {optim}: lr {learning_rate:g}, held-out loss {statistics.mean(losses):.4f} "
                         f"over {len(losses)} seed(s){spread}")
        times = {optim: statistics.median(row["step_time"] for row in rows if row["optim"] == optim) for optim in best}
        if "muon" in times and ADAMW in times:
            notes.append(f"{shape}: median step time Muon/AdamW = {times['muon'] / times[ADAMW]:.2f}")
    return "\n".join(lines + [""] + notes)


def newton_schulz_flops(config, ns_steps: int = 5) -> float:
    """FLOPs of Muon's Newton-Schulz iterations per optimizer step: for each hidden matrix of m x n (m <= n), each
    iteration is X X^T (2 m^2 n), A A (2 m^3) and B X (2 m^2 n)."""
    hidden, ffn = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * hidden // config.num_attention_heads
    shapes = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden)] + [(hidden, ffn)] * 3
    per_iteration = sum(4 * min(s) ** 2 * max(s) + 2 * min(s) ** 3 for s in shapes)
    return per_iteration * ns_steps * config.num_hidden_layers


def print_newton_schulz() -> None:
    import torch

    from configuration_smollm2 import SmolLM2Config
    from modeling_smollm2 import SmolLM2ForCausalLM
    from pretraining.throughput import flops_per_token

    config = SmolLM2Config()  # SmolLM2-135M
    with torch.device("meta"):  # its parameter count, nothing allocated
        parameters = SmolLM2ForCausalLM(config).num_parameters()
    tokens = 8 * 2048  # the recipe's step
    step = flops_per_token(config, 2048, parameters) * tokens
    extra = newton_schulz_flops(config)
    print(f"SmolLM2-135M, {tokens:,} tokens/step: step {step / 1e12:.2f} TFLOP, Newton-Schulz (5 iterations, "
          f"{7 * config.num_hidden_layers} matrices) {extra / 1e12:.3f} TFLOP = {extra / step:.1%} more")


def main(argv=None) -> int:
    args = parse(argv)
    if args.newton_schulz:
        print_newton_schulz()
        return 0
    results = []
    if os.path.isfile(args.results):
        with open(args.results, encoding="utf-8") as f:
            results = [json.loads(line) for line in f]
    for optim in args.optim:
        for learning_rate in args.learning_rate:
            for seed in args.seed:
                key = (args.shape, optim, learning_rate, seed, args.max_steps)
                if any((r["shape"], r["optim"], r["learning_rate"], r["seed"], r["max_steps"]) == key for r in results):
                    continue
                row = run(optim, learning_rate, seed, args)
                print(json.dumps(row), flush=True)
                results.append(row)
                with open(args.results, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
