"""Cell-type hierarchies: tables that map a finest label to its coarser ancestors.

A hierarchy is a :class:`pandas.DataFrame` indexed by the finest label, one column per level,
coarse to fine. The default tree covers the FACS-sorted PBMC populations of Zheng et al. (2017)
and the ``Dendritic`` cells of scanpy's ``pbmc68k_reduced``::

    L1  stem | non-stem
    L2  stem | B | NK | T | myeloid
    L3  stem | B | NK | CD4 T | CD8 T | myeloid
    L4  the population itself

Without CD14+ monocytes the sorted populations give the 2/4/5/9 hierarchy of the
mixture-of-mixtures literature. The loaders apply this tree to the built-in datasets only; a
user's data get their levels from a table (:func:`add_hierarchy`) or from their own ``obs``
columns (:func:`add_level_keys`), else one level, the labels.
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
    """Read a hierarchy table from CSV (or TSV for ``.tsv``/``.txt``), finest label first.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If a finest label has more than one row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hierarchy file {str(path)!r} not found (working directory: {Path.cwd()})")
    sep = "\t" if path.suffix in {".tsv", ".txt"} else ","
    table = pd.read_csv(path, sep=sep, index_col=0, dtype=str)
    _check_table(table, str(path))
    return table


def _check_table(table: pd.DataFrame, origin: str) -> None:
    repeated = sorted(set(table.index[table.index.duplicated()]))
    if repeated:
        raise ValueError(f"hierarchy {origin}: finest labels listed more than once: {repeated}")


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
        to such a table (see :func:`read_hierarchy`). A last column that maps the table's
        finest labels one-to-one (the labels themselves, or a renaming of them) is the finest
        level; otherwise ``labels_key`` is appended as the finest level. ``None``: one level,
        the labels (the built-in PBMC tree is never guessed from label names; the loaders pass
        :func:`default_hierarchy` for the built-in datasets).

    Returns
    -------
    list of str
        The level columns, coarse to fine.

    Raises
    ------
    ValueError
        If the hierarchy misses some labels, lists one twice, has an empty entry for a label,
        or names a coarser level like ``labels_key``.
    """
    labels = adata.obs[labels_key].astype(str)
    adata.obs[labels_key] = adata.obs[labels_key].astype("category").cat.remove_unused_categories()
    if hierarchy is None:
        return [labels_key]
    if isinstance(hierarchy, pd.DataFrame):
        table, origin = hierarchy, "table"
        _check_table(table, origin)
    else:
        table, origin = read_hierarchy(hierarchy), f"file {str(hierarchy)!r}"
    table = table.set_axis(table.index.astype(str))
    missing = sorted(set(labels) - set(table.index))
    if missing:
        raise ValueError(
            f"labels missing from the hierarchy table: {missing} "
            f"(obs[{labels_key!r}] against the first column of the hierarchy {origin})"
        )
    present = table.loc[sorted(set(labels))]
    empty = {level: sorted(present.index[present[level].isna()]) for level in table.columns}
    empty = {level: rows for level, rows in empty.items() if rows}
    if empty:
        raise ValueError(f"hierarchy {origin} has empty entries: {empty} (level: labels)")
    levels = list(table.columns)
    finest_given = bool(levels) and table[levels[-1]].notna().all() and table[levels[-1]].is_unique
    coarse = levels[:-1] if finest_given else levels
    if labels_key in coarse:
        raise ValueError(
            f"hierarchy {origin}: the coarser level {labels_key!r} has the name of the labels "
            f"column; rename that column of the table"
        )
    for level in levels:
        order = pd.unique(table[level].dropna())  # table order keeps siblings together in plots
        values = pd.Categorical(labels.map(table[level]), categories=order)
        adata.obs[level] = pd.Series(values, index=adata.obs_names).cat.remove_unused_categories()
    if not finest_given:  # the last column merges labels: a coarser level, the labels come below it
        levels.append(labels_key)
    return levels


def add_level_keys(adata: ad.AnnData, level_keys: tuple[str, ...] | list[str]) -> list[str]:
    """Use ``obs`` columns already in ``adata`` as the levels (coarse to fine), in place.

    Each column becomes categorical. The last column is the finest label; it must determine every
    coarser column (each finest label has exactly one parent per level).

    Returns
    -------
    list of str
        ``list(level_keys)``.

    Raises
    ------
    ValueError
        If ``level_keys`` is empty, repeats or names unknown columns, a column has cells without
        a value, or a finest label has more than one parent in a coarser column.
    """
    level_keys = list(level_keys)
    if not level_keys:
        raise ValueError("level_keys is empty")
    if len(set(level_keys)) < len(level_keys):
        raise ValueError(f"level_keys repeats a column: {level_keys}")
    unknown = [key for key in level_keys if key not in adata.obs]
    if unknown:
        raise ValueError(f"level_keys {unknown} are not columns of adata.obs; available: {list(adata.obs.columns)}")
    for key in level_keys:
        n_missing = int(adata.obs[key].isna().sum())
        if n_missing:
            raise ValueError(f"level_keys: obs[{key!r}] has no value for {n_missing} cells")
    finest = level_keys[-1]
    for coarse in level_keys[:-1]:
        parents = adata.obs.groupby(finest, observed=True)[coarse].unique()
        ambiguous = {str(label): sorted(map(str, values)) for label, values in parents.items() if len(values) > 1}
        if ambiguous:
            label, values = next(iter(ambiguous.items()))
            raise ValueError(
                f"level_keys: the finest level {finest!r} does not determine {coarse!r}: label "
                f"{label!r} has the parents {values}"
                + (f" ({len(ambiguous)} labels in all: {sorted(ambiguous)})" if len(ambiguous) > 1 else "")
            )
    for key in level_keys:
        adata.obs[key] = adata.obs[key].astype("category").cat.remove_unused_categories()
    return level_keys
