"""The IWAE is a bound: at least the ELBO, and non-decreasing in the number of samples."""

import numpy as np
import pytest

from hiermix_pyro.config import ModelConfig, TrainConfig
from hiermix_pyro.metrics import elbo, iwae
from hiermix_pyro.models import build_model
from hiermix_pyro.train import CountTensors, fit, seed_everything


@pytest.mark.parametrize("name", ["vae", "mixture"])
def test_iwae_bounds(name, sim_adata):
    seed_everything(0)
    model = build_model(name, sim_adata, ModelConfig(latent_dim=3, hidden_dims=(16,)))
    fit(model, sim_adata, TrainConfig(epochs=3, batch_size=64, progress=False))
    data = CountTensors.from_adata(sim_adata)
    seed_everything(1)
    bounds = [iwae(model, data, n_samples=S).mean() for S in (1, 10, 100)]
    e = elbo(model, data, num_particles=20)
    assert np.isfinite(bounds).all()
    assert bounds[0] <= bounds[1] <= bounds[2]
    # IWAE_1 equals the ELBO in expectation for the VAE (above it for the mixture, whose q(z|x)
    # is marginalised over y); with many samples it must lie clearly above
    assert bounds[2] >= e
    assert bounds[0] >= e - 1.0


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
def test_count_log_prob_matches_torch_with_enumerated_means(likelihood):
    """The cheap forms (terms free of the mean at x's shape) give PyTorch's log-densities,
    including for one mean per enumerated component ``[K, 1, B, G]`` and a plate expand."""
    import pyro.distributions as dist
    import torch

    from hiermix_pyro.likelihoods import count_distribution

    torch.manual_seed(0)
    x = torch.poisson(torch.rand(5, 7) * 20)  # [B, G], with zeros
    log_mu = torch.randn(3, 1, 5, 7) + 2.0
    log_theta = torch.randn(7)
    gate = torch.randn(3, 1, 5, 7)
    ours = count_distribution(likelihood, log_mu, log_theta, gate)
    theta = log_theta.exp().expand(log_mu.shape)
    ref = {
        "nb": dist.NegativeBinomial(total_count=theta, logits=log_mu - log_theta),
        "zinb": dist.ZeroInflatedNegativeBinomial(total_count=theta, logits=log_mu - log_theta, gate_logits=gate),
        "poisson": dist.Poisson(log_mu.exp()),
    }[likelihood].to_event(1)
    assert ours.batch_shape == ref.batch_shape == (3, 1, 5) and ours.event_shape == (7,)
    torch.testing.assert_close(ours.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(ours.expand((2, 3, 4, 5)).log_prob(x), ref.expand((2, 3, 4, 5)).log_prob(x))
    torch.testing.assert_close(ours.mean, ref.mean)
    assert ours.sample((2,)).shape == (2, 3, 1, 5, 7)
