"""DDPM diffusion on fused kernels (SPEC section 2): noise schedules, the forward process
q_sample / forward_chain, the posterior q_posterior, the reverse step p_step and ancestral
sampling. Steps t are 0-based, one per sample: a (B,) long tensor in [0, T-1]."""
from lvmfast.diffusion.schedule import Schedule

_OPS = ("forward_chain", "p_step", "q_posterior", "q_sample", "sample")
__all__ = ["Schedule", *_OPS]


def __getattr__(name):
    # The functions live in lvmfast.ops.diffusion, which imports this package's schedule module:
    # resolving them on first use keeps either import order working.
    if name in _OPS:
        from lvmfast.ops import diffusion as ops

        value = getattr(ops, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lvmfast.diffusion' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_OPS))
