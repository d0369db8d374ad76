#!/usr/bin/env bash
# The CUDA comparison of ours against transformers (benchmarks/gpu.py), in one command, under 5 minutes.
# Usage: bash benchmarks/gpu.sh   (writes benchmarks/results/gpu.md; exits 0 with a message without a GPU)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python}"
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: no CUDA GPU is visible to torch here; nothing to run (the CPU benchmarks are run_all.py)."
    exit 0
fi
mkdir -p results
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout 290 "$PYTHON" gpu.py "$@" | tee results/gpu.md
