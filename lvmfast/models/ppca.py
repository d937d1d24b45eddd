"""Probabilistic PCA (Tipping and Bishop, 1999): x = W z + b + sigma eps, z ~ N(0, I_q).

The marginal is N(x | b, C), C = W W^T + sigma2 I [4.6]; the posterior is
p(z | x) = N(M^{-1} W^T (x - b), sigma2 M^{-1}), M = W^T W + sigma2 I [4.7].
The maximum-likelihood fit is closed form: with the eigen-decomposition S = U diag(lambda) U^T
of the sample covariance (normalized by N - 1, as scikit-learn's PCA does),
    sigma2 = mean of the D - q discarded eigenvalues,  W = U_q (diag(lambda_q) - sigma2 I)^{1/2}.
Everything is float64; the (D, D) covariance is never formed for log_prob (Woodbury identity).
"""
from __future__ import annotations

import math

import torch

__all__ = ["PPCA"]


class PPCA(torch.nn.Module):
    """Probabilistic PCA with `n_components` latent dimensions, fitted in closed form.

    After `fit(X)`: `W` (D, q), `b` (D,), `sigma2` (0-dim tensor), all float64 buffers (they move
    with `.to(device)`). `log_prob` equals scikit-learn's `PCA(n_components).score_samples` when
    N > D (scikit-learn averages the discarded variances over min(N, D) - q of them).
    """

    def __init__(self, n_components: int):
        super().__init__()
        if not isinstance(n_components, int) or isinstance(n_components, bool) or n_components < 1:
            raise ValueError(f"n_components must be an integer >= 1, got {n_components!r}")
        self.n_components = n_components
        self.register_buffer("W", None)
        self.register_buffer("b", None)
        self.register_buffer("sigma2", None)

    # -- fitting --------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, X: torch.Tensor) -> PPCA:
        X = self._as_data(X, "X", check_dim=False)
        n, d = X.shape
        q = self.n_components
        if n < 2:
            raise ValueError(f"X must have at least 2 rows to estimate a covariance, got shape {tuple(X.shape)}")
        if q >= d:
            raise ValueError(f"n_components must be < D = X.shape[1] (the noise variance needs a "
                             f"discarded direction), got n_components={q} for X of shape {tuple(X.shape)}")
        self.b = X.mean(0)
        centered = X - self.b
        cov = centered.T @ centered / (n - 1)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
        self.sigma2 = evals[q:].mean()
        scale = torch.sqrt((evals[:q] - self.sigma2).clamp_min(0.0))
        self.W = evecs[:, :q] * scale
        return self

    # -- model ----------------------------------------------------------------------------------
    def _check_fitted(self):
        if self.W is None:
            raise RuntimeError("PPCA is not fitted: call fit(X) first")

    def _as_data(self, X, name="X", check_dim=True) -> torch.Tensor:
        if not torch.is_tensor(X):
            X = torch.as_tensor(X)
        if X.dim() != 2:
            raise ValueError(f"{name} must have shape (N, D), got {tuple(X.shape)}")
        if check_dim and X.shape[1] != self.W.shape[0]:
            raise ValueError(f"{name} must have shape (N, {self.W.shape[0]}), got {tuple(X.shape)}")
        if check_dim and X.device != self.W.device:
            raise RuntimeError(f"{name} is on {X.device} but the model is on {self.W.device}")
        return X.to(torch.float64)

    def _m_cholesky(self) -> torch.Tensor:
        q = self.W.shape[1]
        m = self.W.T @ self.W + self.sigma2 * torch.eye(q, dtype=self.W.dtype, device=self.W.device)
        return torch.linalg.cholesky(m)

    def covariance(self) -> torch.Tensor:
        """C = W W^T + sigma2 I, (D, D)."""
        self._check_fitted()
        d = self.W.shape[0]
        return self.W @ self.W.T + self.sigma2 * torch.eye(d, dtype=self.W.dtype, device=self.W.device)

    def log_prob(self, X: torch.Tensor) -> torch.Tensor:
        """Exact marginal log-likelihood log N(x | b, W W^T + sigma2 I) per row: (N,)."""
        self._check_fitted()
        X = self._as_data(X)
        d = self.W.shape[0]
        centered = X - self.b
        chol = self._m_cholesky()
        # C^{-1} = (I - W M^{-1} W^T) / sigma2 and det C = sigma2^{D-q} det M.
        proj = torch.linalg.solve_triangular(chol, (centered @ self.W).T, upper=False)  # L^{-1} W^T x
        maha = ((centered * centered).sum(-1) - (proj * proj).sum(0)) / self.sigma2
        q = self.W.shape[1]
        logdet = (d - q) * torch.log(self.sigma2) + 2.0 * torch.log(torch.diagonal(chol)).sum()
        return -0.5 * (d * math.log(2 * math.pi) + logdet + maha)

    def posterior(self, X: torch.Tensor):
        """p(z | x) = N(mean, cov): mean (N, q) = M^{-1} W^T (x - b), cov (q, q) = sigma2 M^{-1}
        (the same for every x)."""
        self._check_fitted()
        X = self._as_data(X)
        chol = self._m_cholesky()
        mean = torch.cholesky_solve(((X - self.b) @ self.W).T, chol).T
        cov = self.sigma2 * torch.cholesky_inverse(chol)
        return mean, cov

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws x = W z + b + sigma eps: (n, D) float64."""
        self._check_fitted()
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        d, q = self.W.shape
        opts = {"dtype": self.W.dtype, "device": self.W.device, "generator": generator}
        z = torch.randn(n, q, **opts)
        eps = torch.randn(n, d, **opts)
        return z @ self.W.T + self.b + torch.sqrt(self.sigma2) * eps

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.log_prob(X)
