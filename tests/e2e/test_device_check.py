"""benchmarks/device_check.sh, the one-run GPU check, end to end at a tiny shape on CPU (`--cpu-smoke`): the same
script, so that it is known to work before a GPU minute is spent on it."""

import json
import os
import re
import subprocess
import sys

from helpers import ROOT, app_env

SCRIPT = os.path.join(ROOT, "benchmarks", "device_check.sh")


def device_check(*args, out, timeout=900) -> subprocess.CompletedProcess:
    # `python3` as the script calls it: this interpreter
    env = dict(app_env(), OUT=str(out), PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    return subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_cpu_smoke_runs_every_measurement_and_writes_only_small_logs(tmp_path):
    result = device_check("--cpu-smoke", out=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert re.match(r"python 3\.\d+\.\d+, torch \S+, transformers \S+, accelerate \S+, datasets \S+\n", out)
    for variant in ("eager", "compiled", "compiled + chunked loss"):
        # printed when measured, and again at the end
        row = rf"^app, {re.escape(variant)}: step [\d,.]+ ms \| [\d,]+ tok/s \| MFU - \| data wait [\d.]+ ms \| " \
              r"peak memory - \| median of 2 log rows$"
        assert len(re.findall(row, out, flags=re.M)) == 2, out
    assert re.search(r"^training step speed, ours / llama: \d+\.\d+x$", out, flags=re.M)
    assert out.index("== ours against LlamaForCausalLM, eager") < out.index("== results")
    files = sorted(os.listdir(tmp_path))
    assert files == ["app_0.jsonl", "app_1.jsonl", "app_2.jsonl", "summary.txt"]
    assert all(os.path.getsize(tmp_path / name) < 100_000 for name in files)
    for name in files[:3]:
        rows = [json.loads(line) for line in open(tmp_path / name)]
        assert [row["step"] for row in rows if row["type"] == "train"] == [2, 4, 6]


def test_an_unknown_option_is_a_one_line_error(tmp_path):
    result = device_check("--gpu", out=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr == "error: unknown option: --gpu (use: bash benchmarks/device_check.sh [--cpu-smoke])\n"
