"""Held-out likelihood: the importance-weighted bound (IWAE) and the ELBO, per cell.

For any model with a (marginal) posterior q(z | x) and a (marginal) prior p(z) that are exact in
the discrete cluster variables, the IWAE with S samples is

    L_S(x) = log (1/S) sum_s p(x | z_s) p(z_s) / q(z_s | x),   z_s ~ q(z | x),

a lower bound on log p(x) that does not decrease as S grows (Burda et al., 2016). Its mean is at
least the ELBO that training maximises: marginalising y out of q and p only tightens the bound.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..train import CountTensors, make_elbo

MAX_ELEMENTS = 2**23  # iwae: largest [S, B, G] tensor (32 MiB of float32); fewer cells per batch above it


@torch.no_grad()
def iwae(model, data: CountTensors, n_samples: int = 100, batch_size: int = 128) -> np.ndarray:
    """Per-cell IWAE estimate of log p(x) with ``n_samples`` importance samples: ``[N]``.

    The decoder's output for all samples of a batch is an ``[S, B, G]`` tensor; when it would
    exceed ``MAX_ELEMENTS`` (100 samples x 128 cells x 2,000 genes does), the batch shrinks so
    that the evaluation's memory stays bounded (a fixed cost, whatever the number of cells).
    """
    batch_size = max(1, min(batch_size, MAX_ELEMENTS // max(1, n_samples * data.n_genes)))
    out, start = np.empty(len(data), dtype=np.float32), 0
    for x, s in data.batches(batch_size):
        q = model.q_z(x, s)  # batch [B], event [D]
        z = q.sample((n_samples,))  # [S, B, D]
        log_w = model.log_p_x_z(x, z, s) + model.log_p_z(z) - q.log_prob(z)  # [S, B]
        out[start : start + x.shape[0]] = (torch.logsumexp(log_w, 0) - math.log(n_samples)).cpu().numpy()
        start += x.shape[0]
    return out


@torch.no_grad()
def elbo(model, data: CountTensors, num_particles: int = 10, batch_size: int = 512) -> float:
    """Mean ELBO per cell (KL weight 1), averaged over ``num_particles`` draws of z."""
    loss = make_elbo(model, num_particles=num_particles)
    total = sum(loss.loss(model.model, model.guide, x, s, n_obs=x.shape[0]) for x, s in data.batches(batch_size))
    return -total / len(data)
