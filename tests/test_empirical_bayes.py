"""VampPrior, Bayesian GMM and VMM priors: the maths of the E/M-steps, recovery, and failure modes."""

import math
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.optim import ClippedAdam
from sklearn.metrics import normalized_mutual_info_score

from hiermix_pyro.config import ModelConfig, TrainConfig
from hiermix_pyro.data import prepare, simulate_hierarchy
from hiermix_pyro.models import build_model
from hiermix_pyro.models.gmm import closed_form_m_step, e_step, sufficient_statistics
from hiermix_pyro.priors import (
    GaussianMixture,
    expected_normal_log_prob_matrix,
    full_normal_log_prob_matrix,
)
from hiermix_pyro.train import CountTensors, fit, make_elbo, seed_everything

EB_MODELS = ["vampprior", "gmm", "vmm"]
SMALL = dict(latent_dim=3, hidden_dims=(16,), n_components=6)


def _setup(name, adata, **config):
    seed_everything(0)
    pyro.clear_param_store()
    model = build_model(name, adata, ModelConfig(**{**SMALL, **config}))
    x, s = CountTensors.from_adata(adata, split="train")[:32]
    return model, x, s


def _random_prec_tril(K, D, gen):
    A = torch.randn(K, D, D, generator=gen) * 0.3
    return torch.linalg.cholesky(A @ A.transpose(-1, -2) + torch.eye(D))


# ---- densities ----


def test_full_normal_log_prob_matrix_matches_torch():
    gen = torch.Generator().manual_seed(0)
    K, B, D = 4, 7, 3
    z, loc, L = torch.randn(2, B, D, generator=gen), torch.randn(K, D, generator=gen), _random_prec_tril(K, D, gen)
    ref = torch.distributions.MultivariateNormal(loc, precision_matrix=L @ L.transpose(-1, -2))
    expected = ref.log_prob(z.unsqueeze(-2))  # [2, B, K]
    torch.testing.assert_close(full_normal_log_prob_matrix(z, loc, L), expected, atol=1e-4, rtol=1e-5)


def test_expected_log_density_matches_monte_carlo():
    """E over z ~ N(m, diag v) and mu ~ N(loc, diag w) of log N(z | mu, Lambda^{-1}), analytic vs MC."""
    gen = torch.Generator().manual_seed(1)
    K, B, D, S = 3, 2, 2, 200_000
    z_loc, z_var = torch.randn(B, D, generator=gen), torch.rand(B, D, generator=gen) + 0.1
    loc, loc_var = torch.randn(K, D, generator=gen), torch.rand(K, D, generator=gen) + 0.1
    L = _random_prec_tril(K, D, gen)
    analytic = expected_normal_log_prob_matrix(z_loc, z_var, loc, loc_var, L)  # [B, K]
    z = z_loc + z_var.sqrt() * torch.randn(S, B, D, generator=gen)  # [S, B, D]
    mu = loc + loc_var.sqrt() * torch.randn(S, K, D, generator=gen)  # [S, K, D]
    mc = torch.distributions.MultivariateNormal(mu.unsqueeze(1), precision_matrix=L @ L.transpose(-1, -2))
    mc = mc.log_prob(z.unsqueeze(2)).mean(0)  # [B, K]
    torch.testing.assert_close(analytic, mc, atol=0.02, rtol=0.01)


def test_gaussian_mixture_distribution():
    gen = torch.Generator().manual_seed(2)
    K, D = 3, 2
    logits, loc, L = torch.randn(K, generator=gen), torch.randn(K, D, generator=gen), _random_prec_tril(K, D, gen)
    p = GaussianMixture(logits, loc, prec_tril=L, batch_shape=(5,))
    z = p.sample((4,))
    assert z.shape == (4, 5, D) and p.log_prob(z).shape == (4, 5)
    ref = dist.MixtureSameFamily(
        dist.Categorical(logits=logits), dist.MultivariateNormal(loc, precision_matrix=L @ L.transpose(-1, -2))
    )
    torch.testing.assert_close(p.log_prob(z), ref.log_prob(z), atol=1e-4, rtol=1e-5)
    # the sample covariance of one component is Lambda^{-1}
    one = GaussianMixture(torch.tensor([0.0, -1e9, -1e9]), loc, prec_tril=L).sample((40_000,))
    torch.testing.assert_close(torch.cov(one.T), torch.cholesky_inverse(L[0]), atol=0.05, rtol=0.05)


# ---- E- and M-steps ----


@pytest.mark.parametrize("name", EB_MODELS)
def test_responsibilities_sum_to_one(name, sim_adata):
    model, x, s = _setup(name, sim_adata)
    with torch.no_grad():
        (r,) = model.cluster_probs(x, s)
    assert r.shape == (x.shape[0], model.K) and (r >= 0).all()
    torch.testing.assert_close(r.sum(-1), torch.ones(x.shape[0]))
    ell = torch.randn(x.shape[0], 5) * 50
    torch.testing.assert_close(e_step(torch.log_softmax(torch.randn(5), -1), ell).sum(-1), torch.ones(x.shape[0]))


@pytest.mark.parametrize("name,update", [("gmm", "gradient"), ("gmm", "closed"), ("vmm", "gradient")])
def test_m_step_increases_map_objective(name, update, sim_adata):
    """On a fixed batch of z with fixed responsibilities, one M-step raises the MAP objective."""
    model, x, s = _setup(name, sim_adata, em_update=update, em_lr=1e-2 if update == "gradient" else 1.0)
    model.em_active = True
    with torch.no_grad():
        z = model.q_z(x, s).sample()
    model.q_z = lambda x, s=None: dist.Normal(z, 1e-12).to_event(1)  # the same z every call
    model.prior_step(x, s)  # first call: data start for gmm means; the optimiser is made
    for _ in range(3):
        with torch.no_grad():
            r = e_step(model.prior.log_pi(), model.expected_log_lik(z))
            before = float(model.objective(z, r))
        model.prior_step(x, s)
        with torch.no_grad():
            after = float(model.objective(z, r))
        assert after > before, (before, after)


def test_closed_form_m_step_is_the_maximiser_in_mu_and_lambda():
    """With pi fixed, the closed-form mu and Lambda beat small perturbations of themselves."""
    gen = torch.Generator().manual_seed(3)
    K, B, D = 3, 40, 2
    z = torch.randn(B, D, generator=gen) * 2
    r = torch.softmax(torch.randn(B, K, generator=gen), -1)
    L0 = torch.linalg.cholesky(torch.eye(D).expand(K, D, D).clone())
    _, mu, L = closed_form_m_step(sufficient_statistics(r, z), 1.0, L0)
    # with Lambda fixed at L0 the mu-update is exact: check its gradient is zero there
    mu_ = mu.clone().requires_grad_()
    target = (r * full_normal_log_prob_matrix(z, mu_, L0)).sum() - 0.5 * mu_.pow(2).sum()
    (g,) = torch.autograd.grad(target, mu_)
    assert g.abs().max() < 1e-3
    from hiermix_pyro.models.gmm import log_hyperprior

    def q(L_):
        log_pi = torch.full((K,), -math.log(K))
        return float((r * full_normal_log_prob_matrix(z, mu, L_)).sum() + log_hyperprior(torch.zeros(()), log_pi, L_))

    for _ in range(5):
        L_pert = torch.linalg.cholesky(
            (L @ L.transpose(-1, -2)) * (1 + 0.05 * torch.randn(K, 1, 1, generator=gen).abs()) + 0.0
        )
        assert q(L) >= q(L_pert) - 1e-5


def test_prior_is_fixed_during_the_svi_step(sim_adata):
    """SVI moves encoder and decoder only; the M-step moves the prior only."""
    for name in ("gmm", "vmm"):
        model, x, s = _setup(name, sim_adata)
        prior_names = [k for k, _ in model.named_parameters() if k.startswith(("prior.", "u."))]
        snap = {k: v.detach().clone() for k, v in model.named_parameters()}
        svi = SVI(model.model, model.guide, ClippedAdam({"lr": 1e-2}), make_elbo(model))
        svi.step(x, s, n_obs=200)
        moved = {k for k, v in model.named_parameters() if not torch.equal(v, snap[k])}
        assert moved and not moved & set(prior_names)
        snap = {k: v.detach().clone() for k, v in model.named_parameters()}
        model.prior_step(x, s)
        moved = {k for k, v in model.named_parameters() if not torch.equal(v, snap[k])}
        assert moved and moved <= set(prior_names)
        assert all(v.grad is None for k, v in model.named_parameters() if k in prior_names)


# ---- failures are loud ----


@pytest.mark.parametrize("name,param", [("gmm", "log_alpha"), ("gmm", "mu"), ("vmm", "u.raw_counts")])
def test_non_finite_prior_update_raises_naming_the_parameter(name, param, sim_adata):
    model, x, s = _setup(name, sim_adata)
    model.prior_step(x, s)
    with torch.no_grad():
        t = dict(model.named_parameters())["prior." + param if not param.startswith("u.") else param]
        t.view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match=param.replace(".", r"\.")):
        model.prior_step(x, s)


def test_non_finite_closed_form_update_raises(sim_adata):
    model, x, s = _setup("gmm", sim_adata, em_update="closed")
    model.prior_step(x, s)
    model.q_z = lambda x, s=None: dist.Normal(torch.full((x.shape[0], 3), float("inf")), 1.0).to_event(1)
    with pytest.raises(FloatingPointError, match="prior update"):
        model.prior_step(x, s)


# ---- every model: sites, loss, a step (with and without batches) ----


@pytest.mark.parametrize("batches", [False, True], ids=["no-batch", "batch"])
@pytest.mark.parametrize("name", EB_MODELS)
def test_sites_loss_and_one_step(name, batches, sim_adata, sim_batch_adata):
    model, x, s = _setup(name, sim_batch_adata if batches else sim_adata)
    assert (s is not None) == batches
    guide_trace = poutine.trace(model.guide).get_trace(x, s)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, s)
    sites = lambda tr: {k for k, v in tr.nodes.items() if v["type"] == "sample"}
    assert sites(guide_trace) == {"cells", "z"} and sites(model_trace) == {"cells", "z", "x"}
    assert model_trace.nodes["z"]["fn"].batch_shape == (x.shape[0],)
    svi = SVI(model.model, model.guide, ClippedAdam({"lr": 1e-2}), make_elbo(model))
    loss = svi.step(x, s, n_obs=200, beta=0.5)
    assert math.isfinite(loss)
    model.prior_step(x, s)
    assert math.isfinite(svi.evaluate_loss(x, s, n_obs=200))
    if batches and name != "gmm":  # the pseudo-inputs' batch part is a probability vector
        _, u_s = model.u()
        torch.testing.assert_close(u_s.sum(-1), torch.ones(model.K))


# ---- recovery: 5 well-separated clusters, K = 30 ----


@pytest.fixture(scope="module")
def five_clusters():
    adata = simulate_hierarchy(
        branching=(5,), cells_per_leaf=100, n_genes=100, seed=0, effect_size=4.0, de_fraction=0.3
    )
    return prepare(adata, n_hvg=None, seed=0)


@pytest.mark.parametrize("name", ["vmm", "gmm"])
def test_recovers_five_clusters(name, five_clusters):
    adata = five_clusters.copy()
    seed_everything(0)
    # a short run: em_lr 1e-2 (the default) so that empty components are off in time
    model = build_model(name, adata, ModelConfig(latent_dim=5, hidden_dims=(64,), n_components=30, em_lr=1e-2))
    fit(model, adata, TrainConfig(epochs=40, batch_size=128, lr=3e-3, warmup_epochs=3, patience=0, progress=False))
    with torch.no_grad():
        data = CountTensors.from_adata(adata)
        clusters = model.cluster_probs(data.x, data.s)[0].argmax(-1).numpy()
    used = len(np.unique(clusters))
    nmi = normalized_mutual_info_score(adata.obs["L1"], clusters)
    assert 4 <= used <= 10, used
    assert nmi > 0.85, nmi


# ---- batch integration metrics ----


def test_scib_missing_names_the_extra(monkeypatch):
    import sys

    from hiermix_pyro.metrics import integration

    monkeypatch.setitem(sys.modules, "scib_metrics", None)
    monkeypatch.setitem(sys.modules, "scib_metrics.benchmark", None)
    assert not integration.scib_available()
    with pytest.raises(ImportError, match=r"hiermix-pyro\[scib\]"):
        integration.scib_scores(None, "batch", "label")


@pytest.mark.parametrize("name, options", [("gmm", {}), ("gmm", {"em_update": "closed"}), ("vmm", {})])
def test_resume_continues_exactly_with_em_state(name, options, sim_adata, tmp_path):
    """The prior's own optimiser (and the closed-form running statistics) travel in the
    checkpoint: 2 + 2 resumed epochs give the losses of 4 epochs in one go."""
    ckpt = str(tmp_path / "run.pt")

    def run(epochs, checkpoint_path=None):
        seed_everything(0)
        model = build_model(name, sim_adata, ModelConfig(**SMALL, em_lr=0.05, **options))
        cfg = TrainConfig(
            epochs=epochs, batch_size=64, warmup_epochs=1, patience=0, progress=False, checkpoint_path=checkpoint_path
        )
        return model, fit(model, sim_adata, cfg)

    _, full = run(4)
    run(2, ckpt)
    model, resumed = run(4, ckpt)
    assert model.em_optim is not None and resumed["epoch"] == [1, 2, 3, 4]
    torch.testing.assert_close(torch.tensor(resumed["train_loss"]), torch.tensor(full["train_loss"]))


def test_integration_names_workflow_runs_by_method_and_seed():
    """Workflow run folders are all seed<k>: the scIB table names them <method>/seed<k>."""
    from hiermix_pyro.metrics.integration import run_name

    assert run_name(Path("runs/headline/pbmc_3tech/vmm/seed3")) == "vmm/seed3"
    assert run_name(Path("runs/bench_eb/vmm-seed3")) == "vmm-seed3"
