#!/usr/bin/env bash
# One call on a lent GPU machine (no network): build with CUDA, measure the card's ceilings, run
# the CUDA tests, run the CUDA benchmarks family by family (each under its own time limit, so a
# slow one cannot starve the rest), then print floors and a short table last. Outputs go to $OUT.
#   bash benchmarks/gpu_check.sh [bench families...]     (from the repository root)
# Limits in seconds: TEST_LIMIT_S (pytest), BENCH_LIMIT_S (each family), DEADLINE_S (no family
# starts past it, counted from the script's start). TESTS: pytest selection (default: all of
# `-m cuda`; `none` skips the tests). Wheels in .whl/ (carried: the device has no network) are
# installed first, e.g. diffusers and its dependencies for the peer rows. TRITON_KERNELS=0 skips
# benchmarks/triton_kernels.py (the Triton flow kernels alone; TRITON_LIMIT_S), HOST_OVERHEAD=0
# benchmarks/host_overhead.py (into bench.txt; HOST_LIMIT_S). LVMFAST_CUDA_DEFINES
# ("X=1 Y=2") builds the kernels with those -D tuning constants (a variant of gpu_kernels.sh).
set -uo pipefail
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
export PATH="$PATH:/usr/local/cuda/bin" PYTHONUNBUFFERED=1
FAMILIES=("${@:-log_mog householder_flow sylvester_flow bjorck_orthonormalize diffusion}")
FAMILIES=(${FAMILIES[@]})
SEED="${LVMFAST_TEST_SEED:-$RANDOM$RANDOM}"
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"

if compgen -G ".whl/diffusers-*.whl" >/dev/null; then
  # resolved against the carried wheels, so packages the image already has stay as they are
  python -m pip install -q --no-index --find-links .whl diffusers 2>&1 | tail -3
fi
python -c "import diffusers; print('diffusers', diffusers.__version__)" 2>/dev/null | tee -a "$OUT/gpu.txt" \
  || echo "diffusers not importable: no diffusers rows" | tee -a "$OUT/gpu.txt"

stamp "build${LVMFAST_CUDA_DEFINES:+ with -D ${LVMFAST_CUDA_DEFINES}}"
echo "LVMFAST_CUDA_DEFINES=${LVMFAST_CUDA_DEFINES:-}" >>"$OUT/gpu.txt"
if ! MAX_JOBS=16 FORCE_CUDA=1 LVMFAST_REQUIRE_EXTENSION=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
    python -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
# `python -m pip`: a bare `pip` there may belong to a Python without torch (it built nothing)
python -c "import torch, lvmfast._C; assert torch._C._dispatch_has_kernel_for_dispatch_key('lvmfast::log_mog', 'CUDA')" || { echo "NO CUDA KERNELS"; exit 1; }
python -m lvmfast info | tee -a "$OUT/gpu.txt"

stamp "ceilings"
python benchmarks/floors.py measure "$OUT/ceilings.json" | tee -a "$OUT/gpu.txt"

tests_rc=skipped
if [ "${TESTS:-}" != none ]; then
stamp "CUDA tests (seed $SEED)"
parallel=(); python -c "import xdist" 2>/dev/null && parallel=(-n 8)
timeout=(); python -c "import pytest_timeout" 2>/dev/null && timeout=(--timeout 120)
# -v: one line per finished test, so a run cut by the time limit still names its failures
# two threads per worker: 8 workers with a thread per core each oversubscribe the CPU 8x, and
# the float64 CPU references of the benchmark-shape tests then crawl
OMP_NUM_THREADS=2 LVMFAST_TEST_SEED=$SEED timeout "${TEST_LIMIT_S:-300}" python -m pytest -m cuda -v -p no:cacheprovider --maxfail 25 \
  "${parallel[@]}" "${timeout[@]}" -rf --durations 15 ${TESTS:-} >"$OUT/pytest.txt" 2>&1
tests_rc=$?
grep -E "(FAILED|ERROR) " "$OUT/pytest.txt" | cut -c1-200 | sort -u | head -25
echo "passed $(grep -c ' PASSED ' "$OUT/pytest.txt"), skipped $(grep -c ' SKIPPED ' "$OUT/pytest.txt")"
tail -1 "$OUT/pytest.txt"
fi

if [ "${TRITON_KERNELS:-1}" != 0 ]; then
  # the Triton flow kernels alone, in CUDA graphs, rows like gpu_kernels.sh's (their table goes
  # at the end of floors.md: the tool returns at most 8 files)
  stamp "Triton kernels alone"
  timeout "${TRITON_LIMIT_S:-180}" python benchmarks/triton_kernels.py >"$OUT/triton-kernels.jsonl" \
    2> >(tail -5 >&2) || echo "triton_kernels.py: rc=$?"
fi

stamp "CUDA benchmarks: ${FAMILIES[*]}"
bench_rc=0
: >"$OUT/bench.txt"
for fam in "${FAMILIES[@]}"; do
  left=$(( ${DEADLINE_S:-100000} - ($(date +%s) - started) - 15 ))
  limit=$(( left < ${BENCH_LIMIT_S:-150} ? left : ${BENCH_LIMIT_S:-150} ))
  if (( limit < 20 )); then stamp "  $fam skipped: past the deadline" | tee -a "$OUT/bench.txt"; continue; fi
  stamp "  $fam (limit $limit s)" | tee -a "$OUT/bench.txt"
  timeout "$limit" python -m lvmfast bench --device cuda --ops "$fam" --budget 0.3 \
    --json "/tmp/bench-$fam.json" >>"$OUT/bench.txt" 2>&1 || { bench_rc=$?; echo "  $fam: rc=$bench_rc" | tee -a "$OUT/bench.txt"; }
  # a bench cut by the time limit can leave torch.compile's worker processes behind: the likely
  # cause of a later call on the same machine running its host twice as slow (2026-11-26)
  pkill -f "torch._inductor.compile_worker|torch/_inductor/compile_worker" 2>/dev/null || true
done
if [ "${HOST_OVERHEAD:-1}" != 0 ]; then
  # where the wall clock goes beyond the kernels (the host's costliest operators), into bench.txt
  stamp "host overhead" | tee -a "$OUT/bench.txt"
  timeout "${HOST_LIMIT_S:-90}" python benchmarks/host_overhead.py --ops householder_flow sylvester_flow \
    >>"$OUT/bench.txt" 2>&1 || echo "host_overhead.py: rc=$?" | tee -a "$OUT/bench.txt"
fi
python - "$OUT/bench.json" "${FAMILIES[@]}" <<'EOF'
import json, os, sys
merged = None
for fam in sys.argv[2:]:
    path = f"/tmp/bench-{fam}.json"
    if os.path.exists(path):
        part = json.load(open(path))
        merged = merged or {"environment": part["environment"], "results": []}
        merged["results"] += part["results"]
if merged:
    json.dump(merged, open(sys.argv[1], "w"), indent=1)
EOF
[ -f "$OUT/bench.json" ] && python benchmarks/floors.py table "$OUT/bench.json" "$OUT/ceilings.json" >"$OUT/floors.md"
if [ -s "$OUT/triton-kernels.jsonl" ]; then
  { echo; python benchmarks/floors.py kernels "$OUT/ceilings.json" "$OUT/triton-kernels.jsonl"; } >>"$OUT/floors.md"
fi

stamp "summary (pytest rc=$tests_rc, bench rc=$bench_rc)"
grep -E "failed|rc=" "$OUT/bench.txt" | cut -c1-160 | head -20
[ -f "$OUT/floors.md" ] && cut -c1-200 "$OUT/floors.md"
# where each native row's GPU time goes: its costliest kernels, microseconds per call
[ -f "$OUT/bench.json" ] && python - "$OUT/bench.json" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    if r.get("candidate") == "lvmfast[native]" and "device_kernels" in r:
        top = ", ".join(f"{name[:48]} {s * 1e6:.1f}" for name, s in list(r["device_kernels"].items())[:4])
        print(f"{r['op']} {r['shape']} {r['mode']}: {top}")
EOF
