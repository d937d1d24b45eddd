"""von Mises-Fisher, the hyperspherical uniform and the log-Bessel helper, against SciPy/mpmath.

Monte Carlo checks compare with an exact value computed independently (SciPy quadrature of the
1-D density of w = mu^T x) and fail beyond 5 standard errors of the estimate.
"""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from lvmfast.distributions import (
    HypersphericalUniform,
    VonMisesFisher,
    bessel_iv_ratio,
    log_bessel_iv,
    log_bessel_iv_scaled,
)
from lvmfast.distributions.von_mises_fisher import _dw_dkappa, _wood_rejection

DTYPES = [torch.float32, torch.float64]
ORDERS = [0.0, 0.5, 1.0, 1.5, 2.5, 7.0, 15.5, 19.5, 20.0, 31.0, 63.5, 100.0, 255.5, 511.0]


def _log_sphere_area(m):
    return math.log(2) + 0.5 * m * math.log(math.pi) - math.lgamma(0.5 * m)


def _unit(m, dtype=torch.float64):
    return torch.nn.functional.normalize(torch.randn(m, dtype=torch.float64), dim=0).to(dtype)


def _w_moment_derivatives(m, kappa, powers):
    """E[w^p] and d/dkappa E[w^p] = Cov(w^p, w), by quadrature of p(w) ∝ e^{kappa w}(1-w^2)^{(m-3)/2}."""
    a1 = 0.5 * (m - 3)

    def moment(p):
        f = lambda s: s ** p * np.exp(kappa * (s - 1)) * (1 - s * s) ** a1
        return integrate.quad(f, -1, 1, epsabs=0, epsrel=1e-12, limit=400)[0]

    z = moment(0)
    e = {p: moment(p) / z for p in set(powers) | {p + 1 for p in powers} | {1}}
    return e, {p: e[p + 1] - e[p] * e[1] for p in powers}


# --- log I_v --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_log_bessel_against_scipy(dtype):
    x_np = np.logspace(-4, 5, 121)
    x = torch.tensor(x_np, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-7
    compared = 0
    for v in ORDERS:
        ive = special.ive(v, x.double().numpy())
        ok = ive > 1e-300  # beyond that ive underflows; see the mpmath test
        ref = np.log(ive[ok]) + x.double().numpy()[ok]
        got = log_bessel_iv(v, x)
        assert got.dtype == dtype and torch.isfinite(got).all()
        err = np.abs(got.double().numpy()[ok] - ref) / np.maximum(1.0, np.abs(ref))
        assert err.max() < tol, (v, err.max())
        ratio = bessel_iv_ratio(v, x).double().numpy()
        ive1 = special.ive(v + 1, x.double().numpy())
        both = ok & (ive1 > 1e-300)
        ref_ratio = ive1[both] / ive[both]
        rel = np.abs(ratio[both] - ref_ratio) / ref_ratio
        assert rel.max() < (1e-11 if dtype == torch.float64 else 2e-7), (v, rel.max())
        compared += ok.sum()
    assert compared > 0.8 * len(ORDERS) * len(x_np)


def test_log_bessel_where_scipy_underflows():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    for v, x in [(511.0, 1e-4), (255.5, 1e-2), (100.0, 1e-4), (511.0, 10.0), (63.5, 1e-4),
                 (19.5, 1e-4), (0.5, 1e-4), (0.0, 1e5), (511.0, 1e5)]:
        ref = float(mpmath.log(mpmath.besseli(v, mpmath.mpf(x))))
        got = log_bessel_iv(v, torch.tensor([x], dtype=torch.float64)).item()
        assert abs(got - ref) <= 1e-13 * max(1.0, abs(ref)), (v, x, got, ref)
        scaled = log_bessel_iv_scaled(v, torch.tensor([x], dtype=torch.float64)).item()
        assert abs(scaled - (ref - v * math.log(x))) <= 1e-13 * max(1.0, abs(ref)), (v, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_bessel_gradients(dtype):
    x_np = np.logspace(-4, 5, 37)
    for v in [0.0, 0.5, 4.0, 31.0, 511.0]:
        x = torch.tensor(x_np, dtype=dtype, requires_grad=True)
        (grad,) = torch.autograd.grad(log_bessel_iv(v, x).sum(), x, create_graph=True)
        (grad2,) = torch.autograd.grad(grad.sum(), x)
        assert torch.isfinite(grad).all() and torch.isfinite(grad2).all()
        ive = special.ive(v, x_np)
        ok = (ive > 1e-300) & (special.ive(v + 1, x_np) > 1e-300)
        ref = special.ive(v + 1, x_np[ok]) / ive[ok] + v / x_np[ok]  # d/dx log I_v = R_v + v/x
        rel = np.abs(grad.detach().double().numpy()[ok] - ref) / ref
        assert rel.max() < (1e-10 if dtype == torch.float64 else 1e-6)
        xs = torch.tensor(x_np, dtype=dtype, requires_grad=True)
        (gs,) = torch.autograd.grad(log_bessel_iv_scaled(v, xs).sum(), xs)
        torch.testing.assert_close(gs, bessel_iv_ratio(v, xs.detach()))
    x = torch.tensor([1e-3, 0.7, 3.0, 40.0, 900.0], dtype=torch.float64, requires_grad=True)
    for v in [0.0, 1.5, 30.0]:
        torch.autograd.gradcheck(lambda t, v=v: log_bessel_iv(v, t), (x,))
        torch.autograd.gradgradcheck(lambda t, v=v: log_bessel_iv(v, t), (x,))
        torch.autograd.gradcheck(lambda t, v=v: bessel_iv_ratio(v, t), (x,))


def test_log_bessel_bad_input():
    with pytest.raises(ValueError, match="v must"):
        log_bessel_iv(-1.0, torch.ones(3))
    with pytest.raises(ValueError, match="v must"):
        log_bessel_iv(torch.tensor(1.0), torch.ones(3))
    with pytest.raises(ValueError, match="x must"):
        log_bessel_iv(1.0, torch.ones(3, dtype=torch.long))


# --- densities ----------------------------------------------------------------------------------

KAPPAS = [1e-3, 1e-2, 0.3, 1.0, 7.0, 50.0, 400.0, 3e3, 1e4]


@pytest.mark.parametrize("m", [3, 5, 16, 64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_log_prob_entropy_kl_against_scipy(m, dtype):
    mu = _unit(m, dtype)
    mu64 = mu.double().numpy()
    mu64 = mu64 / np.linalg.norm(mu64)  # SciPy wants |mu| = 1 to float64 rounding
    for kappa in KAPPAS:
        k = torch.tensor(kappa, dtype=dtype)
        ref = stats.vonmises_fisher(mu64, float(k))
        x_np = ref.rvs(7, random_state=np.random.default_rng(m))
        x = torch.tensor(x_np, dtype=dtype)
        x_seen = x.double().numpy()  # what the float32 case really evaluates
        dist = VonMisesFisher(torch.tensor(mu64, dtype=dtype), k)
        lp = dist.log_prob(x)
        assert lp.dtype == dtype and lp.shape == (7,)
        want = ref.logpdf(x_seen / np.linalg.norm(x_seen, axis=-1, keepdims=True))
        tol = 1e-10 if dtype == torch.float64 else 1e-6
        # float32 x is only unit to ~6e-8, which kappa multiplies: allow for it.
        slack = 0.0 if dtype == torch.float64 else 4e-7 * kappa
        assert (np.abs(lp.double().numpy() - want) <= tol * np.maximum(1, np.abs(want)) + slack).all(), kappa
        entropy = dist.entropy()
        assert entropy.dtype == dtype
        assert abs(entropy.item() - ref.entropy()) <= tol * max(1, abs(ref.entropy())), kappa
        kl = torch.distributions.kl_divergence(dist, HypersphericalUniform(m, dtype=dtype))
        want_kl = -ref.entropy() + _log_sphere_area(m)
        assert kl.item() >= 0
        assert abs(kl.item() - want_kl) <= tol * max(1, abs(ref.entropy())), kappa


def test_kl_small_concentration_is_relatively_accurate():
    # KL ~ kappa^2 / (2 m): computed without the cancellation of -entropy + log area.
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    for m in [3, 16, 1025]:
        for kappa in [1e-4, 1e-2, 0.5]:
            d = VonMisesFisher(_unit(m), torch.tensor(kappa, dtype=torch.float64))
            kl = torch.distributions.kl_divergence(d, HypersphericalUniform(m, dtype=torch.float64))
            v, k = mpmath.mpf(m) / 2 - 1, mpmath.mpf(kappa)
            a = mpmath.besseli(v + 1, k) / mpmath.besseli(v, k)
            ref = k * a - mpmath.log(mpmath.gamma(v + 1) * (2 / k) ** v * mpmath.besseli(v, k))
            assert abs(kl.item() - float(ref)) <= 1e-12 * float(ref), (m, kappa)


def test_concentration_shapes_and_broadcasting():
    loc = torch.nn.functional.normalize(torch.randn(4, 5, dtype=torch.float64), dim=-1)
    kappa = torch.rand(4, dtype=torch.float64) * 10 + 0.1
    a, b = VonMisesFisher(loc, kappa), VonMisesFisher(loc, kappa.unsqueeze(-1))
    assert a.batch_shape == b.batch_shape == (4,) and a.event_shape == (5,)
    x = a.sample((3,))
    assert x.shape == (3, 4, 5)
    torch.testing.assert_close(a.log_prob(x), b.log_prob(x))
    torch.testing.assert_close(a.entropy(), b.entropy())
    torch.testing.assert_close(a.mean, bessel_iv_ratio(1.5, kappa).unsqueeze(-1) * loc)
    c = VonMisesFisher(loc[0], kappa)  # one direction, four concentrations
    assert c.batch_shape == (4,) and c.rsample((2,)).shape == (2, 4, 5)
    assert VonMisesFisher(loc[0], 2.0).rsample().shape == (5,)
    assert VonMisesFisher(loc, kappa).rsample((0,)).shape == (0, 4, 5)
    assert a.expand((2, 4)).sample().shape == (2, 4, 5)


def test_bad_input():
    loc = _unit(4)
    with pytest.raises(ValueError, match="m >= 2"):
        VonMisesFisher(torch.ones(3, 1), torch.ones(3))
    with pytest.raises(ValueError, match="broadcast"):
        VonMisesFisher(torch.stack([loc] * 3), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="concentration"):
        VonMisesFisher(loc, torch.ones((), dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        VonMisesFisher(loc, 1.0).log_prob(torch.ones(3))
    with pytest.raises(ValueError, match="same m"):
        torch.distributions.kl_divergence(VonMisesFisher(loc, 1.0), HypersphericalUniform(5))
    with pytest.raises(ValueError, match="dim"):
        HypersphericalUniform(1)
    with pytest.raises(RuntimeError, match="on"):
        VonMisesFisher(loc, torch.ones((), dtype=torch.float64, device="meta"))


def test_uniform():
    u = HypersphericalUniform(7, dtype=torch.float64)
    x = u.sample((1000,))
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(1000, dtype=torch.float64))
    assert (u.log_prob(x) == -_log_sphere_area(7)).all()
    assert u.entropy().item() == pytest.approx(_log_sphere_area(7))
    # Its mean is 0: 5 standard errors (each coordinate has variance 1/m).
    assert (x.mean(0).abs() < 5 * math.sqrt(1 / 7 / 1000)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_concentrations_are_finite(dtype):
    for m in [3, 4, 64, 1025]:
        kappa = torch.tensor([1e-4, 1e-1, 1e3, 1e5], dtype=dtype, requires_grad=True)
        loc = _unit(m, dtype).expand(4, m).clone().requires_grad_(True)
        d = VonMisesFisher(loc, kappa)
        x = d.rsample((50,))
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x.norm(dim=-1), torch.ones(50, 4, dtype=dtype),
                                   atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)
        kl = torch.distributions.kl_divergence(d, HypersphericalUniform(m, dtype=dtype))
        loss = (x * torch.randn_like(x)).sum() + d.log_prob(x.detach()).sum() + d.entropy().sum() + kl.sum()
        gk, gl = torch.autograd.grad(loss, (kappa, loc))
        assert torch.isfinite(gk).all() and torch.isfinite(gl).all()
        assert torch.isfinite(d.log_prob(x)).all() and torch.isfinite(d.entropy()).all()


# --- sampling -----------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [3, 5, 16, 64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_statistics(m, dtype):
    n = 20_000
    mu = _unit(m, dtype)
    other = _unit(m, dtype)
    for kappa in [1e-3, 0.5, 5.0, 60.0, 1e3, 1e5]:
        x = VonMisesFisher(mu, torch.tensor(kappa, dtype=dtype)).sample((n,))
        assert x.shape == (n, m) and x.dtype == dtype
        torch.testing.assert_close(x.norm(dim=-1), torch.ones(n, dtype=dtype),
                                   atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)
        x = x.double()
        w = x @ mu.double()
        mean_resultant = special.ive(m / 2, kappa) / special.ive(m / 2 - 1, kappa)
        se = w.std().item() / math.sqrt(n)
        assert abs(w.mean().item() - mean_resultant) < 5 * se + 1e-6, (kappa, w.mean().item(), mean_resultant)
        # The full mean vector is A_m mu: checked along a random direction (catches a wrong
        # rotation of the tangent part).
        proj = x @ other.double()
        expected = mean_resultant * float(mu.double() @ other.double())
        assert abs(proj.mean().item() - expected) < 5 * proj.std().item() / math.sqrt(n) + 1e-6, kappa


@pytest.mark.parametrize("dtype", DTYPES)
def test_direction_near_e1_is_exact(dtype):
    # mu within 2e-4 of e_1: 1 - mu_1 underflows float32's spacing near 1; the rotation must
    # still carry e_1 onto mu (the sample mean's e_2 component is A_m(kappa) mu_2).
    m, kappa, n = 5, 1e5, 20_000
    mu = torch.nn.functional.normalize(torch.tensor([1.0, 2e-4, 0.0, 0.0, 0.0], dtype=torch.float64), dim=0)
    x = VonMisesFisher(mu.to(dtype), torch.tensor(kappa, dtype=dtype)).sample((n,)).double()
    a = special.ive(m / 2, kappa) / special.ive(m / 2 - 1, kappa)
    se = x[:, 1].std().item() / math.sqrt(n)
    assert abs(x[:, 1].mean().item() - a * mu[1].item()) < 5 * se
    for mu_exact in (torch.eye(m, dtype=dtype)[0], -torch.eye(m, dtype=dtype)[0]):
        y = VonMisesFisher(mu_exact, torch.tensor(kappa, dtype=dtype)).sample((100,))
        assert torch.isfinite(y).all() and ((y @ mu_exact) > 0.99).all()


@pytest.mark.parametrize("m,kappa", [(4, 2.0), (10, 25.0), (16, 0.7), (64, 300.0)])
def test_sample_distribution_matches_scipy(m, kappa):
    mu = _unit(m)
    x = VonMisesFisher(mu, torch.tensor(kappa, dtype=torch.float64)).sample((4000,))
    ref = stats.vonmises_fisher(mu.numpy() / np.linalg.norm(mu.numpy()), kappa).rvs(
        4000, random_state=np.random.default_rng(int(torch.randint(0, 2**31, ()))))
    # Two-sample KS on w = mu^T x and on a coordinate of the tangent part.
    e = _unit(m)
    assert stats.ks_2samp((x @ mu).numpy(), ref @ mu.numpy()).pvalue > 1e-6
    assert stats.ks_2samp((x @ e).numpy(), ref @ e.numpy()).pvalue > 1e-6


# --- gradients ----------------------------------------------------------------------------------

def test_implicit_derivative_matches_closed_form_for_m3():
    """For m = 3, w = 1 + log(u + (1 - u) e^{-2 kappa}) / kappa inverts the CDF exactly. Its
    derivative at fixed u, in mpmath, is the reference (autograd of that float64 form cancels:
    4e-9 relative at kappa = 1e-3 near w = -1, where the implicit one is exact to 6e-12). The
    implicit derivative sees only w rounded to float64, and near w = +-1 the derivative is
    ~ 1 -+ w, so that rounding alone costs eps / (1 - |w|) relative (2e-8 at kappa = 2000,
    1 - w = 1.6e-9): the bound allows for it beside the documented 1e-9."""
    mpmath = pytest.importorskip("mpmath")
    u = torch.rand(500, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    eps = torch.finfo(torch.float64).eps

    def exact(u_, kappa_):
        q = u_ + (1 - u_) * mpmath.exp(-2 * kappa_)
        return -mpmath.log(q) / kappa_**2 - 2 * (1 - u_) * mpmath.exp(-2 * kappa_) / (kappa_ * q)

    for kappa in [1e-3, 0.5, 4.0, 80.0, 2e3]:
        k = torch.full_like(u, kappa)
        w = 1.0 + torch.log1p(-(1.0 - u) * -torch.expm1(-2.0 * k)) / k
        got = _dw_dkappa(w, k, 3)
        with mpmath.workdps(30):
            ref = torch.tensor([float(exact(mpmath.mpf(x), mpmath.mpf(kappa))) for x in u.tolist()],
                               dtype=torch.float64)
        rtol = 1e-9 + 4 * eps / (1.0 - w.abs()).clamp_min(eps)
        assert ((got - ref).abs() <= rtol * ref.abs() + 1e-14).all(), ((got - ref) / ref).abs().max()


def test_implicit_derivative_against_mpmath():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30

    def exact(w, kappa, m):
        w, kappa, a1 = mpmath.mpf(w), mpmath.mpf(kappa), mpmath.mpf(m - 3) / 2
        mean = mpmath.besseli(mpmath.mpf(m) / 2, kappa) / mpmath.besseli(mpmath.mpf(m) / 2 - 1, kappa)
        ratio = lambda s: mpmath.exp(kappa * (s - w)) * ((1 - s * s) / (1 - w * w)) ** a1
        scale = min(mpmath.mpf(1), 1 / kappa, mpmath.sqrt(m) / kappa)
        # d w / d kappa = int_w^1 (s - A) p(s) ds / p(w), split near w where the mass is.
        steps = [w + scale * t for t in (0.01, 0.1, 1, 3, 10, 30, 100) if w + scale * t < 1]
        return mpmath.quad(lambda s: (s - mean) * ratio(s), [w] + steps + [1])

    for m in [4, 5, 10, 64, 1025]:
        for kappa in [1e-4, 1.0, 100.0, 1e5]:
            k = torch.full((2000,), kappa, dtype=torch.float64)
            # Order statistics of w from the sampler: both tails and the bulk.
            w = torch.sort(_wood_rejection(k, m)).values[[0, 40, 1000, 1960, 1999]]
            got = _dw_dkappa(w, torch.full_like(w, kappa), m)
            for wi, gi in zip(w.tolist(), got.tolist()):
                ref = float(exact(wi, kappa, m))
                assert abs(gi - ref) <= 1e-8 * abs(ref), (m, kappa, wi, gi, ref)


def test_implicit_derivative_circle_against_mpmath():
    # m = 2 works in the angle theta = acos(w): p(theta) ∝ exp(kappa cos theta) on [0, pi].
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    for kappa in [1e-4, 1.0, 30.0, 1e5]:
        k = mpmath.mpf(kappa)
        mean = mpmath.besseli(1, k) / mpmath.besseli(0, k)
        w = torch.sort(_wood_rejection(torch.full((2000,), kappa, dtype=torch.float64), 2)).values
        w = w[[0, 40, 1000, 1960, 1999]]
        got = _dw_dkappa(w, torch.full_like(w, kappa), 2)
        for wi, gi in zip(w.tolist(), got.tolist()):
            # F(w) = P(theta >= acos w); dF/dkappa by differentiating under the integral.
            th = mpmath.acos(wi)
            lower = lambda f, k=k: mpmath.exp(k * mpmath.cos(f))
            z = mpmath.quad(lower, [0, mpmath.pi])
            tail = mpmath.quad(lambda f, mean=mean, lower=lower: (mpmath.cos(f) - mean) * lower(f), [0, th])
            ref = tail / z / (lower(th) / z / mpmath.sin(th))  # -(dF/dkappa) / p(w)
            assert abs(gi - float(ref)) <= 1e-8 * abs(float(ref)), (kappa, wi, gi, float(ref))


def _pathwise_gradient_check(m, kappa, n):
    """Mean of per-sample pathwise d f / d kappa and d f / d theta versus exact d/dkappa E[f] and
    d/dtheta E[f], for f(x) = (mu^T x)^3 + (c^T x)^2 + b^T x with mu = theta / |theta|."""
    theta = torch.randn(m, dtype=torch.float64)
    c, b = torch.randn(m, dtype=torch.float64), torch.randn(m, dtype=torch.float64)
    kap = torch.full((n,), kappa, dtype=torch.float64, requires_grad=True)
    th = theta.expand(n, m).clone().requires_grad_(True)
    mu = torch.nn.functional.normalize(th, dim=-1)
    x = VonMisesFisher(mu, kap).rsample()
    w = (x * mu.detach()).sum(-1)
    f = w ** 3 + (x @ c) ** 2 + x @ b
    gk, gt = torch.autograd.grad(f.sum(), (kap, th))

    e, de = _w_moment_derivatives(m, kappa, [1, 2, 3])
    mu0 = theta / theta.norm()
    cm, cc = float(c @ mu0), float(c @ c)
    # E[x x^T] = E[w^2] mu mu^T + (1 - E[w^2]) / (m - 1) (I - mu mu^T), E[x] = A mu.
    exact_k = de[3] + cm ** 2 * de[2] - (cc - cm ** 2) / (m - 1) * de[2] + float(b @ mu0) * de[1]
    for est, want in [(gk, exact_k)]:
        se = est.std().item() / math.sqrt(n)
        assert abs(est.mean().item() - want) < 5 * se, (m, kappa, est.mean().item(), want, se)
    # theta gradient of E[f] = E[w^3] + E[w^2] (c^T mu)^2 + (1 - E[w^2])/(m-1) (|c|^2 - (c^T mu)^2)
    #                          + A b^T mu, by autograd on that closed form.
    t = theta.clone().requires_grad_(True)
    mt = torch.nn.functional.normalize(t, dim=0)
    cmt = c @ mt
    ef = e[3] + e[2] * cmt ** 2 + (1 - e[2]) / (m - 1) * (cc - cmt ** 2) + e[1] * (b @ mt)
    (want_t,) = torch.autograd.grad(ef, t)
    se_t = gt.std(0) / math.sqrt(n)
    assert ((gt.mean(0) - want_t).abs() < 5 * se_t + 1e-9).all(), (gt.mean(0), want_t)


@pytest.mark.parametrize("m,kappa", [(2, 5.0), (3, 0.5), (3, 20.0), (10, 4.0), (10, 40.0), (5, 8.0)])
def test_rsample_gradient_is_unbiased(m, kappa):
    _pathwise_gradient_check(m, kappa, n=60_000)


def test_rsample_gradient_float32():
    kappa = torch.full((20_000,), 6.0, dtype=torch.float32, requires_grad=True)
    mu = _unit(7, torch.float32)
    x = VonMisesFisher(mu, kappa).rsample()
    assert x.dtype == torch.float32
    (g,) = torch.autograd.grad((x @ mu).sum(), kappa)
    assert g.dtype == torch.float32 and torch.isfinite(g).all()
    # d/dkappa E[w] = dA/dkappa = 1 - A^2 - (m - 1) A / kappa.
    a = special.ive(3.5, 6.0) / special.ive(2.5, 6.0)
    want = 1 - a * a - 6 * a / 6.0
    assert abs(g.double().mean().item() - want) < 5 * g.double().std().item() / math.sqrt(20_000)


# --- CUDA ---------------------------------------------------------------------------------------

@pytest.mark.cuda
def test_cuda_matches_cpu_without_host_sync():
    m = 16
    loc = _unit(m).expand(6, m).contiguous()
    kappa = torch.tensor([1e-4, 0.3, 5.0, 80.0, 3e3, 1e5], dtype=torch.float64)
    cpu = VonMisesFisher(loc, kappa, validate_args=False)
    x = cpu.sample((3,))
    # host-to-device copies synchronize by themselves: make every CUDA input first
    x_gpu, kappa_gpu = x.cuda(), kappa.cuda()
    gpu = VonMisesFisher(loc.cuda(), kappa_gpu, validate_args=False)
    uniform = HypersphericalUniform(m, device="cuda", dtype=torch.float64)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        lp, ent = gpu.log_prob(x_gpu), gpu.entropy()
        kl = torch.distributions.kl_divergence(gpu, uniform)
        lb = log_bessel_iv(7.0, kappa_gpu)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.testing.assert_close(lp.cpu(), cpu.log_prob(x))
    torch.testing.assert_close(ent.cpu(), cpu.entropy())
    torch.testing.assert_close(kl.cpu(), torch.distributions.kl_divergence(cpu, HypersphericalUniform(m, dtype=torch.float64)))
    torch.testing.assert_close(lb.cpu(), log_bessel_iv(7.0, kappa))
    for dtype in DTYPES:
        k = kappa.cuda().to(dtype).requires_grad_(True)
        s = VonMisesFisher(loc.cuda().to(dtype), k).rsample((1000,))
        assert s.is_cuda and s.dtype == dtype
        (g,) = torch.autograd.grad(s.sum(), k)
        assert torch.isfinite(g).all()
        w = (s.double() @ loc[0].cuda()).mean(0).cpu()
        a = torch.tensor(special.ive(m / 2, kappa.numpy()) / special.ive(m / 2 - 1, kappa.numpy()))
        assert ((w - a).abs() < 0.05).all()
