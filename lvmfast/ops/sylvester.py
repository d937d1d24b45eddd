"""sylvester_flow: one Sylvester flow step [4.63] with its log-determinant [4.64], as a fused op.

The forward saves only its inputs; the backward recomputes Q^T z, tanh(a) and R1 h per sample
(one sample's matrices are cache-resident, so the recompute is a second cheap read) instead of
storing anything of size (B, M) or (B, M, M). Only the upper triangles of r1 and r2 are read.
"""
from __future__ import annotations

import torch

from lvmfast import _backend
from lvmfast.ops._common import check_float, check_same_device
from lvmfast.reference import sylvester as reference

_NAME = "sylvester_flow"


def _shape_text(*dims) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def _check_batched(name: str, t: torch.Tensor, B: int, tail: tuple[int, ...]) -> None:
    """ValueError unless t is (B, *tail) (amortized) or tail (shared by the batch)."""
    ok = tuple(t.shape) == (B, *tail) or tuple(t.shape) == tail
    if not ok:
        raise ValueError(f"{_NAME}: {name} must have shape {_shape_text(B, *tail)} or "
                         f"{_shape_text(*tail)}, got {tuple(t.shape)}")


def check_sylvester_inputs(z, r1, r2, b, q, reverse) -> None:
    check_float(_NAME, "z", z)
    for name, t in (("r1", r1), ("r2", r2), ("b", b)) + ((("q", q),) if q is not None else ()):
        check_float(_NAME, name, t, like=z)
    if z.dim() != 2 or z.shape[1] < 1:
        raise ValueError(f"{_NAME}: z must have shape (B, D) with D >= 1, got {tuple(z.shape)}")
    B, D = z.shape
    M = D
    if q is not None:
        if reverse:
            raise ValueError(f"{_NAME}: reverse=True is only valid with q=None (it stands for Q = "
                             "the reversal permutation)")
        if q.dim() not in (2, 3) or q.shape[-2] != D or (q.dim() == 3 and q.shape[0] != B):
            raise ValueError(f"{_NAME}: q must have shape ({B}, {D}, M) or ({D}, M), "
                             f"got {tuple(q.shape)}")
        M = q.shape[-1]
        if not 1 <= M <= D:
            raise ValueError(f"{_NAME}: q must have 1 <= M <= D = {D} columns, got {tuple(q.shape)}")
    for name, t in (("r1", r1), ("r2", r2)):
        if t.dim() in (2, 3) and t.shape[-1] != t.shape[-2]:
            raise ValueError(f"{_NAME}: {name} must be square, shape ({B}, {M}, {M}) or ({M}, {M}), "
                             f"got {tuple(t.shape)}")
        _check_batched(name, t, B, (M, M))
    _check_batched("b", b, B, (M,))
    tensors = dict(z=z, r1=r1, r2=r2, b=b)
    if q is not None:
        tensors["q"] = q
    check_same_device(_NAME, **tensors)


def sylvester_flow(z: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, b: torch.Tensor,
                   q: torch.Tensor | None = None, reverse: bool = False):
    """One Sylvester flow step: z' = z + Q R1 tanh(R2 Q^T z + b), with its log|det J| [4.63]-[4.64].

    z: (B, D). q: (B, D, M) with orthonormal columns (orthogonal SNF), (B, D, D) orthogonal
    (Householder SNF), or None for Q = I with M = D (triangular SNF; `reverse=True` uses the
    reversal permutation instead). r1, r2: (B, M, M), only the upper triangles (diagonal
    included) are read and entries below get zero gradient. b: (B, M). Any of q, r1, r2, b may
    omit the leading B (shared by the batch; its gradient is summed over the batch).
    Returns (z' of shape (B, D), logdet of shape (B,)).
    """
    check_sylvester_inputs(z, r1, r2, b, q, reverse)
    backend = _backend.resolve(_NAME, z.device.type)
    if backend == "reference":
        return reference.sylvester_flow(z, r1, r2, b, q, reverse)
    if backend == "triton":
        return tuple(torch.ops.lvmfast.sylvester_flow_triton(z, r1, r2, b, q, reverse))
    return tuple(torch.ops.lvmfast.sylvester_flow(z, r1, r2, b, q, reverse))


def _double_backward(ctx, *cotangents):
    """Gradients of the backward op, recomputed with the differentiable reference."""
    grad_out, grad_logdet, z, r1, r2, b, q = ctx.saved_tensors
    params = [z, r1, r2, b] + ([q] if q is not None else [])
    with torch.enable_grad():
        gs = [t.detach().requires_grad_(True) for t in (grad_out, grad_logdet)]
        ps = [t.detach().requires_grad_(True) for t in params]
        out, logdet = reference.sylvester_flow(*ps[:4], ps[4] if q is not None else None, ctx.reverse)
        firsts = torch.autograd.grad((out, logdet), ps, gs, create_graph=True, allow_unused=True)
        total = sum((f * c).sum() for f, c in zip(firsts, cotangents) if f is not None and c is not None)
        if not isinstance(total, torch.Tensor):  # nothing flows back
            total = out.sum() * 0
        seconds = torch.autograd.grad(total, gs + ps, allow_unused=True)
    seconds = [torch.zeros_like(t) if s is None else s for t, s in zip(gs + ps, seconds)]
    if q is None:
        seconds.append(None)
    return (*seconds, None)


def _register(forward: str, backward: str) -> None:
    @torch.library.register_fake(f"lvmfast::{forward}")
    def _fake_forward(z, r1, r2, b, q=None, reverse=False):
        return z.new_empty(z.shape), z.new_empty(z.shape[:1])

    @torch.library.register_fake(f"lvmfast::{backward}")
    def _fake_backward(grad_out, grad_logdet, z, r1, r2, b, q, reverse):
        return (z.new_empty(z.shape), r1.new_empty(r1.shape), r2.new_empty(r2.shape),
                b.new_empty(b.shape), z.new_empty(q.shape if q is not None else (0,)))

    backward_op = getattr(torch.ops.lvmfast, backward)

    def setup_context(ctx, inputs, output):
        z, r1, r2, b, q, reverse = inputs
        ctx.reverse = reverse
        ctx.save_for_backward(z, r1, r2, b, q)

    def grads(ctx, grad_out, grad_logdet):
        z, r1, r2, b, q = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(z)
        if grad_logdet is None:
            grad_logdet = z.new_zeros(z.shape[:1])
        gz, gr1, gr2, gb, gq = backward_op(grad_out, grad_logdet, z, r1, r2, b, q, ctx.reverse)
        return gz, gr1, gr2, gb, (gq if q is not None else None), None

    torch.library.register_autograd(f"lvmfast::{forward}", grads, setup_context=setup_context)

    def second_setup(ctx, inputs, output):
        grad_out, grad_logdet, z, r1, r2, b, q, reverse = inputs
        ctx.reverse = reverse
        ctx.save_for_backward(grad_out, grad_logdet, z, r1, r2, b, q)

    torch.library.register_autograd(f"lvmfast::{backward}", _double_backward,
                                    setup_context=second_setup)


if _backend._C is not None:
    _register("sylvester_flow", "sylvester_flow_backward")
    _register("sylvester_flow_triton", "sylvester_flow_triton_backward")
# "native" first on CUDA: it won on the wall clock at every shape of the H100 run
# (benchmarks/results/gpu-h100-2026-11-26.md), where Triton's launches cost more host time.
_backend.register_op(_NAME, family="sylvester", auto_cuda_order=("native", "triton"))
