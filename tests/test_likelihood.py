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
