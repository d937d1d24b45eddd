"""Diffusion benchmark cases (float32): q_sample and p_step at B=65536 D=64, forward_chain at
B=256 D=64 T=1000, and sample() for 1000 steps at B=256 D=64 with a tiny model.

Each per-sample-t op is timed twice: with the noise given ("given": pure data movement) and
with the noise drawn ("drawn": lvmfast makes it inside the kernel, the others call
torch.randn_like). Baselines (is_baseline): diffusers' DDPMScheduler.add_noise for q_sample
(falling back to the torch gather form when diffusers is missing), the per-sample-t torch step
for p_step, the Python loop for forward_chain and the torch loop of per-sample-t steps for
sample(). diffusers' step() takes one shared t, so its rows use t = 500 for every sample.
"""
from __future__ import annotations

import torch

import lvmfast
from lvmfast.bench.harness import Candidate, Case, timed_backend
from lvmfast.diffusion import Schedule

FULL = {"rows": (65536, 64), "chain": (256, 64, 1000), "sample": (256, 64, 1000)}
QUICK = {"rows": (2048, 64), "chain": (32, 64, 50), "sample": (32, 64, 20)}
T_ROWS = 1000

try:
    import diffusers
except Exception:  # optional peer
    diffusers = None


def _ddpm(T, device):
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False,
                                    variance_type="fixed_small")
    sched.alphas_cumprod = sched.alphas_cumprod.to(device)  # as a pipeline would keep it
    return sched


def _view(v, x):
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def torch_q_sample(x0, t, s, noise):
    """The plain-torch form: gather per-sample coefficients, then two products and a sum."""
    abar = s.alphas_cumprod[t]
    return _view(abar.sqrt(), x0) * x0 + _view((1 - abar).sqrt(), x0) * noise


def torch_p_step(xt, eps, t, s, noise):
    """The per-sample-t torch DDPM step (what a strong user writes)."""
    beta, alpha, abar = s.betas[t], s.alphas[t], s.alphas_cumprod[t]
    mean = (xt - _view(beta / (1 - abar).sqrt(), xt) * eps) / _view(alpha.sqrt(), xt)
    sigma = _view(s.posterior_variance[t].sqrt() * (t > 0), xt)
    return mean + sigma * noise


class TinyEps(torch.nn.Module):
    """eps(x, t) = Linear(x) + embedding(t): a model that costs less than the step itself."""

    def __init__(self, D, T, device):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.lin = torch.nn.Linear(D, D).to(device)
        self.emb = torch.nn.Parameter(0.1 * torch.randn(T, D, generator=gen).to(device))

    def forward(self, x, t):
        return self.lin(x) + self.emb[t]


def _rows_maker(kind, fn, B, D, device, drawn):
    s = Schedule.linear(T_ROWS, device=device)

    def make():
        x, y = (torch.randn(B, D, device=device).requires_grad_() for _ in range(2))
        t = torch.randint(0, T_ROWS, (B,), device=device)
        noise = None if drawn else torch.randn(B, D, device=device)
        if kind == "q_sample":
            return (lambda: fn(x, t, s, noise)), [x]
        return (lambda: fn(x, y, t, s, noise)), [x, y]
    return make


def _lvmfast(op, backend):
    def q(x0, t, s, noise):
        with lvmfast.use_backend(backend):
            return lvmfast.diffusion.q_sample(x0, t, s, noise=noise)[0]

    def p(xt, eps, t, s, noise):
        with lvmfast.use_backend(backend):
            return lvmfast.diffusion.p_step(xt, eps, t, s, noise=noise)
    return q if op == "q_sample" else p


def _with_randn(fn, kind):
    if kind == "q_sample":
        return lambda x0, t, s, noise: fn(x0, t, s, torch.randn_like(x0) if noise is None else noise)
    return lambda xt, eps, t, s, noise: fn(xt, eps, t, s, torch.randn_like(xt) if noise is None else noise)


def _rows_cases(device, B, D, quick):
    backends = [b for b in ("native", "triton") if timed_backend(b, "q_sample", device)]
    out = []
    nbytes = B * D * 4
    for drawn in ((True,) if quick else (False, True)):  # quick: the drawn-noise rows only
        shape_name = "drawn" if drawn else "given"
        # q_sample
        cands = [Candidate(f"lvmfast[{b}]", _rows_maker("q_sample", _lvmfast("q_sample", b), B, D, device, drawn))
                 for b in backends]
        if diffusers is not None:
            ddpm = _ddpm(T_ROWS, device)
            add_noise = _with_randn(lambda x0, t, s, noise: ddpm.add_noise(x0, noise, t), "q_sample")
            cands.append(Candidate("diffusers add_noise", _rows_maker("q_sample", add_noise, B, D, device, drawn),
                                   is_baseline=True, bytes_needed=6 * nbytes))
        if not quick or diffusers is None:
            cands.append(Candidate("torch gather form", _rows_maker("q_sample", _with_randn(torch_q_sample, "q_sample"),
                                                                    B, D, device, drawn),
                                   is_baseline=diffusers is None, bytes_needed=6 * nbytes))
        if not quick:
            cands.append(Candidate("lvmfast[reference]", _rows_maker("q_sample", _lvmfast("q_sample", "reference"),
                                                                     B, D, device, drawn), bytes_needed=6 * nbytes))
        out.append(Case("q_sample", shape_name, {"B": B, "D": D, "T": T_ROWS}, cands))
        # p_step
        cands = [Candidate(f"lvmfast[{b}]", _rows_maker("p_step", _lvmfast("p_step", b), B, D, device, drawn))
                 for b in backends]
        cands.append(Candidate("torch per-sample-t step", _rows_maker("p_step", _with_randn(torch_p_step, "p_step"),
                                                                      B, D, device, drawn),
                               is_baseline=True, bytes_needed=8 * nbytes))
        if diffusers is not None and drawn:
            ddpm = _ddpm(T_ROWS, device)

            def diffusers_step(xt, eps, t, s, noise):  # shared t: step() takes one timestep
                return ddpm.step(eps, 500, xt).prev_sample
            cands.append(Candidate("diffusers step (shared t=500)",
                                   _rows_maker("p_step", diffusers_step, B, D, device, drawn),
                                   bytes_needed=8 * nbytes))
        if not quick:
            cands.append(Candidate("lvmfast[reference]", _rows_maker("p_step", _lvmfast("p_step", "reference"),
                                                                     B, D, device, drawn), bytes_needed=8 * nbytes))
        out.append(Case("p_step", shape_name, {"B": B, "D": D, "T": T_ROWS}, cands))
    return out


def torch_chain(x, betas):
    """The Python loop: one randn_like and one update per step, stacked."""
    z, out = x, []
    for i in range(betas.shape[0]):
        z = torch.sqrt(1 - betas[i]) * z + torch.sqrt(betas[i]) * torch.randn_like(z)
        out.append(z)
    return torch.stack(out)


def _chain_cases(device, B, D, T):
    betas = Schedule.linear(T, device=device).betas

    def maker(fn):
        def make():
            x = torch.randn(B, D, device=device).requires_grad_()
            return (lambda: fn(x, betas)), [x]
        return make

    def lv(backend):
        def fn(x, b):
            with lvmfast.use_backend(backend):
                return lvmfast.diffusion.forward_chain(x, b)
        return fn

    cands = [Candidate(f"lvmfast[{b}]", maker(lv(b)))
             for b in ("native", "triton") if timed_backend(b, "forward_chain", device)]
    cands.append(Candidate("torch Python loop", maker(torch_chain), is_baseline=True,
                           bytes_needed=3 * T * B * D * 4))
    return [Case("forward_chain", "chain", {"B": B, "D": D, "T": T}, cands)]


def _sample_cases(device, B, D, T, quick):
    s = Schedule.linear(T, device=device)
    model = TinyEps(D, T, device)

    def maker(fn):
        def make():
            return (lambda: fn()), []
        return make

    def lv(backend):
        def fn():
            with lvmfast.use_backend(backend):
                return lvmfast.diffusion.sample(model, (B, D), s, progress=False)
        return fn

    @torch.no_grad()
    def torch_loop():
        x = torch.randn(B, D, device=device)
        for i in range(T - 1, -1, -1):
            t = torch.full((B,), i, dtype=torch.long, device=device)
            x = torch_p_step(x, model(x, t), t, s, torch.randn_like(x))
        return x

    cands = [Candidate(f"lvmfast[{b}] sample()", maker(lv(b)))
             for b in ("native", "triton", "reference")
             if (b == "reference" and not quick) or (b != "reference" and timed_backend(b, "p_step", device))]
    cands.append(Candidate("torch loop, per-sample-t step", maker(torch_loop), is_baseline=True))
    if diffusers is not None:
        ddpm = _ddpm(T, device)

        @torch.no_grad()
        def diffusers_loop():
            x = torch.randn(B, D, device=device)
            for i in range(T - 1, -1, -1):
                x = ddpm.step(model(x, torch.full((B,), i, dtype=torch.long, device=device)), i, x).prev_sample
            return x
        cands.append(Candidate("diffusers DDPMScheduler.step loop", maker(diffusers_loop)))
    return [Case("sample", "sample", {"B": B, "D": D, "T": T}, cands, modes=("fwd",))]


def cases(device: torch.device, quick: bool) -> list[Case]:
    shapes = QUICK if quick else FULL
    return (_rows_cases(device, *shapes["rows"], quick) + _chain_cases(device, *shapes["chain"])
            + _sample_cases(device, *shapes["sample"], quick))
