"""VAE with a Bayesian Gaussian-mixture prior fitted by Empirical-Bayes EM (MAP point estimates).

Reference: Stirn & Knowles (2025), The VampPrior Mixture Model, AISTATS: the "GMM" prior of
their Table 3 and their Algorithm 1 (alternate one VI step with the prior fixed and one
M-step on the prior). The E- and M-step functions below are shared with ``vmm``.
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
from ..priors import GaussianMixture, expected_normal_log_prob_matrix
from .base import CountModel, n_batches
from .vampprior import DEFAULT_K

# ---- the Bayesian GMM's hyper-priors, E-step and M-steps (plain functions; shared with vmm) ----


def check_finite(tensors: dict[str, torch.Tensor | None], what: str) -> None:
    """Stop with an error naming the parameter when any value is NaN or infinite."""
    for name, t in tensors.items():
        if t is not None and not torch.isfinite(t).all():
            raise FloatingPointError(
                f"prior update: {what} of {name!r} is not finite ({int((~torch.isfinite(t)).sum())} values); "
                "try a lower em_lr or lr, or a larger batch_size"
            )


def log_weights_hyperprior(log_alpha: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
    """``log p(alpha) + log p(pi | alpha)`` (up to constants): alpha ~ InvGamma(1, 1),
    pi | alpha ~ Dir(alpha / K). With alpha / K < 1 the Dirichlet rewards empty components: this is
    what switches clusters off. Also momix's ``sparse_levels`` prior on each level's usage."""
    K = log_pi.shape[-1]
    alpha = log_alpha.exp()
    log_p_alpha = -2.0 * log_alpha - 1.0 / alpha  # InvGamma(1, 1) density of alpha
    return log_p_alpha + torch.lgamma(alpha) - K * torch.lgamma(alpha / K) + (alpha / K - 1.0) * log_pi.sum(-1)


def log_hyperprior(log_alpha: torch.Tensor, log_pi: torch.Tensor, prec_tril: torch.Tensor) -> torch.Tensor:
    """``log p(alpha) + log p(pi | alpha) + sum_k log p(Lambda_k)`` (up to constants).

    alpha ~ InvGamma(1, 1);  pi | alpha ~ Dir(alpha / K);  Lambda_k ~ Wishart(nu = p + 2, W = K^(1/p) / (p + 2) I).
    """
    K, p = log_pi.shape[-1], prec_tril.shape[-1]
    nu, w = p + 2, K ** (1.0 / p) / (p + 2)
    log_det = 2.0 * prec_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # [K]: log |Lambda_k|
    trace = prec_tril.pow(2).sum((-2, -1))  # [K]: tr(Lambda_k) = ||L_k||_F^2
    log_p_lambda = (0.5 * (nu - p - 1) * log_det - 0.5 * trace / w).sum()
    return log_weights_hyperprior(log_alpha, log_pi) + log_p_lambda


def map_objective(log_alpha, log_pi, prec_tril, r, ell, log_p_means) -> torch.Tensor:
    """Expected complete log-likelihood of a minibatch plus the log hyper-priors (the M-step's target).

    ``sum_n sum_k r_nk (log pi_k + E[log N(z_n | mu_k, Lambda_k^{-1})]) + log p(alpha, pi, Lambda) + log_p_means``

    r, ell: ``[B, K]``; log_p_means: log p(mu) (gmm) or E_q(mu)[log p(mu)] (vmm). The data term is a
    plain *sum over the minibatch* (not scaled to the data set, as in the paper): the batch size
    sets how strongly the hyper-priors pull, e.g. how readily empty clusters are switched off.
    """
    return (r * (log_pi + ell)).sum() + log_hyperprior(log_alpha, log_pi, prec_tril) + log_p_means


@torch.no_grad()
def e_step(log_pi: torch.Tensor, ell: torch.Tensor) -> torch.Tensor:
    """Responsibilities ``q(c_n = k) ∝ pi_k exp(E[log N(z_n | mu_k, Lambda_k^{-1})])``: ``[B, K]``, rows sum to one."""
    return F.softmax(log_pi + ell, -1)


def gradient_m_step(objective, params: dict[str, torch.Tensor], optim: torch.optim.Optimizer) -> float:
    """One ascent step of ``optim`` on ``objective()`` for ``params`` only (the networks are untouched:
    gradients go through ``autograd.grad``, never into ``.grad`` of encoder or decoder weights)."""
    check_finite(dict(params), "the current value")
    value = objective()
    check_finite({"MAP objective": value}, "the value")
    grads = torch.autograd.grad(-value, list(params.values()), allow_unused=True)
    check_finite(dict(zip(params, grads)), "the gradient")
    for p, g in zip(params.values(), grads):
        p.grad = g
    optim.step()
    for p in params.values():
        p.grad = None  # so that the SVI optimiser never sees a prior gradient
    check_finite(dict(params), "the updated value")
    return float(value.detach())


@torch.no_grad()
def sufficient_statistics(r: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
    """Weighted counts, sums and outer products: ``N [K], S1 [K, D], S2 [K, D, D]``."""
    return dict(N=r.sum(0), S1=r.T @ z, S2=torch.einsum("bk,bd,be->kde", r, z, z))


@torch.no_grad()
def closed_form_m_step(stats, alpha: float, prec_tril: torch.Tensor, min_log_pi: float = -30.0):
    """MAP of (pi, mu, Lambda) given sufficient statistics (one coordinate-ascent sweep).

    - pi_k ∝ max(N_k + alpha / K - 1, 0)                       (Dirichlet MAP; empty components -> 0)
    - mu_k = (N_k Lambda_k + I)^{-1} Lambda_k S1_k             (N(0, I) prior on mu_k, current Lambda_k)
    - Lambda_k = (N_k + nu - p - 1) (W^{-1} + scatter_k)^{-1}    (Wishart MAP; scatter about the new mu_k)

    Returns ``log_pi [K]`` (floored at ``min_log_pi``), ``mu [K, D]`` and the new ``prec_tril [K, D, D]``.
    """
    N, S1, S2 = stats["N"], stats["S1"], stats["S2"]
    K, p = S1.shape
    counts = (N + alpha / K - 1.0).clamp(min=0.0)
    if counts.sum() <= 0:  # every component below one cell: fall back to the plain weights
        counts = N
    log_pi = (counts / counts.sum()).log().clamp(min=min_log_pi)
    eye = torch.eye(p, dtype=S1.dtype, device=S1.device)
    prec = prec_tril @ prec_tril.transpose(-1, -2)  # [K, D, D]
    mu = torch.linalg.solve(N[:, None, None] * prec + eye, (prec @ S1.unsqueeze(-1))).squeeze(-1)  # [K, D]
    outer = S1.unsqueeze(-1) * mu.unsqueeze(-2)  # [K, D, D]: S1 mu^T
    scatter = S2 - outer - outer.transpose(-1, -2) + N[:, None, None] * mu.unsqueeze(-1) * mu.unsqueeze(-2)
    nu, w = p + 2, K ** (1.0 / p) / (p + 2)
    cov = (scatter + eye / w) / (N + nu - p - 1)[:, None, None]  # Lambda_k^{-1}
    return log_pi, mu, torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(cov)))


@torch.no_grad()
def alpha_map(log_pi: torch.Tensor, log_alpha_grid=torch.linspace(-6.0, 6.0, 1201)) -> torch.Tensor:
    """MAP of log alpha given pi: the terms of :func:`log_hyperprior` in alpha, maximised on a grid
    (a one-dimensional problem with no closed form)."""
    grid = log_alpha_grid.to(log_pi)
    K, alpha = log_pi.shape[-1], grid.exp()
    f = -2.0 * grid - 1.0 / alpha + torch.lgamma(alpha) - K * torch.lgamma(alpha / K) + alpha / K * log_pi.sum()
    return grid[f.argmax()]


class MixturePriorParams(nn.Module):
    """Point estimates of the Bayesian GMM prior: alpha, pi, Lambda (and mu for gmm; vmm has u instead).

    Lambda_k = L_k L_k^T with L_k lower-triangular, its diagonal through exp (a valid precision
    for any parameter value, and a closed-form M-step can write log diag L directly).
    """

    def __init__(self, K: int, D: int, means: bool = True):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.zeros(()))
        self.logits = nn.Parameter(torch.zeros(K))  # pi = softmax(logits)
        self.mu = nn.Parameter(torch.randn(K, D)) if means else None  # a draw from p(mu) = N(0, I)
        self.prec_log_diag = nn.Parameter(torch.zeros(K, D))  # Lambda_k = I at the start
        self.prec_lower = nn.Parameter(torch.zeros(K, D, D))  # only the strict lower triangle is used

    def log_pi(self) -> torch.Tensor:  # [K]
        return F.log_softmax(self.logits, -1)

    def prec_tril(self) -> torch.Tensor:  # [K, D, D]
        return self.prec_lower.tril(-1) + torch.diag_embed(self.prec_log_diag.exp())

    @torch.no_grad()
    def set_prec_tril(self, L: torch.Tensor) -> None:
        self.prec_log_diag.copy_(L.diagonal(dim1=-2, dim2=-1).log())
        self.prec_lower.copy_(L.tril(-1))


class GMM(CountModel):
    """VAE with a Bayesian GMM prior (K = 100 by default), point estimates by Empirical-Bayes EM.

    Generative process (p = latent dimension), for each cell n::

        alpha ~ InvGamma(1, 1);  pi | alpha ~ Dir(alpha / K, ..., alpha / K)
        mu_k ~ N(0, I_p);  Lambda_k ~ Wishart(p + 2, K^(1/p) / (p + 2) I_p)      k = 1..K
        c_n | pi ~ Cat(pi);  z_n | c_n ~ N(mu_{c_n}, Lambda_{c_n}^{-1})
        x_n | z_n, s_n ~ NB(l_n * softmax(f(z_n, s_n)), theta)

    (alpha, pi, mu, Lambda) are MAP point estimates. c is summed out: the model samples z from
    the mixture density p(z) = sum_k pi_k N(z | mu_k, Lambda_k^{-1}), so no site is enumerated.
    Guide: q(z_n | x_n, s_n) = N(mu_phi(x_n, s_n), diag sigma_phi^2(x_n, s_n)).

    Training (Algorithm 1): an SVI step on encoder and decoder with the prior *fixed* (it enters
    ``model()`` detached), then :meth:`prior_step`: z_n ~ q(z_n | x_n), responsibilities
    (:func:`e_step`), and one M-step with the prior's own optimiser, either a gradient step on
    :func:`map_objective` (``em_update="gradient"``) or :func:`closed_form_m_step` on running
    sufficient statistics (``"closed"``, stochastic EM with step size ``em_lr``). Cluster of a
    cell: argmax_k of its responsibilities (with the expectation over q(z | x) taken analytically).
    """

    options = ("n_components", "em_update", "em_lr", "em_after_warmup")

    def __init__(
        self, n_genes: int, n_batches: int = 0, config: ModelConfig = ModelConfig(), n_components: int = DEFAULT_K
    ):
        super().__init__(n_genes, n_batches, config)
        self.level_sizes = (n_components,)
        self.encoder = Encoder(n_genes, n_batches, config.hidden_dims, config.latent_dim)  # q(z | x, s)
        self.prior = MixturePriorParams(n_components, config.latent_dim, means=True)
        self.em_active = True  # set by schedule() during training
        self.em_optim = None  # the prior's own Adam, made at the first prior_step (after .to(device))
        self.stats = None  # running sufficient statistics (closed-form M-step)

    @classmethod
    def from_adata(cls, adata, config: ModelConfig = ModelConfig(), seed: int = 0) -> GMM:
        return cls(adata.n_vars, n_batches(adata), config, n_components=config.n_components or DEFAULT_K)

    @property
    def K(self) -> int:
        return self.level_sizes[0]

    def pz(self, batch_shape=()) -> GaussianMixture:
        """p(z) = sum_k pi_k N(z | mu_k, Lambda_k^{-1}), held fixed (detached) during the SVI step."""
        p = self.prior
        return GaussianMixture(
            p.logits.detach(), p.mu.detach(), prec_tril=p.prec_tril().detach(), batch_shape=batch_shape
        )

    def model(self, x, s=None, n_obs=None, beta=1.0):
        pyro.module("gmm", self)
        with self.cells(x, n_obs):
            with poutine.scale(scale=beta):  # KL warm-up
                z = pyro.sample("z", self.pz(x.shape[:1]))  # [B, D]
            pyro.sample("x", self.px(z, x, s), obs=x)  # [B, G]

    def guide(self, x, s=None, n_obs=None, beta=1.0):
        pyro.module("gmm", self)
        with self.cells(x, n_obs):
            loc, scale = self.encoder(x, s)  # [B, D]
            with poutine.scale(scale=beta):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # ---- Empirical-Bayes EM (called by the training loop after every SVI step) ----
    def schedule(self, progress: float, beta: float) -> dict:
        """M-steps wait for the end of the KL warm-up (``em_after_warmup``): the latent space has
        some structure by then, and components fitted to an unstructured one would be switched off."""
        self.em_active = beta >= 1.0 or not self.config.em_after_warmup
        return {}

    def expected_log_lik(self, z_loc, z_var=None) -> torch.Tensor:
        """E[log N(z_n | mu_k, Lambda_k^{-1})]: ``[B, K]`` (differentiable in the prior)."""
        return expected_normal_log_prob_matrix(z_loc, z_var, self.prior.mu, None, self.prior.prec_tril())

    def objective(self, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        p = self.prior
        log_p_mu = -0.5 * p.mu.pow(2).sum() - 0.5 * p.mu.numel() * math.log(2 * math.pi)
        return map_objective(p.log_alpha, p.log_pi(), p.prec_tril(), r, self.expected_log_lik(z), log_p_mu)

    def prior_step(self, x, s=None) -> float:
        if not self.em_active:
            return float("nan")
        with torch.no_grad():
            z = self.q_z(x, s).sample()  # [B, D]: one draw per cell
            r = e_step(self.prior.log_pi(), self.expected_log_lik(z))  # [B, K]
        if self.em_optim is None:  # first M-step; the means start as the paper's draw from p(mu) = N(0, I)
            self.em_optim = torch.optim.Adam(self.prior_params().values(), lr=self.config.em_lr)
        if self.config.em_update == "closed":
            self.closed_form_update(z, r)
            return float(self.objective(z, r).detach())
        return gradient_m_step(lambda: self.objective(z, r), self.prior_params(), self.em_optim)

    def prior_params(self) -> dict[str, torch.Tensor]:
        """What the M-step moves: (alpha, pi, mu, Lambda)."""
        return dict(self.prior.named_parameters())

    # ---- the EM state is part of the state_dict, so a checkpoint resumes exactly (VMM reuses these) ----
    def get_extra_state(self) -> dict:
        return {"em_optim": None if self.em_optim is None else self.em_optim.state_dict(), "stats": self.stats}

    def set_extra_state(self, state: dict) -> None:
        self.stats, self.em_optim = state["stats"], None
        if state["em_optim"] is not None:  # the first M-step (which starts the means from data) is past
            self.em_optim = torch.optim.Adam(self.prior_params().values(), lr=self.config.em_lr)
            self.em_optim.load_state_dict(state["em_optim"])

    @torch.no_grad()
    def closed_form_update(self, z, r) -> None:
        """Stochastic EM: running averages of the minibatch statistics (weight ``em_lr`` on the new
        batch), then the closed-form MAP of pi, mu and Lambda, and of alpha given pi (on a grid)."""
        new = sufficient_statistics(r, z)
        check_finite({f"sufficient statistic {k}": v for k, v in new.items()}, "the minibatch value")
        rho, p = self.config.em_lr, self.prior
        if self.stats is None:  # start from statistics the current prior would give (B/K cells each),
            n = new["N"].sum() * p.log_pi().exp()  # so that no component is switched off at once
            cov = torch.cholesky_inverse(p.prec_tril())
            self.stats = dict(
                N=n, S1=n[:, None] * p.mu, S2=n[:, None, None] * (cov + p.mu.unsqueeze(-1) * p.mu.unsqueeze(-2))
            )
        self.stats = {k: (1 - rho) * v + rho * new[k] for k, v in self.stats.items()}
        try:
            log_pi, mu, L = closed_form_m_step(self.stats, float(p.log_alpha.exp()), p.prec_tril())
        except torch.linalg.LinAlgError as err:
            raise FloatingPointError(
                f"prior update: the closed-form 'prec_tril' is not positive definite ({err})"
            ) from err
        check_finite({"logits": log_pi, "mu": mu, "prec_tril": L}, "the closed-form update")
        p.logits.copy_(log_pi)
        p.mu.copy_(mu)
        p.set_prec_tril(L)
        p.log_alpha.copy_(alpha_map(p.log_pi()))

    # ---- inference helpers ----
    def q_z(self, x, s=None):
        loc, scale = self.encoder(x, s)
        return dist.Normal(loc, scale).to_event(1)

    def log_p_z(self, z):
        return self.pz().log_prob(z)

    def cluster_probs(self, x, s=None):
        """Responsibilities with E_q(z | x) taken analytically: ``[B, K]``."""
        loc, scale = self.encoder(x, s)
        return [e_step(self.prior.log_pi(), self.expected_log_lik(loc, scale.pow(2)))]


__all__ = [
    "GMM",
    "MixturePriorParams",
    "alpha_map",
    "check_finite",
    "closed_form_m_step",
    "e_step",
    "gradient_m_step",
    "log_hyperprior",
    "log_weights_hyperprior",
    "map_objective",
    "sufficient_statistics",
]
