#!/usr/bin/env bash
# The packages benchmarks/device_check.py needs on the lent GPU machine and that machine lacks, as wheels for its
# Python 3.12 in .whl/ (about 15 MB; git ignores it), downloaded here: that machine has no network. It has torch 2.11,
# transformers 5.17, accelerate 1.15, huggingface_hub 1.33, tokenizers, safetensors, pyarrow, pandas, xxhash and
# requests, and no datasets or torchdata (../shared/REFERENCES.md). The device tool carries the folder
# (`carry: [".whl"]`); device_check.py installs it and checks every requirement before measuring anything.
#   bash benchmarks/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# one by one, without their dependencies (pip would fetch what the machine has already), at the versions this project
# is tested with
wheels=(
  transformers==5.24.0   # the model's transformers API (requirements.txt: >=5.24)
  datasets==5.2.0        # the streamed data pipeline
  dill==0.4.1            # datasets' dependencies that the machine lacks
  multiprocess==0.70.19
  fsspec==2026.9.0       # the newest that datasets 5.2 accepts, whatever that machine has
  torchdata==0.11.0      # StatefulDataLoader: the data position in checkpoints
)
rm -rf .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --dest .whl "${wheels[@]}"
du -sh .whl
