"""Building blocks: the generalised soft-clipping activation and the encoder/decoder networks."""

from .activations import SoftClip
from .networks import CONV_ARCHITECTURES, ConvArchitecture, NetworkSpec, build_body, build_decoder_layers

__all__ = [
    "CONV_ARCHITECTURES",
    "ConvArchitecture",
    "NetworkSpec",
    "SoftClip",
    "build_body",
    "build_decoder_layers",
]
