"""Distributions on the hypersphere: von Mises-Fisher and the uniform, plus the log-Bessel helper."""
from lvmfast.distributions.bessel import bessel_iv_ratio, log_bessel_iv, log_bessel_iv_scaled
from lvmfast.distributions.von_mises_fisher import HypersphericalUniform, VonMisesFisher

__all__ = ["HypersphericalUniform", "VonMisesFisher", "bessel_iv_ratio", "log_bessel_iv",
           "log_bessel_iv_scaled"]
