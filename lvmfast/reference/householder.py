"""Reference Householder flow [4.58]: a readable Python loop over the T reflections."""
import torch


def householder_flow(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H_T ... H_1 z with H_t = I - 2 v_t v_t^T / |v_t|^2.

    z: (B, L); v: (B, T, L) per sample or (T, L) shared by the batch. A zero v_t is skipped
    (identity, finite gradients). Half inputs are computed in float32 and the result cast back.
    """
    dtype = z.dtype
    acc = torch.promote_types(dtype, torch.float32)
    z, v = z.to(acc), v.to(acc)
    for t in range(v.shape[-2]):
        vt = v[..., t, :]                                  # (B, L) or (L,)
        norm2 = (vt * vt).sum(-1, keepdim=True)
        safe = torch.where(norm2 > 0, norm2, torch.ones_like(norm2))
        coef = torch.where(norm2 > 0, 2 * (z * vt).sum(-1, keepdim=True) / safe, torch.zeros_like(norm2))
        z = z - coef * vt
    return z.to(dtype)
