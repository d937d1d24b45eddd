"""Pure-torch references: readable, float64-capable, the ground truth every kernel is tested against."""
from lvmfast.reference.mixture import log_mog

__all__ = ["log_mog"]
