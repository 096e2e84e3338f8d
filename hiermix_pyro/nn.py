"""Small network builders shared by every model.

Each module says which distribution it parameterises. Inputs may carry leading enumeration
dimensions (``[K?, B, ...]``): everything here broadcasts over them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def mlp(sizes: list[int] | tuple[int, ...], activation=nn.ReLU) -> nn.Sequential:
    """Linear layers with ``activation`` between them and *none after the last*.

    The output layer is linear on purpose: a final ReLU would make means non-negative
    (a fault of the reference implementation).
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def cat_broadcast(*tensors: torch.Tensor | None) -> torch.Tensor:
    """Concatenate along the last dim after broadcasting the leading (batch/enum) dims."""
    tensors = [t for t in tensors if t is not None]
    batch_shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(batch_shape + t.shape[-1:]) for t in tensors], dim=-1)


class GaussianHead(nn.Module):
    """``input -> (loc, scale)`` of a diagonal Gaussian; used for q(z | ...)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.loc = nn.Linear(n_in, n_out)
        self.scale = nn.Linear(n_in, n_out)

    def forward(self, h):
        # softplus keeps the scale positive with gradients that do not explode as exp would
        return self.loc(h), F.softplus(self.scale(h)) + 1e-4


class Encoder(nn.Module):
    """Trunk of q(z | x, s): ``[log1p(x), s] -> h``, then a Gaussian head for z.

    The encoder sees ``log1p(x)`` (as in scVI): raw counts span orders of magnitude.
    """

    def __init__(self, n_genes: int, n_batches: int, hidden_dims, latent_dim: int, n_extra: int = 0):
        super().__init__()
        self.trunk = nn.Sequential(mlp([n_genes + n_batches, *hidden_dims]), nn.ReLU())
        # n_extra: extra inputs to the head (a one-hot y for q(z | x, y))
        self.head = GaussianHead(hidden_dims[-1] + n_extra, latent_dim)

    def hidden(self, x, s=None):  # [B, G], [B, S] -> [B, H]
        return self.trunk(cat_broadcast(torch.log1p(x), s))

    def forward(self, x, s=None):  # -> loc, scale: [B, D]
        return self.head(self.hidden(x, s))


class Decoder(nn.Module):
    """Generative network of p(x | z, s): ``[z, s] -> log rho`` (log expression fractions).

    ``log_softmax`` makes rho a point on the simplex, so ``l * rho`` has the observed library
    size ``l`` as its total (scVI's parameterisation). ZINB adds a dropout-gate head.
    """

    def __init__(self, n_genes: int, n_batches: int, hidden_dims, latent_dim: int, zero_inflated: bool):
        super().__init__()
        dims = [latent_dim + n_batches, *reversed(hidden_dims)]
        self.trunk = nn.Sequential(mlp(dims), nn.ReLU())
        self.rho = nn.Linear(dims[-1], n_genes)
        self.gate = nn.Linear(dims[-1], n_genes) if zero_inflated else None

    def forward(self, z, s=None):  # [K?, B, D] -> log_rho, gate_logits: [K?, B, G]
        h = self.trunk(cat_broadcast(z, s))
        gate = self.gate(h) if self.gate is not None else None
        return F.log_softmax(self.rho(h), dim=-1), gate
