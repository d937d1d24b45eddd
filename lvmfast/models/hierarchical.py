"""Hierarchical VAEs [4.5.2]: the two-level (bottom-up) VAE and the top-down VAE.

Both have the latents z_1 (next to x) .. z_L (top) and the generative model
    p(x, z) = p(x|z_1) p(z_1|z_2) ... p(z_{L-1}|z_L) p(z_L),  p(z_L) = N(0, I),
with diagonal Gaussian conditionals. They differ in the variational posterior:
- `TwoLevelVAE`: bottom-up, q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1}). The top layers are prone
  to posterior collapse (q(z_L|.) = p(z_L), KL 0); `kl_per_layer` shows it.
- `TopDownVAE`: top-down as in NVAE, q(z_L|x) q(z_{L-1}|z_L, x) ... q(z_1|z_{>1}, x): a
  deterministic bottom-up path gives features d_1 .. d_L of x, and each posterior is a residual
  correction of that layer's prior, q(z_i|.) = N(mu_p + dmu, sigma_p^2 dsigma^2), so the KL of
  every layer is closed form given the layers above: 1/2 sum(dmu^2 / sigma_p^2 + dsigma^2 - log dsigma^2 - 1).

Both follow `lvmfast.models.VAE`'s interface (forward, elbo, log_importance_weights, sample,
encode) and add `kl_per_layer(x)`. All S samples per data point are drawn at once, as (S, B, L)
tensors. The MLPs use BatchNorm by default (`batch_norm=True`, as the book's code does): on the
digits, without it both models' top layer collapses (KL ~0.1 nats) and their test NLL is
2.5-3 nats worse (see `_HierarchicalVAE._mlp`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lvmfast.models.vae import _eval_mode, mlp
from lvmfast.nn.likelihoods import Likelihood, make_likelihood

__all__ = ["TopDownVAE", "TwoLevelVAE", "gaussian_kl", "residual_gaussian_kl"]

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z, mu, logvar):
    """log N(z | mu, diag exp(logvar)), summed over the last dimension."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p):
    """KL(N(mu_q, diag exp(logvar_q)) || N(mu_p, diag exp(logvar_p))) in closed form, summed over
    the last dimension."""
    return 0.5 * (logvar_p - logvar_q - 1 + (torch.exp(logvar_q) + (mu_q - mu_p).pow(2)) * torch.exp(-logvar_p)).sum(-1)


def residual_gaussian_kl(dmu, dlogvar, logvar_p):
    """The same KL for q = N(mu_p + dmu, exp(logvar_p + dlogvar)) against p = N(mu_p, exp(logvar_p)),
    written in the residual parameters so that nothing cancels: mu_p drops out."""
    return 0.5 * (dmu.pow(2) * torch.exp(-logvar_p) + torch.exp(dlogvar) - dlogvar - 1).sum(-1)


def _reparameterize(mu, logvar, num_samples=None, generator=None):
    """z = mu + sigma eps and log q(z) = log N(z | mu, sigma^2), from eps (no cancellation).
    With `num_samples`, (B, L) parameters give (S, B, L) samples; otherwise one per parameter row."""
    shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
    eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps, -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(-1)


def _chunk(t):
    """(mean, log-variance) halves of a network's output."""
    return t.chunk(2, dim=-1)


class _HierarchicalVAE(nn.Module):
    """Shared parts: the likelihood, the decoder p(x|z_1) and everything computed from `_terms`.

    Subclasses implement `_terms(x, S, generator) -> (log_px, kl, log_ratio)`, all (S, B) except
    `kl`, a dict layer name -> (S, B): per-layer KL estimates (closed form where available) that
    sum, in expectation, to E_q[log q(z|x) - log p(z)]; `log_ratio` is the single-sample
    log p(z) - log q(z|x) of the same draws. They also give `_prior_sample(n, generator)` -> z_1.
    """

    def __init__(self, data_dim, latent_dims, hidden, levels, likelihood, batch_norm):
        super().__init__()
        latent_dims = tuple(int(d) for d in latent_dims)
        if not latent_dims or min(latent_dims) < 1:
            raise ValueError(f"latent_dims must be a non-empty sequence of positive sizes, got {latent_dims}")
        self.data_dim, self.latent_dims, self.hidden, self.batch_norm = data_dim, latent_dims, hidden, batch_norm
        self.latent_dim = latent_dims[0]  # the size of z_1, as VAE.latent_dim
        self.likelihood = (make_likelihood(likelihood, data_dim, levels) if isinstance(likelihood, str)
                           else likelihood)
        self.decoder = self._mlp([latent_dims[0], hidden, hidden, data_dim * self.likelihood.params_per_dim])

    def _input(self, x):
        """x scaled for the encoder, in the parameters' dtype (x is often a long tensor)."""
        return self.likelihood.preprocess(x).to(self._device_dtype()[1])

    def _mlp(self, sizes, final_activation=False):
        """`mlp` with BatchNorm after every activation when `batch_norm` (as the book's hierarchical
        VAE code does). On the digits it is what makes these models generalize: in the decoder it
        regularizes (test NLL), in the top-down path it keeps the top layer from collapsing (see
        TopDownVAE)."""
        return mlp(sizes, final_activation, batch_norm=self.batch_norm)

    @property
    def layer_names(self) -> list[str]:
        return [f"z{i + 1}" for i in range(len(self.latent_dims))]

    def _terms(self, x, num_samples, generator=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def _prior_sample(self, n, generator=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def log_importance_weights(self, x, num_samples: int = 1, generator=None):
        """log p(x, z_1..z_L) - log q(z_1..z_L|x) for z ~ q: (S, B), S = num_samples [4.32]."""
        log_px, _, log_ratio = self._terms(x, num_samples, generator)
        return log_px + log_ratio

    def elbo(self, x, beta: float = 1.0, num_samples: int = 1, generator=None):
        """The ELBO per data point (B,): E_q[log p(x|z_1)] - beta * sum of the per-layer KLs,
        averaged over `num_samples` draws; `beta` < 1 is KL warm-up."""
        log_px, kl, _ = self._terms(x, num_samples, generator)
        return (log_px - beta * sum(kl.values())).mean(0)

    def forward(self, x, beta: float = 1.0):
        """The training loss: the negative ELBO averaged over the batch."""
        return -self.elbo(x, beta).mean()

    def kl_per_layer(self, x, num_samples: int = 1, generator=None) -> dict[str, torch.Tensor]:
        """Per-layer KL estimates per data point, {"z1": (B,), ..., "zL": (B,)}, averaged over
        `num_samples` draws of the layers they condition on. A layer whose KL is ~0 for every x
        has collapsed onto its prior (it carries no information about x). For a report, call it
        in eval mode under torch.no_grad() (BatchNorm then uses its running statistics)."""
        _, kl, _ = self._terms(x, num_samples, generator)
        return {name: v.mean(0) for name, v in kl.items()}

    @torch.no_grad()
    def sample(self, n: int, generator=None, mode: bool = False):
        """n ancestral samples z_L -> ... -> z_1 -> x in data space (grey levels for the categorical
        likelihood); `mode` takes the likelihood's mode at the last step. Runs in eval mode, so
        that BatchNorm uses (and does not update) its running statistics."""
        with _eval_mode(self):
            out = self.decoder(self._prior_sample(n, generator))
            return self.likelihood.mode(out) if mode else self.likelihood.sample(out, generator)

    def _device_dtype(self):
        p = next(self.parameters())
        return p.device, p.dtype


class TwoLevelVAE(_HierarchicalVAE):
    """Bottom-up hierarchical VAE [4.5.2] (two levels by default; `latent_dims` = sizes of z_1 .. z_L).

    q(z_1|x) = N(MLP(x)), q(z_{i+1}|z_i) = N(MLP(z_i)); p(z_L) = N(0, I),
    p(z_i|z_{i+1}) = N(MLP(z_{i+1})), p(x|z_1) the likelihood of MLP(z_1). Every MLP has two hidden
    layers of `hidden` units (LeakyReLU, then BatchNorm if `batch_norm`).
    The top layer's KL is closed form given z_{L-1}; the lower layers' KLs are single-sample
    estimates log q(z_i|z_{i-1}) - log p(z_i|z_{i+1}) (z_{i+1} is drawn given z_i, so no closed form).
    """

    def __init__(self, data_dim: int = 64, latent_dims=(16, 16), hidden: int = 256, levels: int = 17,
                 likelihood: str | Likelihood = "categorical", batch_norm: bool = True):
        super().__init__(data_dim, latent_dims, hidden, levels, likelihood, batch_norm)
        dims = self.latent_dims
        self.encoders = nn.ModuleList([self._mlp([data_dim, hidden, hidden, 2 * dims[0]])]
                                      + [self._mlp([dims[i], hidden, hidden, 2 * dims[i + 1]])
                                         for i in range(len(dims) - 1)])
        # priors[i] gives p(z_{i+1} | z_{i+2}) (0-based i; the top prior is N(0, I))
        self.priors = nn.ModuleList([self._mlp([dims[i + 1], hidden, hidden, 2 * dims[i]])
                                     for i in range(len(dims) - 1)])

    def _terms(self, x, num_samples, generator=None):
        names, L = self.layer_names, len(self.latent_dims)
        zs, log_qs = [], []
        mu, logvar = _chunk(self.encoders[0](self._input(x)))
        z, log_q = _reparameterize(mu, logvar, num_samples, generator)
        zs.append(z), log_qs.append(log_q)
        for enc in self.encoders[1:]:
            mu, logvar = _chunk(enc(z))
            z, log_q = _reparameterize(mu, logvar, generator=generator)
            zs.append(z), log_qs.append(log_q)
        kl = {}
        log_ratio = 0.0
        for i in range(L - 1):
            mu_p, logvar_p = _chunk(self.priors[i](zs[i + 1]))
            diff = gaussian_log_prob(zs[i], mu_p, logvar_p) - log_qs[i]
            kl[names[i]], log_ratio = -diff, log_ratio + diff
        # the top layer's KL against N(0, I) given z_{L-1} (given x when L = 1: broadcast to (S, B))
        kl[names[-1]] = gaussian_kl(mu, logvar, torch.zeros_like(mu), torch.zeros_like(logvar)).expand_as(log_qs[-1])
        log_ratio = log_ratio + gaussian_log_prob(zs[-1], 0.0, torch.zeros_like(zs[-1])) - log_qs[-1]
        log_px = self.likelihood.log_prob(x, self.decoder(zs[0]))
        return log_px, kl, log_ratio

    def _prior_sample(self, n, generator=None):
        device, dtype = self._device_dtype()
        z = torch.randn(n, self.latent_dims[-1], generator=generator, device=device, dtype=dtype)
        for prior in reversed(self.priors):
            z, _ = _reparameterize(*_chunk(prior(z)), generator=generator)
        return z

    @torch.no_grad()
    def encode(self, x):
        """The mean of q(z_1|x) per data point (B, latent_dims[0]) (in eval mode)."""
        with _eval_mode(self):
            return _chunk(self.encoders[0](self._input(x)))[0]


class TopDownVAE(_HierarchicalVAE):
    """Top-down hierarchical VAE [4.5.2] in the style of NVAE (two levels by default).

    Bottom-up (inference only): d_1 = MLP(x) (two hidden layers), d_{i+1} = MLP(d_i) (one layer).
    Top-down (shared by the generative model and the posterior): h_i = MLP(z_{i+1}) for i < L,
      prior      p(z_i|z_{i+1}) = N(mu_p, exp(logvar_p)), (mu_p, logvar_p) = Linear(h_i),
      posterior  q(z_i|z_{>i}, x) = N(mu_p + dmu, exp(logvar_p + dlogvar)), (dmu, dlogvar) = Linear([d_i, h_i]),
    and for the top, p(z_L) = N(0, I), q(z_L|x) = N(dmu, exp(dlogvar)) from d_L. Every layer's KL
    is closed form given the sampled z_{>i}. p(x|z_1) is the likelihood of MLP(z_1).
    The MLPs have LeakyReLU hidden layers, each followed by BatchNorm if `batch_norm`.
    """

    def __init__(self, data_dim: int = 64, latent_dims=(16, 16), hidden: int = 256, levels: int = 17,
                 likelihood: str | Likelihood = "categorical", batch_norm: bool = True):
        super().__init__(data_dim, latent_dims, hidden, levels, likelihood, batch_norm)
        dims, L = self.latent_dims, len(self.latent_dims)
        self.bottom_up = nn.ModuleList([self._mlp([data_dim, hidden, hidden], final_activation=True)]
                                       + [self._mlp([hidden, hidden], final_activation=True) for _ in range(L - 1)])
        self.top_posterior = nn.Linear(hidden, 2 * dims[-1])
        # index i (0-based) serves z_{i+1} given z_{i+2}, for the L - 1 lower layers
        self.top_down = nn.ModuleList([self._mlp([dims[i + 1], hidden, hidden], final_activation=True)
                                       for i in range(L - 1)])
        self.prior_heads = nn.ModuleList([nn.Linear(hidden, 2 * dims[i]) for i in range(L - 1)])
        self.posterior_heads = nn.ModuleList([nn.Linear(2 * hidden, 2 * dims[i]) for i in range(L - 1)])

    def _bottom_up(self, x):
        """The deterministic features d_1 .. d_L of x, (B, hidden) each."""
        d = [self.bottom_up[0](self._input(x))]
        for net in self.bottom_up[1:]:
            d.append(net(d[-1]))
        return d

    def _terms(self, x, num_samples, generator=None):
        names, L = self.layer_names, len(self.latent_dims)
        d = self._bottom_up(x)
        # top layer: the prior is N(0, I), so the residual parameters are q's own
        dmu, dlogvar = _chunk(self.top_posterior(d[-1]))
        z, log_q = _reparameterize(dmu, dlogvar, num_samples, generator)
        zero = torch.zeros_like(dlogvar)
        kl = {names[-1]: residual_gaussian_kl(dmu, dlogvar, zero).expand(num_samples, -1)}
        log_ratio = gaussian_log_prob(z, 0.0, zero) - log_q
        for i in reversed(range(L - 1)):
            h = self.top_down[i](z)
            mu_p, logvar_p = _chunk(self.prior_heads[i](h))
            dmu, dlogvar = _chunk(self.posterior_heads[i](torch.cat([d[i].expand(*h.shape[:-1], -1), h], -1)))
            z, log_q = _reparameterize(mu_p + dmu, logvar_p + dlogvar, generator=generator)
            kl[names[i]] = residual_gaussian_kl(dmu, dlogvar, logvar_p)
            log_ratio = log_ratio + gaussian_log_prob(z, mu_p, logvar_p) - log_q
        log_px = self.likelihood.log_prob(x, self.decoder(z))
        return log_px, {name: kl[name] for name in names}, log_ratio

    def _prior_sample(self, n, generator=None):
        device, dtype = self._device_dtype()
        z = torch.randn(n, self.latent_dims[-1], generator=generator, device=device, dtype=dtype)
        for i in reversed(range(len(self.latent_dims) - 1)):
            z, _ = _reparameterize(*_chunk(self.prior_heads[i](self.top_down[i](z))), generator=generator)
        return z

    @torch.no_grad()
    def encode(self, x):
        """The mean of q(z_1|x) along the posterior means of the layers above (B, latent_dims[0])
        (in eval mode)."""
        with _eval_mode(self):
            d = self._bottom_up(x)
            z = _chunk(self.top_posterior(d[-1]))[0]
            for i in reversed(range(len(self.latent_dims) - 1)):
                h = self.top_down[i](z)
                z = _chunk(self.prior_heads[i](h))[0] + _chunk(self.posterior_heads[i](torch.cat([d[i], h], -1)))[0]
            return z
