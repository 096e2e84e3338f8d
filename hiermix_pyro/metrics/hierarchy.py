"""Scores of a whole clustering hierarchy against a label hierarchy, one number per run.

The per-level scores (:mod:`~hiermix_pyro.metrics.clustering`) judge each level on its own. The
two scores here judge the hierarchy at once, so that flat and hierarchical methods meet on one
scale:

- **Hierarchical precision, recall and F1** (Kiritchenko, Matwin, Nock & Famili 2006, "Learning
  and evaluation in the presence of class hierarchies", Canadian AI). Each cell has a true set
  of labels, its path ``{(1, L1), ..., (L, LL)}`` through the label levels (the root left out;
  a label is named by its level, so equal names at two levels stay apart). Its predicted set is
  built from its clusters: at every level l the cell's cluster is matched one-to-one to a class
  (Hungarian matching, as for the weighted F1; a cluster left without a class predicts nothing
  at that level), and every predicted label brings its ancestors in the label tree. With T_i and
  P_i these sets, summed over cells::

      hP = sum_i |P_i & T_i| / sum_i |P_i|     hR = sum_i |P_i & T_i| / sum_i |T_i|
      hF = 2 hP hR / (hP + hR)

  A wrong fine prediction under the right coarse class keeps the credit of its shared
  ancestors; a flat method scored with one clustering at every level gets its coarse labels
  from the ancestors of its fine matches.
- **Dendrogram purity** (Heller & Ghahramani 2005, "Bayesian hierarchical clustering", ICML),
  against the finest labels. For every pair of cells with the same label c, take the smallest
  subtree holding both (their lowest common ancestor; the leaf itself when they share one) and
  the fraction of its cells labelled c; dendrogram purity is the mean over all such pairs. It is
  1 exactly when every label's cells fill one subtree without other cells. The trees here have
  clusters at their leaves (cells in the same leaf meet there), as in the clusterings of Kobren
  et al. 2017 (PERCH). Which tree:

  - a model with several cluster levels (``momix``, ``indmom``): its own levels,
    :func:`cluster_tree`: leaves are its finest clusters, each cluster hangs under the
    cluster one level up that holds most of its cells;
  - a flat method: :func:`ward_tree`, Ward's agglomerative tree over the centroids of its finest
    clusters in its embedding (latent space or PCA).

  Both trees have the finest clusters as leaves, so flat and hierarchical methods are compared
  with the same leaves and differ in the tree above them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from .clustering import _as_1d, hungarian_match


def _pairs(n: np.ndarray) -> np.ndarray:
    """n choose 2, elementwise."""
    return n * (n - 1) / 2


def dendrogram_purity(labels: ArrayLike, leaf: ArrayLike, parent: ArrayLike) -> float:
    """Dendrogram purity of a tree over the cells (Heller & Ghahramani 2005).

    Parameters
    ----------
    labels
        True (finest) label of each cell, ``[N]``.
    leaf
        The tree node each cell sits in, ``[N]`` (integers in ``range(len(parent))``).
    parent
        Parent of each node, ``[M]``; -1 for the root (one root, or several: cells under
        different roots meet in a virtual root above them all).

    Returns
    -------
    float
        Mean over pairs of cells with the same label c of the fraction of label-c cells in
        their lowest common subtree; NaN when no label has two cells.
    """
    labels = _as_1d(labels, "labels")
    leaf = _as_1d(leaf, "leaf").astype(int)
    parent = np.asarray(parent, dtype=int)
    if len(leaf) != len(labels):
        raise ValueError(f"leaf has {len(leaf)} entries for {len(labels)} cells")
    if leaf.min() < 0 or leaf.max() >= len(parent):
        raise ValueError("leaf must index the nodes of parent")
    classes, y = np.unique(labels, return_inverse=True)
    M, C = len(parent), len(classes)
    # the root(s) get one virtual root above them: node M
    parent = np.where(parent < 0, M, parent)
    parent = np.append(parent, -1)
    depth = np.zeros(M + 1, dtype=int)
    for v in range(M):  # depth by walking up (trees here are small: clusters, not cells)
        u, d = v, 0
        while parent[u] >= 0:
            u, d = parent[u], d + 1
            if d > M:
                raise ValueError("parent does not describe a tree (it has a cycle)")
        depth[v] = d
    counts = np.zeros((M + 1, C))  # label counts of the cells below each node  # [M+1, C]
    np.add.at(counts, (leaf, y), 1)
    child_pairs = np.zeros((M + 1, C))  # same-label pairs that meet below a child of the node
    for v in np.argsort(-depth[:M], kind="stable"):  # children before parents
        counts[parent[v]] += counts[v]
        child_pairs[parent[v]] += _pairs(counts[v])
    met_here = _pairs(counts) - child_pairs  # same-label pairs whose lowest common subtree is the node
    size = counts.sum(1, keepdims=True)
    purity = np.divide(counts, size, out=np.zeros_like(counts), where=size > 0)
    total = _pairs(counts[M]).sum()
    return float((met_here * purity).sum() / total) if total else float("nan")


def cluster_tree(clusterings: Sequence[ArrayLike]) -> tuple[np.ndarray, np.ndarray]:
    """The tree a model's cluster levels define: ``(leaf of each cell, parent of each node)``.

    Parameters
    ----------
    clusterings
        The model's clusters of each cell, one array per model level, coarse to fine.

    Returns
    -------
    leaf, parent
        Nodes are the clusters of every level (level by level, ids in sorted order); a cell sits
        in its finest cluster; a level-l cluster's parent is the level-(l-1) cluster holding
        most of its cells (ties: the first in sorted order); first-level clusters are roots.
        A cell whose coarse cluster is not its fine cluster's parent is placed by its fine one.
    """
    levels = [_as_1d(c, "clusters") for c in clusterings]
    if not levels:
        raise ValueError("clusterings is empty")
    codes, offsets, n = [], [], 0
    for c in levels:
        ids, code = np.unique(c, return_inverse=True)
        codes.append(code)
        offsets.append(n)
        n += len(ids)
    parent = np.full(n, -1)
    for l in range(1, len(levels)):
        table = pd.crosstab(codes[l], codes[l - 1])  # [fine clusters, coarse clusters]
        majority = table.to_numpy().argmax(1)  # first maximum: the smallest coarse id
        parent[offsets[l] + table.index.to_numpy()] = offsets[l - 1] + table.columns.to_numpy()[majority]
    return offsets[-1] + codes[-1], parent


def ward_tree(embedding: ArrayLike, clusters: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Ward's agglomerative tree over the centroids of ``clusters`` in ``embedding``.

    Parameters
    ----------
    embedding
        ``[N, D]`` cell embedding (a latent space, a PCA).
    clusters
        Each cell's (finest) cluster, ``[N]``: the leaves.

    Returns
    -------
    leaf, parent
        As :func:`cluster_tree`: leaves ``0..K-1`` (clusters in sorted order), then the K-1
        merges of :func:`scipy.cluster.hierarchy.linkage` (``method="ward"``); the last is the root.
    """
    from scipy.cluster.hierarchy import linkage

    embedding = np.asarray(embedding, dtype=float)
    ids, code = np.unique(_as_1d(clusters, "clusters"), return_inverse=True)
    if embedding.shape[0] != len(code):
        raise ValueError(f"embedding has {embedding.shape[0]} rows for {len(code)} cells")
    K = len(ids)
    if K == 1:
        return code, np.array([-1])
    centroids = pd.DataFrame(embedding).groupby(code).mean().to_numpy()  # [K, D]
    merges = linkage(centroids, method="ward")  # [K-1, 4]: the two merged nodes, distance, size
    parent = np.full(2 * K - 1, -1)
    for m, (a, b) in enumerate(merges[:, :2].astype(int)):
        parent[[a, b]] = K + m
    return code, parent


def hierarchical_f1(levels: Sequence[ArrayLike], clusters: Sequence[ArrayLike]) -> dict:
    """Hierarchical precision, recall and F1 (Kiritchenko et al. 2006) of per-level clusterings.

    Parameters
    ----------
    levels
        True labels of each cell, one array per label level, coarse to fine (the cell's path).
    clusters
        The clustering scored at each label level (as in :func:`~hiermix_pyro.metrics.level_scores`).

    Returns
    -------
    dict
        ``h_precision``, ``h_recall``, ``h_f1`` (definitions in the module docstring).
    """
    levels = [_as_1d(v, "labels").astype(str) for v in levels]
    clusters = [_as_1d(c, "clusters") for c in clusters]
    if not levels or len(levels) != len(clusters):
        raise ValueError(f"got {len(clusters)} clusterings for {len(levels)} label levels")
    if any(len(v) != len(levels[0]) for v in [*levels, *clusters]):
        raise ValueError("every level and clustering needs one entry per cell")
    L = len(levels)
    # the label tree: the parents of each (level, label), from the cells (several if not strict)
    parents: dict[tuple[int, str], set] = {}
    for l in range(1, L):
        for fine, coarse in set(zip(levels[l], levels[l - 1])):
            parents.setdefault((l, fine), set()).add((l - 1, coarse))

    def with_ancestors(node) -> frozenset:
        out, todo = set(), [node]
        while todo:
            n = todo.pop()
            if n not in out:
                out.add(n)
                todo.extend(parents.get(n, ()))
        return frozenset(out)

    predicted = []  # per level: the matched class of each cell's cluster, or None
    for l in range(L):
        match = hungarian_match(levels[l], clusters[l])
        predicted.append([match.get(c) for c in clusters[l].tolist()])
    # cells sharing their true path and predicted labels share their sets: count each kind once
    frame = pd.DataFrame({**{f"t{l}": levels[l] for l in range(L)}, **{f"p{l}": predicted[l] for l in range(L)}})
    kinds = frame.fillna("\0none").value_counts(sort=False)
    hit = n_pred = n_true = 0.0
    for key, count in kinds.items():
        true = frozenset((l, key[l]) for l in range(L))
        pred = frozenset().union(*(with_ancestors((l, p)) for l, p in enumerate(key[L:]) if p != "\0none"))
        hit += count * len(true & pred)
        n_pred += count * len(pred)
        n_true += count * len(true)
    hp = hit / n_pred if n_pred else 0.0
    hr = hit / n_true
    return dict(h_precision=hp, h_recall=hr, h_f1=2 * hp * hr / (hp + hr) if hp + hr else 0.0)


def hierarchy_scores(
    obs: pd.DataFrame,
    levels: Sequence[str],
    clusters: Sequence[ArrayLike],
    model_levels: Sequence[ArrayLike] | None = None,
    embedding: ArrayLike | None = None,
) -> dict:
    """Both hierarchy scores of one run, for ``metrics.json``.

    Parameters
    ----------
    obs
        Per-cell table with the label columns ``levels`` (coarse to fine).
    clusters
        The clustering scored at each label level (``obs['cluster_<level>']``).
    model_levels
        The model's own clusters per model level, coarse to fine; with two or more, the
        dendrogram is the model's tree (:func:`cluster_tree`).
    embedding
        ``[N, D]`` cells' embedding, for the Ward tree of a flat method (:func:`ward_tree` over the
        clusters scored at the finest level).

    Returns
    -------
    dict
        ``h_precision``, ``h_recall``, ``h_f1``, ``dendrogram_purity`` and ``tree`` (``"model"``,
        ``"ward"``; without either input, no dendrogram purity).
    """
    truth = [obs[level].to_numpy() for level in levels]
    out = hierarchical_f1(truth, clusters)
    if model_levels is not None and len(model_levels) >= 2:
        leaf, parent = cluster_tree(model_levels)
        tree = "model"
    elif embedding is not None:
        leaf, parent = ward_tree(embedding, clusters[-1])
        tree = "ward"
    else:
        return {**out, "dendrogram_purity": float("nan"), "tree": None}
    return {**out, "dendrogram_purity": dendrogram_purity(truth[-1], leaf, parent), "tree": tree}


def adata_hierarchy_scores(adata) -> dict:
    """:func:`hierarchy_scores` of an annotated run (``workflow.annotate``): the clusters in
    ``obs['cluster_<level>']`` at the levels ``uns['hiermix']['levels']``. The dendrogram is the
    model's own tree when it has two or more cluster levels (argmax of ``obsm['q_y<l>']``), else
    Ward's tree over the centroids of its finest clusters in ``obsm['X_latent']``."""
    levels = list(adata.uns["hiermix"]["levels"])
    model_levels = []
    while f"q_y{len(model_levels) + 1}" in adata.obsm:
        model_levels.append(np.asarray(adata.obsm[f"q_y{len(model_levels) + 1}"]).argmax(1))
    clusters = [adata.obs[f"cluster_{lvl}"].to_numpy() for lvl in levels]
    return hierarchy_scores(adata.obs, levels, clusters, model_levels, np.asarray(adata.obsm["X_latent"]))
