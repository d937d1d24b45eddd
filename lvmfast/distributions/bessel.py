"""Log of the modified Bessel function of the first kind, I_v(x), in torch ops.

Everything runs on the tensor's device (no SciPy, no trip to the host) and is vectorized over x.
The order v is a Python number (for the von Mises-Fisher it is m/2 - 1, fixed by the shape).

Method. For orders v >= _DEBYE_MIN_ORDER the uniform asymptotic (Debye) expansion
    log I_v(v z) = -1/2 log(2 pi v) + v eta - 1/4 log(1 + z^2) + log sum_k u_k(t) / v^k,
    t = 1 / sqrt(1 + z^2),  eta = sqrt(1 + z^2) + log(z / (1 + sqrt(1 + z^2))),
is accurate to float64 rounding for every x > 0 (it is uniform in z). Lower orders are shifted up
by an integer N to v + N >= _DEBYE_MIN_ORDER, and brought back down with the backward recurrence
of the ratio R_mu = I_{mu+1} / I_mu:
    R_{mu-1} = 1 / (2 mu / x + R_mu),   log I_{mu-1} = log I_mu - log R_{mu-1}.
The backward recurrence is the stable direction for I (errors shrink by R_mu R_{mu-1} < 1 per
step), and the loop length N depends only on v, never on the data.

The work is done in float64 whatever the input dtype (the terms reach |log I| ~ 1e4 and the ratio
needs ~1e-12 relative accuracy near x = 1e5); results are cast back.

Derivatives: d/dx log I_v(x) = R_v(x) + v / x, and R_v' = 1 - R_v^2 - (2 v + 1) R_v / x; both are
implemented as autograd Functions whose backward calls the other, so any order of derivative
works.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction

import torch

__all__ = ["bessel_iv_ratio", "log_bessel_iv", "log_bessel_iv_scaled"]

# Order from which the Debye series (with _DEBYE_TERMS corrections) is exact to float64 rounding.
_DEBYE_MIN_ORDER = 20.0
_DEBYE_TERMS = 10
_TINY = 1e-30


def _debye_polynomials(n_terms: int) -> list[list[float]]:
    """Coefficients (ascending powers of t) of the Debye polynomials u_0 .. u_{n_terms}.

    u_{k+1}(t) = 1/2 t^2 (1 - t^2) u_k'(t) + 1/8 int_0^t (1 - 5 s^2) u_k(s) ds, u_0 = 1,
    computed exactly with fractions once at import.
    """
    polys = [[Fraction(1)]]
    for _ in range(n_terms):
        u = polys[-1]
        deriv = [i * c for i, c in enumerate(u)][1:]  # u_k'(t)
        nxt = [Fraction(0)] * (len(u) + 3)
        for i, c in enumerate(deriv):  # 1/2 (t^2 - t^4) u'
            nxt[i + 2] += c / 2
            nxt[i + 4] -= c / 2
        for i, c in enumerate(u):  # 1/8 int (1 - 5 s^2) u
            nxt[i + 1] += c / 8 / (i + 1)
            nxt[i + 3] -= 5 * c / 8 / (i + 3)
        while nxt and nxt[-1] == 0:
            nxt.pop()
        polys.append(nxt)
    return [[float(c) for c in p] for p in polys]


_DEBYE_U = _debye_polynomials(_DEBYE_TERMS)


@functools.lru_cache(maxsize=256)
def _debye_coefficients(nu: float) -> tuple[float, ...]:
    """sum_k u_k(t) / nu^k collected into one polynomial in t (ascending powers), for one order."""
    coeffs = [0.0] * len(_DEBYE_U[-1])
    for k, u in enumerate(_DEBYE_U):
        for i, c in enumerate(u):
            coeffs[i] += c / nu**k
    while len(coeffs) > 1 and coeffs[-1] == 0.0:
        coeffs.pop()
    return tuple(coeffs)


def _debye_series(nu: float, t: torch.Tensor) -> torch.Tensor:
    """sum_k u_k(t) / nu^k by Horner's rule in t (one fused multiply-add per power)."""
    coeffs = _debye_coefficients(nu)
    total = torch.full_like(t, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        total = (total * t).add_(c)
    return total


def _debye_terms(nu: float, x: torch.Tensor):
    """Pieces of the Debye expansion at order nu: (sqrt(nu^2 + x^2), log I_nu(x))."""
    root = torch.sqrt(nu * nu + x * x)  # nu sqrt(1 + z^2)
    t = nu / root
    # nu * eta = root + nu log(x / (nu + root))
    nu_eta = root + nu * (torch.log(x) - torch.log(nu + root))
    log_i = (-0.5 * math.log(2 * math.pi) - 0.5 * torch.log(root) + nu_eta
             + torch.log(_debye_series(nu, t)))
    # -1/2 log(2 pi nu) - 1/4 log(1 + z^2) = -1/2 log(2 pi) - 1/2 log(root): folded above.
    return root, log_i


def _debye_ratio(nu: float, x: torch.Tensor, root0: torch.Tensor) -> torch.Tensor:
    """R_nu = I_{nu+1}(x) / I_nu(x) from the Debye forms at nu and nu + 1, without cancellation."""
    nu1 = nu + 1.0
    root1 = torch.sqrt(nu1 * nu1 + x * x)
    droot = (2 * nu + 1) / (root1 + root0)  # root1 - root0
    # difference of nu*eta terms: droot + log x - log(nu1 + root1) - nu log((nu1 + root1)/(nu + root0))
    d_nu_eta = (droot + torch.log(x) - torch.log(nu1 + root1)
                - nu * torch.log1p((1.0 + droot) / (nu + root0)))
    d_root_term = -0.5 * torch.log1p(droot / root0)
    d_series = (torch.log(_debye_series(nu1, nu1 / root1))
                - torch.log(_debye_series(nu, nu / root0)))
    return torch.exp(d_nu_eta + d_root_term + d_series)


def _log_iv_and_ratio(v: float, x: torch.Tensor):
    """(log I_v(x), I_{v+1}(x) / I_v(x)) for x > 0 in float64."""
    shift = max(0, math.ceil(_DEBYE_MIN_ORDER - v))
    nu = v + shift
    root, log_i = _debye_terms(nu, x)
    ratio = _debye_ratio(nu, x, root)
    if shift:
        inv_x = torch.reciprocal(x)
        prod = torch.ones_like(x)
        for k in range(shift):
            mu = nu - k
            ratio = torch.reciprocal(torch.add(ratio, inv_x, alpha=2.0 * mu))  # R_{mu-1}
            prod = prod * ratio
            if k % 4 == 3 or k == shift - 1:  # R >= x / (2 nu + 2): 4 factors cannot underflow
                log_i = log_i - torch.log(prod)
                prod = torch.ones_like(x)
    return log_i, ratio


def _check(v, x: torch.Tensor):
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise ValueError(f"v must be a Python number (the order), got {type(v).__name__}")
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"v must be a finite order >= 0, got {v}")
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {type(x).__name__}"
                         + (f" of dtype {x.dtype}" if torch.is_tensor(x) else ""))


def _work(x: torch.Tensor) -> torch.Tensor:
    # Clamp keeps x = 0 finite (log I_v(0) = -inf for v > 0 is then a large negative number).
    return x.detach().to(torch.float64).clamp_min(_TINY)


def _safe(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(_TINY)


class _BesselRatio(torch.autograd.Function):
    # The derivative 1 - R^2 - (2 v + 1) R / x cancels to O(1/x^2) at large x: it is formed in
    # float64 from the float64 ratio and only then cast to the input dtype.

    @staticmethod
    def forward(ctx, x, v):
        _, ratio = _log_iv_and_ratio(v, _work(x))
        ctx.save_for_backward(x, ratio)
        ctx.v = v
        return ratio.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, ratio = ctx.saved_tensors
        x64 = _safe(x.to(torch.float64))
        if torch.is_grad_enabled():  # differentiable backward: rebuild the ratio with its graph
            ratio = _BesselRatio.apply(x64, ctx.v)
        deriv = 1.0 - ratio * ratio - (2.0 * ctx.v + 1.0) * ratio / x64
        return grad * deriv.to(grad.dtype), None


class _LogBesselIv(torch.autograd.Function):
    """log I_v(x) - scale * v * log(x); scale in {0, 1} (the scaled form avoids the
    cancellation of v / x in the derivative at small x)."""

    @staticmethod
    def forward(ctx, x, v, scaled):
        x64 = _work(x)
        log_i, ratio = _log_iv_and_ratio(v, x64)
        if scaled:
            log_i = log_i - v * torch.log(x64)
        ctx.save_for_backward(x, ratio)
        ctx.v, ctx.scaled = v, scaled
        return log_i.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, ratio = ctx.saved_tensors
        x64 = _safe(x.to(torch.float64))
        if torch.is_grad_enabled():
            ratio = _BesselRatio.apply(x64, ctx.v)
        deriv = ratio if ctx.scaled else ratio + ctx.v / x64
        return grad * deriv.to(grad.dtype), None, None


def log_bessel_iv(v: float, x: torch.Tensor) -> torch.Tensor:
    """log I_v(x) for a Python order v >= 0 and a tensor x > 0 (any shape, float dtype).

    Relative error below ~3e-14 (against mpmath) for v in [0, 1024] and x in [1e-6, 1e6];
    float32 inputs are computed in float64 and rounded. Differentiable in x to any order.
    """
    _check(v, x)
    return _LogBesselIv.apply(x, float(v), False)


def log_bessel_iv_scaled(v: float, x: torch.Tensor) -> torch.Tensor:
    """log(I_v(x) / x^v), finite as x -> 0, with derivative I_{v+1}(x) / I_v(x)."""
    _check(v, x)
    return _LogBesselIv.apply(x, float(v), True)


def bessel_iv_ratio(v: float, x: torch.Tensor) -> torch.Tensor:
    """I_{v+1}(x) / I_v(x) (the von Mises-Fisher mean resultant length A_{2v+2}(x))."""
    _check(v, x)
    return _BesselRatio.apply(x, float(v))
