"""Triton kernels for log_mog: the log-density of a mixture of diagonal Gaussians.

The math contract is the header comment of csrc/mixture.h. With acc = float64 for float64
inputs and float32 otherwise (float16 / bfloat16 inputs are converted on the host),
prec = exp(-logvars), consts = log_softmax(logits) - 0.5 sum_l logvars - 0.5 L log(2 pi), and,
in the direct form (never the expanded quadratic, which cancels catastrophically in float32),

    s[n,k]   = consts[k] - 0.5 sum_l (z[n,l] - means[k,l])^2 prec[k,l]
    out[n]   = logsumexp_k s[n,k]                            (online max / sum over K tiles)
    r[n,k]   = grad[n] exp(s[n,k] - out[n])                  (recomputed in the backward)
    grad_z   = -sum_k r (z - means) prec,   wdiff = sum_n r (z - means) prec,
    wsq      =  sum_n r (z - means)^2 prec, wsum  = sum_n r.

Tiling. Every kernel holds a 2-D register tile of (row, component) pairs and walks the latent
dimension one l at a time, as a rank-1 update: the tile gains (z[n,l] - means[k,l])^2 prec[k,l]
from a column of z and a row of means and of prec (3 FP instructions per pair and l: sub, mul,
fma). z, means and prec are passed transposed and padded, (L_pad, N_pad) and (L_pad, K_pad), so
those vectors are contiguous, aligned and need no masks. The walk over L is a runtime loop
unrolled UNROLL (8) times.

Triton's default layout spreads the threads over a tile's last axis and keeps the first axis
inside each thread. Each kernel orders its tile so that its reductions stay inside a thread (no
shuffles, no shared memory):
  * forward: tile (BLOCK_K, BLOCK_N) = (32, 128), one row per thread, programs over row tiles
    looping over all component tiles with an online max / sum log-sum-exp.
  * grad_z: same tile and loop; after recomputing r for a component tile, a second walk over L
    adds sum_k r (z - m) prec for each l into an (L_pad, N_pad) scratch (acc dtype) that only the
    row's own thread reads and writes (program order, no atomics); a last pass writes grad_z.
  * parameters: tile (BLOCK_N, BLOCK_K) = (8, 128), one component per thread, programs over
    (component tile, split of the row tiles). The sums over n of r (z - m), r (z - m)^2 and r
    are per-thread, kept in (BLOCK_L, BLOCK_K) register accumulators over all the program's row
    tiles (indexed by a compile-time l, so the selects fold away), scaled by prec and added once
    per program with atomics. BLOCK_L is at most 32 (16 in float64) to stay clear of register
    spills; larger L is done in chunks, recomputing s per chunk.
The backward thus recomputes s in both kernels (13 FP instructions per (n, k, l) in all for
L <= 32, 16 for L = 64, against 9 for one fused kernel). A fused kernel would need, for every
l, a cross-thread reduction over either k or n plus a flush of partial sums with atomics: one
atomic per ~250 FLOPs at best, and shuffles costing as much as the arithmetic.

Padding: rows with z = 0, grad = 0 and out = +inf (responsibility exactly 0), components with
means = prec = 0 and consts = -inf, dimensions with z = means = prec = 0 (contributing exactly
0). Components switched off by a -inf logit get exactly zero responsibility; the forward's
running maximum is replaced by 0 while it is still -inf, so exp never sees -inf - (-inf).
"""
from __future__ import annotations

import contextlib
import functools
import math
import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DEVICES = ("cuda", "cpu") if _INTERPRET else ("cuda",)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------
# All operands are padded on the host (see _Packed and the module docstring), so the inner loops
# carry no masks (a mask there costs a predicate per element, and ptxas then spills everything)
# and their vector loads are aligned. Only the final stores and atomics are masked.
@triton.jit
def _scores_kn(zt_ptr, mt_ptr, pt_ptr, c_ptr, offs_n, offs_k, N_pad, K_pad, L_pad,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UNROLL: tl.constexpr):
    """s as a (BLOCK_K, BLOCK_N) tile (direct form); -inf for padded components."""
    q = tl.zeros((BLOCK_K, BLOCK_N), dtype=pt_ptr.dtype.element_ty)
    zp = zt_ptr
    mp = mt_ptr
    pp = pt_ptr
    for _l0 in range(0, L_pad, UNROLL):
        for _j in tl.static_range(UNROLL):
            zl = tl.load(zp + offs_n)
            ml = tl.load(mp + offs_k)
            pl = tl.load(pp + offs_k)
            d = zl[None, :] - ml[:, None]
            q += d * d * pl[:, None]
            zp += N_pad
            mp += K_pad
            pp += K_pad
    c = tl.load(c_ptr + offs_k)
    return c[:, None] - 0.5 * q


@triton.jit
def _scores_nk(zt_ptr, mt_ptr, pt_ptr, c_ptr, offs_n, offs_k, N_pad, K_pad, L_pad,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UNROLL: tl.constexpr):
    """s as a (BLOCK_N, BLOCK_K) tile (direct form); -inf for padded components."""
    q = tl.zeros((BLOCK_N, BLOCK_K), dtype=pt_ptr.dtype.element_ty)
    zp = zt_ptr
    mp = mt_ptr
    pp = pt_ptr
    for _l0 in range(0, L_pad, UNROLL):
        for _j in tl.static_range(UNROLL):
            zl = tl.load(zp + offs_n)
            ml = tl.load(mp + offs_k)
            pl = tl.load(pp + offs_k)
            d = zl[:, None] - ml[None, :]
            q += d * d * pl[None, :]
            zp += N_pad
            mp += K_pad
            pp += K_pad
    c = tl.load(c_ptr + offs_k)
    return c[None, :] - 0.5 * q


@triton.jit
def _log_mog_fwd_kernel(zt_ptr, mt_ptr, pt_ptr, c_ptr, out_ptr, N, N_pad, K_pad, L_pad,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UNROLL: tl.constexpr):
    """out[n] = logsumexp_k s[n,k] for a tile of BLOCK_N rows, online over component tiles."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    acc_dtype = pt_ptr.dtype.element_ty
    run_max = tl.full((BLOCK_N,), float("-inf"), acc_dtype)
    run_sum = tl.zeros((BLOCK_N,), dtype=acc_dtype)
    for k0 in range(0, K_pad, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        s = _scores_kn(zt_ptr, mt_ptr, pt_ptr, c_ptr, offs_n, offs_k, N_pad, K_pad, L_pad,
                       BLOCK_N, BLOCK_K, UNROLL)
        new_max = tl.maximum(run_max, tl.max(s, axis=0))
        # While every component so far is -inf, shift by 0: exp(-inf - 0) = 0, never NaN.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(s - shift[None, :]), axis=0)
        run_max = new_max
    tl.store(out_ptr + offs_n, run_max + tl.log(run_sum), mask=offs_n < N)


@triton.jit
def _log_mog_bwd_z_kernel(zt_ptr, mt_ptr, pt_ptr, c_ptr, g_ptr, o_ptr, gzt_ptr, gz_ptr,
                          N, N_pad, K_pad, L, L_pad, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, UNROLL: tl.constexpr):
    """grad_z[n,l] = -sum_k r[n,k] (z[n,l] - means[k,l]) prec[k,l] for a tile of BLOCK_N rows.

    Each component tile adds its part of -grad_z into the zero-initialised (L_pad, N_pad)
    scratch gzt: every element of it belongs to one thread (one row per thread), which reads
    and writes it in program order, so no atomics or barriers are needed (and the loads must
    not be software-pipelined: launch with num_stages=1). A last pass writes grad_z (N, L).
    """
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    g = tl.load(g_ptr + offs_n)
    o = tl.load(o_ptr + offs_n)
    for k0 in range(0, K_pad, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        s = _scores_kn(zt_ptr, mt_ptr, pt_ptr, c_ptr, offs_n, offs_k, N_pad, K_pad, L_pad,
                       BLOCK_N, BLOCK_K, UNROLL)
        r = g[None, :] * tl.exp(s - o[None, :])
        zp = zt_ptr
        mp = mt_ptr
        pp = pt_ptr
        gp = gzt_ptr
        for _l0 in range(0, L_pad, UNROLL):
            for _j in tl.static_range(UNROLL):
                zl = tl.load(zp + offs_n)
                ml = tl.load(mp + offs_k)
                pl = tl.load(pp + offs_k)
                d = zl[None, :] - ml[:, None]
                col = tl.sum(r * (d * pl[:, None]), axis=0)
                tl.store(gp + offs_n, tl.load(gp + offs_n) + col)
                zp += N_pad
                mp += K_pad
                pp += K_pad
                gp += N_pad
    mask = offs_n < N
    rows = gz_ptr + offs_n.to(tl.int64) * L
    gp = gzt_ptr
    for dim in range(0, L):
        tl.store(rows + dim, (-tl.load(gp + offs_n)).to(gz_ptr.dtype.element_ty), mask=mask)
        gp += N_pad


@triton.jit
def _log_mog_bwd_param_kernel(zt_ptr, mt_ptr, pt_ptr, c_ptr, g_ptr, o_ptr, wd_ptr, wq_ptr, ws_ptr,
                              N_pad, K, K_pad, L, L_pad, n_split, tiles_per_split,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                              BLOCK_L: tl.constexpr, UNROLL: tl.constexpr):
    """wdiff, wsq (K, L) and wsum (K,) for one tile of BLOCK_K components over the row tiles
    pid_s, pid_s + n_split, ... (tiles_per_split of them, those past N_pad skipped).

    The sums over rows stay in (BLOCK_L, BLOCK_K) register accumulators (one component per
    thread, BLOCK_L dimensions inside it) and are added once per program, row by row, into
    zero-initialised (K, L) buffers with atomics. For L > BLOCK_L, s is recomputed per chunk.
    """
    pid_k = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    acc_dtype = pt_ptr.dtype.element_ty
    lane_l = tl.arange(0, BLOCK_L)
    zc = zt_ptr
    mc = mt_ptr
    pc = pt_ptr
    for l0 in range(0, L_pad, BLOCK_L):
        acc_d = tl.zeros((BLOCK_L, BLOCK_K), dtype=acc_dtype)  # sum_n r (z - m)
        acc_q = tl.zeros((BLOCK_L, BLOCK_K), dtype=acc_dtype)  # sum_n r (z - m)^2
        acc_s = tl.zeros((BLOCK_K,), dtype=acc_dtype)  # sum_n r
        for i in range(0, tiles_per_split):
            n0 = (pid_s + i * n_split) * BLOCK_N
            if n0 < N_pad:
                offs_n = n0 + tl.arange(0, BLOCK_N)
                g = tl.load(g_ptr + offs_n)
                o = tl.load(o_ptr + offs_n)
                s = _scores_nk(zt_ptr, mt_ptr, pt_ptr, c_ptr, offs_n, offs_k, N_pad, K_pad, L_pad,
                               BLOCK_N, BLOCK_K, UNROLL)
                r = g[:, None] * tl.exp(s - o[:, None])
                acc_s += tl.sum(r, axis=0)
                zp = zc
                mp = mc
                for j in tl.static_range(BLOCK_L):
                    zl = tl.load(zp + offs_n)
                    ml = tl.load(mp + offs_k)
                    d = zl[:, None] - ml[None, :]
                    t = r * d
                    hit = lane_l[:, None] == j  # compile-time index: the selects fold
                    acc_d = tl.where(hit, acc_d + tl.sum(t, axis=0)[None, :], acc_d)
                    acc_q = tl.where(hit, acc_q + tl.sum(t * d, axis=0)[None, :], acc_q)
                    zp += N_pad
                    mp += K_pad
        # Row by row (compile-time j again): no layout conversion of the accumulators.
        pp = pc
        for j in tl.static_range(BLOCK_L):
            hit = lane_l[:, None] == j
            mask = mask_k & (l0 + j < L)
            prec = tl.load(pp + offs_k)
            dst = offs_k * L + (l0 + j)
            tl.atomic_add(wd_ptr + dst, tl.sum(tl.where(hit, acc_d, 0.0), axis=0) * prec,
                          mask=mask, sem="relaxed")
            tl.atomic_add(wq_ptr + dst, tl.sum(tl.where(hit, acc_q, 0.0), axis=0) * prec,
                          mask=mask, sem="relaxed")
            pp += K_pad
        tl.atomic_add(ws_ptr + offs_k, acc_s, mask=mask_k & (l0 == 0), sem="relaxed")
        for _j in tl.static_range(BLOCK_L):
            zc += N_pad
            mc += K_pad
            pc += K_pad


# ----------------------------------------------------------------------------------------------
# launch configuration and padded operands
# ----------------------------------------------------------------------------------------------
# Under the interpreter: small blocks, so that small test shapes still cross tile and chunk
# boundaries (tests may change these).
_INTERPRET_BLOCKS = {"row_n": 16, "row_k": 8, "param_n": 8, "param_k": 16, "max_l": 4}
# On the GPU (fixed, no autotuning: no benchmarking syncs on a first call, nothing to redo inside
# torch.compile or CUDA-graph capture). Checked with Triton 3.6's ptxas for sm_90 (fp32):
#   forward 86 registers, grad_z 92, parameters 221 (BLOCK_L 32, 8 rows) or 186 (BLOCK_L 16,
#   16 rows); float64: 146, 184 and 168 (BLOCK_L 16, 4 rows); none spilling. BLOCK_L 64 would
#   spare one recomputation of s for L in (32, 64] but sits at 255 registers and spills, and
#   takes over a minute to compile.
_ROW_MAX_N, _ROW_MAX_K = 128, 32
_PARAM_MAX_K = 128
_PARAM_MAX_L = {torch.float32: 32, torch.float64: 16}


def _pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


class _Config:
    """Block sizes. Row kernels (forward, grad_z): threads along the rows, BLOCK_N = 32 * warps,
    the component tile inside each thread. Parameter kernel: threads along the components,
    BLOCK_K = 32 * warps, BLOCK_N rows and BLOCK_L dimensions inside each thread; the rows are
    split over enough programs to fill the GPU, each keeping at least a few row tiles to
    amortise its atomics."""

    def __init__(self, N: int, K: int, L: int, device: torch.device, acc: torch.dtype):
        if _INTERPRET:
            b = _INTERPRET_BLOCKS
            self.row_n, self.row_k, self.row_warps = b["row_n"], b["row_k"], 1
            self.par_n, self.par_k, self.par_warps = b["param_n"], b["param_k"], 1
            self.block_l = min(b["max_l"], _pow2(L))
            target = 4
        else:
            self.row_n = max(32, min(_ROW_MAX_N, _pow2(N)))
            self.row_k = max(8, min(_ROW_MAX_K, _pow2(K)))
            self.row_warps = self.row_n // 32
            self.par_k = max(32, min(_PARAM_MAX_K, _pow2(K)))
            self.par_warps = self.par_k // 32
            self.block_l = min(_PARAM_MAX_L[acc], _pow2(L))
            if acc == torch.float64:
                self.par_n = 8 if self.block_l <= 8 else 4
            else:
                self.par_n = 16 if self.block_l <= 16 else 8
            index = device.index if device.index is not None else torch.cuda.current_device()
            target = 4 * _num_sms(index)
        self.unroll = min(8, self.block_l)
        self.N_pad = _round_up(N, max(self.row_n, self.par_n))
        self.K_pad = _round_up(K, max(self.row_k, self.par_k))
        self.L_pad = _round_up(L, self.block_l)
        n_tiles = self.N_pad // self.par_n
        k_tiles = self.K_pad // self.par_k
        self.n_split = max(1, min(triton.cdiv(target, k_tiles), triton.cdiv(n_tiles, 4)))
        self.tiles_per_split = triton.cdiv(n_tiles, self.n_split)


def _pad_rows(x: torch.Tensor, n_pad: int, value: float) -> torch.Tensor:
    """x (N,) in the accumulation dtype, padded to n_pad with `value`, contiguous."""
    out = torch.full((n_pad,), value, dtype=x.dtype, device=x.device)
    out[: x.shape[0]].copy_(x)
    return out


class _Packed:
    """Transposed, zero-padded operands in the accumulation dtype: z (L_pad, N_pad), means and
    prec (L_pad, K_pad), consts (K_pad,) with -inf padding."""

    def __init__(self, z2d, means_acc, prec, consts, cfg: _Config):
        acc = prec.dtype
        N, L = z2d.shape
        K = means_acc.shape[0]
        dev = z2d.device
        self.zt = torch.zeros((cfg.L_pad, cfg.N_pad), dtype=acc, device=dev)
        self.zt[:L, :N].copy_(z2d.t())
        self.mt = torch.zeros((cfg.L_pad, cfg.K_pad), dtype=acc, device=dev)
        self.mt[:L, :K].copy_(means_acc.t())
        self.pt = torch.zeros((cfg.L_pad, cfg.K_pad), dtype=acc, device=dev)
        self.pt[:L, :K].copy_(prec.t())
        self.c = _pad_rows(consts.to(acc), cfg.K_pad, float("-inf"))


def _sizes(*sizes: int):
    """Integer kernel arguments. The interpreter wraps ints in 1-element arrays, which numpy >= 2.4
    refuses to turn into a Python int for range(); passed as constexpr objects they stay ints
    there (the compiled kernels get plain ints and do not specialise on them)."""
    return tuple(tl.constexpr(s) for s in sizes) if _INTERPRET else sizes


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _forward_packed(packed: _Packed, cfg: _Config, N: int, out: torch.Tensor) -> None:
    _log_mog_fwd_kernel[(cfg.N_pad // cfg.row_n,)](
        packed.zt, packed.mt, packed.pt, packed.c, out, *_sizes(N, cfg.N_pad, cfg.K_pad, cfg.L_pad),
        BLOCK_N=cfg.row_n, BLOCK_K=cfg.row_k, UNROLL=cfg.unroll, num_warps=cfg.row_warps,
        num_stages=1)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------
def log_mog_forward(z2d: torch.Tensor, means_acc: torch.Tensor, prec: torch.Tensor,
                    consts: torch.Tensor) -> torch.Tensor:
    """out (N,) in the accumulation dtype (that of prec) for z2d (N, L) contiguous."""
    N, L = z2d.shape
    K = means_acc.shape[0]
    out = torch.empty(N, dtype=prec.dtype, device=z2d.device)
    if N == 0:
        return out
    cfg = _Config(N, K, L, z2d.device, prec.dtype)
    packed = _Packed(z2d, means_acc, prec, consts, cfg)
    with _device_guard(z2d):
        _forward_packed(packed, cfg, N, out)
    return out


def log_mog_backward(grad_acc: torch.Tensor, z2d: torch.Tensor, means_acc: torch.Tensor,
                     prec: torch.Tensor, consts: torch.Tensor, out_acc: torch.Tensor | None):
    """(grad_z (N, L) in z's dtype, wdiff (K, L), wsq (K, L), wsum (K,)), the last three in the
    accumulation dtype. grad_acc and out_acc: (N,) in the accumulation dtype; out_acc=None
    recomputes the forward here (what half inputs need: their saved `out` is too coarse)."""
    N, L = z2d.shape
    K = means_acc.shape[0]
    acc = prec.dtype
    dev = z2d.device
    wdiff = torch.zeros((K, L), dtype=acc, device=dev)
    wsq = torch.zeros((K, L), dtype=acc, device=dev)
    wsum = torch.zeros((K,), dtype=acc, device=dev)
    direct = z2d.dtype == acc  # else: grad_z accumulated in acc, cast afterwards
    grad_z = torch.empty((N, L), dtype=z2d.dtype if direct else acc, device=dev)
    if N == 0:
        return grad_z.to(z2d.dtype), wdiff, wsq, wsum
    cfg = _Config(N, K, L, dev, acc)
    packed = _Packed(z2d, means_acc, prec, consts, cfg)
    with _device_guard(z2d):
        if out_acc is None:
            out_acc = torch.empty(N, dtype=acc, device=dev)
            _forward_packed(packed, cfg, N, out_acc)
        g = _pad_rows(grad_acc.reshape(N).to(acc), cfg.N_pad, 0.0)
        o = _pad_rows(out_acc.reshape(N).to(acc), cfg.N_pad, float("inf"))
        scratch = torch.zeros((cfg.L_pad, cfg.N_pad), dtype=acc, device=dev)
        _log_mog_bwd_z_kernel[(cfg.N_pad // cfg.row_n,)](
            packed.zt, packed.mt, packed.pt, packed.c, g, o, scratch, grad_z,
            *_sizes(N, cfg.N_pad, cfg.K_pad, L, cfg.L_pad),
            BLOCK_N=cfg.row_n, BLOCK_K=cfg.row_k, UNROLL=cfg.unroll,
            num_warps=cfg.row_warps, num_stages=1)
        _log_mog_bwd_param_kernel[(cfg.K_pad // cfg.par_k, cfg.n_split)](
            packed.zt, packed.mt, packed.pt, packed.c, g, o, wdiff, wsq, wsum,
            *_sizes(cfg.N_pad, K, cfg.K_pad, L, cfg.L_pad, cfg.n_split, cfg.tiles_per_split),
            BLOCK_N=cfg.par_n, BLOCK_K=cfg.par_k, BLOCK_L=cfg.block_l, UNROLL=cfg.unroll,
            num_warps=cfg.par_warps, num_stages=1)
    return (grad_z if direct else grad_z.to(z2d.dtype)), wdiff, wsq, wsum


# ----------------------------------------------------------------------------------------------
# the custom ops
# ----------------------------------------------------------------------------------------------
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _precompute(logvars: torch.Tensor, logits: torch.Tensor):
    acc = _acc_dtype(logvars.dtype)
    lv = logvars.to(acc)
    prec = torch.exp(-lv).contiguous()
    consts = (torch.log_softmax(logits.to(acc), 0) - 0.5 * lv.sum(1)
              - _HALF_LOG_2PI * lv.shape[1]).contiguous()
    return prec, consts


def _check(z, means, logvars, logits) -> None:
    if z.dim() < 1 or means.dim() != 2 or means.shape[0] < 1 or means.shape[1] < 1:
        raise ValueError(f"log_mog: z must have shape (..., L) and means (K, L) with K, L >= 1, "
                         f"got z {tuple(z.shape)} and means {tuple(means.shape)}")
    K, L = means.shape
    if z.shape[-1] != L:
        raise ValueError(f"log_mog: z must have shape (..., {L}) to match means, got {tuple(z.shape)}")
    if logvars.shape != means.shape:
        raise ValueError(f"log_mog: logvars must have shape {tuple(means.shape)}, "
                         f"got {tuple(logvars.shape)}")
    if logits.shape != (K,):
        raise ValueError(f"log_mog: logits must have shape ({K},), got {tuple(logits.shape)}")
    allowed = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    for name, t in (("z", z), ("means", means), ("logvars", logvars), ("logits", logits)):
        if t.dtype not in allowed or t.dtype != z.dtype:
            raise ValueError(f"log_mog: {name} must be floating with the dtype of z ({z.dtype}), "
                             f"got {t.dtype}")
        if t.device != z.device:
            raise RuntimeError(f"log_mog: all tensors must be on one device, got {z.device} "
                               f"and {t.device}")


@torch.library.register_kernel("lvmfast::log_mog_triton", _DEVICES)
def log_mog_triton(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor,
                   logits: torch.Tensor) -> torch.Tensor:
    _check(z, means, logvars, logits)
    L = means.shape[1]
    z2d = z.reshape(-1, L).contiguous()
    if z2d.shape[0] == 0:
        return z.new_empty(z.shape[:-1])
    prec, consts = _precompute(logvars, logits)
    out = log_mog_forward(z2d, means.to(prec.dtype), prec, consts)
    return out.to(z.dtype).reshape(z.shape[:-1])


@torch.library.register_kernel("lvmfast::log_mog_triton_backward", _DEVICES)
def log_mog_triton_backward(grad: torch.Tensor, z: torch.Tensor, means: torch.Tensor,
                            logvars: torch.Tensor, logits: torch.Tensor, out: torch.Tensor):
    _check(z, means, logvars, logits)
    K, L = means.shape
    z2d = z.reshape(-1, L).contiguous()
    N = z2d.shape[0]
    if grad.numel() != N or out.numel() != N:
        raise ValueError(f"log_mog_backward: grad and out must have shape {tuple(z.shape[:-1])}, "
                         f"got {tuple(grad.shape)} and {tuple(out.shape)}")
    if N == 0:
        return (torch.zeros_like(z, memory_format=torch.contiguous_format), torch.zeros_like(means),
                torch.zeros_like(logvars), torch.zeros_like(logits))
    prec, consts = _precompute(logvars, logits)
    acc = prec.dtype
    means_acc = means.to(acc)
    g = grad.reshape(N).to(acc)
    # Half inputs: the saved `out` is too coarse for exp(s - out); the backward recomputes it.
    out_acc = None if z.dtype in (torch.float16, torch.bfloat16) else out.reshape(N).to(acc)
    grad_z, wdiff, wsq, wsum = log_mog_backward(g, z2d, means_acc, prec, consts, out_acc)
    dtype = logits.dtype
    softmax = torch.softmax(logits.to(acc), 0)
    return (grad_z.reshape(z.shape), wdiff.to(dtype).contiguous(),
            (0.5 * (wsq - wsum[:, None])).to(dtype).contiguous(),
            (wsum - softmax * wsum.sum()).to(dtype).contiguous())
