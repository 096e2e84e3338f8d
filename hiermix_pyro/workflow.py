"""The main job, in steps a notebook can show one cell at a time.

``load`` -> ``build_model`` -> ``fit`` -> ``annotate`` -> ``evaluate`` -> ``save_run``.
:func:`run` chains them for scripts and benchmarks.
"""

from __future__ import annotations

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
from .metrics import cluster_latent, elbo, hungarian_match, iwae, level_scores, nesting_score
from .models import build_model, check_model_name
from .train import CountTensors, fit, seed_everything

SMOKE = dict(epochs=2, subsample=300, n_hvg=100, n_iwae_samples=5)  # what SMOKE_TEST shrinks


def smoke_test_requested(flag: bool = False) -> bool:
    """True if ``flag`` or the environment variable ``SMOKE_TEST`` is set (to anything but 0/false)."""
    return bool(flag) or os.environ.get("SMOKE_TEST", "").lower() not in ("", "0", "false", "no")


def check_names(model: str, dataset: str) -> None:
    """Fail early, listing the valid names, on an unknown model or dataset."""
    check_model_name(model)
    if dataset not in DATASETS and not Path(dataset).exists():
        raise ValueError(f"unknown dataset {dataset!r} (not a name and no such file); "
                         f"valid datasets: {', '.join(DATASETS)}, or a path to an .h5ad file")


def load(config: DataConfig = DataConfig(), likelihood: str = "nb") -> ad.AnnData:
    """Load and prepare a dataset: counts, hierarchy levels, HVGs, ``obs['split']``."""
    adata = load_dataset(
        config.dataset, labels_key=config.labels_key, batch_key=config.batch_key, layer=config.layer,
        data_dir=config.data_dir, drop_labels=config.drop_labels, seed=config.seed,
    )
    return prepare(adata, n_hvg=config.n_hvg, subsample=config.subsample, split=config.split,
                   seed=config.seed, likelihood=likelihood)


@torch.no_grad()
def _posteriors(model, data: CountTensors, batch_size: int = 512):
    """Latent means ``[N, D]`` and cluster posteriors per level ``[N, K_l]``."""
    latents, probs = [], []
    for x, s in data.batches(batch_size):
        latents.append(model.latent(x, s))
        probs.append(model.cluster_probs(x, s))
    latent = torch.cat(latents).cpu().numpy()
    levels = [torch.cat([p[i] for p in probs]).cpu().numpy() for i in range(len(probs[0]))]
    return latent, levels


def annotate(model, adata: ad.AnnData, seed: int = 0) -> ad.AnnData:
    """Write the latent space and cluster assignments into ``adata`` (in place).

    - ``obsm['X_latent']``: posterior means E_q[z | x];
    - ``obsm['q_y<l>']``: cluster posteriors of model level l (mixture models);
    - ``obs['cluster_<level>']``: one clustering per label level. Mixture models use argmax of
      their posterior (level l for label level l when the depths agree, else their finest level);
      models without clusters (``vae``) get k-means on the latent with as many clusters as classes;
    - ``obs['aligned_<level>']``: clusters renamed to their Hungarian-matched class ("unmatched"
      otherwise), for figures that put truth and clusters side by side.
    """
    device = next(model.parameters()).device
    latent, probs = _posteriors(model, CountTensors.from_adata(adata, device))
    adata.obsm["X_latent"] = latent
    for i, p in enumerate(probs, start=1):
        adata.obsm[f"q_y{i}"] = p
    levels = adata.uns["hiermix"]["levels"]
    for i, level in enumerate(levels):
        if not probs:
            n = adata.obs[level].astype("category").cat.categories.size
            clusters = cluster_latent(latent, n, method="kmeans", seed=seed)
        else:
            clusters = probs[i if len(probs) == len(levels) else -1].argmax(1)
        adata.obs[f"cluster_{level}"] = pd.Categorical(clusters.astype(str))
        match = hungarian_match(adata.obs[level].to_numpy(), clusters)
        adata.obs[f"aligned_{level}"] = pd.Categorical([str(match.get(c, "unmatched")) for c in clusters])
    return adata


def evaluate(model, adata: ad.AnnData, n_iwae_samples: int = 100, seed: int = 0) -> dict:
    """Clustering scores on all cells per label level; IWAE and ELBO per cell on the test split.

    Each level also gets ``nesting`` (:func:`~hiermix_pyro.metrics.nesting_score` of its clusters
    inside the previous level's; NaN at the first level) and ``nesting_labels`` (the same for the
    true labels, 1 for a strict hierarchy).

    Needs :func:`annotate` first (it reads ``obs['cluster_<level>']``).
    """
    seed_everything(seed)
    levels = adata.uns["hiermix"]["levels"]
    scores = level_scores(adata.obs, levels, [adata.obs[f"cluster_{lvl}"].to_numpy() for lvl in levels])
    for i in range(len(levels)):  # how far level-i clusters (and, as reference, labels) nest in level i-1's
        coarse, fine = levels[i - 1], levels[i]
        scores[i]["nesting"] = nesting_score(adata.obs[f"cluster_{coarse}"].to_numpy(),
                                             adata.obs[f"cluster_{fine}"].to_numpy()) if i else float("nan")
        scores[i]["nesting_labels"] = nesting_score(adata.obs[coarse].to_numpy(), adata.obs[fine].to_numpy()) if i else float("nan")
    device = next(model.parameters()).device
    split = "test" if (adata.obs["split"] == "test").any() else None
    data = CountTensors.from_adata(adata, device, split)
    integration = _integration_scores(adata)
    return dict(
        levels=scores,
        iwae=float(np.mean(iwae(model, data, n_samples=n_iwae_samples))),
        elbo=float(elbo(model, data)),
        likelihood_split=split or "all",
        n_iwae_samples=n_iwae_samples,
        **({"scib": integration} if integration else {}),
    )


def _integration_scores(adata) -> dict | None:
    """scIB scores of ``obsm['X_latent']`` when the data have a batch key and ``scib-metrics`` is
    installed (the ``scib`` extra); ``HIERMIX_SCIB=0`` skips them (they take minutes on a CPU)."""
    from .metrics.integration import scib_available, scib_scores

    batch_key = adata.uns["hiermix"].get("batch_key")
    if not batch_key or not scib_available() or os.environ.get("HIERMIX_SCIB", "").lower() in ("0", "false", "no"):
        return None
    return scib_scores(adata, batch_key, adata.uns["hiermix"]["levels"][-1])


def default_output_dir(model: str, dataset: str, seed: int, smoke: bool = False) -> Path:
    """``runs/<model>-<dataset>-seed<seed>`` (``runs/smoke/...`` for smoke runs, so that a
    smoke run's checkpoint is never resumed by a full run)."""
    return Path("runs", *(["smoke"] if smoke else [])) / f"{model}-{Path(dataset).stem}-seed{seed}"


def save_run(output_dir, *, model_name, data_config, model_config, train_config, history, scores, adata) -> Path:
    """Write ``metrics.json``, ``history.json`` and ``adata.h5ad`` into ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = dict(
        model=model_name, dataset=data_config.dataset, seed=train_config.seed, device=history["device"],
        epochs=history["epochs_run"], best_epoch=history["best_epoch"],
        train_seconds=history["train_seconds"],
        seconds_per_epoch=history["train_seconds"] / max(1, len(history["seconds"])),
        n_cells=adata.n_obs, n_genes=adata.n_vars, **scores, version=__version__,
        config=dict(data=asdict(data_config), model=asdict(model_config), train=asdict(train_config)),
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    (out / "history.json").write_text(json.dumps(history, indent=2, default=str))
    adata.write_h5ad(out / "adata.h5ad")
    return out


def run(model_name: str, data_config: DataConfig = DataConfig(), model_config: ModelConfig = ModelConfig(),
        train_config: TrainConfig = TrainConfig(), output_dir=None, n_iwae_samples: int = 100) -> dict:
    """The whole job without figures: load, train, annotate, evaluate, save. Returns metrics."""
    check_names(model_name, data_config.dataset)
    adata = load(data_config, model_config.likelihood)
    seed_everything(train_config.seed)
    model = build_model(model_name, adata, model_config)
    output_dir = Path(output_dir or default_output_dir(model_name, data_config.dataset, train_config.seed))
    if train_config.checkpoint_path is None:
        train_config = replace(train_config, checkpoint_path=str(output_dir / "checkpoint.pt"))
    history = fit(model, adata, train_config)
    annotate(model, adata, seed=train_config.seed)
    scores = evaluate(model, adata, n_iwae_samples=n_iwae_samples, seed=train_config.seed)
    save_run(output_dir, model_name=model_name, data_config=data_config, model_config=model_config,
             train_config=train_config, history=history, scores=scores, adata=adata)
    return json.loads((output_dir / "metrics.json").read_text())
