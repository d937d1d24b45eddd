#!/usr/bin/env bash
# One call on a lent GPU machine (no network): build with CUDA, run the CUDA tests, run the
# CUDA benchmarks, print a short table last. Outputs go to $OUT (the device tool fetches them).
#   bash benchmarks/gpu_check.sh            (from the repository root)
set -uo pipefail
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
export PATH="$PATH:/usr/local/cuda/bin"

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"

echo "== build"
if ! MAX_JOBS=16 FORCE_CUDA=1 LVMFAST_REQUIRE_EXTENSION=1 \
    pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
python -m lvmfast info | tee "$OUT/info.txt"

echo "== CUDA tests"
python -m pytest -m cuda -x -q -p no:cacheprovider >"$OUT/pytest.txt" 2>&1
tests_rc=$?
tail -25 "$OUT/pytest.txt"

echo "== CUDA benchmarks"
python -m lvmfast bench --device cuda --json "$OUT/bench.json" >"$OUT/bench.txt" 2>&1
bench_rc=$?

echo "== summary (pytest rc=$tests_rc, bench rc=$bench_rc)"
# the short table: fwd+bwd rows with their same-run speed-ups
grep -E "^(op |[a-z_]+ +[a-z]+ +fwd\+bwd)" "$OUT/bench.txt" | cut -c1-120 || tail -30 "$OUT/bench.txt"
