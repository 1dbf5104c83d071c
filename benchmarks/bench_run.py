"""The app as a user runs it, stopped and resumed: `python3 run_pretrain.py` in fresh processes on a local corpus
(CPython's docs) with the bundled tokenizer, with evaluation, generation samples and checkpoints inside the run.

    python benchmarks/bench_run.py                      # SmolLM2-135M at the recipe's 8 x 2048, 24 steps (a GPU)
    python benchmarks/bench_run.py --config tiny --batch_size 2 --block_size 64 --max_steps 8 --every 4  # CPU
    python benchmarks/bench_run.py --results rows.jsonl --out files/ -- --attn_implementation eager

Run A trains to --max_steps. Run B, the same command in another folder, gets SIGTERM once its training_log.jsonl
holds step --stop_at; it must finish that step, save a checkpoint, say "Stopped by SIGTERM at step S" and exit 0; the
same command again must resume from checkpoint-S and finish. Then both folders are checked (every step logged once,
the checkpoints, evaluation rows, samples, final model, curves, model card) and the losses compared step by step:
the largest |loss B - loss A| up to S is the device's run-to-run noise (0 on CPU), the largest after S is that noise
plus whatever the resume changed (0 on CPU too: the resume is exact). The medians of run A's log rows (step time,
tokens/s, MFU, data wait, peak memory) come last.

The app's output is printed as it comes ("[A] ...", "[B] ...", "[B resumed] ..."), then one summary line.
`--results PATH` appends the result as a JSON row; `--out DIR` gets run B's training_log.jsonl (as run_log.jsonl),
samples.jsonl and training_curves.png. Flags after `--` go to every run_pretrain command. Exit status 1 when a run
or a check failed (the row's note names it), else 0. Stage 5 of the one-run GPU check (benchmarks/device_check.py).
"""

import argparse
import importlib.util
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
# this folder is first on sys.path when run as a script
from bench_app import TINY, add_shape_args, loss_differences, measured, summary  # noqa: E402
from configuration_smollm2 import SmolLM2Config  # noqa: E402
from demo_corpus import write_corpus  # noqa: E402
from modeling_smollm2 import SmolLM2ForCausalLM  # noqa: E402
from pretraining.checkpoints import checkpoint_problem  # noqa: E402
from pretraining.jsonl import append_jsonl, read_jsonl  # noqa: E402
from pretraining.model import BUNDLED_TOKENIZER  # noqa: E402
from pretraining.run_files import CURVES_PNG, MODEL_CARD, SAMPLES_LOG, TRAINING_LOG  # noqa: E402
from pretraining.throughput import flops_per_token  # noqa: E402

APP = os.path.join(ROOT, "run_pretrain.py")
STAGE = "run (stop + resume)"
# the corpus's documents hold about 50 tokens each: 200 held out fill the 2 evaluation blocks at 2048 tokens twice over
VALIDATION_DOCUMENTS = 200
EVAL_BLOCKS = 2
SAMPLE_TOKENS = 8  # new tokens per generation sample: the code path, at little cost
POLL_S = 0.02  # run B's log is read this often: well under a step, so the signal lands in the step after --stop_at
WARMUP_ROWS = 2  # run A's first train rows, left out of the medians: CUDA's warm-up (kernel choice, allocator)
TAIL_LINES = 25  # of a failed run's output, printed again at the end
# The app's output comes through a pipe: unbuffered, its lines arrive as they are printed. Everything is local:
# offline, a stray Hub request fails at once instead of waiting out a timeout on a machine without network.
APP_ENV = {"HF_HUB_OFFLINE": "1", **os.environ, "PYTHONUNBUFFERED": "1"}


class Failed(Exception):
    """A run or a check that failed: the message is the result row's note; `app`, the run whose output tells why."""

    def __init__(self, note: str, app=None):
        super().__init__(note)
        self.app = app


class App:
    """One run_pretrain process, its output (stdout and stderr, in order) printed as it comes under `name` and kept."""

    def __init__(self, name: str, argv: list[str]):
        self.name = name
        self.lines = []
        # in this script's process group: whatever signals the group (a timeout, Ctrl-C) reaches the app too
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=APP_ENV,
                                        text=True, encoding="utf-8", errors="replace")
        self.reader = threading.Thread(target=self.echo, daemon=True)
        self.reader.start()

    def echo(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            print(f"[{self.name}] {line}", end="", flush=True)

    def wait(self) -> int:
        status = self.process.wait()
        self.reader.join()
        return status

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.wait()

    def number(self, pattern: str) -> int | None:
        """The number in `pattern`'s group in the last output line that matches it, or None."""
        for line in reversed(self.lines):
            if match := re.search(pattern, line):
                return int(match.group(1))
        return None


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(parser)
    parser.add_argument("--max_steps", type=int, default=24, help="optimizer steps of each run")
    parser.add_argument("--stop_at", type=int,
                        help="SIGTERM to run B once it has logged this step (default: half of --max_steps)")
    parser.add_argument("--every", type=int, default=8,
                        help="steps between checkpoints, evaluations and generation samples")
    parser.add_argument("--results", help="append the result row (JSON) to this file")
    parser.add_argument("--out", help="copy run B's training_log.jsonl (as run_log.jsonl), samples.jsonl and "
                                      "training_curves.png into this folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (the corpus and both runs)")
    parser.add_argument("app_args", nargs="*", metavar="-- FLAGS", help="run_pretrain flags for every run")
    args = parser.parse_args(argv)
    if args.stop_at is None:
        args.stop_at = args.max_steps // 2
    if not 0 < args.stop_at < args.max_steps:
        # a signal after the last step's row reaches the app in its final save, after its stop handler is gone: killed
        parser.error(f"--stop_at must be from 1 to --max_steps - 1 ({args.max_steps - 1}), got {args.stop_at}")
    if not 0 < args.every <= args.max_steps:
        parser.error(f"--every must be from 1 to --max_steps ({args.max_steps}), got {args.every}")
    return args


def app_argv(args, corpus: str, output_dir: str) -> list[str]:
    """The run_pretrain command: the same for both runs but for `output_dir`."""
    every = str(args.every)
    argv = [sys.executable, APP, "--tokenizer_name", BUNDLED_TOKENIZER, "--train_file", corpus,
            "--validation_documents", str(VALIDATION_DOCUMENTS), "--max_eval_samples", str(EVAL_BLOCKS),
            "--block_size", str(args.block_size), "--per_device_train_batch_size", str(args.batch_size),
            "--max_steps", str(args.max_steps), "--logging_steps", "1", "--save_steps", every, "--eval_steps", every,
            "--generation_steps", every, "--generation_max_new_tokens", str(SAMPLE_TOKENS), "--disable_tqdm", "true",
            "--report_to", "none", "--output_dir", output_dir]
    if args.config == "tiny":
        argv += ["--config_overrides", TINY]
    return argv + args.app_args


def exit_text(status: int) -> str:
    return f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit {status}"


def run_to_end(apps: list[App], name: str, argv: list[str]) -> App:
    """Starts the app (kept in `apps`) and waits for it; Failed unless it exits 0."""
    apps.append(app := App(name, argv))
    if (status := app.wait()) != 0:
        raise Failed(f"run {name} failed ({exit_text(status)})", app)
    return app


def stop_when_logged(apps: list[App], argv: list[str], output_dir: str, stop_at: int) -> int:
    """Starts run B (kept in `apps`), sends it SIGTERM once its log holds a train row at `stop_at` or later, and
    returns the step it says it stopped at; Failed unless it stopped cleanly (exit 0 and the stop line)."""
    apps.append(app := App("B", argv))
    log = os.path.join(output_dir, TRAINING_LOG)
    while app.process.poll() is None:
        if os.path.exists(log) and any(row["type"] == "train" and row["step"] >= stop_at for row in read_jsonl(log)):
            app.process.send_signal(signal.SIGTERM)
            break
        time.sleep(POLL_S)
    else:
        if (status := app.wait()) == 0:
            raise Failed(f"run B finished before the signal could be sent: it logged step {stop_at} less than "
                         f"{POLL_S} s before its end", app)
        raise Failed(f"run B failed ({exit_text(status)}) before it logged step {stop_at}", app)
    status = app.wait()
    if status == -signal.SIGTERM:
        raise Failed("run B was killed by the SIGTERM: it came after training had ended, in the final save", app)
    stopped_at = app.number(r"Stopped by SIGTERM at step (\d+)")
    if status != 0 or stopped_at is None:
        raise Failed(f"run B, sent SIGTERM, ended with {exit_text(status)} and {'no' if stopped_at is None else 'the'} "
                     "'Stopped by SIGTERM at step' line (expected exit 0 and the line)", app)
    return stopped_at


def problems(output_dir: str, args, stopped_at: int | None) -> dict[str, str | None]:
    """What a finished run's folder lacks, by check: None where the check passes. `stopped_at`: the step a SIGTERM
    stopped the run at (its checkpoint must be there too), None for a run that was not stopped."""
    periodic = set(range(args.every, args.max_steps + 1, args.every))
    rows = list(read_jsonl(os.path.join(output_dir, TRAINING_LOG)))
    train = [(row["step"], row.get("loss")) for row in rows if row.get("type") == "train"]
    eval_steps = {row["step"] for row in rows if row.get("type") == "eval" and row.get("eval_loss") is not None}
    samples = os.path.join(output_dir, SAMPLES_LOG)
    sample_steps = ({row["step"] for row in read_jsonl(samples) if row.get("text") is not None}
                    if os.path.isfile(samples) else set())
    checkpoints = {int(name.split("-")[1]) for name in os.listdir(output_dir) if re.fullmatch(r"checkpoint-\d+", name)}
    incomplete = [f"checkpoint-{step}: {problem}" for step in sorted(checkpoints)
                  if (problem := checkpoint_problem(os.path.join(output_dir, f"checkpoint-{step}")))]
    expected_checkpoints = periodic | ({stopped_at} if stopped_at is not None else set())
    trained = f"Trained for {args.max_steps:,} optimizer steps"  # the card's words for the whole run

    def missing(what: str, steps: set[int]) -> str | None:
        return f"{what} at step {', '.join(map(str, sorted(steps)))} missing" if steps else None

    def missing_files(*names: str) -> str | None:
        absent = [name for name in names
                  if not os.path.isfile(path := os.path.join(output_dir, name)) or os.path.getsize(path) == 0]
        return f"{', '.join(absent)} missing or empty" if absent else None

    every_step_once = [step for step, _ in train] == list(range(1, args.max_steps + 1))
    return {
        "log": None if every_step_once and all(isinstance(loss, float) for _, loss in train) else
        f"train rows (step, loss) {train}: expected steps 1-{args.max_steps} once each, with a finite loss",
        "checkpoints": "; ".join(incomplete) or missing("checkpoint", expected_checkpoints - checkpoints),
        "eval": missing("eval row", periodic - eval_steps),
        "samples": missing("generation samples", periodic - sample_steps),
        "final_model": missing_files("config.json", "model.safetensors"),
        "curves": missing_files(CURVES_PNG),
        "card": missing_files(MODEL_CARD) or (
            None if trained in pathlib.Path(output_dir, MODEL_CARD).read_text(encoding="utf-8") else
            f"{MODEL_CARD} does not say '{trained}'"),
    }


def train_rows(output_dir: str) -> list[dict]:
    return [row for row in read_jsonl(os.path.join(output_dir, TRAINING_LOG)) if row.get("type") == "train"]


def loss_diffs(run_a: str, run_b: str, stopped_at: int) -> tuple[float | None, float | None, int | None]:
    """(the largest |loss B - loss A| up to `stopped_at`, the largest after it, the step of the latter, None where it
    is 0), over the steps that both runs logged a loss for."""
    diffs = loss_differences(train_rows(run_b), train_rows(run_a))
    before = max((diff for step, diff in diffs.items() if step <= stopped_at), default=None)
    after = {step: diff for step, diff in diffs.items() if step > stopped_at}
    worst = max(after, key=after.get, default=None)
    return before, after.get(worst), worst if worst is not None and after[worst] > 0 else None


def run_flops_per_token(output_dir: str, block_size: int) -> float:
    """The training FLOPs per token of the model saved in `output_dir`, counted as the app counts them for MFU."""
    config = SmolLM2Config.from_pretrained(output_dir)
    with torch.device("meta"):  # the shapes only: no memory, no initialization
        parameters = SmolLM2ForCausalLM(config).num_parameters()
    return flops_per_token(config, block_size, parameters)


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def measure(args, work: str, apps: list[App], row: dict) -> str:
    """Runs A and B in `work` (their processes kept in `apps`), fills the result `row` and returns the summary line;
    Failed names what failed."""
    if importlib.util.find_spec("matplotlib") is None:  # else the app fails at its first evaluation, GPU time spent
        raise Failed("matplotlib is not installed: the app draws its curves at every evaluation and checkpoint")
    corpus, _ = write_corpus(os.path.join(work, "corpus"))
    run_a, run_b = os.path.join(work, "run_a"), os.path.join(work, "run_b")
    argv_a, argv_b = app_argv(args, corpus, run_a), app_argv(args, corpus, run_b)
    print(f"run A: {shlex.join(argv_a)}", flush=True)
    run_to_end(apps, "A", argv_a)
    timed = train_rows(run_a)[WARMUP_ROWS:]
    row.update(measured(timed, run_flops_per_token(run_a, args.block_size)))
    print(f"run B: the same in {run_b}, SIGTERM once it has logged step {args.stop_at}", flush=True)
    row["stopped_at"] = stopped_at = stop_when_logged(apps, argv_b, run_b, args.stop_at)
    restart = run_to_end(apps, "B resumed", argv_b)
    # a stop in the last step leaves its checkpoint without the final model: the restart saves the model from it
    resumed, said = (("resumed", f"Resuming from checkpoint-{stopped_at}") if stopped_at < args.max_steps else
                     ("final model saved", f"Saving the final model of checkpoint-{stopped_at}"))
    if said not in restart.lines:
        raise Failed(f"run B's restart did not say '{said}'", restart)
    found = {name: [f"run {run}: {problem}" for run, problem in (("A", a), ("B", b)) if problem]
             for (name, a), b in zip(problems(run_a, args, None).items(), problems(run_b, args, stopped_at).values())}
    failed = [f"{name.replace('_', ' ')}: {'; '.join(lines)}" for name, lines in found.items() if lines]
    before, after, worst = loss_diffs(run_a, run_b, stopped_at)
    row.update(ok=not failed, loss_diff_before=before, loss_diff_after=after,
               checks={name: not lines for name, lines in found.items()}, note="; ".join(failed) or None)
    checks = ", ".join(f"{name.replace('_', ' ')} {'FAILED' if lines else 'ok'}" for name, lines in found.items())
    finished = max((train["step"] for train in train_rows(run_b)), default="-")
    after_text = "no step after it" if after is None else f"{number(after)} after (step {worst or '-'})"
    return (f"run: stop at step {stopped_at} (SIGTERM, exit 0), {resumed}, finished {finished} | loss diff max "
            f"{number(before)} before the stop, {after_text} | {checks} | {summary('run A', row, len(timed))}")


def main(argv=None) -> int:
    args = parse(argv)
    # a SIGTERM to this script (a timeout) ends it through the finally below, which ends the apps too
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    work = tempfile.mkdtemp(prefix="bench_run_")
    apps = []
    row = {"stage": STAGE, "ok": False, "stopped_at": None, "loss_diff_before": None, "loss_diff_after": None,
           "checks": {}, **measured([], 0.0), "note": None}
    try:
        line = measure(args, work, apps, row)
    except Failed as err:
        if err.app is not None:
            print(f"last lines of run {err.app.name}:", *err.app.lines[-TAIL_LINES:], sep="\n")
        row.update(ok=False, note=str(err))
        line = f"run: FAILED: {err}"
    finally:
        for app in apps:
            app.kill()
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            for name, copy in ((TRAINING_LOG, "run_log.jsonl"), (SAMPLES_LOG, SAMPLES_LOG), (CURVES_PNG, CURVES_PNG)):
                if os.path.isfile(path := os.path.join(work, "run_b", name)):
                    shutil.copyfile(path, os.path.join(args.out, copy))
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(line, flush=True)
    if args.results:
        append_jsonl(args.results, row)
    return 0 if row["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
