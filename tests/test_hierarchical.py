"""The hierarchical mixtures (momix, indmom): sites, shapes, exactness against brute force over
all paths, valid bounds, and recovery of a simulated tree."""

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.optim import Adam

from hiermix_pyro.config import ModelConfig, TrainConfig
from hiermix_pyro.data import prepare, simulate_hierarchy
from hiermix_pyro.initialise import INITS, nested_kmeans
from hiermix_pyro.metrics import iwae, level_scores, nesting_score
from hiermix_pyro.models import IndMoMVAE, MoMixVAE, build_model
from hiermix_pyro.models.momix import usage_schedule
from hiermix_pyro.train import CountTensors, fit, seed_everything

G, B, LEVELS = 30, 5, (2, 3)
VARIANTS = [
    (MoMixVAE, "collapsed", "normal"),
    (MoMixVAE, "collapsed", "studentt"),
    (MoMixVAE, "structured", "normal"),
    (MoMixVAE, "structured", "studentt"),
    (MoMixVAE, "structured_y", "normal"),
    (IndMoMVAE, "collapsed", "normal"),
    (IndMoMVAE, "collapsed", "studentt"),
]
IDS = [f"{c.__name__}-{g}-{p}" for c, g, p in VARIANTS]


def tiny(cls, guide="collapsed", prior="normal", levels=LEVELS, seed=0, sum_paths="closed_form"):
    torch.manual_seed(seed)
    extra = dict(sum_paths=sum_paths) if cls is MoMixVAE else {}
    cfg = ModelConfig(latent_dim=3, hidden_dims=(8,), guide=guide, prior=prior, **extra)
    model = cls(G, 0, cfg, level_sizes=levels)
    with torch.no_grad():  # spread the components so the posteriors are not flat
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.poisson(torch.rand(B, G) * 10)


def sample_names(trace):
    return [name for name, site in trace.nodes.items() if site["type"] == "sample" and name != "cells"]


@pytest.mark.parametrize("cls, guide, prior", VARIANTS, ids=IDS)
def test_sites_loss_and_step(cls, guide, prior, x):
    model = tiny(cls, guide, prior)
    pyro.clear_param_store()
    elbo = TraceEnum_ELBO(max_plate_nesting=model.max_plate_nesting)
    guide_trace = poutine.trace(poutine.enum(model.guide, first_available_dim=-2)).get_trace(x)
    model_trace = poutine.trace(
        poutine.enum(poutine.replay(model.model, guide_trace), first_available_dim=-2)
    ).get_trace(x)
    ys = [f"y{l + 1}" for l in range(len(LEVELS))]
    # momix's collapsed model sums y out in closed form (no y sites); indmom enumerates them
    model_ys = ys if cls is IndMoMVAE or guide != "collapsed" else []
    assert sample_names(model_trace) == (["k"] if cls is IndMoMVAE else []) + model_ys + ["z", "x"]
    assert sample_names(guide_trace) == (["z"] if guide == "collapsed" else ys + ["z"])
    if guide == "structured_y":  # one z per cell, whatever the path: the decoder runs once
        assert guide_trace.nodes["z"]["value"].shape == (B, 3)
        assert model_trace.nodes["x"]["fn"].batch_shape == (B,)
    model_trace.compute_log_prob()
    assert model_trace.nodes["x"]["log_prob"].shape[-1] == B
    loss = elbo.loss(model.model, model.guide, x)
    assert math.isfinite(loss)
    svi = SVI(model.model, model.guide, Adam({"lr": 1e-2}), elbo)
    assert math.isfinite(svi.step(x, n_obs=100, beta=0.5, usage_lambda=10.0))
    assert math.isfinite(svi.step(x))


@pytest.mark.parametrize(
    "levels", [(2, 4, 5, 9), (3, 3, 3, 3, 3), (4, 25)], ids=["reference-360", "deeper-243", "wider-100"]
)
@pytest.mark.parametrize(
    "cls, guide",
    [(MoMixVAE, "collapsed"), (MoMixVAE, "structured"), (MoMixVAE, "structured_y"), (IndMoMVAE, "collapsed")],
)
def test_reference_deeper_and_wider_hierarchies(cls, guide, levels, x):
    """The reference's 2/4/5/9 (360 paths), a 5-level and a wide 2-level tree: finite loss, a
    step, one posterior per level that sums to one."""
    model = tiny(cls, guide, "studentt", levels=levels)
    pyro.clear_param_store()
    svi = SVI(model.model, model.guide, Adam({"lr": 1e-2}), TraceEnum_ELBO(max_plate_nesting=1))
    assert math.isfinite(svi.step(x, n_obs=100, beta=0.5, usage_lambda=10.0))
    probs = model.cluster_probs(x)
    assert [p.shape for p in probs] == [(B, k) for k in levels]
    for p in probs:
        torch.testing.assert_close(p.sum(-1), torch.ones(B))


@pytest.mark.parametrize("cls, guide, prior", VARIANTS, ids=IDS)
def test_posteriors_sum_to_one(cls, guide, prior, x):
    model = tiny(cls, guide, prior)
    probs = model.cluster_probs(x)
    assert [p.shape for p in probs] == [(B, k) for k in LEVELS]
    for p in probs:
        assert torch.allclose(p.sum(-1), torch.ones(B), atol=1e-5)
        assert (p >= 0).all()


def brute_log_p_z(model, z):
    """log sum over every path, one path at a time, with torch.distributions."""
    loc, scale, df = model.components()
    terms = []
    if isinstance(model, MoMixVAE):
        for p, ys in enumerate(itertools.product(*[range(k) for k in model.level_sizes])):
            log_py = sum(torch.log_softmax(model.prior_logits[l][ys[:l]], -1)[ys[l]] for l in range(len(ys)))
            terms.append(log_py + component_log_prob(z, loc[p], scale[p], None if df is None else df[p]))
    else:
        log_w = torch.log_softmax(model.branch_logits, -1)
        for l, logits in enumerate(model.prior_logits):
            for y in range(len(logits)):
                c = int(model.first[l]) + y
                log_py = log_w[l] + torch.log_softmax(logits, -1)[y]
                terms.append(log_py + component_log_prob(z, loc[c], scale[c], None if df is None else df[c]))
    return torch.logsumexp(torch.stack(terms), 0)


def component_log_prob(z, loc, scale, df):
    if df is None:
        return torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    # multivariate t with diagonal scale: a scaled Gaussian mixed over a Gamma precision
    D = z.shape[-1]
    quad = (((z - loc) / scale) ** 2).sum(-1)
    return (
        torch.lgamma((df + D) / 2)
        - torch.lgamma(df / 2)
        - D / 2 * torch.log(df * math.pi)
        - scale.log().sum()
        - (df + D) / 2 * torch.log1p(quad / df)
    )


@pytest.mark.parametrize("cls, guide, prior", VARIANTS, ids=IDS)
def test_log_p_z_equals_sum_over_paths(cls, guide, prior):
    model = tiny(cls, guide, prior)
    z = 1.5 * torch.randn(2, B, 3)
    with torch.no_grad():
        assert torch.allclose(model.log_p_z(z), brute_log_p_z(model, z), atol=1e-4)


def test_studentt_matches_pyro_multivariate_t():
    model = tiny(MoMixVAE, prior="studentt")
    loc, scale, df = model.components()
    z = torch.randn(B, 3)
    mvt = dist.MultivariateStudentT(df[4], loc[4], torch.diag(scale[4]))
    with torch.no_grad():
        assert torch.allclose(component_log_prob(z, loc[4], scale[4], df[4]), mvt.log_prob(z), atol=1e-4)


def test_path_order_is_row_major():
    """The flattened prior table and the enumerated path index agree (the reference's bug)."""
    model = tiny(MoMixVAE, levels=(2, 3, 4))
    table = model.log_prior_paths()  # [2, 3, 4]
    for ys in itertools.product(range(2), range(3), range(4)):
        c = model.path_index([torch.tensor(y) for y in ys])
        assert table.reshape(-1)[c] == table[ys]


@pytest.mark.parametrize("sum_paths", ["closed_form", "enumerate"])
def test_collapsed_elbo_equals_brute_force(x, sum_paths):
    """The collapsed ELBO, with y summed out in closed form or enumerated by Pyro in the model,
    = hand-written sum over paths, same z."""
    model = tiny(MoMixVAE, "collapsed", "normal", sum_paths=sum_paths)
    assert model.enumerated == (sum_paths == "enumerate")
    pyro.set_rng_seed(3)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model.model, model.guide, x)
    pyro.set_rng_seed(3)
    q = model.q_z(x)
    z = q.sample()  # the same draw as the guide's (Normal.rsample under the same seed)
    with torch.no_grad():
        elbo = (model.px(z, x).log_prob(x) + brute_log_p_z(model, z) - q.log_prob(z)).sum()
    assert loss == pytest.approx(-elbo.item(), rel=1e-5)


def test_structured_elbo_equals_brute_force(x):
    """TraceEnum_ELBO (y enumerated in the guide) = sum over paths of q(y | x) times the
    single-path ELBO, with the z that the guide drew for each path."""
    model = tiny(MoMixVAE, "structured", "normal")
    pyro.set_rng_seed(4)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model.model, model.guide, x)
    pyro.set_rng_seed(4)
    z_all = poutine.trace(poutine.enum(model.guide, first_available_dim=-2)).get_trace(x).nodes["z"]["value"]
    K1, K2 = LEVELS
    loc, scale, _ = model.components()
    h = model.encoder.hidden(x)
    log_q_y = model.log_q_paths(h)  # [B, K1, K2]
    log_p_y = model.log_prior_paths()  # [K1, K2]
    elbo = torch.zeros(B)
    with torch.no_grad():
        for y1, y2 in itertools.product(range(K1), range(K2)):
            z = z_all[y2, y1]  # [B, D]: enumeration dims are [K2, K1, B]
            onehot = (
                torch.cat(
                    [
                        torch.nn.functional.one_hot(torch.tensor(y1), K1),
                        torch.nn.functional.one_hot(torch.tensor(y2), K2),
                    ]
                )
                .float()
                .expand(B, -1)
            )
            q_loc, q_scale = model.encoder.head(torch.cat([h, onehot], -1))
            p = y1 * K2 + y2
            term = (
                model.px(z, x).log_prob(x)
                + dist.Normal(loc[p], scale[p]).log_prob(z).sum(-1)
                + log_p_y[y1, y2]
                - dist.Normal(q_loc, q_scale).log_prob(z).sum(-1)
                - log_q_y[:, y1, y2]
            )
            elbo += log_q_y[:, y1, y2].exp() * term
    assert loss == pytest.approx(-elbo.sum().item(), rel=1e-5)


def test_structured_y_elbo_equals_brute_force(x):
    """guide="structured_y": TraceEnum_ELBO = E_q(z | x)[log p(x | z) - log q(z | x)] + sum over
    paths of q(y | x) (log p(y) + log p(z | y) - log q(y | x)), with the guide's one z per cell."""
    model = tiny(MoMixVAE, "structured_y", "normal")
    assert model.encoder.head.loc.in_features == 8  # no one-hot y inputs
    pyro.set_rng_seed(5)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model.model, model.guide, x)
    pyro.set_rng_seed(5)
    z = poutine.trace(poutine.enum(model.guide, first_available_dim=-2)).get_trace(x).nodes["z"]["value"]  # [B, D]
    K1, K2 = LEVELS
    loc, scale, _ = model.components()
    q_z = model.q_z(x)
    log_q_y = model.log_q_paths(model.encoder.hidden(x))  # [B, K1, K2]
    log_p_y = model.log_prior_paths()  # [K1, K2]
    with torch.no_grad():
        elbo = model.px(z, x).log_prob(x) - q_z.log_prob(z)
        for y1, y2 in itertools.product(range(K1), range(K2)):
            p = y1 * K2 + y2
            log_p_z_y = dist.Normal(loc[p], scale[p]).log_prob(z).sum(-1)
            elbo += log_q_y[:, y1, y2].exp() * (log_p_y[y1, y2] + log_p_z_y - log_q_y[:, y1, y2])
    assert loss == pytest.approx(-elbo.sum().item(), rel=1e-5)


def test_take_enumerated_is_vindex():
    """The permuted view used for enumerated paths equals Pyro's Vindex gather (3 levels, a trailing dim)."""
    from pyro.ops.indexing import Vindex

    from hiermix_pyro.priors import take_enumerated

    def levels():
        with pyro.plate("cells", 4, dim=-1):
            return [
                pyro.sample(f"y{l}", dist.Categorical(logits=torch.zeros(k)), infer={"enumerate": "parallel"})
                for l, k in enumerate((2, 3, 4))
            ]

    ys = poutine.enum(levels, first_available_dim=-2)()
    table = torch.randn(2, 3, 4, 5)
    out = take_enumerated(table, ys)
    assert out.shape == (4, 3, 2, 1, 5)
    assert torch.equal(out, Vindex(table)[tuple(ys)])
    sampled = [torch.tensor([1, 0]), torch.tensor([2, 1])]  # not enumerated: the gather itself
    assert torch.equal(take_enumerated(table, sampled), Vindex(table)[tuple(sampled)])


def _path_terms(model, z):
    """Per path p, by brute force: log p(y_p) ``[P]`` and log p(z | y_p) ``[B, P]``."""
    loc, scale, _ = model.components()
    log_py = torch.stack(
        [
            sum(torch.log_softmax(model.prior_logits[l][ys[:l]], -1)[ys[l]] for l in range(len(ys)))
            for ys in itertools.product(*[range(k) for k in model.level_sizes])
        ]
    )
    log_pz_y = torch.stack([dist.Normal(loc[p], scale[p]).log_prob(z).sum(-1) for p in range(len(log_py))], -1)
    return log_py, log_pz_y


@pytest.mark.parametrize("beta, beta_y", [(0.5, 0.2), (0.3, 1.0), (1.0, 0.0)])
def test_collapsed_discrete_kl_weight(x, beta, beta_y):
    """With beta_y, the collapsed objective is log p(x | z) - beta E_r[log q(z | x) - log p(z | y)]
    - beta_y KL(r || p(y)), r = p(y | z) (brute force over paths, same z); beta_y = beta is the
    beta-weighted ELBO."""
    model = tiny(MoMixVAE, "collapsed", "normal")
    losses = {}
    for by in (beta_y, beta):
        pyro.set_rng_seed(6)
        losses[by] = TraceEnum_ELBO(max_plate_nesting=1).loss(model.model, model.guide, x, beta=beta, beta_y=by)
    pyro.set_rng_seed(6)
    q = model.q_z(x)
    z = q.sample()
    with torch.no_grad():
        log_py, log_pz_y = _path_terms(model, z)
        log_r = torch.log_softmax(log_py + log_pz_y, -1)  # [B, P]
        r = log_r.exp()
        kl_z = (r * (q.log_prob(z).unsqueeze(-1) - log_pz_y)).sum(-1)
        kl_y = (r * (log_r - log_py)).sum(-1)
        log_px = model.px(z, x).log_prob(x)
    assert losses[beta_y] == pytest.approx(-(log_px - beta * kl_z - beta_y * kl_y).sum().item(), rel=1e-5)
    assert losses[beta] == pytest.approx(-(log_px - beta * (kl_z + kl_y)).sum().item(), rel=1e-5)


@pytest.mark.parametrize("beta, beta_y", [(0.5, 0.2), (1.0, 0.0)])
def test_structured_discrete_kl_weight(x, beta, beta_y):
    """Structured guide: sum_y q(y | x) [log p(x | z_y) - beta KL_z(y)] - beta_y KL(q(y | x) || p(y))."""
    model = tiny(MoMixVAE, "structured", "normal")
    pyro.set_rng_seed(7)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model.model, model.guide, x, beta=beta, beta_y=beta_y)
    pyro.set_rng_seed(7)
    z_all = poutine.trace(poutine.enum(model.guide, first_available_dim=-2)).get_trace(x).nodes["z"]["value"]
    K1, K2 = LEVELS
    h = model.encoder.hidden(x)
    log_q_y = model.log_q_paths(h).reshape(B, -1)  # [B, P]
    with torch.no_grad():
        log_py, _ = _path_terms(model, z_all[0, 0])
        loc, scale, _ = model.components()
        elbo = -beta_y * (log_q_y.exp() * (log_q_y - log_py)).sum(-1)
        for y1, y2 in itertools.product(range(K1), range(K2)):
            z, p = z_all[y2, y1], y1 * K2 + y2
            onehot = (
                torch.cat(
                    [
                        torch.nn.functional.one_hot(torch.tensor(y1), K1),
                        torch.nn.functional.one_hot(torch.tensor(y2), K2),
                    ]
                )
                .float()
                .expand(B, -1)
            )
            q_z = dist.Normal(*model.encoder.head(torch.cat([h, onehot], -1))).to_event(1)
            kl_z = q_z.log_prob(z) - dist.Normal(loc[p], scale[p]).to_event(1).log_prob(z)
            elbo += log_q_y[:, p].exp() * (model.px(z, x).log_prob(x) - beta * kl_z)
    assert loss == pytest.approx(-elbo.sum().item(), rel=1e-5)


def test_indmom_discrete_kl_weight_is_zero_at_equal_weights(x):
    model = tiny(IndMoMVAE)
    losses = []
    for kwargs in ({"beta": 0.4}, {"beta": 0.4, "beta_y": 0.4}, {"beta": 0.4, "beta_y": 0.0}):
        pyro.set_rng_seed(8)
        losses.append(TraceEnum_ELBO(max_plate_nesting=1).loss(model.model, model.guide, x, **kwargs))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert losses[2] < losses[0]  # a smaller weight on a positive KL: a smaller loss


@pytest.mark.parametrize("jit", [False, True])
def test_fit_with_discrete_warmup(jit):
    adata = prepare(simulate_hierarchy(branching=(2, 2), cells_per_leaf=40, n_genes=40, seed=2), n_hvg=None, seed=0)
    seed_everything(0)
    model = build_model("momix", adata, ModelConfig(latent_dim=3, hidden_dims=(16,), init="random"))
    h = fit(
        model,
        adata,
        TrainConfig(epochs=3, batch_size=32, warmup_epochs=2, warmup_epochs_discrete=0, progress=False, jit=jit),
    )
    assert np.isfinite(h["train_loss"]).all() and np.isfinite(h["val_loss"]).all()
    with pytest.raises(ValueError, match="not VAE"):
        fit(
            build_model("vae", adata, ModelConfig(latent_dim=3, hidden_dims=(16,))),
            adata,
            TrainConfig(epochs=1, batch_size=32, warmup_epochs_discrete=1, progress=False),
        )


def test_cluster_posterior_matches_pyro_enumeration(x):
    """p(y | z) computed by the model = TraceEnum_ELBO.compute_marginals for the same z (Pyro
    needs the y sites: the model with y enumerated, ``sum_paths="enumerate"``)."""
    model = tiny(MoMixVAE, "collapsed", "normal", sum_paths="enumerate")
    pyro.set_rng_seed(5)
    marginals = TraceEnum_ELBO(max_plate_nesting=1).compute_marginals(model.model, model.guide, x)
    pyro.set_rng_seed(5)
    z = model.q_z(x).sample()
    with torch.no_grad():
        joint = model.log_posterior_paths(z).exp().reshape(B, *LEVELS)
        for l, p in enumerate(model._level_marginals(joint)):
            assert torch.allclose(marginals[f"y{l + 1}"].probs, p, atol=1e-5)


def test_usage_schedule_and_plain_default(x):
    assert usage_schedule(0.0, 0.3) == {}
    assert usage_schedule(100.0, 0.0)["usage_lambda"] == pytest.approx(100.0)
    assert usage_schedule(100.0, 0.5)["usage_lambda"] == pytest.approx(100.0)
    assert usage_schedule(100.0, 0.75)["usage_lambda"] == pytest.approx(55.0)
    assert usage_schedule(100.0, 1.0)["usage_lambda"] == pytest.approx(10.0)
    model = tiny(MoMixVAE)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    losses = []
    for kwargs in ({}, {"usage_lambda": 0.0}, {"usage_lambda": 50.0}):
        pyro.set_rng_seed(0)
        losses.append(elbo.loss(model.model, model.guide, x, **kwargs))
    assert losses[0] == losses[1] < losses[2]


@pytest.mark.parametrize("guide", ["collapsed", "structured", "structured_y"])
def test_iwae_is_a_valid_bound(guide):
    """IWAE_1 ~ ELBO (exact in y), IWAE grows with S (on average over cells)."""
    model = tiny(MoMixVAE, guide, "normal")
    torch.manual_seed(2)
    data = CountTensors(torch.poisson(torch.rand(40, G) * 10))
    seed_everything(0)
    means = [
        np.mean([iwae(model, data, n_samples=s).mean() for _ in range(reps)])
        for s, reps in ((1, 50), (10, 10), (200, 1))
    ]
    assert means[0] <= means[1] <= means[2]
    if guide == "collapsed":  # a single-sample IWAE is the collapsed ELBO (exact in y)
        pyro.set_rng_seed(0)
        elbo = -TraceEnum_ELBO(max_plate_nesting=1, num_particles=50).loss(model.model, model.guide, data.x) / len(data)
        assert means[0] == pytest.approx(elbo, abs=0.05 * abs(elbo))
    else:  # marginalising y out of q (and p) only tightens the bound
        pyro.set_rng_seed(0)
        structured_elbo = -TraceEnum_ELBO(max_plate_nesting=1, num_particles=20).loss(
            model.model, model.guide, data.x
        ) / len(data)
        assert means[2] >= structured_elbo


def test_nested_kmeans_nests():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 4))
    labels = nested_kmeans(emb, (2, 4, 7))
    assert [len(np.unique(lab)) for lab in labels] == [2, 4, 7]
    assert nesting_score(labels[0], labels[1]) == 1.0 and nesting_score(labels[1], labels[2]) == 1.0


def test_ward_groups_is_scipy_ward_and_weighs_sizes():
    """Equal weights: the same partitions as scipy's Ward linkage at every cut. Unequal weights:
    a large cluster is not merged with a far small one before two near small ones."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from sklearn.metrics import adjusted_rand_score

    from hiermix_pyro.initialise import nested_ward, ward_groups

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 3))
    groups = ward_groups(centres, np.ones(12), (2, 3, 5))
    tree = linkage(centres, method="ward")
    for k in (2, 3, 5):
        assert len(np.unique(groups[k])) == k
        assert adjusted_rand_score(groups[k], fcluster(tree, k, criterion="maxclust")) == 1.0
    # 0 and 1 are small and 1 apart; 2 is huge, 0.8 from 1: joining 1 to it costs ~0.64 > 0.5
    pts, w = np.array([[0.0], [1.0], [1.8]]), np.array([1.0, 1.0, 1000.0])
    assert ward_groups(pts, w, (2,))[2].tolist() == [0, 0, 1]
    assert ward_groups(pts, np.ones(3), (2,))[2].tolist() == [0, 1, 1]  # unweighted: 1 joins 2
    labels = nested_ward(rng.normal(size=(200, 4)), (2, 4, 7))
    assert [len(np.unique(lab)) for lab in labels] == [2, 4, 7]
    assert nesting_score(labels[0], labels[1]) == 1.0 and nesting_score(labels[1], labels[2]) == 1.0


def test_init_restarts_keep_the_best_validation_elbo():
    """R initialisations, seeds s + 1000 r; the model ends with the one of the highest validation
    ELBO, and init_restarts=1 is the plain initialisation of seed s."""
    adata = prepare(simulate_hierarchy(branching=(2, 2), cells_per_leaf=30, n_genes=40, seed=0), n_hvg=None)
    cfg = ModelConfig(latent_dim=3, hidden_dims=(16,), init="vae_ward", init_epochs=2, init_restarts=3)
    model = build_model("momix", adata, cfg, seed=2)
    seeds, scores = zip(*model.init_scores)
    assert seeds == (2, 1002, 2002) and len(set(scores)) == 3
    from hiermix_pyro.metrics.likelihood import elbo

    seed_everything(seeds[int(np.argmax(scores))])  # the kept model is the best candidate: its score again
    assert elbo(model, CountTensors.from_adata(adata, split="validation")) == pytest.approx(max(scores), rel=1e-6)
    from hiermix_pyro import workflow

    workflow.annotate(model, adata)
    recorded = workflow.evaluate(model, adata, n_iwae_samples=2)  # metrics.json says which start was kept
    assert [(r["seed"], r["val_elbo"]) for r in recorded["init_scores"]] == list(model.init_scores)
    assert recorded["init_seed"] == seeds[int(np.argmax(scores))]
    once = build_model("momix", adata, ModelConfig(**{**vars(cfg), "init_restarts": 1}), seed=2)
    workflow.annotate(once, adata)
    assert "init_scores" not in workflow.evaluate(once, adata, n_iwae_samples=2)
    with pytest.raises(ValueError, match="init_restarts must be at least 1"):
        build_model("momix", adata, ModelConfig(init="random", init_restarts=0))


def test_momix_recovers_simulated_tree():
    """A well-separated 4-level tree (2/4/8/16 types): level ARI close to 1 at every level.

    "Well separated" is checked first: nested k-means on PCA of the log-normalised counts finds
    every level (ARI >= 0.95). Much larger offsets (effect size 6) are *not* easier: the
    up-regulated genes of the first split then take most of each library and squeeze the
    fine-level genes to a few counts, and PCA + k-means itself stops at ARI 0.75 at levels 2-3.
    """
    from hiermix_pyro.initialise import nested_kmeans, pca_embedding

    adata = prepare(
        simulate_hierarchy(
            branching=(2, 2, 2, 2),
            cells_per_leaf=40,
            n_genes=200,
            seed=0,
            effect_size=3.0,
            effect_decay=0.8,
            de_fraction=0.2,
            library_sd=0.05,
        ),
        n_hvg=None,
    )
    levels = adata.uns["hiermix"]["levels"]
    pca_levels = nested_kmeans(pca_embedding(adata, 20), (2, 4, 8, 16))
    assert min(s["ari"] for s in level_scores(adata.obs, levels, pca_levels)) >= 0.95
    seed_everything(0)
    cfg = ModelConfig(latent_dim=10, hidden_dims=(128,), init="vae_kmeans", init_epochs=80)
    model = build_model("momix", adata, cfg)
    fit(model, adata, TrainConfig(epochs=20, batch_size=64, lr=3e-3, warmup_epochs=2, patience=0, progress=False))
    probs = model.cluster_probs(CountTensors.from_adata(adata).x)
    scores = level_scores(adata.obs, levels, [p.argmax(1).numpy() for p in probs])
    aris = [s["ari"] for s in scores]
    assert min(aris[:3]) > 0.99, aris  # the coarse levels are recovered exactly
    assert aris[3] > 0.9, aris  # 16 leaves: seeds 0-2 gave 0.96-0.98


def test_path_mixture_is_the_summed_out_prior():
    """PathMixture: log_prob = logsumexp over components of log w + log N, any leading dims;
    samples have the batch and event shape; sum_paths is checked."""
    from hiermix_pyro.priors import DiagComponents, PathMixture

    torch.manual_seed(0)
    loc, scale = torch.randn(6, 3), torch.rand(6, 3) + 0.5
    log_w = torch.randn(6).log_softmax(-1)
    pz = PathMixture(log_w, DiagComponents(loc, scale), batch_size=5)
    z = torch.randn(7, 5, 3)
    by_hand = (log_w + dist.Normal(loc, scale).log_prob(z.unsqueeze(-2)).sum(-1)).logsumexp(-1)
    assert torch.allclose(pz.log_prob(z), by_hand, atol=1e-5)
    assert torch.allclose(pz.log_posterior(z).exp().sum(-1), torch.ones(7, 5))
    assert pz.sample((4,)).shape == (4, 5, 3) and pz.expand((2, 5)).sample().shape == (2, 5, 3)
    with pytest.raises(ValueError, match="sum_paths one of"):
        tiny(MoMixVAE, sum_paths="sometimes")
    with pytest.raises(ValueError, match="sum_paths is for the collapsed guide"):
        tiny(MoMixVAE, "structured", sum_paths="enumerate")


def test_set_components_by_prefix_sums_equals_masks():
    """momix's components from per-prefix sums (O(N) per level) = the direct per-prefix masks,
    empty paths (jittered next to their parent, the same random draws) included."""
    from hiermix_pyro.initialise import set_components

    rng = np.random.default_rng(0)
    Ks = (2, 3, 4)
    emb = rng.normal(size=(150, 3)).astype(np.float32)
    labels = [rng.integers(0, k, 150) for k in Ks]
    labels[2][labels[2] == 3] = 2  # path (., ., 3) is empty everywhere: jitter
    model = tiny(MoMixVAE, levels=Ks)
    torch.manual_seed(7)
    set_components(model, emb, labels, q_var=np.full(3, 0.1))
    # the reference: one mask per prefix
    e, extra = torch.as_tensor(emb), torch.full((3,), 0.1)
    sd = (e.var(0) + extra).sqrt()
    a = model.log_level_scale.exp().detach()
    lab = torch.as_tensor(np.stack(labels, 1))
    torch.manual_seed(7)
    parent_mean = {(): e.mean(0)}
    for l in range(len(Ks)):
        for prefix in np.ndindex(*Ks[: l + 1]):
            mask = (lab[:, : l + 1] == torch.tensor(prefix)).all(1)
            parent = parent_mean[prefix[:-1]]
            mean = e[mask].mean(0) if mask.any() else parent + 0.1 * a[l] * sd * torch.randn_like(sd)
            parent_mean[prefix] = mean
            assert torch.allclose(model.offsets[l][prefix], (mean - parent) / a[l], atol=1e-4), (l, prefix)
            assert float(model.prior_logits[l][prefix].exp()) == pytest.approx(float(mask.sum()) + 0.01, rel=1e-5)
    for p, prefix in enumerate(np.ndindex(*Ks)):
        cells = e[(lab == torch.tensor(prefix)).all(1)]
        expected = (cells.var(0) + extra).sqrt().clamp(min=1e-2) if len(cells) > 2 else sd / math.sqrt(max(Ks))
        assert torch.allclose(model.log_sigma[p].exp(), expected, atol=1e-4), prefix


def test_the_marginal_likelihood_does_not_see_the_tree():
    """Move a fine component from one parent to another (swap paths (0, 2) and (1, 0)) and refit the
    offsets and conditionals to the moved components: p(z) = sum_y p(y) p(z | y), and so the ELBO and
    log p(x), are unchanged while the coarse level's posteriors change. With free offsets and
    conditionals, the data cannot tell the two trees apart: the tree comes from the initialisation
    (the book's hierarchical chapter and results page)."""
    model = tiny(MoMixVAE)
    with torch.no_grad():
        for p in (*model.offsets, *model.prior_logits):
            p.normal_()
        model.log_sigma.normal_(0.0, 0.3)
    loc, scale, _ = model.components()
    prior = model.log_prior_paths().exp()  # [K1, K2]
    perm = torch.arange(model.n_paths)
    perm[2], perm[3] = 3, 2  # path (0, 2) <-> path (1, 0)
    moved = tiny(MoMixVAE)
    K1, K2 = LEVELS
    a = moved.log_level_scale.exp()
    with torch.no_grad():
        moved.load_state_dict(model.state_dict())
        new_loc, new_prior = loc[perm].reshape(K1, K2, -1), prior.reshape(-1)[perm].reshape(K1, K2)
        moved.offsets[1].copy_((new_loc - a[0] * moved.offsets[0][:, None]) / a[1])
        moved.log_sigma.copy_(model.log_sigma[perm])
        moved.prior_logits[0].copy_(new_prior.sum(1).log())
        moved.prior_logits[1].copy_(new_prior.log())
    z = torch.randn(7, 3)
    torch.testing.assert_close(moved.log_p_z(z), model.log_p_z(z))
    coarse = [m.log_posterior_paths(z).exp().reshape(7, K1, K2).sum(-1) for m in (model, moved)]
    assert (coarse[0] - coarse[1]).abs().max() > 1e-3  # the same density, another tree


def test_leiden_levels_finds_k_clusters_per_level_and_samples_large_data():
    from sklearn.metrics import adjusted_rand_score

    from hiermix_pyro.initialise import leiden_levels

    rng = np.random.default_rng(0)
    coarse = np.repeat([0, 1], 150)  # two far groups of two near clusters each
    fine = np.repeat([0, 1, 2, 3], 75)
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [30.0, 0.0], [33.0, 0.0]])
    emb = centres[fine] + 0.3 * rng.standard_normal((300, 2))
    labels = leiden_levels(emb, (2, 4), seed=0)
    assert [len(np.unique(lab)) for lab in labels] == [2, 4]
    assert adjusted_rand_score(coarse, labels[0]) == 1.0 and adjusted_rand_score(fine, labels[1]) == 1.0
    sampled = leiden_levels(emb, (2, 4), seed=0, max_cells=120)  # the other 180 cells join the nearest centre
    assert all(len(lab) == 300 for lab in sampled) and adjusted_rand_score(fine, sampled[1]) == 1.0
    # asked for more clusters than the graph holds apart, or fewer: always labels in 0..K-1
    assert all(lab.max() < k for lab, k in zip(leiden_levels(emb, (3, 5), seed=1), (3, 5)))


def test_nested_single_puts_the_widest_gap_on_top():
    """vae_leiden_single: Leiden finds the 5 fine clusters, and single linkage splits off the small
    far group first, where Ward's size-weighted rule pairs it with a large group."""
    from sklearn.metrics import adjusted_rand_score

    from hiermix_pyro.initialise import nested_single, ward_groups

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [11.0, 0.0], [14.0, 0.0], [7.0, 13.0]])  # A1 A2 B1 B2, S far
    sizes = [100, 100, 100, 100, 20]
    fine = np.repeat(np.arange(5), sizes)
    emb = centres[fine] + 0.3 * rng.standard_normal((len(fine), 2))
    labels = nested_single(emb, (2, 3, 5), seed=0)
    assert adjusted_rand_score(fine, labels[2]) == 1.0
    assert adjusted_rand_score(fine == 4, labels[0]) == 1.0  # S | A1 A2 B1 B2
    assert adjusted_rand_score(np.array([0, 0, 1, 1, 2])[fine], labels[1]) == 1.0  # A | B | S
    assert nesting_score(labels[0], labels[1]) == 1.0 and nesting_score(labels[1], labels[2]) == 1.0
    ward = ward_groups(centres, np.array(sizes, dtype=float), [2])[2]
    assert len(np.unique(ward[:4])) == 2  # Ward's top split cuts A from B instead


def test_nested_leiden_ward_merges_the_fine_leiden_clusters():
    """vae_leiden_ward: Leiden finds the 5 fine clusters; the coarser levels are Ward's merges of
    them, weighted by their sizes (so the small far group S joins a large one), and nest."""
    from sklearn.metrics import adjusted_rand_score

    from hiermix_pyro.initialise import nested_leiden_ward, ward_groups

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [11.0, 0.0], [14.0, 0.0], [7.0, 13.0]])
    sizes = [100, 100, 100, 100, 20]
    fine = np.repeat(np.arange(5), sizes)
    emb = centres[fine] + 0.3 * rng.standard_normal((len(fine), 2))
    labels = nested_leiden_ward(emb, (2, 3, 5), seed=0)
    assert adjusted_rand_score(fine, labels[2]) == 1.0
    found = np.stack([emb[labels[2] == j].mean(0) for j in range(5)])
    expected = ward_groups(found, np.bincount(labels[2]), [2, 3])
    assert adjusted_rand_score(expected[2][labels[2]], labels[0]) == 1.0
    assert adjusted_rand_score(expected[3][labels[2]], labels[1]) == 1.0
    assert adjusted_rand_score(np.array([0, 0, 1, 1, 2])[fine], labels[1]) == 1.0  # A | B | S
    top = labels[0][fine < 4]  # A | B on top, S (small: cheap to merge) inside one of them
    assert adjusted_rand_score(fine[fine < 4] < 2, top) == 1.0 and len(np.unique(labels[0][fine == 4])) == 1
    assert nesting_score(labels[0], labels[1]) == 1.0 and nesting_score(labels[1], labels[2]) == 1.0


def broad_and_bimodal(seed: int = 0):
    """A broad Gaussian cloud of 1,000 cells (sd 3, no sub-structure) and, far from it, two tight
    clusters of 100 cells 1 apart (sd 0.1): the group labels [1200] (0 broad; 1, 2 tight) and the
    points [1200, 2]."""
    rng = np.random.default_rng(seed)
    group = np.repeat([0, 1, 2], [1000, 100, 100])
    centres = np.array([[0.0, 0.0], [40.0, 0.0], [41.0, 0.0]])
    return group, centres[group] + np.array([3.0, 0.1, 0.1])[group, None] * rng.standard_normal((1200, 2))


def test_gaussian_split_gains_the_mixture_log_likelihood():
    """gaussian_split: the labels of a two-component diagonal mixture and its log-likelihood minus
    one diagonal Gaussian's, which is ~0 for one Gaussian cloud and large for two tight clusters."""
    from sklearn.mixture import GaussianMixture

    from hiermix_pyro.initialise import gaussian_loglik, gaussian_split

    group, x = broad_and_bimodal()
    one = GaussianMixture(1, covariance_type="diag").fit(x[group == 0])
    assert gaussian_loglik(x[group == 0]) == pytest.approx(one.score(x[group == 0]) * 1000, rel=1e-6)
    labels, gain = gaussian_split(x[group > 0], seed=0)
    assert (labels == (group[group > 0] == 2)).all() | (labels == (group[group > 0] == 1)).all()
    # per cell: 0.5 log(var one / var two) in the split direction (0.26 / 0.01) minus log 2 for the weights
    assert gain == pytest.approx(200 * (0.5 * math.log(0.26 / 0.01) - math.log(2)), rel=0.1)
    assert abs(gaussian_split(x[group == 0], seed=0)[1]) < 20  # a Gaussian gains little from two components
    assert gaussian_split(x[:3], seed=0)[1] == -np.inf  # too few rows to split


def test_divisive_splits_follow_the_likelihood_where_the_sum_of_squares_would_not():
    """divisive_splits: top down from one group, each split the group that gains the most. The
    likelihood splits the two tight clusters; the sum of squares (two-means) would cut the broad
    cloud, which holds far more of it. Levels nest, and a start partition is kept."""
    from sklearn.cluster import KMeans

    from hiermix_pyro.initialise import divisive_splits

    group, x = broad_and_bimodal()
    levels = divisive_splits(x, (2, 3), seed=0)
    assert [len(np.unique(lab)) for lab in levels] == [2, 3]
    assert (levels[0] == (group > 0)).all() | (levels[0] == (group == 0)).all()  # broad | tight pair
    assert len(np.unique(levels[1][group == 0])) == 1 and len(np.unique(levels[1][group > 0])) == 2
    assert nesting_score(levels[0], levels[1]) == 1.0

    def two_means(rows, seed):
        fit = KMeans(2, n_init=10, random_state=seed).fit(rows)
        return fit.labels_, ((rows - rows.mean(0)) ** 2).sum() - fit.inertia_

    by_variance = divisive_splits(x, (3,), seed=0, split=two_means, start=group > 0)[0]
    assert len(np.unique(by_variance[group == 0])) == 2  # the sum of squares cuts the broad cloud
    assert (divisive_splits(x[:3], (4,), seed=0)[0] == 0).all()  # stops where no group can be split


def test_divisive_levels_samples_large_data():
    """vae_divisive's labels: coarse levels from the counts' PCA, the finest by Leiden on the latent;
    above max_cells the other cells join the nearest coarse centre in the latent."""
    from hiermix_pyro.initialise import divisive_levels, leiden_levels

    adata = simulate_hierarchy(branching=(2, 2), cells_per_leaf=40, n_genes=40, seed=0)
    truth = adata.obs["L2"].astype(str).to_numpy()
    emb = np.eye(4)[np.unique(truth, return_inverse=True)[1]] * 5.0 + 0.1 * np.random.default_rng(0).standard_normal(
        (160, 4)
    )
    for max_cells in (10_000, 100):
        levels = divisive_levels(adata, emb, (2, 4), n_components=3, seed=0, max_cells=max_cells)
        assert [len(lab) for lab in levels] == [160, 160] and len(np.unique(levels[0])) == 2
        assert len(np.unique(levels[1])) == 4
    # vae_divisive_top: the first level by the split, the others by Leiden on the latent (here its 4 blobs)
    top = divisive_levels(adata, emb, (2, 3, 4), n_components=3, seed=0, n_divisive=1)
    assert [len(np.unique(lab)) for lab in top] == [2, 3, 4]
    assert (top[2] == leiden_levels(emb, (4,), seed=0)[0]).all()


@pytest.mark.parametrize("init", [init for init in INITS if init.startswith("vae_")])
def test_vae_inits_set_the_used_paths(init):
    """Every VAE-based initialisation ends with the cells' paths carrying almost all prior mass."""
    adata = prepare(simulate_hierarchy(branching=(2, 2), cells_per_leaf=30, n_genes=40, seed=0), n_hvg=None)
    model = build_model("momix", adata, ModelConfig(latent_dim=3, hidden_dims=(16,), init=init, init_epochs=2), seed=0)
    weights = model.log_prior_paths().exp().reshape(-1)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert 2 <= int((weights > 0.01).sum()) <= 8 and weights.topk(4).values.sum() > 0.5


def sparse_tiny(guide="collapsed"):
    torch.manual_seed(0)
    cfg = ModelConfig(latent_dim=3, hidden_dims=(8,), guide=guide, sparse_levels=True)
    return MoMixVAE(G, 0, cfg, level_sizes=(2, 4))


def test_sparse_levels_factor_is_inverse_gamma_times_dirichlet(x):
    """sparse_levels: the model's one extra factor = sum_l log InvGamma(alpha_l | 1, 1) +
    log Dir(p(yl) | alpha_l / K_l), p(yl) the prior's marginal usage of level l."""
    model = sparse_tiny()
    with torch.no_grad():
        model.log_level_alpha.copy_(torch.tensor([0.3, -0.5]))
        for logits in model.prior_logits:
            logits.copy_(torch.randn_like(logits))
    trace = poutine.trace(model.model).get_trace(x)
    factor = trace.nodes["level_usage"]["fn"].log_prob(trace.nodes["level_usage"]["value"])
    table = model.log_prior_paths().exp()  # [2, 4]
    expected = 0.0
    for alpha, usage in zip(model.log_level_alpha.exp(), (table.sum(1), table.sum(0))):
        K = usage.shape[-1]
        expected += dist.InverseGamma(1.0, 1.0).log_prob(alpha) + dist.Dirichlet(alpha / K * torch.ones(K)).log_prob(
            usage
        )
    assert float(factor) == pytest.approx(float(expected), rel=1e-5)
    # without the option there is no such factor, and no alpha
    plain = tiny(MoMixVAE)
    assert "level_usage" not in poutine.trace(plain.model).get_trace(x).nodes
    assert not hasattr(plain, "log_level_alpha")


def test_sparse_levels_prior_switches_clusters_off():
    """Maximised alone, the sparse prior empties clusters: fewer than K_l keep 1% of a level's usage."""
    model = sparse_tiny()
    with torch.no_grad():
        model.prior_logits[1].copy_(torch.randn(2, 4))
    optim = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        optim.zero_grad()
        (-model.log_level_usage_prior()).backward()
        optim.step()
    used = [int((u.exp() > 0.01).sum()) for u in model.level_usage()]
    assert used[0] < 2 and used[1] < 4


@pytest.mark.parametrize("guide", ["collapsed", "structured_y"])
def test_sparse_levels_trains(guide, x):
    model = sparse_tiny(guide)
    pyro.clear_param_store()
    svi = SVI(model.model, model.guide, Adam({"lr": 1e-2}), TraceEnum_ELBO(max_plate_nesting=1))
    before = model.log_level_alpha.detach().clone()
    assert math.isfinite(svi.step(x, n_obs=100))
    assert not torch.equal(before, model.log_level_alpha.detach())  # alpha is learned


@pytest.mark.parametrize("guide", ["collapsed", "structured", "structured_y"])
def test_vae_start_fits_the_guides_cluster_heads(guide, monkeypatch):
    """A vae_* start fits q(y | x) of the structured guides to its clusters (the collapsed guide
    has no q(y | x)); the fit raises the share of training cells whose most likely path under
    q(y | x) is their own."""
    import hiermix_pyro.initialise as initialise_module

    adata = prepare(simulate_hierarchy(branching=(2, 2), cells_per_leaf=40, n_genes=40, seed=0), n_hvg=None)
    cfg = ModelConfig(latent_dim=4, hidden_dims=(16,), guide=guide, init="vae_kmeans", init_epochs=20)
    calls, fit = [], initialise_module.fit_cluster_heads
    monkeypatch.setattr(initialise_module, "fit_cluster_heads", lambda *a, **k: calls.append(fit(*a, **k)))
    model = MoMixVAE.from_adata(adata, cfg, seed=0)
    assert len(calls) == (guide != "collapsed")
    if guide == "collapsed":
        return
    train = (adata.obs["split"] == "train").to_numpy()
    truth = [adata.obs[level].cat.codes.to_numpy()[train] for level in ("L1", "L2")]  # 2 and 4 classes
    fresh = MoMixVAE(adata.n_vars, 0, cfg, level_sizes=model.level_sizes)
    fresh.encoder.load_state_dict(model.encoder.state_dict())  # the pre-trained trunk
    assert fit(fresh, adata, truth, steps=1) < 0.6 < 0.8 < fit(fresh, adata, truth, steps=300)
