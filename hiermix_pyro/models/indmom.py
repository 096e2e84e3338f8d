"""IndMoMVAE: independent mixtures, one per level, mixed over a branch variable.

Reference: the hierarchical mixture-of-mixtures extension of scVAE (Grønbech et al., 2020,
Bioinformatics 36(16)), its equation 2. No level informs another: this is the baseline that
MoMixVAE's dependent levels are compared with.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..nn import Encoder
from ..priors import ComponentDensity, DiagComponents, categorical_kl
from .base import CountModel, n_batches, n_classes
from .momix import PRIORS, register, usage_schedule


class IndMoMVAE(CountModel):
    """A mixture over branches k = 1..L; branch k is a mixture with K_k components.

    Generative process, for each cell n::

        k_n ~ Cat(w)                                   which level's mixture generates z
        yl_n ~ Cat(pi_l)                               l = 1..L, independent
        z_n | k_n, y_n ~ N(mu_{k, yk}, diag sigma_{k, yk}^2)   (or multivariate t_{nu_{k, yk}})
        x_n | z_n, s_n ~ NB(l_n * softmax(f(z_n, s_n)), theta)

    Summing out k and y gives the seed's p(z) = sum_k w_k sum_y pi_k(y) N(z | mu_{k,y}, ...):
    the y_l of the branches not chosen integrate to one. Guide: q(z | x) alone (collapsed);
    k, y1..yL are enumerated in the model, so the ELBO is exact in them and the decoder runs once
    per z; p(z | k, y) for all sum_l K_l components is one ``[B, P]`` matrix
    (:class:`ComponentDensity`). Level-l clusters: the branch-l posterior p(yl | z, k = l).

    Shapes (``Trace.format_shapes()``, B=4, levels 2/3, D=2, G=50)::

        guide  z  dist        4 |  2
        model  k  dist        4 |      value     2 1   (enumerated in the model)
               y1 dist    2 1 4 |      value   2 1 1
               y2 dist  2 1 1 4 |      value 3 1 1 1
               z  dist  3 2 2 4 |  2   log_prob 3 2 2 4
               x  dist        4 | 50
    """

    enumerated = True
    discrete_kl = True  # model() takes beta_y, a KL warm-up weight of its own for k and the y's
    options = ("level_sizes", "prior", "init", "init_epochs", "init_restarts", "usage_lambda")  # one guide: q(z | x)
    config_defaults = {"init": "vae_kmeans", "init_epochs": 10, "usage_lambda": 100.0}

    def __init__(
        self,
        n_genes: int,
        n_batches: int = 0,
        config: ModelConfig = ModelConfig(),
        level_sizes: tuple[int, ...] = (2, 4, 5, 9),
    ):
        super().__init__(n_genes, n_batches, config)
        if config.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {config.prior!r}")
        self.level_sizes = tuple(int(k) for k in level_sizes)
        Ks, D, P = self.level_sizes, config.latent_dim, sum(level_sizes)
        self.register_buffer("first", torch.tensor([0, *Ks[:-1]]).cumsum(0))  # first component of branch l
        self.branch_logits = nn.Parameter(torch.zeros(len(Ks)))  # p(k)
        self.prior_logits = nn.ParameterList([nn.Parameter(torch.zeros(k)) for k in Ks])  # p(yl)
        self.mu = nn.Parameter(torch.randn(P, D))  # p(z | k, y), components of all branches stacked
        self.log_sigma = nn.Parameter(torch.zeros(P, D))
        self.df_raw = nn.Parameter(torch.full((P,), math.log(math.expm1(5.0))))  # nu = 5
        self.encoder = Encoder(n_genes, n_batches, config.hidden_dims, D)  # q(z | x)

    @classmethod
    def from_adata(cls, adata, config: ModelConfig = ModelConfig(), seed: int = 0) -> IndMoMVAE:
        """Level sizes: ``config.level_sizes``, else the number of classes per label level;
        components initialised by ``config.init`` with ``seed``."""
        from ..initialise import initialise

        sizes = config.level_sizes or tuple(n_classes(adata)) or (2, 4)
        model = cls(adata.n_vars, n_batches(adata), config, level_sizes=sizes)
        return initialise(model, adata, model.config.init, seed=seed)

    def components(self):
        df = F.softplus(self.df_raw) + 1.0 if self.config.prior == "studentt" else None
        return self.mu, self.log_sigma.exp(), df

    def log_prior_components(self) -> torch.Tensor:
        """log p(k) + log p(yk | k) for every component, branches stacked: ``[P]``."""
        log_w = F.log_softmax(self.branch_logits, -1)
        return torch.cat([log_w[l] + F.log_softmax(a, -1) for l, a in enumerate(self.prior_logits)])

    def model(self, x, s=None, n_obs=None, beta=1.0, usage_lambda=0.0, beta_y=None):
        register("indmom", self, skip=("encoder.",) + (() if self.config.prior == "studentt" else ("df_raw",)))
        loc, scale, df = self.components()  # [P, D]
        components = DiagComponents(loc, scale, df)  # this step's component constants, computed once
        enum = {"enumerate": "parallel"}
        with self.cells(x, n_obs):
            with poutine.scale(scale=beta):
                k = pyro.sample("k", dist.Categorical(logits=self.branch_logits), infer=enum)  # [L, 1]
                c = 0
                for l, logits in enumerate(self.prior_logits):
                    y = pyro.sample(f"y{l + 1}", dist.Categorical(logits=logits), infer=enum)  # [Kl, 1.., 1]
                    c = c + (k == l).long() * (self.first[l] + y)  # component of branch k
                pz = ComponentDensity(c, loc, scale, df, x.shape[0], components=components)
                z = pyro.sample("z", pz)  # [B, D]
            pyro.sample("x", self.px(z, x, s), obs=x)  # [B, G]
            # the regularisers reuse the z site's [B, P] matrix (evaluated once per step)
            if beta_y is not None:  # KL weight beta_y on the discrete part (see MoMixVAE.kl_y)
                pyro.factor("kl_y", (beta - beta_y) * self.kl_y(z, pz.log_prob_matrix(z)))  # [B]
        if usage_lambda:  # lambda * sum_l KL(mean_B p(yl | z, k=l) || pi_l)
            kl = 0.0
            for q, logits in zip(self._branch_posteriors(z, pz.log_prob_matrix(z)), self.prior_logits):
                q_bar, log_p = q.mean(0), F.log_softmax(logits, -1)
                kl = kl + (q_bar * (q_bar.clamp(min=1e-10).log() - log_p)).sum()
            pyro.factor("usage", -usage_lambda * (n_obs or x.shape[0]) * kl)

    def guide(self, x, s=None, n_obs=None, beta=1.0, usage_lambda=0.0, beta_y=None):
        register("indmom", self, only=("encoder.",))  # the model registers the rest
        with self.cells(x, n_obs):
            loc, scale = self.encoder(x, s)  # [B, D]
            with poutine.scale(scale=beta):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def schedule(self, progress: float, beta: float) -> dict:
        """The usage regulariser's weight (see :func:`~hiermix_pyro.models.momix.usage_schedule`)."""
        return usage_schedule(self.config.usage_lambda, progress)

    def kl_y(self, z, log_pz=None):
        """KL(p(k, yk | z) || p(k, yk)) per cell ``[B]``: the discrete part of the KL (the y's of
        the branches not chosen keep their prior and add nothing). ``log_pz``: the ``[B, P]``
        component log-densities at z, if already computed."""
        log_prior = self.log_prior_components()  # [P]
        log_pz = DiagComponents(*self.components()).log_prob_matrix(z) if log_pz is None else log_pz
        return categorical_kl((log_prior + log_pz).log_softmax(-1), log_prior)  # [B]

    # ---- inference helpers ----
    def _branch_posteriors(self, z, log_pz=None):
        """p(yl | z, k = l) per level: ``[..., B, D] -> [..., B, Kl]`` (``log_pz``: the
        ``[..., B, P]`` component log-densities at z, if already computed)."""
        log_pz = DiagComponents(*self.components()).log_prob_matrix(z) if log_pz is None else log_pz
        out = []
        for l, logits in enumerate(self.prior_logits):
            start = int(self.first[l])
            out.append(F.softmax(F.log_softmax(logits, -1) + log_pz[..., start : start + logits.shape[0]], -1))
        return out

    def q_z(self, x, s=None):
        return dist.Normal(*self.encoder(x, s)).to_event(1)

    def log_p_z(self, z):
        """log sum_k sum_y p(k) p(y | k) p(z | k, y), exact: ``[S, B, D] -> [S, B]``."""
        log_pz = DiagComponents(*self.components()).log_prob_matrix(z)  # [S, B, P]
        return (self.log_prior_components() + log_pz).logsumexp(-1)

    @torch.no_grad()
    def cluster_probs(self, x, s=None, n_samples: int = 16):
        """Level-l clusters from branch l: p(yl | z, k = l), averaged over z ~ q(z | x)."""
        z = self.q_z(x, s).sample((n_samples,))  # [S, B, D]
        return [p.mean(0) for p in self._branch_posteriors(z)]
