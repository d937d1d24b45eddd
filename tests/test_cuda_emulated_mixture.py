"""The CUDA log_mog (kernels/mixture.cu with its glue csrc/cuda/mixture.cpp) run on the CPU under
tests/cuda_emulator, against the float64 reference. The kernels tile rows by BN and components
by BK and stage L in chunks of BL (float: 128, 64, 32; double: 64, 32, 16), so the shapes cover
partial tiles on every axis, several K tiles walked by one block (the online log-sum-exp across
tiles), and the split-K path: when ceil(N / BN) < 2 SMs the K tiles are cut into splits (uneven
ones too), whose partial (max, sum) pairs a second kernel merges and whose grad_z goes through
atomics. LVMFAST_EMULATED_SMS picks the number of splits. Rounding is the host's here (no
exp2f approximation), so accuracy on a GPU is test_mixture.py's business."""
import math

import pytest
import torch

from test_mixture import make_inputs, reference_and_grads
from lvmfast.reference import log_mog as reference_log_mog
from conftest import assert_close_rel

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
GEOMETRY = {torch.float64: (64, 32, 16), torch.float32: (128, 64, 32)}  # (BN, BK, BL)


def splits(N, K, sms, dtype):
    """log_mog_num_splits and split_tiles of mixture.cu: the number of K ranges launched."""
    BN, BK, _ = GEOMETRY[torch.float64 if dtype == torch.float64 else torch.float32]
    nb, kt, target = -(-N // BN), -(-K // BK), 2 * sms
    if N == 0 or nb >= target:
        return 1
    per = -(-kt // min(kt, -(-target // nb)))
    return -(-kt // per)


def run_emulated(ops, inputs, grad_out):
    z, means, logvars, logits = inputs
    out = ops.log_mog(z, means, logvars, logits)
    grads = ops.log_mog_backward(grad_out, z, means, logvars, logits, out)
    return out, grads


def check(ops, inputs, grad_scale=10):
    z = inputs[0]
    dtype = z.dtype
    grad_out = torch.randn(z.shape[:-1], dtype=torch.float64).to(dtype)
    out, grads = run_emulated(ops, inputs, grad_out)
    ref, ref_grads = reference_and_grads(inputs, grad_out)
    assert out.dtype == dtype and out.shape == z.shape[:-1]
    tol = TOL[dtype]
    assert_close_rel(out, ref, tol, "output")
    for name, g, rg, x in zip(("z", "means", "logvars", "logits"), grads, ref_grads, inputs):
        assert g.dtype == dtype and g.shape == x.shape, name
        assert_close_rel(g, rg, tol * grad_scale, f"grad {name}")
    return out, grads


SHAPES = [  # (leading dims of z, K, L)
    ((1,), 1, 1), ((1,), 5, 1), ((7,), 1, 3), ((37,), 5, 7), ((3, 5), 4, 6), ((50,), 33, 17),
    ((129,), 100, 40), ((4, 3, 5), 17, 9), ((300,), 70, 33), ((600,), 130, 40), ((65,), 65, 64),
]


def shape_id(s):
    lead, K, L = s
    return "x".join(map(str, lead)) + f"-K{K}-L{L}"


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_reference(emulated_cuda, shape, dtype):
    lead, K, L = shape
    check(emulated_cuda, make_inputs(lead, K, L, dtype, "cpu", grad=False))


# (N, K, L, dtype, emulated SMs): one split, even splits, uneven splits (5 K tiles in 3 ranges of
# 2, 2, 1), one K tile per split, and several row blocks with splits
SPLIT_CASES = [(50, 300, 20, torch.float32, "1"), (50, 300, 20, torch.float32, "2"),
               (50, 300, 20, torch.float32, "8"), (200, 130, 40, torch.float32, "3"),
               (40, 100, 17, torch.float64, "2"), (130, 70, 9, torch.float64, "4"),
               (20, 160, 33, torch.float64, "16")]


@pytest.mark.parametrize("N,K,L,dtype,sms", SPLIT_CASES,
                         ids=[f"N{N}-K{K}-L{L}-{str(d)[6:]}-sms{s}-splits{splits(N, K, int(s), d)}"
                              for N, K, L, d, s in SPLIT_CASES])
def test_split_k(emulated_cuda, monkeypatch, N, K, L, dtype, sms):
    monkeypatch.setenv("LVMFAST_EMULATED_SMS", sms)
    check(emulated_cuda, make_inputs((N,), K, L, dtype, "cpu", grad=False))


@pytest.mark.parametrize("sms", ["1", "2"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_minus_inf_logits_give_finite_gradients(emulated_cuda, monkeypatch, dtype, sms):
    """Switched-off components add exactly 0 and never NaN: scattered ones, and a whole first K
    tile of them (with splits, a split whose partial state is (-inf, 0))."""
    monkeypatch.setenv("LVMFAST_EMULATED_SMS", sms)
    BK = GEOMETRY[dtype][1]
    for N, K, L, off in [(9, 6, 5, [0, 3, 5]), (40, BK + 30, 7, list(range(BK)) + [BK + 3])]:
        inputs = make_inputs((N,), K, L, dtype, "cpu", grad=False)
        inputs[3][off] = -math.inf
        out, grads = check(emulated_cuda, inputs)
        assert all(torch.isfinite(g).all() for g in grads)
        for g in (grads[1], grads[2], grads[3]):
            assert (g[off] == 0).all()


def test_one_live_component_is_its_gaussian(emulated_cuda):
    z, means, logvars, logits = make_inputs((21,), 40, 6, torch.float64, "cpu", grad=False)
    logits[:] = -math.inf
    logits[17] = 0.3
    out = emulated_cuda.log_mog(z, means, logvars, logits)
    normal = torch.distributions.Normal(means[17], torch.exp(0.5 * logvars[17]))
    torch.testing.assert_close(out, normal.log_prob(z).sum(-1))


@pytest.mark.parametrize("sms", ["1", "2"])
def test_float32_accuracy_bound_in_hard_regime(emulated_cuda, monkeypatch, sms):
    """test_mixture.py's SPEC bound (|z|, |means| <= 10, logvars in [-8, 4], tight components
    far from the origin): float32 within 1e-4 (1 + |exact|) of float64 on the same inputs."""
    monkeypatch.setenv("LVMFAST_EMULATED_SMS", sms)
    N, K, L = 256, 64, 64
    means = torch.empty(K, L, dtype=torch.float64).uniform_(-10, 10)
    logvars = torch.empty(K, L, dtype=torch.float64).uniform_(-8, 4)
    logvars[: K // 2] = torch.empty(K // 2, L, dtype=torch.float64).uniform_(-8, -6)
    logits = torch.randn(K, dtype=torch.float64)
    pick = torch.randint(0, K // 2, (N,))
    z = means[pick] + torch.randn(N, L, dtype=torch.float64) * torch.exp(0.5 * logvars[pick]) * 3
    z[: N // 4] = torch.empty(N // 4, L, dtype=torch.float64).uniform_(-10, 10)
    f32 = [t.float() for t in (z.clamp(-10, 10), means, logvars, logits)]
    exact = reference_log_mog(*[t.double() for t in f32])
    out = emulated_cuda.log_mog(*f32).double()
    assert ((out - exact).abs() <= 1e-4 * (1 + exact.abs())).all(), \
        (out - exact).abs().div(1 + exact.abs()).max()


@pytest.mark.parametrize("sms", ["1", "2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_storage_accumulates_in_float(emulated_cuda, monkeypatch, dtype, sms):
    """Half z: staged to float, grad_z accumulated in a float workspace and cast (cast_kernel);
    the backward recomputes the forward in float instead of trusting the rounded output."""
    monkeypatch.setenv("LVMFAST_EMULATED_SMS", sms)
    check(emulated_cuda, make_inputs((150,), 70, 24, dtype, "cpu", scale=2.0, grad=False), grad_scale=4)


def test_empty_batch(emulated_cuda):
    ops = emulated_cuda
    for lead in [(0,), (2, 0, 3)]:
        z, means, logvars, logits = make_inputs(lead, 3, 5, torch.float32, "cpu", grad=False)
        out = ops.log_mog(z, means, logvars, logits)
        assert out.shape == lead
        grads = ops.log_mog_backward(torch.zeros(lead), z, means, logvars, logits, out)
        assert [g.shape for g in grads] == [z.shape, means.shape, logvars.shape, logits.shape]
        assert all((g == 0).all() for g in grads)


def test_non_contiguous_inputs(emulated_cuda):
    ops = emulated_cuda
    z = torch.randn(5, 11, 8, dtype=torch.float64).transpose(0, 1)[:, :, ::2]
    means = torch.randn(4, 6, dtype=torch.float64).t()
    logvars = torch.randn(6, 8, dtype=torch.float64)[:, ::2]
    logits = torch.randn(12, dtype=torch.float64)[::2]
    inputs = [z, means, logvars, logits]
    assert not any(t.is_contiguous() for t in inputs)
    g = torch.randn(z.shape[:-1], dtype=torch.float64).t().contiguous().t()
    a = run_emulated(ops, inputs, g)
    b = run_emulated(ops, [t.contiguous() for t in inputs], g.contiguous())
    assert torch.equal(a[0], b[0])
    for x, y in zip(a[1], b[1]):  # parameter gradients are sums by atomics, in arrival order
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
