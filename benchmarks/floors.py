"""GPU floors for `lvmfast bench` rows: the fewest bytes each op must move and the arithmetic it
must do, over ceilings measured on the same card (METHOD.md: a large device-to-device copy, and a
large float32 matrix product with TF32 off, since our kernels use plain FMA units).

  python benchmarks/floors.py measure ceilings.json          (on the GPU, before the bench)
  python benchmarks/floors.py table bench.json ceilings.json  (anywhere: markdown table)
  python benchmarks/floors.py kernels ceilings.json rows.jsonl...  (benchmarks/kernels rows)

Bytes count each input read once and each output written once per call (float32); fwd+bwd is a
forward call plus a backward call that reads the inputs again, reads the output gradient and
writes every input gradient. Flop counts are per element of the work, stated below per op.
"""
from __future__ import annotations

import functools
import json
import sys

F32 = 4


def measure(path: str) -> None:
    import torch

    dev = torch.device("cuda")

    def median_ms(fn, reps=20):
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return sorted(times)[len(times) // 2]

    src = torch.randn(2**28, device=dev)  # 1 GiB, far beyond L2
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src))
    torch.backends.cuda.matmul.allow_tf32 = False
    n = 8192
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    mm_ms = median_ms(lambda: a @ b, reps=10)
    out = {"gpu": torch.cuda.get_device_name(), "copy_bytes_per_s": 2 * src.numel() * F32 / (copy_ms / 1e3),
           "fp32_flops_per_s": 2 * n**3 / (mm_ms / 1e3)}
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"ceilings on {out['gpu']}: copy {out['copy_bytes_per_s'] / 1e12:.2f} TB/s (read + write), "
          f"float32 matmul without TF32 {out['fp32_flops_per_s'] / 1e12:.1f} TFLOP/s")


@functools.lru_cache(maxsize=None)
def _bjorck_steps(N, D, M, max_steps=30, tol=1e-6):
    """Mean updates a matrix takes when each stops on its own, as the op does: a float32 torch
    loop on the CPU over inputs like the bench's (11.6 at its shape; the H100 took 11.1)."""
    import torch

    q = torch.randn(N, D, M, generator=torch.Generator().manual_seed(0))
    q = q / torch.linalg.matrix_norm(q, keepdim=True)
    eye = torch.eye(M)
    taken = torch.full((N,), max_steps)
    stopped = torch.zeros(N, dtype=torch.bool)
    for step in range(max_steps):
        gram = q.mT @ q
        now = (torch.linalg.matrix_norm(gram - eye) <= tol) & ~stopped
        taken[now], stopped = step, stopped | now
        if bool(stopped.all()):
            break
        q = 1.5 * q - 0.5 * (q @ gram)
    return float(taken.double().mean())


def _bjorck_flops(D: int, M: int, steps: float, mode: str) -> float:
    """Least flops a matrix for `steps` updates. A product of D x M by M x M is 2 D M^2 flops; a
    Gram product A = Q^T Q is symmetric, so D M (M + 1) (its upper triangle; the CPU kernel
    computes only that). The forward runs steps + 1 Gram products (the last one finds it
    converged) and `steps` updates Q A. The backward re-creates the A_j and Q_j it walks back
    through (its memory may not grow with the steps): `steps` Gram products and steps - 1
    updates; and runs three full products of its own a step, S = Q^T G, G A and Q (S + S^T)."""
    gram, full = D * M * (M + 1), 2 * D * M * M
    forward = (steps + 1) * gram + steps * full
    backward = steps * gram + (steps - 1) * full + 3 * steps * full
    return {"fwd": forward, "bwd": backward, "fwd+bwd": forward + backward}[mode]


def work(row: dict) -> tuple[float, float] | None:
    """(bytes, flops) of one call for a bench row, or None where no floor applies."""
    op, fb = row["op"], row["mode"] == "fwd+bwd"
    if op == "log_mog":
        B, K, L = row["B"], row["K"], row["L"]
        inputs = B * L + 2 * K * L + K
        nbytes = F32 * (inputs + B) + (F32 * (2 * inputs + 2 * B) if fb else 0)
        # direct form: (z-m), *inv_var, fma = 4 flops per (b,k,l); backward adds 11 (earlier count)
        return nbytes, (15 if fb else 4) * B * K * L
    if op == "householder_flow":
        B, T, L = row["B"], row["T"], row["L"]
        inputs = B * L + B * T * L
        # the backward reads v, the output and its gradient (not z: it is re-created from the
        # output) and writes the gradients of z and v: 2 inputs + B L
        nbytes = F32 * (inputs + B * L) + (F32 * (2 * inputs + B * L) if fb else 0)
        return nbytes, (20 if fb else 6) * B * T * L   # dot, norm, update: 2L each per reflection
    if op == "sylvester_flow":
        B, D, M, n = row["B"], row["D"], row["M"], row["flows"]
        tri = M * (M + 1) // 2
        q = 0 if row["shape"] == "triangular" else D * M
        reads = B * (2 * tri + M + q + D)            # upper triangles of r1, r2; b; q; z
        grads = B * (2 * M * M + M + q + D)           # dense gradients
        nbytes = F32 * n * (reads + B * (D + 1) + ((reads + B * (D + 1) + grads) if fb else 0))
        flops = n * B * (2 * M * M + 4 * D * M * (q > 0)) * (3 if fb else 1)
        return nbytes, flops
    if op == "bjorck_orthonormalize":
        N, D, M = row["N"], row["D"], row["M"]
        # forward: read q, write the result; backward: read q and the output gradient, write q's
        nbytes = F32 * N * D * M * (5 if fb else 2)
        return nbytes, N * _bjorck_flops(D, M, _bjorck_steps(N, D, M), row["mode"])
    if op in ("q_sample", "p_step"):
        B, D = row["B"], row["D"]
        given = row["shape"] == "given"
        if op == "q_sample":   # read x0 (+ noise), write xt (and the drawn noise, returned)
            fwd = 3 * B * D
            bwd = 2 * B * D
        else:                  # read xt, eps (+ noise), write x_{t-1}
            fwd = (4 if given else 3) * B * D
            bwd = 3 * B * D
        return F32 * (fwd + (bwd if fb else 0)) + 8 * B, 0
    if op == "forward_chain":
        B, D, T = row["B"], row["D"], row["T"]
        return F32 * B * D * ((T + 1) + ((T + 1) if fb else 0)), 0
    return None


def table(bench_path: str, ceil_path: str) -> str:
    with open(bench_path) as f:
        rows = json.load(f)["results"]
    with open(ceil_path) as f:
        ceil = json.load(f)
    bw, rate = ceil["copy_bytes_per_s"], ceil["fp32_flops_per_s"]
    lines = [f"Floors on {ceil['gpu']}: copy {bw / 1e12:.2f} TB/s, float32 (no TF32) {rate / 1e12:.1f} TFLOP/s, "
             "both measured in the same call.", "",
             "`kernel ms` is the GPU's busy time per call from the profiler (kernels and copies, no host "
             "overhead); `time / floor` uses the wall-clock median, `kernel / floor` the busy time. "
             "`op kernel / floor` counts only the kernels launched inside lvmfast ops (their glue's "
             "included), not the benchmark's own sums and adds around them.", "",
             "| op | shape | mode | candidate | median ms | kernel ms | floor ms | bound | time / floor | "
             "kernel / floor | speed-up vs baseline | op kernel / floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "median_s" not in r or not r["candidate"].startswith("lvmfast[") or "reference" in r["candidate"]:
            continue
        w = work(r)
        if w is None:
            continue
        t_mem, t_flop = w[0] / bw, w[1] / rate
        floor = max(t_mem, t_flop)
        busy = r.get("device_busy_s")
        busy_ms, busy_ratio = (f"{busy * 1e3:.4f}", f"{busy / floor:.2f}") if busy else ("–", "–")
        op_busy = r.get("device_op_s")
        op_ratio = f"{op_busy / floor:.2f}" if op_busy else "–"
        lines.append(f"| {r['op']} | {r['shape']} | {r['mode']} | {r['candidate']} | {r['median_s'] * 1e3:.4f} | "
                     f"{busy_ms} | {floor * 1e3:.4f} | {'memory' if t_mem >= t_flop else 'arithmetic'} | "
                     f"{r['median_s'] / floor:.2f} | {busy_ratio} | {r.get('speedup_vs_baseline', float('nan')):.2f} | "
                     f"{op_ratio} |")
    return "\n".join(lines)


def launch_work(row: dict) -> tuple[float, float] | None:
    """(bytes, flops) of one launch of a benchmarks/kernels row: its mode is "fwd" or "bwd", the
    backward's share being the forward+backward work less the forward's."""
    if row["mode"] == "fwd":
        return work(row)
    both, fwd = work({**row, "mode": "fwd+bwd"}), work({**row, "mode": "fwd"})
    return None if both is None else (both[0] - fwd[0], both[1] - fwd[1])


def _batch(row: dict) -> int:
    return row["N"] if "N" in row else row["B"]


def kernels_table(ceil_path: str, row_paths: list[str]) -> str:
    """Markdown table of benchmarks/kernels rows (JSON lines) against their floors, with the
    per-sample cost over the batch scales, and each build's checksum against the default's."""
    with open(ceil_path) as f:
        ceil = json.load(f)
    rows = [json.loads(line) for p in row_paths for line in open(p) if line.startswith("{")]
    steps = [r for r in rows if r["mode"] == "steps"]
    probes = [r for r in rows if r["op"] == "probe_stage"]
    rows = [r for r in rows if r["mode"] != "steps" and r["op"] != "probe_stage"]
    bw, rate = ceil["copy_bytes_per_s"], ceil["fp32_flops_per_s"]
    key = lambda r: (r["op"], r["shape"], r["mode"])  # noqa: E731
    default = {key(r) + (_batch(r),): r for r in rows if r["variant"] == "default"}
    lines = [f"Kernels alone (benchmarks/kernels/flow_kernels.cu) on {ceil['gpu']}: floors from copy "
             f"{bw / 1e12:.2f} TB/s and float32 {rate / 1e12:.1f} TFLOP/s. `warm`: the same buffers "
             "every launch (as `lvmfast bench`); `cold`: buffers cycled past the L2. `checksum`: "
             "relative difference of the outputs' sum of |x| from the default build's.", "",
             "| build | op | shape | mode | batch | warm us | cold us | floor us | bound | warm / floor "
             "| cold / floor | checksum |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    floors = {}
    for r in rows:
        w = launch_work(r)
        if w is None:
            continue
        t_mem, t_flop = w[0] / bw, w[1] / rate
        floor = max(t_mem, t_flop)
        floors[id(r)] = floor
        base = default.get(key(r) + (_batch(r),))
        diff = "–"
        if r["abs_checksum"] is None:  # the program's null: an output element never written
            diff = "NaN"
        elif (base is not None and base is not r and base["abs_checksum"] is not None
              and r.get("inputs") == base.get("inputs")):  # triton_kernels.py draws its own
            denom = max(abs(base["abs_checksum"]), 1e-300)
            diff = f"{abs(r['abs_checksum'] - base['abs_checksum']) / denom:.1e}"
        lines.append(f"| {r['variant']} | {r['op']} | {r['shape']} | {r['mode']} | {_batch(r)} | "
                     f"{r['warm_s'] * 1e6:.1f} | {r['cold_s'] * 1e6:.1f} | {floor * 1e6:.2f} | "
                     f"{'memory' if t_mem >= t_flop else 'arithmetic'} | {r['warm_s'] / floor:.2f} | "
                     f"{r['cold_s'] / floor:.2f} | {diff} |")
    # The cold time's slope over the batch against the floor's, and its intercept (fixed cost).
    groups: dict = {}
    for r in rows:
        if id(r) in floors:
            groups.setdefault((r["variant"],) + key(r), []).append(r)
    scaling = []
    for (variant, op, shape, mode), rs in groups.items():
        rs = sorted(rs, key=_batch)
        if len(rs) < 2 or _batch(rs[0]) == _batch(rs[-1]):
            continue
        lo, hi = rs[0], rs[-1]
        db = _batch(hi) - _batch(lo)
        slope = (hi["cold_s"] - lo["cold_s"]) / db
        floor_slope = (floors[id(hi)] - floors[id(lo)]) / db
        intercept = lo["cold_s"] - slope * _batch(lo)
        scaling.append(f"| {variant} | {op} | {shape} | {mode} | {_batch(lo)}..{_batch(hi)} | "
                       f"{slope * 1e9:.2f} | {floor_slope * 1e9:.2f} | "
                       f"{slope / floor_slope if floor_slope > 0 else float('nan'):.2f} | "
                       f"{intercept * 1e6:.1f} |")
    if scaling:
        lines += ["", "Cold time against the batch: ns a sample (slope), its floor, and the fixed "
                  "cost a launch (intercept).", "",
                  "| build | op | shape | mode | batches | ns / sample | floor ns / sample | "
                  "slope / floor | intercept us |", "|---|---|---|---|---|---|---|---|---|"] + scaling
    if probes:
        # the Sylvester triangular forward at the same batch: how much of it the loads explain
        fwd = {(r["variant"], r["B"]): r["cold_s"] for r in rows
               if r["op"] == "sylvester_flow" and r["shape"] == "triangular" and r["mode"] == "fwd"}
        lines += ["", "The Sylvester load phase alone (probe_stage_kernel: one sample's two 64 x 64 "
                  "matrices into shared memory a block, the kernels' grid), cold.", "",
                  "| build | method | batch | MB | cold us | GB/s | / copy ceiling | / triangular fwd |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in probes:
            rate_r = r["bytes"] / r["cold_s"]
            share = fwd.get((r["variant"], r["B"]))
            lines.append(f"| {r['variant']} | {r['shape']} | {r['B']} | {r['bytes'] / 1e6:.1f} | "
                         f"{r['cold_s'] * 1e6:.1f} | {rate_r / 1e9:.0f} | {rate_r / bw:.2f} | "
                         f"{r['cold_s'] / share if share else float('nan'):.2f} |")
    for r in steps:
        hist = {k: n for k, n in enumerate(r["steps_histogram"]) if n}
        assumed = _bjorck_steps(r["N"], 64, 32)
        lines += ["", f"Björck forward, build {r['variant']}: steps a matrix took on this GPU (N = {r['N']}): "
                  f"mean {r['mean_steps']:.2f}, {hist} (steps: count); the floors assume a mean of "
                  f"{assumed:.2f} (a float32 torch loop on the CPU)."]
        # the floor of the work the GPU's own step counts ask for
        def at_gpu_steps(b, r=r, assumed=assumed):
            scale = (_bjorck_flops(b["D"], b["M"], r["mean_steps"], b["mode"])
                     / _bjorck_flops(b["D"], b["M"], assumed, b["mode"]))
            return f"{b['mode']} {b['cold_s'] / (floors[id(b)] * scale):.2f}"
        at_mean = [at_gpu_steps(b) for b in rows
                   if b["variant"] == r["variant"] and b["op"] == "bjorck_orthonormalize"
                   and _batch(b) == r["N"] and id(b) in floors]
        if at_mean:
            lines.append("Against the floor of the steps this GPU took, cold / floor: "
                         + ", ".join(at_mean) + ".")
    # Last, so that the end of a call's output holds it: cold / floor at the smallest batch, a
    # column a build.
    floored = [r for r in rows if id(r) in floors]
    builds = list(dict.fromkeys(r["variant"] for r in floored))
    least = {}  # the smallest batch of each case
    for r in floored:
        least[key(r)] = min(least.get(key(r), _batch(r)), _batch(r))
    if least:
        lines += ["", "cold / floor at the smallest batch, a column a build:", "",
                  "| op | shape | mode | " + " | ".join(builds) + " |",
                  "|---|---|---|" + "---|" * len(builds)]
        for k, batch in least.items():
            by = {r["variant"]: r["cold_s"] / floors[id(r)] for r in floored
                  if key(r) == k and _batch(r) == batch}
            cells = " | ".join(f"{by[b]:.2f}" if b in by else "–" for b in builds)
            lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "measure":
        measure(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "table":
        print(table(sys.argv[2], sys.argv[3]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "kernels":
        print(kernels_table(sys.argv[2], sys.argv[3:]))
    else:
        sys.exit(__doc__)
