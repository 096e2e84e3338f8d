"""Batch integration scores: the scIB metrics (Luecken et al., 2022) through ``scib-metrics``.

``scib-metrics`` needs JAX; it is an optional extra: ``pip install 'hiermix-pyro[scib]'``
(on Python 3.11 a release below 0.6). Scores are the package's ``Benchmarker`` aggregates, not
min-max scaled (one embedding at a time): batch correction (BRAS, iLISI, kBET per label, graph
connectivity, PCR comparison), bio conservation (isolated labels, k-means NMI/ARI, label
silhouette, cLISI) and total = 0.4 batch correction + 0.6 bio conservation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EXTRA_HINT = "pip install 'hiermix-pyro[scib]'  (scib-metrics<0.6 and jax, CPU is enough)"


def scib_available() -> bool:
    try:
        import scib_metrics  # noqa: F401
    except ImportError:
        return False
    return True


def _require_scib():
    try:
        from scib_metrics.benchmark import Benchmarker
    except ImportError as err:
        raise ImportError(f"the scIB integration metrics need the optional 'scib' extra: {EXTRA_HINT}") from err
    return Benchmarker


def pre_integration_pca(adata, n_comps: int = 50) -> np.ndarray:
    """PCA of the log-normalised counts, the 'before integration' embedding of PCR comparison."""
    import scanpy as sc

    tmp = adata.copy()
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    n_comps = min(n_comps, tmp.n_obs - 1, tmp.n_vars - 1)
    sc.tl.pca(tmp, n_comps=n_comps)
    return tmp.obsm["X_pca"]


def scib_scores(adata, batch_key: str, label_key: str, embedding_key: str = "X_latent", n_jobs: int = 1) -> dict:
    """scIB scores of ``adata.obsm[embedding_key]`` on all cells.

    Returns ``batch_correction``, ``bio_conservation``, ``total`` and ``metrics`` (every
    individual metric by its scib-metrics name).
    """
    Benchmarker = _require_scib()
    import anndata as ad

    view = ad.AnnData(obs=adata.obs[[batch_key, label_key]].copy())
    view.obsm[embedding_key] = np.asarray(adata.obsm[embedding_key], dtype=np.float32)
    view.obsm["X_pre"] = pre_integration_pca(adata)
    bm = Benchmarker(
        view,
        batch_key=batch_key,
        label_key=label_key,
        embedding_obsm_keys=[embedding_key],
        pre_integrated_embedding_obsm_key="X_pre",
        n_jobs=n_jobs,
        progress_bar=False,
    )
    bm.benchmark()
    df = bm.get_results(min_max_scale=False, clean_names=False)
    row = df.loc[embedding_key]
    aggregates = {"Batch correction": "batch_correction", "Bio conservation": "bio_conservation", "Total": "total"}
    out = {name: float(row[col]) for col, name in aggregates.items()}
    out["metrics"] = {k: float(v) for k, v in row.items() if k not in aggregates}
    return out


def scib_table(run_dirs, label_key: str | None = None, n_jobs: int = 1):
    """scIB scores of many saved runs (``adata.h5ad`` with ``obsm['X_latent']``) on the same cells,
    in one ``Benchmarker``: its JIT compilation is paid once. Adds the unintegrated PCA of the
    log-normalised counts as a reference row (``run = "pca (unintegrated)"``)."""

    import anndata as ad

    Benchmarker = _require_scib()
    runs = [Path(d) for d in run_dirs if (Path(d) / "adata.h5ad").exists()]
    if not runs:
        raise FileNotFoundError(f"no adata.h5ad in {list(map(str, run_dirs))}")
    first = ad.read_h5ad(runs[0] / "adata.h5ad")
    info = first.uns["hiermix"]
    batch_key, label_key = info["batch_key"], label_key or info["levels"][-1]
    view = ad.AnnData(obs=first.obs[[batch_key, label_key]].copy())
    view.obsm["X_pre"] = pre_integration_pca(first)
    keys = {"pca (unintegrated)": "X_pre"}
    for d in runs:
        other = first if d == runs[0] else ad.read_h5ad(d / "adata.h5ad")
        if not other.obs_names.equals(first.obs_names):
            raise ValueError(f"{d} holds other cells than {runs[0]}; score them separately with scib_scores")
        name = run_name(d)
        if name in keys:
            raise ValueError(f"two runs named {name!r}: score runs with distinct folder names")
        view.obsm[name] = np.asarray(other.obsm["X_latent"], dtype=np.float32)
        keys[name] = name
    bm = Benchmarker(
        view,
        batch_key=batch_key,
        label_key=label_key,
        embedding_obsm_keys=list(keys.values()),
        pre_integrated_embedding_obsm_key="X_pre",
        n_jobs=n_jobs,
        progress_bar=False,
    )
    bm.benchmark()
    df = bm.get_results(min_max_scale=False, clean_names=False).drop(index="Metric Type", errors="ignore")
    df = df.rename(
        columns={"Batch correction": "batch_correction", "Bio conservation": "bio_conservation", "Total": "total"}
    ).astype(float)
    df.index = [next(name for name, key in keys.items() if key == k) for k in df.index]
    return df.rename_axis("run").reset_index()


def run_name(run_dir: Path) -> str:
    """A run's name in the table: its folder, with the method for the workflow's ``<method>/seed<k>``."""
    run_dir = Path(run_dir)
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.name.startswith("seed") else run_dir.name


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="scIB scores of saved runs (one Benchmarker for all).")
    p.add_argument("runs", nargs="+", help="run folders holding adata.h5ad")
    p.add_argument("--csv", required=True)
    p.add_argument("--label-key", default=None)
    a = p.parse_args(argv)
    df = scib_table(a.runs, a.label_key)
    Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.csv, index=False)
    print(df[["run", "batch_correction", "bio_conservation", "total"]].to_string(index=False))


__all__ = ["scib_scores", "scib_table", "scib_available", "pre_integration_pca", "EXTRA_HINT"]

if __name__ == "__main__":
    main()
