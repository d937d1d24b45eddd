"""log_mog benchmark cases: lvmfast backends against the pure-torch formulations and
torch.distributions.MixtureSameFamily, forward and forward+backward, float32."""
from __future__ import annotations

import math

import torch

import lvmfast
from lvmfast.bench.harness import Candidate, Case, timed_backend

FULL_SHAPES = {"vamp": (100, 500, 40), "mid": (4096, 512, 64), "big": (65536, 1024, 64)}
QUICK_SHAPES = {"vamp": (100, 500, 40), "small": (1024, 128, 32)}


def two_matmul(z, means, logvars, logits):
    """The strongest plain-torch form: the quadratic expanded into two matrix products."""
    prec = torch.exp(-logvars)
    quad = (z * z) @ prec.T - 2 * z @ (means * prec).T + (means * means * prec).sum(-1)
    log_norm = -0.5 * (logvars.sum(-1) + z.shape[-1] * math.log(2 * math.pi))
    return torch.logsumexp(torch.log_softmax(logits, -1) + log_norm - 0.5 * quad, dim=-1)


def broadcast(z, means, logvars, logits):
    """The direct (..., K, L) broadcast, which lvmfast's reference backend also uses."""
    with lvmfast.use_backend("reference"):
        return lvmfast.log_mog(z, means, logvars, logits)


def mixture_same_family(z, means, logvars, logits):
    D = torch.distributions
    comp = D.Independent(D.Normal(means, torch.exp(0.5 * logvars)), 1)
    return D.MixtureSameFamily(D.Categorical(logits=logits), comp).log_prob(z)


def lvmfast_backend(name):
    def fn(z, means, logvars, logits):
        with lvmfast.use_backend(name):
            return lvmfast.log_mog(z, means, logvars, logits)
    return fn


def _maker(fn, B, K, L, device):
    def make():
        z = torch.randn(B, L, device=device) * 2
        means = torch.randn(K, L, device=device) * 2
        logvars = torch.empty(K, L, device=device).uniform_(-2, 1)
        logits = torch.randn(K, device=device)
        inputs = [t.requires_grad_() for t in (z, means, logvars, logits)]
        return (lambda: fn(*inputs)), inputs
    return make


def cases(device: torch.device, quick: bool) -> list[Case]:
    out = []
    for shape_name, (B, K, L) in (QUICK_SHAPES if quick else FULL_SHAPES).items():
        bkl = B * K * L * 4  # one float32 (B, K, L) temporary
        cands = [Candidate(f"lvmfast[{b}]", _maker(lvmfast_backend(b), B, K, L, device))
                 for b in ("native", "triton") if timed_backend(b, "log_mog", device)]
        cands += [
            Candidate("torch two-matmul", _maker(two_matmul, B, K, L, device), is_baseline=True,
                      bytes_needed=6 * B * K * 4),
            Candidate("torch broadcast (reference)", _maker(broadcast, B, K, L, device),
                      bytes_needed=4 * bkl),
            Candidate("torch.distributions MixtureSameFamily",
                      _maker(mixture_same_family, B, K, L, device), bytes_needed=4 * bkl),
        ]
        if not quick:
            compiled = torch.compile(two_matmul, dynamic=False)
            cands.append(Candidate("torch.compile two-matmul", _maker(compiled, B, K, L, device),
                                   bytes_needed=6 * B * K * 4))
        out.append(Case("log_mog", shape_name, {"B": B, "K": K, "L": L}, cands))
    return out
