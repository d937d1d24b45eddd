"""Public op functions: validation, fake and autograd registration, backend choice."""
from lvmfast.ops.mixture import log_mog

__all__ = ["log_mog"]
