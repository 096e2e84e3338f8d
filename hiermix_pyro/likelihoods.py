"""Count likelihoods p(x | z): negative binomial, zero-inflated NB and Poisson.

One parameterisation for all of them, written once: the mean is ``mu = l * rho`` with the
observed library size ``l`` and expression fractions ``rho`` from the decoder; the NB has a
per-gene inverse dispersion ``theta`` (``px_r`` in scVI).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

from .config import LIKELIHOODS


def count_distribution(likelihood: str, log_mu, log_theta=None, gate_logits=None) -> dist.TorchDistribution:
    """Distribution over a cell's counts ``[..., G]`` (one event of G genes).

    Parameters
    ----------
    likelihood: "nb", "zinb" or "poisson".
    log_mu: ``[..., G]`` log mean, ``log l + log rho``.
    log_theta: ``[G]`` log inverse dispersion (NB and ZINB).
    gate_logits: ``[..., G]`` logits of the zero-inflation gate (ZINB).
    """
    if likelihood == "poisson":
        return dist.Poisson(log_mu.exp()).to_event(1)
    if likelihood not in ("nb", "zinb"):
        raise ValueError(f"unknown likelihood {likelihood!r}; valid: {', '.join(LIKELIHOODS)}")
    theta = log_theta.exp()
    # Pyro's NB(total_count=theta, logits=eta) has mean theta * exp(eta): eta = log mu - log theta
    # gives mean mu, and stays finite where mu is tiny (no probs near 0 or 1).
    logits = log_mu - log_theta
    if likelihood == "nb":
        return dist.NegativeBinomial(total_count=theta, logits=logits).to_event(1)
    return dist.ZeroInflatedNegativeBinomial(
        total_count=theta, logits=logits, gate_logits=gate_logits
    ).to_event(1)


def library_size(x: torch.Tensor) -> torch.Tensor:
    """Observed library size ``l``: total counts per cell, ``[B, G] -> [B, 1]``."""
    return x.sum(-1, keepdim=True)
