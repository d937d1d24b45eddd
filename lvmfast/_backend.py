"""Loads the compiled extension and chooses a backend per op and device.

Backends: "reference" (pure torch, lvmfast/reference), "native" (C++ / CUDA in lvmfast._C),
"triton" (CUDA; the CPU only under TRITON_INTERPRET=1) and "auto", the default, which picks the
fastest available one per device. Availability is computed once at import into plain dicts, so
choosing a backend inside torch.compile is a dictionary lookup.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import warnings

import torch
from torch.torch_version import TorchVersion

BACKENDS = ("auto", "reference", "native", "triton")

_C = None
_C_ERROR: str | None = None
try:
    _C = importlib.import_module("lvmfast._C")  # registers the schemas and the C++/CUDA kernels
except ImportError as err:  # not compiled: no compiler, no torch at build time, or a failed build
    _C_ERROR = str(err)
    warnings.warn(f"lvmfast: the compiled extension lvmfast._C is not available ({err}); every op "
                  "runs on the pure-torch reference backend. `lvmfast info` shows the details.",
                  stacklevel=2)

_TRITON_VERSION: str | None = None
_TRITON_ERROR: str | None = None
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# The oldest Triton the test extras accept (pyproject.toml; the kernels have run with 3.6 in the
# interpreter and on the H100 and H200). Under torch 2.5 and its Triton 3.1 every interpreted
# Triton kernel failed ("arange's arguments must be of type tl.constexpr", 2026-11-26): an older
# Triton leaves the Triton backend off, so that asking for it is a clear error.
TRITON_MIN_VERSION = (3, 2)


if _C is not None and (TRITON_INTERPRET or torch.cuda.is_available()):
    try:
        import triton

        # TorchVersion: a version string that compares with tuples (local tags like +git... too)
        if TorchVersion(triton.__version__) >= TRITON_MIN_VERSION:
            _TRITON_VERSION = triton.__version__
        else:
            _TRITON_ERROR = (f"Triton {triton.__version__} is older than "
                             f"{'.'.join(map(str, TRITON_MIN_VERSION))}, the oldest lvmfast's "
                             "Triton kernels accept: the Triton backend is off")
    except Exception as err:  # triton missing: the other backends still work
        _TRITON_ERROR = f"{type(err).__name__}: {err}"

# Filled by register_op() as each lvmfast/ops/<family>.py is imported:
# AVAILABLE[backend][op] = device types where that backend implements op;
# AUTO_CUDA_ORDER[op] = the backends "auto" tries on CUDA, fastest first (see benchmarks/results/).
AVAILABLE: dict[str, dict[str, frozenset]] = {"reference": {}, "native": {}, "triton": {}}
AUTO_CUDA_ORDER: dict[str, tuple[str, ...]] = {}


def _has_kernel(op: str, key: str) -> bool:
    if _C is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"lvmfast::{op}", key)
    except RuntimeError:  # no such schema: an extension built before the op existed
        return False


def register_op(op: str, family: str, auto_cuda_order: tuple[str, ...] = ("native", "triton")) -> None:
    """Records where `op` has kernels. Imports lvmfast/triton/<family>.py first, where the family
    has one and Triton is usable, so its kernels are registered (op `<op>_triton`)."""
    global _TRITON_ERROR
    if _TRITON_VERSION is not None and importlib.util.find_spec(f"lvmfast.triton.{family}"):
        try:
            importlib.import_module(f"lvmfast.triton.{family}")
        except Exception as err:  # a Triton too old for a kernel: that op runs elsewhere
            _TRITON_ERROR = f"{family}: {type(err).__name__}: {err}"
    devices = (("cpu", "CPU"), ("cuda", "CUDA"))
    AUTO_CUDA_ORDER[op] = auto_cuda_order
    AVAILABLE["reference"][op] = frozenset({"cpu", "cuda"})
    AVAILABLE["native"][op] = frozenset(d for d, k in devices if _has_kernel(op, k))
    AVAILABLE["triton"][op] = frozenset(d for d, k in devices if _has_kernel(f"{op}_triton", k))


def _validated(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown lvmfast backend {name!r}; expected one of {BACKENDS}")
    return name


_current = [_validated(os.environ.get("LVMFAST_BACKEND", "auto"))]


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager selecting the backend for lvmfast ops inside it."""
    _current.append(_validated(name))
    try:
        yield
    finally:
        _current.pop()


def current_backend() -> str:
    return _current[-1]


def resolve(op: str, device_type: str) -> str:
    """The concrete backend that runs `op` on `device_type` under the current selection."""
    name = _current[-1]
    if name == "reference":
        return name
    if name == "auto":
        order = AUTO_CUDA_ORDER[op] if device_type == "cuda" else ("native",)
        return next((b for b in order if device_type in AVAILABLE[b][op]), "reference")
    if device_type not in AVAILABLE[name][op]:
        raise RuntimeError(f"lvmfast backend {name!r} has no {op} kernel for {device_type} tensors; "
                           f"available there: {available_for(op, device_type)} (see lvmfast.backends())")
    return name


def available_for(op: str, device_type: str) -> list[str]:
    return [b for b in AVAILABLE if device_type in AVAILABLE[b][op]]


def backends() -> dict:
    """What is compiled and usable, per backend and op."""
    ops = tuple(AUTO_CUDA_ORDER)
    return {
        "current": current_backend(),
        "native": {"compiled": _C is not None, "error": _C_ERROR,
                   "ops": {op: sorted(AVAILABLE["native"][op]) for op in ops}},
        "triton": {"version": _TRITON_VERSION, "interpreter": TRITON_INTERPRET, "error": _TRITON_ERROR,
                   "ops": {op: sorted(AVAILABLE["triton"][op]) for op in ops}},
        "reference": {"ops": {op: ["cpu", "cuda"] for op in ops}},
        "auto": {op: {d: resolve_auto(op, d) for d in ("cpu", "cuda")} for op in ops},
    }


def resolve_auto(op: str, device_type: str) -> str:
    with use_backend("auto"):
        return resolve(op, device_type)
