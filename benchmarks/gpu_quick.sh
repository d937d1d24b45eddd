#!/usr/bin/env bash
# A short call on a lent GPU machine (about 4 minutes of device time): the kernels-alone program's
# default build (gpu_kernels.sh: checks against the float64 reference, timings at one batch scale,
# no profile) while the extension builds in the background, then a CUDA pytest selection on the
# extension, cut at DEADLINE_S from the start. Outputs go to $OUT (5 files).
#   bash benchmarks/gpu_quick.sh                 (from the repository root)
# TESTS: the pytest arguments (default: the Sylvester CUDA tests).
set -uo pipefail
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
export PATH="$PATH:/usr/local/cuda/bin" PYTHONUNBUFFERED=1
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*"; }
DEADLINE_S="${DEADLINE_S:-210}"

stamp "extension build (background) and the kernels alone"
rm -f /tmp/extension.rc
(MAX_JOBS=10 FORCE_CUDA=1 LVMFAST_REQUIRE_EXTENSION=1 TORCH_CUDA_ARCH_LIST=9.0 \
   python -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1
 echo $? >/tmp/extension.rc) &
# ";": no variants, the default build only
VARIANTS=";" SCALES=1 NCU=0 OUT="$OUT" bash benchmarks/gpu_kernels.sh >/tmp/kernels.txt 2>&1
echo "gpu_kernels.sh rc=$?"
grep -E "FAILED|within tolerance|rc=|BUILD" /tmp/kernels.txt | head -12
wait
stamp "extension build rc=$(cat /tmp/extension.rc 2>/dev/null)"
if [ "$(cat /tmp/extension.rc 2>/dev/null)" = 0 ]; then
  left=$(( DEADLINE_S - ($(date +%s) - started) ))
  parallel=(); python -c "import xdist" 2>/dev/null && parallel=(-n 8)
  stamp "CUDA tests (limit $left s)"
  OMP_NUM_THREADS=2 timeout "$left" python -m pytest -m cuda -q -p no:cacheprovider "${parallel[@]}" -rf \
    ${TESTS:-tests/test_sylvester.py} >"$OUT/pytest.txt" 2>&1
  echo "pytest rc=$?"
  grep -E "^(FAILED|ERROR)" "$OUT/pytest.txt" | cut -c1-200 | head -15
  tail -1 "$OUT/pytest.txt"
else
  tail -20 "$OUT/build.log"
fi
stamp "tables"
# the rows of the orthogonal kind in both layouts of q, then the compact table
grep -E "orthogonal" "$OUT/kernels-table.md" | head -8
sed -n '/cold \/ floor at the smallest batch/,$p' "$OUT/kernels-table.md"
