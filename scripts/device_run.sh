#!/usr/bin/env bash
# One device call: install the carried wheels and this checkout, then run the named parts, logging under $OUT.
# Parts: tests (GPU suite; in TEST_WORKERS processes when pytest-xdist is among the wheels), budget-tests (its
# error-budget tests), crossover, budget-cost, budget-eval, e2e, e2e-compile (E2E_MODELS, one or two per call: each
# compile takes minutes), sampled-rows (the mixed predictor's rows at 4 and 2 per block), overhead (per-call
# launches / syncs / allocations, eager vs CUDA graph), map-reuse, profile (a few-block Flux step, stock against
# Sparge, per kernel), sm90 (the Hopper Gluon kernel against the Triton kernel and cuDNN, SM90_ARGS).
# Usage: bash scripts/device_run.sh tests budget-eval
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
if ! python3 -c "import sparge_diffusers, diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 || { echo "install failed"; exit 1; }
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.txt"
  python3 -c "import torch, triton, diffusers; print(torch.__version__, triton.__version__, diffusers.__version__)" \
    | tee -a "$OUT/env.txt"
fi
for part in "$@"; do
  start=$(date +%s)
  log="$OUT/$part.log"
  case "$part" in
    setup) : ;;
    e2e) timeout "${E2E_TIMEOUT:-230}" python3 scripts/bench_e2e.py --models wan21-1.3b-480p wan21-14b-720p \
           hunyuan-720p-129f --layers "${LAYERS:-4}" --repeats 2 --settings lse:0.5 eps:0.05 ${E2E_ARGS:-} \
           --out "$OUT/e2e_video" > "$log" 2>&1 ;;
    map-reuse) timeout "${MAP_TIMEOUT:-120}" python3 scripts/map_reuse.py --size large --steps 20 --topk 0.5 0.3 \
                 --out "$OUT/map_reuse_h200.csv" > "$log" 2>&1 ;;
    tests) workers=""; python3 -c "import xdist" 2>/dev/null && workers="-n ${TEST_WORKERS:-6}"
           timeout "${TESTS_TIMEOUT:-240}" python3 -m pytest -q -m gpu $workers $(grep -rl "mark.gpu" tests/) \
             -p no:cacheprovider > "$log" 2>&1 ;;
    e2e-compile) timeout "${E2E_TIMEOUT:-540}" python3 scripts/bench_e2e.py --models ${E2E_MODELS:-wan21-1.3b-480p} \
           --layers "${LAYERS:-4}" --repeats 2 --settings lse:0.5 --compile --compile-last-only ${E2E_ARGS:-} \
           --out "$OUT/e2e_compile" > "$log" 2>&1 ;;
    overhead) timeout "${OVERHEAD_TIMEOUT:-420}" python3 scripts/bench_overhead.py ${OVERHEAD_ARGS:-} \
           --out "$OUT/overhead_h200.csv" > "$log" 2>&1 ;;
    crossover) cp sparge_diffusers/crossover/sm90.json "$OUT/sm90.json"  # its other entries are kept
               python3 scripts/bench_crossover.py --out "$OUT/crossover_h200.csv" --table "$OUT/sm90.json" \
                 > "$log" 2>&1 ;;
    sampled-rows) python3 scripts/bench_sampled_rows.py --rows 4 2 --no-sweep --out "$OUT/sampled_rows_h200.csv" \
                    > "$log" 2>&1 ;;
    profile) timeout "${PROFILE_TIMEOUT:-300}" python3 scripts/profile_step.py ${PROFILE_ARGS:-} > "$log" 2>&1 ;;
    sm90) timeout "${SM90_TIMEOUT:-300}" python3 scripts/bench_sm90.py ${SM90_ARGS:-} --out "$OUT/kernels_sm90_h200.csv" \
            > "$log" 2>&1 ;;
    budget-cost) python3 scripts/bench_budget.py --out "$OUT/budget_cost_h200.csv" > "$log" 2>&1 ;;
    budget-tests) timeout "${TESTS_TIMEOUT:-240}" python3 -m pytest -q -m gpu tests/kernels/test_triton_gpu.py \
                    -k "budget or lse_predictor" -p no:cacheprovider > "$log" 2>&1 ;;
    budget-eval) python3 scripts/eval_budget.py --device cuda --heads "${HEADS:-6}" --frame-cache .gpu/frames.pt \
                   ${CAPTURED:+--captured $CAPTURED} ${EVAL_ARGS:-} --out "$OUT/budget_eval_h200.csv" > "$log" 2>&1 ;;
    *) echo "unknown part $part"; continue ;;
  esac
  echo "== $part: rc=$? in $(( $(date +%s) - start )) s"
  tail -n "${TAIL:-14}" "$log"
done
