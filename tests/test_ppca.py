"""Probabilistic PCA against scikit-learn's PCA and the Gaussian formulas it stands for."""
import math

import numpy as np
import pytest
import torch

from lvmfast.models import PPCA

sklearn_decomposition = pytest.importorskip("sklearn.decomposition")


def _data(n, d, seed):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * rng.uniform(0.1, 3.0, size=d)  # unequal variances
    return rng.normal(size=(n, d)) @ mix.T + rng.normal(size=d) * 5.0


@pytest.mark.parametrize("n,d,q", [(400, 7, 1), (400, 7, 3), (400, 7, 6), (1000, 20, 5), (30, 12, 4)])
def test_log_prob_and_covariance_match_sklearn(n, d, q):
    X = _data(n, d, seed=n + d + q)
    sk = sklearn_decomposition.PCA(n_components=q).fit(X)
    model = PPCA(q).fit(torch.tensor(X))
    assert model.W.shape == (d, q) and model.b.shape == (d,) and model.sigma2.dim() == 0
    assert model.W.dtype == model.b.dtype == model.sigma2.dtype == torch.float64
    np.testing.assert_allclose(model.log_prob(torch.tensor(X)).numpy(), sk.score_samples(X),
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(model.covariance().numpy(), sk.get_covariance(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(float(model.sigma2), sk.noise_variance_, rtol=1e-10)
    np.testing.assert_allclose(model.b.numpy(), sk.mean_, rtol=1e-12, atol=1e-12)
    # Fresh points, not the training set.
    Y = _data(50, d, seed=1)
    np.testing.assert_allclose(model.log_prob(torch.tensor(Y)).numpy(), sk.score_samples(Y),
                               rtol=1e-10, atol=1e-10)


def test_log_prob_is_the_gaussian_marginal():
    X = torch.tensor(_data(300, 9, seed=3))
    model = PPCA(4).fit(X)
    # Any W, not just the ML one: the Woodbury form must hold in general.
    model.W = model.W + 0.3 * torch.randn_like(model.W)
    mvn = torch.distributions.MultivariateNormal(model.b, covariance_matrix=model.covariance())
    torch.testing.assert_close(model.log_prob(X), mvn.log_prob(X), rtol=1e-10, atol=1e-10)


def test_fit_is_the_maximum_likelihood():
    X = torch.tensor(_data(500, 8, seed=4))
    model = PPCA(3).fit(X)
    best = model.log_prob(X).sum()
    W, sigma2 = model.W.clone(), model.sigma2.clone()
    for _ in range(5):
        model.W = W + 1e-2 * torch.randn_like(W)
        model.sigma2 = sigma2 * (1 + 1e-2 * torch.randn(()).double())
        assert model.log_prob(X).sum() < best
    # Closed form: W^T W is diagonal (the columns are scaled principal directions).
    gram = W.T @ W
    torch.testing.assert_close(gram, torch.diag(torch.diagonal(gram)), atol=1e-9, rtol=0)


def test_posterior_formula():
    X = torch.tensor(_data(200, 6, seed=5))
    model = PPCA(2).fit(X)
    mean, cov = model.posterior(X)
    assert mean.shape == (200, 2) and cov.shape == (2, 2)
    # Conditioning the joint Gaussian (z, x): z | x ~ N(W^T C^{-1} (x - b), I - W^T C^{-1} W).
    C = model.covariance()
    gain = torch.linalg.solve(C, model.W).T  # W^T C^{-1}
    torch.testing.assert_close(mean, (X - model.b) @ gain.T, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(cov, torch.eye(2, dtype=torch.float64) - gain @ model.W,
                               rtol=1e-9, atol=1e-9)
    # And the book's form [4.7]: M^{-1} W^T (x - b), sigma2 M^{-1}.
    M = model.W.T @ model.W + model.sigma2 * torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(cov, model.sigma2 * torch.linalg.inv(M), rtol=1e-9, atol=1e-9)


def test_samples_have_the_model_covariance():
    X = torch.tensor(_data(300, 5, seed=6))
    model = PPCA(2).fit(X)
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    samples = model.sample(n, generator=gen)
    assert samples.shape == (n, 5) and samples.dtype == torch.float64
    C = model.covariance()
    emp = torch.cov(samples.T)
    # Var of an empirical covariance entry: (C_ii C_jj + C_ij^2) / n.
    se = torch.sqrt((torch.outer(C.diagonal(), C.diagonal()) + C * C) / n)
    assert ((emp - C).abs() < 6 * se).all(), ((emp - C).abs() / se).max()
    se_mean = torch.sqrt(C.diagonal() / n)
    assert ((samples.mean(0) - model.b).abs() < 6 * se_mean).all()
    # Same generator seed, same draws.
    first = model.sample(10, generator=torch.Generator().manual_seed(1))
    again = model.sample(10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def test_float32_input_is_fitted_in_float64():
    X = _data(300, 6, seed=7)
    model = PPCA(2).fit(torch.tensor(X, dtype=torch.float32))
    sk = sklearn_decomposition.PCA(n_components=2).fit(X.astype(np.float32).astype(np.float64))
    out = model.log_prob(torch.tensor(X, dtype=torch.float32))
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), sk.score_samples(X.astype(np.float32).astype(np.float64)),
                               rtol=1e-9, atol=1e-9)


def test_bad_input():
    with pytest.raises(ValueError, match="n_components"):
        PPCA(0)
    model = PPCA(3)
    with pytest.raises(RuntimeError, match="fit"):
        model.log_prob(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="n_components"):
        model.fit(torch.randn(10, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        model.fit(torch.randn(10))
    model.fit(torch.randn(20, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        model.log_prob(torch.zeros(4, 6))
    with pytest.raises(ValueError, match="n must"):
        model.sample(-1)
    assert model.sample(0).shape == (0, 5)
    assert model.log_prob(torch.zeros(0, 5)).shape == (0,)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    X = torch.tensor(_data(300, 8, seed=8))
    cpu = PPCA(3).fit(X)
    gpu = PPCA(3).fit(X.cuda())
    assert gpu.W.is_cuda
    torch.testing.assert_close(gpu.log_prob(X.cuda()).cpu(), cpu.log_prob(X), rtol=1e-9, atol=1e-9)
    _, cov = gpu.posterior(X.cuda())
    torch.testing.assert_close(cov.cpu(), cpu.posterior(X)[1], rtol=1e-9, atol=1e-9)
    assert gpu.sample(5).is_cuda
    assert math.isfinite(float(gpu.sigma2))
