"""MoMixVAE: a mixture of mixtures over a hierarchy of dependent cluster levels.

Reference: the hierarchical mixture-of-mixtures extension of scVAE (Grønbech et al., 2020,
Bioinformatics 36(16)), with its faults fixed: the joint path index is built in one
row-major order everywhere (``path = ((y1 * K2 + y2) * K3 + y3) * K4 + y4``), the components
are learned, and the IWAE is exact in the discrete variables.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.ops.indexing import Vindex
from pyro.params import param_with_module_name
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..nn import Encoder, cat_broadcast
from ..priors import ComponentDensity, DiagComponents, PathMixture, categorical_kl, path_index, take_enumerated
from .base import CountModel, n_batches, n_classes
from .gmm import log_weights_hyperprior

GUIDES = ("collapsed", "structured", "structured_y")
PRIORS = ("normal", "studentt")
SUM_PATHS = ("closed_form", "enumerate")


def register(name: str, module: nn.Module, only: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> None:
    """``pyro.module(name, module)`` for the parameters a model or guide uses: those whose names
    start with one of ``only`` (all when empty) and none of ``skip``, under the names
    ``pyro.module`` gives them. A step's model and guide together still register every parameter
    in use, each once instead of twice: one ``pyro.param`` message fewer per parameter and step."""
    for param_name, value in module.named_parameters():
        if (not only or param_name.startswith(only)) and not param_name.startswith(skip):
            pyro.param(param_with_module_name(name, param_name), value)


def usage_schedule(lam: float, progress: float) -> dict:
    """``{"usage_lambda": ...}`` at ``progress`` in [0, 1]: held, then cosine-decayed to 10%."""
    if not lam:
        return {}
    t = min(1.0, max(0.0, (progress - 0.5) / 0.5))
    return {"usage_lambda": lam * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))}


class MoMixVAE(CountModel):
    """Dependent cluster levels y1..yL, one latent component per path (y1, ..., yL).

    Generative process, for each cell n (K_l clusters at level l, coarse to fine)::

        y1_n ~ Cat(pi_1)
        yl_n | y1_n..y(l-1)_n ~ Cat(pi_l[y1_n..y(l-1)_n])                  l = 2..L
        z_n | y_n ~ N(mu_y, diag sigma_y^2)        (prior="normal")
                    t_{nu_y}(mu_y, diag sigma_y^2) (prior="studentt", multivariate t)
        mu_y = sum_l a_l delta_l[y1_n..yl_n]       (children sit near their parent:
                                                    offsets with learned shrinking scales a_l)
        x_n | z_n, s_n ~ NB(l_n * softmax(f(z_n, s_n)), theta)

    pi_l, delta_l, a_l, sigma_y and nu_y are learned. Two guides, both exact in y:

    - ``guide="collapsed"``: q(z | x) alone. The model sums y1..yL out exactly: its z site has
      the marginal log sum_y p(y) p(z | y), one logsumexp over the ``[B, P]`` matrix of all
      path densities (:class:`PathMixture`, ``sum_paths="closed_form"``), or, with
      ``sum_paths="enumerate"``, y1..yL are sites enumerated in the model and TraceEnum_ELBO
      computes the same sum (:class:`ComponentDensity`; the book's teaching form, slower). The
      decoder runs once per z.
    - ``guide="structured"``: q(y1 | x) q(yl | x, y<l) q(z | x, y), the y's enumerated in the
      guide (scVAE's scheme); the decoder runs once per path.
    - ``guide="structured_y"``: the structured guide's q(y | x) with one q(z | x) shared by all
      paths, q(y1 | x) q(yl | x, y<l) q(z | x) (not in the papers: the cheap variant of the
      structured guide that the hierarchy study measures). The y's are enumerated in the guide,
      but z does not depend on them: the decoder runs once per z, and the sum over paths is over
      log p(y) + log p(z | y) - log q(y | x) only.

    Shapes (``Trace.format_shapes()``, B=4, levels 2/3, D=2, G=50), collapsed guide::

        guide  z  dist      4 |  2
        model  z  dist      4 |  2       log_prob 4     (y summed out: sum_paths="closed_form")
               x  dist      4 | 50

    collapsed guide, ``sum_paths="enumerate"``::

        guide  z  dist      4 |  2
        model  y1 dist      4 |         value  2 1     (enumerated in the model)
               y2 dist  2 1 4 |         value 3 1 1
               z  dist 3 2 4 |  2       log_prob 3 2 4  (indexes the [B, P] matrix)
               x  dist      4 | 50

    structured guide::

        guide  y1 dist      4 |         value  2 1     (enumerated in the guide)
               y2 dist  2 1 4 |         value 3 1 1
               z  dist 3 2 4 |  2       value 3 2 4 2
        model  z  dist 3 2 4 |  2
               x  dist 3 2 4 | 50
    """

    discrete_kl = True  # model() takes beta_y, a KL warm-up weight of its own for the y's
    pyro_name = "momix"
    options = (
        "level_sizes",
        "prior",
        "guide",
        "sum_paths",
        "init",
        "init_epochs",
        "init_restarts",
        "usage_lambda",
        "sparse_levels",
    )
    # the hierarchy study's choice without labels (results page): Leiden start, no usage regulariser
    config_defaults = {"init": "vae_leiden", "init_epochs": 50, "usage_lambda": 0.0}

    @property
    def enumerated(self) -> bool:
        """Whether TraceEnum_ELBO has y sites to enumerate: in the guide (structured) or in the
        model (collapsed, ``sum_paths="enumerate"``); with ``"closed_form"`` the model has none."""
        return self.config.guide != "collapsed" or self.config.sum_paths == "enumerate"

    def __init__(
        self,
        n_genes: int,
        n_batches: int = 0,
        config: ModelConfig = ModelConfig(),
        level_sizes: tuple[int, ...] = (2, 4, 5, 9),
    ):
        super().__init__(n_genes, n_batches, config)
        if config.guide not in GUIDES or config.prior not in PRIORS or config.sum_paths not in SUM_PATHS:
            raise ValueError(
                f"guide must be one of {GUIDES}, prior one of {PRIORS} and sum_paths one of {SUM_PATHS}, "
                f"got {config.guide!r}, {config.prior!r}, {config.sum_paths!r}"
            )
        if config.guide != "collapsed" and config.sum_paths != "closed_form":
            raise ValueError(
                f"sum_paths is for the collapsed guide: the {config.guide} guide enumerates y in the guide"
            )
        self.level_sizes = tuple(int(k) for k in level_sizes)
        Ks, D, L = self.level_sizes, config.latent_dim, len(level_sizes)
        # p(yl | y<l): logits per prefix, [K1, ..., K(l-1), Kl]; uniform at initialisation
        self.prior_logits = nn.ParameterList([nn.Parameter(torch.zeros(Ks[: l + 1])) for l in range(L)])
        # p(z | y): nested offsets [K1..Kl, D] with learned level scales a_l (halving by level)
        self.offsets = nn.ParameterList([nn.Parameter(torch.randn(*Ks[: l + 1], D)) for l in range(L)])
        self.log_level_scale = nn.Parameter(torch.tensor([math.log(2.0 * 0.5**l) for l in range(L)]))
        self.log_sigma = nn.Parameter(torch.zeros(self.n_paths, D))  # per path
        self.df_raw = nn.Parameter(torch.full((self.n_paths,), math.log(math.expm1(5.0))))  # nu = 5
        if config.sparse_levels:  # log alpha_l of the Dir(alpha_l / K_l) prior on level l's usage
            self.log_level_alpha = nn.Parameter(torch.zeros(L))
        # q(z | x), or (structured) q(z | x, onehot(y1..yL))
        n_extra = sum(Ks) if config.guide == "structured" else 0
        self.encoder = Encoder(n_genes, n_batches, config.hidden_dims, D, n_extra=n_extra)
        if config.guide != "collapsed":  # q(y1 | x), q(yl | x, y<l) = softmax(W_l h + E_l[y<l])
            self.q_y_heads = nn.ModuleList([nn.Linear(config.hidden_dims[-1], k) for k in Ks])
            self.q_y_prefix = nn.ParameterList([nn.Parameter(torch.zeros(Ks[: l + 1])) for l in range(1, L)])
        # [P, K1 + ... + KL]: 1 where path p has y_l = j; q [P] @ it = every level's marginal at once
        paths = self._all_paths()
        onehots = [F.one_hot(y, K) for y, K in zip(paths, Ks)]
        self.register_buffer("level_indicator", torch.cat(onehots, -1).float(), persistent=False)

    @classmethod
    def from_adata(cls, adata, config: ModelConfig = ModelConfig(), seed: int = 0) -> MoMixVAE:
        """Level sizes: ``config.level_sizes``, else the number of classes per label level;
        components initialised by ``config.init`` with ``seed`` (see :mod:`hiermix_pyro.initialise`)."""
        from ..initialise import initialise

        sizes = config.level_sizes or tuple(n_classes(adata)) or (2, 4)
        model = cls(adata.n_vars, n_batches(adata), config, level_sizes=sizes)
        return initialise(model, adata, model.config.init, seed=seed)

    @property
    def n_paths(self) -> int:
        return math.prod(self.level_sizes)

    # ---- the prior, as [P]-sized tables in row-major path order ----
    def log_prior_paths(self) -> torch.Tensor:
        """log p(y1..yL) for every path: ``[K1, ..., KL]``."""
        out = self.log_sigma.new_zeros(())
        for logits in self.prior_logits:
            out = out.unsqueeze(-1) + F.log_softmax(logits, -1)  # [K1..Kl]
        return out

    def components(self):
        """loc, scale ``[P, D]`` and df ``[P]`` (None for Gaussian components)."""
        a = self.log_level_scale.exp()
        D = self.config.latent_dim
        loc = self.log_sigma.new_zeros(D)
        for l, delta in enumerate(self.offsets):
            loc = loc.unsqueeze(-2) + a[l] * delta  # [K1..Kl, D]
        df = F.softplus(self.df_raw) + 1.0 if self.config.prior == "studentt" else None
        return loc.reshape(-1, D), self.log_sigma.exp(), df

    def path_index(self, ys):
        """Row-major joint index of (y1, ..., yL), broadcasting enumerated shapes."""
        return path_index(ys, self.level_sizes)

    def model(self, x, s=None, n_obs=None, beta=1.0, usage_lambda=0.0, beta_y=None):
        collapsed = self.config.guide == "collapsed"
        register(self.pyro_name, self, skip=self._guide_only())
        loc, scale, df = self.components()  # [P, D]
        components = DiagComponents(loc, scale, df)  # this step's component constants, computed once
        enum = {"enumerate": "parallel"} if collapsed else {}
        log_prior = self.log_prior_paths().reshape(-1) if usage_lambda or beta_y is not None else None  # [P]
        if self.config.sparse_levels:  # log p(alpha_l) + log Dir(p(yl) | alpha_l / K_l), once per step
            pyro.factor("level_usage", self.log_level_usage_prior())
        if usage_lambda and not collapsed:  # q(y | x) needs no z: before the y's
            self._usage_factor(
                self.log_q_paths(self.encoder.hidden(x, s)).reshape(x.shape[0], -1).exp(),
                log_prior,
                usage_lambda,
                n_obs,
            )
        with self.cells(x, n_obs):
            if beta_y is not None and not collapsed:  # KL weight beta_y on the discrete part
                pyro.factor("kl_y", (beta - beta_y) * self.kl_y(x, s))  # [B]
            with poutine.scale(scale=beta):
                if collapsed and self.config.sum_paths == "closed_form":
                    # p(z) = sum_y p(y1..yL) p(z | y): y summed out in one logsumexp over the [B, P] matrix
                    log_prior = self.log_prior_paths().reshape(-1) if log_prior is None else log_prior  # [P]
                    pz = PathMixture(log_prior, components, x.shape[0])
                    z = pyro.sample("z", pz)  # log_prob: [B]
                else:
                    ys = []
                    for l, logits in enumerate(self.prior_logits):
                        # (no argument validation: the logits are the model's own parameters, never NaN unless
                        # training diverged, which fit() reports; it costs a check per site and step)
                        p_yl = dist.Categorical(logits=take_enumerated(logits, ys), validate_args=False)
                        ys.append(pyro.sample(f"y{l + 1}", p_yl, infer=enum))  # [Kl, 1, ..., 1] when enumerated
                    # p(z | y1..yL): the component of the whole path (log_prob: [KL, ..., K1, B])
                    pz = ComponentDensity(
                        tuple(ys), loc, scale, df, x.shape[0], self.level_sizes, components=components
                    )
                    z = pyro.sample("z", pz)
            pyro.sample("x", self.px(z, x, s), obs=x)  # [K?, B, G]
            if collapsed and log_prior is not None:  # p(y | z) [B, P], from the z site's own [B, P] matrix
                if isinstance(pz, PathMixture):
                    log_post = pz.log_posterior(z)
                else:
                    log_post = (log_prior + pz.log_prob_matrix(z)).log_softmax(-1)
            if beta_y is not None and collapsed:
                pyro.factor("kl_y", (beta - beta_y) * categorical_kl(log_post, log_prior))  # [B]
        if usage_lambda and collapsed:
            self._usage_factor(log_post.exp(), log_prior, usage_lambda, n_obs)

    def level_usage(self) -> list[torch.Tensor]:
        """log p(yl) for each level, the prior's marginal usage of its clusters: ``[Kl]`` each."""
        table, L = self.log_prior_paths(), len(self.level_sizes)
        return [table.logsumexp(tuple(d for d in range(L) if d != l)) if L > 1 else table for l in range(L)]

    def log_level_usage_prior(self) -> torch.Tensor:
        """``sparse_levels``: sum_l log InvGamma(alpha_l | 1, 1) + log Dir(p(yl) | alpha_l / K_l).

        As the VMM's prior on its weights (Stirn & Knowles, 2025), here on every level's marginal
        usage: with alpha_l / K_l < 1 the Dirichlet rewards a level for leaving clusters empty, so
        the number of clusters a level uses is learned (at most K_l). Not in the mixture-of-mixtures
        work, whose levels always have K_l clusters."""
        return sum(log_weights_hyperprior(a, u) for a, u in zip(self.log_level_alpha, self.level_usage()))

    def _guide_only(self) -> tuple[str, ...]:
        """Parameters the model leaves to the guide to register: the encoder, with the collapsed
        guide (the structured model reads q(y | x) for its regularisers); ``df_raw``, unused by
        Gaussian components, is registered by neither."""
        gaussian = () if self.config.prior == "studentt" else ("df_raw",)
        return (("encoder.",) if self.config.guide == "collapsed" else ()) + gaussian

    def kl_y(self, x, s=None, z=None):
        """The discrete part of the KL, per cell ``[B]``: structured, KL(q(y | x) || p(y));
        collapsed, KL(p(y | z) || p(y)) at the z drawn from q(z | x).

        The ELBO's KL term is KL_z + KL_y with, for the collapsed guide,
        log q(z | x) - log p(z) = E_{p(y|z)}[log q(z | x) - log p(z | y)] + KL(p(y | z) || p(y));
        weighting the whole KL by beta and adding ``(beta - beta_y) * KL_y`` weights the discrete
        part by beta_y (the book's hierarchical chapter derives it).
        """
        log_p = self.log_prior_paths().reshape(-1)  # [P]
        if z is None:
            log_q = self.log_q_paths(self.encoder.hidden(x, s)).reshape(x.shape[0], -1)  # [B, P]
        else:
            log_q = self.log_posterior_paths(z)  # [B, P]
        return categorical_kl(log_q, log_p)

    def _usage_factor(self, joint, log_prior, usage_lambda, n_obs):
        """lambda * sum_l KL(mean_B q(yl | x) || p(yl)); times n_obs, as the ELBO is a sum over
        the training set while the reference added lambda * KL to a per-cell mean.

        ``joint``: the minibatch's path posteriors ``[B, P]`` (collapsed: p(y | z); structured:
        q(y | x)); ``log_prior``: log p(y) ``[P]``. The minibatch mean comes first, then every
        level's marginal in one product with ``level_indicator`` (sums commute with the mean)."""
        q_bar = joint.mean(0) @ self.level_indicator  # [K1 + ... + KL]: mean_B q(yl | x), levels side by side
        p_bar = log_prior.exp() @ self.level_indicator  # [K1 + ... + KL]: p(yl)
        kl = (q_bar * (q_bar.clamp(min=1e-10).log() - p_bar.clamp(min=1e-10).log())).sum()
        pyro.factor("usage", -usage_lambda * (n_obs or joint.shape[0]) * kl)

    def guide(self, x, s=None, n_obs=None, beta=1.0, usage_lambda=0.0, beta_y=None):
        register(self.pyro_name, self, only=("encoder.",) if self.config.guide == "collapsed" else ())
        with self.cells(x, n_obs):
            h = self.encoder.hidden(x, s)  # [B, H]
            with poutine.scale(scale=beta):
                if self.config.guide == "collapsed":
                    pyro.sample("z", dist.Normal(*self.encoder.head(h)).to_event(1))  # [B, D]
                    return
                ys = []
                for l, logits in enumerate(self.q_y_logits(h)):  # [B, K1..Kl]
                    ys.append(
                        pyro.sample(
                            f"y{l + 1}",
                            dist.Categorical(logits=Vindex(logits)[(..., *ys, slice(None))] if ys else logits),
                            infer={"enumerate": "parallel"},
                        )
                    )  # [Kl, 1, ..., 1]
                if self.config.guide == "structured_y":  # one q(z | x) for every path
                    pyro.sample("z", dist.Normal(*self.encoder.head(h)).to_event(1))  # [B, D]
                    return
                onehots = [F.one_hot(y, K).to(h) for y, K in zip(ys, self.level_sizes)]  # [Kl, 1.., Kl]
                loc, scale = self.encoder.head(cat_broadcast(h, *onehots))  # [KL, ..., K1, B, D]
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def schedule(self, progress: float, beta: float) -> dict:
        """The usage regulariser's weight: lambda for the first half, then cosine-decayed to
        lambda / 10 (none when ``config.usage_lambda`` is 0, momix's default; the reference used 100)."""
        return usage_schedule(self.config.usage_lambda, progress)

    # ---- structured guide: q(y | x) ----
    def q_y_logits(self, h):
        """Logits of q(yl | x, y<l) for every prefix: ``[B, K1, ..., Kl]`` per level."""
        out = [self.q_y_heads[0](h)]
        for l, prefix in enumerate(self.q_y_prefix, start=1):
            w = self.q_y_heads[l](h)  # [B, Kl]
            out.append(w.reshape(w.shape[:1] + (1,) * l + w.shape[1:]) + prefix)  # [B, K1..Kl]
        return out

    def log_q_paths(self, h):
        """log q(y1..yL | x): ``[B, K1, ..., KL]``."""
        out = h.new_zeros(h.shape[0])
        for logits in self.q_y_logits(h):
            out = out.unsqueeze(-1) + F.log_softmax(logits, -1)
        return out

    def _level_marginals(self, joint):  # [B, K1..KL] -> list of [B, Kl]
        L = len(self.level_sizes)
        return [joint.sum(dim=tuple(d + 1 for d in range(L) if d != l)) if L > 1 else joint for l in range(L)]

    def log_posterior_paths(self, z):
        """Exact p(y1..yL | z) for each z: ``[..., B, D] -> [..., B, P]`` (what enumeration gives)."""
        log_joint = self.log_prior_paths().reshape(-1) + DiagComponents(*self.components()).log_prob_matrix(z)
        return log_joint.log_softmax(-1)

    # ---- inference helpers ----
    def q_z(self, x, s=None):
        """q(z | x); for the structured guide the mixture sum_y q(y | x) q(z | x, y)."""
        h = self.encoder.hidden(x, s)  # [B, H]
        if self.config.guide != "structured":  # collapsed, structured_y: one Gaussian
            return dist.Normal(*self.encoder.head(h)).to_event(1)
        onehot = torch.cat([F.one_hot(ys, K) for ys, K in zip(self._all_paths(), self.level_sizes)], -1)  # [P, sum K]
        loc, scale = self.encoder.head(cat_broadcast(h.unsqueeze(-2), onehot.to(h)))  # [B, P, D]
        return dist.MixtureSameFamily(
            dist.Categorical(logits=self.log_q_paths(h).reshape(h.shape[0], -1)), dist.Normal(loc, scale).to_event(1)
        )

    def _all_paths(self):
        """(y1, ..., yL) of every path in row-major order: L tensors of shape ``[P]``."""
        grids = torch.meshgrid(
            *[torch.arange(k, device=self.log_sigma.device) for k in self.level_sizes], indexing="ij"
        )
        return [g.reshape(-1) for g in grids]

    def log_p_z(self, z):
        """log sum_y p(y) p(z | y), exact over all P paths: ``[S, B, D] -> [S, B]``."""
        log_pz_y = DiagComponents(*self.components()).log_prob_matrix(z)  # [S, B, P]
        return (self.log_prior_paths().reshape(-1) + log_pz_y).logsumexp(-1)

    @torch.no_grad()
    def cluster_probs(self, x, s=None, n_samples: int = 16):
        """Per-level cluster posteriors ``[B, Kl]``. Collapsed: the exact enumeration posterior
        p(y | z), marginalised per level and averaged over ``n_samples`` draws z ~ q(z | x).
        Structured: the guide's q(yl | x) = sum_{y<l} q(y1 | x) ... q(yl | x, y<l)."""
        if self.config.guide == "collapsed":
            z = self.q_z(x, s).sample((n_samples,))  # [S, B, D]
            joint = self.log_posterior_paths(z).exp().mean(0)  # [B, P]
        else:
            joint = self.log_q_paths(self.encoder.hidden(x, s)).exp()
        return self._level_marginals(joint.reshape(-1, *self.level_sizes))
