"""Which coarse split a rule without labels would make: the true groups of one level, merged
into the coarser level's number of groups by linkage rules on their centres in a run's latent.

    .venv/bin/python benchmarks/coarse_splits.py hierarchy pbmc_sorted9 momix_init_leiden50_usage0 \
        --finer L2 --coarser L1 --csv benchmarks/results/coarse_splits_hierarchy_pbmc_sorted9.csv

The question it answers: is the true coarse split (for the sorted PBMCs, stem | non-stem) the one
the latent space suggests, so that a model or a start could find it without labels? For every
seed's ``runs/<study>/<dataset>/<method>/seed<k>/adata.h5ad`` (latent ``obsm['X_latent']``), the
centres of the true ``--finer`` groups are merged into as many groups as ``--coarser`` has, by
single, average and complete linkage (unweighted, ``scipy``) and by Ward's rule weighted by the
groups' sizes (what ``vae_ward`` and ``vae_leiden`` use). Each rule's split is scored by the ARI of
the coarse labels it gives the cells against the true coarse labels; the run's own ARI at the
coarse level is the row ``model``. Writes one row per (seed, rule): the split and its ARI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RULES = ("single", "average", "complete", "ward_weighted")


def split_by(rule: str, centres: np.ndarray, sizes: np.ndarray, k: int) -> np.ndarray:
    """Group ``[M]`` (0..k-1) of each of M centres when ``rule`` has merged them into k groups."""
    from scipy.cluster.hierarchy import fcluster, linkage

    from hiermix_pyro.initialise import ward_groups

    if rule == "ward_weighted":
        return ward_groups(centres, sizes, [k])[k]
    return fcluster(linkage(centres, method=rule), k, criterion="maxclust") - 1


def describe(groups: np.ndarray, names: list[str]) -> str:
    """``"a+b | c"``: the names in each group, groups sorted by their first name."""
    parts = sorted("+".join(sorted(n for n, g in zip(names, groups) if g == j)) for j in np.unique(groups))
    return " | ".join(parts)


def run_splits(run_dir: Path, finer: str, coarser: str) -> list[dict]:
    import anndata as ad
    from sklearn.metrics import adjusted_rand_score

    adata = ad.read_h5ad(run_dir / "adata.h5ad")
    z = np.asarray(adata.obsm["X_latent"])
    fine = adata.obs[finer].astype(str).to_numpy()
    truth = adata.obs[coarser].astype(str).to_numpy()
    names = sorted(set(fine))
    centres = np.stack([z[fine == n].mean(0) for n in names])
    sizes = np.array([(fine == n).sum() for n in names], dtype=float)
    k = len(set(truth))
    true_groups = np.unique([truth[fine == n][0] for n in names], return_inverse=True)[1]
    rows = [dict(rule="truth", split=describe(true_groups, names), ari=1.0)]
    index = {n: i for i, n in enumerate(names)}
    cell_group = np.array([index[f] for f in fine])
    for rule in RULES:
        groups = split_by(rule, centres, sizes, k)
        rows.append(dict(rule=rule, split=describe(groups, names), ari=adjusted_rand_score(truth, groups[cell_group])))
    if f"cluster_{coarser}" in adata.obs:
        rows.append(dict(rule="model", split="", ari=adjusted_rand_score(truth, adata.obs[f"cluster_{coarser}"])))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study")
    parser.add_argument("dataset")
    parser.add_argument("method")
    parser.add_argument("--finer", default="L2", help="the level whose true groups are merged (default L2)")
    parser.add_argument("--coarser", default="L1", help="the level they are merged into (default L1)")
    parser.add_argument("--runs", default="runs", help="the workflow's runs folder (default runs)")
    parser.add_argument("--csv", help="write the table here (default: print it)")
    args = parser.parse_args(argv)
    base = Path(args.runs) / args.study / args.dataset / args.method
    seeds = sorted(base.glob("seed*/adata.h5ad"), key=lambda p: int(p.parent.name[4:]))
    if not seeds:
        parser.error(f"no runs with an adata.h5ad under {base}")
    rows = []
    for path in seeds:
        for row in run_splits(path.parent, args.finer, args.coarser):
            rows.append(
                dict(study=args.study, dataset=args.dataset, method=args.method, seed=int(path.parent.name[4:]), **row)
            )
    table = pd.DataFrame(rows)
    summary = table.groupby(["rule", "split"], sort=False).agg(n_seeds=("seed", "size"), ari=("ari", "mean"))
    print(summary.to_string())
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
