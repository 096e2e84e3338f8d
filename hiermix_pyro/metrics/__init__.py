"""Metrics: clustering scores per hierarchy level, scores of the whole hierarchy (hierarchical F1,
dendrogram purity), and held-out likelihood (IWAE, ELBO)."""

from .clustering import (
    cluster_latent,
    cluster_scores,
    hungarian_match,
    hungarian_weighted_f1,
    level_scores,
    majority_accuracy,
    nesting_score,
    top_member_accuracy,
    utilized_clusters,
)
from .hierarchy import (
    adata_hierarchy_scores,
    cluster_tree,
    dendrogram_purity,
    hierarchical_f1,
    hierarchy_scores,
    ward_tree,
)
from .likelihood import elbo, iwae

__all__ = [
    "cluster_latent",
    "cluster_scores",
    "hungarian_match",
    "hungarian_weighted_f1",
    "level_scores",
    "majority_accuracy",
    "nesting_score",
    "top_member_accuracy",
    "utilized_clusters",
    "adata_hierarchy_scores",
    "cluster_tree",
    "dendrogram_purity",
    "hierarchical_f1",
    "hierarchy_scores",
    "ward_tree",
    "elbo",
    "iwae",
]
