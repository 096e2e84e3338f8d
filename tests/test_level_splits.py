"""benchmarks/level_splits.py: which group a rule without labels splits at each level, given the
true level above (the sum of squares against a diagonal Gaussian mixture's likelihood)."""

import importlib.util
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def level_splits():
    spec = importlib.util.spec_from_file_location("level_splits", ROOT / "benchmarks" / "level_splits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def broad_and_pair(seed: int = 0):
    """L1: a broad cloud (1,000 cells, sd 3) | a pair of tight clusters 1 apart (100 + 100, sd 0.1);
    L2: the cloud, the first and the second tight cluster. Returns the points [1200, 2] and the levels."""
    rng = np.random.default_rng(seed)
    group = np.repeat([0, 1, 2], [1000, 100, 100])
    z = np.array([[0.0, 0.0], [40.0, 0.0], [41.0, 0.0]])[group]
    z = z + np.array([3.0, 0.1, 0.1])[group, None] * rng.standard_normal((1200, 2))
    levels = pd.DataFrame(
        {"L1": np.where(group == 0, "cloud", "pair"), "L2": np.array(["cloud", "p1", "p2"])[group]},
        index=[f"c{i}" for i in range(1200)],
    )
    return z, levels


def test_the_likelihood_splits_the_pair_and_the_sum_of_squares_the_cloud(level_splits):
    z, levels = broad_and_pair()
    table = pd.DataFrame(level_splits.embedding_rows(z, levels, ["L1", "L2"], seed=0))
    assert set(table["rule"]) == {"variance", "likelihood"}
    l2 = table[table["level"] == "L2"].set_index(["rule", "group"])
    # from the true L1, one split more: the likelihood splits the pair (the true L2), two-means the cloud
    assert (
        l2.loc[("likelihood", "pair"), "greedy_splits"] == 1 and l2.loc[("likelihood", "cloud"), "greedy_splits"] == 0
    )
    assert l2.loc[("variance", "cloud"), "greedy_splits"] == 1 and l2.loc[("variance", "pair"), "greedy_splits"] == 0
    assert l2.loc[("likelihood", "pair"), "greedy_ari"] == pytest.approx(1.0)
    assert l2.loc[("variance", "pair"), "greedy_ari"] < 0.5
    # forced: every parent split into its true children by the rule's clustering: both find the pair
    assert l2.xs("pair", level="group")["forced_ari"].tolist() == pytest.approx([1.0, 1.0])
    # the pair's true split: half of its sum of squares (the centres 1 apart, sd 0.1), as a share of the total
    total = ((z - z.mean(0)) ** 2).sum()
    assert l2.loc[("variance", "pair"), "labelled_gain"] == pytest.approx(200 * 0.25 / total, rel=0.05)
    # and its log-likelihood gain, weights included: 0.5 log(0.26 / 0.01) - log 2 per cell
    assert l2.loc[("likelihood", "pair"), "labelled_gain"] == pytest.approx(
        200 * (0.5 * np.log(0.26 / 0.01) - np.log(2)), rel=0.1
    )
    assert np.isnan(l2.loc[("likelihood", "cloud"), "labelled_gain"])  # one true child: nothing to split


def test_main_reads_the_runs_latents_and_writes_the_table(tmp_path, level_splits, capsys):
    z, levels = broad_and_pair()
    for seed in (0, 1):
        adata = ad.AnnData(np.zeros((len(z), 1), dtype=np.float32), obs=levels.astype("category"))
        adata.obsm["X_latent"] = z.astype(np.float32)
        folder = tmp_path / "runs" / "study" / "data" / "model" / f"seed{seed}"
        folder.mkdir(parents=True)
        adata.write_h5ad(folder / "adata.h5ad")
    out = tmp_path / "splits.csv"
    level_splits.main(
        ["study", "data", "model", "--runs", str(tmp_path / "runs"), "--levels", "L1", "L2", "--csv", str(out)]
    )
    table = pd.read_csv(out)
    assert sorted(table["seed"].unique()) == [0, 1] and set(table["embedding"]) == {"model"}
    assert len(table) == 2 * 2 * (1 + 2)  # seeds x rules x (L1: one parent, L2: two)
    with pytest.raises(SystemExit):
        level_splits.main(["study", "data", "model", "--runs", str(tmp_path / "runs"), "--levels", "L1", "L9"])
    with pytest.raises(SystemExit):  # a method and --pca
        level_splits.main(["study", "data", "model", "--pca"])
    capsys.readouterr()
