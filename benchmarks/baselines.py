"""Peer baselines on the same cells as our models: scanpy's standard pipeline.

log-normalise (1e4 per cell, log1p), PCA, then per hierarchy level Leiden with the resolution
bisected to give as many clusters as classes ("Leiden (k)") and k-means (k) on the PCA space.
Cells and genes are exactly those our runs see (`hiermix_pyro.workflow.load`). Rows have the
schema of `hiermix_pyro.bench.collect`, so the benchmark notebook shows them beside our models.

    python benchmarks/baselines.py --seeds 0 1 2 --csv benchmarks/results/baselines_sorted10.csv
    python benchmarks/baselines.py --drop-labels "CD14+ Monocyte" --n-pcs 20 \\
        --csv benchmarks/results/baselines_sorted9.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import scanpy as sc

from hiermix_pyro.config import DataConfig
from hiermix_pyro.metrics import cluster_latent, level_scores
from hiermix_pyro.workflow import load


def scanpy_baseline(adata, n_pcs: int, method: str, seed: int) -> list[dict]:
    """Scores per level of Leiden (k) or k-means (k) on the PCA of log-normalised counts."""
    x = adata.copy()
    sc.pp.normalize_total(x, target_sum=1e4)
    sc.pp.log1p(x)
    sc.pp.pca(x, n_comps=n_pcs, random_state=seed)
    levels = x.uns["hiermix"]["levels"]
    clusters = [cluster_latent(x.obsm["X_pca"], x.obs[lvl].nunique(), method=method, seed=seed) for lvl in levels]
    return level_scores(x.obs, levels, clusters)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="pbmc_sorted")
    p.add_argument("--drop-labels", nargs="*", default=[])
    p.add_argument("--n-hvg", type=int, default=500)
    p.add_argument("--n-pcs", type=int, default=50)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--csv", required=True)
    a = p.parse_args()
    rows = []
    for seed in a.seeds:
        adata = load(DataConfig(dataset=a.dataset, drop_labels=tuple(a.drop_labels), n_hvg=a.n_hvg, seed=seed))
        for method in ("leiden", "kmeans"):
            variant = f"scanpy PCA {a.n_pcs} + {'Leiden' if method == 'leiden' else 'k-means'} (k)"
            for level in scanpy_baseline(adata, a.n_pcs, method, seed):
                rows.append(dict(variant=variant, model="scanpy", dataset=a.dataset, seed=seed, **level))
                print(rows[-1], flush=True)
    Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(a.csv, index=False)


if __name__ == "__main__":
    main()
