"""Reference Björck–Bowie orthonormalization [4.65], masked per matrix with torch.where."""
import torch


def bjorck_orthonormalize(q: torch.Tensor, max_steps: int = 30, tol: float = 1e-6) -> torch.Tensor:
    """Q <- Q (I + (I - Q^T Q) / 2) on each matrix of q (..., D, M), until
    ||Q^T Q - I||_F <= tol or max_steps iterations; each matrix stops on its own.

    The Python `while` asks the device whether any matrix is unconverged: fine for the
    reference, which is not the fused op (under torch.compile it runs all max_steps, masked,
    which gives the same result). Half inputs are computed in float32.
    """
    dtype = q.dtype
    q = q.to(torch.promote_types(dtype, torch.float32))
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    active = torch.ones(q.shape[:-2] + (1, 1), dtype=torch.bool, device=q.device)
    for _ in range(max_steps):
        gram = q.mT @ q
        residual = eye - gram
        # once a matrix meets the tolerance it stays frozen
        active = active & (torch.linalg.matrix_norm(residual.detach(), keepdim=True) > tol)
        if not torch.compiler.is_compiling() and not bool(active.any()):
            break
        q = torch.where(active, q + 0.5 * (q @ residual), q)
    return q.to(dtype)
