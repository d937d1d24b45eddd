#!/usr/bin/env bash
# One call on a lent GPU machine for the flow kernels alone: builds benchmarks/kernels/flow_kernels.cu
# with plain nvcc (no torch extension: seven of the builds below took 3 minutes on 2 cores here, in
# parallel; the full extension took 2 minutes on the H100 machine's 16) once per variant of
# the kernels' -D tuning constants, checks every build against lvmfast.reference,
# times each at the benchmark shapes and at SCALES times their batch, profiles the default build
# with ncu, and prints the tables last. Outputs go to $OUT.
#   bash benchmarks/gpu_kernels.sh              (from the repository root)
# VARIANTS: "name:-DX=1 -DY=2;name2:..." (the default list is below; "default" is always built
# first, with no -D). SCALES: batch multiples (default 1,4). NCU=0 skips the profile.
# EMULATE=1: a rehearsal of this script on the CPU (tests/test_kernel_program.py): the programs
# built against tests/cuda_emulator, tiny batches, stand-in ceilings, no ncu; timings meaningless.
set -uo pipefail
# The device tool returns at most 8 files from $OUT: everything is written to $BUILD/results and
# packed into $OUT/kernels-results.tar.gz after each phase (so a run cut short still returns what
# it had), with the table and the GPU's description beside it.
DEST="${OUT:-$(mktemp -d)}"
mkdir -p "$DEST"
# PYTHONPATH: the checks import lvmfast.reference from this checkout (nothing is installed there)
export PATH="$PATH:/usr/local/cuda/bin" PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)
# the Python with torch (`python` on the GPU machine; a bare python3 there may lack it)
PY=python
command -v python >/dev/null && python -c "import torch" 2>/dev/null || PY=python3
stamp() { echo "[$(( $(date +%s) - started )) s] $*"; }
ARCH="${ARCH:-sm_90}"
EMULATE="${EMULATE:-0}"
RUN_ARGS=()
[ "$EMULATE" = 1 ] && RUN_ARGS=(--tiny --reps 2 --launches 1 --cold-mb 1)
SCALES="${SCALES:-1,4}"
# Hypotheses, and what the H100 said of them (benchmarks/kernels/NOTES.md):
#  bj256x2: the Björck backward's shape before 2026-11-26 (2 blocks of 256 threads an SM, the
#       re-run of the forward on 128 of them): 590 us against the default's 460.
#  bjnopf: without the walk's prefetch: 610 us against 590 with it (at 256 x 2).
#  bjfullgram: every tile of the Gram products A = Q^T Q, the default before session 10's
#       symmetric Gram (the upper blocks of tiles only, packed into the first warps: at
#       M = 32, 80 of 128 threads, the fourth warp idle; bitwise the same A). Predicted: the
#       default's forward 5-15% faster (157.8 -> 135-150 us), its backward 0-5%. H100, session
#       11: forward 157.7 -> 148.7 us (6%), backward 461.6 -> 453.4 (2%), cold at N = 1024.
#  bjswizzle: the Björck D x M buffers with each row's 4-float chunks XOR-permuted by the row
#       (kernels/orthogonal.cu, kSwizzle): a row of 32 floats covers the 32 banks once, so the
#       Gram products' two K splits (rows d, d + 1: 2-way) and an update warp's tile rows (r,
#       r + 4, r + 8, r + 12: 4-way) load the same banks, by the code's reading (session 12, no
#       GPU; benchmarks/kernels/bjorck_banks.py: 1664 wavefronts a block's step against 896 FMA
#       cycles, swizzled 768). Bitwise the default's results. Predicted: forward 148.7 -> 105-135
#       us, backward 453 -> 330-400 us at N = 1024, cold; ncu's shared-load bank conflicts far
#       fewer than the default's. Conflicts that fall with the time flat: the barriers bound it.
#       Session 13 (no GPU), from the SASS (cuobjdump): the swizzle's XOR costs instructions in
#       the products' loops (Gram: 114 for 64 FFMAs against the default's 84; update: 108
#       against 94), each an issue slot taken from the FMAs; bjpad is the same wavefronts
#       without them.
#  bjpad: the bank conflicts removed with affine addresses (kernels/orthogonal.cu, kPad): rows
#       M + 4 apart, the Gram's K split over blocks of 4 rows, an update tile's rows D / 4 apart.
#       The model: the same 768 wavefronts a step as bjswizzle; the SASS: about the default's
#       instruction counts in the loops (86 and 95 for 64 FFMAs). 22.5 KB a forward block (20),
#       8 still fit an SM; the backward takes 101 registers (bounded to its 4 blocks an SM;
#       unbounded, ptxas spilled). The Gram sums K in another order: results within rounding
#       of the default's, not its bits. A count of the default's step (8 blocks an SM): about
#       5500 warp instructions a block (SASS loops), 5.6 us of issue at 4 a cycle, and 1664 x 8
#       wavefronts, 6.7 us: their sum is the 12.3 us a step measured (148.7 us / 12.1 Gram
#       products), their overlap would be 6.7. Padded: issue 5.7 us, wavefronts 3.1. Predicted
#       (cold, N = 1024): forward 148.7 -> 70-106 us (overlapped .. summed), backward 453 ->
#       195-305 us (the backward's 3.05x the forward, less the prefetch's instructions, below);
#       bjswizzle (issue 6.8 us) forward 82-120 us, backward 235-345. The default's backward
#       (its prefetch in 16-byte copies since session 13: 54 SASS instructions a thread a step,
#       384 before) 453 -> 415-450 us. ncu: shared-load bank conflicts far fewer in both than in
#       the default, and the instruction counts above. bjpad slower than bjswizzle would mean
#       issue slots were not the limit and the padding costs more.
#  sy256, sy64: the one-wave Sylvester kernels are bound by a sample's serial latency (then more
#       threads a sample help) or by the loads (then the thread count does not matter). Neither:
#       256 threads help the Householder kind only, 64 the orthogonal forward only.
#  sy128: 128 threads for every kind, the default before the wide blocks (256 threads where a
#       block stages over 28 kB: the Householder kind at D = 64). Predicted: the Householder
#       kind 30.4 against 33.0 us forward and 55.1 against 65.5 backward (sy256's and the old
#       default's on 2026-11-26), the other kinds within noise of the default. H100, session 11
#       (cold, both builds with the since-removed phased waits): Householder forward 34.8 -> 33.3
#       us, backward 70.2 -> 58.7 at B = 1024; at B = 4096 forward 107.3 -> 116.8 (slower),
#       backward 214.0 -> 210.9; the other kinds within 1%. Again without them (run 3):
#       forward 33.3 -> 31.0 and backward 65.9 -> 55.4 at B = 1024, forward 96.7 -> 107.4 at 4096.
#       Since session 13 the default launches wide blocks only up to 16 samples an SM, so at
#       B = 4096 (31 an SM) the default is sy128's code for the Householder kind.
#  sywide: wide blocks at every batch (the rule before session 13). Predicted: the Householder
#       kind at B = 4096 (SCALES=1,4) forward 107 against the default's 97 us, backward 200
#       against 197 (session 11's run 3 again); B = 1024 the same in both. With SCALES=1,2,4,
#       B = 2048 (15.5 an SM, still wide in the default) says on which side the crossover is.
#  (removed) phased waits: a staged sample's copies in three committed groups, each phase waiting
#       for its own, predicted 1-3 us faster; on the H100 (session 11) from 1% faster to 16%
#       slower (triangular forward 19.1 -> 20.9 us at B = 1024, 57.6 -> 66.7 at 4096). Untested
#       guess: the split copy loops keep fewer bytes in flight.
#  syglobal: no staging, every launch reads the matrices from global memory (all blocks of 128
#       threads, only the vectors in shared memory, so the SM's registers bound the blocks).
#       Staged, the Householder kind's 33 kB a block leave 6 blocks an SM, 792 < 1024 samples:
#       B = 1024 runs in two rounds of load-then-compute. The Triton kernel of that kind, which
#       stages nothing, ran its forward in 17.8 us a flow in session 11's bench (native 29.5,
#       both warm). Predicted (not yet run): the
#       Householder kind's forward 31 -> 20-26 us at B = 1024, the triangular and orthogonal
#       kinds slower than staged (their rows read from global memory by lane groups, each
#       element once). Equal or slower for the Householder kind too would mean the second round
#       is not what costs, and the next lever is not the staging.
#  systageq0: the staged kernels stage the triangles only and read a dense Q from global memory
#       (column sums for Q^T z coalesced from DRAM; the rows for Q c, whole warps a row, mostly
#       from L2), so a Householder-kind block needs 17 kB and 128 threads, and B = 1024 fits one
#       wave (10 blocks an SM by registers). Predicted (not yet run): Householder kind forward
#       31 -> 22-27 us and backward 55 -> 45-55 at B = 1024; orthogonal within 10% of the
#       default (one wave already); triangular unchanged (no Q). Slower for the Householder kind
#       would mean the L2 pass over Q costs more than the second round.
#  sypipe*: in one wave every block loads, then every block computes, and nothing overlaps;
#       fewer blocks, each loading its next sample while it computes the current one. Slower in
#       every case (fewer bytes in flight).
#  (default, session 13) the Sylvester staging loop with stepped pointers: 17 SASS instructions
#       an element pair of the triangles (53 before), 10 an element of a dense Q (18); the same
#       copies in the same order; and the mat-vecs' inner loops unrolled by 4 (6 instructions an
#       element, 10 rolled, the same sums). Predicted against session 11's default (cold,
#       B = 1024): triangular forward 19.1 -> 13-17 us, backward 36.2 -> 30-35; orthogonal
#       forward 16.6 -> 12.5-15.5; Householder forward 31.0 -> 25-29; at B = 4096 the triangular
#       forward 57.6 -> 43-54. The probe triangles-4B (now the kernels' loop, before with two divisions an
#       element) 12.6 -> 8-10 us. No change would mean the loads, not their issue, set the time.
#  syelem, sylatezeros (session 14, no GPU): the Sylvester backward's gradients of R1, R2 and a
#       dense Q go out in 16-byte stores (quad_rows: a thread keeps a column quad and its values
#       in registers), and a triangle's quads wholly below the diagonal (44% at M = 64) are stored
#       while the sample's matrices load instead of after its computation. SASS (CUDA 13.0): an
#       element store by lanes along the rows took 11 instructions (the row's values reloaded
#       after every store, which might alias them), a quad about 29 on the triangles (a warp
#       holding 4 column quads, so that it walks only the rows they reach) and 20 on Q; so the
#       stores of the two 64 x 64 gradients after the computation 2816 -> about 1200 warp
#       instructions a block, of the backward's roughly 8000 before. syelem is the element stores (session 13's default), sylatezeros
#       the quads without the early zeros. Predicted (cold, B = 1024): the default's triangular
#       backward 1-4 us faster than syelem's (30-35 us by session 13's prediction), the
#       Householder kind's 2-6 us (three gradients); sylatezeros between them. The forwards
#       unchanged (the same code). Nothing between syelem and the default: the stores were not
#       on the backward's critical path.
# (tests/test_kernel_program.py checks each of these builds on the CPU emulation.)
VARIANTS="${VARIANTS:-bj256x2:-DLVMFAST_BJORCK_BACKWARD_THREADS=256 -DLVMFAST_BJORCK_BLOCKS_PER_SM=2;\
bjnopf:-DLVMFAST_BJORCK_PREFETCH=0;\
bjfullgram:-DLVMFAST_BJORCK_SYMMETRIC_GRAM=0;\
bjswizzle:-DLVMFAST_BJORCK_SWIZZLE=1;\
bjpad:-DLVMFAST_BJORCK_PAD=4;\
sy128:-DLVMFAST_SYLVESTER_WIDE_THREADS=128;\
sywide:-DLVMFAST_SYLVESTER_WIDE_MAX_SAMPLES_PER_SM=1000000;\
syglobal:-DLVMFAST_SYLVESTER_STAGED_LIMIT_KB=0;\
systageq0:-DLVMFAST_SYLVESTER_STAGE_Q=0;\
syelem:-DLVMFAST_SYLVESTER_QUAD_STORES=0;\
sylatezeros:-DLVMFAST_SYLVESTER_EARLY_ZEROS=0;\
sy256:-DLVMFAST_SYLVESTER_THREADS=256 -DLVMFAST_SYLVESTER_MIN_BLOCKS=5 -DLVMFAST_SYLVESTER_MIN_BACKWARD_BLOCKS=4;\
sy64:-DLVMFAST_SYLVESTER_THREADS=64 -DLVMFAST_SYLVESTER_WIDE_THREADS=64 -DLVMFAST_SYLVESTER_MIN_BLOCKS=16 -DLVMFAST_SYLVESTER_MIN_BACKWARD_BLOCKS=16;\
sypipe4:-DLVMFAST_SYLVESTER_PIPELINE_BLOCKS=4 -DLVMFAST_SYLVESTER_MIN_BLOCKS=4 -DLVMFAST_SYLVESTER_MIN_BACKWARD_BLOCKS=4;\
sypipe2:-DLVMFAST_SYLVESTER_PIPELINE_BLOCKS=2 -DLVMFAST_SYLVESTER_MIN_BLOCKS=2 -DLVMFAST_SYLVESTER_MIN_BACKWARD_BLOCKS=2}"
BUILD="${BUILD:-/tmp/flow-kernels}"
rm -rf "$BUILD"
OUT="$BUILD/results"
mkdir -p "$OUT"
pack() {
  tar -czf "$DEST/kernels-results.tar.gz" -C "$OUT" . 2>/dev/null
  for f in kernels-table.md gpu.txt; do [ -f "$OUT/$f" ] && cp "$OUT/$f" "$DEST/"; done
  return 0
}

: >"$OUT/gpu.txt"
if [ "$EMULATE" != 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
  nvcc --version | tail -1 | tee -a "$OUT/gpu.txt"
fi
git log -1 --format='commit %H %s' 2>/dev/null | tee -a "$OUT/gpu.txt"

# setup.py's nvcc flags and the defines torch's extension builder adds
FLAGS=(-O3 -std=c++17 --use_fast_math -lineinfo -DNDEBUG -arch="$ARCH" -D__CUDA_NO_HALF_OPERATORS__
       -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__)
build() {  # name, defines...
  local name=$1 dir="$BUILD/$1"
  shift
  mkdir -p "$dir"
  if [ "$EMULATE" = 1 ]; then
    (cd tests && "$PY" -c 'import sys; from pathlib import Path; from cuda_emulator import build
build.build_program(Path("../benchmarks/kernels/flow_kernels.cu"), ["sylvester", "orthogonal", "householder"],
                    Path(sys.argv[1]), tuple(sys.argv[2:]))' "$dir/flow_kernels" "${@#-D}") >"$OUT/ptxas-$name.txt" 2>&1 \
      || { tail -20 "$OUT/ptxas-$name.txt"; echo "BUILD FAILED: $name"; return 1; }
    return 0
  fi
  local objs=()
  for family in sylvester orthogonal householder; do
    nvcc "${FLAGS[@]}" "$@" -Xptxas -v -c "kernels/$family.cu" -o "$dir/$family.o" \
      >"$dir/$family.log" 2>&1 || { tail -20 "$dir/$family.log"; echo "BUILD FAILED: $name $family"; return 1; } &
    objs+=("$dir/$family.o")
  done
  nvcc "${FLAGS[@]}" "$@" -c benchmarks/kernels/flow_kernels.cu -o "$dir/main.o" >"$dir/main.log" 2>&1 \
    || { tail -20 "$dir/main.log"; echo "BUILD FAILED: $name main"; return 1; }
  wait
  nvcc -arch="$ARCH" "$dir/main.o" "${objs[@]}" -o "$dir/flow_kernels" >"$dir/link.log" 2>&1 \
    || { tail -20 "$dir/link.log"; echo "BUILD FAILED: $name link"; return 1; }
  cat "$dir"/*.log >"$OUT/ptxas-$name.txt"
}

stamp "build (default and: ${VARIANTS//;/, })"
names=(default)
build default &
IFS=';' read -ra specs <<<"$VARIANTS"
for spec in "${specs[@]}"; do
  [ -z "$spec" ] && continue
  name=${spec%%:*}
  read -ra defines <<<"${spec#*:}"
  names+=("$name")
  build "$name" "${defines[@]}" &
done
wait
built=()
for name in "${names[@]}"; do
  [ -x "$BUILD/$name/flow_kernels" ] && built+=("$name") || echo "no binary for $name"
done
[ ${#built[@]} -eq 0 ] && { echo "NOTHING BUILT"; exit 1; }

pack
stamp "checks against lvmfast.reference (float64)"
# the launches are short; the float64 checks run on the CPU, all builds at once
check() {  # name, size: the binary's dump, then the reference's verdict
  local name=$1 size=$2 dump="$BUILD/$1/dump-$2" extra=()
  [ "$size" = tiny ] && extra=(--tiny)
  mkdir -p "$dump"
  "$BUILD/$name/flow_kernels" "${extra[@]}" --once --dump "$dump" >"$OUT/check-$name-$size.txt" 2>&1 \
    && OMP_NUM_THREADS=2 "$PY" benchmarks/check_kernel_dump.py "$dump" >>"$OUT/check-$name-$size.txt" 2>&1
  echo $? >"$BUILD/$name/check-$size.rc"
  rm -rf "$dump"
}
checks=()
for name in "${built[@]}"; do
  # every build on odd tiny batches; the default also at the benchmark's batch
  checks+=("$name tiny")
  [ "$name" = default ] && [ "$EMULATE" != 1 ] && checks+=("$name bench")
done
for c in "${checks[@]}"; do check $c & done
wait
check_rc=0
for c in "${checks[@]}"; do
  read -r name size <<<"$c"
  if [ "$(cat "$BUILD/$name/check-$size.rc" 2>/dev/null)" = 0 ]; then
    echo "  $name ($size): all outputs within tolerance"
  else
    check_rc=1
    echo "  $name ($size): FAILED"
    grep -E "^FAIL" "$OUT/check-$name-$size.txt" | head -8
    tail -3 "$OUT/check-$name-$size.txt"
  fi
done

pack
stamp "ceilings"
if [ "$EMULATE" = 1 ]; then
  echo '{"gpu": "the CPU emulation (stand-in ceilings)", "copy_bytes_per_s": 1e9, "fp32_flops_per_s": 1e9}' \
    >"$OUT/ceilings.json"
else
  "$PY" benchmarks/floors.py measure "$OUT/ceilings.json" | tee -a "$OUT/gpu.txt"
fi

pack
stamp "timings (scales $SCALES)"
for name in "${built[@]}"; do
  timeout 240 "$BUILD/$name/flow_kernels" --variant "$name" --scales "$SCALES" "${RUN_ARGS[@]}" \
    >"$OUT/kernels-$name.jsonl" 2>"$OUT/kernels-$name.err" \
    || { echo "  $name: rc=$?"; tail -3 "$OUT/kernels-$name.err"; }
  stamp "  $name: $(grep -c '^{' "$OUT/kernels-$name.jsonl") rows"
  pack
done

# ncu_profile NAME KERNEL_REGEX: profiles build NAME's kernels matching KERNEL_REGEX (on their
# mangled names, which carry the source file: orthogonal_cu for the Björck kernels) and prints one
# block per launch: headline numbers, top stalls, shared-memory wavefronts, instructions issued.
# --clock-control none: the clocks the timings above ran at. The shared-memory counters test a
# lead of session 12: rows of 32 floats (128 B, every bank once) put the K splits' and the tile
# rows' loads of the Björck products on the same banks (NOTES.md); the instruction count, session
# 13's: the swizzle's XOR costs issue slots that the padded layout does not.
SHARED_METRICS=l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,smsp__inst_executed.sum
ncu_profile() {
  local name=$1 regex=$2
  stamp "ncu ($name build, benchmark shapes, kernels matching $regex, each once)"
  timeout 300 ncu --clock-control none --kernel-name-base mangled --kernel-name regex:"$regex" \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section SchedulerStats --metrics "$SHARED_METRICS" \
    --export "$OUT/ncu-$name" --force-overwrite \
    "$BUILD/$name/flow_kernels" --once >"$OUT/ncu-$name.log" 2>&1 || { echo "  ncu rc=$?"; tail -5 "$OUT/ncu-$name.log"; }
  [ -f "$OUT/ncu-$name.ncu-rep" ] || return 0
  ncu --import "$OUT/ncu-$name.ncu-rep" --csv --page details >"$OUT/ncu-$name-details.csv" 2>/dev/null
  ncu --import "$OUT/ncu-$name.ncu-rep" --csv --page raw >"$OUT/ncu-$name-raw.csv" 2>/dev/null
  "$PY" - "$OUT/ncu-$name-details.csv" "$OUT/ncu-$name-raw.csv" <<'EOF'
import csv, re, sys
# one line per kernel launch: the details page's headline numbers and the raw page's top stalls
want = ["Duration", "DRAM Throughput", "Compute (SM) Throughput", "Achieved Occupancy",
        "Registers Per Thread", "Warp Cycles Per Issued Instruction", "L2 Hit Rate"]
rows = {}
for r in csv.DictReader(open(sys.argv[1])):
    key = (r.get("ID", "?"), r.get("Kernel Name", "?")[:60], r.get("Grid Size", "?"), r.get("Block Size", "?"))
    if r.get("Metric Name") in want:
        rows.setdefault(key, {})[r["Metric Name"]] = f'{r.get("Metric Value", "")} {r.get("Metric Unit", "")}'.strip()
stalls, shared = {}, {}
raw = list(csv.reader(open(sys.argv[2])))
if raw:
    head = raw[0]
    cols = [(i, m.group(1)) for i, h in enumerate(head)
            if (m := re.fullmatch(r"smsp__average_warps_issue_stalled_(\w+)_per_issue_active\.ratio", h))]
    for r in raw[2:]:
        vals = []
        for i, name in cols:
            try:
                vals.append((float(r[i].replace(",", "")), name))
            except (ValueError, IndexError):
                pass
        stalls[r[0]] = ", ".join(f"{n} {v:.1f}" for v, n in sorted(vals, reverse=True)[:4])
        counts = {}
        for op in ("ld", "st"):
            try:
                wave, conflicts = (
                    float(r[head.index(f"l1tex__data_{m}_mem_shared_op_{op}.sum")].replace(",", ""))
                    for m in ("pipe_lsu_wavefronts", "bank_conflicts_pipe_lsu"))
            except (ValueError, IndexError):
                continue
            counts[op] = f"{op} {wave:.3g} wavefronts, {conflicts:.3g} from bank conflicts"
        try:
            counts["inst"] = f'{float(r[head.index("smsp__inst_executed.sum")].replace(",", "")):.4g} warp instructions'
        except (ValueError, IndexError):
            pass
        if counts:
            shared[r[0]] = "; ".join(counts.values())
for key, m in rows.items():
    print(f"  [{key[0]}] {key[1]} grid {key[2]} block {key[3]}")
    print("      " + "; ".join(f"{k}: {m.get(k, '-')}" for k in want))
    if stalls.get(key[0]):
        print(f"      stalls per issue: {stalls[key[0]]}")
    if shared.get(key[0]):
        print(f"      shared memory: {shared[key[0]]}")
EOF
}

# DEADLINE_S: no profile once this many seconds have passed (they take a minute or two).
# NCU_VARIANTS: built variants whose Björck kernels are profiled too (the layouts' conflicts).
if (( $(date +%s) - started > ${DEADLINE_S:-300} )); then
  stamp "ncu skipped: past DEADLINE_S=${DEADLINE_S:-300}"
elif [ "${NCU:-1}" != 0 ] && [ "$EMULATE" != 1 ] && command -v ncu >/dev/null; then
  ncu_profile default "forward|backward"
  for name in ${NCU_VARIANTS-bjswizzle bjpad}; do
    if (( $(date +%s) - started > ${DEADLINE_S:-300} )); then
      stamp "ncu of $name skipped: past DEADLINE_S"
    elif [ -x "$BUILD/$name/flow_kernels" ]; then
      ncu_profile "$name" "orthogonal_cu.*(forward|backward)"
    fi
    pack
  done
fi

pack
stamp "tables"
files=()
for name in "${built[@]}"; do [ -s "$OUT/kernels-$name.jsonl" ] && files+=("$OUT/kernels-$name.jsonl"); done
if [ -f "$OUT/ceilings.json" ] && [ ${#files[@]} -gt 0 ]; then
  "$PY" benchmarks/floors.py kernels "$OUT/ceilings.json" "${files[@]}" | tee "$OUT/kernels-table.md"
fi
pack
stamp "done (checks rc=$check_rc)"
exit $check_rc
