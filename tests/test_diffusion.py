"""Diffusion family: the closed forms against the float64 reference, the generated noise's
statistics, reproducibility, diffusers' DDPMScheduler, gradients, opcheck, compile, errors."""
import math
import subprocess
import sys

import pytest
import torch

import lvmfast
from lvmfast import _backend
from lvmfast import reference as R
from lvmfast.diffusion import Schedule, forward_chain, p_step, q_posterior, q_sample, sample
from conftest import assert_close_rel, backend_params, is_interpreted, rerun_in_vector_width

BACKENDS = backend_params("q_sample")
CHAIN_BACKENDS = backend_params("forward_chain")
SHAPES = [(0, 3), (1, 1), (1, 5), (7, 1), (7, 5), (5, 3, 4), (33, 17), (64, 65), (3, 2, 0)]
# Statistical checks use |estimate - expected| <= Z * its standard error: with Z = 5 a check
# fails by chance with probability 5.7e-7 (two-sided normal tail).
Z = 5.0


def run(backend, fn, *args, **kwargs):
    with lvmfast.use_backend(backend):
        return fn(*args, **kwargs)


def schedule_for(device, T=100, kind="linear", dtype=torch.float32):
    maker = Schedule.linear if kind == "linear" else Schedule.cosine
    return maker(T, device=device, dtype=dtype)


def make_t(B, T, device):
    t = torch.randint(0, T, (B,), device=device)
    if B >= 3:
        t[0], t[1] = 0, T - 1  # both ends always covered
    return t


# ------------------------------------------------------------------ schedules
def test_schedules_match_closed_forms():
    s = Schedule.linear(1000, 1e-4, 0.02, dtype=torch.float64)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(s.betas, betas)
    torch.testing.assert_close(s.alphas, 1 - betas)
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(1 - betas, 0))
    assert len(s) == s.T == 1000 and s.betas.dtype == torch.float64
    c = Schedule.cosine(1000)
    f = torch.cos(((torch.arange(1001, dtype=torch.float64) / 1000) + 0.008) / 1.008 * math.pi / 2) ** 2
    torch.testing.assert_close(c.alphas_cumprod.double()[:-1], (f[1:] / f[0])[:-1], rtol=1e-5, atol=1e-6)
    assert c.betas.max() <= 0.999 and c.betas.dtype == torch.float32
    # tables: computed in float64, the float32 one its rounding
    q64, q32 = s.table("q", torch.float64), s.table("q", torch.float32)
    torch.testing.assert_close(q64[:, 1] ** 2, 1 - torch.cumprod(1 - betas, 0))
    torch.testing.assert_close(q32, q64.float())
    assert s.table("p", torch.float64)[0, 2] == 0 and s.table("posterior", torch.float64)[0, 2] == 0


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_schedule_rejects_bad_T(bad):
    with pytest.raises(ValueError, match="T must be a positive integer"):
        Schedule.linear(bad)


def test_schedule_rejects_bad_betas():
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\)"):
        Schedule(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match=r"betas must have shape \(T,\)"):
        Schedule(torch.ones(2, 2) * 0.1)


# ------------------------------------------------------------------ closed forms
def _inputs(shape, dtype, device, n=3):
    return [torch.randn(shape, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_()
            for _ in range(n)]


def _ref_grads(fn, inputs, cot):
    xs = [x.detach().double().cpu().requires_grad_() for x in inputs]
    out = fn(*xs)
    grads = torch.autograd.grad(out, xs, cot.double().cpu(), allow_unused=True)
    return out, [torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads)]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_closed_forms_match_reference(backend, device, dtype, shape, kind):
    if is_interpreted(backend, device) and math.prod(shape) > 2000:
        pytest.skip("too large for the Triton interpreter")
    T = 100
    sched = schedule_for(device, T, kind, dtype)
    sched64 = schedule_for("cpu", T, kind, torch.float64)
    t = make_t(shape[0], T, device)
    t64 = t.cpu()
    a, b, n = _inputs(shape, dtype, device)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    cases = {
        "q_sample": (lambda x, z: run(backend, q_sample, x, t, sched, noise=z)[0], [a, n],
                     lambda x, z: R.q_sample(x, t64, sched64, noise=z)[0]),
        "q_posterior": (lambda x, y: run(backend, q_posterior, x, y, t, sched)[0], [a, b],
                        lambda x, y: R.q_posterior(x, y, t64, sched64)[0]),
        "p_step": (lambda x, e, z: run(backend, p_step, x, e, t, sched, noise=z), [a, b, n],
                   lambda x, e, z: R.p_step(x, e, t64, sched64, noise=z)),
    }
    for name, (fn, inputs, ref_fn) in cases.items():
        out = fn(*inputs)
        assert out.dtype == dtype and out.shape == torch.Size(shape) and out.device.type == device
        cot = torch.randn_like(out)
        grads = torch.autograd.grad(out, inputs, cot)
        ref, ref_grads = _ref_grads(ref_fn, inputs, cot)
        assert_close_rel(out, ref, tol, f"{name} output")
        for i, (g, rg) in enumerate(zip(grads, ref_grads)):
            assert_close_rel(g, rg, tol, f"{name} grad {i}")
    _, var = run(backend, q_posterior, a, b, t, sched)
    _, ref_var = R.q_posterior(a.detach().double().cpu(), b.detach().double().cpu(), t64, sched64)
    assert var.shape == (shape[0],) + (1,) * (len(shape) - 1)
    assert_close_rel(var, ref_var, tol, "q_posterior variance")


def test_posterior_and_step_at_t_zero():
    sched = Schedule.linear(10, dtype=torch.float64)
    x0, xt, eps = torch.randn(3, 4, 4, dtype=torch.float64).unbind(0)
    t = torch.zeros(4, dtype=torch.long)
    mean, var = q_posterior(x0, xt, t, sched)
    torch.testing.assert_close(mean, x0)  # abar_{-1} = 1
    assert (var == 0).all()
    bad_noise = torch.full_like(xt, float("nan"))  # "nothing" is added at t = 0
    out = p_step(xt, eps, t, sched, noise=bad_noise)
    torch.testing.assert_close(out, R.p_step(xt, eps, t, sched, noise=torch.zeros_like(xt)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_outputs_streamed_on_cpu_match_reference(dtype):
    """Outputs of 8 MiB and more take the CPU kernels' streaming-store path; rows of an odd
    length start at every alignment."""
    if "cpu" not in _backend.AVAILABLE["native"]["q_sample"]:
        pytest.skip("native CPU kernels not built")
    B, D = (70001 if dtype == torch.float32 else 35001), 33
    sched = Schedule.linear(1000, dtype=dtype)
    t = make_t(B, 1000, "cpu")
    x0, xt, noise = (torch.randn(B, D, dtype=dtype) for _ in range(3))
    with lvmfast.use_backend("native"):
        got = [q_sample(x0, t, sched, noise=noise)[0], p_step(xt, x0, t, sched, noise=noise),
               q_posterior(x0, xt, t, sched)[0]]
    want = [R.q_sample(x0, t, sched, noise)[0], R.p_step(xt, x0, t, sched, noise),
            R.q_posterior(x0, xt, t, sched)[0]]
    for name, g, w in zip(("q_sample", "p_step", "q_posterior"), got, want):
        assert g.numel() * g.element_size() >= 8 << 20
        assert_close_rel(g, w, 1e-6 if dtype == torch.float32 else 1e-12, name)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_inputs(backend, device):
    sched = schedule_for(device, 50, dtype=torch.float64)
    base = torch.randn(3, 6, 9, 2, dtype=torch.float64, device=device)
    x0, xt, noise = (v.transpose(0, 1)[..., 0] for v in base)  # (9, 6), strided
    assert not x0.is_contiguous()
    t = make_t(9, 50, device)
    torch.testing.assert_close(run(backend, q_sample, x0, t, sched, noise=noise)[0],
                               R.q_sample(x0, t, sched, noise=noise)[0])
    torch.testing.assert_close(run(backend, q_posterior, x0, xt, t, sched)[0],
                               R.q_posterior(x0, xt, t, sched)[0])
    torch.testing.assert_close(run(backend, p_step, xt, x0, torch.stack([t, t], 1)[:, 0], sched, noise=noise),
                               R.p_step(xt, x0, t, sched, noise=noise))


# ------------------------------------------------------------------ generated noise
def _check_standard_normal(n, what):
    """Mean, variance, fourth moment and (scipy) Kolmogorov-Smirnov of i.i.d. N(0, 1) draws."""
    n = n.detach().double().flatten().cpu()
    N = n.numel()
    assert torch.isfinite(n).all(), what
    assert abs(n.mean().item()) <= Z / math.sqrt(N), f"{what}: mean {n.mean().item():.4g}"
    assert abs(n.var().item() - 1) <= Z * math.sqrt(2 / N), f"{what}: variance {n.var().item():.4g}"
    m4 = n.pow(4).mean().item()  # Var(x^4) = 105 - 9 = 96
    assert abs(m4 - 3) <= Z * math.sqrt(96 / N), f"{what}: fourth moment {m4:.4g}"
    scipy_stats = pytest.importorskip("scipy.stats")
    p = scipy_stats.kstest(n.numpy(), "norm").pvalue
    assert p > 1e-6, f"{what}: Kolmogorov-Smirnov p = {p:.3g}"


def _check_uncorrelated(a, b, what):
    """Pearson correlation of paired N(0, 1) draws: standard error 1 / sqrt(n) under independence."""
    a, b = a.detach().double().flatten().cpu(), b.detach().double().flatten().cpu()
    r = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(r) <= Z / math.sqrt(a.numel()), f"{what}: correlation {r:.4g}"


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_q_sample_generated_noise_statistics(backend, device):
    B, D = (64, 64) if is_interpreted(backend, device) else (512, 257)
    sched = schedule_for(device, 100)
    t = make_t(B, 100, device)
    x0 = torch.randn(B, D, device=device)
    xt, noise = run(backend, q_sample, x0, t, sched)
    # the returned noise is what was added
    torch.testing.assert_close(xt, R.q_sample(x0, t, sched, noise=noise)[0], rtol=1e-6, atol=1e-6)
    _check_standard_normal(noise, "noise")
    _check_uncorrelated(noise[:-1], noise[1:], "neighbouring samples")
    _check_uncorrelated(noise[:, :-1], noise[:, 1:], "neighbouring elements")
    _check_uncorrelated(noise[:, :-4], noise[:, 4:], "elements of neighbouring Philox groups")
    _, again = run(backend, q_sample, x0, t, sched)
    _check_uncorrelated(noise, again, "two calls")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_p_step_generated_noise_statistics(backend, device):
    B, D = (64, 64) if is_interpreted(backend, device) else (512, 129)
    T = 100
    sched = schedule_for(device, T, dtype=torch.float64)
    t = make_t(B, T, device)
    xt, eps = torch.randn(2, B, D, dtype=torch.float64, device=device)
    out = run(backend, p_step, xt, eps, t, sched)
    mean = R.p_step(xt, eps, t, sched, noise=torch.zeros_like(xt))
    sigma = sched.posterior_variance[t].sqrt()[:, None]
    zero = t == 0
    torch.testing.assert_close(out[zero], mean[zero])  # no noise at t = 0
    noise = (out - mean)[~zero] / sigma[~zero]
    _check_standard_normal(noise, "p_step noise")
    _check_uncorrelated(noise[:-1], noise[1:], "neighbouring samples")


@pytest.mark.parametrize("backend,device", CHAIN_BACKENDS)
def test_forward_chain_noise_statistics_and_marginal(backend, device):
    N, T = (256, 8) if is_interpreted(backend, device) else (4099, 40)
    betas = torch.linspace(0.05, 0.3, T, dtype=torch.float64, device=device)
    x = torch.full((N,), 2.0, dtype=torch.float64, device=device)
    z = run(backend, forward_chain, x, betas)
    assert z.shape == (T, N) and z.dtype == torch.float64
    prev = torch.cat([x[None], z[:-1]])
    eps = (z - torch.sqrt(1 - betas)[:, None] * prev) / torch.sqrt(betas)[:, None]
    _check_standard_normal(eps, "forward_chain noise")
    _check_uncorrelated(eps[:-1], eps[1:], "consecutive steps")
    _check_uncorrelated(eps[:, :-1], eps[:, 1:], "neighbouring elements")
    # marginal of z_T: N(sqrt(abar_T) x, 1 - abar_T)
    abar = torch.cumprod(1 - betas, 0)[-1].item()
    zT = z[-1].cpu()
    sd = math.sqrt(1 - abar)
    assert abs(zT.mean().item() - 2 * math.sqrt(abar)) <= Z * sd / math.sqrt(N)
    assert abs(zT.var().item() / (1 - abar) - 1) <= Z * math.sqrt(2 / N)


def test_native_noise_is_one_stream_across_dtypes_and_shapes():
    """The generated noise depends only on (seed, element index): float32 and float64 kernels
    (vector polynomials vs libm) and different shapes of the same numel see the same normals."""
    ops = torch.ops.lvmfast
    s = Schedule.linear(10)
    seed = torch.tensor([987654321])
    x = torch.zeros(37, 29)
    t = torch.zeros(37, dtype=torch.long)
    _, n32 = ops.q_sample(x, t, s.table("q", torch.float32), None, seed)
    _, n64 = ops.q_sample(x.double(), t, s.table("q", torch.float64), None, seed)
    torch.testing.assert_close(n32.double(), n64, rtol=0, atol=1e-4)
    _, n_flat = ops.q_sample(x.reshape(-1, 1), torch.zeros(37 * 29, dtype=torch.long),
                             s.table("q", torch.float32), None, seed)
    assert torch.equal(n_flat.reshape(37, 29), n32)
    chain = ops.forward_chain(x.double(), torch.tensor([[0.0, 1.0]] * 2, dtype=torch.float64), seed)
    torch.testing.assert_close(chain[0], n64)  # step 0 of the chain is stream 0
    assert not torch.equal(chain[1], chain[0])


_NOISE_IN_A_WIDTH = """
import sys, torch, lvmfast
from lvmfast.diffusion import Schedule
ops, s = torch.ops.lvmfast, Schedule.linear(10)
seed = torch.tensor([0x5DEECE66D1234567])  # both key words nonzero
out = {}
for dtype in (torch.float32, torch.float64):
    x = torch.zeros(37, 29, dtype=dtype)
    out[dtype] = ops.q_sample(x, torch.zeros(37, dtype=torch.long), s.table("q", dtype), None, seed)[1]
    out[(dtype, "chain")] = ops.forward_chain(x, torch.tensor([[0.5, 0.7]] * 3, dtype=dtype), seed)
torch.save(out, sys.argv[1])
"""


def test_native_noise_is_the_same_in_both_vector_widths(tmp_path):
    """The CPU kernels make their normals in 16-lane vectors (Philox with AVX-512 intrinsics, or
    generic vector code) or 8-lane ones (Philox with AVX2 intrinsics, or generic), by instruction set
    and LVMFAST_CPU_VECTOR_BYTES: every such build gives the very same noise, so a seed means one
    stream on every CPU."""
    import os

    runs = {}
    for vector_bytes in ("32", "64"):
        path = tmp_path / f"noise{vector_bytes}.pt"
        res = subprocess.run([sys.executable, "-c", _NOISE_IN_A_WIDTH, str(path)], capture_output=True,
                             text=True, timeout=300, env={**os.environ, "LVMFAST_CPU_VECTOR_BYTES": vector_bytes})
        assert res.returncode == 0, res.stderr[-3000:]
        runs[vector_bytes] = torch.load(path)
    for key, noise in runs["32"].items():
        assert noise.abs().max() > 1 and noise.std() > 0.5, key  # real noise, not zeros
        assert torch.equal(noise, runs["64"][key]), key


@pytest.mark.parametrize("vector_bytes", ["32", "64"])
def test_cpu_kernels_in_both_vector_widths(vector_bytes):
    rerun_in_vector_width(__file__, vector_bytes, "native-cpu and not compile and not opcheck")


# ------------------------------------------------------------------ reproducibility
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_generator_reproducibility(backend, device):
    sched = schedule_for(device, 30)
    x = torch.randn(9, 11, device=device)
    t = make_t(9, 30, device)

    def all_ops(gen):
        xt, n = run(backend, q_sample, x, t, sched, generator=gen)
        step = run(backend, p_step, x, xt, t, sched, generator=gen)
        chain = run(backend, forward_chain, x, sched.betas[:5], generator=gen)
        return [xt, n, step, chain]

    first = all_ops(torch.Generator(device).manual_seed(123))
    second = all_ops(torch.Generator(device).manual_seed(123))
    other = all_ops(torch.Generator(device).manual_seed(124))
    for a, b, c in zip(first, second, other):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
    torch.manual_seed(7)
    d1 = run(backend, q_sample, x, t, sched)[1]
    torch.manual_seed(7)
    d2 = run(backend, q_sample, x, t, sched)[1]
    assert torch.equal(d1, d2)  # torch's default generator when none is given
    assert not torch.equal(d1, run(backend, q_sample, x, t, sched)[1])  # and it advances


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_sample_loop(backend, device):
    T, shape = 12, (5, 3)
    sched = schedule_for(device, T)
    calls = []

    def model(x, t):
        calls.append(t.clone())
        return 0.3 * x + 0.01 * t[:, None]

    out = run(backend, sample, model, shape, sched, generator=torch.Generator(device).manual_seed(1),
              progress=True)
    assert out.shape == shape and out.dtype == torch.float32 and not out.requires_grad
    assert [int(c[0]) for c in calls] == list(range(T - 1, -1, -1))
    assert all(c.dtype == torch.long and c.shape == (5,) and (c == c[0]).all() for c in calls)
    # the same as the loop written out with the same generator
    gen = torch.Generator(device).manual_seed(1)
    x = torch.randn(shape, generator=gen, device=device)
    for i in range(T - 1, -1, -1):
        t = torch.full((5,), i, dtype=torch.long, device=device)
        x = run(backend, p_step, x, model(x, t), t, sched, generator=gen)
    torch.testing.assert_close(out, x)
    again = run(backend, sample, model, shape, sched, generator=torch.Generator(device).manual_seed(1),
                progress=False)
    assert torch.equal(out, again)


# ------------------------------------------------------------------ forward_chain gradients
@pytest.mark.parametrize("backend,device", CHAIN_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape,T", [((0,), 3), ((1,), 1), ((5, 3), 4), ((70,), 6), ((3, 2, 11), 17), ((4,), 0)])
def test_forward_chain_matches_recurrence_and_gradients(backend, device, dtype, shape, T):
    x = torch.randn(shape, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_()
    betas = torch.empty(T, dtype=torch.float64).uniform_(0.01, 0.5).to(device).requires_grad_()
    z = run(backend, forward_chain, x, betas, generator=torch.Generator(device).manual_seed(3))
    assert z.shape == (T, *shape) and z.dtype == dtype
    # the noise the kernel used, recovered in float64; then the reference recurrence with it
    zd, xd, bd = z.detach().double().cpu(), x.detach().double().cpu(), betas.detach().double().cpu()
    prev = torch.cat([xd[None], zd[:-1]])
    view = (-1,) + (1,) * len(shape)
    eps = (zd - torch.sqrt(1 - bd).reshape(view) * prev) / torch.sqrt(bd).reshape(view)

    def recurrence(x0, b):
        out, cur = [], x0
        for i in range(T):
            cur = torch.sqrt(1 - b[i]) * cur + torch.sqrt(b[i]) * eps[i]
            out.append(cur)
        return torch.stack(out) if out else x0[None][:0] + 0 * b.sum()  # T = 0: empty, still a graph

    cot = torch.randn(z.shape, dtype=dtype, device=device)
    grads = torch.autograd.grad(z, [x, betas], cot)
    ref, ref_grads = _ref_grads(recurrence, [x, betas], cot)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    assert_close_rel(z, ref, tol, "chain")
    assert_close_rel(grads[0], ref_grads[0], tol, "grad x")
    assert_close_rel(grads[1], ref_grads[1], tol * max(1, math.prod(shape)) ** 0.5, "grad betas")
    # x alone needs a gradient: the backward takes its shortcut (no noise regenerated)
    z2 = run(backend, forward_chain, x, betas.detach(), generator=torch.Generator(device).manual_seed(3))
    (gx,) = torch.autograd.grad(z2, [x], cot)
    assert_close_rel(gx, ref_grads[0], tol, "grad x, betas constant")


@pytest.mark.parametrize("backend,device", CHAIN_BACKENDS)
def test_forward_chain_double_backward_raises(backend, device):
    x = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    betas = torch.full((4,), 0.1, dtype=torch.float64, device=device, requires_grad=True)
    z = run(backend, forward_chain, x, betas)
    (g,) = torch.autograd.grad(z.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        g.sum().backward()


# ------------------------------------------------------------------ gradcheck, opcheck, compile
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradcheck_and_gradgradcheck(backend, device):
    sched = schedule_for(device, 20, dtype=torch.float64)
    t = make_t(4, 20, device)
    a, b, n = _inputs((4, 3), torch.float64, device)
    with lvmfast.use_backend(backend):
        for fn, args in [(lambda x, z: q_sample(x, t, sched, noise=z)[0], (a, n)),
                         (lambda x, y: q_posterior(x, y, t, sched)[0], (a, b)),
                         (lambda x, e, z: p_step(x, e, t, sched, noise=z), (a, b, n))]:
            assert torch.autograd.gradcheck(fn, args)
            assert torch.autograd.gradgradcheck(fn, args)
        x = a[0].detach().requires_grad_()
        betas = torch.tensor([0.1, 0.3, 0.2], dtype=torch.float64, device=device, requires_grad=True)
        gen = torch.Generator(device)

        def chain(x, betas):
            gen.manual_seed(11)
            return forward_chain(x, betas, generator=gen)

        assert torch.autograd.gradcheck(chain, (x, betas))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    suffix = "_triton" if backend == "triton" else ""
    ops = torch.ops.lvmfast
    sched = schedule_for(device, 20, dtype=torch.float64)
    for shape in [(4, 3), (1, 5, 2), (0, 3)]:
        B = shape[0]
        t = make_t(B, 20, device)
        x, y, n = (v.detach().requires_grad_() for v in _inputs(shape, torch.float64, device))
        seed = torch.tensor([12345], device=device)
        q, post, p = (sched.table(k, torch.float64) for k in ("q", "posterior", "p"))
        torch.library.opcheck(getattr(ops, "q_sample" + suffix), (x, t, q, n, None))
        torch.library.opcheck(getattr(ops, "q_sample" + suffix), (x, t, q, None, seed))
        torch.library.opcheck(getattr(ops, "q_posterior" + suffix), (x, y, t, post))
        torch.library.opcheck(getattr(ops, "p_step" + suffix), (x, y, t, p, n, None))
        torch.library.opcheck(getattr(ops, "p_step" + suffix), (x, y, t, p, None, seed))
        coefs = torch.tensor([[0.9, 0.3], [0.8, 0.5]], dtype=torch.float64, device=device, requires_grad=True)
        torch.library.opcheck(getattr(ops, "forward_chain" + suffix), (x, coefs, seed))
        if "cpu" in _backend.AVAILABLE["native"]["q_sample"]:
            torch.library.opcheck(ops.diffusion_backward, (x.detach().cpu(), t.cpu(), p.cpu(), [0, 2]))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    sched = schedule_for(device, 30)
    t = make_t(6, 30, device)
    x0, eps, noise = (v.detach().float().requires_grad_() for v in _inputs((6, 5), torch.float64, device))
    betas = sched.betas[:4]

    def with_noise(x0, eps, noise):
        xt, _ = q_sample(x0.tanh(), t, sched, noise=noise)
        mean, var = q_posterior(x0, xt, t, sched)
        return (p_step(xt, eps, t, sched, noise=noise) + mean * var).square().sum()

    def generated(x0, eps):
        xt, n = q_sample(x0, t, sched)
        return p_step(xt, eps, t, sched), n, forward_chain(x0, betas)

    compile_backend = "aot_eager" if is_interpreted(backend, device) else "inductor"
    with lvmfast.use_backend(backend):
        compiled = torch.compile(with_noise, fullgraph=True, backend=compile_backend)
        value = compiled(x0, eps, noise)
        grads = torch.autograd.grad(value, [x0, eps, noise])
        eager = with_noise(x0, eps, noise)
        eager_grads = torch.autograd.grad(eager, [x0, eps, noise])
        torch.testing.assert_close(value, eager, rtol=1e-5, atol=1e-5)
        for g, e in zip(grads, eager_grads):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
        step, n, chain = torch.compile(generated, fullgraph=True, backend=compile_backend)(x0, eps)
    assert step.shape == (6, 5) and chain.shape == (4, 6, 5)
    xt = R.q_sample(x0.detach(), t, sched, noise=n)[0]
    assert torch.isfinite(step).all() and torch.isfinite(chain).all() and n.std() > 0.3
    assert (step - R.p_step(xt, eps.detach(), t, sched, noise=torch.zeros_like(xt))).abs().max() < 1


# ------------------------------------------------------------------ diffusers
def _ddpm_scheduler(T, schedule):
    diffusers = pytest.importorskip("diffusers")
    return diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=schedule, clip_sample=False,
                                   variance_type="fixed_small", prediction_type="epsilon")


@pytest.mark.parametrize("kind,name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_diffusers_add_noise_and_betas(kind, name):
    T = 1000
    ref = _ddpm_scheduler(T, name)
    sched = schedule_for("cpu", T, kind)
    torch.testing.assert_close(sched.betas, ref.betas.float(), rtol=1e-5, atol=1e-7)
    x0, noise = torch.randn(2, 64, 3, 8)
    t = make_t(64, T, "cpu")
    expected = ref.add_noise(x0, noise, t)
    for backend in ("native", "reference"):
        xt, returned = run(backend, q_sample, x0, t, sched, noise=noise)
        assert returned is noise
        # diffusers forms alphas_cumprod by a float32 cumprod: ~1e-4 relative off by t ~ 1000
        torch.testing.assert_close(xt, expected, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("kind,name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
@pytest.mark.parametrize("step", [0, 1, 17, 500, 999])
def test_diffusers_step_matches_p_step(kind, name, step):
    T = 1000
    ref = _ddpm_scheduler(T, name)
    sched = schedule_for("cpu", T, kind, dtype=torch.float64)
    xt, eps = torch.randn(2, 16, 3, 5)
    out = ref.step(eps, step, xt, generator=torch.Generator().manual_seed(5)).prev_sample
    noise = torch.randn(xt.shape, generator=torch.Generator().manual_seed(5))  # what step() drew
    t = torch.full((16,), step, dtype=torch.long)
    for backend in ("native", "reference"):
        mine = run(backend, p_step, xt.double(), eps.double(), t, sched, noise=noise.double())
        # diffusers works in float32 through x0 = (xt - sqrt(1 - abar) eps) / sqrt(abar)
        torch.testing.assert_close(mine.float(), out, rtol=2e-4, atol=2e-4)


# ------------------------------------------------------------------ bad input
def _bad_calls():
    s = Schedule.linear(10)
    x = torch.randn(4, 3)
    t = torch.tensor([0, 1, 2, 9])
    return [
        ("x0 dim", lambda: q_sample(torch.tensor(1.0), t[:0], s), r"x0 must have shape \(B, \.\.\.\)"),
        ("t shape", lambda: q_sample(x, t[:3], s), r"t must have shape \(4,\), got \(3,\)"),
        ("t 2d", lambda: p_step(x, x, t[:, None], s), r"t must have shape \(4,\), got \(4, 1\)"),
        ("t dtype", lambda: q_sample(x, t.int(), s), "t must have dtype torch.int64"),
        ("t float", lambda: q_posterior(x, x, t.float(), s), "t must have dtype torch.int64"),
        ("noise shape", lambda: q_sample(x, t, s, noise=x[:, :2]),
         r"noise must have the shape of x0 \(4, 3\), got \(4, 2\)"),
        ("noise dtype", lambda: p_step(x, x, t, s, noise=x.double()), "noise must have the dtype of xt"),
        ("eps shape", lambda: p_step(x, x[:3], t, s), r"eps_pred must have the shape of xt \(4, 3\)"),
        ("xt dtype", lambda: q_posterior(x, x.double(), t, s), "xt must have the dtype of x0"),
        ("x dtype", lambda: q_sample(x.long(), t, s), "x0 must have dtype in"),
        ("half on cpu", lambda: p_step(x.half(), x.half(), t, s), "half types need CUDA"),
        ("schedule", lambda: q_sample(x, t, "linear"), "schedule must be a lvmfast.diffusion.Schedule"),
        ("t too big", lambda: q_sample(x, torch.tensor([0, 1, 2, 10]), s), r"t must lie in \[0, 9\]"),
        ("t negative", lambda: p_step(x, x, torch.tensor([0, -1, 2, 3]), s), r"t must lie in \[0, 9\]"),
        ("t posterior", lambda: q_posterior(x, x, torch.tensor([0, 1, 2, 99]), s), r"t must lie in \[0, 9\]"),
        ("betas shape", lambda: forward_chain(x, torch.full((2, 3), 0.1)), r"betas must have shape \(T,\)"),
        ("betas dtype", lambda: forward_chain(x, torch.ones(3, dtype=torch.long)), "betas must be a floating"),
        ("chain x dtype", lambda: forward_chain(x.int(), s.betas), "x must have dtype in"),
    ]


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_bad_inputs_raise_value_error(backend, case):
    _, call, message = case
    with lvmfast.use_backend(backend), pytest.raises(ValueError, match=message):
        call()


def test_compiled_ops_check_inputs_themselves():
    s = Schedule.linear(10)
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 9])
    ops = torch.ops.lvmfast
    with pytest.raises(ValueError, match=r"t must lie in \[0, 9\]"):
        ops.q_sample(x, torch.tensor([0, 1, 2, 10]), s.table("q", x.dtype), x, None)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 9\]"):
        ops.p_step(x, x, torch.tensor([0, 1, -2, 1]), s.table("p", x.dtype), None, torch.tensor([1]))
    with pytest.raises(ValueError, match=r"coefs must have shape \(T, 3\)"):
        ops.q_posterior(x, x, t, s.table("q", x.dtype))
    with pytest.raises(ValueError, match="coefs must have dtype"):
        ops.q_sample(x, t, s.table("q", torch.float64), x, None)
    with pytest.raises(ValueError, match="exactly one of noise and seed"):
        ops.q_sample(x, t, s.table("q", x.dtype), None, None)
    with pytest.raises(ValueError, match="float32 or float64"):
        ops.p_step(x.half(), x.half(), t, s.table("p", x.dtype), x.half(), None)


def test_device_mismatch_raises_runtime_error():
    s = Schedule.linear(10)
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 9])
    with pytest.raises(RuntimeError, match="one device"):
        q_sample(x, t, s, noise=x.to("meta"))
    with pytest.raises(RuntimeError, match="one device"):
        p_step(x, x, t.to("meta"), s)
    with pytest.raises(RuntimeError, match="schedule is on"):
        q_sample(x.to("meta"), t.to("meta"), s)
    with pytest.raises(RuntimeError, match="one device"):
        forward_chain(x, s.betas.to("meta"))


def test_reference_backend_selection():
    assert lvmfast.backends()["auto"]["q_sample"]["cpu"] == "native"
    for op in ("q_sample", "q_posterior", "p_step", "forward_chain"):
        assert "cpu" in _backend.AVAILABLE["native"][op]


# ------------------------------------------------------------------ CUDA only
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_dtypes_against_reference(backend, dtype):
    if "cuda" not in _backend.AVAILABLE[backend]["q_sample"]:
        pytest.skip(f"{backend} has no CUDA kernel in this build")
    sched = schedule_for("cuda", 1000, dtype=dtype)
    sched64 = schedule_for("cpu", 1000, dtype=torch.float64)
    shape = (1031, 67)
    t = make_t(shape[0], 1000, "cuda")
    a, b, n = _inputs(shape, dtype, "cuda")
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 2e-6}[dtype]
    out = run(backend, p_step, a, b, t, sched, noise=n)
    cot = torch.randn_like(out)
    grads = torch.autograd.grad(out, [a, b, n], cot)
    ref, ref_grads = _ref_grads(lambda x, e, z: R.p_step(x, e, t.cpu(), sched64, noise=z), [a, b, n], cot)
    assert out.dtype == dtype
    assert_close_rel(out, ref, tol, "p_step")
    for g, rg in zip(grads, ref_grads):
        assert g.dtype == dtype
        assert_close_rel(g, rg, tol, "p_step grad")
    xt, noise = run(backend, q_sample, a, t, sched)
    assert noise.dtype == dtype
    assert_close_rel(xt, R.q_sample(a.detach().double().cpu(), t.cpu(), sched64,
                                    noise=noise.double().cpu())[0], tol, "q_sample")
    _check_standard_normal(noise, "cuda noise")
    chain = run(backend, forward_chain, a, sched.betas[:20])
    assert chain.shape == (20, *shape) and chain.dtype == dtype


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["native", "triton"])
def test_cuda_no_host_sync_and_graph_capture(backend):
    if "cuda" not in _backend.AVAILABLE[backend]["p_step"]:
        pytest.skip(f"{backend} has no CUDA kernel in this build")
    sched = schedule_for("cuda", 50)
    lin = torch.nn.Linear(16, 16, device="cuda")
    model = lambda x, t: lin(x) + 1e-3 * t[:, None]  # noqa: E731
    x = torch.randn(64, 16, device="cuda")
    t = make_t(64, 50, "cuda")
    with lvmfast.use_backend(backend):
        sample(model, (64, 16), sched, progress=False)  # warm-up: compiles kernels
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            q_sample(x, t, sched)
            p_step(x, x, t, sched)
            q_posterior(x, x, t, sched)
            forward_chain(x, sched.betas)
            sample(model, (64, 16), sched, progress=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            with torch.cuda.graph(graph):
                captured = sample(model, (64, 16), sched, progress=False)
        torch.cuda.current_stream().wait_stream(stream)
        graph.replay()
        first = captured.clone()
        graph.replay()
        torch.cuda.synchronize()
    assert torch.isfinite(first).all() and not torch.equal(first, captured)  # fresh noise per replay


@pytest.mark.cuda
def test_cuda_triton_t_out_of_range_gives_nan_rows():
    if "cuda" not in _backend.AVAILABLE["triton"]["q_sample"]:
        pytest.skip("triton has no CUDA kernel in this build")
    s = Schedule.linear(10, device="cuda")
    x = torch.randn(4, 3, device="cuda")
    t = torch.tensor([0, 1, 2, 10], device="cuda")
    xt, _ = run("triton", q_sample, x, t, s)
    step = run("triton", p_step, x, x, t, s)
    for out in (xt, step):
        assert torch.isfinite(out[:3]).all() and torch.isnan(out[3]).all()


@pytest.mark.cuda
def test_cuda_native_t_out_of_range_trips_device_assert():
    backend = "native"
    if "cuda" not in _backend.AVAILABLE[backend]["q_sample"]:
        pytest.skip(f"{backend} has no CUDA kernel in this build")
    code = (
        "import torch, lvmfast\n"
        "from lvmfast.diffusion import Schedule, q_sample\n"
        "s = Schedule.linear(10, device='cuda')\n"
        f"with lvmfast.use_backend('{backend}'):\n"
        "    xt, _ = q_sample(torch.randn(4, 3, device='cuda'), torch.tensor([0, 1, 2, 10], device='cuda'), s)\n"
        "torch.cuda.synchronize()\n"
        "print('NO ASSERT')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "NO ASSERT" not in res.stdout, res.stdout + res.stderr
    assert "assert" in res.stderr.lower(), res.stderr[-2000:]


@pytest.mark.cuda
def test_cuda_native_noise_matches_cpu_stream():
    """Same seed, same element order: the CUDA kernels make the CPU kernels' normals (up to the
    float rounding of log / sin / cos)."""
    if "cuda" not in _backend.AVAILABLE["native"]["q_sample"]:
        pytest.skip("no native CUDA kernel in this build")
    ops = torch.ops.lvmfast
    s_cpu, s_gpu = Schedule.linear(10), Schedule.linear(10, device="cuda")
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-3)):
        x = torch.zeros(131, 67, dtype=dtype)
        t = torch.zeros(131, dtype=torch.long)
        seed = torch.tensor([123456789])
        _, cpu = ops.q_sample(x, t, s_cpu.table("q", dtype), None, seed)
        _, gpu = ops.q_sample(x.cuda(), t.cuda(), s_gpu.table("q", dtype), None, seed.cuda())
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=tol)
        coefs = torch.tensor([[0.9, 0.4]] * 3, dtype=dtype)
        torch.testing.assert_close(ops.forward_chain(x.cuda(), coefs.cuda(), seed.cuda()).cpu(),
                                   ops.forward_chain(x, coefs, seed), rtol=0, atol=tol)


@pytest.mark.cuda
def test_cuda_native_large_batch_statistics():
    if "cuda" not in _backend.AVAILABLE["native"]["q_sample"]:
        pytest.skip("no native CUDA kernel in this build")
    sched = schedule_for("cuda", 1000)
    x0 = torch.zeros(65536, 64, device="cuda")
    t = torch.zeros(65536, dtype=torch.long, device="cuda")
    _, noise = run("native", q_sample, x0, t, sched, generator=torch.Generator("cuda").manual_seed(0))
    _check_standard_normal(noise[:4096], "cuda noise")
    n = noise.double()
    N = n.numel()
    assert abs(n.mean().item()) <= Z / math.sqrt(N) and abs(n.var().item() - 1) <= Z * math.sqrt(2 / N)
    _check_uncorrelated(noise[:-1], noise[1:], "neighbouring samples")
