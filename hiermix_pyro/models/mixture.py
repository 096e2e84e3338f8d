"""scVAE's Gaussian-mixture VAE (GMVAE), with the cluster variable enumerated exactly.

Reference: Grønbech et al. (2020), scVAE: variational auto-encoders for single-cell gene
expression data, Bioinformatics 36(16).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.ops.indexing import Vindex
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..nn import Encoder, cat_broadcast
from ..priors import mixture_log_prob
from .base import CountModel, n_batches, n_classes


class MixtureVAE(CountModel):
    """Gaussian-mixture prior over z, uniform over K components.

    Generative process, for each cell n::

        y_n ~ Cat(1/K, ..., 1/K)
        z_n | y_n ~ N(mu_{y_n}, diag sigma_{y_n}^2)
        x_n | z_n, s_n ~ NB(l_n * softmax(f(z_n, s_n)), theta)

    Guide (as in scVAE): q(y_n | x_n) q(z_n | x_n, y_n). ``TraceEnum_ELBO`` enumerates y in the
    guide in parallel, so the expectation over y is exact and no y is ever sampled; the
    decoder then runs once per component. Cluster of a cell: argmax_k q(y = k | x).

    Sample-site shapes under enumeration (``Trace.format_shapes()``; B = 4 cells, K = 3, D = 10,
    G = 500; the enumerated y takes dim -2, left of the ``cells`` plate)::

        guide       y dist     4   |          model   y dist     4   |
                     value 3   1   |                   value 3   1   |
                  log_prob 3   4   |                log_prob 3   4   |
                    z dist 3   4   | 10               z dist 3   4   |  10
                     value 3   4   | 10                value 3   4   |  10
                                                        x dist 3   4   | 500
                                                         value     4   | 500
                                                      log_prob 3   4   |
    """

    enumerated = True

    def __init__(self, n_genes: int, n_batches: int = 0, config: ModelConfig = ModelConfig(), n_components: int = 10):
        super().__init__(n_genes, n_batches, config)
        K, D = n_components, config.latent_dim
        self.level_sizes = (K,)
        # q(y | x): a linear head on the encoder trunk; q(z | x, y): a Gaussian head on [h, onehot(y)]
        self.encoder = Encoder(n_genes, n_batches, config.hidden_dims, D, n_extra=K)
        self.q_y_head = nn.Linear(config.hidden_dims[-1], K)
        # p(z | y): learned component means and scales, spread out at initialisation
        self.mu = nn.Parameter(torch.randn(K, D))
        self.log_sigma = nn.Parameter(torch.zeros(K, D))

    @classmethod
    def from_adata(cls, adata, config: ModelConfig = ModelConfig()) -> "MixtureVAE":
        """K = ``config.n_components``, else the number of classes at the finest label level."""
        K = config.n_components or (n_classes(adata) or [10])[-1]
        return cls(adata.n_vars, n_batches(adata), config, n_components=K)

    @property
    def K(self) -> int:
        return self.level_sizes[0]

    def model(self, x, s=None, n_obs=None, beta=1.0):
        pyro.module("mixture", self)
        log_pi = x.new_full((self.K,), -math.log(self.K))
        with self.cells(x, n_obs):
            with poutine.scale(scale=beta):
                y = pyro.sample("y", dist.Categorical(logits=log_pi))  # [K?, 1] from the guide
                loc = Vindex(self.mu)[y]  # [K?, 1, D]
                scale = Vindex(self.log_sigma)[y].exp()
                z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))  # [K?, B, D]
            pyro.sample("x", self.px(z, x, s), obs=x)

    def guide(self, x, s=None, n_obs=None, beta=1.0):
        pyro.module("mixture", self)
        with self.cells(x, n_obs):
            h = self.encoder.hidden(x, s)  # [B, H]
            with poutine.scale(scale=beta):
                y = pyro.sample(
                    "y", dist.Categorical(logits=self.q_y_head(h)), infer={"enumerate": "parallel"}
                )  # [K?, 1]
                loc, scale = self.encoder.head(cat_broadcast(h, F.one_hot(y, self.K).to(h)))  # [K?, B, D]
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # ---- inference helpers ----
    def q_y_logits(self, x, s=None):  # [B, K]
        return self.q_y_head(self.encoder.hidden(x, s))

    def q_z(self, x, s=None):
        """q(z | x) = sum_y q(y | x) q(z | x, y): a mixture, batch [B], event [D]."""
        h = self.encoder.hidden(x, s)  # [B, H]
        ys = torch.arange(self.K, device=x.device).unsqueeze(-1)  # [K, 1]
        loc, scale = self.encoder.head(cat_broadcast(h, F.one_hot(ys, self.K).to(h)))  # [K, B, D]
        components = dist.Normal(loc.transpose(0, 1), scale.transpose(0, 1)).to_event(1)  # [B, K]
        return dist.MixtureSameFamily(dist.Categorical(logits=self.q_y_head(h)), components)

    def log_p_z(self, z):
        log_pi = z.new_full((self.K,), -math.log(self.K))
        return mixture_log_prob(z, log_pi, self.mu, self.log_sigma.exp())

    def cluster_probs(self, x, s=None):
        return [F.softmax(self.q_y_logits(x, s), -1)]

