"""Priors: each density integrates to one (2-D quadrature) and its samples follow it."""
import math

import pytest
import torch
from torch import nn

from lvmfast.nn import priors as P

NAMES = ("standard", "mog", "vampprior", "gtm", "gtm-vampprior", "flow")
R, N = 12.0, 601  # quadrature box [-R, R]^2 with N x N nodes


def make(name, L=2, D=5):
    torch.manual_seed(1234)  # a fixed, moderate random instance (the test is about the math)
    small = {"hidden": 32} if name in ("gtm", "gtm-vampprior", "flow") else {}
    prior = P.make_prior(name, L, D, init_data=torch.rand(50, D), **small)
    if isinstance(prior, P.MixtureOfGaussiansPrior):
        with torch.no_grad():
            prior.logvars.uniform_(-1.0, 1.0)
            prior.logits.normal_()
    if hasattr(prior, "attach"):
        # a small random encoder standing in for the VAE's: pseudo-input -> (mean, logvar)
        enc = nn.Linear(D, 2 * L)
        prior.enc = enc

        def components(u):
            mu, logvar = enc(u).chunk(2, -1)
            return "gaussian", 2 * mu, logvar.clamp(-1.5, 1.5)

        prior.attach(components)
    return prior.double()


def grid():
    g = torch.linspace(-R, R, N, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1)
    return z, (g[1] - g[0]) ** 2


@pytest.mark.parametrize("name", NAMES)
def test_density_integrates_to_one(name):
    prior = make(name)
    z, cell = grid()
    with torch.no_grad():
        p = prior.log_prob(z).exp()
    assert p.shape == (N, N)
    assert torch.isfinite(p).all()
    torch.testing.assert_close((p.sum() * cell).item(), 1.0, atol=2e-3, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_samples_follow_density(name):
    prior = make(name)
    z, cell = grid()
    with torch.no_grad():
        w = prior.log_prob(z).exp() * cell
        gen = torch.Generator().manual_seed(7)
        n = 40000
        s = prior.sample(n, generator=gen)
    assert s.shape == (n, 2) and s.dtype == torch.float64
    # moments: mean and covariance of the samples against the quadrature ones
    flat, wf = z.reshape(-1, 2), w.reshape(-1)
    mean = (wf[:, None] * flat).sum(0)
    cov = (wf[:, None, None] * (flat - mean)[:, :, None] * (flat - mean)[:, None, :]).sum(0)
    se = (cov.diagonal() / n).sqrt()
    assert ((s.mean(0) - mean).abs() < 5 * se + 1e-3).all(), (s.mean(0), mean)
    torch.testing.assert_close(torch.cov(s.T), cov, rtol=0.06, atol=0.02)
    # histogram: 4 x 4 quantile-free bins on the central box, binomial 5-sigma bands
    edges = torch.linspace(-3, 3, 5, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            inside = ((flat[:, 0] >= edges[i]) & (flat[:, 0] < edges[i + 1]) &
                      (flat[:, 1] >= edges[j]) & (flat[:, 1] < edges[j + 1]))
            prob = wf[inside].sum()
            frac = ((s[:, 0] >= edges[i]) & (s[:, 0] < edges[i + 1]) &
                    (s[:, 1] >= edges[j]) & (s[:, 1] < edges[j + 1])).double().mean()
            assert abs(frac - prob) < 5 * math.sqrt(prob * (1 - prob) / n) + 3e-3, (i, j, frac, prob)


def test_sample_uses_standard_deviation_not_variance():
    prior = P.MixtureOfGaussiansPrior(1, num_components=1).double()
    with torch.no_grad():
        prior.means.zero_()
        prior.logvars.fill_(math.log(4.0))  # variance 4, std 2
    s = prior.sample(100000, generator=torch.Generator().manual_seed(0))
    assert abs(s.std().item() - 2.0) < 0.03


def test_mog_is_the_full_mixture():
    """Against torch.distributions: the joint mixture, not a product of per-dimension mixtures."""
    torch.manual_seed(0)
    prior = P.MixtureOfGaussiansPrior(3, num_components=4).double()
    with torch.no_grad():
        prior.logvars.uniform_(-1, 1)
        prior.logits.normal_()
    z = torch.randn(2, 5, 3, dtype=torch.float64)
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=prior.logits),
        torch.distributions.Independent(torch.distributions.Normal(prior.means, (0.5 * prior.logvars).exp()), 1))
    torch.testing.assert_close(prior.log_prob(z), ref.log_prob(z))


def test_sphere_uniform_integrates_on_the_circle():
    prior = P.HypersphericalUniformPrior(2)
    theta = torch.linspace(0, 2 * math.pi, 1001, dtype=torch.float64)[:-1]
    z = torch.stack([theta.cos(), theta.sin()], -1)
    torch.testing.assert_close((prior.log_prob(z).exp().sum() * 2 * math.pi / 1000).item(), 1.0)
    s = prior.sample(1000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s.norm(dim=-1), torch.ones(1000))
    # the area of S^2 is 4 pi
    torch.testing.assert_close(P.HypersphericalUniformPrior(3).log_prob(torch.ones(1, 3)),
                               torch.tensor([-math.log(4 * math.pi)]))


def test_vampprior_initialized_from_data():
    data = torch.rand(20, 6)
    prior = P.VampPrior(2, 6, num_components=500, init_data=data, init_noise=0.01)
    assert prior.u.shape == (500, 6)
    dist = torch.cdist(prior.u.detach(), data).min(1).values
    assert (dist < 0.1).all()
    with pytest.raises(RuntimeError, match="encoder"):
        prior.log_prob(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="init_data"):
        P.VampPrior(2, 7, init_data=data)


def test_flow_prior_logdet_counted_once():
    """log p(z) equals log N(f^-1 z) + log|det J_{f^-1}| from autograd, in 3 dimensions."""
    torch.manual_seed(0)
    prior = P.FlowPrior(3, num_flows=3, hidden=16).double()
    z = torch.randn(3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda x: prior.inverse(x[None])[0][0], z)
    eps = prior.inverse(z[None])[0][0]
    expected = -0.5 * (eps.pow(2).sum() + 3 * math.log(2 * math.pi)) + torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(prior.log_prob(z[None])[0], expected)


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_shapes_and_gradients(name):
    prior = make(name, L=4, D=5).float()
    z = torch.randn(3, 7, 4, requires_grad=True)
    lp = prior.log_prob(z)
    assert lp.shape == (3, 7)
    lp.sum().backward()
    assert torch.isfinite(z.grad).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in prior.parameters())


def test_unknown_prior():
    with pytest.raises(ValueError, match="unknown prior"):
        P.make_prior("nope", 2)
