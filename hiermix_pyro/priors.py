"""Prior building blocks shared by the mixture models.

``diag_normal_log_prob_matrix`` evaluates log N(z_b | m_p, s_p^2) for every (cell b, component p)
pair with three matrix products instead of an elementwise ``[B, P, D]`` tensor: about 10x
cheaper forward and backward at the sizes used here (see ``benchmarks/``).
"""

from __future__ import annotations

import math

import torch


def diag_normal_log_prob_matrix(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``log N(z | loc_p, diag(scale_p^2))`` for all components p.

    z: ``[..., B, D]``; loc, scale: ``[P, D]``  ->  ``[..., B, P]``.

    Uses ``sum_d (z_d - m_pd)^2 / s_pd^2 = z^2 . (1/s^2)^T - 2 z . (m/s^2)^T + sum_d m^2/s^2``.
    """
    prec = scale.pow(-2)  # [P, D]
    quad = z.pow(2) @ prec.T - 2.0 * z @ (loc * prec).T + (loc.pow(2) * prec).sum(-1)  # [..., B, P]
    log_norm = -scale.log().sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)  # [P]
    return log_norm - 0.5 * quad


def mixture_log_prob(z: torch.Tensor, log_weights: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log sum_p w_p N(z | loc_p, scale_p^2): ``[..., B, D] -> [..., B]``."""
    return torch.logsumexp(log_weights + diag_normal_log_prob_matrix(z, loc, scale), dim=-1)
