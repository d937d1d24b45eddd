"""The CUDA householder_flow (kernels/householder.cu with its glue csrc/cuda/householder.cpp) run
on the CPU under tests/cuda_emulator, against the float64 reference. The shapes take every path
of the kernels: one warp a row and 8 rows a block (B not a multiple of 8 leaves idle warps), z in
registers with EPL = 1, 2, 4, 8 elements a lane (L <= 32, 64, 128, 256), a global workspace for
L > 256; a shared v's gradient summed in shared memory when T L fits 48 KB, else by global
atomics. Rounding is the host's here, so accuracy on a GPU is test_householder.py's business."""
import pytest
import torch

from test_householder import make_inputs, reference_and_grads
from lvmfast.reference import householder_flow as reference_householder
from conftest import assert_close_rel

TOL = {torch.float64: 1e-11, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}
SMEM_LIMIT = 48 * 1024  # kernels/householder.cu: kSmemLimit


def path(T, L, shared, dtype):
    """The kernel path householder.cu takes (as its launchers choose), for the test ids."""
    e = (L + 31) // 32
    regs = next((f"reg{n}" for n in (1, 2, 4, 8) if e <= n), "workspace")
    if not shared:
        return regs
    acc = 8 if dtype == torch.float64 else 4
    return regs + ("-smem" if T * L * acc <= SMEM_LIMIT else "-atomics")


def run_emulated(ops, z, v, grad_out):
    out = ops.householder_flow(z, v)
    grad_z, grad_v = ops.householder_flow_backward(grad_out, out, v)
    return out, grad_z, grad_v


def check(ops, B, T, L, shared, dtype, zero_steps=()):
    z, v = make_inputs(B, T, L, shared, dtype, "cpu", grad=False, zero_steps=zero_steps)
    grad_out = torch.randn(B, L, dtype=torch.float64).to(dtype)
    out, grad_z, grad_v = run_emulated(ops, z, v, grad_out)
    ref, (ref_gz, ref_gv) = reference_and_grads([z, v], grad_out)
    assert out.dtype == dtype and out.shape == (B, L)
    assert grad_z.dtype == dtype and grad_z.shape == z.shape
    assert grad_v.dtype == dtype and grad_v.shape == v.shape
    tol = TOL[dtype]
    grad_tol = tol * (10 if dtype in (torch.float64, torch.float32) else 4)
    assert_close_rel(out, ref, tol, "output")
    assert_close_rel(grad_z, ref_gz, grad_tol, "grad z")
    assert_close_rel(grad_v, ref_gv, grad_tol, "grad v")
    return v, grad_v


SHAPES = [  # (B, T, L): rows per block 8, so B = 13 leaves 3 idle warps in the last block
    (1, 1, 1), (13, 3, 7), (8, 2, 32),     # EPL 1
    (9, 4, 33), (11, 3, 64),               # EPL 2
    (10, 3, 100),                          # EPL 4
    (9, 2, 200), (3, 2, 256),              # EPL 8
    (9, 2, 257), (5, 3, 300),              # workspace rows
]


@pytest.mark.parametrize("shared", [False, True], ids=["amortized", "shared"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-L{}-".format(*s) + path(s[1], s[2], False, None))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_reference(emulated_cuda, shape, shared, dtype):
    check(emulated_cuda, *shape, shared, dtype)


# Shared v whose gradient does not fit 48 KB of shared memory: global atomics straight from each
# row (registers and workspace kernels); at exactly 48 KB (T L = 6144 doubles) still shared memory.
ATOMIC_SHAPES = [(10, 25, 250, torch.float64), (9, 24, 256, torch.float64), (9, 21, 300, torch.float64),
                 (9, 49, 256, torch.float32)]


@pytest.mark.parametrize("B,T,L,dtype", ATOMIC_SHAPES,
                         ids=[f"B{B}-T{T}-L{L}-{str(d)[6:]}-{path(T, L, True, d)}" for B, T, L, d in ATOMIC_SHAPES])
def test_shared_gradient_smem_and_global_atomics(emulated_cuda, B, T, L, dtype):
    check(emulated_cuda, B, T, L, True, dtype)


@pytest.mark.parametrize("shared", [False, True], ids=["amortized", "shared"])
@pytest.mark.parametrize("L", [6, 70, 300], ids=lambda L: f"L{L}")
def test_zero_vectors_are_skipped(emulated_cuda, shared, L):
    """A zero v_t is the identity with a zero gradient (the warp-uniform `n == 0` branches)."""
    ops = emulated_cuda
    z, v = make_inputs(11, 4, L, shared, torch.float64, "cpu", grad=False, zero_steps=(0, 2))
    out = ops.householder_flow(z, v)
    torch.testing.assert_close(out, reference_householder(z, v[..., [1, 3], :]), rtol=0, atol=1e-12)
    v, grad_v = check(ops, 11, 4, L, shared, torch.float64, zero_steps=(0, 2))
    assert (grad_v[..., [0, 2], :] == 0).all()
    # every vector zero: out is z itself, bit for bit, and the gradient passes through
    zero = torch.zeros_like(v)
    g = torch.randn_like(z)
    assert torch.equal(ops.householder_flow(z, zero), z)
    grad_z, grad_v = ops.householder_flow_backward(g, z, zero)
    assert torch.equal(grad_z, g) and (grad_v == 0).all()


@pytest.mark.parametrize("shared", [False, True], ids=["amortized", "shared"])
@pytest.mark.parametrize("L", [5, 300], ids=lambda L: f"L{L}")
def test_no_steps_and_empty(emulated_cuda, shared, L):
    """T = 0 copies z (registers kernel: its early-out branch; workspace kernel: an empty loop);
    B = 0 and L = 0 launch nothing."""
    ops = emulated_cuda
    z, v = make_inputs(6, 0, L, shared, torch.float32, "cpu", grad=False)
    assert torch.equal(ops.householder_flow(z, v), z)
    g = torch.randn_like(z)
    grad_z, grad_v = ops.householder_flow_backward(g, z, v)
    assert torch.equal(grad_z, g) and grad_v.shape == v.shape
    for B, T, L_ in [(0, 3, L), (4, 3, 0)]:
        z, v = make_inputs(B, T, L_, shared, torch.float32, "cpu", grad=False)
        out = ops.householder_flow(z, v)
        grad_z, grad_v = ops.householder_flow_backward(torch.zeros(B, L_), out, v)
        assert out.shape == (B, L_) and grad_z.shape == (B, L_)
        assert grad_v.shape == v.shape and (grad_v == 0).all()


@pytest.mark.parametrize("shared", [False, True], ids=["amortized", "shared"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("L", [40, 270], ids=lambda L: f"L{L}")
def test_half_storage_accumulates_in_float(emulated_cuda, dtype, shared, L):
    check(emulated_cuda, 10, 3, L, shared, dtype)


def test_reflections_preserve_norm_and_invert(emulated_cuda):
    ops = emulated_cuda
    z, v = make_inputs(17, 6, 45, False, torch.float64, "cpu", grad=False)
    out = ops.householder_flow(z, v)
    torch.testing.assert_close(out.norm(dim=-1), z.norm(dim=-1))
    torch.testing.assert_close(ops.householder_flow(out, v.flip(-2)), z)


@pytest.mark.parametrize("shared", [False, True], ids=["amortized", "shared"])
def test_non_contiguous_inputs(emulated_cuda, shared):
    ops = emulated_cuda
    z, v = make_inputs(7, 3, 12, shared, torch.float64, "cpu", grad=False)
    g = torch.randn(7, 12, dtype=torch.float64)
    zn = z.t().contiguous().t()
    vn = v.transpose(-1, -2).contiguous().transpose(-1, -2)
    gn = g.t().contiguous().t()
    assert not any(t.is_contiguous() for t in (zn, vn, gn))
    for a, b in zip(run_emulated(ops, z, v, g), run_emulated(ops, zn, vn, gn)):
        if shared:  # a shared v's gradient is summed by atomics, in the order threads arrive
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        else:
            assert torch.equal(a, b)


# L: registers with 2 elements a lane, and the workspace path (L > 256)
@pytest.mark.parametrize("L", [64, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_backward_reads_strided_gradients_in_place(emulated_cuda, L, dtype):
    """An incoming gradient of any strides (expanded from a sum, transposed, sliced) gives the
    gradients of its contiguous copy, and the glue hands its strides to the kernel instead of
    copying it."""
    B, T = 9, 3
    z, v = make_inputs(B, T, L, False, dtype, "cpu", grad=False)
    out = emulated_cuda.householder_flow(z.contiguous(), v.contiguous())
    grads = {"expanded": torch.randn((), dtype=dtype).expand(B, L),
             "transposed": torch.randn(L, B, dtype=dtype).t(),
             "sliced": torch.randn(B, 2 * L + 1, dtype=dtype)[:, 1::2]}
    for name, grad in grads.items():
        assert not grad.is_contiguous()
        with torch.profiler.profile() as prof:
            got = emulated_cuda.householder_flow_backward(grad, out, v.contiguous())
        copies = [e.name for e in prof.events() if e.name in ("aten::copy_", "aten::clone")]
        assert not copies, (name, copies)
        want = emulated_cuda.householder_flow_backward(grad.contiguous(), out, v.contiguous())
        for g, w in zip(got, want):
            assert torch.equal(g, w), name


@pytest.mark.parametrize("shared", [False, True], ids=["amortized", "shared"])
def test_one_dimensional_reflections_have_no_gradient_in_v(emulated_cuda, shared):
    """L = 1: every nonzero v_t reflects z to -z, so the glue returns grad v = 0 exactly, tiny
    v_t included (test_householder.py has the same test for the real backends)."""
    z = torch.randn(6, 1)
    v = torch.tensor([4e-3, -1e-3, 2.5e-4, 3.0, -7e-4])
    v = v.view(5, 1) if shared else v.repeat(6, 1).view(6, 5, 1).contiguous()
    out, grad_z, grad_v = run_emulated(emulated_cuda, z, v, torch.randn(6, 1))
    assert_close_rel(out, -z, 1e-5, "output")
    assert torch.isfinite(grad_z).all() and (grad_v == 0).all()
