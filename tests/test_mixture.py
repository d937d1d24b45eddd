"""log_mog: every kernel against the float64 reference, plus gradcheck, opcheck, compile, errors."""
import math
import os
import subprocess
import sys

import pytest
import torch

import lvmfast
from lvmfast import _backend
from lvmfast.reference import log_mog as reference_log_mog
from conftest import assert_close_rel, backend_params, is_interpreted, rerun_in_vector_width

BACKENDS = backend_params("log_mog")
# The Triton interpreter is slow: it gets the small shapes only.
SHAPES = [  # (leading dims of z, K, L)
    ((0,), 3, 4), ((1,), 1, 1), ((1,), 5, 1), ((7,), 1, 3), ((37,), 5, 7), ((3, 5), 4, 6),
    ((2, 0, 3), 2, 5), ((50,), 33, 17), ((129,), 100, 40), ((4, 3, 5), 17, 9),
    ((11,), 12, 5),  # float64: Kp = 16 doubles, 2 cache lines a row, so the CPU tables' rows get one more
]
SMALL = {s for s in SHAPES if math.prod(s[0]) * s[1] * s[2] <= 2000}


def make_inputs(lead, K, L, dtype, device, scale=3.0, lv_range=(-2.0, 2.0), grad=True):
    z = torch.randn(*lead, L, dtype=torch.float64) * scale
    means = torch.randn(K, L, dtype=torch.float64) * scale
    logvars = torch.empty(K, L, dtype=torch.float64).uniform_(*lv_range)
    logits = torch.randn(K, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype).requires_grad_(grad) for t in (z, means, logvars, logits)]


def reference_and_grads(inputs, grad_out):
    """Float64 reference output and gradients for all four inputs."""
    xs = [t.detach().double().cpu().requires_grad_() for t in inputs]
    out = reference_log_mog(*xs)
    grads = torch.autograd.grad(out, xs, grad_out.double().cpu(), allow_unused=True)
    return out, [torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads)]


def run(backend, fn, *args):
    with lvmfast.use_backend(backend):
        return fn(*args)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])) + f"-K{s[1]}-L{s[2]}")
def test_matches_reference(backend, device, dtype, shape):
    if backend == "triton" and device == "cpu" and shape not in SMALL:
        pytest.skip("shape too large for the Triton interpreter")
    lead, K, L = shape
    inputs = make_inputs(lead, K, L, dtype, device)
    out = run(backend, lvmfast.log_mog, *inputs)
    grad_out = torch.randn(out.shape, dtype=dtype, device=device)
    grads = torch.autograd.grad(out, inputs, grad_out)
    ref, ref_grads = reference_and_grads(inputs, grad_out)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert out.dtype == dtype and out.device.type == device
    assert_close_rel(out, ref, tol, "output")
    for name, g, rg in zip(("z", "means", "logvars", "logits"), grads, ref_grads):
        assert_close_rel(g, rg, tol * 10, f"grad {name}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_float32_accuracy_bound_in_hard_regime(backend, device):
    """SPEC bound: |z|,|means| <= 10, logvars in [-8, 4]; tight components far from the origin
    with z a few standard deviations away (where the expanded quadratic form loses digits)."""
    small = backend == "triton" and device == "cpu"
    N, K, L = (16, 8, 16) if small else (256, 64, 64)
    means = torch.empty(K, L, dtype=torch.float64).uniform_(-10, 10)
    logvars = torch.empty(K, L, dtype=torch.float64).uniform_(-8, 4)
    logvars[: K // 2] = torch.empty(K // 2, L, dtype=torch.float64).uniform_(-8, -6)  # tight ones
    logits = torch.randn(K, dtype=torch.float64)
    pick = torch.randint(0, K // 2, (N,))
    z = means[pick] + torch.randn(N, L, dtype=torch.float64) * torch.exp(0.5 * logvars[pick]) * 3
    z[: N // 4] = torch.empty(N // 4, L, dtype=torch.float64).uniform_(-10, 10)  # and anywhere
    z = z.clamp(-10, 10)
    # SPEC compares with the float64 result on the same inputs: the float32 values themselves,
    # since rounding the inputs to float32 alone moves the exact value by up to ~1.2e-4 here
    f32 = [t.float().to(device) for t in (z, means, logvars, logits)]
    exact = reference_log_mog(*[t.double().cpu() for t in f32])
    out = run(backend, lvmfast.log_mog, *f32).double().cpu()
    bound = 1e-4 * (1 + exact.abs())
    assert ((out - exact).abs() <= bound).all(), (out - exact).abs().div(1 + exact.abs()).max()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_minus_inf_logits_give_finite_gradients(backend, device, dtype):
    z, means, logvars, logits = make_inputs((9,), 6, 5, dtype, device, grad=False)
    logits[[0, 3, 5]] = -math.inf
    inputs = [t.requires_grad_() for t in (z, means, logvars, logits)]
    out = run(backend, lvmfast.log_mog, *inputs)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad_out)
    ref, ref_grads = reference_and_grads(inputs, grad_out)
    assert_close_rel(out, ref, 1e-5, "output")
    for g, rg in zip(grads, ref_grads):
        assert torch.isfinite(g).all()
        assert_close_rel(g, rg, 1e-4, "grad")
    assert (grads[3][[0, 3, 5]] == 0).all()
    assert (grads[1][[0, 3, 5]] == 0).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_inputs(backend, device):
    z = torch.randn(5, 11, 8, dtype=torch.float64, device=device).transpose(0, 1)[:, :, ::2]
    means = torch.randn(4, 6, dtype=torch.float64, device=device).t()  # (6, 4) viewed as K=6, L=4
    logvars = torch.randn(6, 8, dtype=torch.float64, device=device)[:, ::2]
    logits = torch.randn(12, dtype=torch.float64, device=device)[::2]
    inputs = [t.requires_grad_() for t in (z, means, logvars, logits)]
    assert not any(t.is_contiguous() for t in inputs)
    out = run(backend, lvmfast.log_mog, *inputs)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad_out)
    ref, ref_grads = reference_and_grads(inputs, grad_out)
    assert_close_rel(out, ref, 1e-10, "output")
    for g, rg in zip(grads, ref_grads):
        assert_close_rel(g, rg, 1e-9, "grad")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradcheck(backend, device):
    inputs = make_inputs((4,), 3, 5, torch.float64, device, scale=1.0)
    with lvmfast.use_backend(backend):
        assert torch.autograd.gradcheck(lvmfast.log_mog, inputs, fast_mode=is_interpreted(backend, device))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_double_backward_matches_reference(backend, device):
    inputs = make_inputs((3,), 2, 3, torch.float64, device, scale=1.0)
    with lvmfast.use_backend(backend):
        assert torch.autograd.gradgradcheck(lvmfast.log_mog, inputs, fast_mode=is_interpreted(backend, device))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    op = torch.ops.lvmfast.log_mog_triton if backend == "triton" else torch.ops.lvmfast.log_mog
    for lead, K, L in [((5,), 3, 4), ((2, 3), 1, 2), ((0,), 2, 3)]:
        inputs = make_inputs(lead, K, L, torch.float64, device, scale=1.0)
        torch.library.opcheck(op, inputs)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()

    def loss(z, means, logvars, logits):
        return lvmfast.log_mog(z.tanh() * 2, means, logvars, logits).square().sum()

    inputs = make_inputs((6,), 4, 3, torch.float32, device)
    with lvmfast.use_backend(backend):
        compiled = torch.compile(loss, fullgraph=True, backend="aot_eager" if device == "cpu" and backend == "triton" else "inductor")
        value = compiled(*inputs)
        grads = torch.autograd.grad(value, inputs)
        eager = loss(*inputs)
        eager_grads = torch.autograd.grad(eager, inputs)
    torch.testing.assert_close(value, eager, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_backward_saves_nothing_of_size_batch_by_components(backend, device):
    N, K, L = (40, 30, 3) if backend == "triton" else (500, 300, 3)
    inputs = make_inputs((N,), K, L, torch.float32, device)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = run(backend, lvmfast.log_mog, *inputs)
    # inputs plus the (N,) result, nothing of size N * K
    assert sum(saved) <= N * L + 2 * K * L + K + N, saved


def test_reference_backend_and_env_variable():
    inputs = make_inputs((5,), 3, 4, torch.float64, "cpu")
    with lvmfast.use_backend("reference"):
        assert lvmfast.current_backend() == "reference"
        out = lvmfast.log_mog(*inputs)
    torch.testing.assert_close(out, reference_log_mog(*inputs))
    assert lvmfast.current_backend() == "auto"
    code = "import lvmfast; print(lvmfast.current_backend())"
    env = dict(os.environ, LVMFAST_BACKEND="reference")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.stdout.strip().endswith("reference"), res.stderr


def test_backend_selection_errors():
    with pytest.raises(ValueError, match="unknown lvmfast backend"):
        with lvmfast.use_backend("fastest"):
            pass
    info = lvmfast.backends()
    assert info["native"]["compiled"], info  # CI builds the extension; a silent fallback is a bug
    assert info["auto"]["log_mog"]["cpu"] == "native"
    if "cuda" not in _backend.AVAILABLE["native"]["log_mog"]:
        with lvmfast.use_backend("native"), pytest.raises(RuntimeError, match="no log_mog kernel"):
            _backend.resolve("log_mog", "cuda")


def _bad_inputs():
    z, m, lv, w = (t.detach() for t in make_inputs((4,), 3, 5, torch.float32, "cpu"))
    return [
        ("z", (torch.tensor(1.0), m, lv, w), "z must have shape"),
        ("z", (z[:, :4], m, lv, w), r"z must have shape \(\.\.\., 5\)"),
        ("means", (z, m[0], lv, w), r"means must have shape \(K, L\)"),
        ("means", (z, m[:0], lv[:0], w[:0]), "K >= 1"),
        ("logvars", (z, m, lv[:2], w), r"logvars must have shape \(3, 5\), got \(2, 5\)"),
        ("logits", (z, m, lv, w[:2]), r"logits must have shape \(3,\), got \(2,\)"),
        ("logits", (z, m, lv, w[None]), r"logits must have shape \(3,\)"),
        ("dtype", (z, m.double(), lv, w), "means must have the dtype of z"),
        ("dtype", (z.long(), m, lv, w), "z must have dtype"),
        ("dtype", (z.half(), m.half(), lv.half(), w.half()), "half types need CUDA"),
    ]


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0] if isinstance(c, tuple) else None)
def test_bad_inputs_raise_value_error(backend, case):
    _, args, message = case
    with lvmfast.use_backend(backend), pytest.raises(ValueError, match=message):
        lvmfast.log_mog(*args)


def test_compiled_op_checks_inputs_itself():
    z, m, lv, w = (t.detach() for t in make_inputs((4,), 3, 5, torch.float32, "cpu"))
    with pytest.raises(ValueError, match="logvars must have shape"):
        torch.ops.lvmfast.log_mog(z, m, lv[:2], w)
    with pytest.raises(ValueError, match="float32 or float64"):
        torch.ops.lvmfast.log_mog(z.half(), m.half(), lv.half(), w.half())


def test_device_mismatch_raises_runtime_error():
    z, m, lv, w = (t.detach() for t in make_inputs((4,), 3, 5, torch.float32, "cpu"))
    with pytest.raises(RuntimeError, match="one device"):
        lvmfast.log_mog(z, m.to("meta"), lv, w)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_on_cuda(backend, dtype):
    if "cuda" not in _backend.AVAILABLE[backend]["log_mog"]:
        pytest.skip(f"{backend} has no CUDA kernel in this build")
    inputs = make_inputs((300,), 40, 24, dtype, "cuda", scale=2.0)
    out = run(backend, lvmfast.log_mog, *inputs)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad_out)
    # compare with the float64 reference on the same (rounded) inputs
    ref, ref_grads = reference_and_grads(inputs, grad_out)
    assert out.dtype == dtype
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert_close_rel(out, ref, tol, "output")
    for g, rg in zip(grads, ref_grads):
        assert g.dtype == dtype
        assert_close_rel(g, rg, tol * 4, "grad")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["native", "triton"])
def test_cuda_large_batch_against_reference(backend):
    if "cuda" not in _backend.AVAILABLE[backend]["log_mog"]:
        pytest.skip(f"{backend} has no CUDA kernel in this build")
    inputs = make_inputs((4099,), 517, 67, torch.float32, "cuda")
    out = run(backend, lvmfast.log_mog, *inputs)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad_out)
    ref, ref_grads = reference_and_grads(inputs, grad_out)
    assert_close_rel(out, ref, 1e-5, "output")
    for g, rg in zip(grads, ref_grads):
        assert_close_rel(g, rg, 1e-4, "grad")


@pytest.mark.parametrize("vector_bytes", ["32", "64"])
def test_cpu_kernels_in_both_vector_widths(vector_bytes):
    rerun_in_vector_width(__file__, vector_bytes, "native-cpu and not compile and not opcheck")
