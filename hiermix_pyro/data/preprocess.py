"""Validation and preprocessing of count data: checks, subsampling, HVG selection, splits."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.model_selection import train_test_split

COUNT_LIKELIHOODS = ("nb", "zinb", "poisson")
SPLITS = ("train", "validation", "test")


def validate_counts(adata: ad.AnnData, *, likelihood: str = "nb") -> None:
    """Check that ``adata.X`` holds raw counts a model can use.

    Sparse matrices are checked through their stored values, never densified.

    Parameters
    ----------
    adata
        Cells x genes, counts in ``.X``.
    likelihood
        Count likelihoods (``nb``, ``zinb``, ``poisson``) also require integer values.

    Raises
    ------
    ValueError
        On empty data, NaN or infinite values, negative values, non-integer values, or
        cells whose counts sum to zero.
    """
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"empty data: {adata.n_obs} cells x {adata.n_vars} genes")
    values = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    if not np.isfinite(values).all():
        raise ValueError(f"counts contain {np.sum(~np.isfinite(values))} NaN or infinite values")
    if (values < 0).any():
        raise ValueError(f"counts contain {np.sum(values < 0)} negative values")
    if likelihood in COUNT_LIKELIHOODS and (values != np.round(values)).any():
        example = values[values != np.round(values)].flat[0]
        raise ValueError(
            f"counts contain non-integer values (e.g. {example:g}); the {likelihood!r} "
            "likelihood needs raw UMI counts, not normalised or log-transformed data "
            "(pass the layer holding raw counts)"
        )
    n_empty = int(np.sum(np.asarray(adata.X.sum(axis=1)).ravel() == 0))
    if n_empty:
        raise ValueError(
            f"{n_empty} of {adata.n_obs} cells have zero total counts; filter them first, "
            "e.g. sc.pp.filter_cells(adata, min_counts=1)"
        )


def prepare(
    adata: ad.AnnData,
    *,
    n_hvg: int | None = 500,
    subsample: int | None = None,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    likelihood: str = "nb",
) -> ad.AnnData:
    """Validate, subsample, select highly variable genes and split into train/validation/test.

    Parameters
    ----------
    adata
        Output of :func:`~hiermix_pyro.data.load_dataset` (reads ``uns['hiermix']``).
    n_hvg
        Genes kept by ``sc.pp.highly_variable_genes(flavor="seurat_v3")`` on the counts,
        per batch when there is a batch key; ``None`` or at least the number of genes: all.
    subsample
        Keep this many cells, stratified by the finest label; ``None``: all.
    split
        Train, validation and test fractions (non-negative, summing to 1).
    seed
        Seed of the subsample and the split.
    likelihood
        Passed to :func:`validate_counts`.

    Returns
    -------
    anndata.AnnData
        A new object with ``obs['split']`` and ``uns['hiermix']['n_hvg']`` (genes selected,
        or ``None`` when all genes were kept). Cells left with zero counts after gene
        selection are dropped with a warning.
    """
    if len(split) != 3 or min(split) < 0 or not np.isclose(sum(split), 1.0):
        raise ValueError(f"split must be 3 non-negative fractions summing to 1, got {split}")
    if "hiermix" not in adata.uns:
        raise ValueError("adata.uns['hiermix'] is missing: load the data with load_dataset() first")
    info = adata.uns["hiermix"]
    validate_counts(adata, likelihood=likelihood)
    labels = adata.obs[info["labels_key"]].to_numpy()
    keep = np.arange(adata.n_obs)
    if subsample is not None and subsample < adata.n_obs:
        keep, _ = _stratified_take(keep, labels, subsample, seed)
    adata = adata[np.sort(keep)].copy()
    n_selected = None
    if n_hvg is not None and n_hvg < adata.n_vars:
        adata = _select_hvg(adata, n_hvg, info["batch_key"])
        n_selected = adata.n_vars
    adata = _drop_empty_cells(adata)
    adata.obs["split"] = _split_labels(adata.obs[info["labels_key"]].to_numpy(), split, seed)
    adata.uns["hiermix"] = {**info, "n_hvg": n_selected}
    return adata


def _select_hvg(adata: ad.AnnData, n_hvg: int, batch_key: str | None) -> ad.AnnData:
    """scanpy's seurat_v3 on counts. Its loess fit of variance on mean can be singular on few
    cells (subsampled or smoke-test data); then retry, without undetected genes, with a wider
    span (0.5, then 1.0) and say so. Full datasets keep scanpy's defaults exactly."""
    for span in (0.3, 0.5, 1.0):
        try:
            sc.pp.highly_variable_genes(
                adata, flavor="seurat_v3", n_top_genes=n_hvg, batch_key=batch_key, span=span, subset=True
            )
            return adata
        except ValueError as err:  # skmisc's loess: "There are other near singularities ..."
            if "singular" not in str(err):
                raise
            warnings.warn(
                f"seurat_v3's loess fit was singular with span {span} on {adata.n_obs} cells; "
                "retrying with a wider span",
                stacklevel=2,
            )
            adata = adata[:, np.asarray((adata.X > 0).sum(0)).ravel() > 0].copy()
    raise ValueError(
        f"highly variable gene selection failed on {adata.n_obs} cells even with span 1.0: "
        "use more cells (subsample) or n_hvg=None"
    )


def _drop_empty_cells(adata: ad.AnnData) -> ad.AnnData:
    """Remove cells whose counts sum to zero (after gene selection), with a warning."""
    empty = np.asarray(adata.X.sum(axis=1)).ravel() == 0
    if not empty.any():
        return adata
    warnings.warn(
        f"dropping {empty.sum()} cells with zero counts in the {adata.n_vars} selected genes",
        UserWarning,
        stacklevel=3,
    )
    adata = adata[~empty].copy()
    for key in adata.uns["hiermix"]["levels"]:
        adata.obs[key] = adata.obs[key].cat.remove_unused_categories()
    return adata


def _split_labels(labels: np.ndarray, fractions: tuple[float, float, float], seed: int) -> pd.Categorical:
    """Assign each cell to train, validation or test, stratified by label."""
    n = len(labels)
    _, f_val, f_test = fractions
    test, rest = _stratified_take(np.arange(n), labels, round(f_test * n), seed)
    validation, _ = _stratified_take(rest, labels[rest], round(f_val * n), seed)
    split = np.full(n, "train", dtype=object)
    split[validation] = "validation"
    split[test] = "test"
    return pd.Categorical(split, categories=SPLITS)


def _stratified_take(index: np.ndarray, labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``size`` of ``index`` stratified by ``labels``; return (taken, rest).

    Falls back to a plain random draw, with a warning, when a class is too small to stratify.
    """
    if size <= 0:
        return index[:0], index
    if size >= len(index):
        return index, index[:0]
    try:
        taken, rest = train_test_split(index, train_size=size, stratify=labels, random_state=seed)
    except ValueError as err:
        warnings.warn(f"cannot stratify by label ({err}); drawing at random", UserWarning, stacklevel=3)
        taken, rest = train_test_split(index, train_size=size, random_state=seed)
    return taken, rest
