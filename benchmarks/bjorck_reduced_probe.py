"""Probe, not library code: would bjorck_orthonormalize be faster run on the R factor of a thin QR?

For D > M every Björck iterate stays in the column space of Q_0. With Q_0 = Qt R_0 (Qt: D x M,
orthonormal columns), Q_j = Qt R_j, where R_j follows the same iteration on M x M matrices,
because Q_j^T Q_j = R_j^T R_j. The products per step then shrink from D x M to M x M, at the
price of a QR and of products with Qt. This script weighs the work of both forms at the
benchmark's shape and measures what float32 does to the op's contract: the direct iteration
returns a matrix whose own computed ||Q^T Q - I||_F was checked against tol, whereas the reduced
form checks R_K and returns Qt R_K, which carries Qt's rounding and that of the last product.

    python benchmarks/bjorck_reduced_probe.py
"""
import torch

N, D, M, MAX_STEPS, TOL = 1024, 64, 32, 30, 1e-6  # lvmfast/bench/orthogonal.py's shape


def bjorck(q, max_steps=MAX_STEPS, tol=TOL):
    """The kernel's iteration (csrc/orthogonal.h), masked per matrix; returns Q and step counts."""
    eye = torch.eye(q.shape[-1], dtype=q.dtype)
    active = torch.ones(q.shape[0], dtype=torch.bool)
    steps = torch.zeros(q.shape[0])
    for _ in range(max_steps):
        gram = q.mT @ q
        active &= torch.linalg.matrix_norm(gram - eye) > tol
        steps += active
        q = torch.where(active[:, None, None], 1.5 * q - 0.5 * q @ gram, q)
    return q, steps


def residual(y):
    """||Y^T Y - I||_F of each matrix, computed in float64."""
    y = y.double()
    return torch.linalg.matrix_norm(y.mT @ y - torch.eye(y.shape[-1], dtype=torch.float64))


def inputs(condition, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(N, D, M, generator=g)
    if condition is not None:  # same singular vectors, singular values spread log-evenly
        u, _, vh = torch.linalg.svd(q, full_matrices=False)
        s = torch.logspace(0, -torch.log10(torch.tensor(condition)).item(), M)
        q = u @ torch.diag_embed(s.expand(N, M)) @ vh
    return q / torch.linalg.matrix_norm(q, keepdim=True)


def work(rows, steps):
    """Multiply-adds of the forward and of the backward for one matrix: per step a symmetric Gram
    product and Q A; the backward re-runs the forward and adds Q^T G and G A + Q (S + S^T)."""
    gram, update = rows * M * (M + 1) / 2, rows * M * M
    return steps * (gram + update), steps * (gram + update + 3 * rows * M * M)


def main():
    print(f"{N} matrices {D}x{M}, float32, tol={TOL:g}, max_steps={MAX_STEPS}\n")
    print("| input | form | mean steps | median residual | max residual | outputs above tol |")
    print("|---|---|---|---|---|---|")
    mean_steps = None
    for condition in (None, 100.0):
        q = inputs(condition)
        forms = {"direct (the kernel)": bjorck(q)}
        for qr_dtype in (torch.float32, torch.float64):
            qt, r = torch.linalg.qr(q.to(qr_dtype))
            r_k, steps = bjorck(r.float())
            forms[f"reduced, QR in {str(qr_dtype)[6:]}"] = (qt.float() @ r_k, steps)
        for name, (y, steps) in forms.items():
            res = residual(y)
            label = "normalized Gaussian" if condition is None else f"condition {condition:g}"
            print(f"| {label} | {name} | {steps.mean():.2f} | {res.median():.2e} | {res.max():.2e} "
                  f"| {(res > TOL).float().mean():.1%} |")
            if condition is None and name.startswith("direct"):
                mean_steps = steps.mean().item()

    # Work at the benchmark's inputs: the direct form against the reduced one, whose QR,
    # products with Qt and F = R_0^-1 R_K (for G_perp F^T) come on top of M x M steps.
    fwd_d, bwd_d = work(D, mean_steps)
    fwd_r, bwd_r = work(M, mean_steps)
    householder = D * M * M - M ** 3 / 3  # a QR, or applying its reflectors once
    fwd_r += 2 * householder                          # QR, then Y = Qt R_K
    bwd_r += 3 * householder + M ** 3 / 2 + D * M * M + M ** 3  # QR, Qt^T G, Qt X; F; G F^T; H F^T
    direct, reduced = fwd_d + bwd_d, fwd_r + bwd_r
    print(f"\nforward + backward, multiply-adds per matrix at {mean_steps:.2f} steps: direct "
          f"{direct / 1e6:.3f} M, reduced {reduced / 1e6:.3f} M ({direct / reduced:.2f}x less work)")
    print(f"float32 GFLOP for the batch: direct {2 * N * direct / 1e9:.2f}, reduced "
          f"{2 * N * reduced / 1e9:.2f}")


if __name__ == "__main__":
    main()
