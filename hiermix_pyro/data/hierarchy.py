"""Cell-type hierarchies: tables that map a finest label to its coarser ancestors.

A hierarchy is a :class:`pandas.DataFrame` indexed by the finest label, one column per level,
coarse to fine. The default tree covers the FACS-sorted PBMC populations of Zheng et al. (2017)
and the ``Dendritic`` cells of scanpy's ``pbmc68k_reduced``::

    L1  stem | non-stem
    L2  stem | B | NK | T | myeloid
    L3  stem | B | NK | CD4 T | CD8 T | myeloid
    L4  the population itself

Without CD14+ monocytes the sorted populations give the 2/4/5/9 hierarchy of the
mixture-of-mixtures literature.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pandas as pd

# L1, L2, L3, L4 (= the population); rows ordered so that siblings sit together
_DEFAULT_TREE = (
    ("stem", "stem", "stem", "CD34+"),
    ("non-stem", "B", "B", "CD19+ B"),
    ("non-stem", "NK", "NK", "CD56+ NK"),
    ("non-stem", "T", "CD4 T", "CD4+ T Helper"),
    ("non-stem", "T", "CD4 T", "CD4+/CD45RA+/CD25- Naive T"),
    ("non-stem", "T", "CD4 T", "CD4+/CD45RO+ Memory"),
    ("non-stem", "T", "CD4 T", "CD4+/CD25 T Reg"),
    ("non-stem", "T", "CD8 T", "CD8+ Cytotoxic T"),
    ("non-stem", "T", "CD8 T", "CD8+/CD45RA+ Naive Cytotoxic"),
    ("non-stem", "myeloid", "myeloid", "CD14+ Monocyte"),
    ("non-stem", "myeloid", "myeloid", "Dendritic"),
)


def default_hierarchy() -> pd.DataFrame:
    """The PBMC tree: one row per population, columns ``L1..L4`` coarse to fine.

    Returns
    -------
    pandas.DataFrame
        Indexed by population name; ``L4`` repeats the index.
    """
    table = pd.DataFrame(_DEFAULT_TREE, columns=["L1", "L2", "L3", "L4"])
    return table.set_index(table["L4"].rename("population"))


def read_hierarchy(path: str | Path) -> pd.DataFrame:
    """Read a hierarchy table from CSV (or TSV for ``.tsv``/``.txt``), finest label first."""
    sep = "\t" if Path(path).suffix in {".tsv", ".txt"} else ","
    return pd.read_csv(path, sep=sep, index_col=0, dtype=str)


def add_hierarchy(
    adata: ad.AnnData,
    labels_key: str,
    hierarchy: pd.DataFrame | str | Path | None = None,
) -> list[str]:
    """Write the levels of a hierarchy into ``adata.obs`` as categorical columns, in place.

    Parameters
    ----------
    adata
        Cells with their finest label in ``adata.obs[labels_key]``.
    labels_key
        Column of ``adata.obs`` holding the finest label.
    hierarchy
        Table indexed by finest label with one column per level, coarse to fine, or a path
        to such a table (see :func:`read_hierarchy`). If its last column is not the finest
        label itself, ``labels_key`` is appended as the finest level. ``None``: the
        :func:`default_hierarchy` when it covers every label, else the labels alone.

    Returns
    -------
    list of str
        The level columns, coarse to fine.

    Raises
    ------
    ValueError
        If an explicit hierarchy misses some labels.
    """
    labels = adata.obs[labels_key].astype(str)
    adata.obs[labels_key] = adata.obs[labels_key].astype("category").cat.remove_unused_categories()
    if hierarchy is None:
        table = default_hierarchy()
        if not labels.isin(table.index).all():
            return [labels_key]
    else:
        table = hierarchy if isinstance(hierarchy, pd.DataFrame) else read_hierarchy(hierarchy)
    missing = sorted(set(labels) - set(table.index))
    if missing:
        raise ValueError(f"labels missing from the hierarchy table: {missing}")
    for level in table.columns:
        order = pd.unique(table[level])  # table order keeps siblings together in plots
        values = pd.Categorical(labels.map(table[level]), categories=order)
        adata.obs[level] = pd.Series(values, index=adata.obs_names).cat.remove_unused_categories()
    levels = list(table.columns)
    if not levels or not (table[levels[-1]] == table.index).all():
        levels.append(labels_key)
    return levels
