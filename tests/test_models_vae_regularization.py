"""The VAE's opt-in regularization and objective options: dropout, BatchNorm, depth, the
importance-weighted training bound, and their `lvmfast train` flags (weight decay, validation
IWAE early stopping, learning-rate decay)."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lvmfast.models import VAE
from lvmfast.models.vae import BatchNormLast, mlp


def _types(module):
    return [type(m) for m in module]


def test_defaults_are_the_books_architecture():
    model = VAE()
    assert _types(model.encoder) == [nn.Linear, nn.LeakyReLU, nn.Linear, nn.LeakyReLU]
    assert _types(model.decoder) == [nn.Linear, nn.LeakyReLU, nn.Linear, nn.LeakyReLU, nn.Linear]
    assert [m.out_features for m in model.decoder if isinstance(m, nn.Linear)] == [256, 256, 64 * 17]
    assert model.objective == "elbo" and model.train_samples == 1
    assert not any(isinstance(m, (nn.Dropout, nn.BatchNorm1d)) for m in model.modules())
    assert _types(mlp([3, 4, 5], final_activation=False)) == [nn.Linear, nn.LeakyReLU, nn.Linear]


def test_mlp_dropout_and_batch_norm_layers():
    net = mlp([6, 8, 8, 3], final_activation=False, dropout=0.5, batch_norm=True)
    assert _types(net) == [nn.Linear, nn.LeakyReLU, BatchNormLast, nn.Dropout,
                           nn.Linear, nn.LeakyReLU, BatchNormLast, nn.Dropout, nn.Linear]
    assert net[3].p == 0.5
    assert net(torch.randn(5, 7, 6)).shape == (5, 7, 3)  # (S, B, D) sample batches
    with pytest.raises(ValueError):
        mlp([2, 2], final_activation=True, dropout=1.0)


def test_dropout_active_in_training_only():
    x = torch.randint(17, (32, 64))
    model = VAE(hidden=32, latent_dim=4, dropout=0.5)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 4  # 2 hidden layers x (encoder, decoder)
    h = model.likelihood.preprocess(x)
    model.train()
    a, b = model.encoder(h), model.encoder(h)
    assert not torch.equal(a, b)
    assert (a == 0).float().mean() > 0.3  # about half the units dropped
    model.eval()
    torch.testing.assert_close(model.encoder(h), model.encoder(h), rtol=0, atol=0)
    z = torch.randn(10, 4)
    torch.testing.assert_close(model.decoder(z), model.decoder(z), rtol=0, atol=0)
    # sampling runs the decoder in eval mode and restores the mode
    model.train()
    s1 = model.sample(20, generator=torch.Generator().manual_seed(3), mode=True)
    s2 = model.sample(20, generator=torch.Generator().manual_seed(3), mode=True)
    assert model.training and torch.equal(s1, s2) and s1.shape == (20, 64)


def test_batch_norm_uses_running_statistics_in_eval():
    x = torch.randint(17, (64, 64))
    model = VAE(hidden=32, latent_dim=4, batch_norm=True)
    bns = [m for m in model.modules() if isinstance(m, BatchNormLast)]
    assert len(bns) == 4
    model.train()
    model(x)  # updates the running statistics
    assert not torch.equal(bns[0].running_mean, torch.zeros(32))
    model.eval()
    h = model.likelihood.preprocess(x)
    # eval: each row's features do not depend on the rest of the batch
    torch.testing.assert_close(model.encoder(h)[:5], model.encoder(h[:5]))
    lw = model.log_importance_weights(x[:6], 7)
    assert lw.shape == (7, 6) and torch.isfinite(lw).all()


def test_layers_option():
    model = VAE(hidden=16, latent_dim=3, layers=4)
    assert sum(isinstance(m, nn.Linear) for m in model.encoder) == 4
    assert sum(isinstance(m, nn.Linear) for m in model.decoder) == 5
    x = torch.randint(17, (8, 64))
    assert model.log_importance_weights(x, 2).shape == (2, 8)
    with pytest.raises(ValueError):
        VAE(layers=0)


@pytest.mark.parametrize("posterior", ["gaussian", "householder"])
def test_iwae_bound_equals_elbo_at_one_sample_and_exceeds_it_on_fixed_draws(posterior):
    x = torch.randint(17, (16, 64))
    model = VAE(hidden=32, latent_dim=4, posterior=posterior)
    with torch.no_grad():
        one_i = model.iwae_bound(x, num_samples=1, generator=torch.Generator().manual_seed(1))
        one_e = model.elbo(x, num_samples=1, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(one_i, one_e)
        for k in (2, 10):
            iw = model.iwae_bound(x, num_samples=k, generator=torch.Generator().manual_seed(2))
            el = model.elbo(x, num_samples=k, generator=torch.Generator().manual_seed(2))
            assert iw.shape == (16,) and (iw >= el - 1e-4).all() and (iw > el).any()
        # and in expectation the bound rises with K: the 100-draw bound against E[IWAE_1], the
        # ELBO, estimated on 100 other draws (one draw a point was too noisy: 1 of 150 random
        # models failed; this way the smallest margin over 150 was 0.58 nats)
        iwae_100 = model.iwae_bound(x, num_samples=100, generator=torch.Generator().manual_seed(5))
        elbo_100 = model.elbo(x, num_samples=100, generator=torch.Generator().manual_seed(6))
        assert iwae_100.mean() > elbo_100.mean()
        # beta scales log p(z) - log q(z|x) inside the weights, as in the ELBO
        half_i = model.iwae_bound(x, beta=0.5, num_samples=1, generator=torch.Generator().manual_seed(4))
        half_e = model.elbo(x, beta=0.5, num_samples=1, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(half_i, half_e)


def test_training_loss_follows_objective_and_samples():
    x = torch.randint(17, (16, 64))
    base = VAE(hidden=32, latent_dim=4)

    def loss_of(**kwargs):
        model = VAE(hidden=32, latent_dim=4, **kwargs)
        model.load_state_dict(base.state_dict())
        torch.manual_seed(7)
        return model(x, beta=0.7)

    torch.manual_seed(7)
    default = base(x, beta=0.7)
    torch.testing.assert_close(loss_of(objective="iwae", train_samples=1), default)
    torch.testing.assert_close(loss_of(objective="elbo", train_samples=1), default)
    torch.manual_seed(7)
    expected = -base.elbo(x, 0.7, 5).mean()
    torch.testing.assert_close(loss_of(objective="elbo", train_samples=5), expected)
    torch.manual_seed(7)
    expected = -base.iwae_bound(x, 0.7, 5).mean()
    torch.testing.assert_close(loss_of(objective="iwae", train_samples=5), expected)
    assert loss_of(objective="iwae", train_samples=5) <= loss_of(objective="elbo", train_samples=5)  # same draws
    model = VAE(hidden=32, latent_dim=4, objective="iwae", train_samples=3, dropout=0.1, batch_norm=True)
    loss = model(x)
    loss.backward()
    assert loss.ndim == 0 and all(p.grad is not None for p in model.decoder.parameters())
    with pytest.raises(ValueError):
        VAE(objective="vimco")
    with pytest.raises(ValueError):
        VAE(train_samples=0)


def _digits_like_npz(path):
    rng = np.random.default_rng(0)
    np.savez(path, train=rng.integers(0, 4, (40, 4, 4)), val=rng.integers(0, 4, (10, 4, 4)),
             test=rng.integers(0, 4, (12, 4, 4)), levels=4)


def test_train_command_with_the_new_flags(tmp_path):
    from lvmfast.cli import main

    data = tmp_path / "data.npz"
    _digits_like_npz(data)
    out = tmp_path / "run"
    rc = main(["train", "--model", "vae", "--prior", "mog", "--components", "3", "--data", str(data),
               "--epochs", "6", "--iwae-samples", "10", "--latent-dim", "2", "--hidden", "16", "--layers", "3",
               "--dropout", "0.2", "--batch-norm", "--objective", "iwae", "--train-samples", "4",
               "--weight-decay", "1e-4", "--optimizer", "adamw", "--val-iwae-samples", "8", "--lr-decay", "0.5",
               "--lr-decay-patience", "0", "--no-progress", "--no-pictures", "--threads", "1", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(m["test_nll_iwae"]) and m["epochs"] >= 1
    assert (m["layers"], m["dropout"], m["batch_norm"], m["objective"], m["train_samples"]) == (3, 0.2, True, "iwae", 4)
    assert m["weight_decay"] == 1e-4 and m["optimizer"] == "adamw" and m["val_iwae_samples"] == 8
    h = m["history"]
    assert all(math.isfinite(e["val_nll_iwae"]) for e in h)
    # early stopping picked the epoch with the best validation IWAE bound
    assert m["best_epoch"] == min(h, key=lambda e: e["val_nll_iwae"])["epoch"]
    lrs = [e["lr"] for e in h]
    assert lrs[0] == 1e-3 and all(b <= a for a, b in zip(lrs, lrs[1:]))
    assert "--dropout 0.2" in m["command"] and "--batch-norm" in m["command"]
    state = torch.load(out / "model.pt", weights_only=False)["state_dict"]
    assert any("running_mean" in k for k in state)


def test_lr_decay_steps_when_validation_stalls():
    from lvmfast.data import Splits  # noqa: F401  (the fit signature's type)
    from lvmfast.train import fit

    class Stalled(nn.Module):  # a model whose validation ELBO never improves after epoch 1
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x, beta=1.0):
            return (self.w - 1) ** 2

        def elbo(self, x, beta=1.0, num_samples=1):
            return torch.zeros(x.shape[0])

    class D:
        train = torch.zeros(8, 2)
        val = torch.zeros(4, 2)

    history, best = fit(Stalled(), D, epochs=6, lr=0.1, batch_size=4, patience=100, progress=False,
                        lr_decay=0.5, lr_decay_patience=1)
    assert best == 1 and [h["lr"] for h in history] == [0.1, 0.1, 0.1, 0.05, 0.05, 0.025]


def test_new_flags_rejected_for_other_models(tmp_path, capsys):
    from lvmfast.cli import main

    assert main(["train", "--model", "two-level", "--dropout", "0.1", "--out", str(tmp_path / "x")]) == 2
    assert "--dropout apply to --model vae only" in capsys.readouterr().err


def test_discretized_logistic_likelihood_is_a_distribution_over_the_levels():
    from lvmfast.nn.likelihoods import DiscretizedLogisticMixtureLikelihood, make_likelihood

    lik = make_likelihood("discretized-logistic", 5, levels=17, components=3)
    assert isinstance(lik, DiscretizedLogisticMixtureLikelihood) and lik.params_per_dim == 9
    for scale in (1.0, 5.0, 30.0):  # sharp and flat logistics, means far outside [-1, 1]
        out = torch.randn(4, 7, 5 * 9) * scale
        lp = lik.level_log_probs(out)
        assert lp.shape == (4, 7, 5, 17) and torch.isfinite(lp).all()
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(4, 7, 5), atol=1e-4, rtol=0)
        x = torch.randint(17, (7, 5))
        expected = lp.gather(-1, x.expand(4, 7, 5).unsqueeze(-1)).squeeze(-1).sum(-1)
        torch.testing.assert_close(lik.log_prob(x, out), expected)
    # one component, the logistic centred on level 8 with a tiny scale: (nearly) all mass there
    out = torch.zeros(1, 3)
    out[0, 2] = -7.0
    assert lik.__class__(1, 17, 1).level_log_probs(out)[0, 0].argmax() == 8
    s = lik.sample(torch.randn(10, 45), generator=torch.Generator().manual_seed(0))
    assert s.shape == (10, 5) and s.dtype == torch.long and s.min() >= 0 and s.max() <= 16
    assert lik.mode(torch.randn(3, 45)).shape == (3, 5)


def test_vae_with_discretized_logistic_likelihood_trains():
    from lvmfast.nn.likelihoods import make_likelihood

    x = torch.randint(17, (32, 64))
    model = VAE(hidden=32, latent_dim=4, likelihood=make_likelihood("discretized-logistic", 64, 17, 2))
    assert model.decoder[-1].out_features == 64 * 6
    loss = model(x)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.log_importance_weights(x[:3], 4).shape == (4, 3)
    assert model.sample(5).shape == (5, 64)


def test_ddpm_rejects_the_fit_options(tmp_path, capsys):
    from lvmfast.cli import main

    assert main(["train", "--model", "ddpm", "--weight-decay", "0.1", "--out", str(tmp_path / "x")]) == 2
    assert "--weight-decay do not apply to --model ddpm" in capsys.readouterr().err
