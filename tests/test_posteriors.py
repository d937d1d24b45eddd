"""Variational posteriors: log q(z|x) against closed forms and flow log-determinants against
the autograd Jacobian."""
import math

import pytest
import torch

import lvmfast
from lvmfast.nn import posteriors as Q

FLOWS = ("householder", "sylvester-orthogonal", "sylvester-householder", "sylvester-triangular")


def make(name, F=7, L=4, **kw):
    torch.manual_seed(321)
    post = Q.make_posterior(name, F, L, **kw).double()
    return post, torch.randn(3, F, dtype=torch.float64)


def test_gaussian_log_q_matches_torch_distributions():
    post, h = make("gaussian")
    z, log_q = post(h, num_samples=5)
    assert z.shape == (5, 3, 4) and log_q.shape == (5, 3)
    mu, logvar = post.gaussian_params(h)
    ref = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(log_q, ref)


@pytest.mark.parametrize("name", FLOWS)
@pytest.mark.parametrize("L", [1, 2, 5])
def test_flow_logdet_matches_autograd_jacobian(name, L):
    # a tight Björck tolerance: the Sylvester log-determinant is exact only for orthonormal Q
    post, h = make(name, L=L, **({"bjorck_tol": 1e-12} if name == "sylvester-orthogonal" else {}))
    params = post.flow_params(h)
    for row in range(h.shape[0]):
        p_row = [None if p is None else p[row:row + 1] for p in params]
        z0 = torch.randn(L, dtype=torch.float64)
        f = lambda x: post.transform(x[None], p_row)[0][0]  # noqa: E731
        jac = torch.autograd.functional.jacobian(f, z0)
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0
        logdet = post.transform(z0[None], p_row)[1][0]
        torch.testing.assert_close(logdet, logabsdet, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", FLOWS)
def test_flow_log_q_is_base_minus_logdet(name):
    post, h = make(name)
    gen = torch.Generator().manual_seed(3)
    z, log_q = post(h, num_samples=4, generator=gen)
    assert z.shape == (4, 3, 4) and log_q.shape == (4, 3)
    z0, log_q0 = post.base_sample(h, 4, torch.Generator().manual_seed(3))
    params = [None if p is None else p.unsqueeze(0).expand(4, *p.shape).reshape(12, *p.shape[1:])
              for p in post.flow_params(h)]
    zk, logdet = post.transform(z0.reshape(12, 4), params)
    torch.testing.assert_close(z, zk.reshape(4, 3, 4))
    torch.testing.assert_close(log_q, log_q0 - logdet.reshape(4, 3))
    # every sample row s * B + b used the parameters of data point b
    for b in range(3):
        p_b = [None if p is None else p[b:b + 1] for p in post.flow_params(h)]
        torch.testing.assert_close(post.transform(z0[2, b][None], p_b)[0][0], z[2, b])


def test_householder_flow_is_volume_preserving_and_orthogonal():
    post, h = make("householder")
    z, log_q = post(h, 2, generator=torch.Generator().manual_seed(0))
    z0, log_q0 = post.base_sample(h, 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(log_q, log_q0)
    torch.testing.assert_close(z.norm(dim=-1), z0.norm(dim=-1))


@pytest.mark.parametrize("name", ["sylvester-orthogonal", "sylvester-householder"])
def test_sylvester_q_orthonormal(name):
    post, h = make(name, L=6)
    q = post.q_params(h)
    assert q.shape[:3] == (3, post.num_flows, 6)
    eye = torch.eye(q.shape[-1], dtype=q.dtype)
    torch.testing.assert_close(q.mT @ q, eye.expand_as(q.mT @ q), atol=1e-5, rtol=0)


def test_sylvester_orthogonal_m_smaller_than_d():
    post, h = make("sylvester-orthogonal", L=6, m=3)
    assert post.q_params(h).shape == (3, 4, 6, 3)
    z, log_q = post(h, 2)
    assert z.shape == (2, 3, 6) and torch.isfinite(log_q).all()


@pytest.mark.parametrize("name", ["gaussian", *FLOWS, "vmf"])
def test_gradients_finite(name):
    post, h = make(name)
    h.requires_grad_(True)
    z, log_q = post(h, 3)
    (z.sum() + log_q.sum()).backward()
    assert torch.isfinite(h.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in post.parameters())


def test_vmf_posterior():
    post, h = make("vmf", L=3)
    z, log_q = post(h, 5)
    assert z.shape == (5, 3, 3)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(5, 3, dtype=torch.float64))
    loc, kappa = post.params(h)
    assert (kappa >= 1).all()
    # closed form on S^2: C_3(kappa) = kappa / (4 pi sinh kappa)
    ref = torch.log(kappa / (4 * math.pi * torch.sinh(kappa))) + kappa * (z * loc).sum(-1)
    torch.testing.assert_close(log_q, ref)
    with pytest.raises(ValueError, match="latent_dim"):
        Q.make_posterior("vmf", 4, 1)


def test_flows_follow_backend_selection():
    post, h = make("sylvester-orthogonal")
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    z, log_q = post(h, 2, generator=gen())
    with lvmfast.use_backend("reference"):
        z_ref, log_q_ref = post(h, 2, generator=gen())
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(log_q, log_q_ref)


def test_unknown_posterior():
    with pytest.raises(ValueError, match="unknown posterior"):
        Q.make_posterior("nope", 3, 2)
