"""Sample quality for the digits: a Fréchet distance in the feature space of a small classifier.

FID's recipe (Heusel et al., 2017) scaled down to 8x8 digits: instead of Inception features,
the hidden layer of an MLP (64 -> 128 -> 10, ReLU) trained on the 1000 training digits. The
distance of generated digits to the 797 held-out ones (validation + test) is reported next to
the distance of the real training digits to the same held-out set: finite samples put a floor
under the distance, so the ratio of the two is what says how close the samples come to data.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from lvmfast.data import DIGITS_SPLIT


def digits_with_labels():
    """The digits split as `lvmfast.data.load_digits` splits them, with labels:
    ((train_x, train_y), (heldout_x, heldout_y)); held-out = validation + test (797)."""
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    x = torch.from_numpy(digits.data.astype(np.int64))
    y = torch.from_numpy(digits.target.astype(np.int64))
    n_train = DIGITS_SPLIT[0]
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


class DigitFeatures:
    """An MLP classifier of the digits (grey levels 0..16 scaled to [0, 1]), trained full-batch
    with Adam on the training digits; deterministic (its own seeded generator, CPU, float32).
    `.features(x)` is its hidden layer (N, hidden), `.predict(x)` the class (N,)."""

    def __init__(self, hidden: int = 128, steps: int = 500, lr: float = 1e-2, weight_decay: float = 1e-4,
                 seed: int = 0, levels: int = 17):
        (x, y), (hx, hy) = digits_with_labels()
        self.levels = levels
        gen = torch.Generator().manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 10)
        with torch.no_grad():  # a seeded initialization independent of torch's global generator
            for layer in (self.body[0], self.head):
                bound = 1.0 / layer.in_features ** 0.5
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.uniform_(-bound, bound, generator=gen)
        params = list(self.body.parameters()) + list(self.head.parameters())
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        inputs = self._scale(x)
        with torch.enable_grad():
            for _ in range(steps):
                loss = nn.functional.cross_entropy(self.head(self.body(inputs)), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.body.requires_grad_(False).eval()
        self.head.requires_grad_(False).eval()
        self.heldout_accuracy = (self.predict(hx) == hy).double().mean().item()

    def _scale(self, x) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        return x.detach().cpu().float().reshape(x.shape[0], -1) / (self.levels - 1)

    @torch.no_grad()
    def features(self, x) -> torch.Tensor:
        """Hidden-layer activations (N, hidden), float64, for grey-level images x (N, 64)."""
        return self.body(self._scale(x)).double()

    @torch.no_grad()
    def predict(self, x) -> torch.Tensor:
        """Predicted digit class (N,) long."""
        return self.head(self.body(self._scale(x))).argmax(-1)


@functools.cache
def digit_features(seed: int = 0) -> DigitFeatures:
    """The classifier of `DigitFeatures(seed=seed)`, trained once per process."""
    return DigitFeatures(seed=seed)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition
    (round-off negative eigenvalues clipped to 0)."""
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet (2-Wasserstein squared) distance between Gaussians fitted to two feature sets
    (N, F) and (M, F): |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2).

    Computed in float64 through symmetric eigendecompositions only: the cross term is a sum of
    square roots of the eigenvalues of the PSD matrix S_a^1/2 S_b S_a^1/2, which avoids the
    complex round-off of a general matrix square root of S_a S_b."""
    a = torch.as_tensor(feats_a).double()
    b = torch.as_tensor(feats_b).double()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: expected (N, F) and (M, F) features, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("frechet_distance: need at least two samples in each set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrtm_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * cross
    return max(fd.item(), 0.0)


def digits_fd(samples, seed: int = 0) -> dict:
    """Sample quality of generated digits (N, 64) grey levels 0..16 against the held-out digits.

    Returns fd (samples vs the 797 held-out digits), fd_reference (the 1000 real training digits
    vs the same held-out ones), fd_ratio = fd / fd_reference, num_classes (distinct predicted
    classes among the samples), class_counts (10 ints) and the classifier's held-out accuracy.
    """
    net = digit_features(seed)
    samples = torch.as_tensor(np.asarray(samples) if not isinstance(samples, torch.Tensor) else samples)
    (train_x, _), (heldout_x, _) = digits_with_labels()
    held = net.features(heldout_x)
    fd = frechet_distance(net.features(samples), held)
    ref = frechet_distance(net.features(train_x), held)
    counts = torch.bincount(net.predict(samples), minlength=10)
    return {"fd": fd, "fd_reference": ref, "fd_ratio": fd / ref, "num_classes": int((counts > 0).sum()),
            "class_counts": counts.tolist(), "classifier_heldout_accuracy": net.heldout_accuracy}
