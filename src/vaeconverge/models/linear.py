"""The Linear VAE and probabilistic PCA: the closed forms that serve as the project's correctness oracle.

Decoder G(z) = W z + b with likelihood N(G(z), c^2 I), so the marginal is p(x) = N(b, W W^T + c^2 I)
(Tipping & Bishop 1999), and the maximum-likelihood W, b, c^2 are those of probabilistic PCA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import MultivariateNormal

from .vae import VAE, LinearEncoder


@dataclass(frozen=True)
class PPCASolution:
    """Maximum-likelihood pPCA parameters and the average log-likelihood they attain on the data."""

    weight: torch.Tensor
    bias: torch.Tensor
    noise_var: float
    log_likelihood: float


def ppca_optimum(x: torch.Tensor, latent_dim: int, noise_var: float | None = None) -> PPCASolution:
    """Closed-form pPCA maximum likelihood for data ``x`` (N, D), in float64.

    b is the mean; with eigenvalues l_1 >= ... >= l_D of the (1/N) sample covariance, c^2 is the mean of
    the D - k discarded ones (unless ``noise_var`` fixes it) and W = U_k (L_k - c^2 I)_+^{1/2}.
    """
    x = x.double()
    n, dim = x.shape
    if not 0 < latent_dim <= dim:
        raise ValueError(f"latent_dim must lie in [1, {dim}], got {latent_dim}")
    bias = x.mean(0)
    centred = x - bias
    cov = centred.T @ centred / n
    eigvals, eigvecs = torch.linalg.eigh(cov)
    eigvals, eigvecs = eigvals.flip(0).clamp_min(0.0), eigvecs.flip(1)
    if noise_var is None:
        noise_var = eigvals[latent_dim:].mean().item() if latent_dim < dim else 0.0
        if noise_var <= 0:
            raise ValueError("the discarded eigenvalues are zero: the ML noise variance is degenerate")
    scale = (eigvals[:latent_dim] - noise_var).clamp_min(0.0).sqrt()
    weight = eigvecs[:, :latent_dim] * scale
    cov_model = weight @ weight.T + noise_var * torch.eye(dim, dtype=x.dtype, device=x.device)
    log_lik = MultivariateNormal(bias, covariance_matrix=cov_model).log_prob(x).mean().item()
    return PPCASolution(weight=weight, bias=bias, noise_var=float(noise_var), log_likelihood=log_lik)


class LinearVAE(VAE):
    """VAE with linear encoder and decoder and a Gaussian likelihood: log p(x) and the ELBO in closed form."""

    encoder: LinearEncoder

    def marginal(self) -> MultivariateNormal:
        """p_theta(x) = N(b, W W^T + c^2 I)."""
        weight, bias = self.decoder.out.weight, self.decoder.out.bias
        identity = torch.eye(len(bias), dtype=weight.dtype, device=weight.device)
        cov = weight @ weight.T + self.likelihood.variance * identity
        return MultivariateNormal(bias, covariance_matrix=cov)

    def exact_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.marginal().log_prob(x)

    def exact_elbo(self, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        """E_q[log p(x | z)] - beta KL(q || N(0, I)) per example, the expectation taken in closed form."""
        weight, bias = self.decoder.out.weight, self.decoder.out.bias
        q = self.encode(x)
        var_c = self.likelihood.variance
        # E_q ||x - W z - b||^2 = ||x - W m - b||^2 + tr(W L L^T W^T)
        residual = (x - q.mean @ weight.T - bias).square().sum(-1)
        trace = (weight @ q.scale_tril).square().sum()
        dim = x.shape[-1]
        expected_log_lik = -0.5 * ((residual + trace) / var_c + dim * (math.log(2 * math.pi) + var_c.log()))
        return expected_log_lik - beta * q.kl_to_prior()

    @torch.no_grad()
    def set_exact_posterior_(self) -> None:
        """Set the encoder to the exact posterior N(M^-1 W^T (x - b), c^2 M^-1), M = W^T W + c^2 I,
        after which the ELBO equals log p(x) for every x."""
        weight, bias = self.decoder.out.weight, self.decoder.out.bias
        var_c = self.likelihood.variance
        identity = torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)
        m_inv = torch.linalg.inv(weight.T @ weight + var_c * identity)
        proj = m_inv @ weight.T
        encoder = self.encoder  # its mean acts on standardised inputs (x - shift) / scale
        encoder.mean.weight.copy_(proj * encoder.input_scale)
        encoder.mean.bias.copy_(proj @ (encoder.input_shift - bias))
        tril = torch.linalg.cholesky(var_c * m_inv)
        encoder.log_diag.copy_(tril.diagonal().log())
        encoder.off_diag.copy_(tril[encoder.tril_index[0], encoder.tril_index[1]])
