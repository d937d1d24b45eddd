"""The end-to-end case of shared/BENCHMARKS.md: one training epoch (Adamax, batches of 64, the
1000 training images of scikit-learn's digits) of a VAE with a VampPrior of 500 components and an
orthogonal Sylvester posterior, the command line's other defaults. The same model and batches
with `use_backend("reference")` are the baseline. Each repetition is one more epoch of the same
training run: the work per epoch hardly changes as the weights do (Björck's step counts may).
Needs scikit-learn (the `train` extra); without it the case is skipped with that reason."""
from __future__ import annotations

import torch

import lvmfast
from lvmfast.bench.harness import Candidate, Case

COMPONENTS, BATCH = 500, 64
FULL_IMAGES, QUICK_IMAGES = 1000, 128


def _digits():
    try:
        from lvmfast.data import load_digits
        return load_digits(), None
    except ImportError as err:
        return None, f"needs scikit-learn for the digits ({err.name} missing): install lvmfast's train extra"


def _maker(backend: str, train: torch.Tensor, data_dim: int, levels: int, device):
    def make():
        from lvmfast.models import VAE

        torch.manual_seed(0)
        model = VAE(data_dim=data_dim, levels=levels, prior="vampprior",
                    posterior="sylvester-orthogonal", init_data=train,
                    prior_kwargs={"num_components": COMPONENTS}).to(device)
        opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
        batches = [b.to(device) for b in train.split(BATCH)]  # one fixed order for both backends

        def epoch():
            with lvmfast.use_backend(backend):
                for xb in batches:
                    loss = model(xb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            return loss.detach()
        return epoch, []
    return make


def cases(device: torch.device, quick: bool) -> list[Case]:
    data, reason = _digits()
    images = QUICK_IMAGES if quick else FULL_IMAGES
    shape = {"images": images, "batch": BATCH, "K": COMPONENTS}
    cands = []
    for backend, is_baseline in (("native", False), ("reference", True)):
        name = f"lvmfast[{backend}] training epoch"
        if data is None:
            cands.append(Candidate(name, None, skip_reason=reason, is_baseline=is_baseline))
            continue
        cands.append(Candidate(name, _maker(backend, data.train[:images], data.dim, data.levels, device),
                               is_baseline=is_baseline))
    return [Case("end_to_end", "vae", shape, cands, modes=("train",))]
