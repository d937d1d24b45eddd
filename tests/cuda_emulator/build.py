"""Builds the CUDA code of lvmfast (kernels/*.cu and their csrc/cuda/ glue, unchanged but for the
mechanical rewrites below) against the CPU emulation in include/, as a torch extension whose ops
are `torch.ops.lvmfast_emulated.<op>` on CPU tensors. Tests then run the real CUDA sources here.

Rewrites, on copies in the build folder:
  * kernels/*.cu: the runtime header included first, as nvcc does;
    `kernel<<<grid, block, smem, stream>>>(args)` -> `::emu::launch(kernel, grid, block, smem,
    stream)(args)` (in kernels/*.cuh too); `extern __shared__ ... name[];` -> a pointer to the
    emulated block's dynamic shared memory; `#include <cassert>` -> include/emulated_assert.h (a
    failing device-side assert raises instead of aborting). Compiled as C++.
  * csrc/cuda/*.cpp: registered for the CPU key of the `lvmfast_emulated` library; `is_cuda()`
    checks accept CPU tensors; `at::empty` allocates NaN-filled tensors (emu::poisoned_empty).
  * csrc/ops.cpp: the same schemas, under `lvmfast_emulated`.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = Path(__file__).resolve().parent / "include"
LIBRARY = "lvmfast_emulated"
FAMILIES = ("sylvester", "householder", "orthogonal", "mixture", "diffusion")

_DYNAMIC_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?unsigned\s+char\s+(\w+)\s*\[\s*\]\s*;")


def rewrite_launches(source: str) -> str:
    """`name<targs><<<config>>>(` -> `::emu::launch(name<targs>, config)(`."""
    out, pos = [], 0
    while (open_at := source.find("<<<", pos)) != -1:
        close_at = source.find(">>>", open_at)
        start, depth = open_at - 1, 0
        while start >= 0:  # back over the kernel's name and its template arguments
            c = source[start]
            if c == ">":
                depth += 1
            elif c == "<":
                depth -= 1
            elif depth == 0 and not (c.isalnum() or c in "_:"):
                break
            start -= 1
        name = source[start + 1:open_at]
        out.append(source[pos:start + 1] + f"::emu::launch({name}, {source[open_at + 3:close_at]})")
        pos = close_at + 3
    out.append(source[pos:])
    return "".join(out)


def rewrite_kernel(source: str) -> str:
    source = _DYNAMIC_SHARED.sub(r"unsigned char* \1 = emulated_dynamic_shared();", source)
    # a device-side assert must raise, not abort the test process (include/emulated_assert.h)
    source = re.sub(r"#include\s*<(?:cassert|assert\.h)>", "#include <emulated_assert.h>", source)
    # nvcc includes the runtime header implicitly
    return "#include <cuda_runtime.h>\n" + rewrite_launches(source)


def rewrite_glue(source: str) -> str:
    source = re.sub(r"TORCH_LIBRARY_IMPL\(\s*lvmfast\s*,\s*CUDA\s*,", f"TORCH_LIBRARY_IMPL({LIBRARY}, CPU,", source)
    # outputs and workspaces start as NaN (include/ATen/cuda/CUDAContext.h), not as whatever
    # the host's allocator returns, often zeros that would hide an element a kernel never writes
    source = re.sub(r"\bat::empty\(", "::emu::poisoned_empty(", source)
    return source.replace(".is_cuda()", ".is_cpu()")


def rewrite_schemas(source: str) -> str:
    source = re.sub(r"TORCH_LIBRARY\(\s*lvmfast\s*,", f"TORCH_LIBRARY({LIBRARY},", source)
    # the Python module entry point belongs to lvmfast._C, not to this library
    return re.sub(r'extern "C" PyObject\* PyInit__C\(void\) \{.*?\n\}\n', "", source, flags=re.S)


def _write(path: Path, text: str) -> None:
    """Writes only what changed: an unchanged file keeps its mtime, so ninja does not rebuild it."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def prepare_kernels(families: list[str], build_dir: Path) -> list[Path]:
    """Writes kernels/*.cuh and the kernels of `families` rewritten under build_dir/kernels and
    returns the kernel files to compile."""
    (build_dir / "kernels").mkdir(parents=True, exist_ok=True)
    for header in (ROOT / "kernels").glob("*.cuh"):  # a header may launch too (launch.cuh)
        _write(build_dir / "kernels" / header.name, rewrite_launches(header.read_text()))
    kernels = [build_dir / f"kernels/{family}_kernels.cpp" for family in families]
    for family, kernel in zip(families, kernels):
        _write(kernel, rewrite_kernel((ROOT / f"kernels/{family}.cu").read_text()))
    return kernels


def prepare(families: list[str], build_dir: Path) -> list[Path]:
    """Writes the rewritten sources under build_dir (mirroring the repository's layout, so that
    relative includes resolve) and returns the files to compile."""
    (build_dir / "csrc/cuda").mkdir(parents=True, exist_ok=True)
    for header in (ROOT / "csrc").glob("*.h"):
        _write(build_dir / "csrc" / header.name, header.read_text())
    _write(build_dir / "csrc/cuda/dispatch.h", rewrite_glue((ROOT / "csrc/cuda/dispatch.h").read_text()))
    sources = [build_dir / "csrc/ops.cpp"]
    _write(sources[0], rewrite_schemas((ROOT / "csrc/ops.cpp").read_text()))
    for family in families:
        glue = build_dir / f"csrc/cuda/{family}.cpp"
        _write(glue, rewrite_glue((ROOT / f"csrc/cuda/{family}.cpp").read_text()))
        sources.append(glue)
    return sources + prepare_kernels(families, build_dir)


def build_base() -> Path:
    return Path(os.environ.get("LVMFAST_EMULATOR_BUILD", Path.home() / ".cache/lvmfast_emulator"))


def load(families: list[str] | None = None, verbose: bool = False):
    """Compiles (or reuses) the emulated extension for `families` and loads it into torch.ops.
    By default all of them, or those of LVMFAST_EMULATOR_FAMILIES="sylvester ..." (a variant's
    build for one family's tests need not compile the others)."""
    from torch.utils import cpp_extension

    if families is None:
        families = os.environ.get("LVMFAST_EMULATOR_FAMILIES", "").split() or list(FAMILIES)

    name = LIBRARY if families == list(FAMILIES) else f"{LIBRARY}_{'_'.join(families)}"
    # LVMFAST_EMULATOR_DEFINES="X=1 Y=2": the kernels' -D tuning constants, e.g. to run the
    # emulated tests on a variant that benchmarks/gpu_kernels.sh times (its own build folder)
    defines = os.environ.get("LVMFAST_EMULATOR_DEFINES", "").split()
    folder = name + "".join("-" + re.sub(r"\W", "_", d) for d in defines)
    build_dir = build_base() / folder
    sources = prepare(families, build_dir / "src")  # ninja rebuilds only what changed
    cpp_extension.load(
        name=name, sources=[str(s) for s in sources], build_directory=str(build_dir),
        extra_include_paths=[str(INCLUDE)],
        extra_cflags=["-O1", "-DLVMFAST_CUDA_EMULATOR", *(f"-D{d}" for d in defines)],
        is_python_module=False, verbose=verbose)
    return getattr(__import__("torch").ops, LIBRARY)


@functools.cache
def _compiler_version() -> bytes:
    import subprocess

    return subprocess.run(["g++", "--version"], capture_output=True).stdout


def _compile_cached(flags: list[str], source: Path, objects: Path) -> Path:
    """Compiles `source` to an object named by the hash of its preprocessed text, or reuses it:
    the variants of a program differ in one family's -D constants, so most of their objects are
    the same. -fmacro-prefix-map keeps the build folder's path out of __FILE__, and so out of
    the text, and -P the line markers."""
    import hashlib
    import subprocess

    flags = [*flags, f"-fmacro-prefix-map={source.parent}=."]
    text = subprocess.run(["g++", *flags, "-E", "-P", str(source)], capture_output=True)
    if text.returncode != 0:
        raise RuntimeError(f"preprocessing {source} failed:\n{text.stderr.decode()[-4000:]}")
    key = hashlib.sha256(text.stdout + _compiler_version())
    key.update(" ".join(f for f in flags if not f.startswith(("-D", "-fmacro-prefix-map"))).encode())
    obj = objects / f"{source.stem}-{key.hexdigest()[:24]}.o"
    if not obj.exists():
        partial = obj.with_suffix(f".{os.getpid()}.tmp")  # renamed when whole: builds may run at once
        done = subprocess.run(["g++", *flags, "-c", str(source), "-o", str(partial)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {source} failed:\n{done.stderr[-4000:]}")
        os.replace(partial, obj)
    return obj


def build_program(source: Path, families: list[str], output: Path, defines: tuple[str, ...] = ()) -> Path:
    """Compiles a standalone CUDA program (a .cu with main(), such as
    benchmarks/kernels/flow_kernels.cu) and the kernels of `families` against the emulation, with
    the same rewrites, into the executable `output`. No torch: the program's runtime calls are
    the host ones at the end of include/cuda_runtime.h. Objects are cached by content under
    build_base()/objects and compiled in parallel."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    src = output.parent / "src"
    sources = prepare_kernels(families, src)
    program = src / source.resolve().relative_to(ROOT).with_suffix(".cpp")
    program.parent.mkdir(parents=True, exist_ok=True)
    _write(program, rewrite_kernel(source.read_text()))
    objects = build_base() / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    flags = ["-std=c++17", "-O1", "-DLVMFAST_CUDA_EMULATOR", f"-I{INCLUDE}", *(f"-D{d}" for d in defines)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        objs = list(pool.map(lambda s: _compile_cached(flags, s, objects), sources + [program]))
    done = subprocess.run(["g++", *map(str, objs), "-o", str(output)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"linking {output} failed:\n{done.stderr[-4000:]}")
    return output
