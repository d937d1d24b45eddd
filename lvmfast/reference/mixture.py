"""Reference log-density of a mixture of diagonal Gaussians [4.47], in the broadcast form."""
import math

import torch


def log_mog(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor,
            logits: torch.Tensor) -> torch.Tensor:
    """log sum_k softmax(logits)_k prod_l N(z_l | means[k,l], exp(logvars[k,l])), shape z.shape[:-1].

    Materializes (..., K, L): fine for a reference, not for large batches. Half inputs are
    computed in float32 and the result cast back.
    """
    dtype = z.dtype
    acc = torch.promote_types(dtype, torch.float32)
    z, means, logvars, logits = (t.to(acc) for t in (z, means, logvars, logits))
    quad = ((z.unsqueeze(-2) - means).square() * torch.exp(-logvars)).sum(-1)  # (..., K)
    log_norm = -0.5 * (logvars.sum(-1) + z.shape[-1] * math.log(2 * math.pi))  # (K,)
    log_weights = torch.log_softmax(logits, dim=-1)
    return torch.logsumexp(log_weights + log_norm - 0.5 * quad, dim=-1).to(dtype)
