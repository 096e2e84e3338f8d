"""Benchmark grids: variant parsing, ModelConfig and TrainConfig settings per variant, collection."""

import pytest

from hiermix_pyro.bench import collect, parse_variant, run_grid, variant_label

DATA = dict(dataset="simulated", n_hvg=None, subsample=240)
SMALL = dict(latent_dim=3, hidden_dims=(16,), init="random")


def test_parse_variant_reads_literals():
    assert parse_variant("momix:guide=structured,level_sizes=(2,3),usage_lambda=0") == (
        "momix",
        {"guide": "structured", "level_sizes": (2, 3), "usage_lambda": 0},
    )
    assert (
        variant_label("momix:guide=collapsed,warmup_epochs_discrete=0")
        == "momix-guidecollapsed-warmup_epochs_discrete0"
    )


def test_variants_set_model_and_train_options(tmp_path):
    df = run_grid(
        ["vae", "momix:level_sizes=(2,2),warmup_epochs_discrete=0,epochs=2"],
        [0],
        data=DATA,
        model=SMALL,
        train=dict(epochs=1, batch_size=64),
        out_dir=tmp_path,
        n_iwae_samples=2,
    )
    epochs = df.groupby("variant").epochs.first()
    assert epochs["vae"] == 1 and epochs["momix:level_sizes=(2,2),warmup_epochs_discrete=0,epochs=2"] == 2
    again = collect(tmp_path)  # finished runs are collected, not run again
    assert len(again) == len(df)
    with pytest.raises(ValueError, match="unknown settings colour"):
        run_grid(["vae:colour=red"], [0], data=DATA, out_dir=tmp_path)
