"""Pure-torch DDPM forward and reverse steps [4.98]-[4.102]: readable, float64-capable.

Coefficients come from the schedule's float64 betas and are cast to the computing dtype
(float64 for float64 inputs, float32 otherwise) at the end, as the kernels' tables are.
`t` is a (B,) long tensor of 0-based steps, one per sample (the first dim of x).
"""
from __future__ import annotations

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_sample(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """values[t] (float64, (T,)) cast to x's computing dtype, shaped (B, 1, ..., 1) against x."""
    return values[t].to(_compute_dtype(x)).reshape(-1, *([1] * (x.dim() - 1)))


def check_t(t: torch.Tensor, T: int) -> None:
    """ValueError for a step outside [0, T-1] (CPU only: on CUDA the gather asserts on device)."""
    if t.device.type == "cpu" and t.numel() and not torch.compiler.is_compiling():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= T:
            raise ValueError(f"t must lie in [0, {T - 1}] (T = {T}), got values in [{lo}, {hi}]")


def _schedule64(schedule):
    betas = schedule._betas64
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, 0)
    alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    return betas, alphas, alphas_cumprod, alphas_cumprod_prev


def q_sample(x0, t, schedule, noise=None, generator=None):
    """[4.98] xt = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise. Returns (xt, noise)."""
    check_t(t, schedule.num_steps)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    _, _, abar, _ = _schedule64(schedule)
    dt = _compute_dtype(x0)
    xt = _per_sample(abar.sqrt(), t, x0) * x0.to(dt) + _per_sample((1 - abar).sqrt(), t, x0) * noise.to(dt)
    return xt.to(x0.dtype), noise


def forward_chain(x, betas, generator=None):
    """z_i = sqrt(1 - beta_i) z_{i-1} + sqrt(beta_i) eps_i, z_0 = x; returns (T, *x.shape)."""
    dt = _compute_dtype(x)
    z = x.to(dt)
    b = betas.to(dt)
    out = []
    for i in range(betas.shape[0]):
        eps = torch.randn(x.shape, generator=generator, dtype=dt, device=x.device)
        z = torch.sqrt(1 - b[i]) * z + torch.sqrt(b[i]) * eps
        out.append(z)
    if not out:
        return x.new_empty((0, *x.shape))
    return torch.stack(out).to(x.dtype)


def q_posterior(x0, xt, t, schedule):
    """[4.99]-[4.101]: mean and variance of q(x_{t-1} | x_t, x_0).

    mean = beta_t sqrt(abar_{t-1}) / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) xt
    variance = beta_t (1 - abar_{t-1}) / (1 - abar_t), shaped (B, 1, ..., 1) against x0.
    With abar_{-1} = 1: at t = 0 the mean is x0 and the variance 0.
    """
    check_t(t, schedule.num_steps)
    betas, alphas, abar, abar_prev = _schedule64(schedule)
    dt = _compute_dtype(x0)
    coef_x0 = betas * abar_prev.sqrt() / (1 - abar)
    coef_xt = alphas.sqrt() * (1 - abar_prev) / (1 - abar)
    variance = betas * (1 - abar_prev) / (1 - abar)
    mean = _per_sample(coef_x0, t, x0) * x0.to(dt) + _per_sample(coef_xt, t, x0) * xt.to(dt)
    return mean.to(x0.dtype), _per_sample(variance, t, x0).to(x0.dtype)


def p_step(xt, eps_pred, t, schedule, noise=None, generator=None):
    """One DDPM reverse step [4.102] with the noise-prediction parameterization:
    1/sqrt(alpha_t) (xt - beta_t / sqrt(1 - abar_t) eps_pred) + sqrt(beta~_t) noise (t > 0)."""
    check_t(t, schedule.num_steps)
    if noise is None:
        noise = torch.randn(xt.shape, generator=generator, dtype=xt.dtype, device=xt.device)
    betas, alphas, abar, abar_prev = _schedule64(schedule)
    dt = _compute_dtype(xt)
    sigma = (betas * (1 - abar_prev) / (1 - abar)).sqrt()
    mean = (xt.to(dt) - _per_sample(betas / (1 - abar).sqrt(), t, xt) * eps_pred.to(dt)) \
        / _per_sample(alphas.sqrt(), t, xt)
    noisy = _per_sample(sigma, t, xt) * noise.to(dt)
    t_positive = (t > 0).reshape(-1, *([1] * (xt.dim() - 1)))
    return torch.where(t_positive, mean + noisy, mean).to(xt.dtype)
