"""Figures for the book: one style, one ``savefig`` helper, and the plots the chapters reuse.

Every helper returns its ``Figure`` and shows nothing; ``savefig`` writes it into the book's
figure folder. Categorical panels draw cells in a fixed random order (no class painted on top of
the others) with the legend outside the axes; cluster panels reuse the colour of the class whose
name they carry, so Hungarian-aligned clusters read at a glance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
import seaborn as sns
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

UMAP_KEY = "X_umap_latent"  # where plot_latent_umap caches the UMAP of the latent space
UMAP_MAX_CELLS = 50_000  # plot_latent_umap embeds a seeded sample of this many cells above it
PANEL_SIZE = (4.2, 3.8)  # inches per embedding panel, before its legend
# tab20 without its grey pair, dark shades first: grey is kept for unmatched clusters and NaN
_TAB20 = [c for i, c in enumerate(sns.color_palette("tab20")) if i not in (14, 15)]
QUALITATIVE = _TAB20[::2] + _TAB20[1::2]


def set_style() -> None:
    """Apply the seaborn theme shared by every figure of the book."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


def savefig(fig: Figure, name: str, folder: str | Path) -> Path:
    """Write ``fig`` to ``folder/name.png`` (dpi 150, tight bounding box).

    Parameters
    ----------
    fig
        Figure to save; it is left open.
    name
        File name without extension.
    folder
        Output folder, created if missing.

    Returns
    -------
    pathlib.Path
        Path of the written PNG.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def plot_losses(history: dict, ax: Axes | None = None) -> Figure:
    """Training and validation loss per epoch, the best epoch, and the KL weight.

    Parameters
    ----------
    history
        Lists ``"epoch"``, ``"train_loss"``, ``"val_loss"`` (None/NaN where not evaluated) and
        ``"beta"`` (KL weight), losses per cell; optional ``"best_epoch"``.
    ax
        Axes to draw on; a new figure when None.

    Returns
    -------
    matplotlib.figure.Figure
    """
    set_style()
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    epoch = np.asarray(history["epoch"], dtype=float)
    ax.plot(epoch, np.asarray(history["train_loss"], dtype=float), label="train")
    val = np.array([np.nan if v is None else v for v in history.get("val_loss", [])], dtype=float)
    evaluated = np.isfinite(val)
    if evaluated.any():  # validation may be evaluated every few epochs, or never
        ax.plot(epoch[evaluated], val[evaluated], marker=".", label="validation")
    if history.get("best_epoch") is not None:
        best = history["best_epoch"]
        ax.axvline(best, color="0.3", linestyle=":", label=f"best epoch ({best})")
    ax.set(xlabel="epoch", ylabel="loss per cell (−ELBO)", title="Training curves")
    handles, labels = ax.get_legend_handles_labels()
    legend_ax = ax
    beta = np.asarray(history.get("beta", []), dtype=float)
    if beta.size:
        legend_ax = ax.twinx()
        legend_ax.plot(epoch, beta, color="0.5", linestyle="--", label="KL weight β")
        legend_ax.set_ylabel("KL weight β")
        legend_ax.set_ylim(0, 1.05 * max(1.0, beta.max()))
        legend_ax.grid(False)
        beta_handles, beta_labels = legend_ax.get_legend_handles_labels()
        handles, labels = handles + beta_handles, labels + beta_labels
    # below the axes: curves fill the plot area wherever the losses and β happen to lie
    legend_ax.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
        ncol=len(handles),
        frameon=False,
    )
    return ax.figure


def _is_categorical(values: pd.Series) -> bool:
    """Whether a column gets a legend (categories) rather than a colour bar."""
    return not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)


def _palette(categories: Sequence, reference: dict | None = None) -> dict:
    """Colour per category; categories named in ``reference`` keep its colour, others grey."""
    if reference and set(categories) & set(reference):
        extra = [cat for cat in categories if cat not in reference]
        greys = dict(zip(extra, [(g, g, g) for g in np.linspace(0.25, 0.7, len(extra))]))
        return {cat: reference[cat] if cat in reference else greys[cat] for cat in categories}
    n = len(categories)
    colours = QUALITATIVE[:n] if n <= len(QUALITATIVE) else sns.color_palette("husl", n)
    return dict(zip(categories, colours))


def _embedding_panel(
    ax: Axes,
    coords: np.ndarray,
    values: pd.Series,
    title: str,
    axis_name: str,
    categorical: bool | None = None,
    reference: dict | None = None,
) -> dict | None:
    """Scatter one obs column on a 2-D embedding; return the palette of a categorical column."""
    order = np.random.default_rng(0).permutation(len(coords))  # no group always on top
    size = float(np.clip(20_000 / len(coords), 2, 40))
    x, y = coords[order, 0], coords[order, 1]
    palette = None
    if categorical is None:
        categorical = _is_categorical(values)
    if categorical:
        codes = pd.Categorical(values).remove_unused_categories()
        palette = _palette(list(codes.categories), reference)
        colours = [palette[c] if not pd.isna(c) else (0.85, 0.85, 0.85) for c in codes[order]]
        ax.scatter(x, y, c=colours, s=size, linewidths=0, rasterized=True)
        handles = [
            Line2D([], [], marker="o", linestyle="", color=colour, label=str(cat)) for cat, colour in palette.items()
        ]
        ax.legend(
            handles=handles,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
            fontsize="small",
            ncol=1 if len(handles) <= 14 else 2,
        )
    else:
        colours = values.to_numpy(dtype=float)[order]
        points = ax.scatter(x, y, c=colours, s=size, cmap="viridis", linewidths=0, rasterized=True)
        ax.figure.colorbar(points, ax=ax, shrink=0.8)
    ax.set(title=title, xlabel=f"{axis_name} 1", ylabel=f"{axis_name} 2", xticks=[], yticks=[])
    ax.grid(False)
    return palette


def _coords(adata: AnnData, basis: str) -> np.ndarray:
    """First two columns of ``adata.obsm[basis]``."""
    if basis not in adata.obsm:
        raise KeyError(
            f"adata.obsm has no {basis!r} (available: {list(adata.obsm)}); "
            f"plot_latent_umap stores its UMAP as {UMAP_KEY!r}"
        )
    return np.asarray(adata.obsm[basis])[:, :2]


def _check_columns(adata: AnnData, columns: Sequence[str]) -> None:
    """Raise a KeyError naming the obs columns that do not exist."""
    missing = [col for col in columns if col not in adata.obs.columns]
    if missing:
        raise KeyError(f"columns {missing} not in adata.obs; available: {list(adata.obs.columns)}")


def plot_latent_umap(
    adata: AnnData,
    color: list[str],
    basis: str = "X_latent",
    title_prefix: str = "",
    seed: int = 0,
    max_cells: int | None = UMAP_MAX_CELLS,
) -> Figure:
    """UMAP of a latent space, one panel per obs column, side by side.

    Categorical panels share colours: a category named like one of the first categorical panel
    (e.g. clusters renamed to their Hungarian-matched cell type) takes its colour, others are grey.

    The UMAP (scanpy ``neighbors(use_rep=basis)`` + ``umap``, seeded) is computed once and
    cached in ``adata.obsm["X_umap_latent"]``; an existing one is reused whatever ``basis``.
    The neighbour graph is stored under the key ``"neighbors_latent"``, so the default
    ``adata.obsp["connectivities"]`` and ``adata.obsm["X_umap"]`` are left untouched.

    With more than ``max_cells`` cells (None: no limit) the UMAP embeds a sample of
    ``max_cells`` cells drawn with ``seed``; the other cells get NaN coordinates in the cache
    and are not drawn, no neighbour graph is stored, and ``adata.uns["umap_latent"]`` records
    the sample's size and seed. The figure's title says so.

    Parameters
    ----------
    adata
        Cells with the latent representation in ``adata.obsm[basis]``.
    color
        Obs columns to colour by; non-numeric columns get a legend, numeric ones a colour bar.
    basis
        obsm key of the latent space.
    title_prefix
        Prepended to each panel title (e.g. the model name).
    seed
        Random seed of the neighbour graph and UMAP (and of the sample of cells).
    max_cells
        Largest number of cells embedded.

    Returns
    -------
    matplotlib.figure.Figure
    """
    set_style()
    if not color:
        raise ValueError("color is empty: name at least one obs column")
    _check_columns(adata, color)
    if UMAP_KEY not in adata.obsm:
        _coords(adata, basis)  # clear error if the latent space is missing
        if max_cells is None or adata.n_obs <= max_cells:
            sc.pp.neighbors(
                adata,
                n_neighbors=min(15, adata.n_obs - 1),
                use_rep=basis,
                random_state=seed,
                key_added="neighbors_latent",
                transformer="sklearn",  # exact; scanpy's own choice below 4,096 cells (see _subsample_umap)
            )
            sc.tl.umap(adata, random_state=seed, neighbors_key="neighbors_latent", key_added=UMAP_KEY)
        else:
            adata.obsm[UMAP_KEY] = _subsample_umap(np.asarray(adata.obsm[basis]), max_cells, seed)
            adata.uns["umap_latent"] = {"n_cells": int(max_cells), "seed": int(seed)}
    coords = _coords(adata, UMAP_KEY)
    shown = np.isfinite(coords).all(1)
    width, height = PANEL_SIZE
    figsize = (1.5 * width * len(color), height)
    fig, axes = plt.subplots(1, len(color), figsize=figsize, layout="constrained", squeeze=False)
    palette = None  # the first categorical panel's colours: a later panel's category of the same name shares it
    for ax, col in zip(axes[0], color):
        panel = _embedding_panel(
            ax, coords[shown], adata.obs[col][shown], f"{title_prefix}{col}", "UMAP", reference=palette
        )
        palette = palette or panel
    if not shown.all():
        fig.suptitle(f"a random {shown.sum():,} of {len(shown):,} cells", fontsize="medium")
    return fig


def _subsample_umap(latent: np.ndarray, max_cells: int, seed: int) -> np.ndarray:
    """UMAP ``[N, 2]`` of a seeded sample of ``max_cells`` rows of ``latent``; NaN for the others."""
    cells = np.sort(np.random.default_rng(seed).choice(len(latent), size=max_cells, replace=False))
    sample = AnnData(obs=pd.DataFrame(index=[str(i) for i in cells]))
    sample.obsm["latent"] = np.asarray(latent[cells], dtype=np.float32)
    # exact neighbours (scikit-learn): scanpy 1.11's approximate search (pynndescent, its default
    # from 4,096 cells) fails on scipy's sparse arrays (no getnnz) in this environment
    sc.pp.neighbors(
        sample, n_neighbors=min(15, max_cells - 1), use_rep="latent", random_state=seed, transformer="sklearn"
    )
    sc.tl.umap(sample, random_state=seed)
    coords = np.full((len(latent), 2), np.nan, dtype=np.float32)
    coords[cells] = sample.obsm["X_umap"]
    return coords


def plot_level_panels(
    adata: AnnData,
    levels: list[str],
    cluster_cols: list[str],
    basis: str = UMAP_KEY,
) -> Figure:
    """True classes beside clusters on an embedding, one row per hierarchy level.

    Parameters
    ----------
    adata
        Cells with a 2-D embedding in ``adata.obsm[basis]``.
    levels
        Obs columns of the true labels, coarse to fine.
    cluster_cols
        Obs columns of the clusters, one per level. Clusters named after a class (Hungarian
        alignment, done by the caller) are drawn in that class's colour, the others in grey.
    basis
        obsm key of the embedding (default: the UMAP cached by :func:`plot_latent_umap`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    set_style()
    if len(levels) != len(cluster_cols):
        raise ValueError(f"got {len(cluster_cols)} cluster columns for {len(levels)} levels")
    if not levels:
        raise ValueError("levels is empty")
    _check_columns(adata, [*levels, *cluster_cols])
    coords = _coords(adata, basis)
    shown = np.isfinite(coords).all(1)  # a subsampled UMAP leaves the other cells at NaN
    axis_name = "UMAP" if "umap" in basis.lower() else basis.removeprefix("X_")
    width, height = PANEL_SIZE
    figsize = (2 * 1.5 * width, height * len(levels))
    fig, axes = plt.subplots(len(levels), 2, figsize=figsize, layout="constrained", squeeze=False)
    for (true_ax, cluster_ax), level, cluster_col in zip(axes, levels, cluster_cols):
        title = f"{level}: true classes"
        palette = _embedding_panel(true_ax, coords[shown], adata.obs[level][shown], title, axis_name, categorical=True)
        _embedding_panel(
            cluster_ax,
            coords[shown],
            adata.obs[cluster_col][shown],
            f"{level}: clusters ({cluster_col})",
            axis_name,
            categorical=True,
            reference=palette,
        )
    return fig
