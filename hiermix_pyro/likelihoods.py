"""Count likelihoods p(x | z): negative binomial, zero-inflated NB and Poisson.

One parameterisation for all of them, written once: the mean is ``mu = l * rho`` with the
observed library size ``l`` and expression fractions ``rho`` from the decoder; the NB has a
per-gene inverse dispersion ``theta`` (``px_r`` in scVI).

The mixture models decode one mean per enumerated component (``log_mu`` of shape ``[K, B, G]``)
for one observed ``x`` ``[B, G]``. PyTorch's NB and Poisson broadcast their parameters to the
full shape before evaluating ``lgamma``, so the terms that do not depend on the mean
(``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)``) would be computed K times. The two
distributions below evaluate them at the shape of ``x`` once; only the terms in the mean are
evaluated per component. Their log-densities equal PyTorch's (tested).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.distributions import constraints
from torch.nn import functional as F

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
        return Poisson(log_mu).to_event(1)
    if likelihood not in ("nb", "zinb"):
        raise ValueError(f"unknown likelihood {likelihood!r}; valid: {', '.join(LIKELIHOODS)}")
    nb = NegativeBinomial(log_mu, log_theta)
    if likelihood == "nb":
        return nb.to_event(1)
    return dist.ZeroInflatedDistribution(nb, gate_logits=gate_logits).to_event(1)


class _LogMeanCounts(dist.TorchDistribution):
    """Counts with log mean ``log_mu`` (batch shape ``[..., G]``; no event dims of its own)."""

    arg_constraints = {"log_mu": constraints.real}
    support = constraints.nonnegative_integer

    def __init__(self, log_mu, batch_shape=None, validate_args=None):
        self.log_mu = log_mu
        super().__init__(torch.Size(batch_shape or log_mu.shape), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k in ("log_mu", "log_theta")})
        super(_LogMeanCounts, new).__init__(torch.Size(batch_shape), validate_args=False)
        return new

    @property
    def mean(self):
        return self.log_mu.exp().expand(self.batch_shape)

    def _full(self, log_p):  # broadcast a log-density to the batch shape (after an expand)
        return log_p if log_p.shape == self.batch_shape else log_p.expand(self.batch_shape)


class NegativeBinomial(_LogMeanCounts):
    """NB with mean ``mu`` and inverse dispersion ``theta``: variance ``mu + mu^2 / theta``.

    With logits ``eta = log mu - log theta``::

        log p(x) = lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)   (free of mu: at x's shape)
                   + x eta - (x + theta) softplus(eta)                  (per component)
    """

    arg_constraints = {"log_mu": constraints.real, "log_theta": constraints.real}

    def __init__(self, log_mu, log_theta, validate_args=None):
        self.log_theta = log_theta
        super().__init__(log_mu, torch.broadcast_shapes(log_mu.shape, log_theta.shape), validate_args)

    @property
    def variance(self):
        mu = self.mean
        return mu + mu**2 / self.log_theta.exp()

    def log_prob(self, x):
        if self._validate_args:
            self._validate_sample(x)
        theta = self.log_theta.exp()
        eta = self.log_mu - self.log_theta  # [K?, B, G]
        free_of_mu = torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1.0)  # [B, G]
        return self._full(free_of_mu + x * eta - (x + theta) * F.softplus(eta))

    def sample(self, sample_shape=torch.Size()):
        theta = self.log_theta.exp().expand(self.batch_shape)
        logits = (self.log_mu - self.log_theta).expand(self.batch_shape)
        return dist.NegativeBinomial(total_count=theta, logits=logits).sample(sample_shape)


class Poisson(_LogMeanCounts):
    """Poisson with mean ``mu``: ``log p(x) = x log mu - mu - lgamma(x + 1)``, the last at x's shape."""

    @property
    def variance(self):
        return self.mean

    def log_prob(self, x):
        if self._validate_args:
            self._validate_sample(x)
        return self._full(x * self.log_mu - self.log_mu.exp() - torch.lgamma(x + 1.0))

    def sample(self, sample_shape=torch.Size()):
        return torch.poisson(self.mean.expand(self._extended_shape(sample_shape)).contiguous())


class EvaluatedCounts(dist.TorchDistribution):
    """A count likelihood already evaluated at the observed counts ``x``: ``log_p [..., B]``.

    The observed site ``x`` of a model keeps its name and its log-density when log p(x | z) is
    computed by a compiled function (:meth:`~hiermix_pyro.models.base.CountModel.compile_likelihood`);
    it can only be scored at the ``x`` it was evaluated at, and cannot be sampled.
    """

    arg_constraints = {}
    support = constraints.nonnegative_integer

    def __init__(self, log_p, x, validate_args=None):
        self.log_p, self.x = log_p, x
        super().__init__(log_p.shape, x.shape[-1:], validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return EvaluatedCounts(self.log_p.expand(batch_shape), self.x)

    def log_prob(self, value):
        if value is not self.x and not torch.equal(value, self.x):
            raise ValueError(
                "EvaluatedCounts holds log p(x | z) at one x only; score other counts with the eager likelihood"
            )
        return self.log_p


def library_size(x: torch.Tensor) -> torch.Tensor:
    """Observed library size ``l``: total counts per cell, ``[B, G] -> [B, 1]``."""
    return x.sum(-1, keepdim=True)
