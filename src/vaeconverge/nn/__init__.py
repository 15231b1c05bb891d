"""Building blocks: the generalised soft-clipping activation and the encoder/decoder networks."""

from .activations import SoftClip
from .networks import NetworkSpec, build_body

__all__ = ["NetworkSpec", "SoftClip", "build_body"]
