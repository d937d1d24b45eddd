"""The variational auto-encoder [4.3] with pluggable priors, posteriors and likelihoods."""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from lvmfast.nn.likelihoods import Likelihood, make_likelihood
from lvmfast.nn.posteriors import Posterior, make_posterior
from lvmfast.nn.priors import Prior, make_prior


class BatchNormLast(nn.BatchNorm1d):
    """BatchNorm1d over the last dimension of (..., C) inputs, such as (S, B, C) sample batches."""

    def forward(self, h):
        flat = h.reshape(-1, h.shape[-1])
        if self.training and flat.shape[0] < 2:
            # a batch of one (the last one of an epoch, say) has no batch statistics: use the running ones
            out = nn.functional.batch_norm(flat, self.running_mean, self.running_var, self.weight, self.bias,
                                           training=False, eps=self.eps)
        else:
            out = super().forward(flat)
        return out.reshape(h.shape)


def mlp(sizes: list[int], final_activation: bool, dropout: float = 0.0, batch_norm: bool = False) -> nn.Sequential:
    """Linear layers with LeakyReLU between them (and after the last if `final_activation`).

    Opt-in regularizers after every activation, in this order: `batch_norm` (BatchNorm over the
    last dimension, as the book's hierarchical code places it) and `dropout` (nn.Dropout(p);
    inactive in eval mode). With the defaults the layers are exactly Linear, LeakyReLU, ... .
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(nn.LeakyReLU())
            if batch_norm:
                layers.append(BatchNormLast(b))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


OBJECTIVES = ("elbo", "iwae")


@contextlib.contextmanager
def _eval_mode(module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class VAE(nn.Module):
    """x -> encoder features h -> q(z|x) (posterior) ; z -> decoder -> p(x|z) (likelihood); p(z) (prior).

    The book's digits architecture by default: encoder 64 -> 256 -> 256 (LeakyReLU) and a linear
    posterior head to the latent parameters; decoder L -> 256 -> 256 -> 64 x (likelihood outputs).
    `prior`, `posterior`, `likelihood` take command-line names or ready modules; `encoder` and
    `decoder` may replace the MLPs (the encoder must output `hidden` features).
    `init_data` (N, D) raw training data initializes a VampPrior's pseudo-inputs.

    Opt-in options (the defaults give the book's model above, unchanged):
    - `layers`: hidden layers of `hidden` units in the encoder and in the decoder (default 2).
    - `dropout`: dropout probability after every hidden activation of the encoder and decoder
      MLPs (default 0: none); inactive in eval mode.
    - `batch_norm`: BatchNorm after every hidden activation of both MLPs (default False). In eval
      mode it uses its running statistics. (A VampPrior's pseudo-inputs then pass the encoder as
      a batch of their own: in training mode their features use their own batch statistics.)
    - `objective` and `train_samples` K: the training loss `forward` is the negative ELBO averaged
      over K draws (`"elbo"`, default, K = 1) or the negative importance-weighted bound [4.32]
      with K samples (`"iwae"`), -log (1/K) sum_k w_k; both are the ELBO at K = 1.
    """

    def __init__(self, data_dim: int = 64, latent_dim: int = 16, hidden: int = 256, levels: int = 17,
                 prior: str | Prior = "standard", posterior: str | Posterior = "gaussian",
                 likelihood: str | Likelihood = "categorical", init_data: torch.Tensor | None = None,
                 prior_kwargs: dict | None = None, posterior_kwargs: dict | None = None,
                 encoder: nn.Module | None = None, decoder: nn.Module | None = None,
                 layers: int = 2, dropout: float = 0.0, batch_norm: bool = False,
                 objective: str = "elbo", train_samples: int = 1):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if train_samples < 1:
            raise ValueError(f"train_samples must be >= 1, got {train_samples}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.objective, self.train_samples = objective, train_samples
        self.dropout, self.batch_norm = dropout, batch_norm
        reg = {"dropout": dropout, "batch_norm": batch_norm}
        self.likelihood = (make_likelihood(likelihood, data_dim, levels) if isinstance(likelihood, str)
                           else likelihood)
        self.encoder = (encoder if encoder is not None
                        else mlp([data_dim] + [hidden] * layers, final_activation=True, **reg))
        self.posterior = (make_posterior(posterior, hidden, latent_dim, **(posterior_kwargs or {}))
                          if isinstance(posterior, str) else posterior)
        if isinstance(prior, str):
            scaled = None if init_data is None else self.likelihood.preprocess(init_data)
            prior = make_prior(prior, latent_dim, data_dim, init_data=scaled, sphere=self.posterior.sphere,
                               input_range=self.likelihood.input_range, **(prior_kwargs or {}))
        self.prior = prior
        if hasattr(self.prior, "attach"):
            self.prior.attach(self._pseudo_input_components)
        self.decoder = decoder if decoder is not None else mlp(
            [latent_dim] + [hidden] * layers + [data_dim * self.likelihood.params_per_dim], final_activation=False,
            **reg)

    def _pseudo_input_components(self, u):
        # VampPrior components: the posterior's base distribution at the pseudo-inputs (already
        # in the encoder's input scale).
        return self.posterior.components(self.encoder(u))

    def features(self, x):
        return self.encoder(self.likelihood.preprocess(x))

    def log_importance_weights(self, x, num_samples: int = 1, generator=None):
        """log p(x|z) + log p(z) - log q(z|x) for z ~ q(z|x): (S, B), S = num_samples [4.32]."""
        log_px, log_pz, log_q = self._terms(x, num_samples, generator)
        return log_px + log_pz - log_q

    def _terms(self, x, num_samples, generator=None):
        z, log_q = self.posterior(self.features(x), num_samples, generator)
        log_px = self.likelihood.log_prob(x, self.decoder(z))
        return log_px, self.prior.log_prob(z), log_q

    def elbo(self, x, beta: float = 1.0, num_samples: int = 1, generator=None):
        """Monte Carlo ELBO per data point (B,), averaged over `num_samples` draws; `beta` < 1
        down-weights the KL part (KL warm-up)."""
        log_px, log_pz, log_q = self._terms(x, num_samples, generator)
        return (log_px + beta * (log_pz - log_q)).mean(0)

    def iwae_bound(self, x, beta: float = 1.0, num_samples: int = 1, generator=None):
        """The importance-weighted bound [4.32] per data point (B,): log (1/K) sum_k w_k with
        K = `num_samples` draws, log w = log p(x|z) + beta (log p(z) - log q(z|x)). Equal to the
        single-draw ELBO at K = 1, and never below the K-draw ELBO average on the same draws."""
        log_px, log_pz, log_q = self._terms(x, num_samples, generator)
        log_w = log_px + beta * (log_pz - log_q)
        return torch.logsumexp(log_w, 0) - math.log(num_samples)

    def forward(self, x, beta: float = 1.0):
        """The training loss averaged over the batch: the negative ELBO (default), or per the
        `objective` and `train_samples` options the K-draw ELBO or negative IWAE bound."""
        if self.objective == "iwae":
            return -self.iwae_bound(x, beta, self.train_samples).mean()
        return -self.elbo(x, beta, self.train_samples).mean()

    @torch.no_grad()
    def sample(self, n: int, generator=None, mode: bool = False):
        """n samples in data space (grey levels for the categorical likelihood). With dropout or
        BatchNorm the decoder runs in eval mode (no dropout, BatchNorm's running statistics)."""
        regularized = self.dropout > 0 or self.batch_norm
        with (_eval_mode(self) if regularized else contextlib.nullcontext()):
            out = self.decoder(self.prior.sample(n, generator))
            return self.likelihood.mode(out) if mode else self.likelihood.sample(out, generator)

    @torch.no_grad()
    def encode(self, x):
        """A representative latent point of q(z|x) per data point (B, L)."""
        return self.posterior.mean(self.features(x))
