"""bjorck_orthonormalize: Björck–Bowie orthonormalization [4.65] as a fused custom op.

Each matrix iterates on its own until it meets the tolerance or max_steps, inside one kernel
(no host-device synchronization). Autograd saves only q: the backward kernel re-runs each
matrix's iterations (the same arithmetic, so the same step count) and walks them back, so the
gradient is the unrolled one of the steps actually executed. Memory does not grow with max_steps:
autograd keeps q alone, and the backward's scratch holds at most 33 iterates of a matrix per
thread (CPU) or block (CUDA), replaying the iteration from checkpoints past 32 executed steps
(kernels/orthogonal_checkpoints.cuh).
"""
from __future__ import annotations

import torch

from lvmfast import _backend
from lvmfast.ops._common import check_float
from lvmfast.reference import orthogonal as reference

_NAME = "bjorck_orthonormalize"


def check_bjorck_inputs(q, max_steps, tol) -> None:
    check_float(_NAME, "q", q)
    if q.dim() < 2:
        raise ValueError(f"{_NAME}: q must have shape (..., D, M), got {tuple(q.shape)}")
    if q.shape[-1] > q.shape[-2]:
        raise ValueError(f"{_NAME}: q must have shape (..., D, M) with M <= D, got {tuple(q.shape)}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise ValueError(f"{_NAME}: max_steps must be an int >= 0, got {max_steps!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"{_NAME}: tol must be a number >= 0, got {tol!r}")


def bjorck_orthonormalize(q: torch.Tensor, max_steps: int = 30, tol: float = 1e-6) -> torch.Tensor:
    """Q <- Q (I + (I - Q^T Q) / 2) on each matrix of q (..., D, M), M <= D, until
    ||Q^T Q - I||_F <= tol or max_steps iterations; each matrix stops on its own [4.65].

    Keep the singular values of q inside (0, sqrt(2)) (dividing by the Frobenius norm does).
    """
    check_bjorck_inputs(q, max_steps, tol)
    backend = _backend.resolve(_NAME, q.device.type)
    if backend == "reference":
        return reference.bjorck_orthonormalize(q, max_steps, float(tol))
    if backend == "triton":
        return torch.ops.lvmfast.bjorck_orthonormalize_triton(q, max_steps, float(tol))
    return torch.ops.lvmfast.bjorck_orthonormalize(q, max_steps, float(tol))


def _double_backward(ctx, grad_gq):
    """Gradients of the backward op (grad, q) -> grad_q through the differentiable reference."""
    grad, q = ctx.saved_tensors
    with torch.enable_grad():
        grad, q = (t.detach().requires_grad_(True) for t in (grad, q))
        out = reference.bjorck_orthonormalize(q, ctx.max_steps, ctx.tol)
        (first,) = torch.autograd.grad(out, q, grad, create_graph=True)
        seconds = torch.autograd.grad((first * grad_gq).sum(), (grad, q), allow_unused=True)
    seconds = [torch.zeros_like(t) if s is None else s for t, s in zip((grad, q), seconds)]
    return seconds[0], seconds[1], None, None


def _register(forward: str, backward: str) -> None:
    @torch.library.register_fake(f"lvmfast::{forward}")
    def _fake_forward(q, max_steps=30, tol=1e-6):
        return q.new_empty(q.shape)

    @torch.library.register_fake(f"lvmfast::{backward}")
    def _fake_backward(grad, q, max_steps, tol):
        return q.new_empty(q.shape)

    backward_op = getattr(torch.ops.lvmfast, backward)

    def setup_context(ctx, inputs, output):
        q, max_steps, tol = inputs
        ctx.save_for_backward(q)  # only q: the iterates are recomputed in the backward kernel
        ctx.max_steps, ctx.tol = max_steps, tol

    def grads(ctx, grad):
        (q,) = ctx.saved_tensors
        return backward_op(grad, q, ctx.max_steps, ctx.tol), None, None

    def setup_second(ctx, inputs, output):
        grad, q, max_steps, tol = inputs
        ctx.save_for_backward(grad, q)
        ctx.max_steps, ctx.tol = max_steps, tol

    torch.library.register_autograd(f"lvmfast::{forward}", grads, setup_context=setup_context)
    torch.library.register_autograd(f"lvmfast::{backward}", _double_backward, setup_context=setup_second)


if _backend._C is not None:
    _register("bjorck_orthonormalize", "bjorck_orthonormalize_backward")
_backend.register_op(_NAME, family="orthogonal", auto_cuda_order=("native",))
