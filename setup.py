"""Build lvmfast and its compiled extension lvmfast._C.

Switches (environment variables):
  FORCE_ONLY_CPU=1           never build the CUDA kernels
  FORCE_CUDA=1               build the CUDA kernels even if no GPU is visible (needs a CUDA torch)
  LVMFAST_REQUIRE_EXTENSION=1  fail the install if lvmfast._C does not build (CI sets it)
  MAX_JOBS=N                 parallel compile jobs (torch's ninja builder)
Without torch, a compiler or CUDA, the install still succeeds and lvmfast runs on its
pure-torch reference (with one warning at import).
"""
import glob
import os
import sys
import warnings

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def extension_and_cmdclass():
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        if _flag("LVMFAST_REQUIRE_EXTENSION"):
            raise RuntimeError("LVMFAST_REQUIRE_EXTENSION=1 but torch is not importable by the "
                               f"Python running this build ({sys.executable})")
        warnings.warn("lvmfast: torch is not importable at build time; installing the pure-torch "
                      "reference only (install torch first and use --no-build-isolation)")
        return [], {}

    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-DNDEBUG"]
    link = ["-fopenmp"]
    with_cuda = (not _flag("FORCE_ONLY_CPU") and torch.version.cuda is not None
                 and cpp_extension.CUDA_HOME is not None
                 and (torch.cuda.is_available() or _flag("FORCE_CUDA")))
    if _flag("FORCE_CUDA") and not with_cuda:
        raise RuntimeError("FORCE_CUDA=1 but torch has no CUDA or nvcc was not found")
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("kernels/*.cu"))
        nvcc = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "-DNDEBUG"]
        # LVMFAST_CUDA_DEFINES="X=1 Y=2": the kernels' -D tuning constants (kernels/*.cu), e.g. a
        # variant that benchmarks/gpu_kernels.sh timed, for benchmarks/gpu_check.sh to test
        nvcc += [f"-D{d}" for d in os.environ.get("LVMFAST_CUDA_DEFINES", "").split()]
        ext = cpp_extension.CUDAExtension(
            "lvmfast._C", sources, extra_compile_args={"cxx": cxx + ["-DLVMFAST_WITH_CUDA"], "nvcc": nvcc},
            extra_link_args=link)
    else:
        ext = cpp_extension.CppExtension("lvmfast._C", sources, extra_compile_args={"cxx": cxx},
                                         extra_link_args=link)

    class OptionalBuildExt(cpp_extension.BuildExtension):
        """Turns a failed compile into a warning unless LVMFAST_REQUIRE_EXTENSION is set."""

        def run(self):
            try:
                super().run()
            except Exception as err:  # compiler missing, nvcc error, ...
                if _flag("LVMFAST_REQUIRE_EXTENSION"):
                    raise
                print(f"WARNING: lvmfast._C failed to build ({err}); lvmfast will run on its "
                      "pure-torch reference backend", file=sys.stderr)

    return [ext], {"build_ext": OptionalBuildExt.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_and_cmdclass()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
