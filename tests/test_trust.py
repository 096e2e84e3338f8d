"""Runs that mean what their configuration says (issue "Runs you can trust").

Each test pins one fault found in review and fails on the code that had it: the VMM's VI-step
gradient and M-step objective, duplicate initial means and pseudo-inputs, the run seed reaching
the initialisation, settings a model would silently ignore, Student-t draws shared by a batch,
checkpoints resumed under another configuration, and results written non-atomically.
"""

import json
import math
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from hiermix_pyro import workflow
from hiermix_pyro.config import DataConfig, ModelConfig, TrainConfig
from hiermix_pyro.metrics import top_member_accuracy
from hiermix_pyro.models import MODELS, build_model
from hiermix_pyro.models.gmm import map_objective
from hiermix_pyro.models.vampprior import pseudo_input_init
from hiermix_pyro.priors import ComponentDensity
from hiermix_pyro.train import CountTensors, seed_everything

SMALL = dict(latent_dim=3, hidden_dims=(16,))


# ---- 1. the VMM and the Bayesian GMM as in Stirn & Knowles ----


def test_vmm_vi_step_gradient_reaches_the_encoder_through_the_prior(sim_adata):
    """eq. 11 / Algorithm 1: u, pi, Lambda, alpha are fixed in the VI step, the encoder is not."""
    model = build_model("vmm", sim_adata, ModelConfig(**SMALL, n_components=8))
    z = torch.randn(16, 3)
    log_p = model.pz().log_prob(z).sum()  # the prior term of the ELBO, at fixed z
    encoder = list(model.encoder.parameters())
    grads = torch.autograd.grad(log_p, encoder, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no encoder gradient through q(mu; u)"
    frozen = [*model.prior.parameters(), *model.u.parameters()]
    assert all(g is None for g in torch.autograd.grad(log_p, frozen, allow_unused=True))


def test_vmm_svi_step_moves_encoder_not_prior(sim_adata):
    pyro.clear_param_store()
    model = build_model("vmm", sim_adata, ModelConfig(**SMALL, n_components=8))
    x, s = CountTensors.from_adata(sim_adata, split="train")[:32]
    loss = pyro.infer.Trace_ELBO().differentiable_loss(model.model, model.guide, x, s)
    loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in [*model.prior.parameters(), *model.u.parameters()])
    # the prior's own contribution to the encoder's gradient is not zero
    full = {n: p.grad.clone() for n, p in model.encoder.named_parameters()}
    model.zero_grad()
    detached = model.q_mu
    model.q_mu = lambda frozen_u=False: tuple(t.detach() for t in detached(frozen_u))
    pyro.infer.Trace_ELBO().differentiable_loss(model.model, model.guide, x, s).backward()
    assert any(not torch.allclose(full[n], p.grad) for n, p in model.encoder.named_parameters())


def test_vmm_m_step_objective_uses_expected_log_prior_of_the_means(sim_adata):
    """App. B: E_q(mu)[log p(mu)], not -KL(q(mu) || p(mu)) (which adds q's entropy)."""
    torch.manual_seed(0)
    model = build_model("vmm", sim_adata, ModelConfig(**SMALL, n_components=5))
    z = torch.randn(20, 3)
    r = torch.softmax(torch.randn(20, 5), -1)
    with torch.no_grad():
        m, v = model.q_mu()
        p = model.prior
        ell = model.expected_log_lik(z)
        without = map_objective(p.log_alpha, p.log_pi(), p.prec_tril(), r, ell, 0.0)
        term = model.objective(z, r) - without
        mu = m + v.sqrt() * torch.randn(200_000, *m.shape)  # Monte Carlo E_q(mu)[log N(mu | 0, I)]
        expected = (-0.5 * mu.pow(2) - 0.5 * math.log(2 * math.pi)).sum((1, 2)).mean()
    assert float(term) == pytest.approx(float(expected), rel=2e-3)


def test_gmm_initial_means_have_no_duplicates(sim_adata):
    """The first M-step used to copy K cells drawn with replacement (about 37 of 100 duplicated)."""
    model = build_model("gmm", sim_adata, ModelConfig(**SMALL, n_components=100))
    x, s = CountTensors.from_adata(sim_adata, split="train")[:128]
    model.prior_step(x, s)
    mu = model.prior.mu.detach()
    assert torch.unique(mu, dim=0).shape[0] == 100
    z = model.q_z(x, s).mean
    assert torch.cdist(mu, z).min() > 1e-4  # not copies of cells either: a draw from N(0, I), one Adam step on


def test_pseudo_inputs_are_distinct_cells(sim_adata):
    n_train = int((sim_adata.obs["split"] == "train").sum())
    x, _ = pseudo_input_init(sim_adata, n_train, seed=3)
    assert (
        torch.unique(x, dim=0).shape[0]
        == torch.unique(CountTensors.from_adata(sim_adata, split="train").x, dim=0).shape[0]
    )
    with pytest.raises(ValueError, match="need as many distinct training cells"):
        pseudo_input_init(sim_adata, n_train + 1)


def test_top_member_accuracy_differs_from_purity():
    from hiermix_pyro.metrics import majority_accuracy

    labels = ["a", "a", "a", "b", "b", "b"]
    clusters = [0, 0, 0, 0, 1, 1]
    confidence = [0.5, 0.6, 0.4, 0.9, 0.8, 0.7]  # cluster 0's most probable member is a "b"
    assert majority_accuracy(labels, clusters) == pytest.approx(5 / 6)
    assert top_member_accuracy(labels, clusters, confidence) == pytest.approx(3 / 6)


# ---- 2. seeds and baselines that mean what they say ----


def _components(model):
    loc, scale, _ = model.components()
    return torch.cat([loc, scale], 1).detach()


@pytest.mark.parametrize("init", ["pca_kmeans", "vae_kmeans"])
def test_run_seed_reaches_the_initialisation(init, sim_adata):
    config = ModelConfig(**SMALL, init=init, level_sizes=(3, 7), **({"init_epochs": 2} if init == "vae_kmeans" else {}))
    a, b, a2 = (build_model("momix", sim_adata, config, seed=seed) for seed in (1, 2, 1))
    torch.testing.assert_close(_components(a), _components(a2))  # reproducible
    rows = lambda t: sorted(map(tuple, t.round(decimals=4).tolist()))
    assert rows(_components(a)) != rows(_components(b))


def test_mixture_is_one_level_momix_with_the_same_options(sim_adata):
    config = ModelConfig(**SMALL, prior="studentt", init="pca_kmeans", usage_lambda=10.0, n_components=5)
    mixture = build_model("mixture", sim_adata, config)
    assert mixture.level_sizes == (5,)
    assert mixture.components()[2] is not None  # Student-t components
    assert mixture.schedule(0.0, 1.0) == {"usage_lambda": 10.0}
    structured = build_model("mixture", sim_adata, ModelConfig(**SMALL, guide="structured", init="random"))
    assert hasattr(structured, "q_y_heads")


@pytest.mark.parametrize(
    "name, setting",
    [
        ("vae", dict(prior="studentt")),
        ("vae", dict(n_components=5)),
        ("vmm", dict(em_update="closed")),
        ("gmm", dict(level_sizes=(2, 3))),
        ("indmom", dict(guide="structured")),
        ("vampprior", dict(em_lr=0.1)),
        ("mixture", dict(level_sizes=(2, 3))),
        ("momix", dict(n_components=4)),
    ],
)
def test_a_model_refuses_settings_it_does_not_use(name, setting, sim_adata):
    key = next(iter(setting))
    with pytest.raises(ValueError, match=f"model '{name}' does not use {key}="):
        build_model(name, sim_adata, ModelConfig(**SMALL, **setting))


def test_every_model_uses_the_options_it_declares():
    from dataclasses import fields

    names = {f.name for f in fields(ModelConfig)}
    for cls in MODELS.values():
        assert set(cls.options) <= names


def test_init_epochs_without_vae_kmeans_is_refused(sim_adata):
    with pytest.raises(ValueError, match=r"init_epochs=3 is for the vae_\* inits \(vae_kmeans, "):
        build_model("momix", sim_adata, ModelConfig(**SMALL, init="pca_kmeans", init_epochs=3))


def test_studentt_draws_one_scale_per_cell():
    torch.manual_seed(0)
    D, B = 400, 64
    loc, scale, df = (
        torch.zeros(2, D, dtype=torch.float64),
        torch.ones(2, D, dtype=torch.float64),
        torch.full((2,), 3.0, dtype=torch.float64),
    )
    for c in (torch.arange(2).reshape(2, 1), torch.zeros(B, dtype=torch.long)):  # enumerated / one per cell
        z = ComponentDensity(c, loc, scale, df, batch_size=B).sample()
        assert z.dtype == torch.float64
        radius = z.pow(2).mean(-1).sqrt()  # sqrt(df / chi2) per draw, up to O(1 / sqrt(D)) noise
        assert radius.reshape(-1, B).std(-1).min() > 0.2  # varies from cell to cell in every component


# ---- 3. a run is its whole configuration ----

DATA = DataConfig(dataset="simulated", n_hvg=None, subsample=240)


def test_resuming_another_configuration_fails_naming_the_keys(tmp_path):
    """The exact scenario: momix, then the same output folder with prior=studentt and lr=0.01."""
    base = ModelConfig(**SMALL, init="random")
    train = TrainConfig(epochs=1, batch_size=64, progress=False)
    workflow.run("momix", DATA, base, train, output_dir=tmp_path, n_iwae_samples=2)
    other = ModelConfig(**SMALL, init="random", prior="studentt")
    with pytest.raises(ValueError, match=r"model\.prior: 'normal' in the checkpoint, 'studentt' now; train\.lr"):
        workflow.run(
            "momix",
            DATA,
            other,
            TrainConfig(epochs=1, batch_size=64, progress=False, lr=0.01),
            output_dir=tmp_path,
            n_iwae_samples=2,
        )
    # what may change on resume does not fail: more epochs go on from the checkpoint
    metrics = workflow.run(
        "momix",
        DATA,
        base,
        TrainConfig(epochs=2, batch_size=64, progress=False, patience=5),
        output_dir=tmp_path,
        n_iwae_samples=2,
    )
    assert metrics["epochs"] == 2
    with pytest.raises(ValueError, match=r"data\.n_hvg"):
        workflow.run(
            "momix",
            DataConfig(dataset="simulated", n_hvg=50, subsample=240),
            base,
            train,
            output_dir=tmp_path,
            n_iwae_samples=2,
        )


def test_default_output_folder_tells_configurations_apart():
    folder = lambda m, t: workflow.default_output_dir("momix", DataConfig(), m, t)
    normal = folder(ModelConfig(), TrainConfig())
    assert normal != folder(ModelConfig(prior="studentt"), TrainConfig(lr=0.01))
    assert normal != folder(ModelConfig(), TrainConfig(seed=1))
    assert normal == folder(ModelConfig(), TrainConfig(epochs=500, patience=100, device="cpu", progress=False))
    assert normal.name.startswith("momix-pbmc68k-seed0-")


def test_an_interrupted_save_leaves_no_result(tmp_path, monkeypatch, sim_adata):
    adata = sim_adata.copy()
    out = tmp_path / "run"

    def broken_write(self, path, *args, **kwargs):
        open(path, "wb").write(b"half an h5ad")
        raise KeyboardInterrupt

    monkeypatch.setattr(type(adata), "write_h5ad", broken_write)
    with pytest.raises(KeyboardInterrupt):
        workflow.save_run(
            out,
            model_name="vae",
            data_config=DataConfig(),
            model_config=ModelConfig(),
            train_config=TrainConfig(),
            history=dict(device="cpu", epochs_run=1, best_epoch=1, train_seconds=1.0, seconds=[1.0]),
            scores=dict(levels=[]),
            adata=adata,
        )
    assert sorted(p.name for p in out.iterdir()) == []  # no metrics.json, no half-written adata.h5ad


def test_saved_metrics_are_complete_json(tmp_path, sim_adata):
    out = workflow.save_run(
        tmp_path,
        model_name="vae",
        data_config=DataConfig(),
        model_config=ModelConfig(),
        train_config=TrainConfig(),
        history=dict(device="cpu", epochs_run=1, best_epoch=1, train_seconds=1.0, seconds=[1.0]),
        scores=dict(levels=[]),
        adata=sim_adata.copy(),
    )
    assert sorted(p.name for p in out.iterdir()) == ["adata.h5ad", "history.json", "metrics.json"]
    assert json.loads((out / "metrics.json").read_text())["model"] == "vae"


def test_seed_everything_is_reproducible_for_numpy_too():
    seed_everything(5)
    a = np.random.rand(), torch.rand(1)
    seed_everything(5)
    assert (np.random.rand(), torch.rand(1)) == a


def test_papermill_rerun_with_other_settings_does_not_reuse_the_first_run(tmp_path, monkeypatch):
    """`papermill train.ipynb -p model momix`, then the same with `-p prior studentt -p lr 0.01`: the
    second run must train its own model in its own folder, not resume the first one's checkpoint."""
    import papermill

    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "train.ipynb"
    monkeypatch.setenv("SMOKE_TEST", "0")  # smoke runs never checkpoint: the scenario needs real runs
    tiny = dict(
        model="momix",
        dataset="simulated",
        subsample=240,
        n_hvg=None,
        epochs=1,
        latent_dim=3,
        hidden_dims=[16],
        init="random",
        batch_size=64,
        n_iwae_samples=2,
    )
    for i, extra in enumerate([{}, dict(prior="studentt", lr=0.01)]):
        papermill.execute_notebook(
            str(notebook),
            str(tmp_path / f"out{i}.ipynb"),
            kernel_name="python3",
            progress_bar=False,
            cwd=str(tmp_path),
            parameters={**tiny, **extra},
        )
    runs = sorted((tmp_path / "runs").glob("momix-simulated-seed0-*"))
    assert len(runs) == 2
    configs = [json.loads((run / "metrics.json").read_text())["config"] for run in runs]
    assert sorted(c["model"]["prior"] for c in configs) == ["normal", "studentt"]
    for run in runs:  # each folder's weights were trained under its own configuration
        saved = torch.load(run / "checkpoint.pt", weights_only=False)["run_config"]
        metrics = json.loads((run / "metrics.json").read_text())["config"]
        assert saved["model.prior"] == metrics["model"]["prior"] and saved["train.lr"] == metrics["train"]["lr"]


def test_models_fill_their_own_defaults_and_runs_record_them(sim_adata):
    """init and init_epochs left at None take each model's own default; the model's config (what a
    run saves) has them filled in; the vae, which has no start, keeps None."""
    from hiermix_pyro.models import MixtureVAE, MoMixVAE

    assert ModelConfig().init is None and ModelConfig().init_epochs is None
    assert MoMixVAE.resolve(ModelConfig()).init == "vae_leiden" and MoMixVAE.resolve(ModelConfig()).init_epochs == 50
    assert MixtureVAE.resolve(ModelConfig()).init == "vae_kmeans"
    assert (
        MoMixVAE.resolve(ModelConfig()).usage_lambda == 0.0 and MixtureVAE.resolve(ModelConfig()).usage_lambda == 100.0
    )
    assert MoMixVAE.resolve(ModelConfig(init="random")).init == "random"
    net = build_model("momix", sim_adata, ModelConfig(**SMALL, init_epochs=1))
    assert net.config.init == "vae_leiden" and net.config.init_epochs == 1
    assert build_model("vae", sim_adata, ModelConfig(**SMALL)).config.init is None
