"""Encoder and decoder bodies, with ReLU or soft-clipping: the linear map, the multilayer perceptron, and the
paper's convolutional networks ``conv32`` (CIFAR-100) and ``conv64`` (CelebA).

Data stay flat, (..., D) with D = C*H*W in channel-major order (``.flatten(1)`` of an NCHW tensor); the conv
layers unflatten at their input and flatten at their output, folding any leading dimensions into the batch.
Kernel 4, stride 2, padding 1 halves (encoder) or doubles (decoder) the image side at every conv layer.

``conv32`` (latent d; the ``hidden``/``depth`` options do not apply to conv networks):
  encoder  3x32x32 -> conv 32x16x16 -> conv 64x8x8 -> conv 128x4x4 -> flatten 2048 -> Linear 256
           -> heads Linear 256 -> d (mean, log-variance)
  decoder  d -> Linear 256 -> Linear 2048 -> 128x4x4 -> convT 64x8x8 -> convT 32x16x16 -> convT 3x32x32
``conv64``:
  encoder  3x64x64 -> conv 64x32x32 -> conv 128x16x16 -> conv 256x8x8 -> conv 512x4x4 -> flatten 8192
           -> Linear 1024 -> heads Linear 1024 -> d
  decoder  d -> Linear 1024 -> Linear 8192 -> 512x4x4 -> convT 256x8x8 -> convT 128x16x16 -> convT 64x32x32
           -> convT 3x64x64
Every layer but the heads and the decoder's last one is followed by the activation. The decoder's last
transposed convolution has no per-channel bias but one bias per output pixel (D of them, ``decoder.out.bias``),
so that the decoder can start at the data's per-feature marginal as the linear and MLP decoders do.

The ``--model`` choices are the entries of :data:`MODELS`; :func:`register_model` adds more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..registry import Registry
from .activations import SoftClip, activation_spec
from .layers import Linear

# Head ranges of the paper's soft-clipping networks (docs/theory.md section 2).
MEAN_HEAD_RANGE = (-50.0, 50.0)
LOGVAR_HEAD_RANGE = (-20.0, 20.0)

# The paper's conv layers (docs/theory.md section 5).
CONV_KERNEL, CONV_STRIDE, CONV_PADDING = 4, 2, 1


@dataclass(frozen=True)
class ConvArchitecture:
    """A conv network's input image (C, H, W), the channels of its conv layers, and its fully connected width."""

    image: tuple[int, int, int]
    channels: tuple[int, ...]
    hidden: int

    @property
    def data_dim(self) -> int:
        """D = C*H*W, the flat input size the network accepts."""
        c, h, w = self.image
        return c * h * w

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """Shape (C', H', W') of the last conv layer's output: each layer halves the image side."""
        scale = 2 ** len(self.channels)
        return self.channels[-1], self.image[1] // scale, self.image[2] // scale


CONV_ARCHITECTURES = {
    "conv32": ConvArchitecture(image=(3, 32, 32), channels=(32, 64, 128), hidden=256),
    "conv64": ConvArchitecture(image=(3, 64, 64), channels=(64, 128, 256, 512), hidden=1024),
}


@dataclass(frozen=True)
class NetworkSpec:
    """Shape of a body: ``linear`` (no hidden layer), ``mlp`` with ``depth`` hidden layers of ``hidden`` units,
    or a conv network named in :data:`CONV_ARCHITECTURES` (which fixes its own widths)."""

    kind: str = "mlp"
    hidden: int = 200
    depth: int = 2
    activation: str = "relu"
    softclip_s: float = 5.0
    softclip_s1: float = 0.0
    softclip_s2: float = 50.0

    def activation_layer(self) -> nn.Module:
        """The hidden-layer non-linearity."""
        return activation_spec(self.activation).build(self.softclip_s, self.softclip_s1, self.softclip_s2)

    def head_clip(self, bounds: tuple[float, float]) -> nn.Module:
        """Soft-clipping of an output head to ``bounds`` for smooth networks; identity otherwise.

        The linear model keeps unclipped heads so that its closed forms stay exact.
        """
        if model_spec(self.kind).linear or not activation_spec(self.activation).smooth:
            return nn.Identity()
        return SoftClip(self.softclip_s, *bounds)


def _on_images(layers: nn.Module, x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """``layers`` applied to flat features x (..., C*H*W) viewed as images ``shape``; returns (..., C'*H'*W')."""
    lead = x.shape[:-1]
    y = layers(x.reshape(lead.numel(), *shape))
    return y.reshape(*lead, y.shape[1:].numel())


class FlatImageLayers(nn.Module):
    """Image layers on flat features: (..., C*H*W) -> (..., C'*H'*W') for any leading dimensions."""

    def __init__(self, shape: tuple[int, int, int], *layers: nn.Module) -> None:
        super().__init__()
        self.shape = shape
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _on_images(self.layers, x, self.shape)


class UntiedConvTranspose2d(nn.Module):
    """A transposed conv layer (kernel 4, stride 2, padding 1) on flat features with one bias per output pixel:
    (..., C*H*W) -> (..., C_out*2H*2W). The untied ``bias`` (zero at start) can hold a per-feature data marginal."""

    def __init__(self, shape: tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        self.shape = shape
        self.conv = nn.ConvTranspose2d(shape[0], out_channels, CONV_KERNEL, CONV_STRIDE, CONV_PADDING, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels * (2 * shape[1]) * (2 * shape[2])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _on_images(self.conv, x, self.shape) + self.bias


def _conv_encoder_body(arch: ConvArchitecture, spec: NetworkSpec) -> nn.Module:
    """Conv layers from the image to ``arch.feature_shape``, then a fully connected layer to ``arch.hidden``."""
    convs: list[nn.Module] = []
    in_channels = arch.image[0]
    for out_channels in arch.channels:
        convs += [nn.Conv2d(in_channels, out_channels, CONV_KERNEL, CONV_STRIDE, CONV_PADDING),
                  spec.activation_layer()]
        in_channels = out_channels
    c, h, w = arch.feature_shape
    return nn.Sequential(FlatImageLayers(arch.image, *convs), Linear(c * h * w, arch.hidden),
                         spec.activation_layer())


def _conv_decoder(latent_dim: int, arch: ConvArchitecture, spec: NetworkSpec) -> tuple[nn.Module, nn.Module]:
    """The mirror of :func:`_conv_encoder_body`: fully connected layers to the conv features, transposed convs
    back up, and the last transposed conv to the image's channels as an :class:`UntiedConvTranspose2d`."""
    c, h, w = arch.feature_shape
    convs: list[nn.Module] = []
    for in_channels, out_channels in zip(arch.channels[:0:-1], arch.channels[-2::-1], strict=True):
        convs += [nn.ConvTranspose2d(in_channels, out_channels, CONV_KERNEL, CONV_STRIDE, CONV_PADDING),
                  spec.activation_layer()]
    body = nn.Sequential(
        Linear(latent_dim, arch.hidden), spec.activation_layer(),
        Linear(arch.hidden, c * h * w), spec.activation_layer(),
        FlatImageLayers((c, h, w), *convs),
    )
    image_c, image_h, image_w = arch.image
    return body, UntiedConvTranspose2d((arch.channels[0], image_h // 2, image_w // 2), image_c)


def build_body(in_dim: int, spec: NetworkSpec) -> tuple[nn.Module, int]:
    """The layers before the output heads, and their output width (a conv body needs in_dim = C*H*W)."""
    return model_spec(spec.kind).encoder_body(in_dim, spec)


def build_decoder_layers(latent_dim: int, data_dim: int, spec: NetworkSpec) -> tuple[nn.Module, nn.Module]:
    """A decoder's body and its output layer ``out``, whose ``bias`` has one entry per data feature (D of them)."""
    return model_spec(spec.kind).decoder(latent_dim, data_dim, spec)


def _linear_body(in_dim: int, spec: NetworkSpec) -> tuple[nn.Module, int]:
    """No layer at all: the heads act on the input."""
    return nn.Identity(), in_dim


def _mlp_body(in_dim: int, spec: NetworkSpec) -> tuple[nn.Module, int]:
    """``spec.depth`` fully connected layers of ``spec.hidden`` units, each followed by the activation."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(spec.depth):
        layers += [Linear(width, spec.hidden), spec.activation_layer()]
        width = spec.hidden
    return nn.Sequential(*layers), width


def dense_decoder(latent_dim: int, data_dim: int, spec: NetworkSpec) -> tuple[nn.Module, nn.Module]:
    """The body of ``spec.kind`` on the latent code, then a fully connected output layer to the D features."""
    body, width = build_body(latent_dim, spec)
    return body, Linear(width, data_dim)


@dataclass(frozen=True)
class ModelSpec:
    """One ``--model`` choice: the encoder's body from (input width, :class:`NetworkSpec`) with its output width,
    the decoder's body and output layer from (latent dim, data dim, :class:`NetworkSpec`), and facts: ``linear``
    (no hidden layer: the Linear VAE under a Gaussian likelihood, with unclipped heads) and ``image`` (the
    (C, H, W) images it takes, flattened; None: data of any width)."""

    name: str
    encoder_body: Callable[[int, NetworkSpec], tuple[nn.Module, int]]
    decoder: Callable[[int, int, NetworkSpec], tuple[nn.Module, nn.Module]] = dense_decoder
    linear: bool = False
    image: tuple[int, int, int] | None = None


def _conv_model(name: str) -> ModelSpec:
    """The entry of the conv network ``name`` of :data:`CONV_ARCHITECTURES`."""
    arch = CONV_ARCHITECTURES[name]
    return ModelSpec(name, lambda in_dim, spec: (_conv_encoder_body(arch, spec), arch.hidden),
                     lambda latent_dim, data_dim, spec: _conv_decoder(latent_dim, arch, spec), image=arch.image)


MODELS: Registry[ModelSpec] = Registry("model", ((spec.name, spec) for spec in (
    ModelSpec("linear", _linear_body, linear=True),
    ModelSpec("mlp", _mlp_body),
    _conv_model("conv32"),
    _conv_model("conv64"),
)))


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` as a new ``--model`` choice, for configurations, sweeps and the CLI alike."""
    return MODELS.register(spec.name, spec)


def model_spec(name: str) -> ModelSpec:
    """The registered entry called ``name``; a ValueError listing the known names otherwise."""
    return MODELS.lookup(name)
