"""VAE with the VampPrior: the prior is the aggregate posterior of K learned pseudo-inputs.

References: Tomczak & Welling (2018), VAE with a VampPrior, AISTATS; Stirn & Knowles (2025),
The VampPrior Mixture Model, AISTATS (the single-cell setting and the clustering read-out).
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..nn import Encoder
from ..priors import GaussianMixture
from .base import CountModel, n_batches

DEFAULT_K = 100  # the paper's K for vampprior, gmm and vmm when n_components is not set


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """softplus^{-1}(y) = y + log(1 - exp(-y)), for y > 0."""
    return y + torch.log(-torch.expm1(-y))


def pseudo_input_init(adata, K: int, seed: int = 0):
    """K distinct training cells, drawn without replacement with ``seed``, as initial pseudo-inputs:
    counts ``[K, G]``, one-hot batches ``[K, S]`` or None. Only those K rows are densified."""
    from ..train import CountTensors  # local: train imports nothing from models, keep it that way

    train = adata[(adata.obs["split"] == "train").to_numpy()] if "split" in adata.obs else adata
    if K > train.n_obs:
        raise ValueError(
            f"n_components={K} pseudo-inputs need as many distinct training cells; "
            f"there are {train.n_obs}: lower n_components"
        )
    idx = np.sort(np.random.default_rng(seed).choice(train.n_obs, size=K, replace=False))
    return CountTensors.from_adata(train[idx])[:]


class PseudoInputs(nn.Module):
    """K pseudo-inputs u_k = (counts, batch): used in p(z) = (1/K) sum_k q(z | u_k).

    Counts go through softplus (non-negative, like real counts, with a gradient everywhere); the
    batch part, when there is one, through softmax (a point on the simplex, like a one-hot).
    """

    def __init__(self, K: int, n_genes: int, n_batches: int = 0):
        super().__init__()
        self.raw_counts = nn.Parameter(torch.randn(K, n_genes))
        self.batch_logits = nn.Parameter(torch.zeros(K, n_batches)) if n_batches else None

    @torch.no_grad()
    def init_from_cells(self, x: torch.Tensor, s: torch.Tensor | None = None) -> None:
        self.raw_counts.copy_(inverse_softplus(x.clamp(min=1e-3)))  # [K, G]
        if s is not None and self.batch_logits is not None:
            self.batch_logits.copy_(3.0 * s)  # softmax puts ~90% (S=3) on the cell's batch

    def forward(self) -> tuple[torch.Tensor, torch.Tensor | None]:  # -> [K, G], [K, S] | None
        s = None if self.batch_logits is None else F.softmax(self.batch_logits, -1)
        return F.softplus(self.raw_counts), s


class VampPrior(CountModel):
    """VampPrior: a uniform mixture of the encoder's posteriors at K pseudo-inputs.

    Generative process, for each cell n::

        z_n ~ (1/K) sum_k N(mu_phi(u_k), diag sigma_phi^2(u_k))       u_k = (softplus(a_k), softmax(b_k))
        x_n | z_n, s_n ~ NB(l_n * softmax(f(z_n, s_n)), theta)

    Guide: q(z_n | x_n, s_n) = N(mu_phi(x_n, s_n), diag sigma_phi^2(x_n, s_n)): the same encoder
    phi as in the prior. The pseudo-inputs are trained with the ELBO, jointly with encoder and
    decoder (Tomczak & Welling): no EM step. Cluster of a cell: the component with the highest
    responsibility, argmax_k E_q[log N(z_n | mu_phi(u_k), sigma_phi^2(u_k))].
    """

    options = ("n_components",)

    def __init__(
        self, n_genes: int, n_batches: int = 0, config: ModelConfig = ModelConfig(), n_components: int = DEFAULT_K
    ):
        super().__init__(n_genes, n_batches, config)
        self.level_sizes = (n_components,)
        self.encoder = Encoder(n_genes, n_batches, config.hidden_dims, config.latent_dim)  # q(z | x, s) and p(z)
        self.u = PseudoInputs(n_components, n_genes, n_batches)

    @classmethod
    def from_adata(cls, adata, config: ModelConfig = ModelConfig(), seed: int = 0) -> VampPrior:
        model = cls(adata.n_vars, n_batches(adata), config, n_components=config.n_components or DEFAULT_K)
        model.u.init_from_cells(*pseudo_input_init(adata, model.K, seed))
        return model

    @property
    def K(self) -> int:
        return self.level_sizes[0]

    def pz(self, batch_shape=()) -> GaussianMixture:
        """p(z) = (1/K) sum_k q(z | u_k): batch ``batch_shape``, event [D]."""
        loc, scale = self.encoder(*self.u())  # [K, D]
        return GaussianMixture(loc.new_zeros(self.K), loc, scale=scale, batch_shape=batch_shape)

    def model(self, x, s=None, n_obs=None, beta=1.0):
        pyro.module("vampprior", self)
        with self.cells(x, n_obs):
            with poutine.scale(scale=beta):  # KL warm-up
                z = pyro.sample("z", self.pz(x.shape[:1]))  # [B, D]
            pyro.sample("x", self.px(z, x, s), obs=x)  # [B, G]

    def guide(self, x, s=None, n_obs=None, beta=1.0):
        pyro.module("vampprior", self)
        with self.cells(x, n_obs):
            loc, scale = self.encoder(x, s)  # [B, D]
            with poutine.scale(scale=beta):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # ---- inference helpers ----
    def q_z(self, x, s=None):
        loc, scale = self.encoder(x, s)
        return dist.Normal(loc, scale).to_event(1)

    def log_p_z(self, z):
        return self.pz().log_prob(z)

    def cluster_probs(self, x, s=None):
        """Responsibilities from E_q(z)[log N(z | m_k, s_k^2)] (analytic): ``[B, K]``."""
        q_loc, q_scale = self.encoder(x, s)  # [B, D]
        pz = self.pz()
        ell = pz.component_log_prob(q_loc) - 0.5 * q_scale.pow(2) @ pz.scale.pow(-2).T  # [B, K]
        return [F.softmax(ell, -1)]


__all__ = ["VampPrior", "PseudoInputs", "pseudo_input_init", "DEFAULT_K", "inverse_softplus"]
