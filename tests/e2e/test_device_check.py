"""benchmarks/device_check.py, the one-run GPU check: every stage end to end at a tiny shape on CPU (`--cpu-smoke`),
the same script, so that its own bugs are found before a GPU minute is spent on it; its time caps on real processes;
its requirement check on a machine that lacks what the app needs."""

import importlib.util
import os
import re
import subprocess
import sys
import time

from helpers import ROOT, app_env, read_jsonl_file

SCRIPT = os.path.join(ROOT, "benchmarks", "device_check.py")
STAGES = ["environment", "app, eager", "app, compiled", "app, compiled + chunked loss", "app, eager + chunked loss",
          "run (stop + resume)", "app, fp32", "ours against LlamaForCausalLM"]


def device_check(*args, out, timeout=900, pythonpath=None) -> subprocess.CompletedProcess:
    env = dict(app_env(), OUT=str(out))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def results(out) -> dict:
    return {row["stage"]: row for row in read_jsonl_file(out / "results.jsonl")}


def test_cpu_smoke_runs_every_stage_and_brings_back_a_table_and_a_few_small_files(tmp_path):
    result = device_check("--cpu-smoke", out=tmp_path)
    out = result.stdout
    assert result.returncode == 0, out[-5000:] + result.stderr[-3000:]
    assert re.match(r"python 3\.\d+\.\d+, torch \S+, transformers \S+, accelerate \S+, datasets \S+, torchdata \S+, "
                    r"pyarrow \S+\n", out)
    headers = [out.index(f"== {name}\n") for name in STAGES]
    assert headers == sorted(headers)
    summary = out[out.index("== results\n"):]
    assert out.index("== results\n") > headers[-1]
    assert "8 of 8 stages ok;" in summary.splitlines()[-1]

    rows = results(tmp_path)
    env = rows["environment"]
    assert env["matmul_tflops"] > 0 and env["imports_failed"] == []
    assert rows["attention, default"]["ms"] > 0 and rows["attention, default"]["backend"]
    for name in STAGES[1:5]:
        row = rows[name]
        # every step's training row, and the medians after the 2 warm-up rows
        assert [r["step"] for r in row["log"] if r["type"] == "train"] == list(range(1, 9)), name
        assert row["step_time"] > 0 and row["tokens_per_second"] > 0 and row["model_tflops"] > 0
        assert ("graph_breaks" in row) == ("compiled" in name), name
        line = re.search(rf"^{re.escape(name)} +([\d,.]+) +([\d,]+) +- +(\S+) +[\d.]+ +- +(.*)$", summary, re.M)
        assert line, (name, summary)
        assert float(line[1].replace(",", "")) == round(row["step_time"] * 1e3, 1)
        assert line[3] == f"{row['model_tflops'] / env['matmul_tflops']:.1%}"  # MFU against the measured matmul
        assert ("graph breaks" in line[4]) == ("compiled" in name)
    # fp32 against the eager run's losses, step by step (on CPU both run fp32: the same losses)
    assert rows["app, fp32"]["loss_differences"] == {str(step): 0.0 for step in range(1, 5)}
    run = rows["run (stop + resume)"]
    assert run["ok"] and run["loss_diff_before"] == 0 and run["loss_diff_after"] == 0, run
    assert 4 <= run["stopped_at"] < 8
    assert rows["ours against LlamaForCausalLM"]["speed_ratio"] > 0
    assert re.search(r"^ours \(bench_model, eager\) .* ours / llama \d+\.\d\dx$", summary, re.M)
    assert re.search(r"^the recipe's 81,920,000 tokens at the best rate \(app, .*\): [\d,.]+ minutes", summary, re.M)

    files = sorted(os.listdir(tmp_path))
    assert len(files) <= 8 and {"device_check.log", "results.jsonl", "run_log.jsonl"} <= set(files), files
    assert all(os.path.getsize(tmp_path / name) < 2_000_000 for name in files)
    assert open(tmp_path / "device_check.log").read().strip() == out.strip()


def load_device_check():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_stage_past_its_cap_is_killed_with_everything_it_started_and_named(tmp_path):
    device_check = load_device_check()
    pid_file = tmp_path / "child.pid"
    # a stage that ignores SIGTERM, as the app's handler would only finish the step and save, and leaves a child
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"child = subprocess.Popen(['sleep', '300']); open({str(pid_file)!r}, 'w').write(str(child.pid)); "
            "print('started', flush=True); time.sleep(300)")
    lines = []
    start = time.monotonic()
    outcome = device_check.run_stage(device_check.Stage("sleeper", ["-c", code], cap=3, reserve=1), 3, dict(os.environ),
                                     lines.append)
    assert outcome == "ran out of time (its cap: 3 s)"
    assert time.monotonic() - start < 30
    assert lines == ["started"]
    child = int(pid_file.read_text())
    for _ in range(50):  # the child was killed with the stage's group; gone once its parent reaped it
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"process {child} outlived its stage")

    assert device_check.run_stage(device_check.Stage("fails", ["-c", "raise SystemExit(3)"], cap=30, reserve=1), 30,
                                  dict(os.environ), lines.append) == "failed (exit 3)"


def test_unmet_requirements_are_all_named_at_once_and_only_the_environment_stage_runs(tmp_path):
    fake = tmp_path / "site"
    for name, version in (("torchdata", "0.1"), ("pyarrow", "1.0")):  # found first on the path: older than needed
        info = fake / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    out = tmp_path / "out"
    result = device_check("--cpu-smoke", out=out, timeout=300, pythonpath=str(fake))
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stdout
    assert "the app needs torchdata>=0.11: found 0.1" in errors[0]
    assert "datasets needs pyarrow>=" in errors[0] and "found 1.0" in errors[0]
    assert result.stdout.index("error: ") < result.stdout.index("== environment")
    assert list(results(out))[:1] == ["environment"]
    for name in STAGES[1:]:
        assert f"{name}: not run: requirements not met" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("1 of 8 stages ok: not app, eager")


def test_an_unknown_option_is_a_one_line_error(tmp_path):
    result = device_check("--gpu", out=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr == ("error: unrecognized arguments: --gpu (use: python3 benchmarks/device_check.py "
                             "[--cpu-smoke] [--budget SECONDS] [--stages N ...])\n")
