"""Where the wall clock of the flow ops goes beyond their kernels: for the lvmfast[native] rows of
`lvmfast bench` (same shapes, same calls), the wall time a call (synchronized), the GPU's busy time
(the bench harness's profile) and the host's costliest operators by self CPU time, forward and
forward + backward.

    python benchmarks/host_overhead.py [--device cuda] [--ops householder_flow sylvester_flow] [--quick]

Why: on the H100 (2026-11-27) a householder_flow forward + backward took 0.46 ms of wall clock
for 0.03 ms of kernels, where on a 2-core CPU the whole host side of one call is about 0.1 ms.
The top of the CPU table names what the rest is.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from lvmfast.bench import harness, householder, orthogonal, sylvester

FAMILIES = {"householder_flow": householder, "sylvester_flow": sylvester,
            "bjorck_orthonormalize": orthogonal}


def top_host_events(call, reps: int, rows: int) -> list[tuple[str, float, int]]:
    """(name, self CPU microseconds a call, calls a call) of the costliest operators."""
    from torch.profiler import ProfilerActivity, profile

    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            call()
    table = prof.key_averages()
    ranked = sorted(table, key=lambda e: -e.self_cpu_time_total)[:rows]
    return [(e.key, e.self_cpu_time_total / reps, round(e.count / reps)) for e in ranked]


def report(op: str, device: torch.device, quick: bool, reps: int, rows: int) -> None:
    for case in FAMILIES[op].cases(device, quick):
        native = next((c for c in case.candidates if c.name == "lvmfast[native]"), None)
        if native is None:
            print(f"{op} {case.shape_name}: no native kernels on {device.type}")
            continue
        fn, inputs = native.make()

        def forward(fn=fn):
            with torch.no_grad():
                return fn()

        def forward_backward(fn=fn, inputs=inputs):
            return torch.autograd.grad(fn().sum(), inputs)

        for mode, call in (("fwd", forward), ("fwd+bwd", forward_backward)):
            # timed as the bench's median is (harness.time_call), so the two agree
            wall = statistics.median(harness.time_call(call, device, 0.0, reps, reps))
            busy = harness.device_time(call) if device.type == "cuda" else None
            busy_text = f", GPU busy {busy['busy_s'] * 1e6:.1f} us" if busy else ""
            print(f"\n{op} {case.shape_name} {mode}: wall {wall * 1e6:.1f} us a call{busy_text}")
            print(f"  {'self CPU us':>11}  {'calls':>5}  operator")
            for name, us, count in top_host_events(call, reps, rows):
                print(f"  {us:11.1f}  {count:5d}  {name[:90]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--quick", action="store_true", help="the bench's --quick shapes")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    for op in args.ops:
        report(op, device, args.quick, args.reps, args.rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
