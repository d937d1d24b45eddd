"""householder_flow benchmark cases: lvmfast backends against a Python loop of reflections
(the strongest plain-torch form, is_baseline) and its torch.compile'd version, forward and
forward+backward, float32, amortized v."""
from __future__ import annotations

import torch

import lvmfast
from lvmfast.bench.harness import Candidate, Case, timed_backend

FULL_SHAPES = {"flow": (8192, 10, 64)}   # (B, T, L)
QUICK_SHAPES = {"small": (1024, 4, 32)}


def torch_loop(z, v):
    """The plain-torch chain: one reflection per Python iteration (no zero-vector guard)."""
    for t in range(v.shape[-2]):
        vt = v[..., t, :]
        coef = 2 * (vt * z).sum(-1, keepdim=True) / (vt * vt).sum(-1, keepdim=True)
        z = z - coef * vt
    return z


def lvmfast_backend(name):
    def fn(z, v):
        with lvmfast.use_backend(name):
            return lvmfast.householder_flow(z, v)
    return fn


def _maker(fn, B, T, L, device):
    def make():
        z = torch.randn(B, L, device=device).requires_grad_()
        v = torch.randn(B, T, L, device=device).requires_grad_()
        return (lambda: fn(z, v)), [z, v]
    return make


def cases(device: torch.device, quick: bool) -> list[Case]:
    out = []
    for shape_name, (B, T, L) in (QUICK_SHAPES if quick else FULL_SHAPES).items():
        cands = [Candidate(f"lvmfast[{b}]", _maker(lvmfast_backend(b), B, T, L, device))
                 for b in ("native", "triton") if timed_backend(b, "householder_flow", device)]
        # autograd of the loop keeps ~3 (B, L) tensors per step
        cands.append(Candidate("torch loop of reflections", _maker(torch_loop, B, T, L, device),
                               is_baseline=True, bytes_needed=4 * B * L * 4 * (T + 2)))
        if not quick:
            cands.append(Candidate("torch.compile loop", _maker(torch.compile(torch_loop, dynamic=False),
                                                                B, T, L, device),
                                   bytes_needed=4 * B * L * 4 * (T + 2)))
        out.append(Case("householder_flow", shape_name, {"B": B, "T": T, "L": L}, cands))
    return out
