"""The app on a GPU, checked in one run on a lent GPU machine (one H200: about 9 minutes, one device call), each
figure printed as it comes and a summary table printed last:

  0. environment: versions, the import of every module the app loads, the machine's bf16 matmul ceiling next to its
     data-sheet peak, attention forward + backward at the app's shape per SDPA backend (bench_env.py);
  1-4. the app's own training loop (bench_app.py: run_pretrain's flags and device defaults, its data pipeline, Trainer
     and callbacks) at the recipe's 8 x 2048 tokens, fp32 weights under bf16 autocast: eager, compiled
     (--torch_compile: the compile's seconds, graph breaks, recompiles), compiled + --chunked_loss, eager +
     --chunked_loss;
  5. the real `python run_pretrain.py` at SmolLM2-135M's shape with checkpoints, evaluation, generation samples, the
     final save and curves, stopped by SIGTERM at a step and resumed, its losses against an uninterrupted run's
     (bench_run.py);
  6. fp32 against bf16 autocast: the first steps' losses, same seed and data (bench_app.py --fp32);
  7. ours against transformers' LlamaForCausalLM, same weights, shape and precision, both eager (bench_model.py).

For each: tokens/s, MFU against the data-sheet peak and against the measured matmul, step time, data wait, peak
memory. Every stage runs in its own process group within its time cap, which also keeps time for the stages after
it; one that fails or runs out of time is named, and the next still runs. Nothing large is written to $OUT (default
/tmp/device_check): the whole output (device_check.log), every stage's figures with the app's training logs
(results.jsonl), and the stopped-and-resumed run's log, samples and curves: 5 files.

    bash benchmarks/device_wheels.sh                 # here, once: the packages that machine lacks, as wheels in .whl/
    python3 benchmarks/device_check.py               # there, with .whl carried along (device tool: carry [".whl"])
    python3 benchmarks/device_check.py --cpu-smoke   # every stage end to end at a tiny shape on CPU (a test runs it)
"""

import argparse
import glob
import importlib.metadata as metadata
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the repo root

from pretraining.jsonl import read_jsonl  # noqa: E402  (the standard library only: runs before any requirement check)

USAGE = "python3 benchmarks/device_check.py [--cpu-smoke] [--budget SECONDS] [--stages N ...]"
RECIPE_TOKENS = 5000 * 8 * 2048  # the reference recipe's tokens: 5000 steps of 8 x 2048
# the app's requirements that the check does not measure: exports, trackers, curves (curves are drawn if matplotlib is
# there, which the machine has)
NOT_MEASURED = ("gguf", "tensorboard", "matplotlib")


@dataclass(frozen=True)
class Stage:
    name: str
    argv: list[str]  # after `python3`
    cap: int  # seconds at most (on the GPU; the CPU smoke run scales them)
    reserve: int  # seconds it needs at least to be worth starting, kept for it by the stages before
    needs_app: bool = True  # needs every requirement of the app (the environment stage reports what is missing)


def stages(smoke: bool, results: str, out: str) -> list[Stage]:
    """The check's stages, in order, at the recipe's shape on a GPU or at a tiny one on CPU (`smoke`)."""
    tiny = ["--config", "tiny", "--batch_size", "2", "--block_size", "64"] if smoke else []
    app = ["benchmarks/bench_app.py", *tiny, "--results", results]
    if smoke:
        app += ["--max_steps", "8", "--warmup_rows", "2"]
    # on CPU the compile path without inductor's C++ build, which takes minutes
    compiled = ["--torch_compile", *(["--torch_compile_backend", "aot_eager"] if smoke else [])]
    llama = ["--batch_size", "2", "--block_size", "64", "--config", "tiny", "--repeats", "2", "--warmup", "1"] \
        if smoke else ["--batch_size", "8", "--block_size", "2048", "--repeats", "5"]
    run = ["--max_steps", "8", "--every", "4"] if smoke else []
    return [
        Stage("environment", ["benchmarks/bench_env.py", *(["--cpu-smoke"] if smoke else []), "--results", results],
              cap=60, reserve=20, needs_app=False),
        Stage("app, eager", [*app, "--label", "app, eager"], cap=75, reserve=30),
        Stage("app, compiled", [*app, *compiled, "--label", "app, compiled"], cap=170, reserve=60),
        Stage("app, compiled + chunked loss", [*app, *compiled, "--chunked_loss", "--label",
                                               "app, compiled + chunked loss"], cap=130, reserve=45),
        Stage("app, eager + chunked loss", [*app, "--chunked_loss", "--label", "app, eager + chunked loss"],
              cap=60, reserve=30),
        Stage("run (stop + resume)", ["benchmarks/bench_run.py", *tiny, *run, "--results", results, "--out", out],
              cap=170, reserve=60),
        # the same max_steps as "app, eager": the same learning rates at the compared steps
        Stage("app, fp32", [*app, "--fp32", "--stop_after", "4" if smoke else "10", "--compare_losses", "app, eager",
                            "--label", "app, fp32"], cap=60, reserve=25),
        Stage("ours against LlamaForCausalLM", ["benchmarks/bench_model.py", *llama, "--bf16_autocast",
                                                       "--skip", "memory", "generate", "--results", results],
              cap=60, reserve=25),
    ]


class Output:
    """Everything printed, on the terminal as it comes and in device_check.log."""

    def __init__(self, path: str):
        self.file = open(path, "w", encoding="utf-8")

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def install_wheels(say: Output) -> str | None:
    """The carried wheels (.whl/, benchmarks/device_wheels.sh) installed into a folder of their own, put first on this
    process's and the stages' path; that folder, or None when none were carried."""
    wheels = sorted(glob.glob(os.path.join(ROOT, ".whl", "*.whl")))
    if not wheels:
        return None
    site = tempfile.mkdtemp(prefix="device_check_site_")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--target", site, *wheels], check=True)
    sys.path.insert(0, site)  # importlib.metadata reads sys.path as it is when asked
    say(f"installed {len(wheels)} carried wheels: " + ", ".join(os.path.basename(w).split("-")[0] for w in wheels))
    return site


def requirement_problems() -> list[str]:
    """Every requirement of the app and of the packages it imports that this machine does not meet, with the version
    found: all of them in one go, before a GPU second is spent (a missing wheel costs a rerun of the whole call)."""
    problems = []

    def check(requirement: Requirement, needed_by: str) -> None:
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            return
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{needed_by} needs {requirement}: not installed")
            return
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{needed_by} needs {requirement}: found {version}")

    with open(os.path.join(ROOT, "requirements.txt")) as f:
        app = [Requirement(text) for text in (line.split("#")[0].strip() for line in f) if text]
    for requirement in app:
        if requirement.name not in NOT_MEASURED:
            check(requirement, "the app")
    for name in ("transformers", "datasets", "torchdata", "accelerate"):
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # named above, as a requirement of the app
        for text in requires:
            check(Requirement(text), name)
    return problems


def run_stage(stage: Stage, cap: float, env: dict, say: Output) -> str:
    """`stage` in its own process group, its output passed on line by line; "ok", or what went wrong in a few words.

    Past its cap the whole group is killed (SIGKILL): the app's SIGTERM handler would finish the step and save a full
    checkpoint (gigabytes at 135M with AdamW's state, and the time for it), and exit 0 as if the stage were done."""
    process = subprocess.Popen([sys.executable, *stage.argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    reader = threading.Thread(target=lambda: [say(line.rstrip("\n")) for line in process.stdout], daemon=True)
    reader.start()
    try:
        status = process.wait(timeout=cap)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        reader.join(timeout=5)
        return f"ran out of time (its cap: {cap:.0f} s)"
    reader.join(timeout=5)
    try:  # what the stage left running in its group (a DataLoader worker) goes with it
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return "ok" if status == 0 else f"failed (exit {status})"


def fmt(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def table(rows: list[dict], outcomes: dict[str, str], smoke: bool) -> list[str]:
    """The summary: the environment's figures, then one line per stage, then the recipe's time at the best rate."""
    by_stage = {row["stage"]: row for row in rows}
    lines = []
    env = by_stage.get("environment")
    matmul = env and env.get("matmul_tflops")
    if env:
        sheet = env.get("sheet_tflops")
        lines.append(f"device: {env.get('device')}; " + ", ".join(
            f"{name} {version or 'missing'}" for name, version in (env.get("versions") or {}).items()))
        lines.append(f"matmul ceiling ({'fp32, tiny' if smoke else 'bf16 8192^3'}): {fmt(matmul, '.1f')} TFLOP/s "
                     f"measured; data sheet {fmt(sheet, '.1f')}" + (f" ({matmul / sheet:.0%})" if matmul and sheet
                                                                    else ""))
        if env.get("imports_failed"):
            lines.append("imports failed: " + ", ".join(env["imports_failed"]))
    attention = [row for row in rows if row["stage"].startswith("attention, ")]
    if attention:
        lines.append("attention fwd+bwd at the app's shape: " + " | ".join(
            f"{row['stage'][len('attention, '):]}" + (f" ({row['backend']})" if row.get("backend") and
                                                      row["stage"] == "attention, default" else "")
            + (f" {row['ms']:.2f} ms, {fmt(row.get('tflops'), '.0f')} TFLOP/s" if row.get("ms") is not None
               else f": {(row.get('note') or 'did not run').split('. ')[0]}") for row in attention))
    lines.append(f"{'stage':<38}{'step ms':>9}{'tok/s':>11}{'MFU sheet':>10}{'MFU matmul':>11}{'data ms':>9}"
                 f"{'peak GiB':>9}  notes")
    for name, outcome in outcomes.items():
        if name == "environment":
            continue
        row = by_stage.get(name)
        if name.startswith("ours against"):
            lines += llama_lines(name, row, outcome, matmul, sheet=bool(env and env.get("sheet_tflops")))
            continue
        notes = [] if outcome == "ok" else [outcome]
        if row:
            notes += stage_notes(row)
        figures = row or {}
        lines.append(f"{name:<38}{fmt(figures.get('step_time'), ',.1f', 1e3):>9}"
                     f"{fmt(figures.get('tokens_per_second'), ',.0f'):>11}{fmt(figures.get('mfu'), '.1%'):>10}"
                     f"{fmt(mfu(figures, matmul), '.1%'):>11}{fmt(figures.get('data_wait'), ',.2f', 1e3):>9}"
                     f"{fmt(figures.get('peak_memory_gb'), '.1f'):>9}  {'; '.join(notes)}")
    speeds = [(row["tokens_per_second"], row["stage"]) for row in rows
              if row["stage"].startswith("app, ") and row["stage"] != "app, fp32" and row.get("tokens_per_second")]
    if speeds:
        best, name = max(speeds)
        lines.append(f"the recipe's {RECIPE_TOKENS:,} tokens at the best rate ({name}, {best:,.0f} tok/s): "
                     f"{RECIPE_TOKENS / best / 60:,.1f} minutes of training steps")
    return lines


def mfu(figures: dict, matmul_tflops: float | None) -> float | None:
    """MFU against the matmul ceiling measured in the environment stage."""
    model = figures.get("model_tflops")
    return model / matmul_tflops if model and matmul_tflops else None


def stage_notes(row: dict) -> list[str]:
    """What a stage's row says beyond the table's columns."""
    notes = []
    if row.get("first_step_s") is not None and "graph_breaks" in row:
        notes.append(f"first step {row['first_step_s']:.1f} s (compile), {row['graph_breaks']} graph breaks, "
                     f"{row['recompiles']} recompiles")
    if row.get("loss_differences"):
        worst = max(row["loss_differences"].items(), key=lambda item: item[1])
        notes.append(f"|loss - bf16 loss| max {worst[1]:.4f} (step {worst[0]}) over "
                     f"{len(row['loss_differences'])} steps")
    if "stopped_at" in row:
        notes.append(f"SIGTERM at step {row['stopped_at']}, resumed; |loss - uninterrupted loss| max "
                     f"{fmt(row.get('loss_diff_before'), '.2g')} before the stop, "
                     f"{fmt(row.get('loss_diff_after'), '.2g')} after; "
                     f"checks {'ok' if row.get('ok') else 'FAILED: ' + str(row.get('note'))}")
    return notes


def llama_lines(name: str, row: dict | None, outcome: str, matmul: float | None, sheet: bool) -> list[str]:
    """Ours and LlamaForCausalLM, a line each, from bench_model's row. bench_model's MFU is against the data sheet
    only where the GPU has one; elsewhere it is against its own matmul, so it is left out of the sheet column."""
    if not row:
        return [f"{name:<38}{'':>59}  {outcome}"]
    lines = []
    for model in ("ours", "llama"):
        figures = row[model]
        note = f"ours / llama {row['speed_ratio']:.2f}x" if model == "ours" else ""
        sheet_mfu = figures.get("mfu") if sheet else None
        lines.append(f"{model + ' (bench_model, eager)':<38}{fmt(figures['step_time'], ',.1f', 1e3):>9}"
                     f"{fmt(figures['tokens_per_second'], ',.0f'):>11}{fmt(sheet_mfu, '.1%'):>10}"
                     f"{fmt(mfu(figures, matmul), '.1%'):>11}{'-':>9}{'-':>9}  {note}")
    return lines


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="every stage at a tiny shape on CPU")
    parser.add_argument("--budget", type=int, help="seconds for the whole check (default: 540 on a GPU, inside the "
                                                   "device tool's 600 s per call; 900 for --cpu-smoke)")

    def one_line_error(message):
        print(f"error: {message} (use: {USAGE})", file=sys.stderr)
        sys.exit(2)

    parser.add_argument("--stages", type=int, nargs="+", choices=range(8), metavar="N",
                        help="run only these stages (0-7, as numbered above), e.g. to rerun the ones that failed")
    parser.error = one_line_error
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    smoke = args.cpu_smoke
    start = time.monotonic()
    deadline = start + (args.budget or (900 if smoke else 540))
    out = os.environ.get("OUT") or "/tmp/device_check"
    os.makedirs(out, exist_ok=True)
    say = Output(os.path.join(out, "device_check.log"))
    results = os.path.join(out, "results.jsonl")
    open(results, "w").close()
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    site = None if smoke else install_wheels(say)
    if site:
        env["PYTHONPATH"] = site + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    problems = requirement_problems()
    say(f"python {platform.python_version()}, " + ", ".join(
        f"{name} {version(name)}" for name in ("torch", "transformers", "accelerate", "datasets", "torchdata",
                                               "pyarrow")))
    if problems:  # the environment stage still runs: it tells what else this machine has
        say("error: " + "; ".join(problems) + " (bash benchmarks/device_wheels.sh where pip works, then carry .whl)")

    outcomes = {}
    plan = stages(smoke, results, out)
    plan = [stage for number, stage in enumerate(plan) if args.stages is None or number in args.stages]
    for index, stage in enumerate(plan):
        say(f"== {stage.name}")
        left = deadline - time.monotonic()
        later = sum(later.reserve for later in plan[index + 1:])
        cap = min(stage.cap * (3 if smoke else 1), left - later)  # shared CPUs are slow and vary
        if problems and stage.needs_app:
            outcomes[stage.name] = "not run: requirements not met"
        elif stage.name == "app, fp32" and outcomes.get("app, eager") != "ok":
            outcomes[stage.name] = "not run: no bf16 losses to compare with (app, eager)"
        elif cap < stage.reserve:
            outcomes[stage.name] = "not run, out of time"
        else:
            outcomes[stage.name] = run_stage(stage, cap, env, say)
        if outcomes[stage.name] != "ok":
            say(f"{stage.name}: {outcomes[stage.name]}")

    rows = list(read_jsonl(results))  # a stage killed mid-write leaves a torn last line: skipped
    say("== results")
    for line in table(rows, outcomes, smoke):
        say(line)
    bad = [name for name, outcome in outcomes.items() if outcome != "ok"]
    say(f"{len(plan) - len(bad)} of {len(plan)} stages ok{': not ' + ', '.join(bad) if bad else ''}; "
        f"{time.monotonic() - start:.0f} s")
    return 1 if bad or problems else 0


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


if __name__ == "__main__":
    sys.exit(main())
