"""Which populations a method confuses, level by level: the row-normalised confusion between the
true classes and the Hungarian-aligned clusters of a workflow study's runs, averaged over seeds.

    .venv/bin/python benchmarks/confusion.py headline pbmc_sorted9 momix scvi_leiden \
        --csv benchmarks/results/confusion_headline_pbmc_sorted9.csv

Reads ``runs/<study>/<dataset>/<method>/seed<k>/adata.h5ad`` (our models: the notebook saves it
with ``aligned_<level>`` columns) or, for a peer, its ``labels.csv`` (``benchmarks/peers.py``
writes it; runs made before it did have none); a method without either is reported and skipped. Writes one row per (method, level, true class, aligned
class): ``fraction`` (mean over seeds of the share of the true class's cells given that aligned
class), ``sd`` and ``n_seeds``; all cells of each run (train, validation and test).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def run_confusions(run_dir: Path) -> pd.DataFrame | None:
    """Long table (level, true, aligned, fraction) of one run, or None if it saved no labels."""
    import anndata as ad

    path = run_dir / "adata.h5ad"
    if path.exists():
        adata = ad.read_h5ad(path, backed="r")
        obs = adata.obs
        levels = [str(level) for level in adata.uns["hiermix"]["levels"]]
        adata.file.close()
    elif (run_dir / "labels.csv").exists():  # a peer's
        obs = pd.read_csv(run_dir / "labels.csv", index_col="cell", dtype=str)
        levels = [c for c in obs.columns if not c.startswith("aligned_")]
    else:
        return None
    rows = []
    for level in levels:
        if f"aligned_{level}" not in obs:
            continue
        table = pd.crosstab(obs[level].astype(str), obs[f"aligned_{level}"].astype(str), normalize="index")
        long = table.stack().rename("fraction").reset_index()
        long.columns = ["true", "aligned", "fraction"]
        rows.append(long.assign(level=level))
    return pd.concat(rows, ignore_index=True) if rows else None


def confusions(study: str, dataset: str, methods: list[str], root: str = "runs") -> pd.DataFrame:
    """Mean and sd over seeds of every method's per-level confusions."""
    out = []
    for method in methods:
        runs = sorted(Path(root, study, dataset, method).glob("seed*"))
        tables = [t.assign(seed=d.name) for d in runs if (t := run_confusions(d)) is not None]
        if not tables:
            print(f"{method}: no run with saved labels under {root}/{study}/{dataset}/{method}", file=sys.stderr)
            continue
        df = pd.concat(tables, ignore_index=True)
        # a pair absent from one seed's crosstab had no such cell: a fraction of 0 there
        full = df.pivot_table(index=["level", "true", "aligned"], columns="seed", values="fraction", fill_value=0.0)
        out.append(
            pd.DataFrame(
                dict(method=method, fraction=full.mean(1), sd=full.std(1, ddof=1), n_seeds=full.shape[1])
            ).reset_index()
        )
    if not out:
        raise SystemExit("no runs with saved labels found")
    return pd.concat(out, ignore_index=True)[["method", "level", "true", "aligned", "fraction", "sd", "n_seeds"]]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study")
    p.add_argument("dataset")
    p.add_argument("methods", nargs="+")
    p.add_argument("--runs", default="runs", help="the workflow's runs folder")
    p.add_argument("--csv", required=True)
    a = p.parse_args(argv)
    df = confusions(a.study, a.dataset, a.methods, a.runs)
    Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
    df.round(4).to_csv(a.csv, index=False)
    worst = df[df["true"] != df["aligned"]].sort_values("fraction", ascending=False).head(10)
    print(worst.to_string(index=False))


if __name__ == "__main__":
    main()
