"""Figure-6-like panels for one finished run of the benchmark workflow: per level, the latent
UMAP coloured by the true class and by the Hungarian-aligned cluster, side by side.

    .venv/bin/python benchmarks/hierarchical_figure.py runs/hierarchy/pbmc_sorted9/momix_collapsed_studentt/seed0

writes ``benchmarks/results/figures/levels_<study>_<dataset>_<method>_seed<k>.png`` (``--out`` for
another folder). The run folder is one of ``runs/<study>/<dataset>/<method>/seed<k>/`` made by
``make bench STUDY=<study>``; it needs the run's ``adata.h5ad``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")

from hiermix_pyro import plotting


def figure_name(run_dir: str | Path) -> str:
    """``runs/<study>/<dataset>/<method>/seed<k>`` -> ``levels_<study>_<dataset>_<method>_seed<k>``
    (the last four folder names: a workflow run is named by all of them, not by ``seed<k>`` alone)."""
    return "levels_" + "_".join(Path(run_dir).resolve().parts[-4:])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a workflow run folder: runs/<study>/<dataset>/<method>/seed<k>")
    p.add_argument("--out", default="benchmarks/results/figures")
    a = p.parse_args(argv)
    path = Path(a.run_dir) / "adata.h5ad"
    if not path.exists():
        raise SystemExit(f"no {path}: pass a finished run folder, runs/<study>/<dataset>/<method>/seed<k>")
    adata = ad.read_h5ad(path)
    levels = list(adata.uns["hiermix"]["levels"])
    plotting.plot_latent_umap(adata, color=[levels[-1]])  # computes and caches the UMAP
    fig = plotting.plot_level_panels(adata, levels, [f"aligned_{lvl}" for lvl in levels])
    print(plotting.savefig(fig, figure_name(a.run_dir), a.out))


if __name__ == "__main__":
    main()
