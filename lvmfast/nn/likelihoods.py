"""Likelihoods p(x|z) for VAE decoders: categorical (grey levels), Bernoulli and Gaussian.

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


LIKELIHOODS = ("categorical", "bernoulli", "gaussian")


def make_likelihood(name: str, data_dim: int, levels: int = 17) -> Likelihood:
    if name == "categorical":
        return CategoricalLikelihood(data_dim, levels)
    if name == "bernoulli":
        return BernoulliLikelihood(data_dim)
    if name == "gaussian":
        return GaussianLikelihood(data_dim)
    raise ValueError(f"unknown likelihood {name!r}; expected one of {LIKELIHOODS}")
