"""Clustering metrics on hand-computed cases, and smoke tests of the plotting helpers."""

import json

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import adjusted_rand_score

from hiermix_pyro import plotting
from hiermix_pyro.metrics.clustering import (
    cluster_latent,
    cluster_scores,
    hungarian_match,
    hungarian_weighted_f1,
    level_scores,
    majority_accuracy,
    nesting_score,
    utilized_clusters,
)

# More clusters than classes. Contingency table (rows a, b; columns clusters 0, 1, 2):
#   a: 3 2 0
#   b: 0 1 2
# Hungarian picks a->0, b->2 (3 + 2 = 5 cells; a->0, b->1 gives 4; a->1, b->2 gives 4),
# so cluster 1 stays unmatched and its 3 cells count as wrong.
MORE_LABELS = list("aaaaabbb")
MORE_CLUSTERS = [0, 0, 0, 1, 1, 1, 2, 2]

# Fewer clusters than classes. Contingency table (rows a, b, c; columns clusters 0, 1):
#   a: 3 0
#   b: 0 3
#   c: 1 1
# Hungarian picks a->0, b->1 (6 cells); class c receives no cluster.
FEWER_LABELS = list("aaabbbcc")
FEWER_CLUSTERS = [0, 0, 0, 1, 1, 1, 1, 0]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_perfect_clustering_scores_one_with_permuted_ids():
    labels = pd.Categorical(["T", "T", "B", "B", "NK", "NK", "NK"])
    clusters = np.array([7, 7, 0, 0, 3, 3, 3])  # same partition, arbitrary ids
    scores = cluster_scores(labels, clusters)
    assert scores == {
        "n_classes": 3,
        "ari": 1.0,
        "nmi": 1.0,
        "weighted_f1": 1.0,
        "purity": 1.0,
        "utilized_clusters": 3,
    }
    assert json.loads(json.dumps(scores)) == scores
    assert hungarian_match(labels, clusters) == {0: "B", 3: "NK", 7: "T"}


def test_hungarian_match_leaves_extra_cluster_unmatched():
    assert hungarian_match(MORE_LABELS, MORE_CLUSTERS) == {0: "a", 2: "b"}
    assert hungarian_match(FEWER_LABELS, FEWER_CLUSTERS) == {0: "a", 1: "b"}


def test_weighted_f1_more_clusters_than_classes():
    # predictions: a cells -> a a a X X, b cells -> X b b (X: unmatched cluster 1)
    # a: TP 3, FP 0, FN 2 -> F1 = 2*3 / (2*3 + 0 + 2) = 6/8 = 0.75
    # b: TP 2, FP 0, FN 1 -> F1 = 2*2 / (2*2 + 0 + 1) = 4/5 = 0.8
    # weighted by support: (5 * 0.75 + 3 * 0.8) / 8 = 6.15 / 8 = 0.76875
    assert hungarian_weighted_f1(MORE_LABELS, MORE_CLUSTERS) == pytest.approx(0.76875)


def test_weighted_f1_fewer_clusters_than_classes():
    # predictions: a cells -> a a a, b cells -> b b b, c cells -> b a
    # a: TP 3, FP 1, FN 0 -> F1 = 6/7;  b: TP 3, FP 1, FN 0 -> F1 = 6/7;  c: no cluster -> F1 0
    # weighted by support: (3 * 6/7 + 3 * 6/7 + 2 * 0) / 8 = (36/7) / 8 = 9/14
    assert hungarian_weighted_f1(FEWER_LABELS, FEWER_CLUSTERS) == pytest.approx(9 / 14)


def test_majority_accuracy():
    # clusters 0, 1, 2 -> majority a (3 of 3), a (2 of 3), b (2 of 2): 7 of 8 cells
    assert majority_accuracy(MORE_LABELS, MORE_CLUSTERS) == pytest.approx(7 / 8)
    # clusters 0, 1 -> a (3 of 4), b (3 of 4): 6 of 8 cells
    assert majority_accuracy(FEWER_LABELS, FEWER_CLUSTERS) == pytest.approx(6 / 8)
    # one cluster for everything: the largest class
    assert majority_accuracy(MORE_LABELS, [0] * 8) == pytest.approx(5 / 8)


def test_utilized_clusters():
    assert utilized_clusters([4, 4, 9, 1, 9]) == 3
    assert utilized_clusters(np.zeros(10, dtype=int)) == 1
    assert cluster_scores(FEWER_LABELS, FEWER_CLUSTERS)["utilized_clusters"] == 2


def test_nesting_score():
    coarse = ["stem", "stem", "non", "non", "non", "non"]
    fine = ["CD34+", "CD34+", "B", "B", "T", "NK"]
    assert nesting_score(coarse, fine) == 1.0
    # fine 0: both cells in coarse 0 (2); fine 1: one cell in each coarse (1); fine 2: both
    # in coarse 1 (2) -> (2 + 1 + 2) / 6 = 5/6
    assert nesting_score([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(5 / 6)


def test_level_scores_one_and_per_level_clusterings():
    obs = pd.DataFrame({"L1": list("xxxxyyyy"), "L2": list("aabbccdd")})
    shared = level_scores(obs, ["L1", "L2"], [0, 0, 1, 1, 2, 2, 3, 3])
    assert [row["level"] for row in shared] == ["L1", "L2"]
    assert [row["n_classes"] for row in shared] == [2, 4]
    assert shared[1]["ari"] == 1.0
    assert shared[0]["purity"] == 1.0 and shared[0]["weighted_f1"] < 1.0

    per_level = level_scores(obs, ["L1", "L2"], [[5] * 4 + [6] * 4, np.repeat([0, 1, 2, 3], 2)])
    assert all(row["ari"] == 1.0 and row["weighted_f1"] == 1.0 for row in per_level)
    assert [row["utilized_clusters"] for row in per_level] == [2, 4]


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    truth = np.repeat(np.arange(4), 30)
    return centres[truth] + rng.normal(scale=0.5, size=(len(truth), 2)), truth


def test_cluster_latent_kmeans_recovers_blobs(blobs):
    latent, truth = blobs
    assert adjusted_rand_score(truth, cluster_latent(latent, 4, method="kmeans")) == 1.0


def test_cluster_latent_leiden_hits_the_requested_number(blobs):
    latent, truth = blobs
    clusters = cluster_latent(latent, 4, method="leiden", seed=1)
    assert utilized_clusters(clusters) == 4
    assert adjusted_rand_score(truth, clusters) == 1.0
    assert utilized_clusters(cluster_latent(latent, 6, method="leiden")) == 6
    # Leiden never merges the four disconnected blobs: 2 is out of reach
    with pytest.warns(UserWarning, match="did not reach 2 clusters"):
        assert utilized_clusters(cluster_latent(latent, 2, method="leiden")) == 4


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: cluster_scores(["a", "b"], [0, 1, 2]), "got 2 and 3"),
        (lambda: hungarian_weighted_f1([], []), "labels is empty"),
        (lambda: majority_accuracy(["a", None], [0, 1]), "missing values"),
        (lambda: utilized_clusters(np.zeros((2, 2))), "one-dimensional"),
        (lambda: nesting_score([0, 1], [0]), "coarse and fine"),
        (lambda: cluster_latent(np.zeros((5, 2)), 6), "n_clusters must be in"),
        (lambda: cluster_latent(np.zeros(5), 2), r"\[cells, dims\]"),
        (lambda: cluster_latent(np.zeros((5, 2)), 2, method="gmm"), "unknown method"),
        (lambda: level_scores(pd.DataFrame({"L1": [0, 1]}), ["L1"], [[0, 1], [1, 0]]), "2 clus"),
    ],
)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_level_scores_missing_column():
    with pytest.raises(KeyError, match="L9"):
        level_scores(pd.DataFrame({"L1": [0, 1]}), ["L9"], [0, 1])


@pytest.fixture
def tiny_adata():
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(
        {
            "L1": pd.Categorical(np.repeat(["stem", "non-stem"], 30)),
            "L2": pd.Categorical(np.repeat(["stem", "B", "T"], 20)),
            "library": rng.lognormal(8, 0.5, 60),
        },
        index=[f"cell{i}" for i in range(60)],
    )
    adata = ad.AnnData(np.zeros((60, 3), dtype=np.float32), obs=obs)
    adata.obsm["X_latent"] = rng.normal(size=(60, 2))
    return adata


def test_plot_losses_and_savefig(tmp_path):
    history = {
        "epoch": [1, 2, 3, 4],
        "train_loss": [900.0, 700.0, 650.0, 640.0],
        "val_loss": [None, 720.0, np.nan, 660.0],
        "beta": [0.0, 0.5, 1.0, 1.0],
        "best_epoch": 4,
    }
    fig = plotting.plot_losses(history)
    assert isinstance(fig, Figure)
    path = plotting.savefig(fig, "losses", tmp_path / "figures")
    assert path == tmp_path / "figures" / "losses.png"
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1000

    no_validation = {**history, "val_loss": [None] * 4, "best_epoch": None}
    _, ax = plt.subplots()
    assert plotting.plot_losses(no_validation, ax=ax) is ax.figure


def test_plot_latent_umap_and_level_panels(tiny_adata, tmp_path):
    fig = plotting.plot_latent_umap(tiny_adata, ["L1", "L2", "library"], title_prefix="vae: ")
    assert isinstance(fig, Figure) and len(fig.axes) == 4  # three panels and a colour bar
    assert tiny_adata.obsm["X_umap_latent"].shape == (60, 2)
    assert "X_umap" not in tiny_adata.obsm
    assert plotting.savefig(fig, "umap", tmp_path).stat().st_size > 1000

    tiny_adata.obs["L1_cluster"] = pd.Categorical(np.repeat(["stem", "non-stem", "c2"], 20))
    tiny_adata.obs["L2_cluster"] = pd.Categorical(np.tile(["stem", "B", "T"], 20))
    fig = plotting.plot_level_panels(tiny_adata, ["L1", "L2"], ["L1_cluster", "L2_cluster"])
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert plotting.savefig(fig, "levels", tmp_path).stat().st_size > 1000


def test_plot_level_panels_needs_an_embedding(tiny_adata):
    with pytest.raises(KeyError, match="X_umap_latent"):
        plotting.plot_level_panels(tiny_adata, ["L1"], ["L2"])
