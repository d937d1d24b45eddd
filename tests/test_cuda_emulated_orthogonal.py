"""The CUDA bjorck_orthonormalize (kernels/orthogonal.cu with its glue csrc/cuda/orthogonal.cpp)
run on the CPU under tests/cuda_emulator, against the float64 reference (outputs and the
unrolled gradient). Covered: the forward's three homes of Q, Q' and A (dynamic shared memory up
to 48 KB, past it with the opt-in attribute, a global workspace past the opt-in limit), odd D and
M (the 2 x 2 register tiles' edges), M < D, batch dims, max_steps = 0, tol = 0, and per-matrix
stopping inside one block: min(N, 2 SMs) blocks walk the matrices, so with few emulated SMs one
block runs matrices that stop at different steps (the result's buffer parity k % 2 differs).
Rounding is the host's here, so accuracy on a GPU is test_orthogonal.py's business."""
import pytest
import torch

from test_orthogonal import check_past_the_kept_steps, make_q, reference_and_grad, spread_q
from conftest import assert_close_rel

TOL = {torch.float64: 1e-11, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
RESERVE = 32 * 8  # the glue's reserve for static shared memory, which the emulation also counts
NO_OPTIN_LIMIT = 48 * 1024 - RESERVE
OPTIN_LIMIT = 227 * 1024 - RESERVE  # the emulated sharedMemPerBlockOptin, less the reserve


def home(D, M, dtype):
    """Where the forward keeps Q, Q' and A (orthogonal.cu's launcher), for the test ids."""
    smem = (2 * D * M + M * M) * (8 if dtype == torch.float64 else 4)
    return "smem" if smem <= NO_OPTIN_LIMIT else "optin" if smem <= OPTIN_LIMIT else "global"


def conditioned_q(shape, dtype, sigma_min=0.02):
    """test_orthogonal.make_q with its singular values raised to at least sigma_min. A tiny one
    (square random matrices reach ~1e-5) amplifies rounding: float32 then misses tol = 1e-6 and
    runs all max_steps, where the unrolled gradient still moves (the CPU kernel's as much)."""
    q = make_q(shape, torch.float64, "cpu", grad=False)
    if q.numel():
        u, sv, vh = torch.linalg.svd(q, full_matrices=False)
        q = u @ torch.diag_embed(sv.clamp(min=sigma_min)) @ vh
    return q.to(dtype)


def check(ops, q, max_steps, tol, grad_scale=20):
    grad_out = torch.randn(q.shape, dtype=torch.float64).to(q.dtype)
    out = ops.bjorck_orthonormalize(q, max_steps, tol)
    grad = ops.bjorck_orthonormalize_backward(grad_out, q, max_steps, tol)
    ref, ref_grad = reference_and_grad(q, grad_out, max_steps, tol)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert grad.dtype == q.dtype and grad.shape == q.shape
    # float32 may stop at other steps than float64 near tol, but extra steps at the fixed point
    # change neither the result nor the gradient beyond rounding
    assert_close_rel(out, ref, TOL[q.dtype], "output")
    assert_close_rel(grad, ref_grad, TOL[q.dtype] * grad_scale, "grad q")
    return out, grad, grad_out


# M and D multiples of 8 take the 4 x 4 register tiles: 16 x 16 and 64 x 32 with gemm_tn's D rows
# split over two lanes, 48 x 40 split in the backward only (partial warps in the shuffles), 72 x 64
# split in neither (two tiles a thread; float64 backward in the global workspace).
SHAPES = [(1, 1, 1), (4, 9, 1), (5, 7, 3), (3, 5, 5), (2, 3, 16, 16), (6, 2, 11, 6), (7, 40, 33),
          (3, 64, 32), (2, 20, 17), (2, 48, 40), (2, 72, 64)]
SETTINGS = [(30, 1e-6), (0, 1e-6), (3, 0.0), (30, 0.3), (7, 1e-3)]  # (max_steps, tol)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"steps{s[0]}-tol{s[1]}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_reference(emulated_cuda, shape, setting, dtype):
    check(emulated_cuda, conditioned_q(shape, dtype), *setting)


# (N, D, M, dtype): Q, Q' and A past 48 KB (opt-in) and past the opt-in limit (global workspace);
# 192 x 64 is also where a build with LVMFAST_BJORCK_PAD=4 pads the buffers in the workspace
LARGE = [(3, 50, 45, torch.float64), (2, 80, 60, torch.float32), (3, 150, 80, torch.float64),
         (2, 220, 110, torch.float32), (1, 100, 100, torch.float64), (2, 192, 64, torch.float64)]


@pytest.mark.parametrize("N,D,M,dtype", LARGE,
                         ids=[f"{N}x{D}x{M}-{str(d)[6:]}-{home(D, M, d)}" for N, D, M, d in LARGE])
def test_shared_memory_opt_in_and_global_workspace(emulated_cuda, monkeypatch, N, D, M, dtype):
    monkeypatch.setenv("LVMFAST_EMULATED_SMS", "1")  # 2 blocks: one walks two matrices
    q = conditioned_q((N, D, M), dtype)
    check(emulated_cuda, q, 30, 1e-6 if dtype == torch.float64 else 1e-5)
    check(emulated_cuda, q, 4, 0.0)


def with_singular_values(n, D, M, lo, hi):
    """n float64 matrices D x M with singular values uniform in [lo, hi]. Bounded conditioning:
    the iteration multiplies a small singular value by up to 1.5 a step, and its float32
    rounding error with it (random square matrices have sigma_min down to ~1e-5: errors ~1e-4)."""
    u = torch.linalg.qr(torch.randn(n, D, M, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, M, M, dtype=torch.float64))[0]
    return u * torch.empty(n, 1, M, dtype=torch.float64).uniform_(lo, hi) @ v.mT


@pytest.mark.parametrize("sms", ["1", "2", "5"])
@pytest.mark.parametrize("D,M", [(6, 4), (33, 33), (90, 70)], ids=lambda s: str(s))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_each_matrix_stops_on_its_own(emulated_cuda, monkeypatch, sms, D, M, dtype):
    """Matrices that stop at different steps (0 for an orthonormal one and for a NaN one, whose
    test `!(e2 > tol2)` holds at once) share a block; each equals its single-matrix result and
    the reference, and a matrix stopped at step 0 passes grad_out through unchanged."""
    monkeypatch.setenv("LVMFAST_EMULATED_SMS", sms)
    ops = emulated_cuda
    orth = torch.linalg.qr(torch.randn(D, M, dtype=torch.float64))[0]
    rough = with_singular_values(4, D, M, 0.05, 0.9)
    near = orth + 1e-3 * torch.randn(D, M, dtype=torch.float64)
    scaled = with_singular_values(1, D, M, 0.005, 0.05)  # many more steps than the others
    nan = torch.full((1, D, M), float("nan"), dtype=torch.float64)
    q = torch.cat([orth[None], rough[:2], near[None], scaled, nan, rough[2:]]).to(dtype)
    tol = 1e-4
    out = ops.bjorck_orthonormalize(q, 30, tol)
    grad_out = torch.randn(q.shape, dtype=torch.float64).to(dtype)
    grad = ops.bjorck_orthonormalize_backward(grad_out, q, 30, tol)
    assert torch.equal(out[0], q[0]) and torch.equal(grad[0], grad_out[0])  # converged before step 0
    assert torch.isnan(out[5]).all() and torch.equal(grad[5], grad_out[5])
    for i in range(q.shape[0]):
        alone = q[i:i + 1]
        torch.testing.assert_close(out[i:i + 1], ops.bjorck_orthonormalize(alone, 30, tol),
                                   rtol=0, atol=0, equal_nan=True)
        assert torch.equal(grad[i:i + 1], ops.bjorck_orthonormalize_backward(grad_out[i:i + 1], alone, 30, tol))
    finite = [i for i in range(q.shape[0]) if i != 5]
    ref, ref_grad = reference_and_grad(q[finite], grad_out[finite], 30, tol)
    # float32's ||Q^T Q - I||_F carries rounding, so a matrix that meets tol just so may stop a
    # step away from float64's: that step changes Q by about ||Q^T Q - I|| / 2 <~ tol
    out_tol = TOL[dtype] if dtype == torch.float64 else 3 * tol
    assert_close_rel(out[finite], ref, out_tol, "output")
    assert_close_rel(grad[finite], ref_grad, out_tol * 20, "grad q")
    if D * M > 100:
        return
    # the step counts differ: one more allowed step changes only the matrices still iterating
    steps = []
    for i in finite:
        k = 0
        while not torch.equal(ops.bjorck_orthonormalize(q[i:i + 1], k, tol),
                              ops.bjorck_orthonormalize(q[i:i + 1], k + 1, tol)):
            k += 1
        steps.append(k)
    assert steps[0] == 0 and len(set(steps)) >= 3, steps


def test_no_steps_is_the_identity(emulated_cuda):
    ops = emulated_cuda
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        q = make_q((5, 7, 3), dtype, "cpu", grad=False)
        g = torch.randn(q.shape).to(dtype)
        assert torch.equal(ops.bjorck_orthonormalize(q, 0, 1e-6), q)
        assert torch.equal(ops.bjorck_orthonormalize_backward(g, q, 0, 1e-6), g)


def test_empty(emulated_cuda):
    ops = emulated_cuda
    for shape in [(0, 4, 3), (3, 0, 4, 2), (2, 5, 0)]:
        q = torch.randn(shape)
        assert ops.bjorck_orthonormalize(q, 30, 1e-6).shape == shape
        assert ops.bjorck_orthonormalize_backward(q, q, 30, 1e-6).shape == shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_storage_accumulates_in_float(emulated_cuda, dtype):
    check(emulated_cuda, conditioned_q((6, 16, 8), dtype), 10, 0.0, grad_scale=10)


def test_converges_to_the_polar_factor(emulated_cuda):
    q = conditioned_q((5, 24, 12), torch.float64)
    out = emulated_cuda.bjorck_orthonormalize(q, 40, 1e-10)
    eye = torch.eye(12, dtype=torch.float64)
    assert (torch.linalg.matrix_norm(out.mT @ out - eye) <= 1e-10).all()
    u, _, vh = torch.linalg.svd(q, full_matrices=False)
    torch.testing.assert_close(out, u @ vh)


def test_non_contiguous_input(emulated_cuda):
    ops = emulated_cuda
    q = conditioned_q((3, 5, 9, 4), torch.float64).transpose(0, 1)[..., ::2, :]
    g = torch.randn(q.shape, dtype=torch.float64).transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not q.is_contiguous() and not g.is_contiguous()
    assert torch.equal(ops.bjorck_orthonormalize(q, 30, 1e-6), ops.bjorck_orthonormalize(q.contiguous(), 30, 1e-6))
    assert torch.equal(ops.bjorck_orthonormalize_backward(g, q, 30, 1e-6),
                       ops.bjorck_orthonormalize_backward(g.contiguous(), q.contiguous(), 30, 1e-6))


@pytest.mark.parametrize("D,M", [(64, 32), (48, 40), (40, 33)], ids=lambda s: str(s))
def test_backward_reruns_the_steps_the_forward_took(emulated_cuda, D, M):
    """The backward is the gradient of the iterations the forward executed, so its re-run of the
    forward must stop at the same step. In float32, ||Q^T Q - I||_F levels off at a rounding
    floor (~6e-7 at 64 x 32); with tol inside that floor, whether a matrix stops is decided by
    the last bits of the norm, so the re-run must compute it exactly as the forward kernel does,
    although the two kernels run different thread counts. The step k each matrix took is found
    from the forward (its result equals the fixed-k run's bit for bit); the backward must then
    equal the fixed-k backward bit for bit."""
    ops = emulated_cuda
    N, max_steps = 16, 30
    q = conditioned_q((N, D, M), torch.float32, sigma_min=0.3)
    grad_out = torch.randn(q.shape, dtype=torch.float64).to(q.dtype)
    fixed = [ops.bjorck_orthonormalize(q, k, 0.0) for k in range(max_steps + 1)]
    eye = torch.eye(M, dtype=torch.float64)
    floor = torch.stack([torch.linalg.matrix_norm(f.double().mT @ f.double() - eye)
                         for f in fixed[15:]])
    tol = floor.median().item()
    out = ops.bjorck_orthonormalize(q, max_steps, tol)
    grad = ops.bjorck_orthonormalize_backward(grad_out, q, max_steps, tol)
    steps = []
    for i in range(N):
        k = next(k for k in range(max_steps + 1) if torch.equal(fixed[k][i], out[i]))
        steps.append(k)
        expected = ops.bjorck_orthonormalize_backward(grad_out[i:i + 1], q[i:i + 1], k, 0.0)
        assert torch.equal(grad[i:i + 1], expected), (i, k, steps)
    assert len(set(steps)) >= 3, steps  # tol inside the floor: matrices stop at various steps


@pytest.mark.parametrize("steps,smallest,dtype,shape", [
    (60, 1e-7, torch.float32, (3, 9, 5)), (60, 1e-7, torch.float32, (2, 16, 8)),
    (60, 1e-7, torch.float32, (1, 32, 32)), (400, 1e-60, torch.float64, (2, 9, 5))],
    ids=lambda v: str(v).replace("torch.", ""))
def test_backward_past_the_kept_steps_is_exact(emulated_cuda, steps, smallest, dtype, shape):
    """More executed steps than the 32 the backward keeps: replays from checkpoints, two levels at
    60 steps and three at 400, on the 2 x 2 and the 4 x 4 register tiles, and at 32 x 32 on
    buffers that a build with LVMFAST_BJORCK_SWIZZLE=1 permutes (replays from the input then
    load it through the permutation) (test_orthogonal.check_past_the_kept_steps)."""
    check_past_the_kept_steps(emulated_cuda, steps, smallest, dtype, "cpu", shape)


def test_backward_past_the_kept_steps_matches_reference(emulated_cuda):
    """Matrices that stop at different steps between about 35 and 50, against the reference."""
    q = torch.cat([spread_q(2, 12, 6, smallest, torch.float64, "cpu") for smallest in (1e-5, 1e-7)])
    grad_out = torch.randn(q.shape, dtype=torch.float64)
    out = emulated_cuda.bjorck_orthonormalize(q, 1000, 1e-12)
    grad = emulated_cuda.bjorck_orthonormalize_backward(grad_out, q, 1000, 1e-12)
    ref, ref_grad = reference_and_grad(q, grad_out, 1000, 1e-12)
    # singular values down to 1e-7 cost float64 digits: errors near 1e-10 in both
    assert_close_rel(out, ref, 1e-9, "output")
    assert_close_rel(grad, ref_grad, 1e-9, "grad q")
