"""Build the model a run configuration asks for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..nn.networks import NetworkSpec, model_spec
from ..validation import ConfigError
from .linear import LinearVAE
from .vae import VAE, BernoulliLikelihood, Decoder, GaussianEncoder, GaussianLikelihood, LinearEncoder

if TYPE_CHECKING:
    from ..config import RunConfig


def network_spec(config: RunConfig) -> NetworkSpec:
    """The encoder/decoder body shape named by the configuration."""
    return NetworkSpec(
        kind=config.model,
        hidden=config.hidden,
        depth=config.depth,
        activation=config.activation,
        softclip_s=config.softclip_s,
        softclip_s1=config.softclip_s1,
        softclip_s2=config.softclip_s2,
    )


def build_vae(config: RunConfig, data_dim: int) -> VAE:
    """A VAE for D = ``data_dim``; the linear-Gaussian case is a :class:`LinearVAE` with closed forms.

    Raises :class:`ConfigError` when a conv network is asked for data that are not its images.
    """
    spec = network_spec(config)
    entry = model_spec(config.model)
    if entry.image is not None:
        c, h, w = entry.image
        if data_dim != c * h * w:
            raise ConfigError(
                "--model",
                f"{config.model} takes {c}x{h}x{w} images, flattened to D = {c * h * w} features, "
                f"but the data have D = {data_dim}",
            )
    linear_gaussian = entry.linear and config.likelihood == "gaussian"
    if linear_gaussian:
        encoder = LinearEncoder(data_dim, config.latent_dim)
    else:
        encoder = GaussianEncoder(data_dim, config.latent_dim, spec)
    decoder = Decoder(config.latent_dim, data_dim, spec, config.likelihood)
    if config.likelihood == "gaussian":
        likelihood = GaussianLikelihood(config.decoder_std, learn=config.learn_variance)
    else:
        likelihood = BernoulliLikelihood()
    cls = LinearVAE if linear_gaussian else VAE
    return cls(encoder, decoder, likelihood, config.latent_dim)
