#!/usr/bin/env bash
# One script for a GPU machine: every Triton kernel against its reference on the GPU, the kernel
# benchmarks, the distillation engine on CUDA against the CPU and against its floors
# (tools/gpu_engine_check.py), and torchrun with NCCL on one GPU. Results, with the device name,
# go to $OUT (or tools/results/gpu/ when OUT is unset). Each step has its own time limit; the
# limits add up to 290 s, so the whole script fits in 5 minutes.
# Usage, from anywhere:  bash tools/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET CHIP_FAST_BACKEND
OUT_DIR="${OUT:-tools/results/gpu}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, remember a failure
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit} s)"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    local rc=$?
    tail -25 "$OUT_DIR/$name.log"
    echo "-- $name: rc=$rc in $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || status=1
}

step device 10 "$PY" - <<'PYEOF'
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__)
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device visible: this script checks the kernels on a GPU")
print("device:", torch.cuda.get_device_name(0))
PYEOF
[ "$status" -eq 0 ] || { echo "no GPU: stopping"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    > "$OUT_DIR/nvidia-smi.txt" 2>&1

step kernel_tests 70 "$PY" -m pytest -q -x -p no:cacheprovider tests/ops/test_perturb.py \
    tests/ops/test_perturb_means.py tests/ops/test_response_sums.py tests/ops/test_class_maps.py \
    tests/ops/test_prox.py --junitxml="$OUT_DIR/test_kernels.xml"
step kernel_bench 50 "$PY" -m pytest -q -p no:cacheprovider benchmarks/test_perturb.py \
    benchmarks/test_perturb_means.py benchmarks/test_response_sums.py \
    benchmarks/test_class_maps.py benchmarks/test_prox.py \
    --benchmark-json="$OUT_DIR/bench_kernels.json" --benchmark-max-time=0.2 \
    --benchmark-columns=min,median,rounds --benchmark-sort=name
step engine 120 "$PY" -m tools.gpu_engine_check --out "$OUT_DIR"
# torchrun + NCCL on the one GPU: the distributed path end to end (init, broadcast, gather).
step torchrun_nccl 40 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 \
    -m tools.gpu_engine_check --out "$OUT_DIR/torchrun" --only correctness --quick
echo "== results in $OUT_DIR (status $status)"
exit $status
