import os
import random
import zlib

import pytest
import torch

# Triton kernels run on the CPU through the interpreter; it must be on before they are defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import lvmfast  # noqa: E402
from lvmfast import _backend  # noqa: E402

SEED = int(os.environ.get("LVMFAST_TEST_SEED", random.randrange(2**31)))


def pytest_report_header(config):
    return [f"lvmfast test seed: {SEED} (set LVMFAST_TEST_SEED to repeat)",
            f"lvmfast backends: {lvmfast.backends()}"]


def pytest_terminal_summary(terminalreporter):
    # again at the end: `pytest -q` (the README's and CI's command) hides the header
    terminalreporter.write_line(f"lvmfast test seed: {SEED} (set LVMFAST_TEST_SEED to repeat)")


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh random inputs every session, repeatable per test from the printed seed (crc32, not
    # hash(): str hashes change from process to process)
    torch.manual_seed(SEED + zlib.crc32(request.node.nodeid.encode()) % 2**20)


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def assert_close_rel(actual, expected, tol, what):
    """max |actual - expected| <= tol * (1 + max |expected|), finite, same shape (float64, CPU)."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    if expected.numel():
        assert torch.isfinite(actual).all(), f"{what}: non-finite values"
        err = (actual - expected).abs().max().item()
        scale = expected.abs().max().item()
        assert err <= tol * (1 + scale), f"{what}: max error {err:.3g} vs scale {scale:.3g}"


def backend_params(op):
    """(backend, device) pairs that have a kernel here; CUDA ones are marked `cuda`."""
    params = []
    for device in ("cpu", "cuda"):
        for backend in ("native", "triton"):
            if device in _backend.AVAILABLE[backend][op]:
                marks = [pytest.mark.cuda] if device == "cuda" else []
                params.append(pytest.param(backend, device, id=f"{backend}-{device}", marks=marks))
    return params


def is_interpreted(backend, device):
    """Whether the kernels run interpreted (Triton on the CPU, about 50 ms a launch). Tests then
    take smaller shapes, and gradcheck checks random projections of the Jacobian (fast_mode)
    instead of its every column, which takes hundreds of launches for a flow op; the native
    kernels get the full check, and the Triton gradients are compared element by element with the
    float64 reference in other tests."""
    return backend == "triton" and device == "cpu"


def rerun_in_vector_width(test_file, vector_bytes, selection):
    """Runs the tests of `test_file` that `selection` (-k) picks in a new process whose CPU
    kernels take `vector_bytes`-byte vector blocks: 64 with AVX-512, 32 without (csrc/cpu/simd.h).
    LVMFAST_CPU_VECTOR_BYTES forces either, so one machine checks both against the reference (the
    one its CPU lacks runs slowly, and correctly)."""
    import subprocess
    import sys

    env = {**os.environ, "LVMFAST_CPU_VECTOR_BYTES": vector_bytes, "LVMFAST_TEST_SEED": str(SEED)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file),
                          "-k", selection], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(test_file))), timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


@pytest.fixture(scope="session")
def emulated_cuda():
    """torch.ops.lvmfast_emulated: the real CUDA sources (kernels/ and csrc/cuda/) compiled against
    the CPU emulation of tests/cuda_emulator, taking CPU tensors. Built once (about a minute)."""
    from cuda_emulator import build

    return build.load()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
