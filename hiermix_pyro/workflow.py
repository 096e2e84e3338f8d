"""The main job, in steps a notebook can show one cell at a time.

``load`` -> ``build_model`` -> ``fit`` -> ``annotate`` -> ``evaluate`` -> ``save_run``.
:func:`run` chains them for scripts and benchmarks.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from . import __version__
from .config import DataConfig, ModelConfig, TrainConfig
from .data import DATASETS, load_dataset, prepare
from .metrics import (
    adata_hierarchy_scores,
    cluster_latent,
    elbo,
    hungarian_match,
    iwae,
    level_scores,
    nesting_score,
)
from .models import build_model, check_model_name
from .train import CountTensors, fit, seed_everything

SMOKE = dict(epochs=2, subsample=300, n_hvg=100, n_iwae_samples=5)  # what SMOKE_TEST shrinks
KMEANS_FULL_MAX = 50_000  # cells above which annotate's k-means (vae) is minibatch k-means
LIKELIHOOD_MAX_CELLS = 10_000  # evaluate: IWAE and ELBO on at most this many test cells (a seeded sample)


def smoke_test_requested(flag: bool = False) -> bool:
    """True if ``flag`` or the environment variable ``SMOKE_TEST`` is set (to anything but 0/false)."""
    return bool(flag) or os.environ.get("SMOKE_TEST", "").lower() not in ("", "0", "false", "no")


# the parameters cell of notebooks/train.ipynb, in its order (a test keeps the two equal)
NOTEBOOK_PARAMETERS: tuple[str, ...] = (
    "model",
    "dataset",
    "seed",
    "epochs",
    "device",
    "likelihood",
    "latent_dim",
    "hidden_dims",
    "n_components",
    "level_sizes",
    "prior",
    "guide",
    "sum_paths",
    "init",
    "init_epochs",
    "init_restarts",
    "usage_lambda",
    "sparse_levels",
    "em_update",
    "em_lr",
    "em_after_warmup",
    "batch_size",
    "lr",
    "warmup_epochs",
    "warmup_epochs_discrete",
    "patience",
    "jit",
    "compile_likelihood",
    "n_hvg",
    "subsample",
    "labels_key",
    "batch_key",
    "hierarchy",
    "level_keys",
    "drop_labels",
    "data_dir",
    "n_iwae_samples",
    "output_dir",
    "smoke_test",
)
_NOT_PARAMETERS = {"In", "Out", "get_ipython", "exit", "quit", "open"}  # IPython's own globals


def check_parameters(namespace: dict) -> None:
    """Fail on a notebook global that is not a parameter of ``train.ipynb`` (e.g. a mistyped ``-p``).

    papermill only warns about an unknown ``-p`` name and assigns it in a cell after the parameters
    cell, so the notebook calls this on ``globals()`` first. Names starting with ``_``, IPython's
    globals, modules and callables are skipped (imports, not parameters).

    Raises
    ------
    ValueError
        Naming the unknown parameters and listing the valid ones (:data:`NOTEBOOK_PARAMETERS`).
    """
    import difflib
    import types

    unknown = sorted(
        name
        for name, value in namespace.items()
        if name not in NOTEBOOK_PARAMETERS
        and not name.startswith("_")
        and name not in _NOT_PARAMETERS
        and not isinstance(value, types.ModuleType)
        and not callable(value)
    )
    if unknown:
        hints = [
            f"{name} (did you mean {close[0]}?)"
            if (close := difflib.get_close_matches(name, NOTEBOOK_PARAMETERS, 1))
            else name
            for name in unknown
        ]
        raise ValueError(f"unknown parameters: {', '.join(hints)}; valid parameters: {', '.join(NOTEBOOK_PARAMETERS)}")


def check_names(model: str, dataset: str) -> None:
    """Fail early, listing the valid names, on an unknown model or dataset."""
    check_model_name(model)
    if dataset not in DATASETS and not Path(dataset).exists():
        raise ValueError(
            f"unknown dataset {dataset!r} (not a name and no such file); "
            f"valid datasets: {', '.join(DATASETS)}, or a path to an .h5ad file"
        )


def load(config: DataConfig = DataConfig(), likelihood: str = "nb") -> ad.AnnData:
    """Load and prepare a dataset: counts, hierarchy levels, HVGs, ``obs['split']``."""
    adata = load_dataset(
        config.dataset,
        labels_key=config.labels_key,
        batch_key=config.batch_key,
        layer=config.layer,
        data_dir=config.data_dir,
        drop_labels=config.drop_labels,
        hierarchy=config.hierarchy,
        level_keys=config.level_keys,
        seed=config.seed,
    )
    return prepare(
        adata,
        n_hvg=config.n_hvg,
        subsample=config.subsample,
        split=config.split,
        seed=config.seed,
        likelihood=likelihood,
    )


@torch.no_grad()
def _posteriors(model, data: CountTensors, batch_size: int = 512):
    """Latent means ``[N, D]`` and cluster posteriors per level ``[N, K_l]``, in minibatches
    (only one minibatch of counts is dense at a time)."""
    latent, levels, start = None, None, 0
    for x, s in data.batches(batch_size):
        z, probs = model.latent(x, s), model.cluster_probs(x, s)
        if latent is None:  # filled in place: no list of small tensors between the large temporaries
            latent = np.empty((len(data), z.shape[-1]), dtype=np.float32)
            levels = [np.empty((len(data), p.shape[-1]), dtype=np.float32) for p in probs]
        stop = start + x.shape[0]
        latent[start:stop] = z.cpu().numpy()
        for out, p in zip(levels, probs):
            out[start:stop] = p.cpu().numpy()
        start = stop
    return latent, levels


def annotate(model, adata: ad.AnnData, seed: int = 0) -> ad.AnnData:
    """Write the latent space and cluster assignments into ``adata`` (in place).

    - ``obsm['X_latent']``: posterior means E_q[z | x];
    - ``obsm['q_y<l>']``: cluster posteriors of model level l (mixture models);
    - ``obs['cluster_<level>']``: one clustering per label level. Mixture models use argmax of
      their posterior (level l for label level l when the depths agree, else their finest level);
      models without clusters (``vae``) get k-means on the latent with as many clusters as classes
      (minibatch k-means, seeded, above ``KMEANS_FULL_MAX`` cells);
    - ``uns['hiermix']['level_map']``: which clustering each label level got, ``{label level:
      model level}`` with model levels counted from 1 (coarsest) as in ``q_y<l>``, or ``"kmeans"``;
    - ``obs['confidence_<level>']``: how probable each cell's cluster is for it (its posterior
      probability; for k-means, minus the distance to the cluster's centre): the VMM paper's
      accuracy labels each cluster by its most confident member;
    - ``obs['aligned_<level>']``: clusters renamed to their Hungarian-matched class ("unmatched"
      otherwise), for figures that put truth and clusters side by side.
    """
    device = next(model.parameters()).device
    latent, probs = _posteriors(model, CountTensors.from_adata(adata, device))
    adata.obsm["X_latent"] = latent
    for i, p in enumerate(probs, start=1):
        adata.obsm[f"q_y{i}"] = p
    levels = adata.uns["hiermix"]["levels"]
    level_map = {}
    for i, level in enumerate(levels):
        if not probs:
            n = adata.obs[level].astype("category").cat.categories.size
            clusters = _kmeans(latent, n, seed)
            level_map[level] = "kmeans"
        else:
            model_level = i if len(probs) == len(levels) else len(probs) - 1
            clusters = probs[model_level].argmax(1)
            level_map[level] = model_level + 1
        adata.obs[f"confidence_{level}"] = _confidence(clusters, probs[level_map[level] - 1] if probs else None, latent)
        adata.obs[f"cluster_{level}"] = pd.Categorical(clusters.astype(str))
        match = hungarian_match(adata.obs[level].to_numpy(), clusters)
        adata.obs[f"aligned_{level}"] = pd.Categorical([str(match.get(c, "unmatched")) for c in clusters])
    adata.uns["hiermix"]["level_map"] = level_map
    return adata


def _kmeans(latent: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """k-means (10 restarts) up to ``KMEANS_FULL_MAX`` cells; above, scikit-learn's minibatch
    k-means (batches of 4,096 cells, 3 restarts), whose cost does not grow with the restarts x N."""
    if len(latent) <= KMEANS_FULL_MAX:
        return cluster_latent(latent, n_clusters, method="kmeans", seed=seed)
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=n_clusters, batch_size=4096, n_init=3, random_state=seed)
    return km.fit_predict(np.asarray(latent, dtype=np.float32))


def _confidence(clusters: np.ndarray, probs: np.ndarray | None, latent: np.ndarray) -> np.ndarray:
    """Each cell's probability of its own cluster ``[N]``; without probabilities, minus the
    Euclidean distance of its latent mean to its cluster's centroid."""
    if probs is not None:
        return probs[np.arange(len(clusters)), clusters]
    centres = pd.DataFrame(latent).groupby(clusters).mean()
    return -np.linalg.norm(latent - centres.loc[clusters].to_numpy(), axis=1)


def evaluate(
    model, adata: ad.AnnData, n_iwae_samples: int = 100, seed: int = 0, max_likelihood_cells: int | None = None
) -> dict:
    """Clustering scores on all cells per label level; IWAE and ELBO per cell on the test split.

    The IWAE and the ELBO are computed on at most ``max_likelihood_cells`` test cells (default
    ``LIKELIHOOD_MAX_CELLS``; None in the call means the default, 0 means no cap): above it, on a
    sample of that many drawn without replacement with ``seed``, the same cells for both. The
    returned ``likelihood_cells`` and ``likelihood_max_cells`` record it (in ``metrics.json``).

    Each level also gets ``nesting`` (:func:`~hiermix_pyro.metrics.nesting_score` of its clusters
    inside the previous level's; NaN at the first level) and ``nesting_labels`` (the same for the
    true labels, 1 for a strict hierarchy), and ``model_level``: the model level (from 1, coarsest)
    whose clusters were scored against it, or ``"kmeans"`` (``uns['hiermix']['level_map']``).
    ``hierarchy`` scores the hierarchy as a whole (:func:`~hiermix_pyro.metrics.adata_hierarchy_scores`).
    A model initialised more than once (``init_restarts``) adds ``init_scores``, each start's seed
    and validation ELBO per cell, and ``init_seed``, the seed of the start it kept.

    Needs :func:`annotate` first (it reads ``obs['cluster_<level>']`` and the level map).
    """
    seed_everything(seed)
    levels = adata.uns["hiermix"]["levels"]
    scores = level_scores(
        adata.obs,
        levels,
        [adata.obs[f"cluster_{lvl}"].to_numpy() for lvl in levels],
        [adata.obs[f"confidence_{lvl}"].to_numpy() for lvl in levels],
    )
    level_map = adata.uns["hiermix"].get("level_map", {})
    for entry in scores:  # which model level was scored against this label level
        source = level_map.get(entry["level"])
        entry["model_level"] = source if source is None or isinstance(source, str) else int(source)
    for i in range(len(levels)):  # how far level-i clusters (and, as reference, labels) nest in level i-1's
        coarse, fine = levels[i - 1], levels[i]
        scores[i]["nesting"] = (
            nesting_score(adata.obs[f"cluster_{coarse}"].to_numpy(), adata.obs[f"cluster_{fine}"].to_numpy())
            if i
            else float("nan")
        )
        scores[i]["nesting_labels"] = (
            nesting_score(adata.obs[coarse].to_numpy(), adata.obs[fine].to_numpy()) if i else float("nan")
        )
    device = next(model.parameters()).device
    split = "test" if (adata.obs["split"] == "test").any() else None
    cap = LIKELIHOOD_MAX_CELLS if max_likelihood_cells is None else max_likelihood_cells
    cells = np.flatnonzero((adata.obs["split"] == split).to_numpy()) if split else np.arange(adata.n_obs)
    if cap and len(cells) > cap:  # a seeded sample; numpy's generator leaves torch's state alone
        cells = np.sort(np.random.default_rng(seed).choice(cells, size=cap, replace=False))
        data = CountTensors.from_adata(adata[cells], device)
    else:
        data = CountTensors.from_adata(adata, device, split)
    integration = _integration_scores(adata)
    restarts = getattr(model, "init_scores", None)
    if restarts:
        restarts = dict(
            init_scores=[dict(seed=int(s), val_elbo=float(e)) for s, e in restarts],
            init_seed=int(max(restarts, key=lambda se: se[1])[0]),
        )
    return dict(
        levels=scores,
        iwae=float(np.mean(iwae(model, data, n_samples=n_iwae_samples))),
        elbo=float(elbo(model, data)),
        likelihood_split=split or "all",
        likelihood_cells=len(data),
        likelihood_max_cells=cap or None,
        n_iwae_samples=n_iwae_samples,
        hierarchy=adata_hierarchy_scores(adata),
        **({"scib": integration} if integration else {}),
        **(restarts or {}),
    )


def _integration_scores(adata) -> dict | None:
    """scIB scores of ``obsm['X_latent']`` when the data have a batch key and ``scib-metrics`` is
    installed (the ``scib`` extra); ``HIERMIX_SCIB=0`` skips them (they take minutes on a CPU)."""
    from .metrics.integration import scib_available, scib_scores

    batch_key = adata.uns["hiermix"].get("batch_key")
    if not batch_key or not scib_available() or os.environ.get("HIERMIX_SCIB", "").lower() in ("0", "false", "no"):
        return None
    return scib_scores(adata, batch_key, adata.uns["hiermix"]["levels"][-1])


def config_hash(data_config: DataConfig, model_config: ModelConfig, train_config: TrainConfig) -> str:
    """Eight hex digits that tell two configurations apart. The settings a resumed run may change
    (epochs, patience, device, progress, the checkpoint's path) are left out, so that a longer
    run of the same configuration lands in the same folder and resumes there."""
    from .train import RESUMABLE_CHANGES

    train = {k: v for k, v in asdict(train_config).items() if k not in RESUMABLE_CHANGES}
    text = json.dumps(
        dict(data=asdict(data_config), model=asdict(model_config), train=train), sort_keys=True, default=str
    )
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def default_output_dir(
    model: str, data_config: DataConfig, model_config: ModelConfig, train_config: TrainConfig, smoke: bool = False
) -> Path:
    """``runs/<model>-<dataset>-seed<seed>-<config hash>`` (``runs/smoke/...`` for smoke runs, so
    that a smoke run's checkpoint is never resumed by a full run). Two runs share a folder (and
    a checkpoint) only when their configurations agree (:func:`config_hash`)."""
    name = f"{model}-{Path(data_config.dataset).stem}-seed{train_config.seed}-{config_hash(data_config, model_config, train_config)}"
    return Path("runs", *(["smoke"] if smoke else [])) / name


def _atomic_write(path: Path, write) -> None:
    """``write(tmp)`` then rename onto ``path``: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


ENVIRONMENT_PACKAGES = (
    "torch",
    "pyro-ppl",
    "numpy",
    "scipy",
    "scikit-learn",
    "scanpy",
    "anndata",
    "leidenalg",
    "igraph",
)


def environment() -> dict:
    """What besides the code and the configuration decides a run's numbers: the package versions,
    the processor and the instruction set torch's CPU kernels use (AVX2 and AVX-512 round
    differently, and a few hundred epochs make the difference visible), the GPU, and where the
    package was imported from (the checkout whose commit the run records)."""
    import platform
    import sys
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    processor = platform.processor() or platform.machine()
    try:  # Linux: the model name the processor reports
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        processor = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(
        python=sys.version.split()[0],
        platform=platform.platform(),
        processor=processor,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        torch_threads=torch.get_num_threads(),
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        package_path=str(Path(__file__).resolve().parent),
        packages={name: version(name) for name in ENVIRONMENT_PACKAGES},
    )


def save_run(output_dir, *, model_name, data_config, model_config, train_config, history, scores, adata) -> Path:
    """Write ``adata.h5ad``, ``history.json`` and, last, ``metrics.json`` into ``output_dir``.

    Each file is written atomically (to a temporary name, then renamed), and ``metrics.json``,
    the file a grid takes as the sign of a finished run, comes last: an interrupted save leaves
    no result that looks complete.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = dict(
        model=model_name,
        dataset=data_config.dataset,
        seed=train_config.seed,
        device=history["device"],
        epochs=history["epochs_run"],
        best_epoch=history["best_epoch"],
        train_seconds=history["train_seconds"],
        seconds_per_epoch=history["train_seconds"] / max(1, len(history["seconds"])),
        n_cells=adata.n_obs,
        n_genes=adata.n_vars,
        **scores,
        version=__version__,
        environment=environment(),
        config=dict(data=asdict(data_config), model=asdict(model_config), train=asdict(train_config)),
    )
    _atomic_write(out / "adata.h5ad", lambda tmp: adata.write_h5ad(tmp))
    _atomic_write(out / "history.json", lambda tmp: tmp.write_text(json.dumps(history, indent=2, default=str)))
    _atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2, default=str)))
    return out


def run(
    model_name: str,
    data_config: DataConfig = DataConfig(),
    model_config: ModelConfig = ModelConfig(),
    train_config: TrainConfig = TrainConfig(),
    output_dir=None,
    n_iwae_samples: int = 100,
) -> dict:
    """The whole job without figures: load, train, annotate, evaluate, save. Returns metrics."""
    check_names(model_name, data_config.dataset)
    adata = load(data_config, model_config.likelihood)
    model = build_model(model_name, adata, model_config, seed=train_config.seed)
    model_config = model.config  # the model's own defaults filled in (init, init_epochs): what the run records
    output_dir = Path(output_dir or default_output_dir(model_name, data_config, model_config, train_config))
    if train_config.checkpoint_path is None:
        train_config = replace(train_config, checkpoint_path=str(output_dir / "checkpoint.pt"))
    history = fit(model, adata, train_config, data_config=data_config)
    annotate(model, adata, seed=train_config.seed)
    scores = evaluate(model, adata, n_iwae_samples=n_iwae_samples, seed=train_config.seed)
    save_run(
        output_dir,
        model_name=model_name,
        data_config=data_config,
        model_config=model_config,
        train_config=train_config,
        history=history,
        scores=scores,
        adata=adata,
    )
    return json.loads((output_dir / "metrics.json").read_text())
