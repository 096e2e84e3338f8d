"""Validation and preprocessing of count data: checks, subsampling, HVG selection, splits.

Large data: nothing here densifies the count matrix or copies it whole where it can be avoided.
Checks and gene statistics read it in row blocks (:mod:`hiermix_pyro.data.backed`), which also
works for counts that stay on disk; keeping every cell shares the input's matrix instead of
copying it; HVG selection on large or backed data computes scanpy's ``seurat_v3`` statistics in
two passes over row blocks (:func:`seurat_v3_genes`) instead of calling scanpy, whose version
copies the whole matrix once more.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.model_selection import train_test_split

from hiermix_pyro.data.backed import BLOCK_ROWS, RowBlocks, is_backed, row_sums

COUNT_LIKELIHOODS = ("nb", "zinb", "poisson")
SPLITS = ("train", "validation", "test")
HVG_BLOCKS_ABOVE = 20_000_000  # non-zeros above which HVG selection runs in row blocks (always when backed)
_CHECK_CHUNK = 10_000_000  # stored values checked at a time


def validate_counts(adata: ad.AnnData, *, likelihood: str = "nb") -> None:
    """Check that ``adata.X`` holds raw counts a model can use.

    Sparse matrices are checked through their stored values, never densified, a few million
    values at a time; counts that stay on disk (:mod:`hiermix_pyro.data.backed`) in row blocks.

    Parameters
    ----------
    adata
        Cells x genes, counts in ``.X`` (or backed).
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
    if is_backed(adata):
        chunks = (block.data for _, block in RowBlocks(adata))
    else:
        values = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X).reshape(-1)
        chunks = (values[i : i + _CHECK_CHUNK] for i in range(0, len(values), _CHECK_CHUNK))
    n_bad, n_negative, example = 0, 0, None
    for chunk in chunks:
        n_bad += int(np.sum(~np.isfinite(chunk)))
        if n_bad:
            continue  # reported below, after counting them all
        n_negative += int(np.sum(chunk < 0))
        if example is None and likelihood in COUNT_LIKELIHOODS:
            fractional = chunk[chunk != np.round(chunk)]
            example = fractional[0] if len(fractional) else None
    if n_bad:
        raise ValueError(f"counts contain {n_bad} NaN or infinite values")
    if n_negative:
        raise ValueError(f"counts contain {n_negative} negative values")
    if example is not None:
        raise ValueError(
            f"counts contain non-integer values (e.g. {example:g}); the {likelihood!r} "
            "likelihood needs raw UMI counts, not normalised or log-transformed data "
            "(pass the layer holding raw counts)"
        )
    n_empty = int(np.sum(row_sums(adata) == 0))
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
        selection are dropped with a warning. When every cell and gene is kept, its ``X`` is
        the input's matrix (shared, not copied: nothing here writes into it); otherwise a copy
        of the cells and genes kept. Backed data (:mod:`hiermix_pyro.data.backed`) stay backed.
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
    adata = _take_cells(adata, np.sort(keep))
    n_selected = None
    if n_hvg is not None and n_hvg < adata.n_vars:
        adata = _select_hvg(adata, n_hvg, info["batch_key"])
        n_selected = adata.n_vars
    adata = _drop_empty_cells(adata)
    adata.obs["split"] = _split_labels(adata.obs[info["labels_key"]].to_numpy(), split, seed)
    adata.uns["hiermix"] = {**info, "n_hvg": n_selected}
    return adata


def _take_cells(adata: ad.AnnData, keep: np.ndarray) -> ad.AnnData:
    """A new AnnData of the cells ``keep``; with every cell, one that shares ``X`` with ``adata``
    (``adata[keep].copy()`` would copy the whole count matrix for nothing)."""
    if len(keep) < adata.n_obs:
        return adata[keep].copy()
    X = adata.X
    adata.X = None  # copy everything but the counts, then give both objects the same matrix
    try:
        out = adata.copy()
    finally:
        adata.X = X
    out.X = X
    return out


def _select_hvg(adata: ad.AnnData, n_hvg: int, batch_key: str | None) -> ad.AnnData:
    """scanpy's seurat_v3 on counts. Its loess fit of variance on mean can be singular on few
    cells (subsampled or smoke-test data); then retry, without undetected genes, with a wider
    span (0.5, then 1.0) and say so. Full datasets keep scanpy's defaults exactly.

    Large (more than ``HVG_BLOCKS_ABOVE`` non-zeros) or backed counts go through
    :func:`seurat_v3_genes`, the same statistics in row blocks (its genes equal scanpy's, tested)."""
    blocks = is_backed(adata) or (sp.issparse(adata.X) and adata.X.nnz > HVG_BLOCKS_ABOVE)
    for span in (0.3, 0.5, 1.0):
        try:
            if blocks:
                table = seurat_v3_genes(adata, n_hvg, batch_key=batch_key, span=span)
                for column in table:
                    adata.var[column] = table[column].to_numpy()
                adata.uns["hvg"] = {"flavor": "seurat_v3"}
                return adata[:, table["highly_variable"].to_numpy()].copy()
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
            adata = adata[:, _gene_nonzeros(adata) > 0].copy()
    raise ValueError(
        f"highly variable gene selection failed on {adata.n_obs} cells even with span 1.0: "
        "use more cells (subsample) or n_hvg=None"
    )


def _gene_nonzeros(adata: ad.AnnData) -> np.ndarray:
    """Cells in which each gene is detected ``[G]``."""
    if not is_backed(adata):
        return np.asarray((adata.X > 0).sum(0)).ravel()
    out = np.zeros(adata.n_vars)
    for _, block in RowBlocks(adata):
        out += np.bincount(block.indices[block.data > 0], minlength=adata.n_vars)
    return out


def _batch_codes(adata: ad.AnnData, batch_key: str | None) -> tuple[np.ndarray, int]:
    if batch_key is None:
        return np.zeros(adata.n_obs, dtype=np.int64), 1
    batches = pd.Categorical(adata.obs[batch_key].to_numpy())
    return batches.codes.astype(np.int64), len(batches.categories)


def _per_batch_gene_sums(adata, codes, n_batches, transform=None, block_rows: int = BLOCK_ROWS):
    """Sums and sums of squares per (batch, gene) ``[S, G]`` of ``transform(values, batch, gene)``
    (the values themselves by default), in float64, one row block at a time."""
    G = adata.n_vars
    sums, squares = np.zeros(n_batches * G), np.zeros(n_batches * G)
    for positions, block in RowBlocks(adata, None, block_rows):
        rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
        b = codes[positions][rows]
        values = block.data.astype(np.float64)
        if transform is not None:
            values = transform(values, b, block.indices)
        cell = b * G + block.indices
        sums += np.bincount(cell, weights=values, minlength=n_batches * G)
        squares += np.bincount(cell, weights=values * values, minlength=n_batches * G)
    return sums.reshape(n_batches, G), squares.reshape(n_batches, G)


def seurat_v3_genes(
    adata: ad.AnnData, n_top_genes: int, *, batch_key: str | None = None, span: float = 0.3
) -> pd.DataFrame:
    """scanpy's ``highly_variable_genes(flavor="seurat_v3")`` computed in two passes over row blocks.

    The same statistic as scanpy 1.11 (Stuart et al. 2019): per batch, a loess fit of log10
    variance on log10 mean gives an expected standard deviation per gene; counts are clipped at
    mean + sqrt(n) sd, and genes are ranked by the variance of the clipped, standardised counts;
    across batches by the median rank, then the number of batches that rank the gene among the
    top ``n_top_genes``. Pass one sums counts and squares per batch and gene; pass two sums the
    clipped counts. Memory: a few ``[batches, genes]`` arrays and one row block, never a copy of
    the matrix, so it runs on backed data too.

    Returns
    -------
    pandas.DataFrame
        Indexed by gene: ``highly_variable``, ``means``, ``variances``, ``variances_norm``,
        ``highly_variable_rank`` and, with ``batch_key``, ``highly_variable_nbatches``, as scanpy
        writes them into ``var``.
    """
    from skmisc.loess import loess

    codes, n_batches = _batch_codes(adata, batch_key)
    n_per_batch = np.bincount(codes, minlength=n_batches).astype(np.float64)[:, None]  # [S, 1]
    sums, squares = _per_batch_gene_sums(adata, codes, n_batches)  # [S, G]
    mean = sums / n_per_batch
    var = (squares / n_per_batch - mean**2) * n_per_batch / (n_per_batch - 1)  # unbiased, as scanpy
    reg_std = np.zeros_like(mean)
    for b in range(n_batches):
        not_const = var[b] > 0
        estimate = np.zeros(adata.n_vars)
        model = loess(np.log10(mean[b, not_const]), np.log10(var[b, not_const]), span=span, degree=2)
        model.fit()
        estimate[not_const] = model.outputs.fitted_values
        reg_std[b] = np.sqrt(10**estimate)
    clip_val = reg_std * np.sqrt(n_per_batch) + mean  # [S, G]
    clipped_sums, clipped_squares = _per_batch_gene_sums(
        adata, codes, n_batches, transform=lambda v, b, g: np.minimum(v, clip_val[b, g])
    )
    n = n_per_batch
    norm_gene_vars = (1 / ((n - 1) * np.square(reg_std))) * (
        n * np.square(mean) + clipped_squares - 2 * clipped_sums * mean
    )
    # from here on as scanpy: ranks per batch, median rank over the batches ranking a gene on top
    ranked = np.argsort(np.argsort(-norm_gene_vars, axis=1), axis=1).astype(np.float32)
    n_batches_high = np.sum((ranked < n_top_genes).astype(int), axis=0)
    ranked[ranked >= n_top_genes] = np.nan
    median_ranked = np.ma.median(np.ma.masked_invalid(ranked), axis=0).filled(np.nan)
    total = n_per_batch.sum()
    all_mean = sums.sum(0) / total
    df = pd.DataFrame(index=adata.var_names)
    df["means"] = all_mean
    df["variances"] = (squares.sum(0) / total - all_mean**2) * total / (total - 1)
    df["highly_variable_nbatches"] = n_batches_high
    df["highly_variable_rank"] = median_ranked
    df["variances_norm"] = np.mean(norm_gene_vars, axis=0)
    order = df.sort_values(
        ["highly_variable_rank", "highly_variable_nbatches"], ascending=[True, False], na_position="last"
    ).index
    df["highly_variable"] = False
    df.loc[order[: int(n_top_genes)], "highly_variable"] = True
    if batch_key is None:
        df = df.drop(columns="highly_variable_nbatches")
    return df


def _drop_empty_cells(adata: ad.AnnData) -> ad.AnnData:
    """Remove cells whose counts sum to zero (after gene selection), with a warning."""
    empty = row_sums(adata) == 0
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
