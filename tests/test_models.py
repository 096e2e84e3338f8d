"""One parametrised test over every registered model (sites, shapes, loss, a step)."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.optim import Adam

from hiermix_pyro.config import LIKELIHOODS, ModelConfig
from hiermix_pyro.models import MODELS, build_model
from hiermix_pyro.train import CountTensors, make_elbo, seed_everything

CONFIG = dict(latent_dim=3, hidden_dims=(16,))


def _setup(name, adata, likelihood="nb"):
    seed_everything(0)
    pyro.clear_param_store()
    K = dict(n_components=12) if name in ("vampprior", "gmm", "vmm") else {}  # K pseudo-inputs <= training cells
    model = build_model(name, adata, ModelConfig(likelihood=likelihood, **CONFIG, **K))
    x, s = CountTensors.from_adata(adata, split="train")[:32]
    return model, x, s


def _latent_sites(trace, skip_enumerated=False):
    return {
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and name != "cells"
        and not (skip_enumerated and site["infer"].get("enumerate"))
    }


@pytest.mark.parametrize("batches", [False, True], ids=["no-batch", "batch"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_and_guide_sites_match(name, batches, sim_adata, sim_batch_adata):
    model, x, s = _setup(name, sim_batch_adata if batches else sim_adata)
    assert (s is not None) == batches
    guide_trace = poutine.trace(model.guide).get_trace(x, s)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, s)
    # every latent of the model is either in the guide or enumerated in the model (collapsed)
    assert _latent_sites(model_trace, skip_enumerated=True) <= _latent_sites(guide_trace)
    assert _latent_sites(guide_trace) <= _latent_sites(model_trace)
    obs = model_trace.nodes["x"]
    assert obs["is_observed"] and obs["value"].shape == x.shape
    assert model_trace.nodes["z"]["value"].shape[-1] == CONFIG["latent_dim"]


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_finite_and_one_step_changes_parameters(name, likelihood, sim_adata):
    model, x, s = _setup(name, sim_adata, likelihood)
    svi = SVI(model.model, model.guide, Adam({"lr": 1e-2}), make_elbo(model))
    loss = svi.evaluate_loss(x, s, n_obs=200)
    assert torch.isfinite(torch.tensor(loss))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    svi.step(x, s, n_obs=200, beta=0.5)
    model.prior_step(x, s)
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert any(k.startswith("decoder") for k in changed)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_inference_helpers_shapes(name, sim_adata):
    model, x, s = _setup(name, sim_adata)
    B, D = x.shape[0], CONFIG["latent_dim"]
    with torch.no_grad():
        q = model.q_z(x, s)
        z = q.sample((4,))
        assert z.shape == (4, B, D)
        assert q.log_prob(z).shape == (4, B)
        assert model.log_p_z(z).shape == (4, B)
        assert model.log_p_x_z(x, z, s).shape == (4, B)
        assert model.latent(x, s).shape == (B, D)
        probs = model.cluster_probs(x, s)
    assert len(probs) == len(model.level_sizes)
    for p, K in zip(probs, model.level_sizes):
        assert p.shape == (B, K)
        torch.testing.assert_close(p.sum(-1), torch.ones(B))


def test_mixture_size_defaults_to_finest_classes(sim_adata):
    model = build_model("mixture", sim_adata, ModelConfig(**CONFIG))
    assert model.level_sizes == (4,)
    assert build_model("mixture", sim_adata, ModelConfig(n_components=7, **CONFIG)).level_sizes == (7,)


def test_unknown_model_and_likelihood_errors(sim_adata):
    with pytest.raises(ValueError, match="valid models: .*vae.*mixture"):
        build_model("nope", sim_adata)
    with pytest.raises(ValueError, match="valid: nb, zinb, poisson"):
        ModelConfig(likelihood="gaussian")


def test_mlp_output_layer_is_linear():
    """Encoder means must be able to go negative (a final ReLU was a bug of the reference)."""
    from hiermix_pyro.nn import mlp

    net = mlp([4, 8, 3])
    assert isinstance(net[-1], torch.nn.Linear)
