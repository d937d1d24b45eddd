"""Checks a dump of benchmarks/kernels/flow_kernels (--dump DIR) against lvmfast.reference in
float64: every output of every case, gradients through the reference's autograd.

  python benchmarks/check_kernel_dump.py DIR        (exit status 1 if a case fails)

The error is ||out - ref|| / ||ref|| per tensor (METHOD.md: float32 arithmetic lands far under
1e-3); a NaN, an element the kernel never wrote (the program fills outputs with NaN first), fails.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

# float32 kernels against a float64 reference. The Björck iteration stops on a test that sits at
# float32's rounding floor, so the kernel can stop a step away from the float64 reference (its
# gradient is then that of another step count, close at convergence but not to 1e-4).
TOLERANCE = {"bjorck_orthonormalize": 1e-3}
DEFAULT_TOLERANCE = 1e-4


def _load(directory: Path, case: str, name: str, shape: list[int]) -> torch.Tensor:
    raw = (directory / f"{case}.{name}.f32").read_bytes()
    return torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(shape).double()


def _reference(row: dict, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The outputs the kernel should have written, from its inputs."""
    from lvmfast import reference

    op, backward = row["op"], row["mode"] == "bwd"
    if op == "sylvester_flow":
        if row["shape"].endswith("-qcols"):  # the tensor q holds Q^T: Q's matrices column-major
            t = {**t, "q": t["q"].mT}
        names = ["z", "r1", "r2", "b"] + (["q"] if "q" in t else [])
        params = [t[n].clone().requires_grad_(backward) for n in names]
        out, logdet = reference.sylvester.sylvester_flow(*params[:4], params[4] if "q" in t else None)
        if not backward:
            return {"out": out, "logdet": logdet}
        grads = torch.autograd.grad((out, logdet), params, (t["grad_out"], t["grad_logdet"]))
        return {f"grad_{n}": g for n, g in zip(names, grads)}
    if op == "bjorck_orthonormalize":
        q = t["q"].clone().requires_grad_(backward)
        out = reference.orthogonal.bjorck_orthonormalize(q, row["max_steps"], row["tol"])
        if not backward:
            return {"out": out}
        return {"grad_q": torch.autograd.grad(out, q, t["grad"])[0]}
    if op == "householder_flow":
        v = t["v"].clone().requires_grad_(backward)
        if not backward:
            return {"out": reference.householder.householder_flow(t["z"], v)}
        # the backward's input is the forward's output: z is the chain run backwards from it
        z = reference.householder.householder_flow(t["out"], t["v"].flip(1)).requires_grad_()
        out = reference.householder.householder_flow(z, v)
        grad_z, grad_v = torch.autograd.grad(out, (z, v), t["grad"])
        return {"grad_z": grad_z, "grad_v": grad_v}
    raise ValueError(f"unknown op {op!r}")


def check(directory: str | Path) -> list[str]:
    """One line per tensor checked, prefixed FAIL where it fails."""
    directory = Path(directory)
    lines = []
    for line in (directory / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        t = {n: _load(directory, row["case"], n, s) for n, s in row["tensors"].items()}
        tol = TOLERANCE.get(row["op"], DEFAULT_TOLERANCE)
        for name, ref in _reference(row, t).items():
            got = t[name]
            err = ((got - ref).norm() / ref.norm().clamp_min(1e-300)).item()
            ok = bool(torch.isfinite(got).all()) and err <= tol
            lines.append(f"{'ok  ' if ok else 'FAIL'} {row['case']}.{name}: relative error {err:.2e} "
                         f"(tolerance {tol:.0e})")
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # lvmfast from this checkout
    results = check(sys.argv[1])
    print("\n".join(results))
    sys.exit(1 if not results or any(r.startswith("FAIL") for r in results) else 0)
