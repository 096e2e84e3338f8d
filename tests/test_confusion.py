"""benchmarks/confusion.py: per-level confusions of a study's runs, averaged over seeds."""

import importlib.util
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def confusion():
    spec = importlib.util.spec_from_file_location("confusion", ROOT / "benchmarks" / "confusion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_confusions_of_models_and_peers(tmp_path, confusion):
    truth = np.array(["a", "a", "a", "a", "b", "b"])
    runs = tmp_path / "runs" / "study" / "data"
    for seed, aligned in enumerate([["a", "a", "b", "b", "b", "b"], ["a", "a", "a", "a", "b", "b"]]):
        # a model run: adata.h5ad with its levels and aligned clusters
        obs = pd.DataFrame({"L1": truth, "aligned_L1": aligned}, index=[f"c{i}" for i in range(6)])
        adata = ad.AnnData(np.zeros((6, 2), dtype=np.float32), obs=obs.astype("category"))
        adata.uns["hiermix"] = {"levels": ["L1"]}
        (runs / "model" / f"seed{seed}").mkdir(parents=True)
        adata.write_h5ad(runs / "model" / f"seed{seed}" / "adata.h5ad")
        # a peer run: labels.csv
        (runs / "peer" / f"seed{seed}").mkdir(parents=True)
        obs.to_csv(runs / "peer" / f"seed{seed}" / "labels.csv", index_label="cell")
    (runs / "old_peer" / "seed0").mkdir(parents=True)  # finished before peers saved their labels
    df = confusion.confusions("study", "data", ["model", "peer", "old_peer"], root=str(tmp_path / "runs"))
    assert set(df["method"]) == {"model", "peer"}
    for method in ("model", "peer"):
        row = df[(df["method"] == method) & (df["true"] == "a") & (df["aligned"] == "b")].iloc[0]
        assert row["fraction"] == pytest.approx(0.25) and row["n_seeds"] == 2  # 2/4 then 0/4
        assert row["sd"] == pytest.approx(np.std([0.5, 0.0], ddof=1))
        b = df[(df["method"] == method) & (df["true"] == "b") & (df["aligned"] == "b")].iloc[0]
        assert b["fraction"] == pytest.approx(1.0)
