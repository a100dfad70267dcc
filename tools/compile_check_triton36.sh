#!/usr/bin/env bash
# The compile check (bench/compile_check.py) with Triton 3.6, the version on the GPU machines,
# in its own virtual environment (the system's torch, Triton 3.6 in front of it). No GPU needed.
# Usage: bash bench/compile_check_triton36.sh   (results in bench/results/compile_triton36.json)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CHIP_FAST_TRITON36_VENV:-${TMPDIR:-/tmp}/chip_fast_triton36}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv --system-site-packages "$VENV"
    "$VENV/bin/python" -m pip install -q 'triton==3.6.*'
fi
"$VENV/bin/python" -c "import triton; print('triton', triton.__version__)"
"$VENV/bin/python" bench/compile_check.py \
    --arch 90 80 --json bench/results/compile_triton36.json
