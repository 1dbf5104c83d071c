#!/usr/bin/env bash
# The GPU check, one script for a lent machine (about 8 minutes on one H100):
#   1. bench_model at the recipe's shape (8 x 2048, bf16): ours vs LlamaForCausalLM, eager and torch.compile
#   2. a few hundred steps of run_pretrain.py (the real app) on local data, eager and --torch_compile
# and a table of tokens/s, MFU and peak memory at the end.
#   bash benchmarks/device_check.sh [STEPS]        (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300}
out=${OUT:-/tmp/device_check}
mkdir -p "$out"
python -c "import transformers, datasets, torchdata" 2>/dev/null || pip install -q -r requirements.txt
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

python benchmarks/bench_model.py --batch_size 8 --block_size 2048 --dtype bf16 --repeats 5 --compile \
  --skip memory 2>&1 | tee "$out/bench_model.txt"

# local data: the CPython docs corpus, repeated until it holds the tokens of `steps` steps
python - "$out/data" "$steps" <<'PY'
import sys
sys.path.insert(0, "benchmarks")
from bench_data import write_corpus
write_corpus(sys.argv[1], copies=int(sys.argv[2]) * 8 * 2048 // 100_000 + 2)
PY
for compile in false true; do
  python run_pretrain.py --tokenizer_name assets/smollm2_tokenizer --train_file "$out/data/part*.jsonl" \
    --validation_documents 200 --max_steps "$steps" --logging_steps 25 --eval_steps 100000 --save_steps 100000 \
    --generation_steps 0 --torch_compile "$compile" --output_dir "$out/run_compile_$compile" --disable_tqdm true 2>&1 | tail -n 4
done

python - "$out" <<'PY'
import json, os, statistics, sys
out = sys.argv[1]
print(f"\n{'app run':<22} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9}")
for compile in ("false", "true"):
    folder = os.path.join(out, f"run_compile_{compile}")
    rows = [json.loads(l) for l in open(os.path.join(folder, "training_log.jsonl"))]
    train = [r for r in rows if r["type"] == "train"][2:]  # past warm-up and compilation
    peak = max(r.get("peak_memory_gb") or 0 for r in train)
    print(f"{'torch_compile=' + compile:<22} {statistics.median(r['tokens_per_second'] for r in train):>10,.0f} "
          f"{statistics.median(r['mfu'] for r in train):>7.1%} {peak:>9.1f}")
PY
