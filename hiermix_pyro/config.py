"""Frozen configuration dataclasses.

Every knob of a run lives in one of three dataclasses, passed explicitly (never an ``args``
namespace). The parameters cell of ``notebooks/train.ipynb`` maps one-to-one onto their fields.
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass, field, fields

LIKELIHOODS = ("nb", "zinb", "poisson")


@dataclass(frozen=True)
class DataConfig:
    """What data to load and how to preprocess it (see :mod:`hiermix_pyro.data`)."""

    dataset: str = "pbmc68k"  # a named dataset, an ``.h5ad`` path, or "simulated"
    labels_key: str | None = None  # finest label column (named datasets know theirs)
    batch_key: str | None = None  # batch column (scVI-style covariate), optional
    layer: str | None = None  # AnnData layer holding counts (None: ``.X``)
    data_dir: str | None = None  # where named real sets live (env ``HIERMIX_DATA_DIR``)
    hierarchy: str | None = None  # CSV/TSV: finest label first, then the levels coarse to fine
    level_keys: tuple[str, ...] = ()  # obs columns holding the levels, coarse to fine (last: finest)
    drop_labels: tuple[str, ...] = ()  # finest labels to leave out ("CD14+ Monocyte": 9 pops)
    n_hvg: int | None = 500  # highly variable genes (scanpy seurat_v3 on counts); None: all
    subsample: int | None = None  # keep this many cells (stratified), None: all
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / validation / test
    seed: int = 0

    def __post_init__(self):
        # the label levels come from one place: the built-in tree (built-in sets only), a
        # hierarchy table, or level_keys; the file and the columns are checked when loading
        if isinstance(self.level_keys, str):
            raise TypeError(f"level_keys must be a tuple of obs columns, got the string {self.level_keys!r}")
        object.__setattr__(self, "level_keys", tuple(self.level_keys))
        if self.hierarchy is not None and self.level_keys:
            raise ValueError("give either hierarchy (a CSV/TSV table) or level_keys (obs columns), not both")
        if len(set(self.level_keys)) < len(self.level_keys):
            raise ValueError(f"level_keys repeats a column: {list(self.level_keys)}")
        if self.level_keys and self.labels_key not in (None, self.level_keys[-1]):
            raise ValueError(
                f"labels_key={self.labels_key!r} differs from the finest of level_keys "
                f"({self.level_keys[-1]!r}); leave labels_key out or make them agree"
            )


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and prior of a model. Fields a model does not use are ignored by it."""

    latent_dim: int = 10
    hidden_dims: tuple[int, ...] = (128,)
    likelihood: str = "nb"  # nb | zinb | poisson
    n_components: int | None = None  # mixture components K (None: number of finest classes)
    # -- hierarchical mixtures (momix, indmom) --
    level_sizes: tuple[int, ...] | None = None  # clusters per level, coarse to fine (None: classes per label level)
    prior: str = "normal"  # component family: normal | studentt (multivariate t, learned df)
    guide: str = "collapsed"  # momix: collapsed (q(z|x), y summed out in the model) | structured (q(y|x) q(z|x,y)) | structured_y (q(y|x) q(z|x))
    sum_paths: str = "closed_form"  # collapsed guide: closed_form (logsumexp over the [B, P] matrix) | enumerate (Pyro enumerates y1..yL in the model; the same ELBO, slower)
    init: str | None = (
        None  # components: vae_leiden (VAE pre-training, Leiden at K_l per level) | vae_kmeans (nested k-means) | vae_ward (coarser levels by Ward) | vae_leiden_ward (Leiden at the finest level, coarser by Ward) | vae_leiden_single (Leiden at the finest level, coarser by single linkage) | vae_divisive (Leiden at the finest level, coarser by top-down Gaussian-mixture splits of the counts' PCA) | vae_divisive_top (the first level by that split, the others by Leiden) | pca_kmeans (reference) | random; None: the model's own (momix vae_leiden; mixture, indmom vae_kmeans)
    )
    init_epochs: int | None = (
        None  # plain-VAE pre-training epochs of the vae_* inits; None: the model's own (momix 50; mixture, indmom 10)
    )
    init_restarts: int = 1  # initialise this many times (seeds seed + 1000 r), keep the best validation ELBO
    usage_lambda: float | None = (
        None  # marginal-usage regulariser weight during training (reference 100; 0: off): held for half of training, then cosine-decayed to 10%; None: the model's own (momix 0, mixture / indmom 100)
    )
    sparse_levels: bool = False  # momix / mixture: Dir(alpha_l / K_l) prior on each level's marginal usage, alpha_l ~ InvGamma(1, 1) (the VMM's prior on its weights), so a level can switch clusters off
    # -- VampPrior / Bayesian GMM / VMM priors --
    # (vampprior, gmm, vmm use K = n_components, default 100 for them)
    em_update: str = "gradient"  # gmm M-step: gradient (one Adam step on the MAP objective) | closed
    em_lr: float = 1e-2  # prior's own learning rate: Adam lr (gradient) or stochastic-EM step size (closed); 1e-2 from the sweep (benchmarks/results/legacy/eb_sweep_*.csv; now the eb_sweep study)
    em_after_warmup: bool = True  # gmm / vmm: first M-step when the KL warm-up ends (prior fixed before)

    def __post_init__(self):
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {self.likelihood!r}; valid: {', '.join(LIKELIHOODS)}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {self.latent_dim}")
        if self.em_update not in ("gradient", "closed"):
            raise ValueError(f"unknown em_update {self.em_update!r}; valid: gradient, closed")
        if not self.em_lr > 0:
            raise ValueError(f"em_lr must be positive, got {self.em_lr}")
        if self.n_components is not None and self.n_components < 1:
            raise ValueError(f"n_components must be positive, got {self.n_components}")


@dataclass(frozen=True)
class TrainConfig:
    """Stochastic variational inference settings (see :func:`hiermix_pyro.train.fit`)."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    warmup_epochs: int = 5  # KL weight beta rises linearly from ~0 to 1 over these epochs
    warmup_epochs_discrete: int | None = (
        None  # momix / indmom: the discrete (cluster) part of the KL gets its own warm-up; None: the same beta
    )
    patience: int = 20  # early stopping on validation loss; None or 0: never stop early
    clip_norm: float = 10.0  # gradient clipping (per parameter, Pyro's ClippedAdam)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    jit: bool = False  # JitTraceEnum_ELBO: less Pyro overhead per step
    compile_likelihood: bool = (
        False  # torch.compile log p(x | z) (decoder + count density): for momix's structured guide
    )
    checkpoint_path: str | None = None  # write a checkpoint every epoch; resume from it
    progress: bool = True  # tqdm progress bar

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.warmup_epochs_discrete is not None and self.warmup_epochs_discrete < 0:
            raise ValueError(f"warmup_epochs_discrete must be None or >= 0, got {self.warmup_epochs_discrete}")


def from_dict(cls, params: dict):
    """Build a config dataclass from a dict, ignoring keys it does not have.

    Tuple fields accept lists (papermill, JSON), one number, and strings from a command line:
    ``"[100, 100]"``, ``"(2, 4)"``, ``'["CD14+ Monocyte"]'`` or one bare label ``"CD14+ Monocyte"``.
    """
    names = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in params.items() if k in names}
    for f in fields(cls):
        if f.name in kwargs and "tuple" in str(f.type) and isinstance(kwargs[f.name], (list, str, int)):
            kwargs[f.name] = _as_tuple(kwargs[f.name])
    return cls(**kwargs)


def _as_tuple(value) -> tuple:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):  # a bare string: one item
            return (value,)
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


__all__ = ["DataConfig", "ModelConfig", "TrainConfig", "LIKELIHOODS", "asdict", "from_dict", "field"]
