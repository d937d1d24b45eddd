"""lvmfast: latent variable models on fused CPU / CUDA / Triton kernels."""
from lvmfast._backend import backends, current_backend, use_backend
from lvmfast.ops import bjorck_orthonormalize, householder_flow, log_mog, sylvester_flow
from lvmfast import diffusion  # Schedule, q_sample, q_posterior, p_step, forward_chain, sample
from lvmfast import distributions  # VonMisesFisher, HypersphericalUniform (torch only, light)

__version__ = "0.1.0"
__all__ = ["backends", "bjorck_orthonormalize", "current_backend", "diffusion", "distributions",
           "householder_flow", "log_mog", "sylvester_flow", "use_backend", "__version__"]
