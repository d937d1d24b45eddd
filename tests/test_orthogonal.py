"""bjorck_orthonormalize: every kernel against the float64 reference (outputs and the unrolled
gradient), per-matrix stopping, gradcheck, opcheck, torch.compile, saved memory and errors."""
import pytest
import torch

import lvmfast
from lvmfast import _backend
from lvmfast.reference import bjorck_orthonormalize as reference_bjorck
from conftest import assert_close_rel, backend_params

BACKENDS = backend_params("bjorck_orthonormalize")
SHAPES = [(0, 4, 3), (3, 0, 4, 2), (1, 1, 1), (5, 7, 3), (3, 5, 5), (2, 3, 16, 16), (4, 9, 1),
          (37, 11, 6), (6, 40, 33), (9, 64, 32), (2, 20, 17)]
SETTINGS = [(30, 1e-6), (0, 1e-6), (3, 0.0), (30, 0.3), (7, 1e-3)]  # (max_steps, tol)


def make_q(shape, dtype, device, grad=True):
    q = torch.randn(shape, dtype=torch.float64)
    if q.numel():
        # singular values inside (0, 0.9]: never an already orthonormal matrix (M = 1 would be
        # exactly one after plain Frobenius normalization, where the stopping test sits on 0)
        q = 0.9 * q / torch.linalg.matrix_norm(q, keepdim=True)
        # and at least 0.02: each step multiplies a small singular value (and its rounding error)
        # by up to 1.5, and random square matrices reach ~1e-4, where 30 steps do not converge
        # and float32 drifts from float64 by more than any fixed tolerance (a rare flake)
        u, s, vh = torch.linalg.svd(q, full_matrices=False)
        q = u @ torch.diag_embed(s.clamp(min=0.02)) @ vh
    return q.to(device=device, dtype=dtype).requires_grad_(grad)


def reference_and_grad(q, grad_out, max_steps, tol):
    x = q.detach().double().cpu().requires_grad_()
    out = reference_bjorck(x, max_steps, tol)
    (g,) = torch.autograd.grad(out, x, grad_out.double().cpu(), allow_unused=True)
    return out, torch.zeros_like(x) if g is None else g


def run(backend, *args):
    with lvmfast.use_backend(backend):
        return lvmfast.bjorck_orthonormalize(*args)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"steps{s[0]}-tol{s[1]}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(backend, device, dtype, setting, shape):
    max_steps, tol = setting
    q = make_q(shape, dtype, device)
    out = run(backend, q, max_steps, tol)
    grad_out = torch.randn(out.shape, dtype=dtype, device=device)
    (grad,) = torch.autograd.grad(out, q, grad_out)
    ref, ref_grad = reference_and_grad(q, grad_out, max_steps, tol)
    assert out.dtype == dtype and out.device.type == device
    # float32 may stop at other steps than float64 near tol = 1e-6, but extra steps at the
    # fixed point change neither the result nor the gradient beyond rounding
    tol_out = 1e-11 if dtype == torch.float64 else 2e-5
    assert_close_rel(out, ref, tol_out, "output")
    assert_close_rel(grad, ref_grad, tol_out * 20, "grad q")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_converges_to_orthonormal_columns(backend, device):
    q = make_q((50, 64, 32), torch.float64, device, grad=False)
    out = run(backend, q, 30, 1e-10)
    eye = torch.eye(32, dtype=torch.float64, device=device)
    assert (torch.linalg.matrix_norm(out.mT @ out - eye) <= 1e-10).all()
    # the polar factor: out = q (q^T q)^(-1/2)
    u, _, vh = torch.linalg.svd(q, full_matrices=False)
    torch.testing.assert_close(out, u @ vh)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_each_matrix_stops_on_its_own(backend, device, dtype):
    """An orthonormal matrix comes back untouched (0 steps, identity gradient) next to others
    that iterate, and a loose tolerance stops each matrix at its own step."""
    orth = torch.linalg.qr(torch.randn(6, 4, dtype=torch.float64))[0]
    rough = make_q((2, 6, 4), torch.float64, "cpu", grad=False)
    q = torch.cat([orth[None], rough]).to(device=device, dtype=dtype).requires_grad_()
    out = run(backend, q, 30, 1e-4)
    assert torch.equal(out[0], q[0].detach())  # converged before the first step
    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, q, grad_out)
    assert torch.equal(grad[0], grad_out[0])
    # steps taken per matrix differ: compare with single-matrix calls
    for i in range(3):
        alone = run(backend, q[i:i + 1].detach(), 30, 1e-4)
        torch.testing.assert_close(out[i:i + 1], alone, rtol=0, atol=0)
    # a tolerance met after a few steps freezes that matrix: one more allowed step changes nothing
    steps = [next(k for k in range(31) if torch.equal(run(backend, q[i:i + 1].detach(), k, 0.05),
                                                      run(backend, q[i:i + 1].detach(), k + 1, 0.05)))
             for i in range(3)]
    assert steps[0] == 0 and min(steps[1:]) > 0, steps


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_input(backend, device):
    q = make_q((3, 5, 9, 4), torch.float64, device, grad=False).transpose(0, 1)[..., ::2, :]  # (5, 3, 5, 4)
    q.requires_grad_()
    assert not q.is_contiguous()
    out = run(backend, q, 30, 1e-6)
    grad_out = torch.randn_like(out).transpose(-1, -2).contiguous().transpose(-1, -2)
    (grad,) = torch.autograd.grad(out, q, grad_out)
    ref, ref_grad = reference_and_grad(q, grad_out, 30, 1e-6)
    assert_close_rel(out, ref, 1e-11, "output")
    assert_close_rel(grad, ref_grad, 1e-10, "grad")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradcheck(backend, device):
    with lvmfast.use_backend(backend):
        for shape, steps in [((3, 5, 3), 4), ((2, 4, 4), 2), ((1, 6, 1), 5)]:
            q = make_q(shape, torch.float64, device)
            # tol = 0: a fixed step count, so finite differences never cross a stopping decision
            assert torch.autograd.gradcheck(lambda x: lvmfast.bjorck_orthonormalize(x, steps, 0.0), (q,))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_double_backward_matches_reference(backend, device):
    q = make_q((2, 4, 3), torch.float64, device)
    with lvmfast.use_backend(backend):
        assert torch.autograd.gradgradcheck(lambda x: lvmfast.bjorck_orthonormalize(x, 3, 0.0), (q,))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    op = torch.ops.lvmfast.bjorck_orthonormalize
    for shape, steps, tol in [((3, 5, 3), 4, 0.0), ((2, 2, 4, 4), 30, 1e-6), ((0, 3, 2), 5, 1e-6),
                              ((1, 3, 1), 0, 1e-6)]:
        torch.library.opcheck(op, (make_q(shape, torch.float64, device), steps, tol))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()

    def loss(q):
        q = q / torch.linalg.matrix_norm(q, keepdim=True)
        return lvmfast.bjorck_orthonormalize(q, 20, 1e-5).mul(q).sum()

    q = make_q((4, 6, 3), torch.float32, device)
    with lvmfast.use_backend(backend):
        compiled = torch.compile(loss, fullgraph=True)
        value = compiled(q)
        (grad,) = torch.autograd.grad(value, q)
        eager = loss(q)
        (eager_grad,) = torch.autograd.grad(eager, q)
    torch.testing.assert_close(value, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("max_steps", [5, 30, 300])
def test_saved_memory_does_not_grow_with_max_steps(backend, device, max_steps):
    q = make_q((40, 16, 8), torch.float32, device)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = run(backend, q, max_steps, 0.0)
    assert sum(saved) <= q.numel(), saved  # q only
    (grad,) = torch.autograd.grad(out.sum(), q)
    assert torch.isfinite(grad).all()


def test_reference_backend_and_auto():
    assert lvmfast.backends()["auto"]["bjorck_orthonormalize"]["cpu"] == "native"
    q = make_q((3, 5, 3), torch.float64, "cpu", grad=False)
    with lvmfast.use_backend("reference"):
        torch.testing.assert_close(lvmfast.bjorck_orthonormalize(q), reference_bjorck(q))


def _bad_inputs():
    q = make_q((4, 5, 3), torch.float32, "cpu", grad=False)
    return [
        ("q-1d", (q[0, 0],), {}, r"q must have shape \(\.\.\., D, M\), got \(3,\)"),
        ("M>D", (q.mT,), {}, r"M <= D, got \(4, 3, 5\)"),
        ("negative-steps", (q,), {"max_steps": -1}, "max_steps must be an int >= 0"),
        ("float-steps", (q,), {"max_steps": 3.0}, "max_steps must be an int >= 0"),
        ("negative-tol", (q,), {"tol": -1e-3}, "tol must be a number >= 0"),
        ("nan-tol", (q,), {"tol": float("nan")}, "tol must be a number >= 0"),
        ("dtype-int", (q.long(),), {}, "q must have dtype"),
        ("half-cpu", (q.half(),), {}, "half types need CUDA"),
    ]


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_inputs_raise_value_error(backend, case):
    _, args, kwargs, message = case
    with lvmfast.use_backend(backend), pytest.raises(ValueError, match=message):
        lvmfast.bjorck_orthonormalize(*args, **kwargs)


def test_compiled_op_checks_inputs_itself():
    q = make_q((4, 5, 3), torch.float32, "cpu", grad=False)
    with pytest.raises(ValueError, match="M <= D"):
        torch.ops.lvmfast.bjorck_orthonormalize(q.mT, 30, 1e-6)
    with pytest.raises(ValueError, match="max_steps must be >= 0"):
        torch.ops.lvmfast.bjorck_orthonormalize(q, -2, 1e-6)
    with pytest.raises(ValueError, match="tol must be >= 0"):
        torch.ops.lvmfast.bjorck_orthonormalize(q, 3, -1.0)
    with pytest.raises(ValueError, match="float32 or float64"):
        torch.ops.lvmfast.bjorck_orthonormalize(q.half(), 3, 1e-6)
    with pytest.raises(ValueError, match="grad must have shape"):
        torch.ops.lvmfast.bjorck_orthonormalize_backward(q[:2], q, 3, 1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_on_cuda(backend, dtype):
    if "cuda" not in _backend.AVAILABLE[backend]["bjorck_orthonormalize"]:
        pytest.skip(f"{backend} has no CUDA kernel in this build")
    q = make_q((20, 16, 8), dtype, "cuda")
    out = run(backend, q, 10, 0.0)
    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, q, grad_out)
    ref, ref_grad = reference_and_grad(q, grad_out, 10, 0.0)
    assert out.dtype == dtype and grad.dtype == dtype
    tol = 3e-2 if dtype == torch.bfloat16 else 5e-3
    assert_close_rel(out, ref, tol, "output")
    assert_close_rel(grad, ref_grad, tol * 10, "grad")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("shape", [(1024, 64, 32), (37, 100, 7), (5, 33, 33), (3, 200, 70)],
                         ids=lambda s: "x".join(map(str, s)))
def test_cuda_against_reference(backend, shape):
    if "cuda" not in _backend.AVAILABLE[backend]["bjorck_orthonormalize"]:
        pytest.skip(f"{backend} has no CUDA kernel in this build")
    q = make_q(shape, torch.float32, "cuda")
    for steps, tol in [(30, 1e-6), (6, 0.0), (30, 1e-2)]:
        out = run(backend, q, steps, tol)
        grad_out = torch.randn_like(out)
        (grad,) = torch.autograd.grad(out, q, grad_out)
        ref, ref_grad = reference_and_grad(q, grad_out, steps, tol)
        assert_close_rel(out, ref, 5e-5, "output")
        assert_close_rel(grad, ref_grad, 1e-3, "grad")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["native", "triton"])
def test_cuda_graph_capture_no_sync(backend):
    if "cuda" not in _backend.AVAILABLE[backend]["bjorck_orthonormalize"]:
        pytest.skip(f"{backend} has no CUDA kernel in this build")
    q = make_q((64, 16, 8), torch.float32, "cuda", grad=False)
    run(backend, q, 30, 1e-6)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # fails on any host-device synchronization
        out = run(backend, q, 30, 1e-6)
    graph.replay()
    torch.cuda.synchronize()
    assert_close_rel(out, reference_bjorck(q.double().cpu(), 30, 1e-6), 5e-5, "output")
