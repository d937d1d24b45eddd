"""Likelihoods p(x|z) for VAE decoders: categorical (grey levels), discretized logistic mixture
(grey levels), Bernoulli and Gaussian.

A likelihood knows how many decoder outputs it needs per data dimension (`params_per_dim`),
how to scale data for the encoder (`preprocess`), its log-probability summed over the data
dimensions, and how to sample (vectorized, with an optional generator).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Likelihood(nn.Module):
    params_per_dim = 1
    input_range = (0.0, 1.0)  # range of the encoder's inputs (GTM-VampPrior pseudo-inputs live there)

    def __init__(self, data_dim: int):
        super().__init__()
        self.data_dim = data_dim

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() if not x.is_floating_point() else x

    def log_prob(self, x, out):  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, out, generator=None):  # pragma: no cover - abstract
        raise NotImplementedError


class CategoricalLikelihood(Likelihood):
    """Independent categoricals over `levels` grey levels per pixel (17 for the digits).
    The encoder sees the grey levels as they are, 0 .. levels - 1 (as the book's code does;
    on the digits this trains to a better likelihood than inputs rescaled to [0, 1])."""

    def __init__(self, data_dim: int, levels: int = 17):
        super().__init__(data_dim)
        self.levels = self.params_per_dim = levels
        self.input_range = (0.0, float(levels - 1))

    def logits(self, out):
        return out.reshape(*out.shape[:-1], self.data_dim, self.levels)

    def log_prob(self, x, out):
        logp = torch.log_softmax(self.logits(out), -1)
        x = x.long().expand(*out.shape[:-1], self.data_dim)
        return logp.gather(-1, x.unsqueeze(-1)).squeeze(-1).sum(-1)

    def sample(self, out, generator=None):
        logits = self.logits(out)
        u = torch.rand(logits.shape, generator=generator, device=out.device, dtype=out.dtype)
        return (logits - torch.log(-torch.log(u.clamp_min(1e-20)))).argmax(-1)  # Gumbel-max

    def mode(self, out):
        return self.logits(out).argmax(-1)


class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli pixels (binary data); the decoder outputs logits."""

    def log_prob(self, x, out):
        x = x.to(out.dtype).expand_as(out)
        return -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)

    def sample(self, out, generator=None):
        u = torch.rand(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        return (u < torch.sigmoid(out)).long()

    def mode(self, out):
        return (out > 0).long()


class GaussianLikelihood(Likelihood):
    """x ~ N(decoder mean, diag exp(logvar)) with a learned (or fixed) per-dimension log-variance."""

    def __init__(self, data_dim: int, logvar: float = 0.0, learn_logvar: bool = True):
        super().__init__(data_dim)
        logvar = torch.full((data_dim,), float(logvar))
        if learn_logvar:
            self.logvar = nn.Parameter(logvar)
        else:
            self.register_buffer("logvar", logvar)

    def log_prob(self, x, out):
        x = x.to(out.dtype)
        return -0.5 * ((x - out).pow(2) * torch.exp(-self.logvar) + self.logvar + math.log(2 * math.pi)).sum(-1)

    def sample(self, out, generator=None):
        eps = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        return out + torch.exp(0.5 * self.logvar) * eps

    def mode(self, out):
        return out


class DiscretizedLogisticMixtureLikelihood(Likelihood):
    """Independent pixels, each a mixture of `components` discretized logistics over the grey
    levels 0 .. levels - 1 (as PixelCNN++ does for 256 levels): the levels are mapped to
    [-1, 1]; level k gets the logistic mass of [x_k - h, x_k + h], h = 1 / (levels - 1), and the
    two end levels the tails. An ordinal likelihood: 3 `components` decoder outputs per pixel
    (mixture logits, means, log-scales) instead of `levels`, and neighbouring grey levels share
    their probability smoothly. The encoder sees the grey levels as they are (as for the
    categorical likelihood)."""

    def __init__(self, data_dim: int, levels: int = 17, components: int = 3):
        super().__init__(data_dim)
        if levels < 2 or components < 1:
            raise ValueError(f"need levels >= 2 and components >= 1, got {levels}, {components}")
        self.levels, self.components = levels, components
        self.params_per_dim = 3 * components
        self.input_range = (0.0, float(levels - 1))

    def _params(self, out):
        out = out.reshape(*out.shape[:-1], self.data_dim, 3, self.components)
        return torch.log_softmax(out[..., 0, :], -1), out[..., 1, :], out[..., 2, :].clamp_min(-7.0)

    def _level_log_probs(self, x, log_w, mu, log_s):
        """log p(level x) per pixel, x (..., D, 1) broadcast against the (..., D, M) parameters."""
        h = 1.0 / (self.levels - 1)
        xs = 2.0 * h * x.to(mu.dtype) - 1.0
        centered, inv_s = xs - mu, torch.exp(-log_s)
        plus_in, min_in = inv_s * (centered + h), inv_s * (centered - h)
        log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid(plus_in): level 0
        log_one_minus_cdf_min = -F.softplus(min_in)  # log (1 - sigmoid(min_in)): the top level
        # sigmoid(a) - sigmoid(b) computed on the side of the logistic where it does not cancel
        delta = torch.where(centered > 0, torch.sigmoid(-min_in) - torch.sigmoid(-plus_in),
                            torch.sigmoid(plus_in) - torch.sigmoid(min_in))
        mid_in = inv_s * centered
        log_pdf_mid = mid_in - log_s - 2.0 * F.softplus(mid_in) + math.log(2.0 * h)
        log_mid = torch.where(delta > 1e-5, torch.log(delta.clamp_min(1e-12)), log_pdf_mid)
        lp = torch.where(x == 0, log_cdf_plus, torch.where(x == self.levels - 1, log_one_minus_cdf_min, log_mid))
        return torch.logsumexp(lp + log_w, -1)

    def log_prob(self, x, out):
        log_w, mu, log_s = self._params(out)
        x = x.long().expand(*out.shape[:-1], self.data_dim).unsqueeze(-1)
        return self._level_log_probs(x, log_w, mu, log_s).sum(-1)

    def level_log_probs(self, out):
        """log p(x_d = k) for every level k: (..., D, levels) (sums to one over k)."""
        log_w, mu, log_s = self._params(out)
        k = torch.arange(self.levels, device=out.device).view(self.levels, *([1] * (mu.dim() - 1)), 1)
        lp = self._level_log_probs(k, log_w.unsqueeze(0), mu.unsqueeze(0), log_s.unsqueeze(0))
        return lp.movedim(0, -1)

    def sample(self, out, generator=None):
        logits = self.level_log_probs(out)
        u = torch.rand(logits.shape, generator=generator, device=out.device, dtype=out.dtype)
        return (logits - torch.log(-torch.log(u.clamp_min(1e-20)))).argmax(-1)  # Gumbel-max

    def mode(self, out):
        return self.level_log_probs(out).argmax(-1)


LIKELIHOODS = ("categorical", "bernoulli", "gaussian", "discretized-logistic")


def make_likelihood(name: str, data_dim: int, levels: int = 17, components: int = 3) -> Likelihood:
    """`components`: mixture components of the discretized logistic (other likelihoods ignore it)."""
    if name == "discretized-logistic":
        return DiscretizedLogisticMixtureLikelihood(data_dim, levels, components)
    if name == "categorical":
        return CategoricalLikelihood(data_dim, levels)
    if name == "bernoulli":
        return BernoulliLikelihood(data_dim)
    if name == "gaussian":
        return GaussianLikelihood(data_dim)
    raise ValueError(f"unknown likelihood {name!r}; expected one of {LIKELIHOODS}")
