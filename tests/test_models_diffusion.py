"""DDGM and DDPM: their bounds against straightforward torch.distributions computations, an
oracle noise predictor, training steps, sampling and the forward-diffusion picture."""
import math

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Normal, kl_divergence

from lvmfast.data import load_digits
from lvmfast.diffusion import Schedule, q_sample
from lvmfast.models.diffusion import (DDGM, DDPM, EpsNet, discretized_gaussian_log_prob, fit_ddpm,
                                      forward_diffusion_picture, to_levels, to_unit)


def digits(n, levels=17, dim=64):
    return torch.randint(0, levels, (n, dim))


# ------------------------------------------------------------------ helpers
def test_unit_scale_round_trip_and_discretized_gaussian_normalizes():
    levels = 5
    x = torch.arange(levels)
    torch.testing.assert_close(to_unit(x, levels), torch.linspace(-1, 1, levels))
    assert torch.equal(to_levels(to_unit(x, levels) + 0.2, levels), x)  # less than half a bin off
    assert to_levels(torch.tensor([-3.0, 3.0]), levels).tolist() == [0, levels - 1]
    # every level's probability, for means from far below to far above the range, sums to 1
    mean = torch.tensor([-30.0, -1.3, -0.2, 0.0, 0.4, 1.0, 2.5, 30.0], requires_grad=True)
    for std in (1e-3, 0.05, 1.0):
        logp = torch.stack([discretized_gaussian_log_prob(torch.full((8, 1), k), mean[:, None], std, levels)
                            for k in range(levels)], -1)
        torch.testing.assert_close(logp.logsumexp(-1), torch.zeros(8), atol=1e-5, rtol=0)
        # against the CDF differences, where those are representable
        edges = torch.tensor([-math.inf, -0.75, -0.25, 0.25, 0.75, math.inf])
        cdf = Normal(mean.detach()[:, None].double(), std).cdf(edges.double())
        expected = (cdf[:, 1:] - cdf[:, :-1]).log()
        ok = expected > -30
        torch.testing.assert_close(logp.detach().double()[ok], expected[ok], atol=1e-4, rtol=1e-4)
        logp[torch.isfinite(logp)].sum().backward()
        assert torch.isfinite(mean.grad).all()
        mean.grad = None


# ------------------------------------------------------------------ DDGM
def small_ddgm(T=3, dim=6, levels=5):
    return DDGM(data_dim=dim, levels=levels, T=T, beta=torch.tensor([0.3, 0.5, 0.6])[:T], hidden=16)


def reference_ddgm_log_weights(model, x, zs):
    """The ELBO's integrand written out with torch.distributions, step by step, in float64."""
    zs = zs.double()
    u = (2 * x.double() / (model.levels - 1) - 1).expand_as(zs[0])
    chain = [u] + list(zs)  # chain[i] = z_i, i = 0..T
    log_w = 0
    for i in range(1, model.T + 1):  # - log q(z_i | z_{i-1})
        beta = model.betas[i - 1].double()
        log_w = log_w - Normal(torch.sqrt(1 - beta) * chain[i - 1], torch.sqrt(beta)).log_prob(chain[i]).sum(-1)
    log_w = log_w + Normal(0.0, 1.0).log_prob(chain[model.T]).sum(-1)  # log p(z_T)
    for i in range(model.T, 1, -1):  # log p(z_{i-1} | z_i) from the network of step i
        mean, logvar = model.reverse[i - 2](chain[i].float()).double().chunk(2, -1)
        log_w = log_w + Normal(mean, torch.exp(0.5 * logvar)).log_prob(chain[i - 1]).sum(-1)
    logits = model.decoder(chain[1].float()).double().reshape(*chain[1].shape, model.levels)
    return log_w + Categorical(logits=logits).log_prob(x.expand(chain[1].shape)).sum(-1)


def test_ddgm_bound_matches_reference():
    model = small_ddgm()
    x = digits(4, levels=5, dim=6)
    zs = model.chain(x, num_samples=3)
    assert zs.shape == (3, 3, 4, 6)
    log_w = model.log_weights_of_chain(x, zs)
    torch.testing.assert_close(log_w.double(), reference_ddgm_log_weights(model, x, zs), rtol=1e-5, atol=1e-4)
    assert model.log_importance_weights(x, 7).shape == (7, 4)
    # elbo is the average over the chains drawn from the generator
    elbo = model.elbo(x, num_samples=3, generator=torch.Generator().manual_seed(5))
    zs = model.chain(x, 3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(elbo, model.log_weights_of_chain(x, zs).mean(0))
    # beta = 0 keeps the decoder term only
    dec = Categorical(logits=model.decoder(zs[0]).reshape(3, 4, 6, 5)).log_prob(x.expand(3, 4, 6)).sum(-1).mean(0)
    torch.testing.assert_close(model.elbo(x, beta=0.0, num_samples=3, generator=torch.Generator().manual_seed(5)),
                               dec)


def test_ddgm_q_terms_are_conditioned_on_the_previous_latent():
    # With networks that predict N(0, I) everywhere and uniform decoder logits, the log-weight
    # is known except for -log q, whose mean over chains must be the chain's entropy
    # sum_i D/2 log(2 pi e beta_i); conditioning z_i on itself (the book's slip) breaks that.
    model = small_ddgm()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    x = digits(1, levels=5, dim=6)
    S = 4000
    zs = model.chain(x, S)
    log_p = -6 * math.log(5) + Normal(0.0, 1.0).log_prob(zs).sum(-1).sum(0)
    neg_log_q = (model.log_weights_of_chain(x, zs) - log_p)[:, 0]
    entropy = sum(0.5 * 6 * math.log(2 * math.pi * math.e * b) for b in model.betas.tolist())
    # -log q = entropy + sum of (eps^2 - 1) / 2 terms: standard deviation sqrt(D T / 2)
    se = math.sqrt(6 * 3 / 2) / math.sqrt(S)
    assert abs(neg_log_q.mean().item() - entropy) < 5 * se


def test_ddgm_trains_registers_its_networks_and_samples():
    model = DDGM(hidden=32)
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert {"reverse", "decoder"} <= names and len(model.reverse) == model.T - 1
    assert "betas" in model.state_dict()
    x = load_digits().train[:64]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = model(x)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        # every reverse network receives a gradient (the book's plain list would not be trained)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 30, losses
    s = model.sample(50, generator=torch.Generator().manual_seed(0))
    assert s.shape == (50, 64) and s.dtype == torch.long and 0 <= s.min() and s.max() <= 16
    assert torch.equal(s, model.sample(50, generator=torch.Generator().manual_seed(0)))


# ------------------------------------------------------------------ DDPM
def small_ddpm(T=6, dim=5, levels=5):
    sched = Schedule(torch.linspace(0.05, 0.5, T, dtype=torch.float64))
    net = EpsNet(dim, hidden=16, blocks=1, time_dim=8)
    nn.init.normal_(net.out[1].weight, std=0.3)  # not the zero start: a network that matters
    return DDPM(data_dim=dim, levels=levels, schedule=sched, net=net, ema=0)


def reference_ddpm_terms(model, x, noise):
    """-log p(x | x_0), the T - 1 KL terms and the prior KL, from the textbook formulas in
    float64 and torch.distributions."""
    betas = model.schedule.betas.double()
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    u = 2 * x.double() / (model.levels - 1) - 1
    cols = []
    for t in range(model.T):
        xt = abar[t].sqrt() * u + (1 - abar[t]).sqrt() * noise[t].double()
        eps = model.net(xt.float(), torch.full((x.shape[0],), t)).double()
        mean_p = (xt - betas[t] / (1 - abar[t]).sqrt() * eps) / alphas[t].sqrt()
        if t == 0:
            half = 1 / (model.levels - 1)
            hi = torch.where(x == model.levels - 1, math.inf, u + half)
            lo = torch.where(x == 0, -math.inf, u - half)
            p = Normal(mean_p, betas[0].sqrt())
            cols.append(-(p.cdf(hi) - p.cdf(lo)).log().sum(-1))
        else:
            var = betas[t] * (1 - abar[t - 1]) / (1 - abar[t])
            mean_q = (betas[t] * abar[t - 1].sqrt() * u + alphas[t].sqrt() * (1 - abar[t - 1]) * xt) / (1 - abar[t])
            cols.append(kl_divergence(Normal(mean_q, var.sqrt()), Normal(mean_p, var.sqrt())).sum(-1))
    q_last = Normal(abar[-1].sqrt() * u, (1 - abar[-1]).sqrt())
    cols.append(kl_divergence(q_last, Normal(0.0, 1.0)).sum(-1))
    return torch.stack(cols, -1)


def test_ddpm_bound_terms_match_reference():
    model = small_ddpm()
    x = digits(7, levels=5, dim=5)
    noise = torch.randn(model.T, 7, 5)
    terms = model.bound_terms(x, noise=noise)
    assert terms.shape == (7, model.T + 1)
    torch.testing.assert_close(terms.double(), reference_ddpm_terms(model, x, noise), rtol=1e-4, atol=1e-4)
    elbo = model.elbo(x, num_samples=2, generator=torch.Generator().manual_seed(3))
    assert elbo.shape == (7,) and torch.isfinite(elbo).all() and (elbo < 0).all()
    torch.testing.assert_close(elbo, model.elbo(x, num_samples=2, generator=torch.Generator().manual_seed(3)))


class OracleEps(nn.Module):
    """The exact noise for a known batch: eps = (x_t - sqrt(abar_t) x) / sqrt(1 - abar_t)."""

    def __init__(self, u, schedule):
        super().__init__()
        self.u, self.abar = u, torch.log1p(-schedule.betas.double()).cumsum(0).exp()

    def forward(self, xt, t):
        abar = self.abar[t].float()[:, None]
        return (xt - abar.sqrt() * self.u) / (1 - abar).sqrt()


def test_ddpm_oracle_has_zero_simple_loss_and_only_the_prior_in_its_bound():
    sched = Schedule.linear(200)
    x = digits(8)
    model = DDPM(schedule=sched, net=OracleEps(to_unit(x, 17), sched), ema=0)
    # L_simple regresses on the very noise q_sample used at the drawn steps
    assert model(x).item() < 1e-6
    t = torch.randint(0, 200, (8,))
    assert model.loss_simple(x, t=t, noise=torch.randn(8, 64)).item() < 1e-6
    terms = model.bound_terms(x)
    assert terms[:, :-1].abs().max() < 1e-4  # decoder term and KLs vanish
    abar = sched.alphas_cumprod[-1].double()
    u = to_unit(x, 17).double()
    prior = 0.5 * (abar * u ** 2 + (1 - abar) - 1 - torch.log(1 - abar)).sum(-1)
    torch.testing.assert_close(terms[:, -1].double(), prior, rtol=1e-4, atol=1e-4)


def test_ddpm_simple_loss_is_the_noise_regression():
    model = small_ddpm()
    x = digits(9, levels=5, dim=5)
    t, noise = torch.randint(0, model.T, (9,)), torch.randn(9, 5)
    abar = model.schedule.alphas_cumprod[t][:, None]
    xt = abar.sqrt() * to_unit(x, 5) + (1 - abar).sqrt() * noise
    expected = ((model.net(xt, t) - noise) ** 2).mean()
    torch.testing.assert_close(model.loss_simple(x, t=t, noise=noise), expected, rtol=1e-5, atol=1e-6)


def test_ddpm_trains_with_ema_and_samples():
    model = DDPM(T=50, schedule="cosine", net="mlp", hidden=64, blocks=1, ema=0.9)
    x = load_digits().train[:64]
    opt = torch.optim.Adam(model.net.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        loss = model(x)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.85 * sum(losses[:10]) / 10, losses
    assert model.ema_updates.item() == 60
    # the average trails the trained weights, and only training-mode calls move it
    ema_w, w = model.ema_net.out[1].weight, model.net.out[1].weight
    assert 0 < (ema_w - w).abs().max() < w.abs().max()
    model.eval()
    before = ema_w.clone()
    model(x)
    assert torch.equal(before, ema_w)
    s = model.sample(30, generator=torch.Generator().manual_seed(1))
    assert s.shape == (30, 64) and s.dtype == torch.long and 0 <= s.min() and s.max() <= 16
    assert torch.equal(s, model.sample(30, generator=torch.Generator().manual_seed(1)))
    elbo = model.elbo(x[:5])
    assert elbo.shape == (5,) and torch.isfinite(elbo).all()


@pytest.mark.parametrize("kind", ["ddgm", "ddpm"])
def test_forward_diffusion_picture(tmp_path, kind):
    betas = DDGM().betas if kind == "ddgm" else Schedule.cosine(100).betas
    path = forward_diffusion_picture(digits(3), betas, str(tmp_path / "fwd.png"), steps=6)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_levels_net_recovers_the_noise_at_small_steps():
    # Where the noise is far below the grey levels' spacing (sqrt(1 - abar_t) = 0.010 and 0.015
    # at the first two steps, half a bin 0.0625) the likelihood term alone rounds x_t to its
    # level: an untrained network predicts the exact noise there. A draw near or past half a bin
    # (over 4 standard deviations at step 1) rounds to the next level instead, and over all 2048
    # elements that happened for 5 of 40 seeds; so the claim is checked where it holds, on the
    # elements well inside, |noise| sqrt(1 - abar_t) < 0.05 (over 99% of them).
    sched = Schedule.linear(1000)
    model = DDPM(schedule=sched, ema=0)
    x = digits(32)
    for step in (0, 1):
        t = torch.full((32,), step)
        xt, noise = q_sample(to_unit(x, 17), t, sched)
        inside = (noise * (1 - sched.alphas_cumprod[step]).sqrt()).abs() < 0.05
        assert inside.float().mean() > 0.99
        assert (model.net(xt, t) - noise)[inside].abs().mean() < 1e-3


def test_fit_ddpm_keeps_the_best_validation_bound():
    data = load_digits()
    data.train, data.val = data.train[:128], data.val[:32]
    model = DDPM(T=20, schedule="cosine", hidden=32, blocks=1)
    # a validation bound that is best at the second evaluation, with a snapshot of the weights
    # each evaluation saw
    fake, seen = iter([-10.0, -5.0, -20.0]), []

    def elbo(x, generator=None):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return torch.full((x.shape[0],), next(fake))

    model.elbo = elbo
    history, best = fit_ddpm(model, data, epochs=6, eval_every=2, lr=3e-3, progress=False)
    assert [h["epoch"] for h in history] == [2, 4, 6] and [h["val_neg_elbo"] for h in history] == [10, 5, 20]
    assert best == 4 and not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, seen[1][k]), k
    assert not torch.equal(seen[1]["net.backbone.inp.weight"], seen[2]["net.backbone.inp.weight"])


def test_ema_forgets_the_initial_weights_quickly():
    model = DDPM(T=20, hidden=16, blocks=1, ema=0.999)
    before = model.ema_net.backbone.inp.weight.clone()
    with torch.no_grad():
        model.net.backbone.inp.weight.add_(1.0)
    model.train()
    model(digits(4))
    # first update: decay min(0.999, 2 / 11), not 0.999
    torch.testing.assert_close(model.ema_net.backbone.inp.weight, before + 9 / 11)
