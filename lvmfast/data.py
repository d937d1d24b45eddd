"""Data sets for the training command: scikit-learn's digits (the book's default) or a user's npz.

Images are integer grey levels in [0, levels - 1], flattened to (N, D) long tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DIGITS_SPLIT = (1000, 350)  # first 1000 train, next 350 validation, the remaining 447 test (book)


@dataclass
class Splits:
    train: torch.Tensor  # (N_train, D) long
    val: torch.Tensor
    test: torch.Tensor
    levels: int  # number of grey levels; pixels take values 0 .. levels - 1
    image_shape: tuple[int, int] | None = None
    test_labels: torch.Tensor | None = None  # only for pictures

    @property
    def dim(self) -> int:
        return self.train.shape[1]


def load_digits() -> Splits:
    """scikit-learn's 8x8 digits (1797 images, 17 grey levels), split by index as the book does."""
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    x = torch.from_numpy(digits.data.astype(np.int64))
    n_train, n_val = DIGITS_SPLIT
    return Splits(x[:n_train], x[n_train:n_train + n_val], x[n_train + n_val:], levels=17,
                  image_shape=(8, 8), test_labels=torch.from_numpy(digits.target[n_train + n_val:]))


def load_npz(path: str) -> Splits:
    """A user's data: an .npz with integer image arrays `train`, `val`, `test` and a scalar `levels`."""
    with np.load(path) as f:
        missing = [k for k in ("train", "val", "test", "levels") if k not in f]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing}; expected train, val, test, levels")
        arrays = {k: f[k] for k in ("train", "val", "test")}
        levels = int(np.asarray(f["levels"]).reshape(()))
    shape = arrays["train"].shape[1:]
    image_shape = tuple(shape) if len(shape) == 2 else None
    out = {}
    for name, a in arrays.items():
        if not np.issubdtype(a.dtype, np.integer):
            if not np.all(a == np.round(a)):
                raise ValueError(f"{path}: {name} must hold integer grey levels, got dtype {a.dtype}")
        a = a.astype(np.int64).reshape(a.shape[0], -1)
        if a.shape[1] != int(np.prod(shape)):
            raise ValueError(f"{path}: {name} has images of shape {a.shape[1:]}, train has {shape}")
        if a.size and (a.min() < 0 or a.max() >= levels):
            raise ValueError(f"{path}: {name} has values outside [0, {levels - 1}] (levels={levels})")
        out[name] = torch.from_numpy(a)
    return Splits(out["train"], out["val"], out["test"], levels=levels, image_shape=image_shape)
