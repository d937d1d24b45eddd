"""Triton kernels for sylvester_flow: one Sylvester flow step and its log-determinant.

The math contract is the header comment of csrc/sylvester.h. One program owns one sample and
holds its whole (M, M) upper triangles (and its (D, M) Q) as register tiles, loaded once:
R v is a row reduction of the tile, R^T v a column reduction of the same tile, so the backward
reads each matrix once (the CUDA kernel reads R1, R2 twice, the second time mostly from L2).
Entries below the diagonal are masked off at the load and never touched; the gradient tiles
are stored whole, with exact zeros there. The reversal permutation of odd triangular flows is
applied in registers as a select-and-reduce with the anti-diagonal (M^2 register operations,
no memory). Shared parameters (stride 0 over the batch) have their gradients summed with
atomic adds into an accumulation-dtype buffer (one per element and sample: fine for the
amortized flows the benchmarks run; heavy contention when everything is shared and B is
large). Tiles are padded to powers of two and masked, so any D, M works; registers bound D
and M to a few hundred in practice.

Tested in the Triton interpreter and on an H100 (session 11: 372 Sylvester and Björck CUDA tests
green; in the bench, its Householder-kind forward 17.8 us a flow against the CUDA kernel's 29.5).
Since session 12, q and the output gradients are read at their own strides (no copies of
torch.linalg.qr's column-major q, nor of a sum's expanded gradients): tested in the interpreter
only, not yet run on a GPU.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DEVICES = ("cuda", "cpu") if _INTERPRET else ("cuda",)


@triton.jit
def _tanh(x, ACC: tl.constexpr):
    # The CPU kernel's vtanh (csrc/cpu/simd.h). 1 - 2 / (e^{2|x|} + 1) alone cancels for small
    # |x| (error ~eps / |x| relative: all of it below ~1e-7 in float32), so below the switch the
    # odd Taylor series to x^15 (Horner in x^2) takes over; its truncation, 6e-4 |x|^16 relative,
    # is 1e-8 at 0.5, under float32's eps but not float64's, so float64 switches at 0.125
    # (truncation 2e-18; the exp form there costs a few eps relative). |x| is clamped before
    # exp where tanh has already rounded to 1 (past 9.01 in float32, 19.1 in float64); NaN
    # stays NaN, +-inf gives +-1.
    if ACC == tl.float64:
        switch = 0.125
        clamp = 20.0
    else:
        switch = 0.5
        clamp = 10.0
    ax = tl.where(x < 0.0, -x, x)
    ax = tl.where(ax < clamp, ax, clamp)  # also keeps inf and NaN out of the series (inf - inf)
    big = 1.0 - 2.0 / (tl.exp(2.0 * ax) + 1.0)
    x2 = ax * ax
    p = -929569.0 / 638512875.0 * x2 + 21844.0 / 6081075.0
    p = p * x2 - 1382.0 / 155925.0
    p = p * x2 + 62.0 / 2835.0
    p = p * x2 - 17.0 / 315.0
    p = p * x2 + 2.0 / 15.0
    p = p * x2 - 1.0 / 3.0
    small = ax + ax * x2 * p
    t = tl.where(ax < switch, small, big)
    return tl.where(x != x, x, tl.where(x < 0.0, -t, t))


@triton.jit
def _reverse(v, offs, M: tl.constexpr):
    """v[M - 1 - i] for a (BLOCK,) vector whose entries past M are 0."""
    anti = offs[None, :] == (M - 1 - offs[:, None])
    return tl.sum(tl.where(anti, v[None, :], 0.0), 1)


@triton.jit
def _load_upper(ptr, offs_m, M: tl.constexpr, ACC: tl.constexpr):
    upper = (offs_m[:, None] <= offs_m[None, :]) & (offs_m[None, :] < M)
    return tl.load(ptr + offs_m[:, None] * M + offs_m[None, :], mask=upper, other=0.0).to(ACC)


@triton.jit
def _sylvester_fwd_kernel(z_ptr, r1_ptr, r2_ptr, b_ptr, q_ptr, out_ptr, logdet_ptr,
                          r1_bs, r2_bs, b_bs, q_bs, q_sd, q_sm,
                          D: tl.constexpr, M: tl.constexpr, QKIND: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, ACC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)
    mask_d = offs_d < D
    mask_m = offs_m < M
    z = tl.load(z_ptr + n * D + offs_d, mask=mask_d, other=0.0).to(ACC)
    if QKIND == 2:
        qt = tl.load(q_ptr + n * q_bs + offs_d[:, None] * q_sd + offs_m[None, :] * q_sm,
                     mask=mask_d[:, None] & mask_m[None, :], other=0.0).to(ACC)
        y = tl.sum(qt * z[:, None], 0)
    elif QKIND == 1:
        y = tl.load(z_ptr + n * D + (D - 1 - offs_m), mask=mask_m, other=0.0).to(ACC)
    else:
        y = tl.load(z_ptr + n * D + offs_m, mask=mask_m, other=0.0).to(ACC)
    R2 = _load_upper(r2_ptr + n * r2_bs, offs_m, M, ACC)
    R1 = _load_upper(r1_ptr + n * r1_bs, offs_m, M, ACC)
    bv = tl.load(b_ptr + n * b_bs + offs_m, mask=mask_m, other=0.0).to(ACC)
    h = _tanh(tl.sum(R2 * y[None, :], 1) + bv, ACC)
    h = tl.where(mask_m, h, 0.0)
    c = tl.sum(R1 * h[None, :], 1)
    d1 = tl.load(r1_ptr + n * r1_bs + offs_m * (M + 1), mask=mask_m, other=0.0).to(ACC)
    d2 = tl.load(r2_ptr + n * r2_bs + offs_m * (M + 1), mask=mask_m, other=0.0).to(ACC)
    terms = tl.log(tl.abs(1.0 + (1.0 - h * h) * d1 * d2))
    tl.store(logdet_ptr + n, tl.sum(tl.where(mask_m, terms, 0.0), 0).to(logdet_ptr.dtype.element_ty))
    if QKIND == 2:
        out = z + tl.sum(qt * c[None, :], 1)
    elif QKIND == 1:
        out = z + _reverse(c, offs_m, M)
    else:
        out = z + c
    tl.store(out_ptr + n * D + offs_d, out.to(out_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _put(ptr, offs, value, mask, SHARED: tl.constexpr):
    if SHARED:
        tl.atomic_add(ptr + offs, value, mask=mask)
    else:
        tl.store(ptr + offs, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sylvester_bwd_kernel(g_ptr, gl_ptr, z_ptr, r1_ptr, r2_ptr, b_ptr, q_ptr,
                          gz_ptr, gr1_ptr, gr2_ptr, gb_ptr, gq_ptr,
                          r1_bs, r2_bs, b_bs, q_bs, q_sd, q_sm, gq_bs, g_sb, g_sd, gl_s,
                          D: tl.constexpr, M: tl.constexpr, QKIND: tl.constexpr,
                          SH_R1: tl.constexpr, SH_R2: tl.constexpr, SH_B: tl.constexpr,
                          SH_Q: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, ACC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)
    mask_d = offs_d < D
    mask_m = offs_m < M
    z = tl.load(z_ptr + n * D + offs_d, mask=mask_d, other=0.0).to(ACC)
    g = tl.load(g_ptr + n * g_sb + offs_d * g_sd, mask=mask_d, other=0.0).to(ACC)
    gl = tl.load(gl_ptr + n * gl_s).to(ACC)
    # y = Q^T z, gc = Q^T g
    if QKIND == 2:
        qt = tl.load(q_ptr + n * q_bs + offs_d[:, None] * q_sd + offs_m[None, :] * q_sm,
                     mask=mask_d[:, None] & mask_m[None, :], other=0.0).to(ACC)
        y = tl.sum(qt * z[:, None], 0)
        gc = tl.sum(qt * g[:, None], 0)
    elif QKIND == 1:
        y = tl.load(z_ptr + n * D + (D - 1 - offs_m), mask=mask_m, other=0.0).to(ACC)
        gc = tl.load(g_ptr + n * g_sb + (D - 1 - offs_m) * g_sd, mask=mask_m, other=0.0).to(ACC)
    else:
        y = tl.load(z_ptr + n * D + offs_m, mask=mask_m, other=0.0).to(ACC)
        gc = tl.load(g_ptr + n * g_sb + offs_m * g_sd, mask=mask_m, other=0.0).to(ACC)
    R2 = _load_upper(r2_ptr + n * r2_bs, offs_m, M, ACC)
    R1 = _load_upper(r1_ptr + n * r1_bs, offs_m, M, ACC)
    bv = tl.load(b_ptr + n * b_bs + offs_m, mask=mask_m, other=0.0).to(ACC)
    h = tl.where(mask_m, _tanh(tl.sum(R2 * y[None, :], 1) + bv, ACC), 0.0)
    s = 1.0 - h * h
    d1 = tl.load(r1_ptr + n * r1_bs + offs_m * (M + 1), mask=mask_m, other=0.0).to(ACC)
    d2 = tl.load(r2_ptr + n * r2_bs + offs_m * (M + 1), mask=mask_m, other=0.0).to(ACC)
    w = gl / (1.0 + s * d1 * d2)
    gh = tl.sum(R1 * gc[:, None], 0)                     # R1^T gc
    ga = s * (gh - 2.0 * h * d1 * d2 * w)
    ga = tl.where(mask_m, ga, 0.0)
    gy = tl.sum(R2 * ga[:, None], 0)                     # R2^T ga
    upper = (offs_m[:, None] <= offs_m[None, :]) & mask_m[None, :] & mask_m[:, None]
    diag = offs_m[:, None] == offs_m[None, :]
    square = mask_m[:, None] & mask_m[None, :]
    mm = offs_m[:, None] * M + offs_m[None, :]
    gr1 = tl.where(upper, gc[:, None] * h[None, :], 0.0) + tl.where(diag, (s * d2 * w)[:, None], 0.0)
    gr2 = tl.where(upper, ga[:, None] * y[None, :], 0.0) + tl.where(diag, (s * d1 * w)[:, None], 0.0)
    _put(gr1_ptr + n * r1_bs, mm, gr1, square, SH_R1)
    _put(gr2_ptr + n * r2_bs, mm, gr2, square, SH_R2)
    _put(gb_ptr + n * b_bs, offs_m, ga, mask_m, SH_B)
    if QKIND == 2:
        gz = g + tl.sum(qt * gy[None, :], 1)
        c = tl.sum(R1 * h[None, :], 1)
        gq = z[:, None] * gy[None, :] + g[:, None] * c[None, :]
        _put(gq_ptr + n * gq_bs, offs_d[:, None] * M + offs_m[None, :], gq,
             mask_d[:, None] & mask_m[None, :], SH_Q)
    elif QKIND == 1:
        gz = g + _reverse(gy, offs_m, M)
    else:
        gz = g + gy
    tl.store(gz_ptr + n * D + offs_d, gz.to(gz_ptr.dtype.element_ty), mask=mask_d)


# ----------------------------------------------------------------------------------------------
# the custom ops
# ----------------------------------------------------------------------------------------------
def _acc(dtype: torch.dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _prepare(z, r1, r2, b, q, reverse):
    from lvmfast.ops.sylvester import check_sylvester_inputs  # the public op's checks

    check_sylvester_inputs(z, r1, r2, b, q, reverse)
    B, D = z.shape
    M = D if q is None else q.shape[-1]
    qkind = 2 if q is not None else (1 if reverse else 0)
    z, r1, r2, b = (t.contiguous() for t in (z, r1, r2, b))

    def batch_stride(t, batched_dim):  # 0 for a parameter shared by the batch
        return t.stride(0) if t.dim() == batched_dim else 0

    # q is read at its own strides, so torch.linalg.qr's column-major matrices are not copied:
    # on the H100 (session 11) that copy took 94 of the orthogonal kind's 174 us of kernels for
    # four flows forward and backward, the kernels themselves 78
    q_strides = (0, 0, 0) if q is None else (batch_stride(q, 3), q.stride(-2), q.stride(-1))
    strides = (batch_stride(r1, 3), batch_stride(r2, 3), batch_stride(b, 2)) + q_strides
    blocks = dict(D=D, M=M, QKIND=qkind, BLOCK_D=triton.next_power_of_2(D),
                  BLOCK_M=triton.next_power_of_2(M), ACC=_acc(z.dtype)[1])
    return (z, r1, r2, b, q), strides, blocks


def _num_warps(block_m: int) -> int:
    return 4 if block_m <= 64 else 8


@torch.library.register_kernel("lvmfast::sylvester_flow_triton", _DEVICES)
def sylvester_flow_triton(z, r1, r2, b, q=None, reverse=False):
    (z, r1, r2, b, q), strides, blocks = _prepare(z, r1, r2, b, q, reverse)
    B, D = z.shape
    out = torch.empty((B, D), dtype=z.dtype, device=z.device)
    logdet = torch.empty((B,), dtype=z.dtype, device=z.device)
    if B == 0:
        return out, logdet
    with _device_guard(z):
        _sylvester_fwd_kernel[(B,)](z, r1, r2, b, q if q is not None else z, out, logdet, *strides,
                                    num_warps=_num_warps(blocks["BLOCK_M"]), **blocks)
    return out, logdet


@torch.library.register_kernel("lvmfast::sylvester_flow_triton_backward", _DEVICES)
def sylvester_flow_triton_backward(grad_out, grad_logdet, z, r1, r2, b, q, reverse):
    (z, r1, r2, b, q), strides, blocks = _prepare(z, r1, r2, b, q, reverse)
    B, D = z.shape
    if grad_out.shape != z.shape or grad_logdet.shape != (B,):
        raise ValueError(f"sylvester_flow_backward: grad_out must have shape {tuple(z.shape)} and "
                         f"grad_logdet ({B},), got {tuple(grad_out.shape)} and "
                         f"{tuple(grad_logdet.shape)}")
    # read in place whatever their strides: a loss that sums the outputs hands over expanded
    # (stride 0) gradients, which are not copied
    g = grad_out.to(z.dtype)
    gl = grad_logdet.to(z.dtype)
    acc = _acc(z.dtype)[0]
    shared = dict(SH_R1=r1.dim() == 2, SH_R2=r2.dim() == 2, SH_B=b.dim() == 1,
                  SH_Q=q is not None and q.dim() == 2)

    def grad_buffer(t, is_shared):
        # amortized: written whole by the kernel (row-major, whatever the input's layout);
        # shared: summed with atomics in acc dtype
        if is_shared:
            return torch.zeros(t.shape, dtype=acc, device=t.device)
        return torch.empty(t.shape, dtype=t.dtype, device=t.device)

    gz = torch.empty_like(z)
    gr1, gr2, gb = (grad_buffer(t, shared[k]) for t, k in ((r1, "SH_R1"), (r2, "SH_R2"), (b, "SH_B")))
    gq = grad_buffer(q, shared["SH_Q"]) if q is not None else z.new_empty((0,))
    gq_bs = 0 if q is None or shared["SH_Q"] else D * q.shape[-1]
    if B > 0:
        with _device_guard(z):
            _sylvester_bwd_kernel[(B,)](g, gl, z, r1, r2, b, q if q is not None else z,
                                        gz, gr1, gr2, gb, gq if q is not None else gz, *strides,
                                        gq_bs, g.stride(0), g.stride(1), gl.stride(0),
                                        num_warps=_num_warps(blocks["BLOCK_M"]), **shared, **blocks)
    return gz, gr1.to(z.dtype), gr2.to(z.dtype), gb.to(z.dtype), gq.to(z.dtype)
