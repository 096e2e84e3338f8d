"""Hierarchy scores (hiermix_pyro.metrics.hierarchy) on tiny hand-made cases with known answers."""

import numpy as np
import pandas as pd
import pytest

from hiermix_pyro.metrics.hierarchy import (
    adata_hierarchy_scores,
    cluster_tree,
    dendrogram_purity,
    hierarchical_f1,
    hierarchy_scores,
    ward_tree,
)

# two coarse classes X (fine a, b) and Y (fine c)
COARSE = ["X", "X", "X", "Y"]
FINE = ["a", "a", "b", "c"]


# ---- dendrogram purity ----
def test_dendrogram_purity_binary_tree_over_cells():
    # cells are the leaves 0..3; internal nodes 4 = (0, 1), 5 = (2, 3), root 6
    labels = ["a", "a", "b", "b"]
    assert dendrogram_purity(labels, [0, 1, 2, 3], [4, 4, 5, 5, 6, 6, -1]) == 1.0
    # 4 = (0, 2), 5 = (1, 3): both same-label pairs meet only at the root, half of which is theirs
    assert dendrogram_purity(labels, [0, 1, 2, 3], [4, 5, 4, 5, 6, 6, -1]) == 0.5


def test_dendrogram_purity_clusters_at_the_leaves():
    # leaf 0 holds a, a, b; leaf 1 holds b; root 2. The a-pair meets in leaf 0 (purity 2/3 for a),
    # the b-pair at the root (2 of 4 cells are b): (2/3 + 1/2) / 2 = 7/12
    assert dendrogram_purity(["a", "a", "b", "b"], [0, 0, 0, 1], [2, 2, -1]) == pytest.approx(7 / 12)
    # the same leaves without a common root node (two roots): they meet in a virtual root
    assert dendrogram_purity(["a", "a", "b", "b"], [0, 0, 0, 1], [-1, -1]) == pytest.approx(7 / 12)
    # one pure leaf per label: 1
    assert dendrogram_purity(["a", "a", "b", "b"], [0, 0, 1, 1], [-1, -1]) == 1.0


def test_dendrogram_purity_weights_pairs_not_labels():
    # three a's in a pure leaf (3 pairs, purity 1), two b's apart (1 pair, meets at root: 2/5)
    labels, leaf = ["a", "a", "a", "b", "b"], [0, 0, 0, 1, 2]
    assert dendrogram_purity(labels, leaf, [3, 3, 3, -1]) == pytest.approx((3 * 1 + 1 * 2 / 5) / 4)
    assert np.isnan(dendrogram_purity(["a", "b"], [0, 1], [-1, -1]))  # no pair with one label


def test_dendrogram_purity_rejects_bad_input():
    with pytest.raises(ValueError, match="entries"):
        dendrogram_purity(["a", "a"], [0], [-1])
    with pytest.raises(ValueError, match="cycle"):
        dendrogram_purity(["a", "a"], [0, 0], [1, 0])


# ---- the trees ----
def test_cluster_tree_majority_parent():
    coarse = ["x", "x", "x", "y", "y", "y"]
    fine = [0, 0, 1, 1, 2, 2]  # fine 1 has one cell in x, one in y: the tie goes to x (sorted first)
    leaf, parent = cluster_tree([coarse, fine])
    # nodes: x, y (level 1), then fine 0, 1, 2
    assert parent.tolist() == [-1, -1, 0, 0, 1]
    assert leaf.tolist() == [2, 2, 3, 3, 4, 4]


def test_model_tree_scores_a_consistent_hierarchy_one():
    coarse = np.repeat([0, 1], 6)
    fine = np.repeat([0, 1, 2, 3], 3)
    labels = np.repeat(["a", "b", "c", "d"], 3)
    leaf, parent = cluster_tree([coarse, fine])
    assert dendrogram_purity(labels, leaf, parent) == 1.0
    # two fine labels share a fine cluster: their pairs across the clusters meet in it at purity 1/2
    merged = np.repeat([0, 0, 1, 1], 3)
    labels2 = np.repeat(["a", "b", "c", "d"], 3)
    leaf, parent = cluster_tree([coarse, merged])
    assert dendrogram_purity(labels2, leaf, parent) == pytest.approx(0.5)


def test_ward_tree_joins_nearest_centroids():
    # four clusters on a line at 0, 1, 10, 11: Ward joins (0, 1) and (10, 11) first
    embedding = np.array([[0.0], [1.0], [10.0], [11.0]]).repeat(2, axis=0)
    clusters = np.repeat([0, 1, 2, 3], 2)
    leaf, parent = ward_tree(embedding, clusters)
    assert leaf.tolist() == clusters.tolist()
    assert parent[0] == parent[1] and parent[2] == parent[3] and parent[0] != parent[2]
    assert dendrogram_purity(np.repeat(["a", "a", "b", "b"], 2), leaf, parent) == 1.0
    # labels that the tree splits: a in clusters 0 and 2. The a-pairs inside a cluster meet at purity
    # 1 (2 pairs), the 4 across clusters at the root (purity 1/2): (2 + 4 / 2) / 6 for each label
    assert dendrogram_purity(np.repeat(["a", "b", "a", "b"], 2), leaf, parent) == pytest.approx(4 / 6)
    leaf, parent = ward_tree(np.zeros((3, 2)), [5, 5, 5])  # one cluster: one node
    assert parent.tolist() == [-1] and leaf.tolist() == [0, 0, 0]


# ---- hierarchical F1 ----
def test_hierarchical_f1_perfect():
    scores = hierarchical_f1([COARSE, FINE], [[0, 0, 0, 1], [0, 0, 1, 2]])
    assert scores == dict(h_precision=1.0, h_recall=1.0, h_f1=1.0)


def test_hierarchical_f1_wrong_fine_label_keeps_its_ancestor():
    # cell 1 (a) lands in b's cluster: predicted {X, b} for true {X, a}: 7 of 8 labels right
    scores = hierarchical_f1([COARSE, FINE], [[0, 0, 0, 1], [0, 1, 1, 2]])
    assert scores["h_precision"] == pytest.approx(7 / 8)
    assert scores["h_recall"] == pytest.approx(7 / 8)
    assert scores["h_f1"] == pytest.approx(7 / 8)


def test_hierarchical_f1_unmatched_cluster_predicts_nothing():
    # five cells, fine clusters 0, 0, 3, 1, 2: cluster 3 gets no class (one cluster per class),
    # so cell 2 predicts only its coarse X: precision 9/9, recall 9/10
    coarse, fine = ["X", "X", "X", "X", "Y"], ["a", "a", "a", "b", "c"]
    scores = hierarchical_f1([coarse, fine], [[0, 0, 0, 0, 1], [0, 0, 3, 1, 2]])
    assert scores["h_precision"] == pytest.approx(1.0)
    assert scores["h_recall"] == pytest.approx(0.9)
    assert scores["h_f1"] == pytest.approx(2 * 0.9 / 1.9)


def test_hierarchical_f1_inconsistent_levels_count_both_paths():
    # cell 3's coarse cluster is matched to X but its fine one to c (under Y): predicted {X, Y, c}
    # for true {Y, c}. Coarse clusters 0, 0, 0, 0 -> only X is matched, so cell 3 predicts X there
    scores = hierarchical_f1([COARSE, FINE], [[0, 0, 0, 0], [0, 0, 1, 2]])
    # hits 2 + 2 + 2 + 2 = 8; predicted 2 + 2 + 2 + 3 = 9; true 8
    assert scores["h_precision"] == pytest.approx(8 / 9)
    assert scores["h_recall"] == pytest.approx(1.0)


def test_hierarchical_f1_flat_clustering_gets_coarse_labels_from_ancestors():
    # one clustering scored at both levels: at the coarse level cluster 1 is left unmatched (X
    # takes cluster 0), yet its fine match b brings X: every set is right
    flat = [0, 0, 1, 2]
    assert hierarchical_f1([COARSE, FINE], [flat, flat])["h_f1"] == 1.0


def test_hierarchical_f1_same_name_at_two_levels_kept_apart():
    # "B" is a coarse class and a fine class: (1, "B") and (2, "B") are different labels
    coarse, fine = ["B", "B", "T", "T"], ["B", "B", "CD4", "CD8"]
    scores = hierarchical_f1([coarse, fine], [[0, 0, 1, 1], [0, 0, 1, 2]])
    assert scores["h_f1"] == 1.0


def test_hierarchy_scores_choose_the_tree():
    obs = pd.DataFrame({"L1": COARSE, "L2": FINE})
    clusters = [np.array([0, 0, 0, 1]), np.array([0, 0, 1, 2])]
    model = hierarchy_scores(obs, ["L1", "L2"], clusters, model_levels=clusters)
    assert model["tree"] == "model" and model["dendrogram_purity"] == 1.0 and model["h_f1"] == 1.0
    flat = hierarchy_scores(obs, ["L1", "L2"], clusters, embedding=np.array([[0.0], [0.0], [1.0], [9.0]]))
    assert flat["tree"] == "ward" and flat["dendrogram_purity"] == 1.0
    assert np.isnan(hierarchy_scores(obs, ["L1", "L2"], clusters)["dendrogram_purity"])


def test_annotated_run_uses_the_model_tree_when_it_has_levels():
    """The scores workflow.evaluate writes (adata_hierarchy_scores): the model's own levels
    (obsm q_y<l>) as the tree when there are two or more, else Ward's tree on the latent."""
    import anndata as ad

    obs = pd.DataFrame({"L1": COARSE * 2, "L2": FINE * 2}, index=[f"cell{i}" for i in range(8)])
    clusters = np.array([0, 0, 1, 2] * 2)
    adata = ad.AnnData(np.zeros((8, 3)), obs=obs)
    adata.uns["hiermix"] = {"levels": ["L1", "L2"]}
    adata.obs["cluster_L1"] = pd.Categorical(np.array([0, 0, 0, 1] * 2).astype(str))
    adata.obs["cluster_L2"] = pd.Categorical(clusters.astype(str))
    adata.obsm["X_latent"] = np.array([[0.0], [0.0], [5.0], [1.0]] * 2)
    flat = adata_hierarchy_scores(adata)
    # each label fills one pure cluster: every same-label pair meets in its leaf, whatever the tree
    assert flat["tree"] == "ward" and flat["h_f1"] == 1.0 and flat["dendrogram_purity"] == 1.0
    adata.obsm["q_y1"] = np.eye(2)[[0, 0, 0, 1] * 2]
    assert adata_hierarchy_scores(adata)["tree"] == "ward"  # one level: a flat mixture
    adata.obsm["q_y2"] = np.eye(3)[clusters]
    model = adata_hierarchy_scores(adata)
    assert model["tree"] == "model" and model["dendrogram_purity"] == 1.0
