"""lvmfast: latent variable models on fused CPU / CUDA / Triton kernels."""
from lvmfast._backend import backends, current_backend, use_backend
from lvmfast.ops import log_mog

__version__ = "0.1.0"
__all__ = ["backends", "current_backend", "log_mog", "use_backend", "__version__"]
