"""Peer methods on the same cells as our models, writing the same ``metrics.json`` schema.

One job of the benchmark workflow (``benchmarks/Snakefile``) per (dataset, seed) and embedding:

- ``pca_leiden``, ``pca_kmeans``: scanpy's standard pipeline: normalise each cell to 10,000
  counts, log1p, PCA (``n_pcs``, default 50);
- ``scvi_leiden``, ``scvi_kmeans``: scvi-tools' SCVI (latent 10, one hidden layer of 128, NB by
  default), trained on our training split with early stopping on our validation split, the
  study's epoch ceiling, patience, batch size and learning rate; its latent means. Needs the
  scvi-tools environment (``make scvi-env``; scvi-tools < 1.5 on Python 3.11).

Then, at every label level, k-means with as many clusters as classes, or Leiden with its
resolution bisected until it gives that many (an oracle on k: it is told the number of classes,
which Leiden would otherwise choose itself). Cells, genes, split and levels are our models'
(:func:`hiermix_pyro.workflow.load` with the study's DataConfig and the run's seed); the scores
are :func:`~hiermix_pyro.metrics.level_scores` (``accuracy`` labels each cluster by its member
nearest to its centroid), ``nesting`` and :func:`~hiermix_pyro.metrics.hierarchy_scores` (Ward's
tree over the finest clusters' centroids)::

    python benchmarks/peers.py pca_leiden pca_kmeans --seed 0 --runs-dir runs/smoke/pbmc68k \\
        --spec '{"data": {"dataset": "pbmc68k", "n_hvg": 100, "subsample": 300}}'

writes ``runs/smoke/pbmc68k/pca_leiden/seed0/metrics.json`` and ``.../pca_kmeans/seed0/metrics.json``,
each beside ``labels.csv``: every cell's true levels and its Hungarian-aligned cluster per level
(``aligned_<level>``, as a model run's ``adata.h5ad`` holds them; ``benchmarks/confusion.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from hiermix_pyro import __version__
from hiermix_pyro.config import DataConfig, TrainConfig, from_dict
from hiermix_pyro.metrics import cluster_latent, hierarchy_scores, level_scores, nesting_score
from hiermix_pyro.metrics.clustering import hungarian_match
from hiermix_pyro.study import PEERS
from hiermix_pyro.workflow import environment, load


def pca_embedding(adata, n_pcs: int = 50, seed: int = 0) -> tuple[np.ndarray, dict]:
    """log-normalised counts -> PCA ``[N, n_pcs]`` (fewer when the data are smaller)."""
    import scanpy as sc

    x = adata.copy()
    sc.pp.normalize_total(x, target_sum=1e4)
    sc.pp.log1p(x)
    n_comps = min(n_pcs, x.n_obs - 1, x.n_vars - 1)
    sc.pp.pca(x, n_comps=n_comps, random_state=seed)
    return x.obsm["X_pca"], dict(n_pcs=n_comps)


def scvi_embedding(
    adata, train: TrainConfig, seed: int = 0, n_latent: int = 10, gene_likelihood: str = "nb"
) -> tuple[np.ndarray, dict]:
    """SCVI's latent means, trained on ``obs['split'] == 'train'`` with early stopping on the
    validation cells; the study's epochs (ceiling), patience, batch size and learning rate."""
    import scvi
    import torch

    scvi.settings.seed = seed
    batch_key = adata.uns["hiermix"].get("batch_key")
    x = adata.copy()
    scvi.model.SCVI.setup_anndata(x, batch_key=batch_key)
    model = scvi.model.SCVI(x, n_latent=n_latent, n_hidden=128, n_layers=1, gene_likelihood=gene_likelihood)
    split = x.obs["split"].to_numpy()
    indices = [np.flatnonzero(split == part) for part in ("train", "validation", "test")]
    device = train.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    model.train(
        max_epochs=train.epochs,
        batch_size=train.batch_size,
        plan_kwargs=dict(lr=train.lr),
        early_stopping=bool(train.patience),
        early_stopping_patience=train.patience or 1,
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        datasplitter_kwargs=dict(external_indexing=indices),
        enable_progress_bar=False,
    )
    seconds = time.perf_counter() - start
    history = model.history["elbo_validation"]["elbo_validation"].to_numpy()
    info = dict(
        epochs=int(len(model.history["elbo_train"])),
        best_epoch=int(np.argmin(history)) + 1,
        train_seconds=seconds,
        device=device,
        scvi_version=scvi.__version__,
        n_latent=n_latent,
        gene_likelihood=gene_likelihood,
    )
    return model.get_latent_representation(), info


def centroid_confidence(clusters: np.ndarray, embedding: np.ndarray) -> np.ndarray:
    """Minus each cell's distance to its cluster's centroid (the cluster's "most probable" member
    is the one nearest its centre), as the workflow does for k-means on a latent space."""
    centres = pd.DataFrame(embedding).groupby(clusters).mean()
    return -np.linalg.norm(embedding - centres.loc[clusters].to_numpy(), axis=1)


def aligned_labels(adata, clusters: list[np.ndarray]) -> pd.DataFrame:
    """Per cell and level, the cluster renamed to its Hungarian-matched class ("unmatched" when
    none), as ``obs['aligned_<level>']`` of a model run: ``aligned_<level>`` columns, indexed by cell."""
    levels = adata.uns["hiermix"]["levels"]
    out = {}
    for level, c in zip(levels, clusters):
        match = hungarian_match(adata.obs[level].astype(str).to_numpy(), c)
        out[f"aligned_{level}"] = [str(match.get(k, "unmatched")) for k in c]
    return pd.DataFrame(out, index=adata.obs_names)


def score(adata, embedding: np.ndarray, method: str, seed: int) -> dict:
    """Cluster ``embedding`` at each level's number of classes; scores as in ``workflow.evaluate``;
    the clusters themselves under ``"clusters"`` (one array per level)."""
    levels = adata.uns["hiermix"]["levels"]
    clusters = [cluster_latent(embedding, adata.obs[lvl].nunique(), method=method, seed=seed) for lvl in levels]
    scores = level_scores(adata.obs, levels, clusters, [centroid_confidence(c, embedding) for c in clusters])
    for i, entry in enumerate(scores):
        entry["model_level"] = method
        entry["nesting"] = nesting_score(clusters[i - 1], clusters[i]) if i else float("nan")
        entry["nesting_labels"] = (
            nesting_score(adata.obs[levels[i - 1]].to_numpy(), adata.obs[levels[i]].to_numpy()) if i else float("nan")
        )
    hierarchy = hierarchy_scores(adata.obs, levels, clusters, embedding=embedding)
    return dict(levels=scores, hierarchy=hierarchy, clusters=clusters)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_peers(peers: list[str], spec: dict, seed: int, runs_dir) -> list[Path]:
    """Run ``peers`` (names of :data:`hiermix_pyro.study.PEERS`) on one dataset and seed; each
    writes ``<runs_dir>/<peer>/seed<seed>/metrics.json`` (last, atomically)."""
    data_config = from_dict(DataConfig, {**spec.get("data", {}), "seed": seed})
    train = from_dict(TrainConfig, {**spec.get("train", {}), "seed": seed})
    options = spec.get("peer", {})
    adata = load(data_config)
    if getattr(adata, "isbacked", False):
        adata = adata.to_memory()
    embeddings = {}
    for embedding in dict.fromkeys(PEERS[p].embedding for p in peers):  # one embedding for its clusterings
        if embedding == "pca":
            embeddings[embedding] = pca_embedding(adata, options.get("n_pcs", 50), seed)
        else:
            embeddings[embedding] = scvi_embedding(
                adata, train, seed, options.get("n_latent", 10), options.get("gene_likelihood", "nb")
            )
    written = []
    for name in peers:
        peer = PEERS[name]
        latent, info = embeddings[peer.embedding]
        trained = "epochs" in info
        scores = score(adata, latent, peer.clustering, seed)
        clusters = scores.pop("clusters")
        metrics = dict(
            model=name,
            label=peer.label,
            oracle_k=peer.oracle_k,
            dataset=data_config.dataset,
            seed=seed,
            device=info.get("device", "cpu"),
            epochs=info.get("epochs"),
            best_epoch=info.get("best_epoch"),
            train_seconds=info.get("train_seconds"),
            seconds_per_epoch=info["train_seconds"] / info["epochs"] if trained else None,
            n_cells=adata.n_obs,
            n_genes=adata.n_vars,
            **scores,
            version=__version__,
            environment=environment(),
            config=dict(
                data=asdict(data_config),
                **({"train": asdict(train)} if trained else {}),
                peer=dict(embedding=peer.embedding, clustering=peer.clustering, **info),
            ),
        )
        out = Path(runs_dir) / name / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        # the true levels and the aligned clusters of every cell (benchmarks/confusion.py reads them)
        labels = pd.concat(
            [adata.obs[list(adata.uns["hiermix"]["levels"])].astype(str), aligned_labels(adata, clusters)], axis=1
        )
        _atomic_write(out / "labels.csv", labels.to_csv(index_label="cell"))
        _atomic_write(out / "metrics.json", json.dumps(metrics, indent=2, default=str))
        written.append(out / "metrics.json")
    return written


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("peers", nargs="+", choices=list(PEERS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs-dir", required=True, help="writes <runs-dir>/<peer>/seed<seed>/metrics.json")
    p.add_argument(
        "--spec",
        default="{}",
        help='JSON: {"data": DataConfig fields, "train": TrainConfig fields (scVI), "peer": {"n_pcs": 50, ...}}',
    )
    a = p.parse_args(argv)
    for path in run_peers(a.peers, json.loads(a.spec), a.seed, a.runs_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
