"""`lvmfast train`: fit a VAE on the digits (or a user's .npz), early-stop on the validation ELBO,
then report the test IWAE NLL (S = 1000) and write samples and pictures.

Outputs in --out DIR: metrics.json, samples.npy (integer grey levels), model.pt, samples.png
(real vs generated), val_curve.png and, for 2-D latents, latent.png (the prior's contours with
the encoded test points).
"""
from __future__ import annotations

import gc
import json
import math
import os
import sys
import time

import numpy as np
import torch

from lvmfast.data import Splits, load_digits, load_npz
from lvmfast.estimators import importance_sampling

MODELS = ("vae", "two-level", "top-down", "ddgm", "ddpm")
DIFFUSION_MODELS = ("ddgm", "ddpm")
# Per-model training defaults where they differ from the VAE's (None on the command line = these).
TRAINING_DEFAULTS = {
    "vae": {"epochs": 1000, "lr": 1e-3, "patience": 20, "optimizer": "adamax"},
    "two-level": {"epochs": 1000, "lr": 1e-3, "patience": 20, "optimizer": "adamax"},
    "top-down": {"epochs": 1000, "lr": 1e-3, "patience": 20, "optimizer": "adamax"},
    "ddgm": {"epochs": 1000, "lr": 1e-3, "patience": 20, "optimizer": "adamax"},
    # fit_ddpm: Adam with cosine decay over all epochs; patience counts validations (every 10 epochs)
    "ddpm": {"epochs": 200, "lr": 1e-3, "patience": 5, "optimizer": "adam"},
}


def resolved_settings(args) -> dict:
    """epochs, lr, patience, optimizer and KL warm-up: the command line's, else the model's defaults."""
    out = dict(TRAINING_DEFAULTS[args.model])
    for key in ("epochs", "lr", "patience", "optimizer"):
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
    out["warmup"] = args.warmup if args.warmup is not None else (100 if args.posterior == "vmf" else 0)
    return out


def add_arguments(p) -> None:
    from lvmfast.nn.posteriors import POSTERIORS
    from lvmfast.nn.priors import PRIORS

    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--prior", default="standard", choices=PRIORS)
    p.add_argument("--posterior", default="gaussian", choices=tuple(POSTERIORS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="maximum epochs (early stopping may end sooner; default per model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--data", help=".npz with integer image arrays train, val, test and a scalar levels")
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--lr", type=float, help="learning rate (default per model: 1e-3)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--patience", type=int, help="epochs without a better validation ELBO (default per model)")
    p.add_argument("--warmup", type=int, default=None,
                   help="KL warm-up epochs, beta rising linearly 0 -> 1 (0: off; default 100 for the vMF "
                        "posterior, which otherwise collapses on the digits, else 0)")
    p.add_argument("--steps", type=int, help="diffusion steps T for ddgm and ddpm (default per model)")
    p.add_argument("--components", type=int, help="mixture components / pseudo-inputs (prior default)")
    p.add_argument("--iwae-samples", type=int, default=1000)
    p.add_argument("--backend", help="lvmfast backend for the fused ops (default: auto)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-pictures", action="store_true")
    g = p.add_argument_group("VAE likelihood, regularization and objective",
                             "opt-in (--model vae); the defaults are the book's model")
    g.add_argument("--likelihood", default="categorical", choices=("categorical", "discretized-logistic"),
                   help="p(x|z) per pixel: a categorical over the grey levels (default) or a mixture of "
                        "--likelihood-components discretized logistics over them (ordinal, 3 outputs per component)")
    g.add_argument("--likelihood-components", type=int, default=3,
                   help="mixture components of the discretized-logistic likelihood (default 3)")
    g.add_argument("--layers", type=int, default=2,
                   help="hidden layers in the encoder and in the decoder MLP (default 2)")
    g.add_argument("--dropout", type=float, default=0.0,
                   help="dropout probability after every hidden activation of the encoder and decoder "
                        "(default 0: off)")
    g.add_argument("--batch-norm", action="store_true",
                   help="BatchNorm after every hidden activation of the encoder and decoder (default off)")
    g.add_argument("--objective", default="elbo", choices=("elbo", "iwae"),
                   help="training loss: the negative ELBO (default) or the negative importance-weighted "
                        "bound with --train-samples K samples")
    g.add_argument("--train-samples", type=int, default=1,
                   help="K posterior samples per data point in the training loss (default 1; with --objective "
                        "elbo the ELBO is averaged over them)")
    g.add_argument("--weight-decay", type=float, default=0.0,
                   help="L2 weight decay of the optimizer (default 0; with --optimizer adamw decoupled)")
    g.add_argument("--optimizer", choices=("adamax", "adam", "adamw"),
                   help="optimizer (default per model: Adamax for the VAE family)")
    g.add_argument("--val-iwae-samples", type=int, default=0,
                   help="early-stop on the validation negative IWAE bound with this many samples instead of the "
                        "5-sample validation negative ELBO (default 0: the ELBO)")
    g.add_argument("--lr-decay", type=float, default=1.0,
                   help="multiply the learning rate by this factor when the validation criterion has not improved "
                        "for --lr-decay-patience epochs (ReduceLROnPlateau; default 1: constant rate)")
    g.add_argument("--lr-decay-patience", type=int, default=10,
                   help="epochs without improvement before a --lr-decay step (default 10)")


def build_model(args, data: Splits):
    if args.model in ("two-level", "top-down"):
        from lvmfast.models import TopDownVAE, TwoLevelVAE

        cls = TwoLevelVAE if args.model == "two-level" else TopDownVAE
        return cls(data_dim=data.dim, levels=data.levels, hidden=args.hidden,
                   latent_dims=(args.latent_dim, args.latent_dim))
    if args.model in DIFFUSION_MODELS:
        from lvmfast.models import DDGM, DDPM

        cls = DDGM if args.model == "ddgm" else DDPM
        kwargs = {} if args.steps is None else {"T": args.steps}
        return cls(data_dim=data.dim, levels=data.levels, hidden=args.hidden, **kwargs)
    from lvmfast.models import VAE
    from lvmfast.nn.likelihoods import make_likelihood

    prior_kwargs = {}
    if args.components is not None:
        if args.prior in ("mog", "vampprior"):
            prior_kwargs["num_components"] = args.components
        elif args.prior in ("gtm", "gtm-vampprior"):
            prior_kwargs["points_per_side"] = max(1, round(math.sqrt(args.components)))
    return VAE(data_dim=data.dim, latent_dim=args.latent_dim, hidden=args.hidden, levels=data.levels,
               prior=args.prior, posterior=args.posterior, init_data=data.train, prior_kwargs=prior_kwargs,
               likelihood=make_likelihood(args.likelihood, data.dim, data.levels, args.likelihood_components),
               layers=args.layers, dropout=args.dropout, batch_norm=args.batch_norm, objective=args.objective,
               train_samples=args.train_samples)


# The VAE-only options of add_arguments and their defaults (other models reject other values).
VAE_OPTIONS = {"likelihood": "categorical", "likelihood_components": 3, "layers": 2, "dropout": 0.0,
               "batch_norm": False, "objective": "elbo", "train_samples": 1}
# Options of `fit` that the DDPM's own loop does not have (it rejects other values).
FIT_OPTIONS = {"optimizer": None, "weight_decay": 0.0, "val_iwae_samples": 0, "lr_decay": 1.0}


def _batches(x, batch_size, generator):
    perm = torch.randperm(x.shape[0], generator=generator)
    return [x[perm[i:i + batch_size]] for i in range(0, x.shape[0], batch_size)]


def fit(model, data: Splits, *, epochs=1000, lr=1e-3, batch_size=64, patience=20, warmup=0,
        device="cpu", seed=0, progress=True, val_samples=5, optimizer="adamax", rank=0, world=1,
        weight_decay=0.0, val_iwae_samples=0, lr_decay=1.0, lr_decay_patience=10):
    """Adamax (or Adam, AdamW) on the model's training loss (`model(x, beta=...)`, the negative
    ELBO by default) with early stopping on the validation negative ELBO (`val_samples` draws);
    returns (history, best_epoch) and leaves the best weights in `model`.

    Opt-in: `weight_decay` for the optimizer; `val_iwae_samples` > 0 early-stops on the validation
    negative IWAE bound with that many samples instead (the history then also has `val_nll_iwae`,
    and `val_neg_elbo` comes from the same draws); `lr_decay` < 1 multiplies the learning rate by
    it after `lr_decay_patience` epochs without a better validation criterion. The history's
    `train_neg_elbo` is the mean training loss of the epoch (the negative IWAE bound for a VAE
    trained with `objective="iwae"`).

    With world > 1 (under torchrun, the process group already initialized) the model is wrapped
    in DistributedDataParallel and every batch of `batch_size` is split across the processes, so
    the gradient step is the single-process one; losses are summed across processes, so every
    process takes the same early-stopping decision.
    """
    gen = torch.Generator().manual_seed(seed)  # the same batch order in every process
    opt_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(optimizer, torch.optim.Adamax)
    opt = opt_class(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = (torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=lr_decay, patience=lr_decay_patience)
                 if lr_decay < 1.0 else None)
    train, val = data.train.to(device), data.val.to(device)
    net, val = for_processes(model, val, rank, world)
    best, best_state, best_epoch, history = math.inf, None, 0, []
    bar = progress_bar(epochs, progress and rank == 0)
    for epoch in range(1, epochs + 1):
        beta = min(1.0, epoch / warmup) if warmup > 0 else 1.0
        model.train()
        t0, total = time.perf_counter(), 0.0
        for xb in _batches(train, batch_size, gen):
            if xb.shape[0] < world:  # a shard would be empty: every process skips it alike
                continue
            xb = xb.tensor_split(world)[rank]
            loss = net(xb, beta=beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * xb.shape[0]
        seconds = time.perf_counter() - t0
        model.eval()
        if val_iwae_samples > 0:
            val_nll, val_elbo = importance_sampling(model, val, val_iwae_samples)
            total, val_total, val_nll = _sum_across(world, device, total, val_elbo.sum().item(), val_nll.sum().item())
            val_nll /= data.val.shape[0]
        else:
            with torch.no_grad():
                val_total = -model.elbo(val, num_samples=val_samples).sum().item()
            total, val_total = _sum_across(world, device, total, val_total)
        val_elbo_loss = val_total / data.val.shape[0]
        val_loss = val_nll if val_iwae_samples > 0 else val_elbo_loss
        history.append({"epoch": epoch, "train_neg_elbo": total / train.shape[0], "val_neg_elbo": val_elbo_loss,
                        "beta": beta, "seconds": seconds})
        if val_iwae_samples > 0:
            history[-1]["val_nll_iwae"] = val_nll
        if scheduler is not None:
            history[-1]["lr"] = opt.param_groups[0]["lr"]
            if epoch >= warmup:
                scheduler.step(val_loss)
        if not math.isfinite(val_loss):
            raise FloatingPointError(f"validation ELBO is {val_loss} at epoch {epoch}")
        if val_loss < best:
            best, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if bar is not None:
            bar.update(1)
            bar.set_postfix(val=f"{val_loss:.2f}", best=f"{best:.2f}@{best_epoch}")
        if epoch >= warmup and epoch - best_epoch >= patience:
            break
    if bar is not None:
        bar.close()
    if world > 1:  # free DDP's reducer now: collected at exit, after the process group, it aborts
        del net
        gc.collect()
    model.load_state_dict(best_state)
    return history, best_epoch


def for_processes(model, val, rank, world):
    """(the model to train, this process's validation rows): under torchrun the model wrapped in
    DistributedDataParallel and a shard of `val`; otherwise both unchanged."""
    if world == 1:
        return model, val
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, find_unused_parameters=True), val.tensor_split(world)[rank]


def progress_bar(epochs, show):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=epochs, desc="train", unit="epoch", dynamic_ncols=True, file=sys.stderr)


def _sum_across(world, device, *values):
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _parameters_agree(model, world, device) -> bool:
    """Whether every process ends with the same weights (DDP keeps them in step)."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().reshape(-1).to(torch.float64) for p in model.parameters()]).to(device)
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def pictures(model, data: Splits, samples: np.ndarray, history, out: str, device="cpu") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    shape = data.image_shape
    if shape is not None:
        n = 8  # an n x n grid of test images left, of generated ones right
        real = data.test[:n * n].cpu().numpy()
        fig, axes = plt.subplots(n, 2 * n + 1, figsize=(2 * n + 1, n), squeeze=False)
        for i in range(n):
            for j in range(2 * n + 1):
                ax, k = axes[i, j], i * n + (j if j < n else j - n - 1)
                ax.axis("off")
                image = real[k] if j < n and k < len(real) else samples[k] if j > n else None
                if image is not None:
                    ax.imshow(image.reshape(shape), cmap="gray_r", vmin=0, vmax=data.levels - 1)
        axes[0, n // 2].set_title("real (test)")
        axes[0, n + 1 + n // 2].set_title("generated")
        fig.savefig(os.path.join(out, "samples.png"), dpi=80, bbox_inches="tight")
        plt.close(fig)
        written.append("samples.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([h["epoch"] for h in history], [h["val_neg_elbo"] for h in history], label="validation")
    if "train_neg_elbo" in history[0]:  # the DDPM trains on L_simple, which is no bound
        ax.plot([h["epoch"] for h in history], [h["train_neg_elbo"] for h in history], label="train", alpha=0.6)
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO (nats)")
    lo = min(min(h["val_neg_elbo"], h.get("train_neg_elbo", math.inf)) for h in history)
    ax.set_ylim(lo - 5, min(h["val_neg_elbo"] for h in history) + 60)  # the first epochs are far off
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "val_curve.png"), dpi=100)
    plt.close(fig)
    written.append("val_curve.png")

    if getattr(model, "betas", None) is not None:  # the forward diffusion (the book's Fig. 4.24c)
        from lvmfast.models.diffusion import forward_diffusion_picture

        if shape is not None:
            forward_diffusion_picture(data.test[:6], model.betas, os.path.join(out, "forward_diffusion.png"),
                                      levels=data.levels, image_shape=shape)
            written.append("forward_diffusion.png")
    if getattr(model, "latent_dim", None) == 2 and hasattr(model, "prior"):
        z = model.encode(data.test.to(device)).cpu().numpy()
        lim = max(3.0, float(np.abs(z).max()) * 1.1)
        g = torch.linspace(-lim, lim, 200, device=device)
        zz = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
        with torch.no_grad():
            logp = model.prior.log_prob(zz).reshape(200, 200).cpu().numpy()
        fig, ax = plt.subplots(figsize=(5.5, 5))
        gg = g.cpu().numpy()
        ax.contourf(gg, gg, np.exp(logp), levels=30, cmap="Blues")
        labels = data.test_labels.cpu().numpy() if data.test_labels is not None else None
        sc = ax.scatter(z[:, 0], z[:, 1], s=6, c=labels, cmap="tab10" if labels is not None else None,
                        edgecolors="none")
        if labels is not None:
            fig.colorbar(sc, ax=ax, label="digit")
        ax.set_title("prior density and encoded test points")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "latent.png"), dpi=100)
        plt.close(fig)
        written.append("latent.png")
    return written


def command_line(args) -> str:
    """The `lvmfast train` command that repeats this run (options equal to their default omitted)."""
    import argparse

    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    parts = ["lvmfast train"]
    for action in defaults._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        if action.required or value != action.default:
            flag = action.option_strings[0]
            parts.append(flag if value is True else f"{flag} {value}")
    return " ".join(parts)


def _init_distributed(device):
    """(rank, world, device) under torchrun (WORLD_SIZE > 1): gloo on the CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def run(args) -> int:
    if args.model not in MODELS:
        print(f"lvmfast train: unknown model {args.model!r}; expected one of {', '.join(MODELS)}",
              file=sys.stderr)
        return 2
    if args.model != "vae" and (args.prior != "standard" or args.posterior != "gaussian"):
        print("lvmfast train: --prior and --posterior apply to --model vae only", file=sys.stderr)
        return 2
    changed = [k for k, v in VAE_OPTIONS.items() if getattr(args, k) != v]
    if args.model != "vae" and changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        print(f"lvmfast train: {flags} apply to --model vae only", file=sys.stderr)
        return 2
    changed = [k for k, v in FIT_OPTIONS.items() if getattr(args, k) != v]
    if args.model == "ddpm" and changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        print(f"lvmfast train: {flags} do not apply to --model ddpm", file=sys.stderr)
        return 2
    import lvmfast

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("lvmfast train: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    data = load_npz(args.data) if args.data else load_digits()
    settings = resolved_settings(args)
    rank, world, device = _init_distributed(device)
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)  # the same initial weights in every process
    backend = args.backend or lvmfast.current_backend()
    with lvmfast.use_backend(backend):
        model = build_model(args, data).to(device)
        if world > 1:
            torch.manual_seed(args.seed + 7919 * rank)  # different noise per process
        t0 = time.perf_counter()
        if args.model == "ddpm":  # L_simple is no bound: its own loop validates every 10 epochs
            from lvmfast.models.diffusion import fit_ddpm

            history, best_epoch = fit_ddpm(model, data, epochs=settings["epochs"], lr=settings["lr"],
                                           batch_size=args.batch_size, patience=settings["patience"],
                                           device=device, seed=args.seed, progress=not args.no_progress,
                                           rank=rank, world=world)
        else:
            history, best_epoch = fit(model, data, epochs=settings["epochs"], lr=settings["lr"],
                                      batch_size=args.batch_size, patience=settings["patience"],
                                      warmup=settings["warmup"], device=device, seed=args.seed,
                                      progress=not args.no_progress, optimizer=settings["optimizer"],
                                      rank=rank, world=world, weight_decay=args.weight_decay,
                                      val_iwae_samples=args.val_iwae_samples, lr_decay=args.lr_decay,
                                      lr_decay_patience=args.lr_decay_patience)
        train_seconds = time.perf_counter() - t0
        in_step = True
        if world > 1:
            import torch.distributed as dist

            in_step = _parameters_agree(model, world, device)
            dist.barrier()  # no process tears gloo down while another still talks to it
            dist.destroy_process_group()
            if rank != 0:
                _exit_process(0)
        t0 = time.perf_counter()
        torch.manual_seed(args.seed + 1)
        test = data.test.to(device)
        model.eval()
        extra = {}
        if hasattr(model, "log_importance_weights"):
            nll, neg_elbo = importance_sampling(model, test, args.iwae_samples)
        else:  # the DDPM: its exact bound over all T steps stands for the NLL
            with torch.no_grad():
                neg_elbo = -model.elbo(test)
            nll = neg_elbo
            extra["test_nll_is"] = "the negative ELBO over all T steps (no importance sampling)"
        if hasattr(model, "kl_per_layer"):
            with torch.no_grad():
                extra["test_kl_per_layer"] = {k: v.mean().item() for k, v in model.kl_per_layer(test).items()}
        eval_seconds = time.perf_counter() - t0
        gen = torch.Generator(device=device).manual_seed(args.seed)
        samples = model.sample(max(1000, 64), generator=gen).cpu().numpy().astype(np.int64)
        if not args.data:  # Fréchet distance in a digit classifier's feature space
            from lvmfast.metrics import digits_fd

            extra["frechet"] = digits_fd(samples)
    np.save(os.path.join(args.out, "samples.npy"), samples)
    torch.save({"state_dict": model.state_dict(), "config": vars(args)}, os.path.join(args.out, "model.pt"))
    metrics = {
        "model": args.model, "prior": args.prior, "posterior": args.posterior, "seed": args.seed,
        "latent_dim": args.latent_dim, **settings, "kl_warmup_epochs": settings["warmup"],
        **({k: getattr(args, k) for k in (*VAE_OPTIONS, "weight_decay", "val_iwae_samples", "lr_decay",
                                         "lr_decay_patience")} if args.model == "vae" else {}),
        "test_nll_iwae": nll.mean().item(), "iwae_samples": args.iwae_samples,
        "test_neg_elbo": neg_elbo.mean().item(), **extra, "epochs": history[-1]["epoch"], "best_epoch": best_epoch,
        "best_val_neg_elbo": min(h["val_neg_elbo"] for h in history),
        "train_seconds": train_seconds, "seconds_per_epoch": sum(h["seconds"] for h in history) / history[-1]["epoch"],
        "eval_seconds": eval_seconds, "device": str(device), "backend": backend,
        "world_size": world, "parameters_in_step": in_step,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "lvmfast": lvmfast.__version__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "command": command_line(args),
        "history": history,
    }
    if not args.no_pictures:
        metrics["pictures"] = pictures(model, data, samples, history, args.out, device)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    fd = f", Fréchet distance {extra['frechet']['fd_ratio']:.2f}x real" if "frechet" in extra else ""
    print(f"test {'NLL bound' if 'test_nll_is' in extra else 'IWAE NLL (S=' + str(args.iwae_samples) + ')'} "
          f"{metrics['test_nll_iwae']:.2f} nats, test -ELBO {metrics['test_neg_elbo']:.2f}{fd}, "
          f"{history[-1]['epoch']} epochs (best {best_epoch}), {train_seconds:.1f} s training; wrote {args.out}")
    if not in_step:
        print("lvmfast train: the processes ended with different weights", file=sys.stderr)
    rc = 0 if in_step else 1
    if world > 1:
        _exit_process(rc)
    return rc


def _exit_process(rc: int) -> None:
    """End a torchrun worker without interpreter teardown: gloo's threads can abort it
    ("terminate called without an active exception") after the work is done and written."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
