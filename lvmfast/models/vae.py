"""The variational auto-encoder [4.3] with pluggable priors, posteriors and likelihoods."""
from __future__ import annotations

import torch
from torch import nn

from lvmfast.nn.likelihoods import Likelihood, make_likelihood
from lvmfast.nn.posteriors import Posterior, make_posterior
from lvmfast.nn.priors import Prior, make_prior


def mlp(sizes: list[int], final_activation: bool) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(nn.LeakyReLU())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """x -> encoder features h -> q(z|x) (posterior) ; z -> decoder -> p(x|z) (likelihood); p(z) (prior).

    The book's digits architecture by default: encoder 64 -> 256 -> 256 (LeakyReLU) and a linear
    posterior head to the latent parameters; decoder L -> 256 -> 256 -> 64 x (likelihood outputs).
    `prior`, `posterior`, `likelihood` take command-line names or ready modules; `encoder` and
    `decoder` may replace the MLPs (the encoder must output `hidden` features).
    `init_data` (N, D) raw training data initializes a VampPrior's pseudo-inputs.
    """

    def __init__(self, data_dim: int = 64, latent_dim: int = 16, hidden: int = 256, levels: int = 17,
                 prior: str | Prior = "standard", posterior: str | Posterior = "gaussian",
                 likelihood: str | Likelihood = "categorical", init_data: torch.Tensor | None = None,
                 prior_kwargs: dict | None = None, posterior_kwargs: dict | None = None,
                 encoder: nn.Module | None = None, decoder: nn.Module | None = None):
        super().__init__()
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.likelihood = (make_likelihood(likelihood, data_dim, levels) if isinstance(likelihood, str)
                           else likelihood)
        self.encoder = encoder if encoder is not None else mlp([data_dim, hidden, hidden], final_activation=True)
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
            [latent_dim, hidden, hidden, data_dim * self.likelihood.params_per_dim], final_activation=False)

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

    def forward(self, x, beta: float = 1.0):
        """The training loss: the negative ELBO averaged over the batch."""
        return -self.elbo(x, beta).mean()

    @torch.no_grad()
    def sample(self, n: int, generator=None, mode: bool = False):
        """n samples in data space (grey levels for the categorical likelihood)."""
        out = self.decoder(self.prior.sample(n, generator))
        return self.likelihood.mode(out) if mode else self.likelihood.sample(out, generator)

    @torch.no_grad()
    def encode(self, x):
        """A representative latent point of q(z|x) per data point (B, L)."""
        return self.posterior.mean(self.features(x))
