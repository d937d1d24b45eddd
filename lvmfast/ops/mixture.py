"""log_mog: the log-density of a mixture of diagonal Gaussians, as a fused custom op.

The forward saves only its (...,)-shaped result; the backward recomputes the responsibilities
exp(s - out) in the kernel instead of storing anything of size (..., K).
"""
from __future__ import annotations

import torch

from lvmfast import _backend
from lvmfast.ops._common import check_float, check_same_device, check_shape, double_backward_via_reference
from lvmfast.reference import mixture as reference

_NAME = "log_mog"


def check_log_mog_inputs(z, means, logvars, logits) -> None:
    for name, t in (("z", z), ("means", means), ("logvars", logvars), ("logits", logits)):
        check_float(_NAME, name, t, like=None if name == "z" else z)
    if z.dim() < 1:
        raise ValueError(f"{_NAME}: z must have shape (..., L), got {tuple(z.shape)}")
    check_shape(_NAME, "means", means, ("K", "L"))
    K, L = means.shape
    if K < 1 or L < 1:
        raise ValueError(f"{_NAME}: means must have K >= 1 components and L >= 1 dimensions, "
                         f"got {tuple(means.shape)}")
    if z.shape[-1] != L:
        raise ValueError(f"{_NAME}: z must have shape (..., {L}) to match means {tuple(means.shape)}, "
                         f"got {tuple(z.shape)}")
    check_shape(_NAME, "logvars", logvars, (K, L))
    check_shape(_NAME, "logits", logits, (K,))
    check_same_device(_NAME, z=z, means=means, logvars=logvars, logits=logits)


def log_mog(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor,
            logits: torch.Tensor) -> torch.Tensor:
    """log sum_k softmax(logits)_k prod_l N(z_l | means[k,l], exp(logvars[k,l])) [4.47].

    z: (..., L); means, logvars: (K, L); logits: (K,) (entries may be -inf, not all).
    Returns z.shape[:-1]. Differentiable in all four tensors.
    """
    check_log_mog_inputs(z, means, logvars, logits)
    backend = _backend.resolve(_NAME, z.device.type)
    if backend == "reference":
        return reference.log_mog(z, means, logvars, logits)
    if backend == "triton":
        return torch.ops.lvmfast.log_mog_triton(z, means, logvars, logits)
    return torch.ops.lvmfast.log_mog(z, means, logvars, logits)


def _register(forward: str, backward: str) -> None:
    @torch.library.register_fake(f"lvmfast::{forward}")
    def _fake_forward(z, means, logvars, logits):
        return z.new_empty(z.shape[:-1])

    @torch.library.register_fake(f"lvmfast::{backward}")
    def _fake_backward(grad, z, means, logvars, logits, out):
        return (torch.empty_like(z), torch.empty_like(means), torch.empty_like(logvars),
                torch.empty_like(logits))

    backward_op = getattr(torch.ops.lvmfast, backward)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs, output)

    def grads(ctx, grad):
        z, means, logvars, logits, out = ctx.saved_tensors
        return backward_op(grad, z, means, logvars, logits, out)

    torch.library.register_autograd(f"lvmfast::{forward}", grads, setup_context=setup_context)
    second, second_setup = double_backward_via_reference(reference.log_mog, num_inputs=4)
    torch.library.register_autograd(f"lvmfast::{backward}", second, setup_context=second_setup)


if _backend._C is not None:
    _register("log_mog", "log_mog_backward")
    _register("log_mog_triton", "log_mog_triton_backward")
# Order unmeasured so far (no GPU run yet): the CUDA kernel fuses the backward into one pass.
_backend.register_op(_NAME, family="mixture", auto_cuda_order=("native", "triton"))
