#!/usr/bin/env bash
# The compile check (tools/compile_check.py) with Triton 3.6, the version on the GPU machines,
# in its own virtual environment (the system's torch, Triton 3.6 in front of it). No GPU needed.
# Usage: bash tools/compile_check_triton36.sh   (results in tools/results/compile_triton36.json)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CHIP_FAST_TRITON36_VENV:-${TMPDIR:-/tmp}/chip_fast_triton36}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv --system-site-packages "$VENV"
    "$VENV/bin/python" -m pip install -q 'triton==3.6.*'
fi
"$VENV/bin/python" -c "import triton; print('triton', triton.__version__)"
"$VENV/bin/python" -m tools.compile_check \
    --arch 90 80 --json tools/results/compile_triton36.json
