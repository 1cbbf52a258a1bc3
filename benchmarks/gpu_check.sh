#!/usr/bin/env bash
# Issue 14's checks on a lent GPU machine, as one prepared call (at most DEADLINE_S seconds):
#   1. 1 and 8 trials per GPU, 4 rounds (8 per GPU: a 32-trial search), under the default
#      isolation (auto), then the quiet re-check of
#      the recorded latency medians (benchmarks/gpu_packing.py);
#   2. if time is left, 8 per GPU (2 rounds) with the gate off (isolation: none) and its quiet
#      re-check, to show what the isolation keeps out of the figures.
# PARTS="start fixed" bash benchmarks/gpu_check.sh runs two diagnostics instead (below).
# From the project's root, after ../shared/tools/gpu-bundle.sh built .gpu-bundle:
#   bash benchmarks/gpu_check.sh            (reports go to $OUT, else /tmp/gpu-check)
#   SMOKE=1 PY=.venv/bin/python bash benchmarks/gpu_check.sh   (checks this script on CPUs)
# DEADLINE_S (default 560) bounds the whole run, so that a call's time limit is never hit.
set -u
# PARTS (default "packing none"): which checks, in order, each only if the deadline leaves it
# the seconds it needs. "pinning" (benchmarks/meter_pinning.py, ~2 min), "start" (the command's
# start, this checkout against the one in .ab-before/, benchmarks/search_start.py, ~2 min) and
# "fixed" (the fixed cost's stages, benchmarks/search_fixed_cost.py; ~1.5 min in the packing's
# warm work directory, ~3 min without) suit a second call. For "start", first:
#   mkdir .ab-before && git archive <commit> orchestrator trials searchspace reports | tar -x -C .ab-before
# (ignored through .git/info/exclude) and carry .ab-before too.
parts=${PARTS:-packing none}
for part in $parts; do
  case $part in
    packing | none | pinning | start | fixed) ;;
    *) echo "PARTS: unknown part '$part'; use packing, none, pinning, start or fixed" >&2; exit 2 ;;
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
  # What the trial code and ray.init both import on this machine (run side by side by the
  # search's start; orchestrator/_ray_session.py): must be none.
  $py - <<'PY'
import json, subprocess, sys, tempfile
pre = "import sys, json, argparse, searchspace, ray, gzip, pkgutil, timeit, ctypes.util; b = set(sys.modules)\n"
end = "\nprint(json.dumps(sorted(set(sys.modules) - b)))"
d = tempfile.mkdtemp(prefix="slimtune-ray-")
def mods(code):
    out = subprocess.run([sys.executable, "-c", pre + code + end], capture_output=True, text=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))
both = mods(f"ray.init(num_cpus=1, include_dashboard=False, _temp_dir={d!r}); ray.shutdown()") & mods("import trials")
print("modules imported by both the trial code and ray.init:", sorted(both) or "none")
PY
  # Where a trial worker's imports go on this machine (the 8.75 s of 2026-11-30 were never
  # profiled there): top-level packages by cumulative import time, the second of two runs (the
  # first may still write bytecode).
  for _ in 1 2; do $py -X importtime -c "import orchestrator._trainable" 2> "$out/importtime-worker.txt"; done
  $py - "$out/importtime-worker.txt" <<'PY'
import sys
best, total = {}, 0.0
for line in open(sys.argv[1]):
    parts = line.split("|")
    if len(parts) != 3 or not parts[1].strip().isdigit():
        continue
    name = parts[2].strip()
    if name == "orchestrator._trainable":
        total = int(parts[1]) / 1e6
    if "." not in name:  # a top-level package, wherever it was first imported
        best[name] = max(best.get(name, 0), int(parts[1]))
top = sorted(best.items(), key=lambda kv: -kv[1])[:12]
print(f"worker imports (import orchestrator._trainable): {total:.2f} s; largest packages:",
      ", ".join(f"{n} {us / 1e6:.2f} s" for n, us in top))
PY
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
    start)
      if [ ! -f .ab-before/orchestrator/cli.py ]; then echo "== start skipped: no .ab-before"; continue; fi
      if [ "$(left)" -lt 150 ]; then echo "== start skipped: $(left) s left"; continue; fi
      echo "== start ($(left) s left)"
      start_args=(--repeats 2)
      [ -n "${SMOKE:-}" ] && start_args=(--smoke)
      timeout "$(( $(left) - 10 ))" "$py" benchmarks/search_start.py --before .ab-before \
        "${start_args[@]}" --workdir /tmp/ss --out "$out/search-start.txt" 2>&1 \
        | tee "$out/log-start.txt"
      ;;
    fixed)
      # In the packing's work directory when it ran before (data, baseline, int8 choice cached).
      fixed_args=(--config examples/mnist1d_large_gpu.yaml --runs 2 --workdir /tmp/fc)
      needs=200
      if [ -d /tmp/gp/.slimtune/cache ]; then
        fixed_args=(--config examples/mnist1d_large_gpu.yaml --runs 1 --workdir /tmp/gp); needs=100
      fi
      [ -n "${SMOKE:-}" ] && fixed_args=(--smoke --runs 2 --workdir /tmp/fc)
      if [ "$(left)" -lt "$needs" ]; then echo "== fixed skipped: $(left) s left"; continue; fi
      echo "== fixed ($(left) s left)"
      timeout "$(( $(left) - 10 ))" "$py" benchmarks/search_fixed_cost.py "${fixed_args[@]}" \
        --trials 2 --out "$out/search-fixed-cost.txt" 2>&1 | tee "$out/log-fixed.txt"
      ;;
  esac
  echo "== $part ended: exit ${PIPESTATUS[0]}, $(( $(date +%s) - t0 )) s in"
done
