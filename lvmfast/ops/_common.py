"""Input checks and autograd plumbing shared by every op family."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def check_float(op: str, name: str, t: torch.Tensor, like: torch.Tensor | None = None) -> None:
    """ValueError unless `t` is a floating tensor of a supported dtype (and of `like`'s dtype)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    dtype = t.dtype
    # float32 and float64 are allowed everywhere: the common case reads nothing else (every op
    # call runs these checks, so they are kept to a few attribute reads)
    if dtype is not torch.float32 and dtype is not torch.float64:
        allowed = FLOAT_DTYPES + (HALF_DTYPES if t.device.type == "cuda" else ())
        if dtype not in allowed:
            where = "on CUDA" if t.device.type == "cuda" else f"on {t.device.type} (half types need CUDA)"
            raise ValueError(f"{op}: {name} must have dtype in {[str(d) for d in allowed]} {where}, "
                             f"got {dtype}")
    if like is not None and dtype != like.dtype:
        raise ValueError(f"{op}: {name} must have the dtype of z ({like.dtype}), got {dtype}")


def check_shape(op: str, name: str, t: torch.Tensor, expected: Sequence[int | str]) -> None:
    """ValueError unless t.shape matches `expected`, where a str entry is a free symbolic size."""
    ok = t.dim() == len(expected) and all(isinstance(e, str) or t.shape[i] == e
                                          for i, e in enumerate(expected))
    if not ok:
        shown = "(" + ", ".join(str(e) for e in expected) + ("," if len(expected) == 1 else "") + ")"
        raise ValueError(f"{op}: {name} must have shape {shown}, got {tuple(t.shape)}")


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    devices = [t.device for t in tensors.values()]
    first = devices[0]
    if any(d != first for d in devices[1:]):
        listing = ", ".join(f"{n} on {d}" for n, d in zip(tensors, devices))
        raise RuntimeError(f"{op}: all tensors must be on one device, got {listing}")


def double_backward_via_reference(reference: Callable[..., torch.Tensor], num_inputs: int):
    """Autograd of a *backward* op (args: grad, *inputs, out): its first-order gradients
    recomputed with the differentiable reference, so that double backward is correct.

    `out` is a function of the inputs; the reference recomputes it from them, so its own
    gradient is zero here and the inputs' gradients carry that path.
    """

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[: num_inputs + 1])

    def backward(ctx, *cotangents):
        grad, *inputs = ctx.saved_tensors
        with torch.enable_grad():
            grad = grad.detach().requires_grad_(True)
            inputs = [t.detach().requires_grad_(True) for t in inputs]
            out = reference(*inputs)
            firsts = torch.autograd.grad(out, inputs, grad, create_graph=True)
            total = sum((f * c).sum() for f, c in zip(firsts, cotangents) if c is not None)
            seconds = torch.autograd.grad(total, [grad] + inputs, allow_unused=True)
        seconds = [torch.zeros_like(t) if s is None else s for t, s in zip([grad] + inputs, seconds)]
        return (*seconds, None)

    return backward, setup_context
