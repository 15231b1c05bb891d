"""Building blocks: the generalised soft-clipping activation, the encoder/decoder networks, and the registries of
``--model`` and ``--activation`` choices."""

from .activations import ACTIVATIONS, ActivationSpec, SoftClip, activation_spec, register_activation
from .networks import (
    CONV_ARCHITECTURES,
    MODELS,
    ConvArchitecture,
    ModelSpec,
    NetworkSpec,
    build_body,
    build_decoder_layers,
    model_spec,
    register_model,
)

__all__ = [
    "ACTIVATIONS",
    "CONV_ARCHITECTURES",
    "MODELS",
    "ActivationSpec",
    "ConvArchitecture",
    "ModelSpec",
    "NetworkSpec",
    "SoftClip",
    "activation_spec",
    "build_body",
    "build_decoder_layers",
    "model_spec",
    "register_activation",
    "register_model",
]
