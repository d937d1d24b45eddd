"""sylvester_flow benchmark cases: four consecutive Sylvester flow steps (different amortized
parameters each) of every kind, lvmfast backends against the batched-matmul torch form,
forward and forward+backward, float32.

Kinds (shared/BENCHMARKS.md): triangular (M = D, alternating reverse), orthogonal (M = D/2),
Householder (Q = product of 8 reflections, (B, D, D), built outside the timed region).
"""
from __future__ import annotations

import torch

import lvmfast
from lvmfast.bench.harness import Candidate, Case, timed_backend

FLOWS = 4
FULL = {"B": 1024, "D": 64}
QUICK = {"B": 64, "D": 16}


def torch_bmm_flow(z, r1, r2, b, q, reverse, mask):
    """The batched-matmul form a strong torch user writes: triu by a precomputed mask, bmm/baddbmm."""
    r1u, r2u = r1 * mask, r2 * mask
    if q is None:
        y = z.flip(-1) if reverse else z
    else:
        y = torch.bmm(z.unsqueeze(1), q).squeeze(1)
    h = torch.tanh(torch.baddbmm(b.unsqueeze(2), r2u, y.unsqueeze(2)).squeeze(2))
    c = torch.bmm(r1u, h.unsqueeze(2)).squeeze(2)
    if q is None:
        out = z + (c.flip(-1) if reverse else c)
    else:
        out = torch.baddbmm(z.unsqueeze(2), q, c.unsqueeze(2)).squeeze(2)
    diag = torch.diagonal(r1, dim1=1, dim2=2) * torch.diagonal(r2, dim1=1, dim2=2)
    return out, torch.log(torch.abs(1 + (1 - h * h) * diag)).sum(-1)


def householder_q(B, D, reflections, device):
    """(B, D, D) orthogonal matrices H_T ... H_1, H_t = I - 2 v v^T / |v|^2."""
    v = torch.randn(B, reflections, D, device=device)
    v = v / v.norm(dim=-1, keepdim=True)
    q = torch.eye(D, device=device).expand(B, D, D).clone()
    for t in range(reflections):
        vt = v[:, t].unsqueeze(2)
        q = q - 2 * vt @ (vt.transpose(1, 2) @ q)
    return q


def _flow_params(kind, B, D, device):
    """FLOWS sets of amortized (r1, r2, b, q, reverse)."""
    M = D // 2 if kind == "orthogonal" else D
    params = []
    for i in range(FLOWS):
        r1 = torch.randn(B, M, M, device=device) / M ** 0.5
        r2 = torch.randn(B, M, M, device=device) / M ** 0.5
        b = torch.randn(B, M, device=device) * 0.1
        if kind == "triangular":
            q, reverse = None, i % 2 == 1
        elif kind == "orthogonal":
            q, reverse = torch.linalg.qr(torch.randn(B, D, M, device=device))[0], False
        else:
            q, reverse = householder_q(B, D, 8, device), False
        params.append((r1, r2, b, q, reverse))
    return params, M


def _maker(step, kind, B, D, device):
    def make():
        z = torch.randn(B, D, device=device).requires_grad_()
        params, M = _flow_params(kind, B, D, device)
        inputs = [z]
        for r1, r2, b, q, _ in params:
            inputs += [r1.requires_grad_(), r2.requires_grad_(), b.requires_grad_()]
            if q is not None:
                inputs.append(q.requires_grad_())
        mask = torch.ones(M, M, device=device).triu()

        def run():
            x, total = z, 0
            for r1, r2, b, q, reverse in params:
                x, logdet = step(x, r1, r2, b, q, reverse, mask)
                total = total + logdet
            return x.sum(-1) + total
        return run, inputs
    return make


def lvmfast_backend(name):
    def step(z, r1, r2, b, q, reverse, mask):
        with lvmfast.use_backend(name):
            return lvmfast.sylvester_flow(z, r1, r2, b, q, reverse)
    return step


def cases(device: torch.device, quick: bool) -> list[Case]:
    shape = QUICK if quick else FULL
    if not quick:
        # One compiled step serves 3 kinds x (reverse, q) x (grad, no_grad) guard sets: above
        # dynamo's default of 8 graphs per function, past which it silently runs eagerly.
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, max(getattr(config, name), 32))
    B, D = shape["B"], shape["D"]
    out = []
    for kind in ("triangular", "orthogonal", "householder"):
        M = D // 2 if kind == "orthogonal" else D
        bmm_bytes = FLOWS * 6 * B * M * M * 4  # masked copies and their gradients
        cands = [Candidate(f"lvmfast[{b}]", _maker(lvmfast_backend(b), kind, B, D, device))
                 for b in ("native", "triton") if timed_backend(b, "sylvester_flow", device)]
        cands += [
            Candidate("torch bmm + triu mask", _maker(torch_bmm_flow, kind, B, D, device),
                      is_baseline=True, bytes_needed=bmm_bytes),
            Candidate("lvmfast[reference]", _maker(lvmfast_backend("reference"), kind, B, D, device),
                      bytes_needed=bmm_bytes),
        ]
        if not quick:
            compiled = torch.compile(torch_bmm_flow, dynamic=False)
            cands.append(Candidate("torch.compile bmm + triu mask",
                                   _maker(compiled, kind, B, D, device), bytes_needed=bmm_bytes))
        out.append(Case("sylvester_flow", kind, {"B": B, "D": D, "M": M, "flows": FLOWS}, cands))
    return out
