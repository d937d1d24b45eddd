"""Diffusion models on discrete images: the DDGM of [4.5.3] and its DDPM form [4.102].

Both see the grey levels 0 .. levels - 1 scaled to [-1, 1] and end their reverse process in a
distribution over the grey levels, so that their bounds are in nats of the discrete data and
comparable with the VAEs' (the digits: 64 pixels, 17 levels).

Interface shared with the VAE (what `lvmfast.train` calls): `forward(x, beta)` the training
loss, `elbo(x, beta, num_samples, generator)` the bound per data point (B,), `sample(n,
generator)` integer grey levels (n, D). `betas` holds the forward process' betas, for
`forward_diffusion_picture`.
"""
from __future__ import annotations

import copy
import gc
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from lvmfast import diffusion
from lvmfast.diffusion import Schedule
from lvmfast.models.vae import mlp
from lvmfast.nn.likelihoods import CategoricalLikelihood

_LOG_2PI = math.log(2 * math.pi)


def to_unit(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Grey levels 0 .. levels - 1 -> [-1, 1] (float32 unless x is already floating)."""
    x = x if x.is_floating_point() else x.float()
    return x * (2.0 / (levels - 1)) - 1.0


def to_levels(u: torch.Tensor, levels: int) -> torch.Tensor:
    """[-1, 1] -> the nearest grey level (long), values outside clamped to the end levels."""
    return torch.round((u + 1) * ((levels - 1) / 2)).clamp(0, levels - 1).long()


def log_normal(x, mean, logvar):
    """log N(x | mean, exp(logvar)), elementwise."""
    return -0.5 * (_LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def discretized_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std, levels: int) -> torch.Tensor:
    """log P(x) summed over the last dim, for grey levels x (long, (..., D)) under N(mean, std^2)
    in the [-1, 1] scale integrated over each level's bin (Ho et al. 2020, eq. 13): bins are
    2 / (levels - 1) wide around the levels, the end bins reach to -inf and +inf."""
    half = 1.0 / (levels - 1)
    # float64: the far tails' log_ndtr values and gradients stay finite and exact enough
    mean64 = mean.double()
    center = to_unit(x, levels).double()
    u, l = (center + half - mean64) / std, (center - half - mean64) / std
    # log(Phi(u) - Phi(l)) evaluated in the tail away from the mean, so that the two terms
    # never both round to 1: bins above the mean use Phi(-l) - Phi(-u) instead.
    above = (u + l) > 0
    a, b = torch.where(above, -l, u), torch.where(above, -u, l)
    log_a = torch.special.log_ndtr(a)
    inner = log_a + torch.log(-torch.expm1(torch.special.log_ndtr(b) - log_a))
    # the end bins reach to -inf and +inf
    logp = torch.where(x == 0, torch.special.log_ndtr(u),
                       torch.where(x == levels - 1, torch.special.log_ndtr(-l), inner))
    return logp.sum(-1).to(mean.dtype)


# ------------------------------------------------------------------ DDGM [4.5.3]
class DDGM(nn.Module):
    """The deep diffusion generative model of [4.5.3] (Tomczak's digits example, corrected).

    Forward (fixed): z_0 = x in [-1, 1], q(z_i | z_{i-1}) = N(sqrt(1 - beta_i) z_{i-1}, beta_i I),
    i = 1..T, all T latents drawn by the fused `forward_chain`. Reverse (learned):
    p(z_T) = N(0, I), p(z_{i-1} | z_i) = N(mu_i(z_i), diag exp(logvar_i(z_i))) for i = T..2, one
    MLP per step, and p(x | z_1) independent categoricals over the grey levels. The ELBO is
    log p(x|z_1) + log p(z_T) + sum_{i=2}^T log p(z_{i-1}|z_i) - sum_{i=1}^T log q(z_i|z_{i-1})
    at one draw of the chain. Defaults follow the book: T = 5, beta = 0.6, 256 hidden units.

    Fixed against the book's code: the reverse networks are an nn.ModuleList (so they are
    trained and saved), each q-term is conditioned on the previous latent z_{i-1} (not on z_i
    itself), and each predicted mean is scored at the latent it predicts.
    """

    def __init__(self, data_dim: int = 64, levels: int = 17, T: int = 5, beta: float | torch.Tensor = 0.6,
                 hidden: int = 256):
        super().__init__()
        self.data_dim, self.levels, self.T = data_dim, levels, T
        betas = torch.as_tensor(beta, dtype=torch.float32).expand(T).clone()
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"DDGM: betas must lie in (0, 1), got {betas.tolist()}")
        self.register_buffer("betas", betas)
        # reverse[i - 2] maps z_i to the mean and log-variance of z_{i-1}, i = 2..T
        self.reverse = nn.ModuleList(mlp([data_dim, hidden, hidden, hidden, 2 * data_dim], final_activation=False)
                                     for _ in range(T - 1))
        self.likelihood = CategoricalLikelihood(data_dim, levels)
        self.decoder = mlp([data_dim, 2 * hidden, 2 * hidden, 2 * hidden, data_dim * levels], final_activation=False)

    def log_weights_of_chain(self, x: torch.Tensor, zs: torch.Tensor) -> torch.Tensor:
        """log p(x, z_1..z_T) - log q(z_1..z_T | x) for a given chain zs (T, ..., B, D) whose
        trailing dims match x (B, D); returns zs.shape[1:-1]."""
        z_prev = to_unit(x, self.levels).to(zs.dtype).expand_as(zs[0])
        log_q = 0.0
        for i in range(self.T):  # q(z_{i+1} | z_i), 0-based here: zs[i] is z_{i+1}
            beta = self.betas[i].to(zs.dtype)
            log_q = log_q + log_normal(zs[i], torch.sqrt(1 - beta) * z_prev, torch.log(beta)).sum(-1)
            z_prev = zs[i]
        log_p = log_normal(zs[-1], torch.zeros_like(zs[-1]), torch.zeros_like(zs[-1])).sum(-1)  # p(z_T)
        for i in range(1, self.T):  # p(z_i | z_{i+1}): zs[i - 1] given zs[i]
            mean, logvar = self.reverse[i - 1](zs[i]).chunk(2, -1)
            log_p = log_p + log_normal(zs[i - 1], mean, logvar).sum(-1)
        log_px = self.likelihood.log_prob(x, self.decoder(zs[0]))
        return log_px + log_p - log_q

    def chain(self, x: torch.Tensor, num_samples: int = 1, generator=None) -> torch.Tensor:
        """num_samples forward chains per data point: (T, S, B, D)."""
        u = to_unit(x, self.levels).expand(num_samples, *x.shape)
        return diffusion.forward_chain(u.contiguous(), self.betas.to(u.dtype), generator)

    def log_importance_weights(self, x, num_samples: int = 1, generator=None) -> torch.Tensor:
        """(S, B) log-weights with q(z_1..z_T | x) as the proposal: the IWAE estimator
        (`lvmfast.estimators`) works on the DDGM as on a VAE."""
        return self.log_weights_of_chain(x, self.chain(x, num_samples, generator))

    def elbo(self, x, beta: float = 1.0, num_samples: int = 1, generator=None) -> torch.Tensor:
        """Monte Carlo ELBO per data point (B,) in nats; `beta` < 1 down-weights the latent part
        (KL warm-up), as in the VAE."""
        zs = self.chain(x, num_samples, generator)
        if beta == 1.0:
            return self.log_weights_of_chain(x, zs).mean(0)
        log_px = self.likelihood.log_prob(x, self.decoder(zs[0]))
        return (log_px + beta * (self.log_weights_of_chain(x, zs) - log_px)).mean(0)

    def forward(self, x, beta: float = 1.0):
        """The training loss: the negative ELBO averaged over the batch."""
        return -self.elbo(x, beta).mean()

    @torch.no_grad()
    def sample(self, n: int, generator=None) -> torch.Tensor:
        """Ancestral sampling z_T -> ... -> z_1 -> x: (n, D) grey levels (long)."""
        device = self.betas.device
        z = torch.randn(n, self.data_dim, generator=generator, device=device)
        for i in range(self.T - 1, 0, -1):
            mean, logvar = self.reverse[i - 1](z).chunk(2, -1)
            z = mean + torch.exp(0.5 * logvar) * torch.randn(z.shape, generator=generator, device=device)
        return self.likelihood.sample(self.decoder(z), generator)


# ------------------------------------------------------------------ DDPM [4.102]
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer steps t (B,) -> (B, dim) (Vaswani et al.; Ho et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], -1)


class EpsNet(nn.Module):
    """eps(x_t, t) for flat data: an MLP of residual blocks, each told the step through its own
    projection of a sinusoidal time embedding."""

    def __init__(self, data_dim: int, hidden: int = 256, blocks: int = 2, time_dim: int = 128,
                 out_dim: int | None = None):
        super().__init__()
        self.time_dim = time_dim
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(data_dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                                  nn.Linear(hidden, hidden)) for _ in range(blocks))
        self.time_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(blocks))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, out_dim or data_dim))
        nn.init.zeros_(self.out[1].weight)  # start from eps = 0: a calm first phase of training
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x, t):
        temb = self.time(timestep_embedding(t, self.time_dim).to(x.dtype))
        h = self.inp(x)
        for block, proj in zip(self.blocks, self.time_proj):
            h = h + block(h + proj(temb))
        return self.out(h)


class LevelsEpsNet(nn.Module):
    """eps(x_t, t) through a per-pixel posterior over the grey levels: a network gives logits
    over the levels, to which the exact log-likelihood log N(x_t | sqrt(abar_t) v_k, 1 - abar_t)
    of each level v_k is added; x0_hat is the posterior mean level and
    eps = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t).

    Why: at small t the data's discreteness determines eps exactly (x_t sits within a fraction
    of a bin of its level), a sawtooth in x_t that a plain MLP fits poorly and whose misfit the
    bound weights heavily; here the likelihood term rounds exactly, and the network only has to
    learn the levels' prior where the noise hides them."""

    def __init__(self, data_dim: int, levels: int, schedule: Schedule, hidden: int = 256, blocks: int = 2):
        super().__init__()
        self.data_dim, self.levels = data_dim, levels
        self.backbone = EpsNet(data_dim, hidden, blocks, out_dim=data_dim * levels)
        # in float64: 1 - abar_t near t = 0 (about 1e-4) would lose digits in float32
        log_abar = torch.log1p(-schedule.betas.double().cpu()).cumsum(0)
        self.register_buffer("sqrt_abar", log_abar.mul(0.5).exp().float())
        self.register_buffer("one_minus_abar", (-torch.expm1(log_abar)).float())
        self.register_buffer("grid", torch.linspace(-1, 1, levels))

    def forward(self, xt, t):
        logits = self.backbone(xt, t).reshape(*xt.shape, self.levels)
        s, var = self.sqrt_abar[t][:, None], self.one_minus_abar[t][:, None]
        logits = logits - (xt[..., None] - s[..., None] * self.grid) ** 2 / (2 * var[..., None])
        x0 = (torch.softmax(logits, -1) * self.grid).sum(-1)
        return (xt - s * x0) / var.sqrt()


class DDPM(nn.Module):
    """DDPM [4.102] on discrete images: x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps for
    t = 0..T-1 (0-based: x_0 is the first noisy latent, x the scaled data), a network eps(x_t, t),
    reverse steps with variance beta~_t (the fused `p_step`), and a discretized Gaussian decoder
    p(x | x_0) = N(mean of p_step at t = 0, beta_0) integrated over each grey level's bin.

    `net`: "levels" (`LevelsEpsNet`, the default: on the digits a test bound of about 94 nats
    and sharper samples, where the plain MLP stays above 200 nats), "mlp" (`EpsNet`, eps
    straight from an MLP) or any module eps(x_t, t).

    Trained with L_simple (random t, the fused `q_sample`); `elbo` is the variational bound
    -(decoder term + sum of the T - 1 KL terms + prior KL) in nats of the discrete data.
    `ema` > 0 keeps an exponential moving average of the network's weights (`ema_net`, no
    gradients), updated at every training-mode call of `forward`; outside training mode `elbo`
    and `sample` use the averaged weights, the usual DDPM practice against the noise of the
    last optimizer steps.
    """

    def __init__(self, data_dim: int = 64, levels: int = 17, T: int = 1000, schedule: str | Schedule = "cosine",
                 net: str | nn.Module = "levels", hidden: int = 256, blocks: int = 2, ema: float = 0.999):
        super().__init__()
        self.data_dim, self.levels = data_dim, levels
        if isinstance(schedule, str):
            makers = {"linear": Schedule.linear, "cosine": Schedule.cosine}
            if schedule not in makers:
                raise ValueError(f"DDPM: unknown schedule {schedule!r}; expected one of {tuple(makers)}")
            schedule = makers[schedule](T)
        self.schedule, self.T = schedule, schedule.num_steps
        self.register_buffer("betas", schedule.betas.float().clone())
        if net == "levels":
            net = LevelsEpsNet(data_dim, levels, schedule, hidden, blocks)
        elif net == "mlp":
            net = EpsNet(data_dim, hidden, blocks)
        elif not isinstance(net, nn.Module):
            raise ValueError(f"DDPM: net must be 'levels', 'mlp' or a module eps(x_t, t), got {net!r}")
        self.net = net
        self.ema_decay = ema
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False) if ema > 0 else None
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    def _schedule(self, device) -> Schedule:
        # A Schedule is not a module: follow the model's device on first use there.
        if self.schedule.device != device:
            self.schedule = self.schedule.to(device)
        return self.schedule

    def eps(self, xt, t):
        """The noise prediction, from the averaged weights outside training mode."""
        net = self.ema_net if (self.ema_net is not None and not self.training) else self.net
        return net(xt, t)

    @torch.no_grad()
    def update_ema(self):
        # The decay ramps up from 0.1 so that the average forgets the random initial weights
        # within the first few hundred steps.
        self.ema_updates += 1
        n = self.ema_updates.item()
        decay = min(self.ema_decay, (1 + n) / (10 + n))
        for avg, p in zip(self.ema_net.parameters(), self.net.parameters()):
            avg.lerp_(p, 1 - decay)

    def loss_simple(self, x, t=None, noise=None, generator=None) -> torch.Tensor:
        """L_simple = E_t,eps |eps - eps(x_t, t)|^2 (mean over pixels and batch), t uniform in
        [0, T-1] unless given; x_t from the fused q_sample."""
        u = to_unit(x, self.levels)
        if t is None:
            t = torch.randint(0, self.T, (u.shape[0],), generator=generator, device=u.device)
        xt, noise = diffusion.q_sample(u, t, self._schedule(u.device), noise=noise, generator=generator)
        return F.mse_loss(self.net(xt, t), noise)

    def forward(self, x, beta: float = 1.0):
        """The training loss L_simple (beta is unused); in training mode also one EMA update."""
        if self.training and self.ema_net is not None:
            self.update_ema()  # averages the weights of the previous optimizer step
        return self.loss_simple(x)

    def bound_terms(self, x, noise=None, generator=None) -> torch.Tensor:
        """The negative bound's terms per data point, (B, T + 1), in nats: column 0 the decoder's
        -log p(x | x_0), column t (1..T-1) KL(q(x_{t-1} | x_t, x) || p(x_{t-1} | x_t)), column T
        KL(q(x_{T-1} | x) || N(0, I)). noise (T, B, D): the q_sample noise per step (drawn when
        None). One network call per step, on the whole batch."""
        u = to_unit(x, self.levels)
        sched = self._schedule(u.device)
        B = u.shape[0]
        cols = []
        for i in range(self.T):
            t = torch.full((B,), i, dtype=torch.long, device=u.device)
            xt, _ = diffusion.q_sample(u, t, sched, noise=None if noise is None else noise[i], generator=generator)
            # p_step with zero noise is the reverse mean (at t = 0 it adds no noise anyway)
            mean_p = diffusion.p_step(xt, self.eps(xt, t), t, sched, noise=torch.zeros_like(xt))
            if i == 0:
                std = sched.betas[0].to(u.dtype).sqrt()
                cols.append(-discretized_gaussian_log_prob(x, mean_p, std, self.levels))
            else:  # both Gaussians have variance beta~_t: the KL is the scaled squared distance
                mean_q, var = diffusion.q_posterior(u, xt, t, sched)
                cols.append(((mean_q - mean_p) ** 2 / (2 * var)).sum(-1))
        abar = sched.alphas_cumprod[-1].to(u.dtype)
        m2, var = abar * u ** 2, 1 - abar
        cols.append(0.5 * (m2 + var - 1 - torch.log(var)).sum(-1))
        return torch.stack(cols, -1)

    def elbo(self, x, beta: float = 1.0, num_samples: int = 1, generator=None) -> torch.Tensor:
        """The variational bound per data point (B,) in nats, exact in the sum over all T steps,
        a Monte Carlo average over `num_samples` noise draws per step (beta is unused)."""
        total = 0.0
        for _ in range(num_samples):
            total = total - self.bound_terms(x, generator=generator).sum(-1)
        return total / num_samples

    @torch.no_grad()
    def sample(self, n: int, generator=None, progress: bool = False) -> torch.Tensor:
        """(n, D) grey levels: ancestral sampling with the fused `lvmfast.diffusion.sample`, then
        the decoder's draw (the reverse mean at t = 0 plus N(0, beta_0) noise, binned)."""
        sched = self._schedule(self.betas.device)
        mean = diffusion.sample(self.eps, (n, self.data_dim), sched, generator=generator, progress=progress)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return to_levels(mean + sched.betas[0].sqrt() * noise, self.levels)


# ------------------------------------------------------------------ pictures
def forward_diffusion_picture(x: torch.Tensor, betas: torch.Tensor, path: str, steps: int = 8, levels: int = 17,
                              image_shape: tuple[int, int] = (8, 8), generator=None) -> str:
    """Draw images x (n, D) grey levels along the forward diffusion z_i = sqrt(1 - beta_i) z_{i-1}
    + sqrt(beta_i) eps (one row per image, `steps` columns from the data to z_T, evenly spaced),
    as in the book's Fig. 4.24c. Writes `path` and returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x.detach().cpu()
    T = betas.shape[0]
    with torch.no_grad():
        zs = diffusion.forward_chain(to_unit(x, levels), betas.detach().cpu().float(), generator)
    chain = torch.cat([to_unit(x, levels)[None], zs])  # (T + 1, n, D), chain[i] = z_i
    cols = sorted(set(torch.linspace(0, T, min(steps, T + 1)).round().long().tolist()))
    fig, axes = plt.subplots(x.shape[0], len(cols), figsize=(1.1 * len(cols), 1.1 * x.shape[0] + 0.3),
                             squeeze=False)
    for j, i in enumerate(cols):
        axes[0, j].set_title("x" if i == 0 else f"z_{i}", fontsize=8)
        for r in range(x.shape[0]):
            axes[r, j].imshow(chain[i, r].reshape(image_shape).numpy(), cmap="gray_r", vmin=-1, vmax=1)
            axes[r, j].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ training
def fit_ddpm(model: DDPM, data, *, epochs: int = 200, lr: float = 1e-3, batch_size: int = 64, eval_every: int = 10,
             patience: int | None = 5, device="cpu", seed: int = 0, progress: bool = True, rank: int = 0,
             world: int = 1):
    """Train a DDPM: Adam on L_simple with a cosine learning-rate decay over `epochs`, the
    model's EMA, and every `eval_every` epochs (and at the end) the exact validation bound
    (all T steps, one fixed noise draw, so evaluations compare); keeps the best weights.
    `patience` (in evaluations) stops early; None trains all epochs.

    Why not `lvmfast.train.fit`: its per-epoch validation bound costs T network passes over
    the validation set (for T = 1000 about a hundred times a training epoch), and L_simple is
    not a bound, so there is no per-epoch training ELBO to report.

    Returns (history, best_epoch) like `fit`; history entries hold epoch, train_loss (L_simple,
    mean over the epochs since the last entry), val_neg_elbo and seconds (training time since
    the last entry).

    With world > 1 (under torchrun) every batch is split across the processes as in
    `lvmfast.train.fit`, and the validation bound is summed across them."""
    from lvmfast.train import _batches, _sum_across, for_processes, progress_bar

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.net.parameters(), lr=lr)
    steps_per_epoch = -(-data.train.shape[0] // batch_size)
    total = epochs * steps_per_epoch
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    train, val = data.train.to(device), data.val.to(device)
    net, val = for_processes(model, val, rank, world)
    best, best_state, best_epoch, history = math.inf, None, 0, []
    bar = progress_bar(epochs, progress and rank == 0)
    loss_sum, loss_count, seconds = 0.0, 0, 0.0
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        for xb in _batches(train, batch_size, gen):
            if xb.shape[0] < world:  # a shard would be empty: every process skips it alike
                continue
            xb = xb.tensor_split(world)[rank]
            loss = net(xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            decay.step()
            loss_sum, loss_count = loss_sum + loss.item() * xb.shape[0], loss_count + xb.shape[0]
        seconds += time.perf_counter() - t0
        if bar is not None:
            bar.update(1)
        if epoch % eval_every and epoch != epochs:
            continue
        model.eval()
        with torch.no_grad():
            noise_gen = torch.Generator(device=val.device).manual_seed(seed + 1)
            val_total = -model.elbo(val, generator=noise_gen).sum().item()
        (val_total,) = _sum_across(world, device, val_total)
        val_loss = val_total / data.val.shape[0]
        if not math.isfinite(val_loss):
            raise FloatingPointError(f"validation bound is {val_loss} at epoch {epoch}")
        history.append({"epoch": epoch, "train_loss": loss_sum / loss_count, "val_neg_elbo": val_loss,
                        "seconds": seconds})
        loss_sum, loss_count, seconds = 0.0, 0, 0.0
        if val_loss < best:
            best, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if bar is not None:
            bar.set_postfix(val=f"{val_loss:.2f}", best=f"{best:.2f}@{best_epoch}")
        if patience is not None and (epoch - best_epoch) >= patience * eval_every:
            break
    if bar is not None:
        bar.close()
    if world > 1:  # free DDP's reducer now: collected at exit, after the process group, it aborts
        del net
        gc.collect()
    model.load_state_dict(best_state)
    model.eval()
    return history, best_epoch
