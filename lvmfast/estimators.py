"""Likelihood estimators for VAE-family models.

A VAE-family model provides `log_importance_weights(x, num_samples) -> (S, N)`, the values
log p(x, z_s) - log q(z_s | x) for z_s ~ q(z|x).
"""
from __future__ import annotations

import math

import torch

_ROWS_PER_PASS = 1 << 15  # (sample, data point) pairs per forward pass: bounds the memory


@torch.no_grad()
def importance_sampling(model, x, num_samples: int = 1000, batch_size: int | None = None):
    """(negative IWAE bound, negative ELBO) per data point from the same `num_samples` draws.

    The S samples are processed in chunks with a running log-sum-exp (and a running mean for the
    ELBO); data points are vectorized, `batch_size` of them per pass (default: all).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    was_training = model.training
    model.eval()
    try:
        nll, neg_elbo = [], []
        step = x.shape[0] if batch_size is None else batch_size
        for start in range(0, x.shape[0], max(step, 1)):
            xb = x[start:start + step]
            chunk = max(1, _ROWS_PER_PASS // max(xb.shape[0], 1))
            lse = xb.new_full((xb.shape[0],), -math.inf, dtype=torch.float64)
            total = xb.new_zeros((xb.shape[0],), dtype=torch.float64)
            for s in range(0, num_samples, chunk):
                lw = model.log_importance_weights(xb, min(chunk, num_samples - s)).double()
                lse = torch.logaddexp(lse, torch.logsumexp(lw, 0))
                total += lw.sum(0)
            nll.append((math.log(num_samples) - lse).to(lw.dtype))
            neg_elbo.append((-total / num_samples).to(lw.dtype))
        return torch.cat(nll), torch.cat(neg_elbo)
    finally:
        model.train(was_training)


def iwae_nll(model, x, num_samples: int = 1000, batch_size: int | None = None) -> torch.Tensor:
    """Importance-weighted negative log-likelihood [4.32], in nats, per data point (N,):
    -log (1/S) sum_s p(x, z_s) / q(z_s|x), z_s ~ q(z|x). An upper bound on -log p(x) that
    tightens as S grows; `batch_size` data points per pass (default: all)."""
    return importance_sampling(model, x, num_samples, batch_size)[0]


def neg_elbo(model, x, num_samples: int = 1, batch_size: int | None = None) -> torch.Tensor:
    """The negative ELBO per data point (N,), a Monte Carlo average over `num_samples` draws."""
    return importance_sampling(model, x, num_samples, batch_size)[1]
