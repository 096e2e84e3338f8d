"""What every model shares: the decoder, the count likelihood p(x | z, s) and the cells plate.

A model subclasses :class:`CountModel` and writes its own ``model()`` and ``guide()`` side by
side, plus the small inference helpers used by the metrics:

- ``q_z(x, s)``: the (marginal) posterior over z as a distribution, batch ``[B]``, event ``[D]``;
- ``log_p_z(z)``: the (marginal) prior density of z, exact in any discrete variables;
- ``cluster_probs(x, s)``: one ``[B, K_l]`` posterior per cluster level (empty for no clusters).
"""

from __future__ import annotations

import pyro
import torch
from torch import nn

from ..config import ModelConfig
from ..likelihoods import EvaluatedCounts, count_distribution, library_size
from ..nn import Decoder

COMMON_OPTIONS = ("latent_dim", "hidden_dims", "likelihood")  # the ModelConfig fields every model uses


class CountModel(nn.Module):
    max_plate_nesting = 1  # the "cells" plate, dim=-1; enumeration uses dims to its left
    enumerated = False  # True: discrete sites enumerated by TraceEnum_ELBO
    level_sizes: tuple[int, ...] = ()  # clusters per level, coarse to fine (none for the VAE)
    options: tuple[str, ...] = ()  # ModelConfig fields this model uses beyond COMMON_OPTIONS
    config_defaults: dict = {}  # this model's values of ModelConfig fields left at None (init, init_epochs)

    @classmethod
    def resolve(cls, config: ModelConfig) -> ModelConfig:
        """``config`` with the fields it leaves at None filled by this model's own defaults
        (``config_defaults``): what the model runs with, and what a run records."""
        from dataclasses import replace

        own = {k: v for k, v in cls.config_defaults.items() if getattr(config, k) is None}
        return replace(config, **own) if own else config

    @classmethod
    def check_options(cls, config: ModelConfig, name: str | None = None) -> None:
        """Fail, naming the fields, when ``config`` sets a field this model would ignore.

        "Sets" means differs from the ModelConfig default: a model either uses a setting or
        refuses it, never drops it silently.
        """
        used = set(COMMON_OPTIONS) | set(cls.options)
        default = ModelConfig()
        ignored = {
            f: getattr(config, f) for f in vars(default) if f not in used and getattr(config, f) != getattr(default, f)
        }
        if ignored:
            settings = ", ".join(f"{k}={v!r}" for k, v in ignored.items())
            raise ValueError(
                f"model {name or cls.__name__!r} does not use {settings}; leave "
                f"{'it' if len(ignored) == 1 else 'them'} at the default. "
                f"It uses: {', '.join(sorted(used))}"
            )

    def __init__(self, n_genes: int, n_batches: int = 0, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config = type(self).resolve(config)
        self.n_genes, self.n_batches = n_genes, n_batches
        self.decoder = Decoder(
            n_genes, n_batches, config.hidden_dims, config.latent_dim, zero_inflated=config.likelihood == "zinb"
        )
        # per-gene log inverse dispersion (scVI's px_r); unused by the Poisson likelihood
        self.log_theta = nn.Parameter(torch.zeros(n_genes))
        self._compiled_log_px = None  # set by compile_likelihood()

    @classmethod
    def from_adata(cls, adata, config: ModelConfig = ModelConfig(), seed: int = 0) -> CountModel:
        """Build the model with sizes read from an AnnData prepared by ``hiermix_pyro.data``;
        ``seed`` drives any data-dependent initialisation (models that have one override this)."""
        return cls(adata.n_vars, n_batches(adata), config)

    def cells(self, x: torch.Tensor, n_obs: int | None = None) -> pyro.plate:
        """The cells plate. With ``n_obs`` (training-set size) > B, Pyro scales the minibatch's
        log-densities by n_obs / B through ``subsample_size``."""
        return pyro.plate("cells", size=n_obs or x.shape[0], subsample_size=x.shape[0], dim=-1)

    def px(self, z: torch.Tensor, x: torch.Tensor, s: torch.Tensor | None = None):
        """p(x | z, s, l) with the observed library size l: batch ``[K?, B]``, event ``[G]``.

        After :meth:`compile_likelihood`, the same density already evaluated at ``x``.
        """
        if self._compiled_log_px is not None:
            return EvaluatedCounts(self._compiled_log_px(z, x, s), x)
        return self._px(z, x, s)

    def _px(self, z, x, s=None):
        log_rho, gate_logits = self.decoder(z, s)  # [K?, B, G]
        log_mu = library_size(x).clamp(min=1.0).log() + log_rho
        return count_distribution(self.config.likelihood, log_mu, self.log_theta, gate_logits)

    def compile_likelihood(self) -> None:
        """Evaluate log p(x | z, s) with ``torch.compile``: decoder, softmax and count
        log-density fused into a few loops (one graph, dynamic shapes).

        Worth its compile time (tens of seconds) where the decoder runs on many z's per cell:
        momix's structured guide decodes one z per path, ``[P, B, G]`` tensors whose
        elementwise passes dominate its step (1.1x faster per step on an idle CPU core, see
        benchmarks/step_time.py; more where memory bandwidth is shared). The values are the
        eager ones (tested); ``TrainConfig(compile_likelihood=True)`` calls this.
        """
        import torch._functorch.config as functorch_config

        # TraceEnum_ELBO runs backward with retain_graph=True, which donated buffers forbid
        functorch_config.donated_buffer = False
        self._compiled_log_px = torch.compile(lambda z, x, s: self._px(z, x, s).log_prob(x), dynamic=True)

    # ---- hooks called by the training loop ----
    def schedule(self, progress: float, beta: float) -> dict:
        """Extra keyword arguments for ``model()``/``guide()`` at this point of training
        (``progress`` in [0, 1]); e.g. an annealed regulariser weight. Their defaults must give
        the plain ELBO, which is what validation and metrics use."""
        return {}

    def prior_step(self, x, s=None) -> None:
        """Update prior parameters after each SVI step (Empirical-Bayes EM models override it)."""

    # ---- inference helpers for metrics; subclasses override what they have ----
    def q_z(self, x, s=None):
        raise NotImplementedError

    def log_p_z(self, z):
        raise NotImplementedError

    def cluster_probs(self, x, s=None) -> list[torch.Tensor]:
        return []

    @torch.no_grad()
    def latent(self, x, s=None) -> torch.Tensor:
        """Posterior mean E_q[z | x]: ``[B, D]``."""
        return self.q_z(x, s).mean

    def log_p_x_z(self, x, z, s=None) -> torch.Tensor:
        """log p(x | z, s): ``[S, B, D] -> [S, B]``."""
        return self.px(z, x, s).log_prob(x)


def n_batches(adata) -> int:
    """Number of batch categories (0 without a batch key)."""
    key = adata.uns.get("hiermix", {}).get("batch_key")
    return adata.obs[key].astype("category").cat.categories.size if key else 0


def n_classes(adata) -> list[int]:
    """Number of classes per label level, coarse to fine."""
    levels = adata.uns.get("hiermix", {}).get("levels", [])
    return [adata.obs[lvl].astype("category").cat.categories.size for lvl in levels]
