#!/usr/bin/env bash
# The one script for a GPU machine that gets a bare copy of this tree (no install, no network, no
# package index) and a few minutes: every step fail-soft, each step's results written as soon as
# they exist, one line per step on stdout:
#   STEP <name>: ok (<key figures>) | STEP <name>: fail (<why>) | STEP <name>: skip (<reason>)
# Steps, in order (the engine's parts are tools/gpu_engine_check.py's):
#   setup         installs (pip -e, offline) or links (PYTHONPATH) chip_fast; chip_fast.kernels
#                 must import; device, CUDA, torch, triton; first import torch + CUDA context
#   kernel_tests  tests/ops: every Triton kernel against its PyTorch reference
#   ceilings correctness launches overhead affine plain vgg decode   (the engine, see there)
#   torchrun      the distributed path under torchrun (NCCL at 1 rank on a GPU, gloo at 2 on a
#                 CPU), every collective run for real, the file equal to one process's
#   kernel_bench  benchmarks/test_*.py (pytest-benchmark; GPU only)
#   peers         Grad-CAM (pytorch-grad-cam) on the device; skip where it is not installed
#   demo          EfficientNet-Lite0's packaged weights on the device; skip where absent
# Files in $OUT (at most 8): gpu_check.log (every step's output, merged), gpu_check.json (device,
# versions, each step's line and the issue-23 targets measured), engine.json, torchrun.json,
# kernel_tests.xml, kernel_bench.json.
#
# Usage (from anywhere):  bash tools/gpu_check.sh
#   GPU_CHECK_STEPS=vgg,torchrun   rerun only those steps (setup always runs: a machine that went
#                                  back is bare again); results merge into what $OUT holds
#   GPU_CHECK_DEVICE=cpu           the same script end to end on a CPU with quick sizes (the dry
#                                  run of tests/tools/test_gpu_check.py)
#   GPU_CHECK_BUDGET=235           seconds for the whole script; a step that would start with less
#                                  than 15 s left says skip
#   PYTHON=python3, OUT=tools/results/gpu
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd -P)"
cd "$ROOT" || exit 2
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
OUT_DIR="${OUT:-$ROOT/tools/results/gpu}"
BUDGET="${GPU_CHECK_BUDGET:-235}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd -P)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
LOG="$OUT_DIR/gpu_check.log"
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 GPU_CHECK_DEVICE="$DEVICE"
export GPU_CHECK_WORK="$WORK" GPU_CHECK_OUT="$OUT_DIR"
unset TRITON_INTERPRET CHIP_FAST_BACKEND CHIP_FAST_SYNC_DEBUG
if [ "$DEVICE" != cuda ]; then
    # Without a GPU the kernels run in Triton's interpreter, chosen before triton is imported.
    export TRITON_INTERPRET=1
    # The dry run checks the plumbing, not speed: on a shared machine two OpenMP threads that
    # wait on each other made the small solves of the correctness part 30-60x slower.
    export OMP_NUM_THREADS=1
fi
QUICK=()
[ "$DEVICE" = cuda ] || QUICK=(--quick)
START=$SECONDS
echo "== gpu_check $(date -u +%FT%TZ) device=$DEVICE steps=${GPU_CHECK_STEPS:-all}" >> "$LOG"

wanted() {  # wanted NAME: whether GPU_CHECK_STEPS (comma-separated) names it, or is unset
    [ -z "${GPU_CHECK_STEPS:-}" ] && return 0
    case ",${GPU_CHECK_STEPS// /}," in *",$1,"*) return 0 ;; esac
    return 1
}

left() { echo $((BUDGET - (SECONDS - START))); }

report() {  # report NAME STATUS TEXT SECONDS: the step's one line, recorded and summarised
    local line="STEP $1: $2${3:+ ($3)}"
    echo "$line"
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$4" "$line" >> "$WORK/steps.tsv"
    "$PY" -m tools.gpu_steps summary >> "$LOG" 2>&1 || true
}

last_error() {  # the last line of a log that looks like an error, for a fail line
    grep -E 'Error|error|Exception|FAILED|Traceback|Killed|assert' "$1" | tail -1 | cut -c1-300
}

run_logged() {  # run_logged NAME LIMIT CMD...: CMD with a time limit, its output in $WORK/NAME.log
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit} s): $*" >> "$LOG"
    timeout -k 5 "$limit" "$@" > "$WORK/$name.log" 2>&1
    local rc=$?
    cat "$WORK/$name.log" >> "$LOG"
    echo "-- $name: rc=$rc" >> "$LOG"
    return $rc
}

limit_for() {  # limit_for SECONDS: the step's own limit, or what is left of the budget
    local want=$1 rest
    rest=$(($(left) - 5))
    [ "$rest" -lt "$want" ] && want=$rest
    echo "$want"
}

relay() {  # relay NAME LOG RC LIMIT T0: the STEP line NAME printed into LOG, or a fail line
    local name=$1 log=$2 rc=$3 limit=$4 t0=$5 line status text
    line=$(grep -E "^STEP $name: " "$log" | tail -1)
    if [ -n "$line" ]; then
        status=${line#STEP "$name": }
        status=${status%% *}
        text=${line#STEP "$name": "$status"}
        text=${text# (}
        report "$name" "$status" "${text%)}" $((SECONDS - t0))
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        report "$name" fail "timeout after ${limit} s" $((SECONDS - t0))
    else
        report "$name" fail "rc=$rc: $(last_error "$log")" $((SECONDS - t0))
    fi
}

python_step() {  # python_step NAME LIMIT CMD...: a command that prints its own STEP line
    local name=$1 limit t0=$SECONDS
    limit=$(limit_for "$2"); shift 2
    if [ "$limit" -lt 15 ]; then report "$name" skip "out of the ${BUDGET} s budget" 0; return; fi
    run_logged "$name" "$limit" "$@"
    relay "$name" "$WORK/$name.log" $? "$limit" "$t0"
}

pytest_step() {  # pytest_step NAME LIMIT RESULT ARGS...: pytest, its line from its own report
    local name=$1 limit t0=$SECONDS rc result=$3
    limit=$(limit_for "$2"); shift 3
    if [ "$limit" -lt 15 ]; then report "$name" skip "out of the ${BUDGET} s budget" 0; return; fi
    run_logged "$name" "$limit" "$PY" -m pytest -q -p no:cacheprovider "$@"
    rc=$?
    "$PY" -m tools.gpu_steps pytest_line "$name" "$rc" "$WORK/$name.log" "$result" \
        > "$WORK/$name.line" 2>> "$LOG"
    relay "$name" "$WORK/$name.line" "$rc" "$limit" "$t0"
}

engine_steps() {  # the engine's parts in one process; a part that ends the process is marked
    local parts=() p rc limit t0          # failed and the rest go on in a fresh process
    for p in ceilings correctness launches overhead affine plain vgg decode; do
        wanted "$p" && parts+=("$p")
    done
    while [ ${#parts[@]} -gt 0 ]; do
        limit=$(limit_for 600)
        t0=$SECONDS
        if [ "$limit" -lt 15 ]; then
            for p in "${parts[@]}"; do report "$p" skip "out of the ${BUDGET} s budget" 0; done
            return
        fi
        run_logged engine "$limit" "$PY" -m tools.gpu_engine_check --out "$OUT_DIR" \
            --device "$DEVICE" "${QUICK[@]}" --parts "${parts[@]}"
        rc=$?
        local rest=() first=1
        for p in "${parts[@]}"; do
            if grep -qE "^STEP $p: " "$WORK/engine.log" || [ $first -eq 1 ]; then
                grep -qE "^STEP $p: " "$WORK/engine.log" || first=0
                relay "$p" "$WORK/engine.log" "$rc" "$limit" "$t0"
            else
                rest+=("$p")
            fi
        done
        parts=("${rest[@]+"${rest[@]}"}")
    done
}

# -- setup: install or link without network, then chip_fast.kernels must import ----------------
T0=$SECONDS
HOW=""
# Where chip_fast imports from, seen from outside this tree (the tree itself is on sys.path
# whenever Python runs from here). Another install is never replaced: this tree shadows it.
where() { (cd / && "$PY" -c 'import chip_fast, os; print(os.path.dirname(os.path.dirname(
os.path.realpath(chip_fast.__file__))))' 2>/dev/null); }
FOUND=$(where)
if [ -z "$FOUND" ]; then
    if "$PY" -m pip install --no-index --no-deps --no-build-isolation -e . >> "$LOG" 2>&1 \
            && [ "$(where)" = "$ROOT" ]; then
        HOW="pip install -e"
    fi
elif [ "$FOUND" = "$ROOT" ]; then
    HOW="installed"
fi
if [ -z "$HOW" ]; then
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    HOW="PYTHONPATH"
fi
export GPU_CHECK_LINK="$HOW"
python_step setup 120 "$PY" -m tools.gpu_steps setup
T_SETUP=$((SECONDS - T0))

if wanted kernel_tests; then
    if [ "$DEVICE" = cuda ]; then
        pytest_step kernel_tests 100 "$OUT_DIR/kernel_tests.xml" tests/ops \
            --junitxml="$OUT_DIR/kernel_tests.xml"
    else   # the interpreter: the engine-sized tests (marked slow) take a minute or more here
        pytest_step kernel_tests 100 "$OUT_DIR/kernel_tests.xml" tests/ops \
            --junitxml="$OUT_DIR/kernel_tests.xml" -m "not slow"
    fi
fi
engine_steps
if wanted torchrun; then
    python_step torchrun 60 "$PY" -m tools.gpu_collectives --device "$DEVICE" \
        --out "$OUT_DIR/torchrun.json"
fi
if wanted kernel_bench; then
    pytest_step kernel_bench 60 "$OUT_DIR/kernel_bench.json" benchmarks/test_perturb.py \
        benchmarks/test_perturb_means.py benchmarks/test_response_sums.py \
        benchmarks/test_class_maps.py benchmarks/test_prox.py \
        --benchmark-json="$OUT_DIR/kernel_bench.json" --benchmark-max-time=0.1 \
        --benchmark-columns=min,median,rounds --benchmark-sort=name
fi
wanted peers && python_step peers 45 "$PY" -m tools.gpu_steps peers
wanted demo && python_step demo 45 "$PY" -m tools.gpu_steps demo

FAILS=$(awk -F'\t' '$2 == "fail"' "$WORK/steps.tsv" | wc -l)
echo "gpu_check: $(wc -l < "$WORK/steps.tsv") steps, $FAILS failed, in $((SECONDS - START)) s" \
     "(setup ${T_SETUP} s); results in $OUT_DIR"
[ "$FAILS" -eq 0 ]
