"""Initialising the components of the hierarchical mixtures (``momix``, ``indmom``).

Two strategies, chosen by ``ModelConfig.init``:

- ``"pca_kmeans"`` (the reference's): log-normalise the counts, PCA to the latent dimension, and
  k-means with K_l clusters at every level independently. The centres live in PCA space, not in
  the (random) encoder's latent space, and the levels need not nest.
- ``"vae_kmeans"`` (respects the hierarchy): train a plain VAE with the same encoder and decoder
  for a few epochs, copy its weights into the model, and cluster its latent means by *nested*
  k-means: k-means with K_L clusters at the finest level, then each coarser level clusters the
  finer centres (weighted by their sizes), so every fine cluster lies inside one coarse cluster.
- ``"vae_ward"``: the same pre-training and finest k-means, then the coarser levels from Ward's
  agglomeration of the fine clusters (each merge the pair that least increases the within-cluster
  sum of squares of the cells, n_a n_b / (n_a + n_b) ||c_a - c_b||^2), cut at K_(L-1), ..., K_1
  clusters: the levels nest, and merges respect the clusters' sizes and merge costs.

- ``"vae_leiden"``: the same pre-training, then Leiden on the k-nearest-neighbour graph of the
  latent means at every level, its resolution searched until it gives K_l clusters (the peers'
  "Leiden (oracle k)", told the same K_l the model is given). The levels are clustered each on
  their own and need not nest; a cell's path is its clusters at all levels, and the paths the
  cells use set the components. Above ``LEIDEN_MAX_CELLS`` training cells, Leiden runs on a
  seeded sample of that many and the other cells join the nearest cluster centre. A graph
  follows the data's manifold where k-means cuts it into balls: on the sorted PBMCs the coarse
  levels come out far cleaner (the results page's ``hierarchy`` study).

- ``"vae_leiden_ward"``: the same pre-training and Leiden at the finest level only, then the
  coarser levels by Ward's agglomeration of its clusters (as ``vae_ward`` does with k-means'):
  the levels nest, and the coarse clusters are the cheapest merges of the fine ones instead of
  Leiden's own coarse cuts, which need not respect them.

- ``"vae_leiden_single"``: the same pre-training and Leiden at the finest level only, then the
  coarser levels by single linkage of the fine clusters' centres (each merge joins the two groups
  with the closest pair of centres), cut at K_(L-1), ..., K_1 groups: the levels nest, and the
  coarsest split is at the widest gap between the fine clusters, whatever their sizes (Ward's
  rule, weighted by sizes, tends to balance them). Added after an analysis that used the labels
  (``benchmarks/coarse_splits.py``), so it is an option, never a default chosen by this study.

- ``"vae_divisive"``: the same pre-training and Leiden at the finest level; the coarser levels top
  down from one group, on the PCA of the training cells' log-normalised counts (``latent_dim``
  components): each split divides in two the group whose two-component diagonal Gaussian mixture
  gains the most log-likelihood over one diagonal Gaussian, until the level has K_l groups (the
  coarser levels nest; the finest need not). A mixture's own criterion, where Ward's and k-means'
  is the sum of squares: on the sorted PBMCs it isolates the stem cells at the first level and
  splits the T cells, not the stem cells, into a fifth group (``benchmarks/level_splits.py``,
  the results page). Added after that analysis, which used the labels: an option, not a default
  chosen by the hierarchy study. Above ``LEIDEN_MAX_CELLS`` training cells the splits run on a
  seeded sample and the other cells join the nearest group centre in the VAE's latent.

- ``"vae_divisive_top"``: ``vae_divisive``'s first split only (the first level), every other
  level by Leiden on the VAE's latent as ``vae_leiden``: on the sorted PBMCs the likelihood's
  top split isolates the stem cells in every embedding tried, while below it Leiden's levels,
  found in the latent itself, survive training better than splits found in the PCA. Also an
  option, for the same reason.

``ModelConfig.init_restarts`` = R > 1 initialises R times (seeds ``seed``, ``seed + 1000``, ...)
and keeps the initialisation with the best ELBO on the validation cells: chosen without labels.

Either way the per-level clusterings of the training cells set the components: path means and
offsets from cluster means, scales from within-cluster spreads, and the prior's (conditional)
weights from cluster counts (plus a pseudo-count of 0.01, so empty paths start almost unused).
With a ``vae_*`` start, a guide that has its own cluster posterior q(y | x) (momix's
``structured`` and ``structured_y``) starts from the same clusterings too: its heads are fitted to
the training cells' paths on the pre-trained encoder's features (:func:`fit_cluster_heads`).
Without that, q(y | x) starts at random while the components sit at the clusters, and with
``structured_y`` training fell onto a single branch (2 seeds of the hierarchy study, before the fit).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

INITS = (
    "random",
    "pca_kmeans",
    "vae_kmeans",
    "vae_ward",
    "vae_leiden",
    "vae_leiden_ward",
    "vae_leiden_single",
    "vae_divisive",
    "vae_divisive_top",
)
LEIDEN_MAX_CELLS = 50_000  # vae_leiden: Leiden on at most this many training cells (a kNN graph of 1M cells takes long)


def initialise(model, adata, method: str = "random", seed: int = 0):
    """Set ``model``'s components from ``adata``'s training cells by ``method``; returns the model.

    ``seed`` (the run's seed) drives PCA, k-means and the VAE pre-training, so different seeds
    start from different clusterings and a benchmark's spread includes the initialisation's.
    """
    if method not in INITS:
        raise ValueError(f"unknown init {method!r}; valid: {', '.join(INITS)}")
    if not method.startswith("vae_") and model.config.init_epochs != type(model).config_defaults.get("init_epochs"):
        raise ValueError(
            f"init_epochs={model.config.init_epochs} is for the vae_* inits ({', '.join(i for i in INITS if i.startswith('vae_'))}), "
            f"not init={method!r}"
        )
    restarts = int(getattr(model.config, "init_restarts", 1))
    if restarts < 1:
        raise ValueError(f"init_restarts must be at least 1, got {restarts}")
    if restarts > 1:
        return _best_of_restarts(model, adata, method, seed, restarts)
    if method == "random":
        return model
    train = adata[adata.obs["split"] == "train"] if "split" in adata.obs else adata
    K = model.level_sizes
    if method == "pca_kmeans":
        emb = pca_embedding(train, model.config.latent_dim, seed)
        labels = [KMeans(k, n_init=10, random_state=seed).fit_predict(emb) for k in K]
    else:
        emb, q_var = vae_pretrain(model, adata, seed)
        emb = emb[(adata.obs["split"] == "train").to_numpy() if "split" in adata.obs else slice(None)]
        if method == "vae_leiden":
            labels = leiden_levels(emb, K, seed)
        elif method == "vae_leiden_single":
            labels = nested_single(emb, K, seed)
        elif method == "vae_leiden_ward":
            labels = nested_leiden_ward(emb, K, seed)
        elif method in ("vae_divisive", "vae_divisive_top"):
            top = 1 if method == "vae_divisive_top" else None
            labels = divisive_levels(train, emb, K, model.config.latent_dim, seed, n_divisive=top)
        else:
            labels = nested_ward(emb, K, seed) if method == "vae_ward" else nested_kmeans(emb, K, seed)
    set_components(model, emb, labels, None if method == "pca_kmeans" else q_var)
    if method.startswith("vae_") and hasattr(model, "q_y_heads"):
        fit_cluster_heads(model, adata, labels, seed=seed)
    return model


def fit_cluster_heads(model, adata, labels: list[np.ndarray], steps: int = 300, batch_size: int = 4096, seed: int = 0):
    """Fit the guide's q(y | x) heads (``q_y_heads``, ``q_y_prefix``) to the training cells' paths
    ``labels`` (coarse to fine, ``[N_train]`` each) by cross-entropy, with the encoder's trunk fixed:
    ``steps`` Adam steps (lr 0.01) on minibatches of at most ``batch_size`` cells. Returns the
    share of training cells whose most likely path under q(y | x) is their own."""
    from .train import CountTensors

    data = CountTensors.from_adata(adata, split="train" if "split" in adata.obs else None)
    with torch.no_grad():
        h = torch.cat([model.encoder.hidden(x, s) for x, s in data.batches(1024)])  # [N, H]
    path = model.path_index(
        [torch.as_tensor(np.asarray(lab, dtype=np.int64), device=h.device) for lab in labels]
    )  # [N]
    params = [*model.q_y_heads.parameters(), *model.q_y_prefix]
    optim = torch.optim.Adam(params, lr=0.01)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(h), generator=generator)[:batch_size].to(h.device)
        log_q = model.log_q_paths(h[idx]).reshape(len(idx), -1)  # [b, P]
        loss = -log_q.gather(1, path[idx, None]).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    with torch.no_grad():
        hits = sum(
            (model.log_q_paths(h[i : i + 1024]).reshape(-1, model.n_paths).argmax(1) == path[i : i + 1024]).sum()
            for i in range(0, len(h), 1024)
        )
    return float(hits) / len(h)


RESTART_SEED_STRIDE = 1000  # restart r of seed s uses seed s + 1000 r: no overlap with other runs' seeds


def _best_of_restarts(model, adata, method: str, seed: int, restarts: int):
    """Initialise ``restarts`` copies (seeds seed + 1000 r) and load the one whose mean ELBO per
    validation cell (10 particles) is highest into ``model``; the scores are kept in
    ``model.init_scores`` ``[(seed, elbo), ...]``."""
    import copy

    import pyro

    from .metrics.likelihood import elbo
    from .train import CountTensors, seed_everything

    if "split" not in adata.obs or not (adata.obs["split"] == "validation").any():
        raise ValueError("init_restarts > 1 chooses by the validation ELBO: the data need validation cells")
    one = replace(model.config, init_restarts=1)
    val = CountTensors.from_adata(adata, split="validation")
    best, scores = None, []
    for r in range(restarts):
        candidate = copy.deepcopy(model)
        candidate.config = one
        run_seed = seed + RESTART_SEED_STRIDE * r
        seed_everything(run_seed)
        initialise(candidate, adata, method, seed=run_seed)
        with pyro.get_param_store().scope():
            seed_everything(run_seed)
            score = elbo(candidate, val)
        scores.append((run_seed, float(score)))
        if best is None or score > best[1]:
            best = (candidate, score)
    model.load_state_dict(best[0].state_dict())
    model.init_scores = scores
    return model


def pca_embedding(adata, n_components: int, seed: int = 0) -> np.ndarray:
    """log1p of counts normalised to 10^4 per cell, then PCA: ``[N, n_components]``."""
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    X = np.log1p(1e4 * X / np.maximum(X.sum(1, keepdims=True), 1.0))
    return PCA(n_components, random_state=seed).fit_transform(X).astype(np.float32)


def extend_to_all(emb: np.ndarray, sample: np.ndarray, found: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Labels ``[N]`` of all rows of ``emb``: ``found`` for the rows ``sample``, the nearest of
    ``centres`` ``[m, D]`` for the others (in chunks of 65,536 rows, no ``[N, m, D]`` temporary)."""
    labels = np.empty(len(emb), dtype=np.int64)
    for start in range(0, len(emb), 65_536):
        chunk = emb[start : start + 65_536]
        labels[start : start + len(chunk)] = ((chunk[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    labels[sample] = found
    return labels


def leiden_levels(emb: np.ndarray, level_sizes, seed: int = 0, max_cells: int = LEIDEN_MAX_CELLS) -> list[np.ndarray]:
    """Per-level labels ``[N]`` (coarse to fine): Leiden with its resolution searched for K_l
    clusters at each level, on the kNN graph of ``emb`` (or of a seeded sample of ``max_cells``
    cells, the others joining the nearest cluster centre). Where the search ends off K_l, extra
    clusters are merged by Ward's rule (:func:`ward_groups`); fewer leave paths empty."""
    from .metrics.clustering import cluster_latent

    emb = np.asarray(emb, dtype=np.float32)
    sample = np.arange(len(emb))
    if len(emb) > max_cells:
        sample = np.sort(np.random.default_rng(seed).choice(len(emb), size=max_cells, replace=False))
    sub = emb[sample]  # the cells Leiden sees, copied once

    def centres_of(groups):  # [m, D]: the mean of each group 0..m-1
        return np.stack([sub[groups == j].mean(0) for j in range(groups.max() + 1)])

    out = []
    for k in level_sizes:
        found = np.unique(cluster_latent(sub, int(k), method="leiden", seed=seed), return_inverse=True)[1]  # 0..m-1
        centres = centres_of(found)
        if len(centres) > k:  # merge the extra clusters the cheapest way
            found = ward_groups(centres, np.bincount(found), [int(k)])[int(k)][found]
            centres = centres_of(found)
        if len(sample) < len(emb):  # the cells outside the sample: the nearest centre
            found = extend_to_all(emb, sample, found, centres)
        out.append(found.astype(np.int64))
    return out


def gaussian_loglik(x: np.ndarray) -> float:
    """Log-likelihood of the rows of ``x`` ``[n, D]`` under the diagonal Gaussian fitted to them
    (maximum likelihood, with sklearn's ``reg_covar`` 1e-6 added to the variances)."""
    var = x.var(0) + 1e-6
    return float(-0.5 * len(x) * (np.log(2 * np.pi * var).sum() + x.shape[1]))


def gaussian_split(x: np.ndarray, seed: int = 0, k: int = 2) -> tuple[np.ndarray, float]:
    """``x`` ``[n, D]`` split by a ``k``-component diagonal Gaussian mixture (10 starts): the labels
    ``[n]`` and the log-likelihood it gains over one diagonal Gaussian (nats); -inf for too few rows."""
    from sklearn.mixture import GaussianMixture

    if len(x) < 2 * k:
        return np.zeros(len(x), dtype=np.int64), -np.inf
    mixture = GaussianMixture(k, covariance_type="diag", n_init=10, random_state=seed).fit(x)
    return mixture.predict(x).astype(np.int64), len(x) * float(mixture.score(x)) - gaussian_loglik(x)


def divisive_splits(x: np.ndarray, sizes, seed: int = 0, split=gaussian_split, start=None) -> list[np.ndarray]:
    """Top-down labels ``[n]`` with ``sizes[i]`` groups each (coarse to fine, nested): from one group
    (or the groups of ``start`` ``[n]``), split in two, one split at a time, the group whose
    ``split(rows, seed)`` gains the most, until each size is reached. A group's split is computed once.
    Stops early when no group can be split (fewer groups: the model leaves paths empty)."""
    labels = np.zeros(len(x), dtype=np.int64) if start is None else np.unique(start, return_inverse=True)[1]
    best, out = {}, []
    for k in sizes:
        while labels.max() + 1 < k:
            for g in range(labels.max() + 1):
                if g not in best:
                    best[g] = split(x[labels == g], seed)
            g = max(best, key=lambda j: best[j][1])
            if not np.isfinite(best[g][1]):
                break
            halves, _ = best.pop(g)
            cells = np.flatnonzero(labels == g)
            labels[cells[halves == 1]] = labels.max() + 1
        out.append(labels.copy())
    return out


def divisive_levels(
    train,
    emb: np.ndarray,
    level_sizes,
    n_components: int,
    seed: int = 0,
    max_cells: int = LEIDEN_MAX_CELLS,
    n_divisive: int | None = None,
):
    """``vae_divisive``'s per-level labels ``[N]`` of the training cells ``train`` (AnnData of
    counts) with VAE latent means ``emb`` ``[N, D]``: the first ``n_divisive`` levels (default: all
    but the finest) by :func:`divisive_splits` of the counts' PCA (``n_components``), the others
    by Leiden on ``emb`` (:func:`leiden_levels`; ``vae_divisive_top``: ``n_divisive=1``)."""
    n_divisive = len(level_sizes) - 1 if n_divisive is None else n_divisive
    n = train.n_obs
    sample = np.arange(n)
    if n > max_cells:
        sample = np.sort(np.random.default_rng(seed).choice(n, size=max_cells, replace=False))
    cells = train[sample]
    cells = cells.to_memory() if getattr(cells, "isbacked", False) else cells
    pcs = pca_embedding(cells, min(n_components, cells.n_obs - 1, cells.n_vars - 1), seed)
    out = []
    for found in divisive_splits(pcs, level_sizes[:n_divisive], seed):
        if len(sample) < n:  # the other cells: the nearest group centre in the VAE's latent
            centres = np.stack([emb[sample][found == j].mean(0) for j in range(found.max() + 1)])
            found = extend_to_all(emb, sample, found, centres)
        out.append(found)
    return out + leiden_levels(emb, level_sizes[n_divisive:], seed, max_cells)


def nested_leiden_ward(emb: np.ndarray, level_sizes, seed: int = 0) -> list[np.ndarray]:
    """Per-level labels ``[N]`` (coarse to fine) that nest: Leiden with K_L clusters at the finest
    level (:func:`leiden_levels`), then Ward's agglomeration of its clusters (:func:`ward_groups`,
    weighted by their sizes), cut at every coarser size."""
    fine, centres = _leiden_finest(emb, level_sizes[-1], seed)
    groups = ward_groups(centres, np.bincount(fine, minlength=len(centres)), level_sizes[:-1])
    return [groups[k][fine] for k in level_sizes[:-1]] + [fine]


def _leiden_finest(emb: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Leiden with ``k`` clusters (:func:`leiden_levels`): the labels ``[N]`` and the clusters'
    centres ``[k', D]`` (k' = the clusters found)."""
    fine = leiden_levels(emb, (k,), seed)[0]
    return fine, np.stack([emb[fine == j].mean(0) for j in range(int(fine.max()) + 1)])


def nested_single(emb: np.ndarray, level_sizes, seed: int = 0) -> list[np.ndarray]:
    """Per-level labels ``[N]`` (coarse to fine) that nest: Leiden with K_L clusters at the finest
    level (:func:`leiden_levels`), then single linkage of its cluster centres, cut at every coarser
    size. Single linkage can leave fewer groups than asked where distances tie (then paths stay empty)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    fine, centres = _leiden_finest(emb, level_sizes[-1], seed)
    if len(centres) < 2:
        return [np.zeros_like(fine) for _ in level_sizes[:-1]] + [fine]
    tree = linkage(centres.astype(np.float64), method="single")
    coarse = [np.unique(fcluster(tree, int(k), criterion="maxclust"), return_inverse=True)[1] for k in level_sizes[:-1]]
    return [groups[fine] for groups in coarse] + [fine]


def nested_ward(emb: np.ndarray, level_sizes, seed: int = 0) -> list[np.ndarray]:
    """Per-level labels ``[N]`` (coarse to fine) that nest: k-means at the finest level, then
    Ward's agglomeration of its clusters (weighted by their sizes), cut at every coarser size."""
    km = KMeans(level_sizes[-1], n_init=10, random_state=seed).fit(emb)
    fine = km.labels_
    groups = ward_groups(km.cluster_centers_, np.bincount(fine, minlength=level_sizes[-1]), level_sizes[:-1])
    return [groups[k][fine] for k in level_sizes[:-1]] + [fine]


def ward_groups(centres: np.ndarray, weights: np.ndarray, sizes) -> dict[int, np.ndarray]:
    """Ward's agglomeration of weighted points: for each k in ``sizes``, the group ``[M]`` (in
    0..k-1) of each of the M points when k groups remain. A merge of groups a and b costs
    ``w_a w_b / (w_a + w_b) ||c_a - c_b||^2`` (the increase in the within-group sum of squares
    of the cells they hold); the cheapest is made first. With equal weights this is
    ``scipy.cluster.hierarchy.linkage(method="ward")`` (tested)."""
    c = np.array(centres, dtype=float)  # copies: merges overwrite rows
    w = np.array(weights, dtype=float)
    members = [[i] for i in range(len(c))]
    wanted = {min(int(k), len(c)) for k in sizes}
    out = {}

    def record():
        group = np.empty(len(centres), dtype=np.int64)
        for g, idx in enumerate(members):
            group[idx] = g
        for k in sizes:
            if min(int(k), len(centres)) == len(members):
                out[int(k)] = group

    if len(members) in wanted:
        record()
    while len(members) > min(wanted, default=len(members)):
        d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        cost = w[:, None] * w[None, :] / np.maximum(w[:, None] + w[None, :], 1e-12) * d2
        np.fill_diagonal(cost, np.inf)
        a, b = sorted(np.unravel_index(np.argmin(cost), cost.shape))
        merged = (w[a] * c[a] + w[b] * c[b]) / max(w[a] + w[b], 1e-12)
        c[a], w[a], members[a] = merged, w[a] + w[b], members[a] + members[b]
        c, w = np.delete(c, b, 0), np.delete(w, b)
        del members[b]
        if len(members) in wanted:
            record()
    return out


def nested_kmeans(emb: np.ndarray, level_sizes, seed: int = 0) -> list[np.ndarray]:
    """Per-level labels ``[N]`` (coarse to fine) that nest: k-means at the finest level, then
    each coarser level is a weighted k-means of the finer level's centres."""
    km = KMeans(level_sizes[-1], n_init=10, random_state=seed).fit(emb)
    labels, centres = [km.labels_], km.cluster_centers_
    weights = np.bincount(km.labels_, minlength=len(centres)).astype(float)
    for k in reversed(level_sizes[:-1]):
        k_eff = min(k, len(centres))
        parent = KMeans(k_eff, n_init=10, random_state=seed).fit(centres, sample_weight=weights + 1e-3)
        labels.insert(0, parent.labels_[labels[0]])
        centres = np.stack(
            [
                np.average(centres[parent.labels_ == j], axis=0, weights=weights[parent.labels_ == j] + 1e-3)
                for j in range(k_eff)
            ]
        )
        weights = np.bincount(parent.labels_, weights=weights, minlength=k_eff)
    return labels


def vae_pretrain(model, adata, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """Train a plain VAE with ``model``'s encoder/decoder shapes for ``config.init_epochs``,
    copy its encoder (trunk and Gaussian head), decoder and dispersion into ``model``, and
    return the VAE's latent means of all cells ``[N, D]`` and its mean posterior variance ``[D]``."""
    from .models.vae import VAE
    from .train import CountTensors, fit

    cfg = model.config
    vae = VAE(model.n_genes, model.n_batches, cfg)
    n_train = int((adata.obs["split"] == "train").sum())
    fit(vae, adata, _train_config(cfg.init_epochs, seed, batch_size=min(128, n_train)))
    own = model.state_dict()
    for name, value in vae.state_dict().items():
        if own[name].shape == value.shape:
            own[name] = value
        elif name.startswith("encoder.head.") and name.endswith("weight"):  # q(z | x, y): zero the y inputs
            own[name] = torch.cat([value, torch.zeros(value.shape[0], own[name].shape[1] - value.shape[1])], 1)
    model.load_state_dict(own)
    data = CountTensors.from_adata(adata)
    # filled in place: a list of small per-batch tensors between the large temporaries fragments
    # the heap (about 1 GiB of resident memory more at 1M cells)
    loc, var_sum, start = np.empty((len(data), cfg.latent_dim), dtype=np.float32), 0.0, 0
    with torch.no_grad():
        for x, s in data.batches(512):
            q = vae.q_z(x, s).base_dist
            loc[start : start + x.shape[0]] = q.loc.cpu().numpy()
            var_sum = var_sum + q.scale.pow(2).sum(0, dtype=torch.float64)
            start += x.shape[0]
    return loc, (var_sum / len(data)).float()


def _train_config(epochs: int, seed: int, batch_size: int = 128):
    from .config import TrainConfig

    return replace(
        TrainConfig(),
        epochs=max(1, epochs),
        warmup_epochs=min(5, max(1, epochs // 2)),
        patience=0,
        seed=seed,
        progress=False,
        device="cpu",
        batch_size=batch_size,
    )


@torch.no_grad()
def set_components(model, emb: np.ndarray, labels: list[np.ndarray], q_var=None, pseudo_count: float = 0.01) -> None:
    """Component means, scales and prior weights from per-level clusterings of ``emb``.

    ``q_var`` ``[D]``: the encoder's mean posterior variance, added to every component's
    within-cluster variance: z drawn from q(z | x) scatter that much around the cell's mean
    (without it, latent dimensions the VAE left unused get near-zero scales and random clusters).
    """
    emb = torch.as_tensor(emb, dtype=torch.float32)
    extra = torch.zeros(emb.shape[1]) if q_var is None else torch.as_tensor(q_var, dtype=torch.float32)
    sd = (emb.var(0) + extra).sqrt().clamp(min=1e-3)  # [D]

    def spread(cells, variance: bool = False):  # component scale of a cluster, [D]
        """From the cluster's cells ``[n, D]``, or from their variance ``[D]`` (``variance=True``)."""
        if variance:
            return (cells + extra).sqrt().clamp(min=1e-2)
        return (
            (cells.var(0) + extra).sqrt().clamp(min=1e-2) if len(cells) > 2 else sd / math.sqrt(max(model.level_sizes))
        )

    if hasattr(model, "offsets"):
        _set_momix(model, emb, labels, sd, spread, pseudo_count)
    else:
        _set_indmom(model, emb, labels, sd, spread, pseudo_count)


def _set_indmom(model, emb, labels, sd, spread, pseudo_count):
    for l, (lab, K) in enumerate(zip(labels, model.level_sizes)):
        first = int(model.first[l])
        lab = torch.as_tensor(lab)
        for k in range(K):
            cells = emb[lab == k]
            model.mu[first + k] = cells.mean(0) if len(cells) else emb.mean(0) + 0.1 * sd * torch.randn_like(sd)
            model.log_sigma[first + k] = spread(cells).log()
        counts = torch.bincount(lab, minlength=K).float()
        model.prior_logits[l].copy_((counts + pseudo_count).log())


def _set_momix(model, emb, labels, sd, spread, pseudo_count):
    """Per level, the cells' prefix (y1..yl) as one row-major index, then counts, means and
    variances of every prefix by ``np.bincount``: O(N) work per level and no temporary of the
    cells' size per prefix (a mask per prefix took gigabytes at a million cells)."""
    Ks, L, D = model.level_sizes, len(model.level_sizes), emb.shape[1]
    a = model.log_level_scale.exp()
    x = emb.numpy().astype(np.float64)  # [N, D]
    lab = np.stack(labels, 1).astype(np.int64)  # [N, L]
    prefix = np.zeros(len(x), dtype=np.int64)
    parent_means = emb.mean(0, keepdim=True)  # [1, D]: the root
    for l in range(L):
        prefix = prefix * Ks[l] + lab[:, l]  # row-major index of (y1..yl)
        n_prefixes = math.prod(Ks[: l + 1])
        counts, sums, squares = _prefix_moments(prefix, x, n_prefixes, squares=l == L - 1)  # last: the paths
        means = torch.as_tensor(sums / np.maximum(counts, 1)[:, None], dtype=torch.float32)  # [P_l, D]
        parents = parent_means[torch.arange(n_prefixes) // Ks[l]]  # [P_l, D]
        for p in np.flatnonzero(counts == 0):  # an empty path sits next to its parent (a jitter keeps siblings apart)
            means[p] = parents[p] + 0.1 * a[l] * sd * torch.randn_like(sd)
        model.offsets[l].copy_(((means - parents) / a[l]).reshape(*Ks[: l + 1], D))
        model.prior_logits[l].copy_(
            torch.as_tensor(counts + pseudo_count, dtype=torch.float32).log().reshape(Ks[: l + 1])
        )
        parent_means = means
    log_sd = torch.empty(model.n_paths, D)
    for p in range(model.n_paths):
        if counts[p] > 2:  # unbiased variance, as torch.var
            var = (squares[p] - sums[p] ** 2 / counts[p]) / (counts[p] - 1)
            cells = torch.as_tensor(np.maximum(var, 0.0), dtype=torch.float32)
            log_sd[p] = spread(cells, variance=True).log()
        else:
            log_sd[p] = spread(emb[:0]).log()  # too few cells: the default spread
    model.log_sigma.copy_(log_sd)


def _prefix_moments(index: np.ndarray, x: np.ndarray, n: int, squares: bool = True):
    """Counts ``[n]``, sums and (with ``squares``, else None) sums of squares ``[n, D]`` of the rows
    of ``x`` per ``index``."""
    counts = np.bincount(index, minlength=n).astype(np.float64)
    sums = np.stack([np.bincount(index, weights=x[:, d], minlength=n) for d in range(x.shape[1])], 1)
    if not squares:
        return counts, sums, None
    return counts, sums, np.stack([np.bincount(index, weights=x[:, d] ** 2, minlength=n) for d in range(x.shape[1])], 1)
