#!/usr/bin/env bash
# Issue 14's checks on a lent GPU machine, as one prepared call (at most DEADLINE_S seconds):
#   1. 1 and 8 trials per GPU, 4 rounds (8 per GPU: a 32-trial search), under the default
#      isolation (auto), then the quiet re-check of
#      the recorded latency medians (benchmarks/gpu_packing.py);
#   2. if time is left, 8 per GPU (2 rounds) with the gate off (isolation: none) and its quiet
#      re-check, to show what the isolation keeps out of the figures.
# PARTS="pinning fixed" bash benchmarks/gpu_check.sh runs the two diagnostics instead (below).
# From the project's root, after ../shared/tools/gpu-bundle.sh built .gpu-bundle:
#   bash benchmarks/gpu_check.sh            (reports go to $OUT, else /tmp/gpu-check)
#   SMOKE=1 PY=.venv/bin/python bash benchmarks/gpu_check.sh   (checks this script on CPUs)
# DEADLINE_S (default 560) bounds the whole run, so that a call's time limit is never hit.
set -u
# PARTS (default "packing none"): which checks, in order, each only if the deadline leaves it
# the seconds it needs. "pinning" (benchmarks/meter_pinning.py, ~2 min) and "fixed" (the fixed
# cost's profile, benchmarks/search_fixed_cost.py, ~3 min) suit a second call.
parts=${PARTS:-packing none}
for part in $parts; do
  case $part in
    packing | none | pinning | fixed) ;;
    *) echo "PARTS: unknown part '$part'; use packing, none, pinning or fixed" >&2; exit 2 ;;
  esac
done
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
t0=$(date +%s)
deadline=${DEADLINE_S:-560}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
export PYTHONUNBUFFERED=1 SLIMTUNE_DATA_DIR=${SLIMTUNE_DATA_DIR:-/tmp/slimdata}
if [ -z "${SMOKE:-}" ]; then
  # shellcheck disable=SC1091
  source .gpu-bundle/activate
  extra=()
  rounds=4  # 8 per GPU x 4: issue 14's 32-trial search
  rounds2=2
  packed=8
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  extra=(--smoke --cpus 1)
  rounds=1
  rounds2=1
  packed=2  # the 2-core machine: 2 per "GPU"
fi
py=${PY:-python3}
{
  echo "cores: $(nproc) usable, affinity $($py -c 'import os; print(len(os.sched_getaffinity(0)))')"
  echo "cgroup cpu.max: $(cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo none)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -2
  $py -c 'import torch, ray, optuna, mlflow, onnxruntime as ort; print("torch", torch.__version__,
"cuda", torch.cuda.is_available(), "ray", ray.__version__, "optuna", optuna.__version__,
"mlflow", mlflow.__version__, "onnxruntime", ort.__version__)'
} 2>&1 | tee "$out/env.txt"

for part in $parts; do
  case $part in
    packing)
      echo "== packing: 1 and $packed per GPU, isolation auto ($(left) s left)"
      timeout "$(( $(left) - 20 ))" "$py" benchmarks/gpu_packing.py "${extra[@]}" \
        --per-gpu 1 "$packed" --rounds "$rounds" --isolation auto --quiet-check 8 \
        --workdir /tmp/gp --out "$out/gpu-packing-isolation.txt" 2>&1 | tee "$out/log-auto.txt"
      ;;
    none)
      if [ "$(left)" -lt "${SECOND_NEEDS_S:-230}" ]; then echo "== none skipped: $(left) s left"; continue; fi
      echo "== none: $packed per GPU, isolation none ($(left) s left)"
      timeout "$(( $(left) - 10 ))" "$py" benchmarks/gpu_packing.py "${extra[@]}" \
        --per-gpu "$packed" --rounds "$rounds2" --isolation none --quiet-check 8 --no-warmup \
        --workdir /tmp/gp --out "$out/gpu-packing-none.txt" 2>&1 | tee "$out/log-none.txt"
      ;;
    pinning)
      if [ "$(left)" -lt 150 ]; then echo "== pinning skipped: $(left) s left"; continue; fi
      echo "== pinning ($(left) s left)"
      pin_args=(--rounds 3)
      [ -n "${SMOKE:-}" ] && pin_args=(--smoke)
      timeout "$(( $(left) - 10 ))" "$py" benchmarks/meter_pinning.py "${pin_args[@]}" \
        --out "$out/meter-pinning.txt" 2>&1 | tee "$out/log-pinning.txt"
      ;;
    fixed)
      if [ "$(left)" -lt 200 ]; then echo "== fixed skipped: $(left) s left"; continue; fi
      echo "== fixed ($(left) s left)"
      fixed_args=(--config examples/mnist1d_large_gpu.yaml)
      [ -n "${SMOKE:-}" ] && fixed_args=(--smoke)
      timeout "$(( $(left) - 10 ))" "$py" benchmarks/search_fixed_cost.py "${fixed_args[@]}" \
        --trials 2 --runs 2 --workdir /tmp/fc --out "$out/search-fixed-cost.txt" 2>&1 \
        | tee "$out/log-fixed.txt"
      ;;
  esac
  echo "== $part ended: exit ${PIPESTATUS[0]}, $(( $(date +%s) - t0 )) s in"
done
