"""Latent variable models."""
from lvmfast.models.ppca import PPCA
from lvmfast.models.vae import VAE

__all__ = ["PPCA", "VAE"]
