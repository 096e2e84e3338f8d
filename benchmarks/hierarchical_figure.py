"""Figure-6-like panels for one finished run: per level, the latent UMAP coloured by the true
class and by the Hungarian-aligned cluster, side by side.

    .venv/bin/python benchmarks/hierarchical_figure.py runs/bench_hier/<run> [--out benchmarks/results/figures]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")

from hiermix_pyro import plotting


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--out", default="benchmarks/results/figures")
    a = p.parse_args(argv)
    adata = ad.read_h5ad(Path(a.run_dir) / "adata.h5ad")
    levels = list(adata.uns["hiermix"]["levels"])
    plotting.plot_latent_umap(adata, color=[levels[-1]])  # computes and caches the UMAP
    fig = plotting.plot_level_panels(adata, levels, [f"aligned_{lvl}" for lvl in levels])
    print(plotting.savefig(fig, f"levels_{Path(a.run_dir).name}", a.out))


if __name__ == "__main__":
    main()
