"""Public op functions: validation, fake and autograd registration, backend choice."""
from lvmfast.ops.diffusion import forward_chain, p_step, q_posterior, q_sample
from lvmfast.ops.householder import householder_flow
from lvmfast.ops.mixture import log_mog
from lvmfast.ops.orthogonal import bjorck_orthonormalize
from lvmfast.ops.sylvester import sylvester_flow

__all__ = ["bjorck_orthonormalize", "forward_chain", "p_step", "q_posterior", "q_sample", "householder_flow", "log_mog", "sylvester_flow"]
