"""The CUDA diffusion ops (kernels/diffusion.cu with its glue csrc/cuda/diffusion.cpp) run on the
CPU under tests/cuda_emulator. Given noise: q_sample, q_posterior, p_step and diffusion_backward
against the float64 reference (and its autograd). Generated noise: the Philox stream is a pure
function of (seed, stream, element), shared with the CPU kernels, so the emulated CUDA noise must
equal torch.ops.lvmfast's CPU noise for the same seed (that checks the group / element layout of
every thread), be deterministic per seed, look N(0, 1), and be regenerated identically by
forward_chain's backward. A t outside [0, T-1] trips the kernels' device-side assert, which the
emulator raises as a RuntimeError. Rounding is the host's here (libm log / sin / cos, not the
GPU's), so the generated float32 noise is compared to the CPU's up to 1e-5. The grids do not
depend on the SM count (a thread per Philox group or element, up to 2^20 blocks), so the
grid-stride loops run a second round only past 2^28 elements: not reached here."""
import math

import pytest
import torch

from lvmfast import reference as R
from lvmfast.diffusion import Schedule
from test_diffusion import _inputs, _ref_grads, make_t
from conftest import assert_close_rel

TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}
NOISE_TOL = {torch.float64: 1e-12, torch.float32: 1e-5}  # emulated vs CPU Philox normals
# (70, 33): 592 groups, 3 blocks of 256 threads; (64, 65): rows not a multiple of 64 elements
SHAPES = [(0, 3), (1, 1), (1, 5), (7, 1), (7, 5), (5, 3, 4), (33, 17), (64, 65), (70, 33), (3, 2, 0)]
Z = 5.0  # statistical checks: |estimate - expected| <= Z standard errors
T_STEPS = 100


def seed_of(value):
    return torch.tensor([value], dtype=torch.int64)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_given_noise_matches_reference(emulated_cuda, shape, kind, dtype):
    """Forward values against the reference; diffusion_backward's columns against the
    reference's autograd (the same columns lvmfast/ops/diffusion.py asks for)."""
    ops = emulated_cuda
    sched = (Schedule.linear if kind == "linear" else Schedule.cosine)(T_STEPS, dtype=dtype)
    sched64 = (Schedule.linear if kind == "linear" else Schedule.cosine)(T_STEPS, dtype=torch.float64)
    t = make_t(shape[0], T_STEPS, "cpu")
    a, b, n = (x.detach() for x in _inputs(shape, dtype, "cpu"))
    tol = TOL[dtype]
    q, post, p = (sched.table(k, dtype) for k in ("q", "posterior", "p"))
    cases = {
        "q_sample": (ops.q_sample(a, t, q, n, None)[0], q, [0, 1], [a, n],
                     lambda x, z: R.q_sample(x, t, sched64, noise=z)[0]),
        "q_posterior": (ops.q_posterior(a, b, t, post)[0], post, [0, 1], [a, b],
                        lambda x, y: R.q_posterior(x, y, t, sched64)[0]),
        "p_step": (ops.p_step(a, b, t, p, n, None), p, [0, 1, 2], [a, b, n],
                   lambda x, e, z: R.p_step(x, e, t, sched64, noise=z)),
    }
    for name, (out, table, cols, inputs, ref_fn) in cases.items():
        assert out.dtype == dtype and out.shape == shape
        cot = torch.randn(shape, dtype=torch.float64).to(dtype)
        ref, ref_grads = _ref_grads(ref_fn, inputs, cot)
        assert_close_rel(out, ref, tol, f"{name} output")
        grads = ops.diffusion_backward(cot, t, table, cols)
        assert len(grads) == len(cols)
        for col, g, rg in zip(cols, grads, ref_grads):
            assert g.dtype == dtype and g.shape == shape
            assert_close_rel(g, rg, tol, f"{name} grad column {col}")
    _, noise_out = ops.q_sample(a, t, q, n, None)
    assert noise_out.shape == (0,)
    _, var = ops.q_posterior(a, b, t, post)
    _, ref_var = R.q_posterior(a.double(), b.double(), t, sched64)
    assert var.shape == (shape[0],) and var.dtype == dtype
    assert_close_rel(var, ref_var.reshape(-1), tol, "q_posterior variance")
    assert ops.diffusion_backward(a, t, p, []) == []


def test_p_step_adds_no_noise_at_t_zero(emulated_cuda):
    ops = emulated_cuda
    sched = Schedule.linear(10, dtype=torch.float64)
    xt, eps = torch.randn(2, 6, 9, dtype=torch.float64)
    t = torch.tensor([0, 3, 0, 9, 1, 0])
    noise = torch.randn(6, 9, dtype=torch.float64)
    noise[t == 0] = float("nan")  # never read where t = 0
    out = ops.p_step(xt, eps, t, sched.table("p", torch.float64), noise, None)
    ref = R.p_step(xt, eps, t, sched, noise=torch.nan_to_num(noise))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    # generated: the rows at t = 0 are the mean exactly
    gen = ops.p_step(xt, eps, t, sched.table("p", torch.float64), None, seed_of(11))
    assert torch.equal(gen[t == 0], out[t == 0])
    assert not torch.equal(gen[t > 0], out[t > 0])


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (131, 67), (5, 3, 4), (70, 33)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_generated_noise_is_the_cpu_stream(emulated_cuda, shape, dtype):
    """Same seed, same elements: the emulated CUDA q_sample and p_step make the CPU kernels'
    normals (p_step's are stream 0 too), and q_sample's xt is formed with the noise it returns."""
    ops, cpu = emulated_cuda, torch.ops.lvmfast
    sched = Schedule.linear(T_STEPS, dtype=dtype)
    t = make_t(shape[0], T_STEPS, "cpu")
    x0, eps = (torch.randn(shape, dtype=torch.float64).to(dtype) for _ in range(2))
    for seed in (123456789, -5, 2**40 + 7):  # the key's high word matters too
        xt, noise = ops.q_sample(x0, t, sched.table("q", dtype), None, seed_of(seed))
        xt_cpu, noise_cpu = cpu.q_sample(x0, t, sched.table("q", dtype), None, seed_of(seed))
        assert noise.dtype == dtype and noise.shape == shape
        torch.testing.assert_close(noise, noise_cpu, rtol=0, atol=NOISE_TOL[dtype])
        assert_close_rel(xt, R.q_sample(x0, t, sched, noise=noise)[0], TOL[dtype], "xt")
        step = ops.p_step(x0, eps, t, sched.table("p", dtype), None, seed_of(seed))
        torch.testing.assert_close(step, cpu.p_step(x0, eps, t, sched.table("p", dtype), None, seed_of(seed)),
                                   rtol=0, atol=NOISE_TOL[dtype] * 2)
        assert_close_rel(step, R.p_step(x0, eps, t, sched, noise=noise), TOL[dtype] * 4, "p_step")


def test_generated_noise_is_deterministic_and_standard_normal(emulated_cuda):
    ops = emulated_cuda
    sched = Schedule.linear(T_STEPS)
    B, D = 97, 67
    x0 = torch.randn(B, D)
    t = make_t(B, T_STEPS, "cpu")
    q = sched.table("q", torch.float32)
    a = ops.q_sample(x0, t, q, None, seed_of(2024))
    b = ops.q_sample(x0, t, q, None, seed_of(2024))
    c = ops.q_sample(x0, t, q, None, seed_of(2025))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    n = a[1].double().flatten()
    N = n.numel()
    assert torch.isfinite(n).all()
    assert abs(n.mean().item()) <= Z / math.sqrt(N), n.mean()
    assert abs(n.var().item() - 1) <= Z * math.sqrt(2 / N), n.var()
    for x, y in [(a[1][:-1], a[1][1:]), (a[1][:, :-1], a[1][:, 1:]), (a[1], c[1])]:
        r = torch.corrcoef(torch.stack([x.flatten(), y.flatten()]).double())[0, 1].item()
        assert abs(r) <= Z / math.sqrt(x.numel()), r
    # the element's noise does not depend on the shape: one stream over the flat index
    _, flat = ops.q_sample(x0.reshape(-1, 1), t.repeat_interleave(D), q, None, seed_of(2024))
    assert torch.equal(flat.reshape(B, D), a[1])


def chain_reference(x, coefs, eps):
    """z_i = coefs[i, 0] z_{i-1} + coefs[i, 1] eps_i, z_{-1} = x, in float64: (T, *x.shape)."""
    out, cur = [], x
    for i in range(coefs.shape[0]):
        cur = coefs[i, 0] * cur + coefs[i, 1] * eps[i]
        out.append(cur)
    return torch.stack(out) if out else x[None][:0] + 0 * coefs.sum()


@pytest.mark.parametrize("shape,T", [((0,), 3), ((1,), 1), ((5,), 4), ((5, 3), 4), ((70,), 6),
                                     ((3, 2, 11), 17), ((1100,), 5), ((4,), 0)],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else f"T{v}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_forward_chain_and_backward(emulated_cuda, shape, T, dtype):
    """forward_chain is the CPU kernel's chain for the same seed; its backward, which regenerates
    the noise, matches the reference autograd of the recurrence run with the noise recovered
    from the forward's output (so forward and backward used the same normals), and the CPU
    kernel's backward. (1100,): 288 groups, 2 blocks; (5,): one warp with 11 idle lanes."""
    ops, cpu = emulated_cuda, torch.ops.lvmfast
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    betas = torch.empty(T, dtype=torch.float64).uniform_(0.01, 0.5)
    coefs = torch.stack([torch.sqrt(1 - betas), torch.sqrt(betas)], 1).to(dtype)
    seed = seed_of(987654321)
    z = ops.forward_chain(x, coefs, seed)
    assert z.shape == (T, *shape) and z.dtype == dtype
    torch.testing.assert_close(z, cpu.forward_chain(x, coefs, seed), rtol=0,
                               atol=NOISE_TOL[dtype] * 10)
    assert torch.equal(z, ops.forward_chain(x, coefs, seed))
    cot = torch.randn(z.shape, dtype=torch.float64).to(dtype)
    grad_x, grad_coefs = ops.forward_chain_backward(cot, x, coefs, seed, z)
    assert grad_x.shape == x.shape and grad_x.dtype == dtype
    assert grad_coefs.shape == coefs.shape and grad_coefs.dtype == dtype
    zd, xd, cd = z.double(), x.double(), coefs.double()
    view = (-1,) + (1,) * len(shape)
    prev = torch.cat([xd[None], zd[:-1]])
    eps = (zd - cd[:, :1].reshape(view) * prev) / cd[:, 1:].reshape(view)
    ref, (ref_gx, ref_gc) = _ref_grads(lambda a, c: chain_reference(a, c, eps), [x, coefs], cot)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    assert_close_rel(z, ref, tol, "chain")
    assert_close_rel(grad_x, ref_gx, tol, "grad x")
    assert_close_rel(grad_coefs, ref_gc, tol * max(1, math.prod(shape)) ** 0.5, "grad coefs")
    cpu_gx, cpu_gc = cpu.forward_chain_backward(cot, x, coefs, seed, z)
    assert_close_rel(grad_x, cpu_gx, tol, "grad x vs CPU kernel")
    assert_close_rel(grad_coefs, cpu_gc, tol * max(1, math.prod(shape)) ** 0.5, "grad coefs vs CPU kernel")


def test_forward_chain_backward_needs_the_forwards_noise(emulated_cuda):
    """Another seed in the backward regenerates other normals: the noise column's gradient
    changes (so the test above would see a backward that drew different noise)."""
    ops = emulated_cuda
    x = torch.randn(300, dtype=torch.float64)
    coefs = torch.tensor([[0.9, 0.4], [0.8, 0.6], [0.95, 0.3]], dtype=torch.float64)
    z = ops.forward_chain(x, coefs, seed_of(1))
    cot = torch.randn_like(z)
    same = ops.forward_chain_backward(cot, x, coefs, seed_of(1), z)
    other = ops.forward_chain_backward(cot, x, coefs, seed_of(2), z)
    assert torch.equal(same[0], other[0])
    # the coefficient gradients are sums by atomics, in the order the threads arrive
    torch.testing.assert_close(same[1][:, 0], other[1][:, 0], rtol=1e-12, atol=1e-14)
    assert (same[1][:, 1] - other[1][:, 1]).abs().min() > 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_storage_accumulates_in_float(emulated_cuda, dtype):
    ops = emulated_cuda
    shape = (37, 19)
    sched = Schedule.linear(T_STEPS, dtype=dtype)
    sched64 = Schedule.linear(T_STEPS, dtype=torch.float64)
    t = make_t(shape[0], T_STEPS, "cpu")
    a, b, n = (x.detach() for x in _inputs(shape, dtype, "cpu"))
    tol = TOL[dtype]
    out = ops.p_step(a, b, t, sched.table("p", dtype), n, None)
    assert out.dtype == dtype
    assert_close_rel(out, R.p_step(a.double(), b.double(), t, sched64, noise=n.double()), tol, "p_step")
    mean, var = ops.q_posterior(a, b, t, sched.table("posterior", dtype))
    ref_mean, ref_var = R.q_posterior(a.double(), b.double(), t, sched64)
    assert_close_rel(mean, ref_mean, tol, "q_posterior")
    assert_close_rel(var, ref_var.reshape(-1), tol, "variance")
    cot = torch.randn(shape).to(dtype)
    for g, col in zip(ops.diffusion_backward(cot, t, sched.table("p", dtype), [0, 1, 2]), range(3)):
        expected = sched64.table("p", torch.float64)[t, col][:, None] * cot.double()
        assert g.dtype == dtype
        assert_close_rel(g, expected, tol, f"grad column {col}")
    # generated: the float32 normals rounded once to the storage type
    q16, q32 = sched.table("q", dtype), sched.table("q", torch.float32)
    xt, noise = ops.q_sample(a, t, q16, None, seed_of(77))
    _, noise32 = ops.q_sample(a.float(), t, q32, None, seed_of(77))
    assert noise.dtype == dtype and torch.equal(noise, noise32.to(dtype))
    assert_close_rel(xt, R.q_sample(a.double(), t, sched64, noise=noise32.double())[0], tol, "q_sample")
    coefs = torch.tensor([[0.9, 0.4], [0.8, 0.6]])
    chain = ops.forward_chain(a, coefs, seed_of(5))
    assert chain.dtype == dtype and torch.equal(chain, ops.forward_chain(a.float(), coefs, seed_of(5)).to(dtype))


BAD_T_OPS = ["q_sample noise", "q_sample seed", "q_posterior", "q_posterior variance", "p_step",
             "diffusion_backward"]


def bad_t_call(ops, op, T=10, B=4, D=3):
    s = Schedule.linear(T)
    x = torch.randn(B, D)
    q, post, p = (s.table(k, torch.float32) for k in ("q", "posterior", "p"))
    return {
        "q_sample noise": lambda t: ops.q_sample(x, t, q, x, None),
        "q_sample seed": lambda t: ops.q_sample(x, t, q, None, seed_of(1)),
        "q_posterior": lambda t: ops.q_posterior(x, x, t, post),
        # no elements: only the variance kernel runs, and checks t itself
        "q_posterior variance": lambda t: ops.q_posterior(x[:, :0], x[:, :0], t, post),
        "p_step": lambda t: ops.p_step(x, x, t, p, None, seed_of(1)),
        "diffusion_backward": lambda t: ops.diffusion_backward(x, t, p, [0, 2]),
    }[op]


@pytest.mark.parametrize("bad", [10, -1, 2**40])
@pytest.mark.parametrize("op", BAD_T_OPS)
def test_t_out_of_range_trips_the_device_assert(emulated_cuda, op, bad):
    """On a GPU the assert leaves a sticky error for the next synchronization; the emulator
    raises it from the launch. Either way the op fails, and later launches work."""
    call = bad_t_call(emulated_cuda, op)
    with pytest.raises(RuntimeError, match=r"device-side assert triggered: tb >= 0 && tb < T"):
        call(torch.tensor([0, 1, bad, 9]))
    out = call(torch.tensor([0, 1, 2, 9]))
    assert all(torch.isfinite(o).all() for o in (out if isinstance(out, (tuple, list)) else [out]))


def test_empty_and_zero_width(emulated_cuda):
    ops = emulated_cuda
    s = Schedule.linear(10)
    for shape in [(0, 3), (3, 2, 0)]:
        x = torch.randn(shape)
        t = torch.zeros(shape[0], dtype=torch.long)
        xt, noise = ops.q_sample(x, t, s.table("q", torch.float32), None, seed_of(3))
        assert xt.shape == shape and noise.shape == shape
        assert ops.p_step(x, x, t, s.table("p", torch.float32), None, seed_of(3)).shape == shape
        assert [g.shape for g in ops.diffusion_backward(x, t, s.table("p", torch.float32), [0, 1])] == [shape] * 2
    x = torch.randn(0, 3)
    z = ops.forward_chain(x, torch.tensor([[0.9, 0.4]]), seed_of(3))
    assert z.shape == (1, 0, 3)
    gx, gc = ops.forward_chain_backward(z, x, torch.tensor([[0.9, 0.4]]), seed_of(3), z)
    assert gx.shape == (0, 3) and torch.equal(gc, torch.zeros(1, 2))
    x = torch.randn(4)
    z = ops.forward_chain(x, torch.zeros(0, 2), seed_of(3))
    gx, gc = ops.forward_chain_backward(z, x, torch.zeros(0, 2), seed_of(3), z)
    assert z.shape == (0, 4) and torch.equal(gx, torch.zeros(4)) and gc.shape == (0, 2)


def test_non_contiguous_inputs(emulated_cuda):
    ops = emulated_cuda
    s = Schedule.linear(50, dtype=torch.float64)
    base = torch.randn(3, 6, 9, 2, dtype=torch.float64)
    x0, xt, noise = (v.transpose(0, 1)[..., 0] for v in base)  # (9, 6), strided
    t = torch.stack([make_t(9, 50, "cpu")] * 2, 1)[:, 0]
    assert not x0.is_contiguous() and not t.is_contiguous()
    c = [v.contiguous() for v in (x0, xt, noise, t)]
    q, post, p = (s.table(k, torch.float64) for k in ("q", "posterior", "p"))
    assert torch.equal(ops.q_sample(x0, t, q, noise, None)[0], ops.q_sample(c[0], c[3], q, c[2], None)[0])
    assert torch.equal(ops.q_posterior(x0, xt, t, post)[0], ops.q_posterior(c[0], c[1], c[3], post)[0])
    assert torch.equal(ops.p_step(xt, x0, t, p, noise, None), ops.p_step(c[1], c[0], c[3], p, c[2], None))
    assert torch.equal(ops.diffusion_backward(x0, t, p, [1])[0], ops.diffusion_backward(c[0], c[3], p, [1])[0])


@pytest.mark.parametrize("which", ["grad", "out"])
def test_forward_chain_backward_refuses_another_dtype(emulated_cuda, which):
    """The kernels read grad and out as x's type: another dtype is a named ValueError, on the
    CUDA glue (emulated) and the CPU op alike, not a misread buffer."""
    x = torch.randn(40)
    coefs = torch.tensor([[0.9, 0.4], [0.8, 0.6]])
    z = emulated_cuda.forward_chain(x, coefs, seed_of(5))
    args = {"grad": torch.randn_like(z), "out": z}
    args[which] = args[which].double()
    for ops in (emulated_cuda, torch.ops.lvmfast):
        with pytest.raises(ValueError, match=f"forward_chain_backward: {which} must have the dtype of x"):
            ops.forward_chain_backward(args["grad"], x, coefs, seed_of(5), args["out"])
