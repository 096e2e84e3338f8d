"""The VampPrior Mixture Model (VMM): a Bayesian GMM prior whose cluster means come from the
encoder applied to K pseudo-inputs; Empirical-Bayes EM as for ``gmm``.

Reference: Stirn & Knowles (2025), The VampPrior Mixture Model, AISTATS (section 3, Algorithm 1).
The hyper-priors, E-step and MAP objective are imported from :mod:`.gmm`, not copied.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from ..config import ModelConfig
from ..nn import Encoder
from ..priors import GaussianMixture, expected_normal_log_prob_matrix, precision_tril
from .base import CountModel, n_batches
from .gmm import GMM, MixturePriorParams, e_step, gradient_m_step, map_objective
from .vampprior import DEFAULT_K, PseudoInputs, pseudo_input_init


class VMM(CountModel):
    """VampPrior mixture: the GMM's means get distributions q(mu_k) = N(g(u_k)) from the encoder g.

    Generative process (p = latent dimension), for each cell n::

        alpha ~ InvGamma(1, 1);  pi | alpha ~ Dir(alpha / K, ..., alpha / K)
        Lambda_k ~ Wishart(p + 2, K^(1/p) / (p + 2) I_p);  mu_k ~ N(0, I_p)     k = 1..K
        c_n | pi ~ Cat(pi);  z_n | c_n ~ N(mu_{c_n}, Lambda_{c_n}^{-1})
        x_n | z_n, s_n ~ NB(l_n * softmax(f(z_n, s_n)), theta)

    Variational family: q(mu_k) = N(m_phi(u_k), diag sigma_phi^2(u_k)), the encoder at pseudo-input
    u_k = (softplus(a_k), softmax(b_k)); q(z_n | x_n, s_n) = N(m_phi(x_n, s_n), diag sigma_phi^2(x_n, s_n)).
    The KL term of the VAE integrates the means out analytically::

        p(z) = sum_k pi_k N(z | m_phi(u_k), Lambda_k^{-1} + diag sigma_phi^2(u_k))

    which the model samples z from (fixed during the SVI step). The M-step (:meth:`prior_step`) takes
    one step of the prior's own Adam on (alpha, pi, Lambda, u) for the MAP objective of ``gmm`` with
    E_q(mu)[log N(z | mu, Lambda^{-1})] in place of log N(z | mu, Lambda^{-1}) and E_q(mu)[log p(mu)]
    in place of log p(mu) (App. B). The SVI step holds (alpha, pi, Lambda, u) fixed but, as in the
    paper's eq. 11, the encoder's gradient flows through q(mu_k; u_k) into p(z).
    Cluster of a cell: argmax_k of its responsibilities.
    """

    options = ("n_components", "em_lr", "em_after_warmup")

    def __init__(
        self, n_genes: int, n_batches: int = 0, config: ModelConfig = ModelConfig(), n_components: int = DEFAULT_K
    ):
        super().__init__(n_genes, n_batches, config)
        self.level_sizes = (n_components,)
        self.encoder = Encoder(n_genes, n_batches, config.hidden_dims, config.latent_dim)  # q(z | x, s), q(mu | u)
        self.prior = MixturePriorParams(n_components, config.latent_dim, means=False)
        self.u = PseudoInputs(n_components, n_genes, n_batches)  # prior parameters too: moved by the M-step
        self.em_active = True  # set by schedule() during training
        self.em_optim = None  # the prior's own Adam, made at the first prior_step (after .to(device))
        self.stats = None  # (gmm's closed-form statistics; unused here, kept for the shared EM state)

    @classmethod
    def from_adata(cls, adata, config: ModelConfig = ModelConfig(), seed: int = 0) -> VMM:
        model = cls(adata.n_vars, n_batches(adata), config, n_components=config.n_components or DEFAULT_K)
        model.u.init_from_cells(*pseudo_input_init(adata, model.K, seed))
        return model

    @property
    def K(self) -> int:
        return self.level_sizes[0]

    def q_mu(self, frozen_u: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """q(mu_k) = N(m_k, diag v_k) from the encoder at the pseudo-inputs: ``[K, D]``, ``[K, D]``.

        ``frozen_u``: the pseudo-inputs enter as constants (the VI step), the encoder keeps its gradient.
        """
        x_u, s_u = self.u()
        if frozen_u:
            x_u, s_u = x_u.detach(), None if s_u is None else s_u.detach()
        loc, scale = self.encoder(x_u, s_u)
        return loc, scale.pow(2)

    def pz(self, batch_shape=()) -> GaussianMixture:
        """p(z) with the means integrated out: covariances Lambda_k^{-1} + diag v_k.

        The VI step (eq. 11, Algorithm 1 of the paper) holds u, pi, Lambda and alpha fixed, but the
        encoder phi is shared by q(z | x) and q(mu_k; u_k): its gradient includes this prior term.
        """
        m, v = self.q_mu(frozen_u=True)  # [K, D], differentiable in the encoder only
        cov = torch.cholesky_inverse(self.prior.prec_tril().detach()) + torch.diag_embed(v)  # [K, D, D]
        return GaussianMixture(self.prior.logits.detach(), m, prec_tril=precision_tril(cov), batch_shape=batch_shape)

    def model(self, x, s=None, n_obs=None, beta=1.0):
        pyro.module("vmm", self)
        with self.cells(x, n_obs):
            with poutine.scale(scale=beta):  # KL warm-up
                z = pyro.sample("z", self.pz(x.shape[:1]))  # [B, D]
            pyro.sample("x", self.px(z, x, s), obs=x)  # [B, G]

    def guide(self, x, s=None, n_obs=None, beta=1.0):
        pyro.module("vmm", self)
        with self.cells(x, n_obs):
            loc, scale = self.encoder(x, s)  # [B, D]
            with poutine.scale(scale=beta):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # ---- Empirical-Bayes EM (called by the training loop after every SVI step) ----
    schedule = GMM.schedule  # the same rule: M-steps start when the KL warm-up ends

    def expected_log_lik(self, z_loc, z_var=None) -> torch.Tensor:
        """E_q(mu_k)[log N(z_n | mu_k, Lambda_k^{-1})]: ``[B, K]`` (differentiable in Lambda and u)."""
        m, v = self.q_mu()
        return expected_normal_log_prob_matrix(z_loc, z_var, m, v, self.prior.prec_tril())

    def objective(self, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The M-step's target (App. B of the paper): :func:`map_objective` with
        E_q(mu)[log N(z | mu, Lambda^{-1})] and E_q(mu)[log p(mu)] = E_q(mu)[log N(mu | 0, I)]."""
        m, v = self.q_mu()
        log_p_mu = -0.5 * (m.pow(2) + v).sum() - 0.5 * m.numel() * math.log(2 * math.pi)  # summed over k
        p = self.prior
        ell = expected_normal_log_prob_matrix(z, None, m, v, p.prec_tril())
        return map_objective(p.log_alpha, p.log_pi(), p.prec_tril(), r, ell, log_p_mu)

    def prior_params(self) -> dict[str, torch.Tensor]:
        return {**dict(self.prior.named_parameters()), **{f"u.{k}": v for k, v in self.u.named_parameters()}}

    def prior_step(self, x, s=None) -> float:
        if not self.em_active:
            return float("nan")
        with torch.no_grad():
            z = self.q_z(x, s).sample()  # [B, D]: one draw per cell
            r = e_step(self.prior.log_pi(), self.expected_log_lik(z))  # [B, K]
        params = self.prior_params()
        if self.em_optim is None:
            self.em_optim = torch.optim.Adam(params.values(), lr=self.config.em_lr)
        return gradient_m_step(lambda: self.objective(z, r), params, self.em_optim)

    # ---- the EM state travels in the state_dict, as for gmm ----
    get_extra_state, set_extra_state = GMM.get_extra_state, GMM.set_extra_state

    # ---- inference helpers ----
    def q_z(self, x, s=None):
        loc, scale = self.encoder(x, s)
        return dist.Normal(loc, scale).to_event(1)

    def log_p_z(self, z):
        return self.pz().log_prob(z)

    def cluster_probs(self, x, s=None):
        """Responsibilities with E_q(z | x) and E_q(mu) taken analytically: ``[B, K]``."""
        loc, scale = self.encoder(x, s)
        return [e_step(self.prior.log_pi(), self.expected_log_lik(loc, scale.pow(2)))]


__all__ = ["VMM"]
