"""Triton kernels of the diffusion family (math: csrc/diffusion.h).

One program per block of flat elements: it gathers t[b] and the coefficient row coefs[t[b]] for
the sample b of each element, reads x (and y, noise) and writes out (and the noise). Noise is
Triton's own counter-based generator, tl.randn(seed, counter) (Philox-4x32 + Box-Muller inside
Triton), keyed by the same one-element seed tensor as the native kernels, with the flat element
index as counter (i N + e for step i of forward_chain): a pure function of (seed, element), so
the backward of forward_chain regenerates it. The values differ from the native backend's
stream; each is reproducible on its own.

T is a compile-time constant of the forward_chain kernels (one compile per schedule length).
A step t outside [0, T-1] cannot raise without a host sync; here the rows with such a t come out
as NaN (the native CUDA kernels trip a device-side assert instead).
The backward of the per-sample-t ops is a scaling by one coefficient column: it runs the native
diffusion_backward kernel (lvmfast/ops/diffusion.py).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DEVICES = ("cuda", "cpu") if _INTERPRET else ("cuda",)
_BLOCK = 1024


@triton.jit
def _rows_kernel(x_ptr, y_ptr, noise_ptr, seed_ptr, t_ptr, coefs_ptr, out_ptr, noise_out_ptr,
                 T, D, N, NCOLS: tl.constexpr, HAS_Y: tl.constexpr, NOISE_COL: tl.constexpr,
                 GENERATE: tl.constexpr, ONLY_T_POSITIVE: tl.constexpr, WRITE_NOISE: tl.constexpr,
                 BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    b = offs // D
    tb = tl.load(t_ptr + b, mask=mask, other=0)
    ok = mask & (tb >= 0) & (tb < T)
    row = coefs_ptr + tb * NCOLS
    c0 = tl.load(row, mask=ok, other=float("nan"))
    acc = c0 * tl.load(x_ptr + offs, mask=mask, other=0).to(c0.dtype)
    if HAS_Y:
        c1 = tl.load(row + 1, mask=ok, other=float("nan"))
        acc += c1 * tl.load(y_ptr + offs, mask=mask, other=0).to(c0.dtype)
    if NOISE_COL >= 0:
        if GENERATE:
            noise = tl.randn(tl.load(seed_ptr), offs).to(c0.dtype)
            if WRITE_NOISE:
                tl.store(noise_out_ptr + offs, noise.to(noise_out_ptr.dtype.element_ty), mask=mask)
        else:
            noise = tl.load(noise_ptr + offs, mask=mask, other=0).to(c0.dtype)
        cn = tl.load(row + NOISE_COL, mask=ok, other=float("nan"))
        term = cn * noise
        if ONLY_T_POSITIVE:
            term = tl.where(tb > 0, term, 0.0)
        acc += term
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _chain_fwd_kernel(x_ptr, coefs_ptr, seed_ptr, out_ptr, N, T: tl.constexpr, BLOCK: tl.constexpr):
    acc_ty = coefs_ptr.dtype.element_ty
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    step = tl.zeros_like(offs) + N  # int64 even when N alone would be int32
    seed = tl.load(seed_ptr)
    z = tl.load(x_ptr + offs, mask=mask, other=0).to(acc_ty)
    flat = offs  # i N + e: the output index and the generator's counter
    for i in range(T):
        a = tl.load(coefs_ptr + 2 * i)
        s = tl.load(coefs_ptr + 2 * i + 1)
        z = a * z + s * tl.randn(seed, flat).to(acc_ty)
        tl.store(out_ptr + flat, z.to(out_ptr.dtype.element_ty), mask=mask)
        flat += step


@triton.jit
def _chain_bwd_kernel(grad_ptr, x_ptr, coefs_ptr, seed_ptr, out_ptr, grad_x_ptr, grad_coefs_ptr,
                      N, T: tl.constexpr, BLOCK: tl.constexpr):
    acc_ty = coefs_ptr.dtype.element_ty
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    step = tl.zeros_like(offs) + N
    seed = tl.load(seed_ptr)
    adj = tl.zeros((BLOCK,), dtype=acc_ty)
    flat = offs + step * (T - 1)
    for j in range(T):
        i = T - 1 - j
        adj += tl.load(grad_ptr + flat, mask=mask, other=0).to(acc_ty)
        # z_{i-1}: the previous latent, or x itself for the first step (a scalar branch; a
        # block mask combined with a scalar condition is rejected by newer interpreters)
        if i > 0:
            prev = tl.load(out_ptr + (flat - step), mask=mask, other=0).to(acc_ty)
        else:
            prev = tl.load(x_ptr + offs, mask=mask, other=0).to(acc_ty)
        noise = tl.where(mask, tl.randn(seed, flat).to(acc_ty), 0.0)
        tl.atomic_add(grad_coefs_ptr + 2 * i, tl.sum(adj * prev, axis=0))
        tl.atomic_add(grad_coefs_ptr + 2 * i + 1, tl.sum(adj * noise, axis=0))
        adj = adj * tl.load(coefs_ptr + 2 * i)
        flat -= step
    tl.store(grad_x_ptr + offs, adj.to(grad_x_ptr.dtype.element_ty), mask=mask)


def _row_size(x):
    d = 1
    for s in x.shape[1:]:
        d *= s
    return d


def _check_rows(op, x, t, coefs, ncols):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.dim() < 1 or t.shape != (x.shape[0],) or t.dtype != torch.int64:
        raise ValueError(f"{op}: expected x (B, ...) and t (B,) int64, got {tuple(x.shape)} and "
                         f"{tuple(t.shape)} {t.dtype}")
    if coefs.dim() != 2 or coefs.shape[1] != ncols or coefs.dtype != acc:
        raise ValueError(f"{op}: coefs must have shape (T, {ncols}) and dtype {acc}, got "
                         f"{tuple(coefs.shape)} {coefs.dtype}")


def _launch_rows(x, y, noise, seed, t, coefs, out, noise_out, ncols, noise_col, only_t_positive):
    N = x.numel()
    if N == 0:
        return
    generate = noise_col >= 0 and noise is None
    dummy = out  # never read when the matching flag is off
    grid = (triton.cdiv(N, _BLOCK),)
    with torch.cuda.device(x.device) if x.is_cuda else _null():
        _rows_kernel[grid](
            x, y if y is not None else dummy, noise if noise is not None else dummy,
            seed if seed is not None else t, t, coefs, out,
            noise_out if noise_out is not None else dummy, coefs.shape[0], _row_size(x), N,
            NCOLS=ncols, HAS_Y=y is not None, NOISE_COL=noise_col, GENERATE=generate,
            ONLY_T_POSITIVE=only_t_positive, WRITE_NOISE=noise_out is not None, BLOCK=_BLOCK)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _exactly_one(op, noise, seed):
    if (noise is None) == (seed is None):
        raise ValueError(f"{op}: exactly one of noise and seed must be given")


@torch.library.register_kernel("lvmfast::q_sample_triton", _DEVICES)
def q_sample_triton(x0, t, coefs, noise, seed):
    _check_rows("q_sample", x0, t, coefs, 2)
    _exactly_one("q_sample", noise, seed)
    x0c, tc = x0.contiguous(), t.contiguous()
    out = torch.empty(x0.shape, dtype=x0.dtype, device=x0.device)
    noise_out = torch.empty(x0.shape if noise is None else (0,), dtype=x0.dtype, device=x0.device)
    _launch_rows(x0c, None, None if noise is None else noise.contiguous(), seed, tc, coefs.contiguous(),
                 out, noise_out if noise is None else None, 2, 1, False)
    return out, noise_out


@torch.library.register_kernel("lvmfast::q_posterior_triton", _DEVICES)
def q_posterior_triton(x0, xt, t, coefs):
    _check_rows("q_posterior", x0, t, coefs, 3)
    out = torch.empty(x0.shape, dtype=x0.dtype, device=x0.device)
    _launch_rows(x0.contiguous(), xt.contiguous(), None, None, t.contiguous(), coefs.contiguous(),
                 out, None, 3, -1, False)
    bad = (t < 0) | (t >= coefs.shape[0])
    variance = torch.where(bad, float("nan"), coefs[t.clamp(0, coefs.shape[0] - 1), 2]).to(x0.dtype)
    return out, variance


@torch.library.register_kernel("lvmfast::p_step_triton", _DEVICES)
def p_step_triton(xt, eps_pred, t, coefs, noise, seed):
    _check_rows("p_step", xt, t, coefs, 3)
    _exactly_one("p_step", noise, seed)
    out = torch.empty(xt.shape, dtype=xt.dtype, device=xt.device)
    _launch_rows(xt.contiguous(), eps_pred.contiguous(), None if noise is None else noise.contiguous(),
                 seed, t.contiguous(), coefs.contiguous(), out, None, 3, 2, True)
    return out


@torch.library.register_kernel("lvmfast::forward_chain_triton", _DEVICES)
def forward_chain_triton(x, coefs, seed):
    T, N = coefs.shape[0], x.numel()
    out = torch.empty((T, *x.shape), dtype=x.dtype, device=x.device)
    if T and N:
        with torch.cuda.device(x.device) if x.is_cuda else _null():
            _chain_fwd_kernel[(triton.cdiv(N, _BLOCK),)](x.contiguous(), coefs.contiguous(), seed, out,
                                                         N, T=T, BLOCK=_BLOCK)
    return out


@torch.library.register_kernel("lvmfast::forward_chain_triton_backward", _DEVICES)
def forward_chain_triton_backward(grad, x, coefs, seed, out):
    T, N = coefs.shape[0], x.numel()
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    grad_coefs = torch.zeros(coefs.shape, dtype=coefs.dtype, device=coefs.device)
    if N == 0 or T == 0:
        return grad_x.zero_(), grad_coefs
    with torch.cuda.device(x.device) if x.is_cuda else _null():
        _chain_bwd_kernel[(triton.cdiv(N, _BLOCK),)](grad.contiguous(), x.contiguous(), coefs.contiguous(),
                                                     seed, out.contiguous(), grad_x, grad_coefs, N,
                                                     T=T, BLOCK=_BLOCK)
    return grad_x, grad_coefs
