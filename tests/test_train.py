"""The training loop: early stopping, best weights, checkpoints and resume, seeds, errors."""

import itertools

import pytest
import torch

from hiermix_pyro import train
from hiermix_pyro.config import ModelConfig, TrainConfig
from hiermix_pyro.models import build_model
from hiermix_pyro.train import fit, kl_weight, resolve_device, seed_everything

SMALL = ModelConfig(latent_dim=3, hidden_dims=(16,))


def _fit(adata, name="vae", **kwargs):
    seed_everything(0)
    model = build_model(name, adata, SMALL)
    return model, fit(model, adata, TrainConfig(batch_size=64, progress=False, **kwargs))


def test_history_and_best_weights_restored(sim_adata, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    model, h = _fit(sim_adata, epochs=4, warmup_epochs=1, patience=0, checkpoint_path=str(ckpt))
    assert h["epoch"] == [1, 2, 3, 4] and h["epochs_run"] == 4
    assert h["best_epoch"] == 1 + min(range(4), key=h["val_loss"].__getitem__)
    best = torch.load(ckpt, weights_only=False)["best_weights"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, best[k])


def test_early_stopping_keeps_best_not_last(sim_adata, monkeypatch):
    rising = itertools.count(100.0)  # validation loss only ever gets worse: epoch 1 is best
    monkeypatch.setattr(train, "evaluate_loss", lambda *a, **k: next(rising))
    _, h = _fit(sim_adata, epochs=50, warmup_epochs=2, patience=3)
    assert h["stopped_early"] and h["best_epoch"] == 1
    assert h["epochs_run"] == 4  # best at 1, then 3 epochs without improvement


def test_resume_continues_exactly(sim_adata, tmp_path):
    ckpt = str(tmp_path / "run.pt")
    _, full = _fit(sim_adata, epochs=4, patience=0)
    _fit(sim_adata, epochs=2, patience=0, checkpoint_path=ckpt)
    _, resumed = _fit(sim_adata, epochs=4, patience=0, checkpoint_path=ckpt)
    assert resumed["epoch"] == [1, 2, 3, 4]
    torch.testing.assert_close(torch.tensor(resumed["train_loss"]), torch.tensor(full["train_loss"]))


def test_interrupt_keeps_progress(sim_adata, tmp_path):
    ckpt = str(tmp_path / "run.pt")
    steps = itertools.count()

    def interrupt_in_epoch_3(model, x, s, beta):
        if next(steps) == 2 * 3:  # 160 training cells / 64 = 3 steps per epoch
            raise KeyboardInterrupt

    seed_everything(0)
    model = build_model("vae", sim_adata, SMALL)
    with pytest.warns(UserWarning, match="interrupted after epoch 2"):
        h = fit(
            model,
            sim_adata,
            TrainConfig(epochs=5, batch_size=64, progress=False, checkpoint_path=ckpt),
            step_hooks=[interrupt_in_epoch_3],
        )
    assert h["interrupted"] and h["epochs_run"] == 2
    _, h2 = _fit(sim_adata, epochs=5, checkpoint_path=ckpt)
    assert h2["epoch"] == [1, 2, 3, 4, 5] and not h2["interrupted"]


def test_same_seed_same_run_other_seed_other_run(sim_adata):
    _, a = _fit(sim_adata, epochs=2, seed=3)
    _, b = _fit(sim_adata, epochs=2, seed=3)
    _, c = _fit(sim_adata, epochs=2, seed=4)
    assert a["train_loss"] == b["train_loss"] and a["train_loss"] != c["train_loss"]


def test_fewer_cells_than_a_batch(sim_adata):
    with pytest.raises(ValueError, match="fewer than one batch of 4096"):
        fit(build_model("vae", sim_adata, SMALL), sim_adata, TrainConfig(batch_size=4096, progress=False))


def test_checkpoint_of_another_model_is_refused(sim_adata, tmp_path):
    ckpt = str(tmp_path / "run.pt")
    _fit(sim_adata, epochs=1, checkpoint_path=ckpt)
    with pytest.raises(ValueError, match="holds a VAE, not a MixtureVAE"):
        _fit(sim_adata, "mixture", epochs=1, checkpoint_path=ckpt)


def test_kl_warmup_schedule():
    assert [kl_weight(i, 4) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert kl_weight(0, 0) == 1.0


def test_device_resolution():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_batches_stay_on_device(sim_batch_adata):
    data = train.CountTensors.from_adata(sim_batch_adata, "cpu", "train")
    sizes = [x.shape[0] for x, _ in data.batches(50, shuffle=True)]
    assert sum(sizes) == len(data) and max(sizes) == 50
    assert data.s.shape == (len(data), 2) and torch.all(data.s.sum(1) == 1)


def test_checkpoint_of_other_sizes_is_refused(sim_adata, tmp_path):
    ckpt = str(tmp_path / "run.pt")
    _fit(sim_adata, epochs=1, checkpoint_path=ckpt)
    model = build_model("vae", sim_adata, ModelConfig(latent_dim=5, hidden_dims=(16,)))
    with pytest.raises(ValueError, match="another configuration .model.latent_dim: 3 in the checkpoint, 5 now"):
        fit(model, sim_adata, TrainConfig(epochs=2, batch_size=64, progress=False, checkpoint_path=ckpt))


@pytest.mark.parametrize("name", ["vae", "mixture", "momix"])
def test_jit_training_matches_eager(name, sim_batch_adata):
    """JIT-compiled steps (batch covariate, changing beta) give the same losses as eager ones."""
    _, eager = _fit(sim_batch_adata, name, epochs=2, warmup_epochs=2)
    _, jit = _fit(sim_batch_adata, name, epochs=2, warmup_epochs=2, jit=True)
    assert jit["beta"] == eager["beta"]  # 96 training cells: 2 steps an epoch eager, 1 with jit (drop_last)
    torch.testing.assert_close(torch.tensor(jit["train_loss"]), torch.tensor(eager["train_loss"]), rtol=0.05, atol=0)


def test_compiled_likelihood_matches_eager(sim_batch_adata):
    """TrainConfig(compile_likelihood=True) (torch.compile of log p(x | z)) trains momix's structured guide,
    whose decoder runs once per path, to the same losses as eager; the x site keeps its value."""
    config = ModelConfig(latent_dim=3, hidden_dims=(16,), guide="structured", init="random", level_sizes=(2, 2))
    losses = []
    for compile_ in (False, True):
        seed_everything(0)
        model = build_model("momix", sim_batch_adata, config)
        h = fit(
            model, sim_batch_adata, TrainConfig(epochs=2, batch_size=64, progress=False, compile_likelihood=compile_)
        )
        losses.append(h["train_loss"] + h["val_loss"])
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-4, atol=0)
    x = torch.poisson(torch.rand(3, sim_batch_adata.n_vars))
    with pytest.raises(ValueError, match="one x only"):
        model.px(torch.zeros(3, 3), x, torch.ones(3, 2)).log_prob(x + 1)
