"""Reference Sylvester flow step [4.63]-[4.64], in the batched-matmul form."""
import torch


def _matvec(matrix: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """matrix (B, P, R) or shared (P, R) times vec (B, R) -> (B, P)."""
    return (matrix @ vec.unsqueeze(-1)).squeeze(-1)


def sylvester_flow(z: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, b: torch.Tensor,
                   q: torch.Tensor | None = None, reverse: bool = False):
    """z' = z + Q R1 tanh(R2 Q^T z + b) and logdet = sum_m log|1 + (1 - tanh^2 a_m) R1_mm R2_mm|.

    z: (B, D); r1, r2: (B, M, M) or (M, M), upper triangles read; b: (B, M) or (M,);
    q: (B, D, M) / (D, M) or None (Q = I, or the reversal permutation when `reverse`).
    Returns (z', logdet) of shapes (B, D) and (B,). Half inputs are computed in float32.
    """
    dtype = z.dtype
    acc = torch.promote_types(dtype, torch.float32)
    z, r1, r2, b = (t.to(acc) for t in (z, r1, r2, b))
    # triu: entries below the diagonal are never read and get exactly zero gradient.
    r1u, r2u = torch.triu(r1), torch.triu(r2)
    if q is not None:
        q = q.to(acc)
        y = _matvec(q.mT, z)                                   # Q^T z
    else:
        y = z.flip(-1) if reverse else z
    a = _matvec(r2u, y) + b
    h = torch.tanh(a)
    c = _matvec(r1u, h)
    if q is not None:
        out = z + _matvec(q, c)
    else:
        out = z + (c.flip(-1) if reverse else c)
    diag = torch.diagonal(r1, dim1=-2, dim2=-1) * torch.diagonal(r2, dim1=-2, dim2=-1)
    logdet = torch.log(torch.abs(1 + (1 - h * h) * diag)).sum(-1)
    return out.to(dtype), logdet.to(dtype)
