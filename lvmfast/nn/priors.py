"""Priors p(z) for VAEs [4.4.1]: standard Gaussian, mixture of Gaussians, VampPrior, GTM,
GTM-VampPrior and a RealNVP flow, plus the uniform distribution on the sphere for vMF posteriors.

Every prior has `log_prob(z) -> z.shape[:-1]` (the full log-density, summed over the latent
dimensions) and `sample(n, generator=None) -> (n, L)`. Mixture priors evaluate the whole mixture
with the fused `lvmfast.log_mog` (never a per-dimension log-sum-exp) and sample with standard
deviation exp(0.5 * logvar), all vectorized.
"""
from __future__ import annotations

import math

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def _std_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


def _randn(shape, ref: torch.Tensor, generator=None) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=ref.device, dtype=ref.dtype)


def _sample_mog(n, means, logvars, logits, generator=None) -> torch.Tensor:
    """n draws of a diagonal Gaussian mixture: a component per draw, then mean + std * eps."""
    k = torch.multinomial(torch.softmax(logits.detach(), 0), n, replacement=True, generator=generator)
    eps = _randn((n, means.shape[1]), means, generator)
    return means[k] + torch.exp(0.5 * logvars[k]) * eps


def _log_mog(z, means, logvars, logits):
    from lvmfast import log_mog  # imported at call time: the public fused op

    return log_mog(z, means, logvars, logits)


class Prior(nn.Module):
    """Base class: a density over R^L (or the sphere S^{L-1} for `HypersphericalUniformPrior`)."""

    def __init__(self, latent_dim: int):
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim = latent_dim

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, n: int, generator=None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class StandardGaussianPrior(Prior):
    """p(z) = N(0, I)."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.register_buffer("_dummy", torch.zeros(()), persistent=False)

    def log_prob(self, z):
        return _std_normal_log_prob(z)

    def sample(self, n, generator=None):
        return _randn((n, self.latent_dim), self._dummy, generator)


class HypersphericalUniformPrior(Prior):
    """The uniform density on the unit sphere S^{L-1} in R^L (the natural prior of vMF posteriors)."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.register_buffer("_dummy", torch.zeros(()), persistent=False)
        m = latent_dim
        # surface area of S^{m-1}: 2 pi^{m/2} / Gamma(m/2)
        self.log_area = math.log(2) + 0.5 * m * math.log(math.pi) - math.lgamma(0.5 * m)

    def log_prob(self, z):
        return torch.full(z.shape[:-1], -self.log_area, dtype=z.dtype, device=z.device)

    def sample(self, n, generator=None):
        eps = _randn((n, self.latent_dim), self._dummy, generator)
        return eps / eps.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class MixtureOfGaussiansPrior(Prior):
    """p(z) = sum_k w_k N(z | mu_k, diag exp(logvar_k)) with learnable means, variances, weights [4.47]."""

    def __init__(self, latent_dim: int, num_components: int = 16, init_scale: float = 1.0):
        super().__init__(latent_dim)
        self.means = nn.Parameter(init_scale * torch.randn(num_components, latent_dim))
        self.logvars = nn.Parameter(torch.zeros(num_components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(num_components))

    def log_prob(self, z):
        return _log_mog(z, self.means, self.logvars, self.logits)

    def sample(self, n, generator=None):
        return _sample_mog(n, self.means, self.logvars, self.logits, generator)


class _EncodedMixturePrior(Prior):
    """A uniform mixture of the variational posteriors of pseudo-inputs u_k (VampPrior [4.50]).

    The VAE attaches `components(u) -> ("gaussian", mean, logvar)` or `("vmf", loc, kappa)`, its
    encoder followed by the posterior's base distribution; the mixture is then over diagonal
    Gaussians (evaluated by `log_mog`) or over von Mises-Fisher densities on the sphere.
    """

    def attach(self, components) -> None:
        # A plain attribute, not a submodule: the encoder's parameters belong to the VAE.
        object.__setattr__(self, "_components", components)

    def pseudo_inputs(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def components(self):
        fn = getattr(self, "_components", None)
        if fn is None:
            raise RuntimeError(f"{type(self).__name__} needs an encoder: construct it through "
                               "lvmfast.models.VAE or call .attach(components_fn) first")
        return fn(self.pseudo_inputs())

    def log_prob(self, z):
        kind, a, b = self.components()
        K = a.shape[0]
        if kind == "gaussian":
            return _log_mog(z, a, b, torch.zeros(K, dtype=a.dtype, device=a.device))
        from lvmfast.distributions import VonMisesFisher

        lp = VonMisesFisher(a, b).log_prob(z.unsqueeze(-2))  # (..., K): K is small next to L here
        return torch.logsumexp(lp, -1) - math.log(K)

    def sample(self, n, generator=None):
        kind, a, b = self.components()
        K = a.shape[0]
        k = torch.randint(K, (n,), generator=generator, device=a.device)
        if kind == "gaussian":
            return a[k] + torch.exp(0.5 * b[k]) * _randn((n, a.shape[1]), a, generator)
        from lvmfast.distributions import VonMisesFisher

        return VonMisesFisher(a[k], b[k]).sample()


class VampPrior(_EncodedMixturePrior):
    """VampPrior: p(z) = 1/K sum_k q(z | u_k) with K learnable pseudo-inputs u_k in data space [4.50].

    `init_data` (N, D) in the encoder's input scale initializes the pseudo-inputs as K random
    training points plus Gaussian noise of `init_noise` times the data's standard deviation
    (a VampPrior started from pure noise trains poorly); without it they start near 0.5.
    """

    def __init__(self, latent_dim: int, data_dim: int, num_components: int = 500,
                 init_data: torch.Tensor | None = None, init_noise: float = 0.05, generator=None):
        super().__init__(latent_dim)
        if init_data is not None:
            init_data = init_data.detach().float().reshape(init_data.shape[0], -1)
            if init_data.shape[1] != data_dim:
                raise ValueError(f"init_data must have shape (N, {data_dim}), got {tuple(init_data.shape)}")
            idx = torch.randint(init_data.shape[0], (num_components,), generator=generator)
            scale = init_noise * init_data.std().clamp_min(1e-6)
            u = init_data[idx] + scale * torch.randn(num_components, data_dim, generator=generator)
        else:
            u = 0.5 + init_noise * torch.randn(num_components, data_dim, generator=generator)
        self.u = nn.Parameter(u)

    def pseudo_inputs(self):
        return self.u


def _grid(points_per_side: int, dims: int = 2, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    axes = [torch.linspace(low, high, points_per_side)] * dims
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, dims)


class GTMPrior(Prior):
    """Generative topographic mapping prior: a uniform mixture whose K = g^2 Gaussian components
    are a neural map of a regular g x g grid in [-1, 1]^2 (means and log-variances) [4.4.1]."""

    def __init__(self, latent_dim: int, points_per_side: int = 10, hidden: int = 256):
        super().__init__(latent_dim)
        self.register_buffer("grid", _grid(points_per_side))
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(), nn.Linear(hidden, 2 * latent_dim))

    def components(self):
        out = self.net(self.grid)
        means, logvars = out.chunk(2, dim=-1)
        return means, logvars, torch.zeros_like(means[:, 0])

    def log_prob(self, z):
        return _log_mog(z, *self.components())

    def sample(self, n, generator=None):
        return _sample_mog(n, *self.components(), generator=generator)


class GTMVampPrior(_EncodedMixturePrior):
    """VampPrior whose pseudo-inputs come from a GTM: a neural map of a g x g grid into data
    space (a sigmoid scaled to the encoder's input range), encoded by the VAE's encoder."""

    def __init__(self, latent_dim: int, data_dim: int, points_per_side: int = 10, hidden: int = 256,
                 input_range: tuple[float, float] = (0.0, 1.0)):
        super().__init__(latent_dim)
        self.low, self.high = input_range
        self.register_buffer("grid", _grid(points_per_side))
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(), nn.Linear(hidden, data_dim), nn.Sigmoid())

    def pseudo_inputs(self):
        return self.low + (self.high - self.low) * self.net(self.grid)


class _Coupling(nn.Module):
    """RealNVP affine coupling: the last L - d dims are scaled and shifted given the first d."""

    def __init__(self, latent_dim: int, hidden: int):
        super().__init__()
        self.d = latent_dim // 2
        out = latent_dim - self.d
        self.scale = nn.Sequential(nn.Linear(self.d, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden),
                                   nn.LeakyReLU(), nn.Linear(hidden, out), nn.Tanh())
        self.shift = nn.Sequential(nn.Linear(self.d, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden),
                                   nn.LeakyReLU(), nn.Linear(hidden, out))

    def forward(self, u):  # base -> data direction
        a, b = u[..., :self.d], u[..., self.d:]
        b = b * torch.exp(self.scale(a)) + self.shift(a)
        return torch.cat([a, b], -1).flip(-1)

    def inverse(self, y):  # data -> base direction, with log|det d(base)/d(data)|
        y = y.flip(-1)
        a, b = y[..., :self.d], y[..., self.d:]
        s = self.scale(a)
        b = (b - self.shift(a)) * torch.exp(-s)
        return torch.cat([a, b], -1), -s.sum(-1)


class FlowPrior(Prior):
    """RealNVP prior: z = f(eps), eps ~ N(0, I), f a chain of affine couplings with reversals.

    log p(z) = log N(f^{-1}(z)) + log|det J_{f^{-1}}(z)|, the log-determinant counted once.
    """

    def __init__(self, latent_dim: int, num_flows: int = 3, hidden: int = 256):
        if latent_dim < 2:
            raise ValueError(f"FlowPrior needs latent_dim >= 2, got {latent_dim}")
        super().__init__(latent_dim)
        self.couplings = nn.ModuleList(_Coupling(latent_dim, hidden) for _ in range(num_flows))

    def inverse(self, z):
        logdet = z.new_zeros(z.shape[:-1])
        for layer in reversed(self.couplings):
            z, ld = layer.inverse(z)
            logdet = logdet + ld
        return z, logdet

    def log_prob(self, z):
        eps, logdet = self.inverse(z)
        return _std_normal_log_prob(eps) + logdet

    def sample(self, n, generator=None):
        ref = next(self.parameters())
        u = _randn((n, self.latent_dim), ref, generator)
        for layer in self.couplings:
            u = layer(u)
        return u


PRIORS = ("standard", "mog", "vampprior", "gtm", "gtm-vampprior", "flow")


def make_prior(name: str, latent_dim: int, data_dim: int | None = None, init_data=None,
               sphere: bool = False, input_range: tuple[float, float] = (0.0, 1.0), **kwargs) -> Prior:
    """A prior by its command-line name. With `sphere=True` (vMF posteriors) "standard" is the
    uniform distribution on the sphere; VampPriors then mix vMF components. `init_data` and
    `input_range` describe the encoder's inputs (for the VampPriors' pseudo-inputs)."""
    if name == "standard":
        return HypersphericalUniformPrior(latent_dim) if sphere else StandardGaussianPrior(latent_dim)
    if name == "mog":
        return MixtureOfGaussiansPrior(latent_dim, **kwargs)
    if name == "vampprior":
        return VampPrior(latent_dim, data_dim, init_data=init_data, **kwargs)
    if name == "gtm":
        return GTMPrior(latent_dim, **kwargs)
    if name == "gtm-vampprior":
        return GTMVampPrior(latent_dim, data_dim, input_range=input_range, **kwargs)
    if name == "flow":
        return FlowPrior(latent_dim, **kwargs)
    raise ValueError(f"unknown prior {name!r}; expected one of {PRIORS}")
