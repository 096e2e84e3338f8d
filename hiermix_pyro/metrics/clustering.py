"""Clustering metrics: agreement between cluster assignments and true labels, per hierarchy level.

Scores follow the peer baselines (``BASELINES.md``): ARI and NMI from scikit-learn, weighted F1
after a one-to-one Hungarian matching of clusters to classes, ``purity`` (each cluster takes its
majority label, as in the mixture-VAE literature) and ``accuracy`` as the VMM paper (Stirn &
Knowles) defines it: each cluster takes the label of its most probable member. ``cluster_latent`` gives the baseline clusterings of a latent space
(k-means, or Leiden at the resolution that yields the wanted number of clusters), and
``nesting_score`` measures how far a fine clustering refines a coarse one.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, f1_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

CLUSTER_METHODS = ("kmeans", "leiden")


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    """Return ``values`` as a non-empty 1-D array without missing entries."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if pd.isna(array).any():
        raise ValueError(f"{name} contains missing values (NaN/None)")
    return array


def _check_pair(
    labels: ArrayLike, clusters: ArrayLike, names: tuple[str, str] = ("labels", "clusters")
) -> tuple[np.ndarray, np.ndarray]:
    """Validate two per-cell assignments of the same cells."""
    labels, clusters = _as_1d(labels, names[0]), _as_1d(clusters, names[1])
    if len(labels) != len(clusters):
        raise ValueError(
            f"{names[0]} and {names[1]} must have one entry per cell: got {len(labels)} and {len(clusters)}"
        )
    return labels, clusters


def _hungarian(labels: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of matched (class, cluster) pairs in the rows/columns of the contingency table."""
    table = contingency_matrix(labels, clusters)  # [classes, clusters], rows/cols np.unique order
    return linear_sum_assignment(table, maximize=True)


def _purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Fraction of cells that share their cluster's most common label."""
    table = contingency_matrix(labels, clusters)  # [classes, clusters]
    return float(table.max(axis=0).sum() / len(labels))


def hungarian_match(labels: ArrayLike, clusters: ArrayLike) -> dict:
    """Match clusters one-to-one to classes so that the most cells are matched.

    Parameters
    ----------
    labels, clusters
        True class and cluster of each cell (strings, categoricals or integers).

    Returns
    -------
    dict
        ``{cluster: class}``. With more clusters than classes the extra clusters are absent;
        with fewer, some classes receive no cluster.
    """
    labels, clusters = _check_pair(labels, clusters)
    classes, cluster_ids = np.unique(labels).tolist(), np.unique(clusters).tolist()
    class_idx, cluster_idx = _hungarian(labels, clusters)
    return {cluster_ids[j]: classes[i] for i, j in zip(class_idx, cluster_idx)}


def hungarian_weighted_f1(labels: ArrayLike, clusters: ArrayLike) -> float:
    """Support-weighted F1 over the true classes after Hungarian matching.

    Cells of clusters that received no class are predicted as a label outside the classes, so
    they count as false negatives of their own class; a class that received no cluster has F1 0.

    Parameters
    ----------
    labels, clusters
        True class and cluster of each cell.

    Returns
    -------
    float
        ``sklearn.metrics.f1_score(average="weighted")`` over the classes, in ``[0, 1]``.
    """
    labels, clusters = _check_pair(labels, clusters)
    classes, y_true = np.unique(labels, return_inverse=True)
    cluster_ids, cluster_codes = np.unique(clusters, return_inverse=True)
    class_idx, cluster_idx = _hungarian(y_true, cluster_codes)
    cluster_to_class = np.full(len(cluster_ids), -1)  # -1: unmatched, not a class
    cluster_to_class[cluster_idx] = class_idx
    y_pred = cluster_to_class[cluster_codes]
    return float(f1_score(y_true, y_pred, labels=np.arange(len(classes)), average="weighted", zero_division=0))


def majority_accuracy(labels: ArrayLike, clusters: ArrayLike) -> float:
    """Accuracy after mapping each cluster to its most common true label (many-to-one).

    Parameters
    ----------
    labels, clusters
        True class and cluster of each cell.

    Returns
    -------
    float
        Fraction of cells whose class is their cluster's majority class (cluster purity).
    """
    return _purity(*_check_pair(labels, clusters))


def top_member_accuracy(labels: ArrayLike, clusters: ArrayLike, confidence: ArrayLike) -> float:
    """Accuracy after giving each cluster the label of its most probable member (the VMM paper's).

    Parameters
    ----------
    labels, clusters
        True class and cluster of each cell.
    confidence
        How probable each cell's own cluster is for it, e.g. ``max_k q(c = k | x)`` of a mixture,
        or minus the distance to its cluster's centre for k-means. Ties go to the first cell.

    Returns
    -------
    float
        Fraction of cells whose class is the class of their cluster's most probable member.
        Unlike :func:`majority_accuracy` (purity), one mislabelled confident cell relabels its
        whole cluster.
    """
    labels, clusters = _check_pair(labels, clusters)
    confidence = _as_1d(confidence, "confidence").astype(float)
    if len(confidence) != len(labels):
        raise ValueError(f"confidence has {len(confidence)} entries for {len(labels)} cells")
    frame = pd.DataFrame({"label": labels, "cluster": clusters, "confidence": confidence})
    top = frame.loc[frame.groupby("cluster", sort=False)["confidence"].idxmax()]  # one row per cluster
    assigned = frame["cluster"].map(dict(zip(top["cluster"], top["label"])))
    return float((assigned.to_numpy() == frame["label"].to_numpy()).mean())


def utilized_clusters(clusters: ArrayLike) -> int:
    """Number of distinct cluster ids that are assigned to at least one cell."""
    return int(len(np.unique(_as_1d(clusters, "clusters"))))


def cluster_scores(labels: ArrayLike, clusters: ArrayLike, confidence: ArrayLike | None = None) -> dict:
    """All scores of one clustering against one set of labels.

    Parameters
    ----------
    labels, clusters
        True class and cluster of each cell.
    confidence
        Per-cell probability of its own cluster (see :func:`top_member_accuracy`); without it
        there is no ``accuracy``.

    Returns
    -------
    dict
        ``n_classes``, ``ari``, ``nmi`` (arithmetic normalisation), ``weighted_f1`` (Hungarian),
        ``purity`` (majority label per cluster), ``accuracy`` (the VMM paper's: the label of the
        cluster's most probable member; only with ``confidence``) and ``utilized_clusters``, as
        plain Python numbers.
    """
    labels, clusters = _check_pair(labels, clusters)
    scores = {
        "n_classes": int(len(np.unique(labels))),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "weighted_f1": hungarian_weighted_f1(labels, clusters),
        "purity": majority_accuracy(labels, clusters),
    }
    if confidence is not None:
        scores["accuracy"] = top_member_accuracy(labels, clusters, confidence)
    return {**scores, "utilized_clusters": utilized_clusters(clusters)}


def level_scores(
    obs: pd.DataFrame,
    levels: list[str],
    clusters: ArrayLike | Sequence[ArrayLike],
    confidences: Sequence[ArrayLike] | None = None,
) -> list[dict]:
    """Score clusterings against every level of a label hierarchy.

    Parameters
    ----------
    obs
        Per-cell table holding one label column per level (e.g. ``adata.obs``).
    levels
        Label columns, coarse to fine.
    clusters
        One clustering (scored against every level) or a list with one clustering per level.
    confidences
        Optional, one per level: each cell's probability of its own cluster (for ``accuracy``).

    Returns
    -------
    list of dict
        ``{"level": name, **cluster_scores(...)}`` for each level, in order.
    """
    if not levels:
        raise ValueError("levels is empty")
    missing = [level for level in levels if level not in obs.columns]
    if missing:
        raise KeyError(f"label columns {missing} not in obs; available: {list(obs.columns)}")
    # a list of arrays is one clustering per level; anything else is one clustering for all
    per_level = isinstance(clusters, (list, tuple)) and len(clusters) > 0 and np.ndim(clusters[0]) == 1
    clusterings = list(clusters) if per_level else [clusters] * len(levels)
    if len(clusterings) != len(levels):
        raise ValueError(f"got {len(clusterings)} clusterings for {len(levels)} levels")
    confidences = [None] * len(levels) if confidences is None else list(confidences)
    return [
        {"level": level, **cluster_scores(obs[level].to_numpy(), assignment, confidence)}
        for level, assignment, confidence in zip(levels, clusterings, confidences)
    ]


def _leiden_n_clusters(latent: np.ndarray, n_clusters: int, seed: int, max_iter: int) -> np.ndarray:
    """Leiden on the kNN graph of ``latent``, bisecting the resolution to get ``n_clusters``."""
    adata = ad.AnnData(latent.astype(np.float32))
    sc.pp.neighbors(adata, n_neighbors=min(15, len(latent) - 1), use_rep="X", random_state=seed)
    lo, hi, resolution = 0.0, None, 1.0
    best, best_gap = None, np.inf
    for _ in range(max_iter):
        # igraph backend with scanpy's recommended settings (its future default): fast, seeded
        sc.tl.leiden(
            adata,
            resolution=resolution,
            random_state=seed,
            flavor="igraph",
            n_iterations=2,
            directed=False,
        )
        assignment = adata.obs["leiden"].astype(int).to_numpy()
        found = len(np.unique(assignment))
        if abs(found - n_clusters) < best_gap:
            best, best_gap = assignment, abs(found - n_clusters)
        if found == n_clusters:
            return assignment
        if found < n_clusters:
            lo = resolution
        else:
            hi = resolution
        # more clusters at higher resolution: double until past the target, then bisect
        resolution = 2 * resolution if hi is None else (lo + hi) / 2
    warnings.warn(
        f"Leiden resolution search did not reach {n_clusters} clusters in {max_iter} steps; "
        f"returning the closest clustering ({len(np.unique(best))} clusters)",
        stacklevel=3,
    )
    return best


def cluster_latent(latent: ArrayLike, n_clusters: int, method: str = "kmeans", seed: int = 0) -> np.ndarray:
    """Baseline clustering of a latent space into ``n_clusters`` clusters.

    Parameters
    ----------
    latent
        Cell embeddings, shape ``[cells, dims]``.
    n_clusters
        Number of clusters wanted (the number of classes at the scored level).
    method
        ``"kmeans"`` (scikit-learn, 10 restarts) or ``"leiden"`` (scanpy kNN graph on the latent,
        resolution found by bisection; warns and returns the closest count if it cannot be hit
        within 30 steps).
    seed
        Random seed of k-means / the neighbour graph and Leiden.

    Returns
    -------
    numpy.ndarray
        Integer cluster id of each cell, shape ``[cells]``.
    """
    latent = np.asarray(latent, dtype=float)
    if latent.ndim != 2 or latent.shape[0] == 0:
        raise ValueError(f"latent must be a non-empty [cells, dims] array, got {latent.shape}")
    if not np.isfinite(latent).all():
        raise ValueError("latent contains NaN or infinite values")
    if not 1 <= n_clusters <= latent.shape[0]:
        raise ValueError(f"n_clusters must be in [1, {latent.shape[0]}], got {n_clusters}")
    if method == "kmeans":
        return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(latent)
    if method == "leiden":
        return _leiden_n_clusters(latent, n_clusters, seed, max_iter=30)
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(CLUSTER_METHODS)}")


def nesting_score(coarse: ArrayLike, fine: ArrayLike) -> float:
    """How far each fine cluster lies inside a single coarse cluster.

    Parameters
    ----------
    coarse, fine
        Coarse and fine assignment of each cell (labels or clusters).

    Returns
    -------
    float
        Cell-weighted mean over fine clusters of the largest fraction of their cells that falls
        in one coarse cluster; 1 when the fine partition refines the coarse one.
    """
    return _purity(*_check_pair(coarse, fine, names=("coarse", "fine")))
