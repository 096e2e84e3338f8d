"""Hierarchical negative-binomial counts with a known tree of cell types.

The generative story, for a tree with branching factors :math:`b_1, \\dots, b_L`:

.. math::

    \\rho_{\\text{root}} &\\sim \\mathcal N(0, 1)^{G}
        && \\text{baseline log-expression} \\\\
    \\rho_{v} &= \\rho_{\\text{parent}(v)} + m_v \\odot \\delta_v,\\quad
        \\delta_v \\sim \\mathcal N(0, (a\\,\\gamma^{d(v)})^2)^G
        && \\text{offsets on a random gene subset } m_v \\\\
    l_n &\\sim \\operatorname{LogNormal}(\\log \\ell_{\\text{median}}, \\sigma_l^2)
        && \\text{library size} \\\\
    x_{ng} &\\sim \\operatorname{NB}\\big(l_n \\operatorname{softmax}(\\rho_{y_n} + \\beta_{s_n})_g,
        \\ \\theta_g\\big)
        && \\text{counts, mean and inverse dispersion}

where :math:`y_n` is the leaf of cell :math:`n`, :math:`d(v)` the depth of node :math:`v`
(0 for the first level) and :math:`\\beta_s \\sim \\mathcal N(0, \\text{batch\\_effect}^2)^G`
an optional batch shift.
"""

from __future__ import annotations

import string

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def simulate_hierarchy(
    *,
    branching: tuple[int, ...] = (2, 2, 2, 2),
    cells_per_leaf: int = 40,
    n_genes: int = 200,
    n_batches: int = 1,
    batch_effect: float = 0.5,
    seed: int = 0,
    effect_size: float = 2.0,
    effect_decay: float = 0.7,
    de_fraction: float = 0.1,
    library_median: float = 2000.0,
    library_sd: float = 0.3,
    dispersion_median: float = 5.0,
) -> ad.AnnData:
    """Simulate counts from a tree of cell types (see the module docstring for the maths).

    Parameters
    ----------
    branching
        Children per node at each level; ``(2, 2, 2, 2)`` gives 2/4/8/16 nodes (at most 26).
    cells_per_leaf
        Cells drawn from every leaf.
    n_genes
        Number of genes.
    n_batches, batch_effect
        Batches assigned at random, each shifting log-expression by gene-wise
        :math:`\\mathcal N(0, \\text{batch\\_effect}^2)` offsets (only when ``n_batches > 1``).
    seed
        Seed of the :class:`numpy.random.Generator`; equal seeds give equal data.
    effect_size, effect_decay
        The offsets of level ``d`` (0-based) have scale ``effect_size * effect_decay**d``.
    de_fraction
        Fraction of genes each node changes relative to its parent.
    library_median, library_sd
        Median and log-scale spread of the library sizes.
    dispersion_median
        Median of the per-gene NB inverse dispersion :math:`\\theta_g` (log-normal).

    Returns
    -------
    anndata.AnnData
        CSR float32 counts; ``obs['L1'..]`` labels such as ``"a"``, ``"a.b"``, ``"a.b.a"``;
        ``obs['library']`` the true library size; ``var['dispersion']`` the true
        :math:`\\theta_g` (variance :math:`\\mu + \\mu^2/\\theta_g`); ``obs['batch']`` when
        ``n_batches > 1``; and ``uns['hiermix']``.
    """
    if not all(1 <= b <= len(string.ascii_lowercase) for b in branching):
        raise ValueError(f"branching factors must lie in 1..26, got {branching}")
    rng = np.random.default_rng(seed)
    branching = tuple(branching)
    n_leaves = int(np.prod(branching))
    n_cells = n_leaves * cells_per_leaf
    n_de = max(1, round(de_fraction * n_genes))

    profile = _leaf_profiles(rng, branching, n_genes, n_de, effect_size, effect_decay)  # [leaves, G]

    leaf = np.repeat(np.arange(n_leaves), cells_per_leaf)  # [N]
    log_rate = profile[leaf]  # [N, G]
    obs = pd.DataFrame(index=[f"cell{n}" for n in range(n_cells)])
    digits = np.unravel_index(leaf, branching)
    for depth in range(len(branching)):
        paths = zip(*digits[: depth + 1])  # the child indices from the root down
        names = [".".join(string.ascii_lowercase[d] for d in path) for path in paths]
        obs[f"L{depth + 1}"] = pd.Categorical(names)
    if n_batches > 1:
        batch = rng.integers(n_batches, size=n_cells)  # [N]
        log_rate = log_rate + rng.normal(0.0, batch_effect, (n_batches, n_genes))[batch]
        obs["batch"] = pd.Categorical([f"batch{s}" for s in batch])

    library = np.exp(rng.normal(np.log(library_median), library_sd, n_cells))  # [N]
    theta = np.exp(rng.normal(np.log(dispersion_median), 0.5, n_genes))  # [G]
    rate = np.exp(log_rate - log_rate.max(axis=1, keepdims=True))
    mu = library[:, None] * rate / rate.sum(axis=1, keepdims=True)  # [N, G]
    counts = rng.negative_binomial(theta, theta / (theta + mu))  # NB(mean mu, inverse disp theta)

    obs["library"] = library
    var = pd.DataFrame({"dispersion": theta}, index=[f"gene{g}" for g in range(n_genes)])
    adata = ad.AnnData(sp.csr_matrix(counts, dtype=np.float32), obs=obs, var=var)
    adata.uns["hiermix"] = {
        "dataset": "simulated",
        "levels": [f"L{d + 1}" for d in range(len(branching))],
        "labels_key": f"L{len(branching)}",
        "batch_key": "batch" if n_batches > 1 else None,
    }
    return adata


def _leaf_profiles(rng, branching, n_genes: int, n_de: int, effect_size: float, effect_decay: float) -> np.ndarray:
    """Log-expression of every leaf ``[leaves, G]``: the root's, plus nested offsets down the tree."""
    profile = rng.normal(0.0, 1.0, (1, n_genes))  # [1, G] root
    for depth, b in enumerate(branching):
        profile = np.repeat(profile, b, axis=0)  # [nodes, G], children of a parent adjacent
        mask = rng.random(profile.shape).argsort(axis=1) < n_de  # n_de genes per node
        scale = effect_size * effect_decay**depth
        profile += mask * rng.normal(0.0, scale, profile.shape)
    return profile


def simulate_large(
    n_cells: int,
    *,
    branching: tuple[int, ...] = (2, 2, 2, 2),
    n_genes: int = 2000,
    seed: int = 0,
    effect_size: float = 2.0,
    effect_decay: float = 0.7,
    de_fraction: float = 0.1,
    library_median: float = 350.0,
    library_sd: float = 0.3,
    dispersion_median: float = 5.0,
    chunk_cells: int = 20_000,
) -> ad.AnnData:
    """The model of :func:`simulate_hierarchy` for many cells, drawn ``chunk_cells`` at a time.

    :func:`simulate_hierarchy` holds dense ``[N, G]`` float64 arrays (16 GB at 1M cells x 2,000
    genes); here only one chunk is dense, so the memory is about that of the CSR result. Cells
    are sorted by leaf (as in many atlases: a file in cell-type order), ``n_cells`` split as
    evenly as possible over the leaves; no batches. The default library size (median 350 counts
    over 2,000 genes) gives about 10% non-zero counts. The draws differ from
    :func:`simulate_hierarchy`'s for the same seed (another order); equal seeds give equal data.

    Returns
    -------
    anndata.AnnData
        As :func:`simulate_hierarchy`: CSR float32 counts, ``obs['L1'..]``, ``obs['library']``,
        ``var['dispersion']``, ``uns['hiermix']``.
    """
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    branching = tuple(branching)
    n_leaves = int(np.prod(branching))
    profile = _leaf_profiles(rng, branching, n_genes, max(1, round(de_fraction * n_genes)), effect_size, effect_decay)
    rate = np.exp(profile - profile.max(axis=1, keepdims=True))
    rho = rate / rate.sum(axis=1, keepdims=True)  # [leaves, G] expression fractions
    theta = np.exp(rng.normal(np.log(dispersion_median), 0.5, n_genes))  # [G]
    leaf = (np.arange(n_cells) * n_leaves) // n_cells  # [N], sorted
    library = np.exp(rng.normal(np.log(library_median), library_sd, n_cells))  # [N]
    chunks = []
    for start in range(0, n_cells, chunk_cells):
        cells = slice(start, min(start + chunk_cells, n_cells))
        mu = library[cells, None] * rho[leaf[cells]]  # [chunk, G]
        chunks.append(sp.csr_matrix(rng.negative_binomial(theta, theta / (theta + mu)), dtype=np.float32))
        del mu
    counts = sp.vstack(chunks, format="csr")
    del chunks
    obs = pd.DataFrame(index=pd.Index([f"cell{n}" for n in range(n_cells)]))
    digits = np.unravel_index(np.arange(n_leaves), branching)  # per leaf, its child index per level
    for depth in range(len(branching)):
        nodes = np.ravel_multi_index(digits[: depth + 1], branching[: depth + 1])  # [leaves] node id
        names = [
            ".".join(string.ascii_lowercase[d] for d in np.unravel_index(i, branching[: depth + 1]))
            for i in range(int(np.prod(branching[: depth + 1])))
        ]
        obs[f"L{depth + 1}"] = pd.Categorical.from_codes(nodes[leaf], categories=names)
    obs["library"] = library
    var = pd.DataFrame({"dispersion": theta}, index=[f"gene{g}" for g in range(n_genes)])
    adata = ad.AnnData(counts, obs=obs, var=var)
    adata.uns["hiermix"] = {
        "dataset": "simulated",
        "levels": [f"L{d + 1}" for d in range(len(branching))],
        "labels_key": f"L{len(branching)}",
        "batch_key": None,
    }
    return adata
