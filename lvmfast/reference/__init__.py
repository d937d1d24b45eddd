"""Pure-torch references: readable, float64-capable, the ground truth every kernel is tested against."""
from lvmfast.reference.diffusion import forward_chain, p_step, q_posterior, q_sample
from lvmfast.reference.householder import householder_flow
from lvmfast.reference.mixture import log_mog
from lvmfast.reference.orthogonal import bjorck_orthonormalize
from lvmfast.reference.sylvester import sylvester_flow

__all__ = ["bjorck_orthonormalize", "forward_chain", "p_step", "q_posterior", "q_sample", "householder_flow", "log_mog", "sylvester_flow"]
