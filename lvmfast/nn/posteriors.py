"""Variational posteriors q(z|x) [4.4.2], amortized from the encoder's features h.

Each posterior draws S reparameterized samples per data point and returns them with log q(z|x):
`forward(h, num_samples) -> (z (S, B, L), log_q (S, B))`. Flow posteriors push a diagonal
Gaussian sample z0 through invertible maps and subtract their log-determinants,
log q(z_K|x) = log q0(z0|x) - sum_k log|det dz_k/dz_{k-1}|, so a Monte Carlo ELBO is
log p(x|z) + log p(z) - log q(z|x). The flows call the fused ops `lvmfast.householder_flow`,
`lvmfast.sylvester_flow` and `lvmfast.bjorck_orthonormalize`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def _repeat(t: torch.Tensor, S: int) -> torch.Tensor:
    """(B, ...) -> (S * B, ...), sample-major, matching z0.reshape(S * B, L)."""
    return t.unsqueeze(0).expand(S, *t.shape).reshape(S * t.shape[0], *t.shape[1:])


class Posterior(nn.Module):
    """Base class. `components(h)` gives the base distribution's parameters (for VampPriors)."""

    sphere = False

    def __init__(self, feature_dim: int, latent_dim: int):
        super().__init__()
        self.feature_dim, self.latent_dim = feature_dim, latent_dim

    def forward(self, h, num_samples: int = 1, generator=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def components(self, h):  # pragma: no cover - abstract
        raise NotImplementedError

    def mean(self, h):  # pragma: no cover - abstract
        """A representative point of q(z|x) (for pictures of the latent space)."""
        raise NotImplementedError


class GaussianPosterior(Posterior):
    """q(z|x) = N(mu(x), diag exp(logvar(x))), the reparameterization z = mu + exp(logvar / 2) eps."""

    def __init__(self, feature_dim: int, latent_dim: int):
        super().__init__(feature_dim, latent_dim)
        self.gaussian = nn.Linear(feature_dim, 2 * latent_dim)

    def gaussian_params(self, h):
        mu, logvar = self.gaussian(h).chunk(2, dim=-1)
        return mu, logvar

    def components(self, h):
        return ("gaussian", *self.gaussian_params(h))

    def base_sample(self, h, num_samples, generator=None):
        mu, logvar = self.gaussian_params(h)
        eps = torch.randn((num_samples, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        z0 = mu + torch.exp(0.5 * logvar) * eps
        log_q0 = -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(-1)
        return z0, log_q0

    def forward(self, h, num_samples=1, generator=None):
        return self.base_sample(h, num_samples, generator)

    def mean(self, h):
        return self.gaussian_params(h)[0]


class _FlowPosterior(GaussianPosterior):
    """A diagonal Gaussian followed by amortized invertible maps: subclasses give `flow_params(h)`
    (tensors with leading dim B) and `transform(z (N, L), params with leading dim N) -> (z, logdet)`."""

    def flow_params(self, h):  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, z, params):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, h, num_samples=1, generator=None):
        z0, log_q0 = self.base_sample(h, num_samples, generator)
        S, B, L = z0.shape
        params = [None if p is None else _repeat(p, S) for p in self.flow_params(h)]
        z, logdet = self.transform(z0.reshape(S * B, L), params)
        return z.reshape(S, B, L), log_q0 - logdet.reshape(S, B)

    def mean(self, h):
        return self.transform(self.gaussian_params(h)[0], self.flow_params(h))[0]


class HouseholderFlowPosterior(_FlowPosterior):
    """Householder flow: z_T = H_T ... H_1 z0 with amortized reflection vectors v_t(x) [4.58];
    volume preserving (log-determinant 0)."""

    def __init__(self, feature_dim: int, latent_dim: int, num_reflections: int = 8):
        super().__init__(feature_dim, latent_dim)
        self.num_reflections = num_reflections
        self.reflections = nn.Linear(feature_dim, num_reflections * latent_dim)

    def flow_params(self, h):
        return [self.reflections(h).reshape(h.shape[0], self.num_reflections, self.latent_dim)]

    def transform(self, z, params):
        from lvmfast import householder_flow

        return householder_flow(z, params[0]), z.new_zeros(z.shape[0])


class _SylvesterPosterior(_FlowPosterior):
    """Sylvester normalizing flows [4.63]: z <- z + Q R1 tanh(R2 Q^T z + b), `num_flows` steps,
    R1, R2 upper triangular with diagonals in (-1, 1) (tanh), so every step is invertible.
    All parameters are amortized: linear maps of the encoder features."""

    def __init__(self, feature_dim: int, latent_dim: int, num_flows: int = 4, m: int | None = None):
        super().__init__(feature_dim, latent_dim)
        self.num_flows = num_flows
        self.m = latent_dim if m is None else m
        K, M = num_flows, self.m
        self.r_full = nn.Linear(feature_dim, K * M * M)
        self.r_diag = nn.Linear(feature_dim, 2 * K * M)
        self.bias = nn.Linear(feature_dim, K * M)
        self.register_buffer("triu_mask", torch.ones(M, M).triu(1), persistent=False)

    def triangular_params(self, h):
        B, K, M = h.shape[0], self.num_flows, self.m
        full = self.r_full(h).reshape(B, K, M, M)
        d1, d2 = torch.tanh(self.r_diag(h)).reshape(B, K, 2, M).unbind(2)
        r1 = full * self.triu_mask + torch.diag_embed(d1)
        r2 = full.transpose(-1, -2) * self.triu_mask + torch.diag_embed(d2)
        return r1, r2, self.bias(h).reshape(B, K, M)

    def q_params(self, h):  # (B, K, D, M) or None
        raise NotImplementedError  # pragma: no cover

    def flow_params(self, h):
        return [*self.triangular_params(h), self.q_params(h)]

    def transform(self, z, params):
        from lvmfast import sylvester_flow

        r1, r2, b, q = params
        logdet = z.new_zeros(z.shape[0])
        for k in range(self.num_flows):
            qk = None if q is None else q[:, k]
            z, ld = sylvester_flow(z, r1[:, k], r2[:, k], b[:, k], q=qk, reverse=self._reverse(k))
            logdet = logdet + ld
        return z, logdet

    def _reverse(self, k: int) -> bool:
        return False


class SylvesterOrthogonalPosterior(_SylvesterPosterior):
    """Orthogonal SNF: Q (D x M, orthonormal columns) from the Björck iteration [4.65] applied to
    an amortized D x M matrix divided by its Frobenius norm (singular values inside (0, 1]).
    The log-determinant assumes Q^T Q = I, so it is exact to about `bjorck_tol`."""

    def __init__(self, feature_dim: int, latent_dim: int, num_flows: int = 4, m: int | None = None,
                 bjorck_steps: int = 30, bjorck_tol: float = 1e-6):
        super().__init__(feature_dim, latent_dim, num_flows, m)
        self.bjorck_steps, self.bjorck_tol = bjorck_steps, bjorck_tol
        self.q_raw = nn.Linear(feature_dim, num_flows * latent_dim * self.m)

    def q_params(self, h):
        from lvmfast import bjorck_orthonormalize

        q = self.q_raw(h).reshape(h.shape[0], self.num_flows, self.latent_dim, self.m)
        q = q / q.flatten(-2).norm(dim=-1).clamp_min(1e-12)[..., None, None]
        return bjorck_orthonormalize(q, max_steps=self.bjorck_steps, tol=self.bjorck_tol)


class SylvesterHouseholderPosterior(_SylvesterPosterior):
    """Householder SNF: Q = H_1 ... H_H (D x D) from `num_reflections` amortized reflections,
    built by applying `lvmfast.householder_flow` to the identity's columns."""

    def __init__(self, feature_dim: int, latent_dim: int, num_flows: int = 4, num_reflections: int = 8):
        super().__init__(feature_dim, latent_dim, num_flows, m=latent_dim)
        self.num_reflections = num_reflections
        self.reflections = nn.Linear(feature_dim, num_flows * num_reflections * latent_dim)

    def q_params(self, h):
        from lvmfast import householder_flow

        B, K, H, D = h.shape[0], self.num_flows, self.num_reflections, self.latent_dim
        v = self.reflections(h).reshape(B * K, 1, H, D).expand(B * K, D, H, D).reshape(B * K * D, H, D)
        eye = torch.eye(D, dtype=h.dtype, device=h.device).expand(B * K, D, D).reshape(B * K * D, D)
        cols = householder_flow(eye, v).reshape(B, K, D, D)  # [b, k, i, :] = Q e_i
        return cols.transpose(-1, -2)


class SylvesterTriangularPosterior(_SylvesterPosterior):
    """Triangular SNF: Q = I on even steps and the reversal permutation on odd ones."""

    def q_params(self, h):
        return None

    def _reverse(self, k):
        return k % 2 == 1


class VonMisesFisherPosterior(Posterior):
    """q(z|x) = vMF(mu(x), kappa(x)) on the unit sphere S^{L-1} [4.66]; kappa = softplus + 1.

    kappa starts near `init_concentration` (default 5 L): started near 1 the posterior is almost
    uniform on the sphere, the decoder learns to ignore z and training stalls in posterior collapse.
    """

    sphere = True

    def __init__(self, feature_dim: int, latent_dim: int, init_concentration: float | None = None):
        if latent_dim < 2:
            raise ValueError(f"a vMF posterior needs latent_dim >= 2, got {latent_dim}")
        super().__init__(feature_dim, latent_dim)
        self.loc = nn.Linear(feature_dim, latent_dim)
        self.concentration = nn.Linear(feature_dim, 1)
        kappa0 = 5.0 * latent_dim if init_concentration is None else init_concentration
        with torch.no_grad():  # bias = softplus^{-1}(kappa0 - 1)
            self.concentration.bias.fill_(math.log(math.expm1(max(kappa0 - 1.0, 1e-3))))

    def params(self, h):
        loc = F.normalize(self.loc(h), dim=-1)
        return loc, F.softplus(self.concentration(h)).squeeze(-1) + 1.0

    def distribution(self, h):
        from lvmfast.distributions import VonMisesFisher

        return VonMisesFisher(*self.params(h))

    def components(self, h):
        return ("vmf", *self.params(h))

    def forward(self, h, num_samples=1, generator=None):
        q = self.distribution(h)
        z = q.rsample((num_samples,))
        return z, q.log_prob(z)

    def mean(self, h):
        return self.params(h)[0]


POSTERIORS = {
    "gaussian": GaussianPosterior,
    "householder": HouseholderFlowPosterior,
    "sylvester-orthogonal": SylvesterOrthogonalPosterior,
    "sylvester-householder": SylvesterHouseholderPosterior,
    "sylvester-triangular": SylvesterTriangularPosterior,
    "vmf": VonMisesFisherPosterior,
}


def make_posterior(name: str, feature_dim: int, latent_dim: int, **kwargs) -> Posterior:
    if name not in POSTERIORS:
        raise ValueError(f"unknown posterior {name!r}; expected one of {tuple(POSTERIORS)}")
    return POSTERIORS[name](feature_dim, latent_dim, **kwargs)
