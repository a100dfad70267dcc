#!/usr/bin/env bash
# GPU check of the Triton kernels: the kernel tests compiled for the GPU (no interpreter), then
# the benchmarks with their JSON into $OUT (or bench/results/ when OUT is unset).
# Usage, from anywhere:  bash bench/gpu_check.sh      (budget: ~6 minutes on an H100)
set -u
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET CHIP_FAST_BACKEND
OUT_DIR="${OUT:-bench/results}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
"$PY" - <<'PYEOF'
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__)
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device visible: this script checks the kernels on a GPU")
print("device:", torch.cuda.get_device_name(0))
PYEOF
[ $? -eq 0 ] || exit 1

echo "== kernel tests on the GPU"
timeout 240 "$PY" -m pytest tests/test_perturb.py tests/test_response_sums.py \
    tests/test_class_maps.py tests/test_prox.py -q -x -p no:cacheprovider \
    --junitxml="$OUT_DIR/test_kernels.xml" 2>&1 | tail -40
test_rc=${PIPESTATUS[0]}

echo "== benchmarks"
timeout 200 "$PY" -m pytest bench/bench_perturb.py bench/bench_response_sums.py \
    bench/bench_class_maps.py bench/bench_prox.py -q -p no:cacheprovider \
    --benchmark-json="$OUT_DIR/bench_kernels.json" --benchmark-max-time=0.5 \
    --benchmark-columns=min,median,mean,rounds --benchmark-sort=name 2>&1 | tail -80
bench_rc=${PIPESTATUS[0]}

echo "== distillation: breakdown (MobileNetV2 features.16) and the ImageNet-run projection (VGG16 conv5_3)"
timeout 150 "$PY" bench/distill_breakdown.py --batch-size 2048 --out "$OUT_DIR" 2>&1 | tail -15
timeout 150 "$PY" bench/project_imagenet_run.py 2>&1 | tail -15
cp bench/results/imagenet_projection_cuda.json "$OUT_DIR"/ 2>/dev/null

echo "== results in $OUT_DIR (tests rc=$test_rc, bench rc=$bench_rc)"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
