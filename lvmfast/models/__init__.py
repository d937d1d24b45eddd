"""Latent variable models."""
from lvmfast.models.diffusion import DDGM, DDPM
from lvmfast.models.hierarchical import TopDownVAE, TwoLevelVAE
from lvmfast.models.ppca import PPCA
from lvmfast.models.vae import VAE

__all__ = ["PPCA", "VAE", "TopDownVAE", "TwoLevelVAE"]
