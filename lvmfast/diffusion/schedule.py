"""Noise schedules of DDPM: betas, alphas, alphas_cumprod and the per-step coefficient tables
the fused kernels gather by t.

Every coefficient is computed in float64 from the float64 betas, then cast: 1 - abar_t near
t = 0 (about 1e-4) would lose three digits if it were formed from a float32 abar_t.
"""
from __future__ import annotations

import math

import torch

# Column layout of the coefficient tables (T, k) handed to the kernels. Each per-sample-t op
# computes out = c0[t] * a + c1[t] * b + c2[t] * noise on its two inputs a, b.
#   "q":         [sqrt(abar_t), sqrt(1 - abar_t)]                       q_sample(x0, noise)
#   "posterior": [coef_x0, coef_xt, beta~_t]                             q_posterior(x0, xt)
#   "p":         [1/sqrt(alpha_t), -beta_t/(sqrt(alpha_t) sqrt(1 - abar_t)), sqrt(beta~_t)]
#                                                                        p_step(xt, eps_pred, noise)
TABLE_KINDS = ("q", "posterior", "p")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in (and the tables are stored in) for inputs of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def coefficient_tables(betas64: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three coefficient tables in float64 from float64 betas (T,), all in (0, 1)."""
    log_alphas = torch.log1p(-betas64)
    log_abar = torch.cumsum(log_alphas, 0)
    abar = torch.exp(log_abar)
    one_minus_abar = -torch.expm1(log_abar)
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    one_minus_abar_prev = torch.cat([abar.new_zeros(1), one_minus_abar[:-1]])
    alphas = 1.0 - betas64
    post_var = betas64 * one_minus_abar_prev / one_minus_abar  # [4.101]; exactly 0 at t = 0
    coef_x0 = betas64 * abar_prev.sqrt() / one_minus_abar      # [4.100]
    coef_xt = alphas.sqrt() * one_minus_abar_prev / one_minus_abar
    return {
        "q": torch.stack([abar.sqrt(), one_minus_abar.sqrt()], 1),
        "posterior": torch.stack([coef_x0, coef_xt, post_var], 1),
        "p": torch.stack([alphas.rsqrt(), -betas64 / (alphas.sqrt() * one_minus_abar.sqrt()),
                          post_var.sqrt()], 1),
    }


class Schedule:
    """A DDPM noise schedule of T steps (0-based t in [0, T-1]).

    Attributes `betas`, `alphas`, `alphas_cumprod` and `posterior_variance` are (T,) tensors in
    `dtype` on `device`. Build one with `Schedule.linear`, `Schedule.cosine` or
    `Schedule(betas)` from any betas in (0, 1).
    """

    def __init__(self, betas: torch.Tensor, device=None, dtype: torch.dtype = torch.float32):
        if not isinstance(betas, torch.Tensor):
            betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or betas.numel() < 1:
            raise ValueError(f"Schedule: betas must have shape (T,) with T >= 1, got {tuple(betas.shape)}")
        if not betas.is_floating_point():
            raise ValueError(f"Schedule: betas must be floating point, got {betas.dtype}")
        if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise ValueError(f"Schedule: dtype must be a floating dtype, got {dtype}")
        device = torch.device(device) if device is not None else betas.device
        betas64 = betas.detach().to(device="cpu", dtype=torch.float64)
        if not bool(((betas64 > 0) & (betas64 < 1)).all()):
            raise ValueError("Schedule: betas must lie in (0, 1), got values in "
                             f"[{betas64.min().item():.3g}, {betas64.max().item():.3g}]")
        self.device = device
        self.dtype = dtype
        self.num_steps = betas64.numel()
        self._betas64 = betas64.to(device)
        tables = coefficient_tables(betas64)
        alphas = 1.0 - betas64
        self.betas = betas64.to(device=device, dtype=dtype)
        self.alphas = alphas.to(device=device, dtype=dtype)
        self.alphas_cumprod = torch.exp(torch.cumsum(torch.log(alphas), 0)).to(device=device, dtype=dtype)
        self.posterior_variance = tables["posterior"][:, 2].to(device=device, dtype=dtype)
        # Both accumulation dtypes are built now, so that a lookup under torch.compile reads a
        # constant instead of creating a tensor while tracing.
        self._tables = {(kind, acc): table.to(device=device, dtype=acc).contiguous()
                        for kind, table in tables.items()
                        for acc in (torch.float32, torch.float64)}

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, device=None,
               dtype: torch.dtype = torch.float32) -> "Schedule":
        """Betas evenly spaced from beta_start to beta_end (Ho et al., 2020)."""
        cls._check_T(T)
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), device=device, dtype=dtype)

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999, device=None,
               dtype: torch.dtype = torch.float32) -> "Schedule":
        """abar(t) = cos^2(pi/2 (t/T + s) / (1 + s)), betas clipped at max_beta (Nichol and
        Dhariwal, 2021; diffusers' "squaredcos_cap_v2")."""
        cls._check_T(T)
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls(betas, device=device, dtype=dtype)

    @staticmethod
    def _check_T(T):
        if not isinstance(T, int) or T < 1:
            raise ValueError(f"Schedule: T must be a positive integer, got {T!r}")

    @property
    def T(self) -> int:
        return self.num_steps

    def __len__(self) -> int:
        return self.num_steps

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Schedule":
        """The same schedule on another device and/or attribute dtype."""
        return Schedule(self._betas64.cpu(), device=device if device is not None else self.device,
                        dtype=dtype if dtype is not None else self.dtype)

    def table(self, kind: str, dtype: torch.dtype) -> torch.Tensor:
        """Coefficient table `kind` ("q", "posterior", "p") for inputs of `dtype`, (T, k)."""
        return self._tables[(kind, acc_dtype(dtype))]

    def __repr__(self) -> str:
        return (f"Schedule(T={self.num_steps}, betas=[{self._betas64[0].item():.3g} .. "
                f"{self._betas64[-1].item():.3g}], device={self.device}, dtype={self.dtype})")
