"""lvmfast: latent variable models on fused CPU / CUDA / Triton kernels."""
from lvmfast._backend import backends, current_backend, use_backend
from lvmfast.ops import bjorck_orthonormalize, householder_flow
from lvmfast.ops import log_mog
from lvmfast.ops import sylvester_flow
from lvmfast import diffusion  # lvmfast.diffusion: Schedule, q_sample, p_step, sample, ...
from lvmfast import distributions  # lvmfast.distributions: VonMisesFisher, HypersphericalUniform (torch only)

__version__ = "0.1.0"
__all__ = ["backends", "bjorck_orthonormalize", "current_backend", "householder_flow", "log_mog", "sylvester_flow", "use_backend", "__version__"]
