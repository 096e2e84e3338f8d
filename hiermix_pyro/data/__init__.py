"""Data: loading, cell-type hierarchies, simulation and preprocessing of count matrices.

Typical use::

    from hiermix_pyro.data import load_dataset, prepare

    adata = prepare(load_dataset("pbmc68k"), n_hvg=500)
    adata.uns["hiermix"]  # {"dataset", "levels", "labels_key", "batch_key", "n_hvg"}
"""

from hiermix_pyro.data.backed import RowBlocks, is_backed, read_backed
from hiermix_pyro.data.hierarchy import add_hierarchy, add_level_keys, default_hierarchy, read_hierarchy
from hiermix_pyro.data.loaders import (
    DATASETS,
    PBMC_PURIFIED,
    download_pbmc_purified,
    load_dataset,
    read_10x_purified_tarball,
    resolve_data_dir,
)
from hiermix_pyro.data.preprocess import prepare, seurat_v3_genes, validate_counts
from hiermix_pyro.data.simulate import simulate_hierarchy, simulate_large

__all__ = [
    "DATASETS",
    "PBMC_PURIFIED",
    "RowBlocks",
    "add_hierarchy",
    "add_level_keys",
    "default_hierarchy",
    "download_pbmc_purified",
    "is_backed",
    "load_dataset",
    "prepare",
    "read_10x_purified_tarball",
    "read_backed",
    "read_hierarchy",
    "resolve_data_dir",
    "seurat_v3_genes",
    "simulate_hierarchy",
    "simulate_large",
    "validate_counts",
]
