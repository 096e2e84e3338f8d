"""Loading count data: the embedded PBMC set, named real sets, user files, public downloads.

Every loader returns an AnnData with raw counts in ``.X`` (CSR, float32), the label levels as
categorical ``obs`` columns (coarse to fine), and ``uns['hiermix']`` describing them::

    {"dataset": ..., "levels": [...], "labels_key": <finest level>, "batch_key": <or None>}
"""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.io
import scipy.sparse as sp
from tqdm.auto import tqdm

from hiermix_pyro.data.backed import is_backed, read_backed, want_backed
from hiermix_pyro.data.hierarchy import add_hierarchy, add_level_keys, default_hierarchy
from hiermix_pyro.data.simulate import simulate_hierarchy

DATASETS: tuple[str, ...] = ("pbmc68k", "pbmc_sorted", "pbmc_3tech", "simulated")

# named real sets read from the data directory: file, labels_key, batch_key
_DATA_FILES = {
    "pbmc_sorted": ("pbmc_sorted.h5ad", "cell_type", None),
    "pbmc_3tech": ("pbmc_3tech.h5ad", "cell_type", "batch"),
}
_DATA_DIR_ENV = "HIERMIX_DATA_DIR"
# the built-in PBMC tree (default_hierarchy) applies to these only, never to a user's labels
_BUILTIN_TREE = ("pbmc68k", "pbmc_sorted", "pbmc_3tech")
# uns key that marks data from download_pbmc_purified (kept when written to .h5ad)
SOURCE_KEY = "hiermix_source"
_PACKAGE_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"

PBMC_PURIFIED_URL = "https://cf.10xgenomics.com/samples/cell-exp/1.1.0"
# 10x tarball name -> population label of the default hierarchy
PBMC_PURIFIED = {
    "b_cells": "CD19+ B",
    "cd14_monocytes": "CD14+ Monocyte",
    "cd34": "CD34+",
    "cd4_t_helper": "CD4+ T Helper",
    "cd56_nk": "CD56+ NK",
    "cytotoxic_t": "CD8+ Cytotoxic T",
    "memory_t": "CD4+/CD45RO+ Memory",
    "naive_cytotoxic": "CD8+/CD45RA+ Naive Cytotoxic",
    "naive_t": "CD4+/CD45RA+/CD25- Naive T",
    "regulatory_t": "CD4+/CD25 T Reg",
}


def load_dataset(
    dataset: str | Path | ad.AnnData = "pbmc68k",
    *,
    labels_key: str | None = None,
    batch_key: str | None = None,
    layer: str | None = None,
    data_dir: str | Path | None = None,
    drop_labels: tuple[str, ...] = (),
    hierarchy: pd.DataFrame | str | Path | None = None,
    level_keys: tuple[str, ...] | list[str] = (),
    seed: int = 0,
    backed: bool | None = None,
    **simulate_kwargs,
) -> ad.AnnData:
    """Load counts with their label hierarchy.

    Parameters
    ----------
    dataset
        A name from :data:`DATASETS`, a path to an ``.h5ad`` file, or an AnnData (copied,
        never modified). ``pbmc68k`` is embedded in scanpy and works offline; ``pbmc_sorted``
        and ``pbmc_3tech`` are read from the data directory (see :func:`resolve_data_dir`);
        ``simulated`` calls :func:`simulate_hierarchy`.
    labels_key
        ``obs`` column of the finest label; required for files and AnnData objects unless
        ``level_keys`` is given, named sets know theirs.
    batch_key
        ``obs`` column of the batch, if any (``pbmc_3tech`` defaults to ``"batch"``).
    layer
        Layer holding raw counts, copied into ``.X``; ``None``: ``.X``.
    data_dir
        Folder of the named real sets.
    drop_labels
        Finest labels whose cells are removed (e.g. ``("CD14+ Monocyte",)``).
    hierarchy
        Table or CSV/TSV path mapping finest labels to coarser levels (see
        :func:`add_hierarchy`).
    level_keys
        ``obs`` columns already in the data that hold the levels, coarse to fine; the last is
        the finest label (see :func:`add_level_keys`). Not together with ``hierarchy``.

    Without ``hierarchy`` and ``level_keys`` the levels are: the built-in PBMC tree
    (:func:`~hiermix_pyro.data.hierarchy.default_hierarchy`) for ``pbmc68k``, ``pbmc_sorted``,
    ``pbmc_3tech`` and data from :func:`download_pbmc_purified` when it covers every label;
    the simulated tree for ``simulated``; else one level, the labels. A user's file never gets
    the built-in tree because its labels have the built-in names: pass ``hierarchy`` for that.
    seed, **simulate_kwargs
        Passed to :func:`simulate_hierarchy` for ``dataset="simulated"``.
    backed
        For ``.h5ad`` files (paths and the named sets): keep the counts on disk and read them in
        row blocks (:mod:`hiermix_pyro.data.backed`; ``X`` is then ``None``). ``None``: the
        environment variable ``HIERMIX_BACKED`` (``1`` / ``0``) if set, else only when the counts
        would take more than half of the machine's memory.

    Returns
    -------
    anndata.AnnData
        Counts in ``.X`` (CSR float32; ``None`` when backed), levels in ``obs``,
        ``uns['hiermix']`` filled (with ``"backed": {"path", "key"}`` when backed).
    """
    level_keys = _check_level_options(hierarchy, level_keys, labels_key)
    if isinstance(dataset, str) and dataset == "simulated":
        adata = simulate_hierarchy(seed=seed, **simulate_kwargs)
        if hierarchy is not None or level_keys:  # a table or columns chosen among L1..
            info = adata.uns["hiermix"]
            levels = _levels(adata, labels_key or info["labels_key"], hierarchy, level_keys, builtin=False)
            info.update(levels=levels, labels_key=levels[-1])
    else:
        if simulate_kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(simulate_kwargs)}")
        adata, name, labels_key, batch_key = _read(dataset, labels_key, batch_key, data_dir, layer, backed)
        if level_keys:
            labels_key = level_keys[-1]
        _check_obs_key(adata, labels_key, "labels_key")
        if batch_key is not None:
            _check_obs_key(adata, batch_key, "batch_key")
            adata.obs[batch_key] = adata.obs[batch_key].astype("category")
        if not is_backed_raw(adata):
            _use_layer(adata, layer)
        builtin = name in _BUILTIN_TREE or adata.uns.get(SOURCE_KEY) == "pbmc_purified"
        levels = _levels(adata, labels_key, hierarchy, level_keys, builtin)
        adata.uns["hiermix"] = {
            "dataset": name,
            "levels": levels,
            "labels_key": levels[-1],
            "batch_key": batch_key,
        }
        if "hiermix_backed" in adata.uns:  # counts on disk (read_backed)
            adata.uns["hiermix"]["backed"] = adata.uns.pop("hiermix_backed")
    return _drop_labels(adata, drop_labels)


def is_backed_raw(adata: ad.AnnData) -> bool:
    """Backed data before ``uns['hiermix']`` exists (as :func:`read_backed` returns them) or after."""
    return adata.X is None and ("hiermix_backed" in adata.uns or is_backed(adata))


def _check_level_options(hierarchy, level_keys, labels_key) -> tuple[str, ...]:
    """``level_keys`` as a tuple; errors when it clashes with ``hierarchy`` or ``labels_key``."""
    if isinstance(level_keys, str):
        raise TypeError(f"level_keys must be a sequence of obs columns, got the string {level_keys!r}")
    level_keys = tuple(level_keys or ())
    if hierarchy is not None and level_keys:
        raise ValueError("give either hierarchy (a table) or level_keys (obs columns), not both")
    if level_keys and labels_key not in (None, level_keys[-1]):
        raise ValueError(f"labels_key={labels_key!r} differs from the finest of level_keys ({level_keys[-1]!r})")
    return level_keys


def _levels(adata: ad.AnnData, labels_key: str, hierarchy, level_keys: tuple[str, ...], builtin: bool) -> list[str]:
    """Write the label levels into ``adata.obs``; return their columns, coarse to fine."""
    if level_keys:
        return add_level_keys(adata, level_keys)
    if hierarchy is None and builtin:
        tree = default_hierarchy()
        if adata.obs[labels_key].astype(str).isin(tree.index).all():
            hierarchy = tree
    return add_hierarchy(adata, labels_key, hierarchy)


def _read(
    dataset: str | Path | ad.AnnData,
    labels_key: str | None,
    batch_key: str | None,
    data_dir: str | Path | None,
    layer: str | None = None,
    backed: bool | None = None,
) -> tuple[ad.AnnData, str, str | None, str | None]:
    """Read ``dataset``; return it with its name and default labels/batch keys filled in.
    ``.h5ad`` files are read backed (counts left on disk) when :func:`want_backed` says so."""
    if isinstance(dataset, ad.AnnData):
        adata = dataset.copy()
        if adata.uns.get(SOURCE_KEY) == "pbmc_purified":
            labels_key = labels_key or "cell_type"
        return adata, "AnnData", labels_key, batch_key
    if dataset == "pbmc68k":
        return _pbmc68k_counts(), "pbmc68k", labels_key or "bulk_labels", batch_key
    if dataset in _DATA_FILES:
        filename, default_labels, default_batch = _DATA_FILES[dataset]
        path = resolve_data_dir(data_dir) / filename
        if not path.is_file():
            raise FileNotFoundError(
                f"{filename} not found in {path.parent}; point the environment variable "
                f"{_DATA_DIR_ENV} (or data_dir=) to the folder holding it"
            )
        return _read_h5ad(path, layer, backed), dataset, labels_key or default_labels, batch_key or default_batch
    if Path(dataset).is_file():
        adata = _read_h5ad(dataset, layer, backed)
        if adata.uns.get(SOURCE_KEY) == "pbmc_purified":
            labels_key = labels_key or "cell_type"
        return adata, str(dataset), labels_key, batch_key
    raise ValueError(f"unknown dataset {str(dataset)!r}: not an existing .h5ad file nor one of {', '.join(DATASETS)}")


def _read_h5ad(path, layer: str | None, backed: bool | None) -> ad.AnnData:
    key = "X" if layer is None else f"layers/{layer}"
    try:
        use_backed = want_backed(path, key, backed)
    except KeyError:  # no such layer: _use_layer names the ones there are
        use_backed = False
    return read_backed(path, layer) if use_backed else ad.read_h5ad(path)


def _check_obs_key(adata: ad.AnnData, key: str | None, argument: str) -> None:
    """Raise a ValueError listing the ``obs`` columns when ``key`` is not one of them."""
    available = list(adata.obs.columns)
    if key is None:
        raise ValueError(f"{argument} is required for this dataset; obs columns: {available}")
    if key not in adata.obs:
        raise ValueError(f"{argument}={key!r} is not a column of adata.obs; available: {available}")


def _use_layer(adata: ad.AnnData, layer: str | None) -> None:
    """Put ``layer`` (or ``.X``) into ``.X`` as CSR float32, in place."""
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"layer {layer!r} not found; available: {list(adata.layers)}")
    adata.X = sp.csr_matrix(adata.X if layer is None else adata.layers[layer], dtype=np.float32)


def _drop_labels(adata: ad.AnnData, drop_labels: tuple[str, ...]) -> ad.AnnData:
    """Remove the cells whose finest label is in ``drop_labels``."""
    if not drop_labels:
        return adata
    info = adata.uns["hiermix"]
    labels = adata.obs[info["labels_key"]]
    unknown = sorted(set(drop_labels) - set(labels.cat.categories))
    if unknown:
        known = list(labels.cat.categories)
        raise ValueError(f"drop_labels {unknown} are not labels; labels: {known}")
    adata = adata[~labels.isin(drop_labels).to_numpy()].copy()
    for key in [*info["levels"], info["batch_key"]]:
        if key is not None:
            adata.obs[key] = adata.obs[key].cat.remove_unused_categories()
    return adata


def _pbmc68k_counts() -> ad.AnnData:
    """Integer UMI counts of scanpy's ``pbmc68k_reduced`` (700 cells x 765 genes).

    Its ``.raw.X`` is ``log1p`` of counts normalised to 1e4 per cell, and ``obs['n_counts']``
    the cell's total over *all* genes, so the counts are
    ``rint(expm1(raw.X) * n_counts / 1e4)``; before rounding they are within ~0.08 of
    integers (float32 roundoff). The 765 genes hold 11-28% of each cell's ``n_counts``.
    """
    reference = sc.datasets.pbmc68k_reduced()
    scale = reference.obs["n_counts"].to_numpy()[:, None] / 1e4
    counts = reference.raw.X.astype(np.float64).expm1().multiply(scale).tocsr().rint()
    var = pd.DataFrame(index=reference.raw.var_names)
    return ad.AnnData(sp.csr_matrix(counts, dtype=np.float32), obs=reference.obs.copy(), var=var)


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """Folder of the named real data sets.

    The first of: ``data_dir``; the environment variable ``HIERMIX_DATA_DIR``; else
    ``../shared/data`` from the working directory or ``shared/data`` beside the repository,
    whichever exists first.

    Raises
    ------
    FileNotFoundError
        Naming every folder tried, when none exists.
    """
    if data_dir is not None:
        candidates = [(Path(data_dir), "data_dir argument")]
    elif os.environ.get(_DATA_DIR_ENV):
        candidates = [(Path(os.environ[_DATA_DIR_ENV]), f"${_DATA_DIR_ENV}")]
    else:
        candidates = [
            (Path.cwd().parent / "shared" / "data", "../shared/data from the working directory"),
            (_PACKAGE_DATA_DIR, "shared/data beside the repository"),
        ]
    for folder, _ in candidates:
        if folder.is_dir():
            return folder
    tried = "; ".join(f"{folder} ({origin})" for folder, origin in candidates)
    raise FileNotFoundError(
        f"no data directory found; looked in: {tried}. Set the environment variable "
        f"{_DATA_DIR_ENV} to the folder holding the .h5ad files (or pass data_dir=)"
    )


def download_pbmc_purified(
    cache_dir: str | Path | None = None,
    populations: list[str] | None = None,
    base_url: str = PBMC_PURIFIED_URL,
    progress: bool = True,
) -> ad.AnnData:
    """Download the 10x Genomics purified PBMC populations (Zheng et al. 2017).

    These are the sets scVAE calls ``10x-PBMC-PP``: one tarball per population, cached.

    Parameters
    ----------
    cache_dir
        Where the tarballs are kept; default ``$HIERMIX_CACHE_DIR`` or
        ``~/.cache/hiermix_pyro``. Files already there are not downloaded again.
    populations
        Tarball names (keys of :data:`PBMC_PURIFIED`); ``None``: all ten.
    base_url
        Server root; tarballs live at ``{base_url}/{name}/{name}_filtered_gene_bc_matrices.tar.gz``.
    progress
        Show a download progress bar.

    Returns
    -------
    anndata.AnnData
        Counts (CSR float32), Ensembl IDs as ``var_names`` with ``var['gene_symbol']``,
        population labels in ``obs['cell_type']``, and ``uns['hiermix_source'] = "pbmc_purified"``.
        :func:`load_dataset` gives data carrying this mark (also when written to and read from
        an ``.h5ad`` file) the built-in PBMC tree, with ``labels_key="cell_type"`` by default.
    """
    populations = list(PBMC_PURIFIED) if populations is None else populations
    unknown = sorted(set(populations) - set(PBMC_PURIFIED))
    if unknown:
        raise ValueError(f"unknown populations {unknown}; valid: {list(PBMC_PURIFIED)}")
    cache = Path(cache_dir or os.environ.get("HIERMIX_CACHE_DIR", "~/.cache/hiermix_pyro"))
    cache = cache.expanduser()
    parts = []
    for name in populations:
        filename = f"{name}_filtered_gene_bc_matrices.tar.gz"
        path = _download(f"{base_url}/{name}/{filename}", cache / filename, progress)
        parts.append(read_10x_purified_tarball(path, PBMC_PURIFIED[name]))
    adata = ad.concat(parts, merge="same")
    labels = [PBMC_PURIFIED[name] for name in populations]
    adata.obs["cell_type"] = pd.Categorical(adata.obs["cell_type"], categories=labels)
    adata.uns[SOURCE_KEY] = "pbmc_purified"
    return adata


def _download(url: str, path: Path, progress: bool) -> Path:
    """Fetch ``url`` to ``path`` unless it is there; a partial download never takes its name."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(url) as response, open(partial, "wb") as out:
            size = int(response.headers.get("Content-Length") or 0) or None
            bar = tqdm.wrapattr(out, "write", total=size, desc=path.name, disable=not progress)
            with bar as writer:
                shutil.copyfileobj(response, writer)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def read_10x_purified_tarball(path: str | Path, population: str) -> ad.AnnData:
    """Read one 10x purified-population tarball without extracting it.

    The tarball holds ``filtered_matrices_mex/hg19/{matrix.mtx, genes.tsv, barcodes.tsv}``
    (10x v2 MEX: a genes x cells Matrix Market file; ``genes.tsv`` is id<TAB>symbol).

    Returns
    -------
    anndata.AnnData
        Cells x genes counts; ``obs_names`` are ``{barcode}_{population}`` (unique across
        populations), ``obs['cell_type'] = population``, ``var['gene_symbol']``.
    """
    with tarfile.open(path) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        counts = scipy.io.mmread(tar.extractfile(members["matrix.mtx"]))
        genes = pd.read_csv(
            tar.extractfile(members["genes.tsv"]),
            sep="\t",
            header=None,
            names=["gene_id", "gene_symbol"],
        )
        barcodes = pd.read_csv(tar.extractfile(members["barcodes.tsv"]), header=None)[0]
    obs = pd.DataFrame({"barcode": barcodes.to_numpy(), "cell_type": population})
    obs.index = (obs["barcode"] + "_" + population).to_numpy()  # unnamed: writable to .h5ad beside obs['barcode']
    var = genes.set_index("gene_id").rename_axis(None)
    return ad.AnnData(sp.csr_matrix(counts.T, dtype=np.float32), obs=obs, var=var)
