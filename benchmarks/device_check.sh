#!/usr/bin/env bash
# The app on a GPU, checked in one run on a lent GPU machine (one H200: under 7 minutes), each figure printed as it
# comes:
#   1. the app's own training step (benchmarks/bench_app.py: run_pretrain's flags and device defaults, its data
#      pipeline, Trainer and callbacks) at the recipe's 8 x 2048 tokens, fp32 weights under bf16 autocast: eager,
#      --torch_compile, and --torch_compile --chunked_loss; step time, data wait, tokens/s, MFU, peak memory;
#   2. ours against transformers' LlamaForCausalLM, same weights, shape and precision, both eager (bench_model.py).
# Nothing large is written (no checkpoint, no model): the output and the three runs' training logs, 4 small files,
# go to $OUT (default /tmp/device_check).
#
#   bash benchmarks/device_wheels.sh             # here, once: the packages that machine lacks, as wheels in .whl/
#   bash benchmarks/device_check.sh              # there, with .whl carried along
#   bash benchmarks/device_check.sh --cpu-smoke  # the same script end to end at a tiny shape on CPU (a test runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  "") smoke=false ;;
  --cpu-smoke) smoke=true ;;
  *) echo "error: unknown option: $1 (use: bash benchmarks/device_check.sh [--cpu-smoke])" >&2; exit 2 ;;
esac
out=${OUT:-/tmp/device_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if ! $smoke && compgen -G ".whl/*.whl" >/dev/null; then  # wheels for that machine's Python 3.12
  site=$(mktemp -d)
  python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# every requirement of the app and of the packages it imports, checked before a GPU second is spent: one line
python3 - <<'PY'
import importlib.metadata as metadata
import platform
import sys

from packaging.requirements import Requirement

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


app = [Requirement(line.split("#")[0].strip()) for line in open("requirements.txt") if line.split("#")[0].strip()]
for requirement in app:
    if requirement.name not in ("gguf", "tensorboard", "matplotlib"):  # exports, trackers, curves: not measured here
        check(requirement, "the app")
for name in ("transformers", "datasets", "torchdata", "accelerate"):
    try:
        requires = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        continue  # named above, as a requirement of the app
    for text in requires:
        check(Requirement(text), name)
if problems:
    sys.exit("error: " + "; ".join(problems) + " (bash benchmarks/device_wheels.sh where pip works, then carry .whl)")
versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("torch", "transformers", "accelerate", "datasets"))
print(f"python {platform.python_version()}, {versions}")
PY

if $smoke; then
  # a tiny model, a few steps, the compile path without a C++ build
  app=(--config tiny --block_size 64 --batch_size 2 --max_steps 6 --logging_steps 2 --warmup_rows 1
       --torch_compile_backend aot_eager)
  llama=(--config tiny --batch_size 2 --block_size 64 --repeats 2 --warmup 1)
  deadline=$((SECONDS + 900))  # shared CPUs are slow and vary
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  app=()
  llama=(--batch_size 8 --block_size 2048 --repeats 5)
  deadline=$((SECONDS + 410))  # the whole check in under 7 minutes, however long a compile takes
fi
: > "$out/summary.txt"
failed=0

# stage NAME COMMAND...: COMMAND in the time left, its output on the terminal and in summary.txt as it comes; a stage
# that fails or runs out of time is named, and the next one still runs
stage() {
  local name=$1 left=$((deadline - SECONDS)) status
  shift
  echo "== $name"
  if ((left < 30)); then
    echo "$name: not run, out of time" | tee -a "$out/summary.txt"
    failed=1
    return
  fi
  set +e
  timeout "$left" "$@" 2>&1 | tee -a "$out/summary.txt"
  status=${PIPESTATUS[0]}
  set -e
  if ((status != 0)); then
    echo "$name: $( ((status == 124)) && echo "stopped, out of time" || echo "failed (exit $status)")" |
      tee -a "$out/summary.txt"
    failed=1
  fi
}

variants=("eager" "compiled" "compiled + chunked loss")
flags=("" "--torch_compile" "--torch_compile --chunked_loss")
for i in 0 1 2; do
  # shellcheck disable=SC2086  # the flags are words
  stage "app, ${variants[$i]}" python3 benchmarks/bench_app.py "${app[@]}" ${flags[$i]} \
    --label "app, ${variants[$i]}" --log_copy "$out/app_$i.jsonl"
done
stage "ours against LlamaForCausalLM, eager" \
  python3 benchmarks/bench_model.py "${llama[@]}" --bf16_autocast --skip memory generate

echo "== results"
grep -e "^app, " "$out/summary.txt" || true
grep -A 2 -e "^model *step ms" "$out/summary.txt" || true
grep -e "training step speed, ours / llama" "$out/summary.txt" || true
exit $failed
