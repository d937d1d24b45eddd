"""DDPM forward and reverse steps as fused custom ops (SPEC section 2, [4.98]-[4.102]).

q_sample, q_posterior and p_step are each one pass over the data: the kernel gathers the
per-sample coefficients coefs[t[b]] from the schedule's table on the device and, when no noise
is given, makes the noise itself from a counter-based generator (Philox-4x32 + Box-Muller,
kernels/diffusion.cuh). forward_chain writes all T latents in one call.

Randomness: each call draws a 62-bit Philox key with a one-element torch.randint on the
generator (torch's default generator when none is given) on the data's device, and hands it to
the kernel as a device tensor. On CUDA that is an asynchronous kernel like any other random op
(no host sync), it advances the generator's own Philox offset (so seeding with
torch.manual_seed or a torch.Generator reproduces results), and it is recorded by CUDA-graph
capture like torch's own random ops; the kernel reads the key from device memory, so a replayed
graph gets fresh noise. The alternative, reading the generator's seed and offset on the host,
is what torch's own kernels do through private APIs; the key tensor needs none.
"""
from __future__ import annotations

import torch

from lvmfast import _backend
from lvmfast.diffusion.schedule import Schedule, acc_dtype
from lvmfast.ops._common import check_float
from lvmfast.reference import diffusion as reference

_SEED_HIGH = 2**62


# ------------------------------------------------------------------ checks
def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _check_like(op, name, other, xname, x):
    if not isinstance(other, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a tensor, got {type(other).__name__}")
    if other.shape != x.shape:
        raise ValueError(f"{op}: {name} must have the shape of {xname} {tuple(x.shape)}, "
                         f"got {tuple(other.shape)}")
    if other.dtype != x.dtype:
        raise ValueError(f"{op}: {name} must have the dtype of {xname} ({x.dtype}), got {other.dtype}")
    if other.device != x.device:
        raise RuntimeError(f"{op}: all tensors must be on one device, got {xname} on {x.device} "
                           f"and {name} on {other.device}")


def _check_generator(op, generator, x):
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"{op}: generator must be a torch.Generator, got {type(generator).__name__}")
        if not _same_device(generator.device, x.device):
            raise RuntimeError(f"{op}: generator is on {generator.device} but the data on {x.device}")


def _check_rows(op, xname, x, t, schedule, others=(), noise=None, generator=None):
    """x (B, ...), t (B,) long, schedule a Schedule on x's device, others shaped like x."""
    check_float(op, xname, x)
    if x.dim() < 1:
        raise ValueError(f"{op}: {xname} must have shape (B, ...), got {tuple(x.shape)}")
    if not isinstance(schedule, Schedule):
        raise ValueError(f"{op}: schedule must be a lvmfast.diffusion.Schedule, got {type(schedule).__name__}")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: t must be a (B,) long tensor, got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
    if t.dtype != torch.int64:
        raise ValueError(f"{op}: t must have dtype torch.int64 (long), got {t.dtype}")
    for name, other in others:
        _check_like(op, name, other, xname, x)
    if noise is not None:
        _check_like(op, "noise", noise, xname, x)
    if t.device != x.device:
        raise RuntimeError(f"{op}: all tensors must be on one device, got {xname} on {x.device} "
                           f"and t on {t.device}")
    if not _same_device(schedule.device, x.device):
        raise RuntimeError(f"{op}: the schedule is on {schedule.device} but {xname} on {x.device} "
                           "(use schedule.to(device))")
    _check_generator(op, generator, x)
    # On the CPU a bad step is a ValueError here; on CUDA the kernels assert on the device
    # (checking here would synchronize).
    reference.check_t(t, schedule.num_steps)


def _draw_seed(generator, device) -> torch.Tensor:
    """A (1,) int64 Philox key on `device`, drawn from `generator` (or torch's default one)."""
    return torch.randint(0, _SEED_HIGH, (1,), generator=generator, device=device, dtype=torch.int64)


def _native_backward_devices():
    return {d for d, k in (("cpu", "CPU"), ("cuda", "CUDA")) if _backend._has_kernel("diffusion_backward", k)}


_NATIVE_BACKWARD = _native_backward_devices()


def _scale_rows(grad, t, coefs, cols):
    """[coefs[t, c] * grad for c in cols], by the native kernel where there is one."""
    if grad.device.type in _NATIVE_BACKWARD:
        return torch.ops.lvmfast.diffusion_backward(grad, t, coefs, cols)
    shape = (-1,) + (1,) * (grad.dim() - 1)
    return [(coefs[t, c].reshape(shape) * grad).to(grad.dtype) for c in cols]


def _op(name, backend):
    return getattr(torch.ops.lvmfast, f"{name}_triton" if backend == "triton" else name)


# ------------------------------------------------------------------ public functions
def q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[4.98] xt = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise for x0 (B, ...) and t (B,) long.

    Returns (xt, noise): the given noise, or the noise generated inside the kernel from
    `generator` (torch's default generator when None). Differentiable in x0 and a given noise.
    """
    _check_rows("q_sample", "x0", x0, t, schedule, noise=noise, generator=generator)
    backend = _backend.resolve("q_sample", x0.device.type)
    if backend == "reference":
        return reference.q_sample(x0, t, schedule, noise, generator)
    seed = None if noise is not None else _draw_seed(generator, x0.device)
    xt, drawn = _op("q_sample", backend)(x0, t, schedule.table("q", x0.dtype), noise, seed)
    return xt, (noise if noise is not None else drawn)


def q_posterior(x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """[4.99]-[4.101]: mean and variance of q(x_{t-1} | x_t, x_0).

    mean has x0's shape; variance = beta~_t has shape (B, 1, ..., 1) (broadcasts against x0).
    At t = 0 the mean is x0 and the variance 0. Differentiable in x0 and xt.
    """
    _check_rows("q_posterior", "x0", x0, t, schedule, others=(("xt", xt),))
    backend = _backend.resolve("q_posterior", x0.device.type)
    if backend == "reference":
        return reference.q_posterior(x0, xt, t, schedule)
    mean, variance = _op("q_posterior", backend)(x0, xt, t, schedule.table("posterior", x0.dtype))
    return mean, variance.reshape(-1, *([1] * (x0.dim() - 1)))


def p_step(xt: torch.Tensor, eps_pred: torch.Tensor, t: torch.Tensor, schedule: Schedule,
           noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One DDPM reverse step [4.102]: 1/sqrt(alpha_t) (xt - beta_t / sqrt(1 - abar_t) eps_pred)
    + sqrt(beta~_t) noise where t > 0 (nothing added where t == 0).

    noise: given, or generated in the kernel from `generator` (torch's default when None).
    Differentiable in xt, eps_pred and a given noise.
    """
    _check_rows("p_step", "xt", xt, t, schedule, others=(("eps_pred", eps_pred),), noise=noise,
                generator=generator)
    backend = _backend.resolve("p_step", xt.device.type)
    if backend == "reference":
        return reference.p_step(xt, eps_pred, t, schedule, noise, generator)
    seed = None if noise is not None else _draw_seed(generator, xt.device)
    return _op("p_step", backend)(xt, eps_pred, t, schedule.table("p", xt.dtype), noise, seed)


def forward_chain(x: torch.Tensor, betas: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The forward diffusion z_i = sqrt(1 - beta_i) z_{i-1} + sqrt(beta_i) eps_i, z_0 = x, for
    i = 1..T in one call; returns z_1..z_T stacked, (T, *x.shape). Differentiable in x and betas
    (the backward regenerates the noise from the seed instead of storing it)."""
    op = "forward_chain"
    check_float(op, "x", x)
    if not isinstance(betas, torch.Tensor) or not betas.is_floating_point():
        raise ValueError(f"{op}: betas must be a floating (T,) tensor, got "
                         f"{betas.dtype if isinstance(betas, torch.Tensor) else type(betas).__name__}")
    if betas.dim() != 1:
        raise ValueError(f"{op}: betas must have shape (T,), got {tuple(betas.shape)}")
    if betas.device != x.device:
        raise RuntimeError(f"{op}: all tensors must be on one device, got x on {x.device} "
                           f"and betas on {betas.device}")
    _check_generator(op, generator, x)
    backend = _backend.resolve(op, x.device.type)
    if backend == "reference":
        return reference.forward_chain(x, betas, generator)
    # the two per-step coefficients, formed in float64 (differentiable back to betas)
    b = betas.double()
    coefs = torch.stack([torch.sqrt(1 - b), torch.sqrt(b)], 1).to(acc_dtype(x.dtype)).contiguous()
    return _op(op, backend)(x, coefs, _draw_seed(generator, x.device))


@torch.no_grad()
def sample(model, shape, schedule: Schedule, generator: torch.Generator | None = None,
           progress: bool = True) -> torch.Tensor:
    """Ancestral DDPM sampling: x_T ~ N(0, I), then for t = T-1 .. 0 one call
    `eps = model(x, t)` (t a (B,) long tensor) and one fused p_step.

    Runs on the schedule's device in its dtype; no host-device synchronization, so the loop can
    be captured in a CUDA graph (with `generator=None`, or a generator registered with the
    graph). `progress` shows a tqdm bar when tqdm is installed. Runs under torch.no_grad().
    """
    if not isinstance(schedule, Schedule):
        raise ValueError(f"sample: schedule must be a lvmfast.diffusion.Schedule, got {type(schedule).__name__}")
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list, torch.Size)) else (shape,)))
    if len(shape) < 1:
        raise ValueError(f"sample: shape must be (B, ...), got {shape}")
    device, dtype = schedule.device, schedule.dtype
    _check_generator("sample", generator, torch.empty(0, device=device))
    x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    steps = range(schedule.num_steps - 1, -1, -1)
    if progress:
        try:
            from tqdm.auto import tqdm
            steps = tqdm(steps, desc="sampling", total=schedule.num_steps, leave=False)
        except ImportError:  # tqdm is optional
            pass
    for i in steps:
        t = torch.full((shape[0],), i, dtype=torch.long, device=device)
        x = p_step(x, model(x, t), t, schedule, generator=generator)
    return x


# ------------------------------------------------------------------ registration
def _register_fakes():
    @torch.library.register_fake("lvmfast::diffusion_backward")
    def _(grad, t, coefs, columns):
        return [grad.new_empty(grad.shape) for _ in columns]

    @torch.library.register_fake("lvmfast::forward_chain_backward")
    def _(grad, x, coefs, seed, out):
        return x.new_empty(x.shape), coefs.new_empty(coefs.shape)

    @torch.library.register_fake("lvmfast::forward_chain_triton_backward")
    def _(grad, x, coefs, seed, out):
        return x.new_empty(x.shape), coefs.new_empty(coefs.shape)

    for suffix in ("", "_triton"):
        @torch.library.register_fake(f"lvmfast::q_sample{suffix}")
        def _(x0, t, coefs, noise, seed):
            return x0.new_empty(x0.shape), x0.new_empty(x0.shape if noise is None else (0,))

        @torch.library.register_fake(f"lvmfast::q_posterior{suffix}")
        def _(x0, xt, t, coefs):
            return x0.new_empty(x0.shape), x0.new_empty(x0.shape[:1])

        @torch.library.register_fake(f"lvmfast::p_step{suffix}")
        def _(xt, eps_pred, t, coefs, noise, seed):
            return xt.new_empty(xt.shape)

        @torch.library.register_fake(f"lvmfast::forward_chain{suffix}")
        def _(x, coefs, seed):
            return x.new_empty((coefs.shape[0], *x.shape))


def _register_autograd():
    # diffusion_backward is linear in grad: its own backward is the same scaling, summed.
    def backward_setup(ctx, inputs, output):
        _, t, coefs, columns = inputs
        ctx.save_for_backward(t, coefs)
        ctx.columns = list(columns)

    def backward_backward(ctx, cotangents):
        t, coefs = ctx.saved_tensors
        total = None
        for col, cot in zip(ctx.columns, cotangents):
            if cot is None:
                continue
            term = (coefs[t, col].reshape(-1, *([1] * (cot.dim() - 1))) * cot).to(cot.dtype)
            total = term if total is None else total + term
        return total, None, None, None

    torch.library.register_autograd("lvmfast::diffusion_backward", backward_backward,
                                    setup_context=backward_setup)

    for suffix in ("", "_triton"):
        def q_sample_setup(ctx, inputs, output):
            _, t, coefs, noise, _ = inputs
            ctx.save_for_backward(t, coefs)
            ctx.has_noise = noise is not None

        def q_sample_backward(ctx, grad_xt, grad_drawn):
            t, coefs = ctx.saved_tensors
            want_x0 = ctx.needs_input_grad[0]
            want_noise = ctx.has_noise and ctx.needs_input_grad[3]
            cols = [c for c, w in ((0, want_x0), (1, want_noise)) if w]
            grads = iter(_scale_rows(grad_xt, t, coefs, cols) if cols else [])
            return (next(grads) if want_x0 else None, None, None,
                    next(grads) if want_noise else None, None)

        torch.library.register_autograd(f"lvmfast::q_sample{suffix}", q_sample_backward,
                                        setup_context=q_sample_setup)

        def q_posterior_setup(ctx, inputs, output):
            _, _, t, coefs = inputs
            ctx.save_for_backward(t, coefs)

        def q_posterior_backward(ctx, grad_mean, grad_variance):
            t, coefs = ctx.saved_tensors
            if grad_mean is None:
                return None, None, None, None
            want = [c for c in (0, 1) if ctx.needs_input_grad[c]]
            grads = dict(zip(want, _scale_rows(grad_mean, t, coefs, want) if want else []))
            return grads.get(0), grads.get(1), None, None

        torch.library.register_autograd(f"lvmfast::q_posterior{suffix}", q_posterior_backward,
                                        setup_context=q_posterior_setup)

        def p_step_setup(ctx, inputs, output):
            _, _, t, coefs, noise, _ = inputs
            ctx.save_for_backward(t, coefs)
            ctx.has_noise = noise is not None

        def p_step_backward(ctx, grad):
            t, coefs = ctx.saved_tensors
            # column 2 (sqrt(beta~)) is exactly 0 at t = 0, as the forward adds no noise there
            want = [c for c, i in ((0, 0), (1, 1), (2, 4))
                    if ctx.needs_input_grad[i] and (c < 2 or ctx.has_noise)]
            grads = dict(zip(want, _scale_rows(grad, t, coefs, want) if want else []))
            return grads.get(0), grads.get(1), None, None, grads.get(2), None

        torch.library.register_autograd(f"lvmfast::p_step{suffix}", p_step_backward,
                                        setup_context=p_step_setup)

        chain_backward_op = getattr(torch.ops.lvmfast, f"forward_chain{suffix}_backward")

        def chain_setup(ctx, inputs, output):
            x, coefs, seed = inputs
            ctx.save_for_backward(x, coefs, seed, output)

        def chain_backward(ctx, grad, chain_backward_op=chain_backward_op):
            x, coefs, seed, out = ctx.saved_tensors
            if not ctx.needs_input_grad[1]:
                # x alone: z_i is prod_{j <= i} a_j x plus noise, so grad_x = sum_i P_i grad_i,
                # one matrix-vector product over grad, no noise to regenerate.
                decay = torch.cumprod(coefs[:, 0], 0).to(grad.dtype)
                grad_x = (decay @ grad.reshape(grad.shape[0], x.numel())).reshape(x.shape)
                return grad_x, None, None
            grad_x, grad_coefs = chain_backward_op(grad, x, coefs, seed, out)
            return grad_x, grad_coefs, None

        torch.library.register_autograd(f"lvmfast::forward_chain{suffix}", chain_backward,
                                        setup_context=chain_setup)

        def chain_double_backward(ctx, *grads):
            raise RuntimeError("forward_chain: double backward is not supported (its backward "
                               "regenerates the noise inside a kernel); use "
                               "lvmfast.use_backend('reference') for higher-order gradients")

        torch.library.register_autograd(f"lvmfast::forward_chain{suffix}_backward",
                                        chain_double_backward)


if _backend._C is not None:
    _register_fakes()
    _register_autograd()
for _name in ("q_sample", "q_posterior", "p_step", "forward_chain"):
    _backend.register_op(_name, family="diffusion", auto_cuda_order=("native", "triton"))
