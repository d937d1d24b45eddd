"""The CUDA sylvester_flow (kernels/sylvester.cu with its glue csrc/cuda/sylvester.cpp) run on the
CPU under tests/cuda_emulator, against the float64 reference: the kernels' indexing, barriers,
shuffles, grid-stride loops and shared-gradient workspace are checked without a GPU. Rounding is
the host's here (no fast-math tanh), so accuracy on a GPU is test_sylvester.py's business."""
import os
import re

import pytest
import torch

from test_sylvester import make_inputs, reference_and_grads
from conftest import assert_close_rel

KINDS = ["triangular", "reverse", "orthogonal", "householder"]
# (B, D, M). The kernels stage a sample's matrices in shared memory up to 96 KB a block: the
# last two shapes take the global-memory path in float64 (Householder), then in both dtypes.
# Row groups of the staged mat-vecs: 32 lanes a row at M = 1 down to 1 at M = 65; the 64 x 64
# and 64 x 32 shapes are the benchmark's layouts (padded row strides 65, 66 and 34).
SHAPES = [(1, 1, 1), (3, 5, 5), (37, 7, 3), (5, 33, 33), (2, 64, 64), (3, 64, 32), (4, 70, 65),
          (2, 120, 112)]
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def run_emulated(ops, tensors, q, reverse, grad_out, grad_logdet):
    z, r1, r2, b = (t.detach() for t in tensors)
    qd = None if q is None else q.detach()
    out, logdet = ops.sylvester_flow(z, r1, r2, b, qd, reverse)
    grads = ops.sylvester_flow_backward(grad_out, grad_logdet, z, r1, r2, b, qd, reverse)
    return out, logdet, list(grads[:4]) + ([grads[4]] if q is not None else [])


def check(ops, B, D, M, kind, dtype, shared=()):
    if kind in ("triangular", "reverse"):
        D = M
    elif kind == "householder":
        M = D
    tensors, q, reverse = make_inputs(B, D, M, kind, dtype, "cpu", shared, grad=False)
    grad_out = torch.randn(B, D, dtype=torch.float64).to(dtype)
    grad_logdet = torch.randn(B, dtype=torch.float64).to(dtype)
    out, logdet, grads = run_emulated(ops, tensors, q, reverse, grad_out, grad_logdet)
    ref_out, ref_logdet, ref_grads = reference_and_grads(tensors, q, reverse, grad_out, grad_logdet)
    assert out.dtype == dtype and out.shape == (B, D) and logdet.shape == (B,)
    tol = TOL[dtype]
    assert_close_rel(out, ref_out, tol, "z'")
    assert_close_rel(logdet, ref_logdet, tol, "logdet")
    for name, g, rg, t in zip(("z", "r1", "r2", "b", "q"), grads, ref_grads, tensors + [q]):
        assert g.shape == t.shape, name
        assert_close_rel(g, rg, tol * 10, f"grad {name}")
    for g in grads[1:3]:  # exactly zero below the diagonal
        assert (g.tril(-1) == 0).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_reference(emulated_cuda, kind, shape, dtype):
    check(emulated_cuda, *shape, kind, dtype)


@pytest.mark.parametrize("kind", ["triangular", "orthogonal"])
@pytest.mark.parametrize("shared", [("r1",), ("r2", "b"), ("r1", "r2", "b", "q")], ids="-".join)
@pytest.mark.parametrize("sms", ["1", "3"])
def test_shared_parameters_sum_over_blocks(emulated_cuda, monkeypatch, kind, shared, sms):
    """Shared parameters' gradients are per-block partial sums that the glue adds up: few SMs
    give few blocks, each walking several samples."""
    monkeypatch.setenv("LVMFAST_EMULATED_SMS", sms)
    check(emulated_cuda, 41, 9, 6, kind, torch.float64, shared)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["triangular", "orthogonal"])
def test_half_storage_accumulates_in_float(emulated_cuda, dtype, kind):
    check(emulated_cuda, 6, 12, 8, kind, dtype)


# (kind, dtype, M, B, wide): a forward block stages 35 kB for the Householder kind (a 64 x 64 Q
# beside the triangles) and 37 kB for float64 triangles, over the 28 kB past which fewer than 8
# blocks fit an SM; 18 kB for float32 triangles, 14 kB for the orthogonal kind's 64 x 32 Q. On one
# emulated SM, a batch of 17 is past the 16 samples an SM up to which wide blocks are launched.
BLOCK_WIDTHS = [("householder", torch.float32, 64, 3, True),
                ("householder", torch.float32, 64, 17, False),
                ("triangular", torch.float64, 64, 3, True),
                ("triangular", torch.float64, 64, 16, True),
                ("triangular", torch.float32, 64, 3, False),
                ("orthogonal", torch.float32, 32, 3, False)]


def _expected_threads(kind: str, wide: bool, B: int) -> int:
    """The block width the emulated build (one SM) should launch, given its -D constants (the
    double-buffered builds keep the narrow width: these samples fit two buffers; so does the
    build that stages nothing, and the Householder kind's block without its staged Q)."""
    defines = dict(d.split("=", 1) for d in os.environ.get("LVMFAST_EMULATOR_DEFINES", "").split())
    narrow = int(defines.get("LVMFAST_SYLVESTER_THREADS", 128))
    if (int(defines.get("LVMFAST_SYLVESTER_PIPELINE_BLOCKS", 0)) > 0
            or int(defines.get("LVMFAST_SYLVESTER_STAGED_LIMIT_KB", 96)) == 0
            or (kind == "householder" and int(defines.get("LVMFAST_SYLVESTER_STAGE_Q", 1)) == 0)
            or B > int(defines.get("LVMFAST_SYLVESTER_WIDE_MAX_SAMPLES_PER_SM", 16))):
        return narrow
    return int(defines.get("LVMFAST_SYLVESTER_WIDE_THREADS", 256)) if wide else narrow


@pytest.mark.parametrize("kind, dtype, M, B, wide", BLOCK_WIDTHS, ids=lambda v: str(v))
def test_block_width_follows_the_footprint_and_batch(emulated_cuda, monkeypatch, capfd, kind,
                                                     dtype, M, B, wide):
    """The launchers give a block 256 threads when its staged matrices leave fewer than 8 blocks
    an SM and the batch is at most 16 samples an SM, and 128 otherwise (kernels/sylvester.cu,
    kWideAboveBytes, kWideMaxSamplesPerSm), forward and backward, and both widths match the
    reference."""
    monkeypatch.setenv("LVMFAST_EMULATED_TRACE", "1")
    monkeypatch.setenv("LVMFAST_EMULATED_SMS", "1")
    capfd.readouterr()
    check(emulated_cuda, B, 64, M, kind, dtype)
    launched = re.findall(r"emulated launch: \d+ blocks, (\d+) threads", capfd.readouterr().err)
    assert launched == [str(_expected_threads(kind, wide, B))] * 2


def test_empty_batch(emulated_cuda):
    tensors, q, reverse = make_inputs(0, 5, 3, "orthogonal", torch.float32, "cpu", ("r1",), grad=False)
    out, logdet, grads = run_emulated(emulated_cuda, tensors, q, reverse,
                                      torch.zeros(0, 5), torch.zeros(0))
    assert out.shape == (0, 5) and logdet.shape == (0,)
    assert grads[1].shape == (3, 3) and (grads[1] == 0).all()


def test_non_contiguous_inputs(emulated_cuda):
    tensors, q, reverse = make_inputs(6, 8, 8, "householder", torch.float64, "cpu", grad=False)
    z, r1, r2, b = tensors
    flipped = [z.t().contiguous().t(), r1.transpose(1, 2).contiguous().transpose(1, 2),
               r2[:, :, :], b.t().contiguous().t()]
    qn = q.transpose(1, 2).contiguous().transpose(1, 2)
    g, gl = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    a = run_emulated(emulated_cuda, tensors, q, reverse, g, gl)
    c = run_emulated(emulated_cuda, flipped, qn, reverse, g, gl)
    for x, y in zip(a[:2] + tuple(a[2]), c[:2] + tuple(c[2])):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


# (D, M): the benchmark's orthogonal layout (staged), and past the staging limit (global memory)
@pytest.mark.parametrize("D, M", [(64, 32), (120, 112)], ids=["64x32", "120x112"])
@pytest.mark.parametrize("kind", ["orthogonal", "householder"])
@pytest.mark.parametrize("shared", [(), ("q",)], ids=["amortized", "shared"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
def test_column_major_q_is_read_in_place(emulated_cuda, D, M, kind, shared, dtype):
    """q's matrices column-major (torch.linalg.qr's layout on a GPU) are read through transposed
    views instead of copied first: the same bits as a contiguous q, in every path."""
    M = D if kind == "householder" else M
    B = 3
    tensors, q, reverse = make_inputs(B, D, M, kind, dtype, "cpu", shared, grad=False)
    q_rows, q_columns = q.contiguous(), q.mT.contiguous().mT
    assert not q_columns.is_contiguous() and q_columns.mT.is_contiguous()
    g, gl = torch.randn(B, D, dtype=torch.float64).to(dtype), torch.randn(B, dtype=torch.float64).to(dtype)
    a = run_emulated(emulated_cuda, tensors, q_rows, reverse, g, gl)
    c = run_emulated(emulated_cuda, tensors, q_columns, reverse, g, gl)
    for x, y in zip(a[:2] + tuple(a[2]), c[:2] + tuple(c[2])):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    # and right: the contiguous path against the reference (make_inputs' q is column-major, so
    # the other tests take the transposed one)
    ref_out, ref_logdet, ref_grads = reference_and_grads(tensors, q_rows, reverse, g, gl)
    assert_close_rel(a[0], ref_out, TOL[dtype], "z'")
    assert_close_rel(a[1], ref_logdet, TOL[dtype], "logdet")
    for name, x, y in zip(("z", "r1", "r2", "b", "q"), a[2], ref_grads):
        assert_close_rel(x, y, TOL[dtype] * 10, f"grad {name}")


def _strided_grads(B, D, dtype):
    """Incoming gradients as autograd hands them over: expanded from a sum (strides 0), a
    transposed view, a slice with a storage offset and a stride of 3."""
    yield "expanded", torch.randn((), dtype=dtype).expand(B, D), torch.randn((), dtype=dtype).expand(B)
    yield "transposed", torch.randn(D, B, dtype=dtype).t(), torch.randn(B, 2, dtype=dtype)[:, 1]
    yield "sliced", torch.randn(B, 3 * D + 1, dtype=dtype)[:, 1::3], torch.randn(3 * B, dtype=dtype)[::3]


# (D, M): the benchmark's staged layout, and the orthogonal kind past the staging limit (global
# memory; its triangular twin is still staged)
@pytest.mark.parametrize("D, M", [(64, 64), (120, 112)], ids=["64x64", "120x112"])
@pytest.mark.parametrize("kind", ["triangular", "orthogonal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_backward_reads_strided_gradients_in_place(emulated_cuda, D, M, kind, dtype):
    """grad_out and grad_logdet of any strides give the gradients of their contiguous copies,
    and the glue hands their strides to the kernel instead of copying them."""
    B = 7
    if kind == "triangular":
        M = D
    tensors, q, reverse = make_inputs(B, D, M, kind, dtype, "cpu", (), grad=False)
    z, r1, r2, b = (t.contiguous() for t in tensors)  # so that only the gradients could be copied
    q = None if q is None else q.contiguous()
    for name, grad_out, grad_logdet in _strided_grads(B, D, dtype):
        assert not grad_out.is_contiguous() and not grad_logdet.is_contiguous()
        with torch.profiler.profile() as prof:
            got = emulated_cuda.sylvester_flow_backward(grad_out, grad_logdet, z, r1, r2, b, q, reverse)
        copies = [e.name for e in prof.events() if e.name in ("aten::copy_", "aten::clone")]
        assert not copies, (name, copies)
        want = emulated_cuda.sylvester_flow_backward(grad_out.contiguous(), grad_logdet.contiguous(),
                                                     z, r1, r2, b, q, reverse)
        for g, w in zip(got, want):
            assert torch.equal(g, w), name
