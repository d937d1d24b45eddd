"""sylvester_flow: every kernel against the float64 reference, plus gradcheck, opcheck, compile, errors."""
import pytest
import torch

import lvmfast
from lvmfast import _backend
from lvmfast.reference import sylvester_flow as reference_sylvester
from conftest import assert_close_rel, backend_params, is_interpreted, rerun_in_vector_width

BACKENDS = backend_params("sylvester_flow")
KINDS = ["triangular", "reverse", "orthogonal", "householder"]
PARAMS = ("r1", "r2", "b", "q")


def make_inputs(B, D, M, kind, dtype, device, shared=(), scale=0.7, grad=True):
    """Fresh random inputs; `shared` names the parameters given without the batch dimension."""
    f64 = torch.float64

    def lead(name):
        return () if name in shared else (B,)

    z = torch.randn(B, D, dtype=f64)
    r1 = torch.randn(*lead("r1"), M, M, dtype=f64) * scale
    r2 = torch.randn(*lead("r2"), M, M, dtype=f64) * scale
    b = torch.randn(*lead("b"), M, dtype=f64)
    if dtype != torch.float64:
        # log|1 + (1 - h^2) R1_mm R2_mm| has condition number ~1 / |1 + ...|: with random signs
        # some term lands near 0 and float32 rounding of h alone then costs 1e-4. Lower precision
        # is tested away from that singular set (both diagonals >= 0, so every term is >= 1);
        # float64 keeps random signs (both branches of |.|, and near-singular terms).
        for r in (r1, r2):
            r.diagonal(dim1=-2, dim2=-1).abs_()
    q = None
    if kind in ("orthogonal", "householder"):
        q = torch.linalg.qr(torch.randn(*lead("q"), D, M, dtype=f64))[0]
    tensors = [t.to(device=device, dtype=dtype).requires_grad_(grad) for t in (z, r1, r2, b)]
    if q is not None:
        q = q.to(device=device, dtype=dtype).requires_grad_(grad)
    return tensors, q, kind == "reverse"


def reference_and_grads(tensors, q, reverse, grad_out, grad_logdet):
    """Float64 reference outputs and gradients for z, r1, r2, b (and q)."""
    xs = [t.detach().double().cpu().requires_grad_() for t in tensors]
    qx = None if q is None else q.detach().double().cpu().requires_grad_()
    out, logdet = reference_sylvester(*xs, qx, reverse)
    wrt = xs + ([qx] if qx is not None else [])
    grads = torch.autograd.grad((out, logdet), wrt, (grad_out.double().cpu(), grad_logdet.double().cpu()),
                                allow_unused=True)
    return out, logdet, [torch.zeros_like(x) if g is None else g for x, g in zip(wrt, grads)]


def run(backend, *args):
    with lvmfast.use_backend(backend):
        return lvmfast.sylvester_flow(*args)


def assert_matches_reference(backend, tensors, q, reverse, tol, q_arg=None):
    """Runs the op on tensors (z, r1, r2, b) and q (or q_arg, a view of q, in its place) and
    compares its outputs (to tol) and its gradients for z, r1, r2, b and q (to 10 tol) with the
    float64 reference's at q. Returns (out, logdet, gradients)."""
    out, logdet = run(backend, *tensors, q if q_arg is None else q_arg, reverse)
    grad_out, grad_logdet = torch.randn_like(out), torch.randn_like(logdet)
    wrt = tensors + ([q] if q is not None else [])
    grads = torch.autograd.grad((out, logdet), wrt, (grad_out, grad_logdet))
    ref_out, ref_logdet, ref_grads = reference_and_grads(tensors, q, reverse, grad_out, grad_logdet)
    assert_close_rel(out, ref_out, tol, "z'")
    assert_close_rel(logdet, ref_logdet, tol, "logdet")
    for name, g, rg in zip(("z",) + PARAMS, grads, ref_grads):
        assert_close_rel(g, rg, tol * 10, f"grad {name}")
    return out, logdet, grads


def check_against_reference(backend, device, dtype, B, D, M, kind, shared=()):
    tensors, q, reverse = make_inputs(B, D, M, kind, dtype, device, shared)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    out, logdet, grads = assert_matches_reference(backend, tensors, q, reverse, tol)
    assert out.shape == (B, D) and logdet.shape == (B,)
    assert out.dtype == dtype and logdet.dtype == dtype and out.device.type == device
    # below the diagonal: never read, exactly zero gradient
    for g in grads[1:3]:
        assert (g.tril(-1) == 0).all()


SHAPES = [  # (B, D, M or None for M = D)
    (0, 3, None), (1, 1, None), (1, 5, None), (7, 1, None), (13, 9, None), (33, 16, None),
    (65, 64, None),
]
DENSE_SHAPES = [(0, 4, 2), (1, 1, 1), (5, 7, 3), (9, 9, 9), (17, 20, 11), (40, 64, 32)]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["triangular", "reverse"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-D{s[1]}")
def test_triangular_matches_reference(backend, device, dtype, kind, shape):
    B, D, _ = shape
    if backend == "triton" and device == "cpu" and B * D > 300:
        pytest.skip("shape too large for the Triton interpreter")
    check_against_reference(backend, device, dtype, B, D, D, kind)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["orthogonal", "householder"])
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=lambda s: f"B{s[0]}-D{s[1]}-M{s[2]}")
def test_dense_q_matches_reference(backend, device, dtype, kind, shape):
    B, D, M = shape
    M = D if kind == "householder" else M
    if backend == "triton" and device == "cpu" and B * D * M > 3000:
        pytest.skip("shape too large for the Triton interpreter")
    check_against_reference(backend, device, dtype, B, D, M, kind)


@pytest.mark.parametrize("kind", ["triangular", "reverse", "householder"])
def test_large_gradients_on_cpu_match_reference(kind):
    """Gradients of several MiB (fresh, huge-page-advised buffers, placed apart from their
    inputs to avoid 4K aliasing); an odd M puts the rows at every alignment."""
    if "cpu" not in _backend.AVAILABLE["native"]["sylvester_flow"]:
        pytest.skip("native CPU kernels not built")
    B, D = 600, 61
    assert B * D * D * 4 >= 8 << 20
    check_against_reference("native", "cpu", torch.float32, B, D, D, kind)


SHARED_SETS = [("r1",), ("r2",), ("b",), ("q",), ("r1", "r2", "b"), ("r1", "r2", "b", "q")]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shared", SHARED_SETS, ids=lambda s: "shared-" + "-".join(s))
def test_shared_parameters(backend, device, kind, shared):
    if "q" in shared and kind in ("triangular", "reverse"):
        pytest.skip("no q in a triangular flow")
    D = 6
    M = 4 if kind == "orthogonal" else D
    check_against_reference(backend, device, torch.float64, 11, D, M, kind, shared)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("kind", ["orthogonal", "householder"])
def test_q_expanded_over_the_batch(backend, device, kind):
    """An amortized-shape q that is one matrix expanded over the batch (batch stride 0, which the
    Triton kernels read in place): the values and gradients of that matrix given to every sample."""
    B, D = 9, 6
    M = 4 if kind == "orthogonal" else D
    tensors, q, reverse = make_inputs(B, D, M, kind, torch.float64, device, ("q",))
    q_expanded = q.expand(B, D, M)
    assert q_expanded.stride(0) == 0
    assert_matches_reference(backend, tensors, q, reverse, 1e-10, q_arg=q_expanded)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("shared", [(), ("r1", "r2", "b", "q")], ids=["amortized", "shared"])
def test_empty_batch_gives_empty_and_zero_gradients(backend, device, shared):
    tensors, q, reverse = make_inputs(0, 5, 3, "orthogonal", torch.float64, device, shared)
    out, logdet = run(backend, *tensors, q, reverse)
    assert out.shape == (0, 5) and logdet.shape == (0,)
    grads = torch.autograd.grad((out.sum() + logdet.sum()), tensors + [q])
    for t, g in zip(tensors + [q], grads):
        assert g.shape == t.shape and (g == 0).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_lower_triangle_is_ignored(backend, device):
    tensors, q, reverse = make_inputs(6, 5, 5, "triangular", torch.float64, device, grad=False)
    z, r1, r2, b = tensors
    noisy = [r + torch.randn_like(r).tril(-1) * 100 for r in (r1, r2)]
    a = run(backend, z, r1, r2, b, q, reverse)
    c = run(backend, z, *noisy, b, q, reverse)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_near_singular_logdet_matches_reference(backend, device):
    """1 + (1 - tanh^2 a) R1_mm R2_mm near 0: large |log|, gradient 1/x, finite and as the reference."""
    tensors, q, reverse = make_inputs(4, 3, 3, "triangular", torch.float64, device, grad=False)
    z, r1, r2, b = tensors
    z.zero_()
    b.zero_()  # a = 0, so 1 - tanh^2 a = 1 and the term is 1 + R1_mm R2_mm
    r1.copy_(torch.eye(3, dtype=r1.dtype).expand_as(r1))
    r2.copy_(-torch.eye(3, dtype=r2.dtype).expand_as(r2) * (1 - 1e-7))
    tensors = [t.requires_grad_() for t in (z, r1, r2, b)]
    out, logdet = run(backend, *tensors, q, reverse)
    grads = torch.autograd.grad(logdet.sum(), tensors)
    _, ref_logdet, ref_grads = reference_and_grads(tensors, q, reverse, torch.zeros_like(out),
                                                   torch.ones_like(logdet))
    assert_close_rel(logdet, ref_logdet, 1e-9, "logdet")
    for g, rg in zip(grads, ref_grads):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double().cpu(), rg, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_inputs(backend, device):
    B, D, M = 5, 7, 3
    f64 = dict(dtype=torch.float64, device=device)
    z = torch.randn(D, B, **f64).t()
    r1 = torch.randn(B, M, M, **f64).transpose(1, 2)
    r2 = torch.randn(M, B, M, **f64).transpose(0, 1)
    b = torch.randn(B, 2 * M, **f64)[:, ::2]
    q = torch.randn(B, D, 2 * M, **f64)[:, :, ::2]
    tensors = [t.requires_grad_() for t in (z, r1, r2, b)]
    q.requires_grad_()
    assert not any(t.is_contiguous() for t in tensors + [q])
    assert_matches_reference(backend, tensors, q, False, 1e-10)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("kind", ["triangular", "orthogonal"])
@pytest.mark.parametrize("B, D", [(5, 7), (40, 64)])
def test_gradients_of_a_sum_reach_the_backward_expanded(backend, device, kind, B, D):
    """A loss that sums the outputs hands the backward expanded gradients (stride 0), which the
    CUDA glue reads in place rather than copying: same gradients as the reference."""
    M = D if kind == "triangular" else max(1, D // 2)
    tensors, q, reverse = make_inputs(B, D, M, kind, torch.float32, device)
    out, logdet = run(backend, *tensors, q, reverse)
    wrt = tensors + ([q] if q is not None else [])
    grads = torch.autograd.grad((out.sum(-1) + logdet).sum() * 0.5, wrt)
    ref_out, ref_logdet, ref_grads = reference_and_grads(
        tensors, q, reverse, torch.full((B, D), 0.5), torch.full((B,), 0.5))
    for name, g, rg in zip(("z",) + PARAMS, grads, ref_grads):
        assert_close_rel(g, rg, 2e-4, f"grad {name}")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shared", [(), ("r1", "b", "q")], ids=["amortized", "shared"])
def test_gradcheck(backend, device, kind, shared):
    tensors, q, reverse = make_inputs(3, 4, 3 if kind == "orthogonal" else 4, kind, torch.float64,
                                      device, shared)
    wrt = tensors + ([q] if q is not None else [])

    def fn(*xs):
        return lvmfast.sylvester_flow(*xs[:4], xs[4] if len(xs) == 5 else None, reverse)

    with lvmfast.use_backend(backend):
        assert torch.autograd.gradcheck(fn, wrt, fast_mode=is_interpreted(backend, device))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("kind", ["reverse", "orthogonal"])
def test_double_backward_matches_reference(backend, device, kind):
    tensors, q, reverse = make_inputs(2, 3, 2 if kind == "orthogonal" else 3, kind, torch.float64,
                                      device)
    wrt = tensors + ([q] if q is not None else [])

    def fn(*xs):
        return lvmfast.sylvester_flow(*xs[:4], xs[4] if len(xs) == 5 else None, reverse)

    with lvmfast.use_backend(backend):
        assert torch.autograd.gradgradcheck(fn, wrt, fast_mode=is_interpreted(backend, device))


def _op(backend):
    return (torch.ops.lvmfast.sylvester_flow_triton if backend == "triton"
            else torch.ops.lvmfast.sylvester_flow)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    op = _op(backend)
    for B, D, M, kind, shared in [(4, 5, 5, "triangular", ()), (3, 4, 4, "reverse", ("r1", "b")),
                                  (3, 5, 2, "orthogonal", ()), (2, 4, 4, "householder", ("q", "r2")),
                                  (0, 3, 3, "triangular", ())]:
        tensors, q, reverse = make_inputs(B, D, M, kind, torch.float64, device, shared)
        torch.library.opcheck(op, (*tensors, q, reverse))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()

    def loss(z, r1, r2, b, q):
        z1, ld1 = lvmfast.sylvester_flow(z.tanh() * 2, r1, r2, b, None, False)
        z2, ld2 = lvmfast.sylvester_flow(z1, r1, r2, b, None, True)
        z3, ld3 = lvmfast.sylvester_flow(z2[:, :4], r1[:, :2, :2], r2[:, :2, :2], b[:, :2], q)
        return z3.square().sum() - (ld1 + ld2 + ld3).sum()

    tensors, _, _ = make_inputs(6, 4, 4, "triangular", torch.float32, device)
    q = torch.linalg.qr(torch.randn(6, 4, 2, device=device))[0].requires_grad_()
    inputs = tensors + [q]
    with lvmfast.use_backend(backend):
        compiled = torch.compile(loss, fullgraph=True,
                                 backend="aot_eager" if device == "cpu" and backend == "triton" else "inductor")
        value = compiled(*inputs)
        grads = torch.autograd.grad(value, inputs)
        eager = loss(*inputs)
        eager_grads = torch.autograd.grad(eager, inputs)
    torch.testing.assert_close(value, eager, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_backward_saves_only_the_inputs(backend, device):
    B, D, M = 50, 12, 6
    tensors, q, _ = make_inputs(B, D, M, "orthogonal", torch.float32, device)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        run(backend, *tensors, q, False)
    assert sum(saved) <= B * D + 2 * B * M * M + B * M + B * D * M, saved


def test_backend_available():
    info = lvmfast.backends()
    assert info["native"]["compiled"], info
    assert info["auto"]["sylvester_flow"]["cpu"] == "native"


def _bad_inputs():
    (z, r1, r2, b), q, _ = make_inputs(4, 5, 3, "orthogonal", torch.float32, "cpu", grad=False)
    (_, s1, s2, sb), _, _ = make_inputs(4, 5, 5, "triangular", torch.float32, "cpu", grad=False)
    return [
        ("z-1d", (z[0], s1, s2, sb), {}, r"z must have shape \(B, D\)"),
        ("z-D", (z[:, :4], r1, r2, b, q), {}, r"q must have shape \(4, 4, M\) or \(4, M\), got \(4, 5, 3\)"),
        ("D-mismatch-triangular", (z[:, :4], s1, s2, sb), {}, r"r1 must have shape \(4, 4, 4\) or \(4, 4\)"),
        ("M-mismatch-r2", (z, r1, r2[:, :2, :2], b, q), {}, r"r2 must have shape \(4, 3, 3\)"),
        ("M-mismatch-b", (z, r1, r2, b[:, :2], q), {}, r"b must have shape \(4, 3\) or \(3,\), got \(4, 2\)"),
        ("B-mismatch", (z, r1[:2], r2, b, q), {}, r"r1 must have shape \(4, 3, 3\)"),
        ("r1-not-square", (z, r1[:, :, :2], r2, b, q), {}, r"r1 must be square"),
        ("r2-not-square", (z, s1, s2[:, :4, :], sb), {}, r"r2 must be square"),
        ("reverse-with-q", (z, r1, r2, b, q, True), {}, r"reverse=True is only valid with q=None"),
        ("M>D", (z[:, :2], r1, r2, b, q[:, :2]), {}, r"q must have 1 <= M <= D = 2"),
        ("q-1d", (z, r1, r2, b, q[0, 0]), {}, r"q must have shape"),
        ("dtype-param", (z, r1.double(), r2, b, q), {}, r"r1 must have the dtype of z"),
        ("dtype-q", (z, r1, r2, b, q.double()), {}, r"q must have the dtype of z"),
        ("dtype-int", (z.long(), r1, r2, b, q), {}, r"z must have dtype"),
        ("dtype-half-cpu", (z.half(), r1.half(), r2.half(), b.half(), q.half()), {}, r"half types need CUDA"),
    ]


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_inputs_raise_value_error(backend, case):
    _, args, kwargs, message = case
    with lvmfast.use_backend(backend), pytest.raises(ValueError, match=message):
        lvmfast.sylvester_flow(*args, **kwargs)


@pytest.mark.parametrize("case", _bad_inputs()[:10], ids=lambda c: c[0])
def test_compiled_op_checks_inputs_itself(case):
    _, args, kwargs, _ = case
    with pytest.raises(ValueError, match="sylvester_flow"):
        torch.ops.lvmfast.sylvester_flow(*args, **kwargs)


def test_compiled_op_rejects_half_on_cpu():
    (z, r1, r2, b), _, _ = make_inputs(4, 5, 5, "triangular", torch.float16, "cpu", grad=False)
    with pytest.raises(ValueError, match="float32 or float64"):
        torch.ops.lvmfast.sylvester_flow(z, r1, r2, b)


@pytest.mark.parametrize("which", ["r1", "b", "q"])
def test_device_mismatch_raises_runtime_error(which):
    (z, r1, r2, b), q, _ = make_inputs(4, 5, 3, "orthogonal", torch.float32, "cpu", grad=False)
    args = dict(z=z, r1=r1, r2=r2, b=b, q=q)
    args[which] = args[which].to("meta")
    with pytest.raises(RuntimeError, match="one device"):
        lvmfast.sylvester_flow(**args)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_half_inputs_on_cuda(backend, dtype, kind):
    if "cuda" not in _backend.AVAILABLE[backend]["sylvester_flow"]:
        pytest.skip(f"{backend} has no CUDA kernel in this build")
    D = 24
    tensors, q, reverse = make_inputs(300, D, 10 if kind == "orthogonal" else D, kind, dtype, "cuda",
                                      scale=0.3)
    out, logdet = run(backend, *tensors, q, reverse)
    grad_out, grad_logdet = torch.randn_like(out), torch.randn_like(logdet)
    wrt = tensors + ([q] if q is not None else [])
    grads = torch.autograd.grad((out, logdet), wrt, (grad_out, grad_logdet))
    ref_out, ref_logdet, ref_grads = reference_and_grads(tensors, q, reverse, grad_out, grad_logdet)
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    assert out.dtype == dtype and logdet.dtype == dtype
    assert_close_rel(out, ref_out, tol, "z'")
    assert_close_rel(logdet, ref_logdet, tol, "logdet")
    for g, rg in zip(grads, ref_grads):
        assert g.dtype == dtype
        assert_close_rel(g, rg, tol * 4, "grad")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("kind", ["orthogonal", "householder"])
@pytest.mark.parametrize("D, M", [(64, 32), (120, 112)], ids=["staged", "global"])
@pytest.mark.parametrize("shared", [(), ("q",)], ids=["amortized", "shared"])
def test_cuda_q_layouts(backend, kind, D, M, shared):
    """q's matrices row-major and column-major (torch.linalg.qr's layout, which the native kernels
    read in place): the same values, and the row-major ones right against the reference."""
    if "cuda" not in _backend.AVAILABLE[backend]["sylvester_flow"]:
        pytest.skip(f"{backend} has no CUDA kernel in this build")
    M = D if kind == "householder" else M
    tensors, q, reverse = make_inputs(37, D, M, kind, torch.float32, "cuda", shared, grad=False)
    q_rows, q_columns = q.contiguous(), q.mT.contiguous().mT
    g, gl = torch.randn(37, D, device="cuda"), torch.randn(37, device="cuda")
    results = []
    for qx in (q_rows, q_columns):
        ins = [t.detach().clone().requires_grad_() for t in tensors] + [qx.detach().requires_grad_()]
        out, logdet = run(backend, *ins, reverse)
        results.append((out, logdet, *torch.autograd.grad((out, logdet), ins, (g, gl))))
    for x, y in zip(*results):
        if backend == "native":  # passed on the H100 (2026-11-26)
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
        else:
            # Triton sums a shared q's gradient with atomics, in a varying order: float32 rounding
            # apart (1e-5 absolute on the H100, 2026-11-26), so relative to the whole tensor
            assert_close_rel(x, y, 1e-5, "layouts")
    ref_out, ref_logdet, ref_grads = reference_and_grads(tensors, q_rows, reverse, g, gl)
    assert_close_rel(results[0][0], ref_out, 2e-5, "z'")
    assert_close_rel(results[0][1], ref_logdet, 2e-5, "logdet")
    for x, y in zip(results[0][2:], ref_grads):
        assert_close_rel(x, y, 2e-4, "grad")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shared", [(), ("r1", "r2", "b", "q")], ids=["amortized", "shared"])
def test_cuda_benchmark_shape_against_reference(backend, kind, shared):
    if "cuda" not in _backend.AVAILABLE[backend]["sylvester_flow"]:
        pytest.skip(f"{backend} has no CUDA kernel in this build")
    if "q" in shared and kind in ("triangular", "reverse"):
        shared = ("r1", "r2", "b")
    for dtype in (torch.float32, torch.float64):
        check_against_reference(backend, "cuda", dtype, 1031, 67, 33 if kind == "orthogonal" else 67,
                                kind, shared)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_float32_tanh_elementwise_accuracy(backend, device):
    """With z = 0, R1 = I and Q = I the flow is out = tanh(b): every pre-activation range (tiny,
    around the switch of method near 0.5, saturated, +-inf and NaN) is checked per element
    against float64, not only relative to the largest value. Bounds per kernel, as (ulps of
    2^-24 |tanh| plus an absolute term in h; absolute term in 1 - h^2 beside 1e-6 relative):
    the CPU's vector tanh (series below 0.5, 1 - 2 / (e^{2x} + 1) above) 4 ulp. Triton uses the
    same algorithm and shows 2.2 ulp at these points in the interpreter (numpy; 4.0 in a dense
    sweep), but its bound is for a GPU, where exp is ex2.approx and fp32 division div.full (~2
    ulp each): 8 ulp (those errors at worst give 7.5 here, just above 0.5). Native CUDA computes
    tanh in double (fast math would make tanhf tanh.approx.f32, 2^-11 relative), so it is held
    to the CPU's 4 ulp. Both GPU bounds held on an H100 (2026-11-26)."""
    h_ulps = 8 if backend == "triton" else 4
    h_abs, gb_abs = 1e-45, 1e-7
    mags = torch.cat([torch.logspace(-8, 1.4, 40), torch.linspace(0.45, 0.55, 11),
                      torch.tensor([0.0, 9.0, 20.0, float("inf")])])
    b = torch.cat([mags, -mags])
    M = b.numel()
    f32 = dict(dtype=torch.float32, device=device)
    z = torch.zeros(1, M, **f32)
    r1 = torch.eye(M, **f32)[None]
    r2 = torch.eye(M, **f32)[None] * 0.5
    bb = b[None].to(**f32).requires_grad_()
    out, _ = run(backend, z, r1, r2, bb)
    exact = torch.tanh(b.double())
    err = (out[0].double().cpu() - exact).abs()
    bound = h_ulps * 2.0**-24 * exact.abs() + h_abs
    assert (err <= bound).all(), (b[(err - bound).argmax()], err.max())
    (gb,) = torch.autograd.grad(out.sum(), bb)
    exact_gb = 1 - exact**2  # 1 - h^2 from the float32 h: h's error, doubled near |h| = 1
    gb_err = (gb[0].double().cpu() - exact_gb).abs()
    assert (gb_err <= 1e-6 * exact_gb + gb_abs).all(), gb_err.max()
    nan_out, _ = run(backend, z, r1, r2, torch.full((1, M), float("nan"), **f32))
    assert torch.isnan(nan_out).all()


@pytest.mark.parametrize("vector_bytes", ["32", "64"])
def test_cpu_kernels_in_both_vector_widths(vector_bytes):
    rerun_in_vector_width(__file__, vector_bytes, "native-cpu and not compile and not opcheck")
