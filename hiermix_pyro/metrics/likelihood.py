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


@torch.no_grad()
def iwae(model, data: CountTensors, n_samples: int = 100, batch_size: int = 128) -> np.ndarray:
    """Per-cell IWAE estimate of log p(x) with ``n_samples`` importance samples: ``[N]``."""
    out = []
    for x, s in data.batches(batch_size):
        q = model.q_z(x, s)  # batch [B], event [D]
        z = q.sample((n_samples,))  # [S, B, D]
        log_w = model.log_p_x_z(x, z, s) + model.log_p_z(z) - q.log_prob(z)  # [S, B]
        out.append(torch.logsumexp(log_w, 0) - math.log(n_samples))
    return torch.cat(out).cpu().numpy()


@torch.no_grad()
def elbo(model, data: CountTensors, num_particles: int = 10, batch_size: int = 512) -> float:
    """Mean ELBO per cell (KL weight 1), averaged over ``num_particles`` draws of z."""
    loss = make_elbo(model, num_particles=num_particles)
    total = sum(loss.loss(model.model, model.guide, x, s, n_obs=x.shape[0]) for x, s in data.batches(batch_size))
    return -total / len(data)
