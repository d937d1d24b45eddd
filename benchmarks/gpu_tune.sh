#!/usr/bin/env bash
# One call on a lent GPU machine that tunes, then checks: times the Björck kernels' build
# variants with the kernels-alone program (gpu_kernels.sh, one batch scale), picks the fastest
# forward + backward among the builds whose float64 check passed (the default unless a variant is
# at least MIN_GAIN faster), builds the extension with it and runs gpu_check.sh on that build
# (CUDA tests, TESTS if set, then the benchmarks of FAMILIES). $OUT gets gpu_check.sh's files and kernels.tar.gz
# (gpu_kernels.sh's files and printout); the picked defines are in gpu.txt.
#   bash benchmarks/gpu_tune.sh            (from the repository root)
# KERNEL_DEADLINE_S: no ncu past it; TOTAL_S: the whole script's limit (gpu_check.sh's DEADLINE_S
# is what the first part left of it).
# EMULATE=1: rehearses the first part and the pick on the CPU emulation (timings meaningless).
set -uo pipefail
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*"; }
BUILD=/tmp/flow-kernels
KOUT=/tmp/flow-kernels-out
rm -rf "$KOUT"
mkdir -p "$KOUT"
# The Björck buffers' layouts against shared-memory bank conflicts (benchmarks/kernels/NOTES.md,
# sessions 12 and 13, not yet timed). The backward's block shapes were picked this way in session
# 8 (4 blocks of 128 threads an SM); to time them again: BJ_VARIANTS="bj256x2:-DLVMFAST_BJORCK_
# BACKWARD_THREADS=256 -DLVMFAST_BJORCK_BLOCKS_PER_SM=2;bjnopf:-DLVMFAST_BJORCK_PREFETCH=0".
BJ_VARIANTS="${BJ_VARIANTS:-bjswizzle:-DLVMFAST_BJORCK_SWIZZLE=1;bjpad:-DLVMFAST_BJORCK_PAD=4}"

stamp "kernels alone: default and the Björck backward variants"
VARIANTS="$BJ_VARIANTS" SCALES=1 BUILD="$BUILD" DEADLINE_S="${KERNEL_DEADLINE_S:-150}" OUT="$KOUT" \
  bash benchmarks/gpu_kernels.sh >"$KOUT/kernels.txt" 2>&1
echo "gpu_kernels.sh rc=$?"
grep -E "FAILED|within tolerance|rc=" "$KOUT/kernels.txt" | head -20
tail -16 "$KOUT/kernels.txt"

# name:defines pairs -> the defines of the fastest Björck forward + backward that passed its check
defines=$(python - "$BUILD" "${MIN_GAIN:-0.03}" "$BJ_VARIANTS" <<'EOF'
import json, pathlib, sys
build, min_gain, spec = pathlib.Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
defines = {"default": ""}
for item in filter(None, spec.split(";")):
    name, flags = item.split(":", 1)
    defines[name] = " ".join(f[2:] for f in flags.split())  # -DX=1 -> X=1 (setup.py's form)
times = {}
for name in defines:
    rc = build / name / "check-tiny.rc"
    rows = build / "results" / f"kernels-{name}.jsonl"
    if not (rc.exists() and rc.read_text().strip() == "0" and rows.exists()):
        print(f"{name}: no passing check or no rows", file=sys.stderr)
        continue
    modes = {}
    for line in rows.read_text().splitlines():
        r = json.loads(line) if line.startswith("{") else {}
        if r.get("op") == "bjorck_orthonormalize" and r.get("mode") in ("fwd", "bwd"):
            modes[r["mode"]] = r["cold_s"]
    if len(modes) == 2:
        times[name] = modes["fwd"] + modes["bwd"]
print("Björck forward + backward, cold us: "
      + ", ".join(f"{n} {t * 1e6:.1f}" for n, t in times.items()), file=sys.stderr)
best = min(times, key=times.get) if times else "default"
if "default" in times and times[best] > (1 - min_gain) * times["default"]:
    best = "default"
print(f"picked: {best}", file=sys.stderr)
print(defines[best])
EOF
)
tar -czf "$OUT/kernels.tar.gz" -C "$KOUT" .

if [ "${EMULATE:-0}" = 1 ]; then  # a rehearsal on the CPU (gpu_kernels.sh's EMULATE): no CUDA build
  stamp "EMULATE=1: would build with -D '$defines'"
  exit 0
fi
stamp "extension build and checks${defines:+ with -D $defines}"
# what is left of TOTAL_S (under the device tool's 600 s a call) goes to gpu_check.sh
check_deadline=$(( ${TOTAL_S:-570} - ($(date +%s) - started) ))
LVMFAST_CUDA_DEFINES="$defines" DEADLINE_S="$check_deadline" TEST_LIMIT_S="${TEST_LIMIT_S:-100}" \
  BENCH_LIMIT_S="${BENCH_LIMIT_S:-90}" \
  bash benchmarks/gpu_check.sh ${FAMILIES:-bjorck_orthonormalize householder_flow sylvester_flow}
stamp "done"
