"""Times the Triton flow kernels alone, at the shapes and in the JSON-lines rows of
benchmarks/kernels/flow_kernels.cu (variant "triton"), so that `python benchmarks/floors.py kernels`
tabulates them beside the native builds of benchmarks/gpu_kernels.sh, cold and warm alike.

    python benchmarks/triton_kernels.py [--scales 1,4] [--reps 30] [--launches 8] [--cold-mb 256]
    TRITON_INTERPRET=1 python benchmarks/triton_kernels.py --tiny     (a rehearsal on the CPU)

`lvmfast bench` times the Triton ops with their Python launch, which at these sizes costs more
than the kernels: here each timing replays a CUDA graph of the launches, so only the GPU's time
is left. warm: the same inputs every launch; cold: cycling over enough input sets to exceed
--cold-mb. Each case is first checked against lvmfast.reference in float64 (the first set's
outputs, relative error of their norm); a failed check prints FAILED and the script exits 1
after the rest. --tiny: odd batches of a few samples, no graphs, host timings (meaningless).
The inputs are torch's (not the C++ program's), so the rows carry "inputs": "torch" and the
kernels table compares no checksums across the two.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch


def _triton_ops():
    """torch.ops.lvmfast, with the Triton kernels registered (importing lvmfast does that where
    Triton runs: on CUDA, or on the CPU under TRITON_INTERPRET=1)."""
    import lvmfast  # noqa: F401

    if not hasattr(torch.ops.lvmfast, "sylvester_flow_triton"):
        raise SystemExit("lvmfast's Triton kernels are not registered (is Triton installed?)")
    return torch.ops.lvmfast


def sylvester_case(kind: str, backward: bool, B: int, device: str, q_columns: bool = False):
    """flow_kernels.cu's sylvester_case: D = 64, M = 32 for the orthogonal kind (q (B, D, M)),
    64 otherwise (the Householder kind's q (B, D, D)), amortized float32 parameters. q_columns:
    q's matrices column-major (torch.linalg.qr's layout), read in place by the kernels."""
    ops = _triton_ops()
    D, M = 64, (32 if kind == "orthogonal" else 64)
    dense = kind != "triangular"
    row = {"op": "sylvester_flow", "shape": kind, "mode": "bwd" if backward else "fwd",
           "B": B, "D": D, "M": M, "flows": 1}

    def make_set():
        r = lambda *s, scale: torch.randn(*s, device=device) * scale  # noqa: E731
        z, b = r(B, D, scale=1.0), r(B, M, scale=0.1)
        r1, r2 = r(B, M, M, scale=M ** -0.5), r(B, M, M, scale=M ** -0.5)
        q = r(B, D, M, scale=D ** -0.5) if dense else None
        if q is not None and q_columns:
            q = q.mT.contiguous().mT
        inputs = [z, r1, r2, b, q]
        if not backward:
            return inputs, lambda: ops.sylvester_flow_triton(z, r1, r2, b, q, False)
        g, gl = r(B, D, scale=1.0), r(B, scale=1.0)
        return inputs + [g, gl], lambda: ops.sylvester_flow_triton_backward(g, gl, z, r1, r2, b, q,
                                                                            False)

    def reference(inputs):
        from lvmfast import reference as ref

        z, r1, r2, b, q = (t.double().requires_grad_() if t is not None else None
                           for t in inputs[:5])
        out, logdet = ref.sylvester_flow(z, r1, r2, b, q)
        if not backward:
            return [out, logdet]
        g, gl = (t.double() for t in inputs[5:])
        leaves = [t for t in (z, r1, r2, b, q) if t is not None]
        return list(torch.autograd.grad((out, logdet), leaves, (g, gl)))

    return row, make_set, reference


def householder_case(backward: bool, B: int, device: str):
    """flow_kernels.cu's householder_case: B rows of L = 64, T = 10 amortized reflections."""
    ops = _triton_ops()
    T, L = 10, 64
    row = {"op": "householder_flow", "shape": "amortized", "mode": "bwd" if backward else "fwd",
           "B": B, "T": T, "L": L}

    def make_set():
        z, v = torch.randn(B, L, device=device), torch.randn(B, T, L, device=device)
        if not backward:
            return [z, v], lambda: ops.householder_flow_triton(z, v)
        out, g = ops.householder_flow_triton(z, v), torch.randn(B, L, device=device)
        return [z, v, g, out], lambda: ops.householder_flow_triton_backward(g, out, v)

    def reference(inputs):
        from lvmfast import reference as ref

        z, v = (t.double().requires_grad_() for t in inputs[:2])
        out = ref.householder_flow(z, v)
        if not backward:
            return [out]
        return list(torch.autograd.grad(out, [z, v], inputs[2].double()))

    return row, make_set, reference


def outputs_of(result) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for t in result if t is not None and t.numel() > 0]


def check(reference, inputs, launch, tol: float) -> float:
    got = [t.double().cpu() for t in outputs_of(launch())]
    want = [t.detach().cpu() for t in reference(inputs)]
    if len(got) != len(want):
        raise RuntimeError(f"{len(got)} outputs against the reference's {len(want)}")
    worst = 0.0
    for g, w in zip(got, want):
        if not torch.isfinite(g).all():
            return math.inf
        worst = max(worst, ((g - w).norm() / w.norm().clamp_min(1e-300)).item())
    return worst if worst <= tol else -worst


def stats(samples: list[float]) -> tuple[float, float, float]:
    from lvmfast.bench.harness import percentile  # the bench's own p20 and p80

    return statistics.median(samples), percentile(samples, 0.2), percentile(samples, 0.8)


def time_graph(launches: list, reps: int, device: str) -> tuple[float, float, float]:
    """Seconds a launch: median, p20, p80 over reps replays of a graph of the launches (the host
    clock around eager calls off the GPU, where there are no graphs)."""
    for fn in launches:  # warm-up: compiles and caches
        fn()
    if device != "cuda":
        per = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for fn in launches:
                fn()
            per.append((time.perf_counter() - t0) / len(launches))
        return stats(per)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # the launches' allocations settle before the capture
        for fn in launches:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in launches:
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    per = []
    for _ in range(reps):
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        per.append(start.elapsed_time(stop) / 1e3 / len(launches))
    return stats(per)


def _cases(variants: str, sylvester_b: int, householder_b: int, device: str):
    """(variant, warps a program or None for the default, case) for each variant named."""
    cases = []
    for variant in variants.split(","):
        warps = int(variant[1:]) if variant.startswith("w") else None
        kinds = ("orthogonal", "householder") if variant == "qcols" else (
            "triangular", "orthogonal", "householder")
        name = "triton" if variant == "default" else f"triton-{variant}"
        cases += [(name, warps, sylvester_case(kind, bwd, sylvester_b, device, variant == "qcols"))
                  for kind in kinds for bwd in (False, True)]
        if variant == "default":
            cases += [(name, None, householder_case(bwd, householder_b, device))
                      for bwd in (False, True)]
    return cases


def _run_case(variant, row, make_set, reference, args, device) -> int:
    """Checks one case against the reference and prints its row; 1 if the check failed."""
    inputs, launch = make_set()
    error = check(reference, inputs, launch, tol=1e-4)
    failed = error < 0 or math.isinf(error)
    if failed:
        print(f"FAILED {variant} {row['op']} {row['shape']} {row['mode']} B={row['B']}: relative "
              f"error {abs(error):.2e}", file=sys.stderr)
    outputs = outputs_of(launch())
    set_bytes = sum(t.numel() * t.element_size() for t in inputs + outputs if t is not None)
    checksum = sum(t.double().sum().item() for t in outputs)
    abs_checksum = sum(t.double().abs().sum().item() for t in outputs)
    warm = time_graph([launch] * args.launches, args.reps, device)
    cold_sets = 2 if args.tiny else max(2, -(-(args.cold_mb << 20) // set_bytes))
    launches = [launch] + [make_set()[1] for _ in range(cold_sets - 1)]
    cold = time_graph(launches, args.reps, device)
    print(json.dumps({"variant": variant, **row, "warm_s": warm[0], "warm_p20_s": warm[1],
                      "warm_p80_s": warm[2], "cold_s": cold[0], "cold_p20_s": cold[1],
                      "cold_p80_s": cold[2], "cold_sets": cold_sets, "set_bytes": set_bytes,
                      "checksum": checksum, "abs_checksum": abs_checksum, "inputs": "torch",
                      "reference_error": abs(error)}), flush=True)
    return int(failed)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="1,4")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--launches", type=int, default=8)
    parser.add_argument("--cold-mb", type=int, default=256)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--variants", default="default,qcols,w8",
                        help="default; qcols: the dense-q kinds with q column-major; w<n>: the "
                             "Sylvester kernels with n warps a program (the default picks 4 at M <= 64)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if device == "cpu" and not args.tiny:
        parser.error("no GPU: run with --tiny under TRITON_INTERPRET=1")
    scales = [int(s) for s in args.scales.split(",")]
    torch.manual_seed(0)
    import lvmfast.triton.sylvester as triton_sylvester

    default_warps = triton_sylvester._num_warps
    failed = 0
    for scale in scales:
        sylvester_b, householder_b = (3, 5) if args.tiny else (1024, 8192)
        for variant, warps, case in _cases(args.variants, sylvester_b * scale,
                                           householder_b * scale, device):
            # the launchers look _num_warps up at each call
            triton_sylvester._num_warps = default_warps if warps is None else (lambda _m, w=warps: w)
            try:
                failed += _run_case(variant, *case, args, device)
            finally:
                triton_sylvester._num_warps = default_warps
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
