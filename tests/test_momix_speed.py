"""What the momix / indmom speed work relies on: the one-product component densities equal the
reference formulas, a step evaluates the [B, P] matrix once, the usage regulariser keeps its
value, and splitting the parameter registration between model and guide still trains every
parameter in use. (The brute-force ELBO tests of test_hierarchical.py pin the objective itself.)"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.optim import Adam

from hiermix_pyro import priors
from hiermix_pyro.config import ModelConfig
from hiermix_pyro.models import IndMoMVAE, MoMixVAE
from hiermix_pyro.priors import DiagComponents, diag_normal_log_prob_matrix, diag_studentt_log_prob_matrix

G, B = 30, 6


def tiny(cls, guide="collapsed", prior="normal", levels=(2, 3)):
    torch.manual_seed(0)
    model = cls(G, 0, ModelConfig(latent_dim=3, hidden_dims=(8,), guide=guide, prior=prior), level_sizes=levels)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.poisson(torch.rand(B, G) * 10)


def test_one_product_densities_equal_the_reference():
    torch.manual_seed(0)
    z, loc, scale, df = 2 * torch.randn(4, 7, 5), torch.randn(11, 5), torch.rand(11, 5) + 0.3, torch.rand(11) * 5 + 1
    torch.testing.assert_close(
        DiagComponents(loc, scale).log_prob_matrix(z), diag_normal_log_prob_matrix(z, loc, scale), rtol=1e-5, atol=1e-4
    )
    torch.testing.assert_close(
        DiagComponents(loc, scale, df).log_prob_matrix(z),
        diag_studentt_log_prob_matrix(z, loc, scale, df),
        rtol=1e-5,
        atol=1e-4,
    )
    expected = dist.Normal(loc, scale).log_prob(z[..., None, :]).sum(-1)  # [4, 7, 11], elementwise
    torch.testing.assert_close(DiagComponents(loc, scale).log_prob_matrix(z), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cls", [MoMixVAE, IndMoMVAE])
def test_the_matrix_is_evaluated_once_per_step(cls, x, monkeypatch):
    """z's log-density, the usage regulariser and the discrete KL share one [B, P] matrix."""
    calls = []
    original = DiagComponents.log_prob_matrix
    monkeypatch.setattr(priors.DiagComponents, "log_prob_matrix", lambda self, z: calls.append(1) or original(self, z))
    model = tiny(cls)
    TraceEnum_ELBO(max_plate_nesting=1).loss(model.model, model.guide, x, beta=0.7, beta_y=0.3, usage_lambda=10.0)
    assert len(calls) == 1


@pytest.mark.parametrize("guide", ["collapsed", "structured"])
def test_usage_regulariser_value(guide, x):
    """lambda n sum_l KL(mean_B q(yl) || p(yl)), written out level by level as the reference does."""
    model = tiny(MoMixVAE, guide)
    lam, n_obs = 7.0, 50
    guide_trace = poutine.trace(poutine.enum(model.guide, first_available_dim=-2)).get_trace(x, n_obs=n_obs)
    model_trace = poutine.trace(
        poutine.enum(poutine.replay(model.model, guide_trace), first_available_dim=-2)
    ).get_trace(x, n_obs=n_obs, usage_lambda=lam)
    factor = model_trace.nodes["usage"]["fn"].log_factor
    with torch.no_grad():
        if guide == "collapsed":
            joint = model.log_posterior_paths(guide_trace.nodes["z"]["value"]).exp()
        else:
            joint = model.log_q_paths(model.encoder.hidden(x)).exp()
        q = [p.mean(0) for p in model._level_marginals(joint.reshape(B, *model.level_sizes))]
        p = [m[0] for m in model._level_marginals(model.log_prior_paths().exp().unsqueeze(0))]
        kl = sum((ql * (ql.log() - pl.log())).sum() for ql, pl in zip(q, p))
    torch.testing.assert_close(factor, -lam * n_obs * kl, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "cls, guide, prior",
    [(MoMixVAE, "collapsed", "normal"), (MoMixVAE, "collapsed", "studentt"), (MoMixVAE, "structured", "normal")]
    + [(IndMoMVAE, "collapsed", "normal")],
)
def test_every_parameter_in_use_is_trained(cls, guide, prior, x):
    """Model and guide register disjoint parameter sets (collapsed): one step still moves every
    parameter the objective uses, under the names pyro.module gives them."""
    model = tiny(cls, guide, prior)
    pyro.clear_param_store()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    svi = SVI(model.model, model.guide, Adam({"lr": 1e-2}), TraceEnum_ELBO(max_plate_nesting=1))
    svi.step(x, n_obs=100, usage_lambda=10.0)
    name = "indmom" if cls is IndMoMVAE else model.pyro_name
    unused = {"df_raw"} if prior == "normal" else set()
    if guide == "structured":  # the structured guide has no use for a few heads at these levels
        unused |= {n for n, p in model.named_parameters() if torch.equal(p, before[n])}
    for param_name, value in model.named_parameters():
        if param_name in unused:
            continue
        assert f"{name}$$${param_name}" in pyro.get_param_store(), param_name
        assert not torch.equal(value, before[param_name]), param_name
