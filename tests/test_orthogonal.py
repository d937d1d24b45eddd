"""bjorck_orthonormalize: every kernel against the float64 reference (outputs and the unrolled
gradient), per-matrix stopping, gradcheck, opcheck, torch.compile, saved memory and errors."""
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import lvmfast
from lvmfast import _backend
from lvmfast.reference import bjorck_orthonormalize as reference_bjorck
from conftest import assert_close_rel, backend_params, rerun_in_vector_width

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


def spread_q(n, D, M, smallest, dtype, device):
    """n matrices whose singular values run from `smallest` to 0.9, evenly in log. Each step
    multiplies a small singular value by about 1.5, so the iterates keep changing for about
    log(0.9 / smallest) / log(1.5) steps: a walk back that used a wrong iterate would show."""
    u = torch.linalg.qr(torch.randn(n, D, M, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, M, M, dtype=torch.float64))[0]
    sv = torch.logspace(math.log10(smallest), math.log10(0.9), M, dtype=torch.float64)
    return (u * sv @ v.mT).to(device=device, dtype=dtype)


# (steps, smallest singular value, dtype): the backward keeps at most 32 iterates
# (kernels/orthogonal_checkpoints.cuh), so 60 steps take two levels of checkpoints and 400 three.
PAST_THE_SLOTS = [(60, 1e-7, torch.float32), (60, 1e-11, torch.float64), (400, 1e-60, torch.float64)]


def check_past_the_kept_steps(ops, steps, smallest, dtype, device, shape=(3, 9, 5), segment=20):
    """Past 32 executed steps the backward replays the iteration from checkpoints instead of
    keeping every iterate. Its result must equal, bit for bit, the chain rule over segments of
    `segment` steps, each a backward that keeps all of its iterates: the same products on the
    same operands. tol = 0, so every matrix runs all `steps`. ops: torch.ops.lvmfast or the
    emulated CUDA ops."""
    q = spread_q(*shape, smallest, dtype, device)
    assert torch.isfinite(q).all()
    grad_out = torch.randn(q.shape, dtype=torch.float64).to(device=device, dtype=dtype)
    grad = ops.bjorck_orthonormalize_backward(grad_out, q, steps, 0.0)
    g = grad_out
    for a in reversed(range(0, steps, segment)):  # Q_a from the forward, the backward's arithmetic
        q_a = ops.bjorck_orthonormalize(q, a, 0.0)
        g = ops.bjorck_orthonormalize_backward(g, q_a, min(segment, steps - a), 0.0)
    assert torch.equal(grad, g)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("steps,smallest,dtype", PAST_THE_SLOTS, ids=lambda v: str(v).replace("torch.", ""))
def test_backward_past_the_kept_steps_is_exact(backend, device, steps, smallest, dtype):
    """check_past_the_kept_steps. (The float64 reference checks are in the next test, with
    milder conditioning: here the smallest singular values make the gradient ill-conditioned, so
    any other summation order differs in its last digits times that.)"""
    with lvmfast.use_backend(backend):
        check_past_the_kept_steps(torch.ops.lvmfast, steps, smallest, dtype, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("max_steps,tol", [(1000, 1e-12), (100, 0.0)])
def test_backward_past_the_kept_steps_matches_reference(backend, device, max_steps, tol):
    """Past the 32 kept steps, against the float64 reference: matrices that stop at different
    steps between about 35 and 50 (tol > 0), and all running 100 steps (tol = 0)."""
    q = torch.cat([spread_q(2, 12, 6, smallest, torch.float64, device) for smallest in (1e-5, 1e-7)])
    grad_out = torch.randn(q.shape, dtype=torch.float64, device=device)
    with lvmfast.use_backend(backend):
        out = lvmfast.bjorck_orthonormalize(q.requires_grad_(), max_steps, tol)
        (grad,) = torch.autograd.grad(out, q, grad_out)
    ref, ref_grad = reference_and_grad(q, grad_out, max_steps, tol)
    # singular values down to 1e-7 cost float64 digits: errors near 1e-10 in both
    assert_close_rel(out, ref, 1e-9, "output")
    assert_close_rel(grad, ref_grad, 1e-9, "grad q")


def test_checkpoint_schedule_hands_every_step_its_iterate(tmp_path):
    """The schedule alone (kernels/orthogonal_checkpoints.cuh, compiled into
    tests/cpp/orthogonal_checkpoints.cpp): every step count up to 300 and far past it, with the
    kernels' 33 slots and with few (where k > 2^(slots / 2) takes the per-step scratch replays that
    the kernels reach only past 65536 steps). Replays stay within `levels` + 1 runs of k steps,
    plus the scratch replays' share."""
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    source = Path(__file__).parent / "cpp" / "orthogonal_checkpoints.cpp"
    binary = tmp_path / "schedule"
    subprocess.run([compiler, "-std=c++17", "-O1", str(source), "-o", str(binary)], check=True)
    cases = [(0, 1), (1, 1)] + [(k, slots) for slots in (2, 3, 5, 6, 9, 33) for k in range(0, 301)]
    cases += [(k, 33) for k in (1000, 4097, 7777, 65536, 65537, 200000)] + [(5000, 7), (777, 5)]
    args = [str(v) for case in cases for v in case]
    lines = subprocess.run([str(binary), *args], check=True, capture_output=True, text=True).stdout.split("\n")
    rows = [tuple(map(int, line.split())) for line in lines if line]
    assert len(rows) == len(cases)
    for (k, slots, ok, levels, replayed), case in zip(rows, cases):
        assert (k, slots) == case and ok, (case, levels)
        if k <= slots:
            assert levels == 1 and replayed == 0, case  # everything kept by the forward re-run
        elif slots == 33 and k <= 65536:
            assert 2 <= levels <= 8 and replayed <= (levels + 1) * k, (case, levels, replayed)


@pytest.mark.cuda
def test_cuda_backward_memory_does_not_grow_with_max_steps():
    """The backward's workspace holds at most 33 iterates of a matrix a block, however large
    max_steps: with tol met after ~15 steps, max_steps = 100 and 10^6 peak alike."""
    q = make_q((300, 64, 32), torch.float32, "cuda", grad=False)
    grad_out = torch.randn_like(q)
    peaks = []
    for max_steps in (100, 10**6):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        torch.ops.lvmfast.bjorck_orthonormalize_backward(grad_out, q, max_steps, 1e-5)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
    assert peaks[0] == peaks[1], peaks


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



@pytest.mark.parametrize("vector_bytes", ["32", "64"])
def test_cpu_kernels_in_both_vector_widths(vector_bytes):
    rerun_in_vector_width(__file__, vector_bytes,
                          "native-cpu and (matches_reference or stops_on_its_own or gradcheck)")
