"""scVI-style VAE: the baseline every other model is compared with.

Reference: Lopez et al. (2018), Deep generative modeling for single-cell transcriptomics.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from ..config import ModelConfig
from ..nn import Encoder
from .base import CountModel


class VAE(CountModel):
    """Standard-normal prior, count likelihood with observed library size.

    Generative process, for each cell n (batch s_n optional)::

        z_n ~ N(0, I_D)
        x_n | z_n, s_n ~ NB(l_n * softmax(f(z_n, s_n)), theta)     (or ZINB, Poisson)

    Guide: q(z_n | x_n, s_n) = N(mu(log1p x_n, s_n), diag sigma^2(log1p x_n, s_n)).
    """

    def __init__(self, n_genes: int, n_batches: int = 0, config: ModelConfig = ModelConfig()):
        super().__init__(n_genes, n_batches, config)
        self.encoder = Encoder(n_genes, n_batches, config.hidden_dims, config.latent_dim)  # q(z | x, s)

    def model(self, x, s=None, n_obs=None, beta=1.0):
        pyro.module("vae", self)
        D = self.config.latent_dim
        with self.cells(x, n_obs):
            with poutine.scale(scale=beta):  # KL warm-up
                z = pyro.sample("z", dist.Normal(x.new_zeros(D), 1.0).to_event(1))  # [B, D]
            pyro.sample("x", self.px(z, x, s), obs=x)  # [B, G]

    def guide(self, x, s=None, n_obs=None, beta=1.0):
        pyro.module("vae", self)
        with self.cells(x, n_obs):
            loc, scale = self.encoder(x, s)  # [B, D]
            with poutine.scale(scale=beta):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # ---- inference helpers ----
    def q_z(self, x, s=None):
        loc, scale = self.encoder(x, s)
        return dist.Normal(loc, scale).to_event(1)

    def log_p_z(self, z):
        return dist.Normal(torch.zeros_like(z), 1.0).to_event(1).log_prob(z)
