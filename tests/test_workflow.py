"""The main job end to end on simulated data, and its error messages."""

import json
from pathlib import Path

import pytest
import scanpy as sc
import torch

import hiermix_pyro
from hiermix_pyro.config import DataConfig, ModelConfig, TrainConfig
from hiermix_pyro.workflow import check_names, default_output_dir, run, smoke_test_requested


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid models: vae, mixture"):
        check_names("momox", "pbmc68k")
    with pytest.raises(ValueError, match="valid datasets: pbmc68k, pbmc_sorted"):
        check_names("vae", "pbmc86k")


def test_smoke_flag(monkeypatch):
    monkeypatch.delenv("SMOKE_TEST", raising=False)
    assert not smoke_test_requested(False) and smoke_test_requested(True)
    monkeypatch.setenv("SMOKE_TEST", "1")
    assert smoke_test_requested(False)
    monkeypatch.setenv("SMOKE_TEST", "0")
    assert not smoke_test_requested(False)
    out = default_output_dir("vae", DataConfig(), ModelConfig(), TrainConfig(), smoke=True)
    assert out.parts[:2] == ("runs", "smoke") and out.name.startswith("vae-pbmc68k-seed0-")


@pytest.mark.parametrize("model", ["vae", "mixture"])
def test_run_writes_metrics_latent_and_clusters(model, tmp_path):
    out = tmp_path / model
    metrics = run(
        model,
        DataConfig(dataset="simulated", n_hvg=None),
        ModelConfig(latent_dim=3, hidden_dims=(16,)),
        TrainConfig(epochs=2, batch_size=64, progress=False),
        output_dir=out,
        n_iwae_samples=3,
    )
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    for key in ("model", "dataset", "seed", "device", "epochs", "train_seconds", "levels", "iwae", "elbo", "version"):
        assert key in metrics
    assert [lvl["level"] for lvl in metrics["levels"]] == ["L1", "L2", "L3", "L4"]
    env = metrics["environment"]  # what besides the code and the configuration decides the numbers
    assert env["packages"]["torch"] in (torch.__version__, torch.__version__.split("+")[0])
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["processor"]
    assert Path(env["package_path"]) == Path(hiermix_pyro.__file__).resolve().parent
    for lvl in metrics["levels"]:
        assert {"n_classes", "ari", "nmi", "weighted_f1", "purity", "accuracy", "utilized_clusters"} <= set(lvl)
    adata = sc.read_h5ad(out / "adata.h5ad")
    assert adata.obsm["X_latent"].shape == (adata.n_obs, 3)
    assert {f"cluster_L{i}" for i in range(1, 5)} <= set(adata.obs)
    assert (out / "checkpoint.pt").exists()


def test_tuple_settings_from_command_line_strings():
    """papermill -p passes list-valued settings as strings: they become tuples, not characters."""
    from hiermix_pyro.config import DataConfig, ModelConfig, from_dict

    assert from_dict(DataConfig, {"drop_labels": '["CD14+ Monocyte"]'}).drop_labels == ("CD14+ Monocyte",)
    assert from_dict(DataConfig, {"drop_labels": "CD14+ Monocyte"}).drop_labels == ("CD14+ Monocyte",)
    assert from_dict(DataConfig, {"drop_labels": ["a", "b"]}).drop_labels == ("a", "b")
    assert from_dict(ModelConfig, {"hidden_dims": "[100, 100]"}).hidden_dims == (100, 100)
    assert from_dict(ModelConfig, {"level_sizes": "(2, 4)", "hidden_dims": 64}) == ModelConfig(
        level_sizes=(2, 4), hidden_dims=(64,)
    )
    assert from_dict(ModelConfig, {"level_sizes": None}).level_sizes is None
