"""Initialising the components of the hierarchical mixtures (``momix``, ``indmom``).

Two strategies, chosen by ``ModelConfig.init``:

- ``"pca_kmeans"`` (the reference's): log-normalise the counts, PCA to the latent dimension, and
  k-means with K_l clusters at every level independently. The centres live in PCA space, not in
  the (random) encoder's latent space, and the levels need not nest.
- ``"vae_kmeans"`` (respects the hierarchy): train a plain VAE with the same encoder and decoder
  for a few epochs, copy its weights into the model, and cluster its latent means by *nested*
  k-means: k-means with K_L clusters at the finest level, then each coarser level clusters the
  finer centres (weighted by their sizes), so every fine cluster lies inside one coarse cluster.

Either way the per-level clusterings of the training cells set the components: path means and
offsets from cluster means, scales from within-cluster spreads, and the prior's (conditional)
weights from cluster counts (plus a pseudo-count of 0.01, so empty paths start almost unused).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

INITS = ("random", "pca_kmeans", "vae_kmeans")


def initialise(model, adata, method: str = "random", seed: int = 0):
    """Set ``model``'s components from ``adata``'s training cells by ``method``; returns the model.

    ``seed`` (the run's seed) drives PCA, k-means and the VAE pre-training, so different seeds
    start from different clusterings and a benchmark's spread includes the initialisation's.
    """
    if method not in INITS:
        raise ValueError(f"unknown init {method!r}; valid: {', '.join(INITS)}")
    if method != "vae_kmeans" and model.config.init_epochs != type(model.config)().init_epochs:
        raise ValueError(f"init_epochs={model.config.init_epochs} is for init='vae_kmeans', not init={method!r}")
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
        labels = nested_kmeans(emb, K, seed)
    set_components(model, emb, labels, q_var if method == "vae_kmeans" else None)
    return model


def pca_embedding(adata, n_components: int, seed: int = 0) -> np.ndarray:
    """log1p of counts normalised to 10^4 per cell, then PCA: ``[N, n_components]``."""
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    X = np.log1p(1e4 * X / np.maximum(X.sum(1, keepdims=True), 1.0))
    return PCA(n_components, random_state=seed).fit_transform(X).astype(np.float32)


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

    def spread(cells):  # component scale of a cluster, [D]
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
    Ks, L = model.level_sizes, len(model.level_sizes)
    a = model.log_level_scale.exp()
    lab = torch.as_tensor(np.stack(labels, 1))  # [N, L]
    parent_mean = {(): emb.mean(0)}
    for l in range(L):
        counts = torch.zeros(Ks[: l + 1])
        for prefix in np.ndindex(*Ks[: l + 1]):
            mask = (lab[:, : l + 1] == torch.tensor(prefix)).all(1)
            n = int(mask.sum())
            counts[prefix] = n
            parent = parent_mean[prefix[:-1]]
            # an empty path sits next to its parent (a small jitter keeps siblings apart)
            mean = emb[mask].mean(0) if n > 0 else parent + 0.1 * a[l] * sd * torch.randn_like(sd)
            parent_mean[prefix] = mean
            model.offsets[l][prefix] = (mean - parent) / a[l]
        model.prior_logits[l].copy_((counts + pseudo_count).log())
    log_sd = torch.empty(model.n_paths, emb.shape[1])
    for p, prefix in enumerate(np.ndindex(*Ks)):
        log_sd[p] = spread(emb[(lab == torch.tensor(prefix)).all(1)]).log()
    model.log_sigma.copy_(log_sd)
