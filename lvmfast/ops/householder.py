"""householder_flow: a chain of Householder reflections [4.58] as a fused custom op.

The forward keeps each row of z in registers / cache while it applies all T reflections. The
backward walks the chain in reverse from the output, re-creating z_{t-1} = H_t z_t (a reflection
is its own inverse), so autograd saves only v and the output.
"""
from __future__ import annotations

import torch

from lvmfast import _backend
from lvmfast.ops._common import check_float, check_same_device
from lvmfast.reference import householder as reference

_NAME = "householder_flow"


def check_householder_inputs(z, v) -> None:
    check_float(_NAME, "z", z)
    check_float(_NAME, "v", v, like=z)
    if z.dim() != 2:
        raise ValueError(f"{_NAME}: z must have shape (B, L), got {tuple(z.shape)}")
    B, L = z.shape
    if v.dim() == 3:
        if v.shape[0] != B or v.shape[2] != L:
            raise ValueError(f"{_NAME}: v must have shape ({B}, T, {L}) (per sample) or (T, {L}) "
                             f"(shared) to match z {tuple(z.shape)}, got {tuple(v.shape)}")
    elif v.dim() == 2:
        if v.shape[1] != L:
            raise ValueError(f"{_NAME}: v must have shape (T, {L}) (shared) or ({B}, T, {L}) "
                             f"(per sample) to match z {tuple(z.shape)}, got {tuple(v.shape)}")
    else:
        raise ValueError(f"{_NAME}: v must have shape ({B}, T, {L}) or (T, {L}), got {tuple(v.shape)}")
    check_same_device(_NAME, z=z, v=v)


def householder_flow(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H_T ... H_1 z with H_t = I - 2 v_t v_t^T / |v_t|^2 [4.58].

    z: (B, L); v: (B, T, L) per sample (amortized) or (T, L) shared by the batch. A zero v_t
    is skipped. Returns (B, L); log|det J| = 0, so no log-determinant is returned.
    """
    check_householder_inputs(z, v)
    backend = _backend.resolve(_NAME, z.device.type)
    if backend == "reference":
        return reference.householder_flow(z, v)
    if backend == "triton":
        return torch.ops.lvmfast.householder_flow_triton(z, v)
    return torch.ops.lvmfast.householder_flow(z, v)


def _double_backward(ctx, grad_gz, grad_gv):
    """Gradients of the backward op (grad, out, v) -> (grad_z, grad_v), via the reference:
    z is re-created from out by the reversed chain, then the first-order gradients are
    differentiated once more."""
    grad, out, v = ctx.saved_tensors
    with torch.enable_grad():
        grad, out, v = (t.detach().requires_grad_(True) for t in (grad, out, v))
        z = reference.householder_flow(out, v.flip(-2))
        v_direct = v.clone()  # the path through v at fixed z
        firsts = torch.autograd.grad(reference.householder_flow(z, v_direct), (z, v_direct), grad,
                                     create_graph=True)
        total = sum((f * c).sum() for f, c in zip(firsts, (grad_gz, grad_gv)) if c is not None)
        seconds = torch.autograd.grad(total, (grad, out, v), allow_unused=True)
    return tuple(torch.zeros_like(t) if s is None else s for t, s in zip((grad, out, v), seconds))


def _register(forward: str, backward: str) -> None:
    @torch.library.register_fake(f"lvmfast::{forward}")
    def _fake_forward(z, v):
        return z.new_empty(z.shape)

    @torch.library.register_fake(f"lvmfast::{backward}")
    def _fake_backward(grad, out, v):
        return out.new_empty(out.shape), v.new_empty(v.shape)

    backward_op = getattr(torch.ops.lvmfast, backward)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output, inputs[1])  # out and v: nothing per step

    def grads(ctx, grad):
        out, v = ctx.saved_tensors
        return backward_op(grad, out, v)

    def setup_second(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    torch.library.register_autograd(f"lvmfast::{forward}", grads, setup_context=setup_context)
    torch.library.register_autograd(f"lvmfast::{backward}", _double_backward, setup_context=setup_second)


if _backend._C is not None:
    _register("householder_flow", "householder_flow_backward")
    _register("householder_flow_triton", "householder_flow_triton_backward")
_backend.register_op(_NAME, family="householder", auto_cuda_order=("native", "triton"))
