"""bjorck_orthonormalize benchmark cases: lvmfast backends against a torch loop of batched
matmuls that stops once the whole batch has converged, checking with a host sync every step
as the Sylvester-flow authors' code does (is_baseline), and against lvmfast's masked reference.
Float32, matrices divided by their Frobenius norm."""
from __future__ import annotations

import torch

import lvmfast
from lvmfast.bench.harness import Candidate, Case, timed_backend

FULL_SHAPES = {"snf": (1024, 64, 32)}   # (matrices, D, M)
QUICK_SHAPES = {"small": (128, 16, 8)}
MAX_STEPS, TOL = 30, 1e-6


def torch_bmm_loop(q, max_steps=MAX_STEPS, tol=TOL):
    """Two batched matmuls a step; the whole batch stops together once every matrix converged
    (the test reads the device each step)."""
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    for _ in range(max_steps):
        gram = q.mT @ q
        if bool((torch.linalg.matrix_norm(gram - eye) <= tol).all()):  # host sync
            break
        q = 1.5 * q - 0.5 * (q @ gram)
    return q


def lvmfast_backend(name):
    def fn(q):
        with lvmfast.use_backend(name):
            return lvmfast.bjorck_orthonormalize(q, MAX_STEPS, TOL)
    return fn


def _maker(fn, N, D, M, device):
    def make():
        q = torch.randn(N, D, M, device=device)
        q = (q / torch.linalg.matrix_norm(q, keepdim=True)).requires_grad_()
        return (lambda: fn(q)), [q]
    return make


def cases(device: torch.device, quick: bool) -> list[Case]:
    out = []
    for shape_name, (N, D, M) in (QUICK_SHAPES if quick else FULL_SHAPES).items():
        cands = [Candidate(f"lvmfast[{b}]", _maker(lvmfast_backend(b), N, D, M, device))
                 for b in ("native", "triton")
                 if timed_backend(b, "bjorck_orthonormalize", device)]
        per_step = 4 * N * (2 * D * M + 2 * M * M)  # autograd keeps q, gram, q @ gram per step
        cands.append(Candidate("torch bmm loop (host sync)", _maker(torch_bmm_loop, N, D, M, device),
                               is_baseline=True, bytes_needed=per_step * MAX_STEPS))
        if not quick:
            cands.append(Candidate("lvmfast[reference] (masked)",
                                   _maker(lvmfast_backend("reference"), N, D, M, device),
                                   bytes_needed=per_step * MAX_STEPS * 2))
        out.append(Case("bjorck_orthonormalize", shape_name,
                        {"N": N, "D": D, "M": M, "max_steps": MAX_STEPS, "tol": TOL}, cands))
    return out
