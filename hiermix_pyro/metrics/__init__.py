"""Metrics: clustering scores per hierarchy level, and held-out likelihood (IWAE, ELBO)."""

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
    "elbo",
    "iwae",
]
