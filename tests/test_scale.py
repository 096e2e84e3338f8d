"""Large data: counts stay sparse (CSR) to the minibatch, backed files are read in row blocks,
preparation copies nothing it need not, evaluation scales (minibatch k-means, a capped IWAE
sample, a subsampled UMAP), and the scale benchmark runs end to end on a tiny file."""

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch

from hiermix_pyro import workflow
from hiermix_pyro.config import DataConfig, ModelConfig, TrainConfig
from hiermix_pyro.data import (
    RowBlocks,
    is_backed,
    load_dataset,
    prepare,
    seurat_v3_genes,
    simulate_hierarchy,
    simulate_large,
    validate_counts,
)
from hiermix_pyro.data import preprocess as preprocess_module
from hiermix_pyro.models import build_model
from hiermix_pyro.train import ChunkedCounts, CountTensors, fit

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ("L1", "L2", "L3")


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    """A small simulated file (cells in cell-type order, as simulate_large writes them)."""
    adata = simulate_large(1500, branching=(2, 2, 2), n_genes=120, seed=3)
    del adata.uns["hiermix"]
    path = tmp_path_factory.mktemp("scale") / "cells.h5ad"
    adata.write_h5ad(path)
    return path


def test_count_tensors_densify_minibatches_exactly(sim_batch_adata):
    data = CountTensors.from_adata(sim_batch_adata, "cpu", "train")
    X = sim_batch_adata.X[(sim_batch_adata.obs["split"] == "train").to_numpy()].toarray()
    assert torch.equal(data.x, torch.as_tensor(X))
    idx = torch.tensor([5, 0, 3, 5])
    x, s = data[idx]
    assert torch.equal(x, torch.as_tensor(X[[5, 0, 3, 5]])) and s.shape == (4, 2)
    seen = torch.cat([x for x, _ in data.batches(17, shuffle=True)])
    assert seen.shape == X.shape and torch.equal(seen.sum(0), torch.as_tensor(X).sum(0))


def test_count_tensors_share_the_matrix_on_the_cpu(sim_adata):
    """A split on the CPU is a list of rows into adata.X's own arrays: no copy of the counts."""
    data = CountTensors.from_adata(sim_adata, "cpu", "train")
    assert np.shares_memory(data.values.numpy(), sim_adata.X.data)
    assert np.shares_memory(data.indices.numpy(), sim_adata.X.indices)
    assert len(data) == (sim_adata.obs["split"] == "train").sum()


def test_count_tensors_from_dense_and_duplicates():
    dense = torch.poisson(torch.rand(20, 7) * 3)
    assert torch.equal(CountTensors(dense).x, dense)
    X = sp.csr_matrix((np.array([1.0, 2.0, 3.0]), np.array([1, 1, 4]), np.array([0, 2, 3])), shape=(2, 5))
    assert not X.has_canonical_format  # column 1 twice in row 0: added, as toarray does
    assert torch.equal(CountTensors(X).x, torch.as_tensor(X.toarray(), dtype=torch.float32))


@pytest.mark.parametrize("batch_key", [None, "batch"])
def test_seurat_v3_in_blocks_equals_scanpy(batch_key):
    adata = simulate_hierarchy(branching=(2, 3), cells_per_leaf=80, n_genes=300, n_batches=3, seed=2)
    reference = sc.pp.highly_variable_genes(
        adata.copy(), flavor="seurat_v3", n_top_genes=60, batch_key=batch_key, inplace=False
    )
    ours = seurat_v3_genes(adata, 60, batch_key=batch_key)
    assert (ours["highly_variable"].to_numpy() == reference["highly_variable"].to_numpy()).all()
    np.testing.assert_allclose(ours["variances_norm"], reference["variances_norm"], rtol=1e-6)
    np.testing.assert_array_equal(ours["highly_variable_rank"], reference["highly_variable_rank"])


def test_prepare_keeps_the_matrix_when_nothing_is_dropped(sim_adata):
    raw = simulate_hierarchy(branching=(2, 2), cells_per_leaf=30, n_genes=50, seed=0)
    out = prepare(raw, n_hvg=None)
    assert out is not raw and np.shares_memory(out.X.data, raw.X.data)
    assert "split" not in raw.obs  # the input's obs is untouched


def test_prepare_large_hvg_goes_through_blocks(monkeypatch):
    """Above HVG_BLOCKS_ABOVE non-zeros the same genes come from the row-block statistics."""
    raw = simulate_hierarchy(branching=(2, 2), cells_per_leaf=60, n_genes=200, seed=1)
    small = prepare(raw, n_hvg=50)
    monkeypatch.setattr(preprocess_module, "HVG_BLOCKS_ABOVE", 0)
    large = prepare(raw, n_hvg=50)
    assert list(large.var_names) == list(small.var_names)
    assert (large.obs["split"] == small.obs["split"]).all()


def test_backed_file_prepares_like_memory(h5ad):
    memory = load_dataset(h5ad, level_keys=LEVELS, backed=False)
    backed = load_dataset(h5ad, level_keys=LEVELS, backed=True)
    assert backed.X is None and is_backed(backed) and not is_backed(memory)
    kwargs = dict(n_hvg=40, subsample=1200, seed=1)
    memory, backed = prepare(memory, **kwargs), prepare(backed, **kwargs)
    assert is_backed(backed)
    assert list(backed.var_names) == list(memory.var_names)
    assert list(backed.obs_names) == list(memory.obs_names)
    assert (backed.obs["split"] == memory.obs["split"]).all()
    for split in ("train", "test"):
        chunked = CountTensors.from_adata(backed, "cpu", split)
        assert isinstance(chunked, ChunkedCounts)
        assert torch.equal(chunked.x, CountTensors.from_adata(memory, "cpu", split).x)


def test_backed_batches_visit_every_cell_once(h5ad):
    adata = prepare(load_dataset(h5ad, level_keys=LEVELS, backed=True), n_hvg=None)
    data = ChunkedCounts(adata, np.arange(adata.n_obs), block_rows=64, buffer_blocks=3)
    reference = CountTensors.from_adata(prepare(load_dataset(h5ad, level_keys=LEVELS, backed=False), n_hvg=None)).x
    for shuffle in (False, True):
        xs = [x for x, _ in data.batches(50, shuffle=shuffle)]
        assert [len(x) for x in xs[:-1]] == [50] * (len(xs) - 1)  # leftovers join the next pool
        seen = torch.cat(xs)
        assert seen.shape == reference.shape
        order = np.lexsort(seen.numpy().T)
        assert torch.equal(seen[order], reference[np.lexsort(reference.numpy().T)])
        if not shuffle:
            assert torch.equal(seen, reference)  # file order
    dropped = [x for x, _ in data.batches(50, shuffle=True, drop_last=True)]
    assert all(len(x) == 50 for x in dropped) and len(dropped) == adata.n_obs // 50
    x, _ = data[[7, 3]]
    assert torch.equal(x, reference[[7, 3]])


def test_backed_reads_sparse_positions_in_stretches(h5ad):
    """Cells spread over the file are read a stretch at a time (4 x block_rows rows), not as
    one range from the first to the last: the same counts, bounded memory."""
    memory = load_dataset(h5ad, level_keys=LEVELS, backed=False)
    backed = load_dataset(h5ad, level_keys=LEVELS, backed=True)
    positions = np.sort(np.random.default_rng(0).choice(memory.n_obs, 50, replace=False))
    blocks = RowBlocks(backed, block_rows=16)  # stretches of 64 rows
    calls = []
    with_read = blocks.read(positions[:1])  # opens the file
    original = blocks._file.read
    blocks._file.read = lambda a, b: calls.append(b - a) or original(a, b)
    out = blocks.read(positions)
    assert with_read.shape == (1, memory.n_vars) and max(calls) <= 64 and len(calls) > 1
    assert (out != memory.X[positions]).nnz == 0
    blocks.close()


def test_backed_validation_reports_bad_counts(tmp_path):
    adata = simulate_large(200, branching=(2,), n_genes=20, seed=0)
    adata.X.data[5] = -1.0
    del adata.uns["hiermix"]
    adata.write_h5ad(tmp_path / "bad.h5ad")
    loaded = load_dataset(tmp_path / "bad.h5ad", labels_key="L1", backed=True)
    with pytest.raises(ValueError, match="1 negative values"):
        validate_counts(loaded)
    blocks = RowBlocks(loaded, block_rows=64)
    assert len(blocks) == 4 and sum(block.shape[0] for _, block in blocks) == 200


def test_backed_needs_csr(tmp_path):
    adata = simulate_large(100, branching=(2,), n_genes=10, seed=0)
    adata.X = sp.csc_matrix(adata.X)
    del adata.uns["hiermix"]
    adata.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(ValueError, match="not csr_matrix"):
        load_dataset(tmp_path / "csc.h5ad", labels_key="L1", backed=True)


def test_run_on_a_backed_file(h5ad, tmp_path, monkeypatch):
    """The whole job with the counts left on disk (HIERMIX_BACKED=1): trains, scores, saves
    adata.h5ad without X, and records the IWAE's sample of test cells."""
    monkeypatch.setenv("HIERMIX_BACKED", "1")
    monkeypatch.setattr(workflow, "LIKELIHOOD_MAX_CELLS", 100)
    metrics = workflow.run(
        "vae",
        DataConfig(dataset=str(h5ad), level_keys=LEVELS, n_hvg=None),
        ModelConfig(latent_dim=3, hidden_dims=(16,)),
        TrainConfig(epochs=1, batch_size=64, progress=False),
        output_dir=tmp_path / "run",
        n_iwae_samples=3,
    )
    assert metrics["likelihood_cells"] == 100 and metrics["likelihood_max_cells"] == 100
    assert np.isfinite(metrics["iwae"]) and metrics["n_cells"] == 1500
    saved = ad.read_h5ad(tmp_path / "run" / "adata.h5ad")
    assert saved.X is None and saved.obsm["X_latent"].shape == (1500, 3)
    assert saved.uns["hiermix"]["backed"]["path"] == str(h5ad.resolve())


def test_likelihood_cap_is_a_seeded_sample(sim_adata):
    model = build_model("vae", sim_adata, ModelConfig(latent_dim=3, hidden_dims=(16,)))
    fit(model, sim_adata, TrainConfig(epochs=1, batch_size=64, progress=False))
    workflow.annotate(model, sim_adata)
    n_test = int((sim_adata.obs["split"] == "test").sum())
    full = workflow.evaluate(model, sim_adata, n_iwae_samples=2)
    assert full["likelihood_cells"] == n_test and full["likelihood_max_cells"] == workflow.LIKELIHOOD_MAX_CELLS
    capped = [workflow.evaluate(model, sim_adata, n_iwae_samples=2, max_likelihood_cells=10) for _ in range(2)]
    assert capped[0]["likelihood_cells"] == 10 and capped[0]["iwae"] == capped[1]["iwae"]
    assert workflow.evaluate(model, sim_adata, n_iwae_samples=2, max_likelihood_cells=0)["likelihood_max_cells"] is None


def test_minibatch_kmeans_above_the_threshold(sim_adata, monkeypatch):
    adata = sim_adata.copy()
    model = build_model("vae", adata, ModelConfig(latent_dim=3, hidden_dims=(16,)))
    monkeypatch.setattr(workflow, "KMEANS_FULL_MAX", 50)
    workflow.annotate(model, adata, seed=0)
    for level in adata.uns["hiermix"]["levels"]:
        n = adata.obs[level].nunique()
        assert adata.obs[f"cluster_{level}"].nunique() <= n and adata.uns["hiermix"]["level_map"][level] == "kmeans"


def test_umap_on_a_seeded_subsample(sim_adata):
    from hiermix_pyro import plotting

    adata = sim_adata.copy()
    adata.obsm["X_latent"] = np.random.default_rng(0).normal(size=(adata.n_obs, 3)).astype(np.float32)
    fig = plotting.plot_latent_umap(adata, color=["L2"], max_cells=100, seed=1)
    coords = adata.obsm[plotting.UMAP_KEY]
    assert np.isfinite(coords).all(1).sum() == 100 and adata.uns["umap_latent"] == {"n_cells": 100, "seed": 1}
    assert "neighbors_latent" not in adata.uns  # no graph over all cells
    adata.obs["cluster_L2"] = adata.obs["L2"]
    plotting.plot_level_panels(adata, ["L2"], ["cluster_L2"])
    assert "100 of" in fig.get_suptitle()


def test_simulate_large_shapes_and_sparsity():
    a, b = simulate_large(2000, seed=4), simulate_large(2000, seed=4, chunk_cells=700)
    assert a.shape == (2000, 2000) and sp.issparse(a.X) and a.X.dtype == np.float32
    assert (a.X != b.X).nnz == 0  # chunking does not change the draws
    assert 0.07 < a.X.nnz / np.prod(a.shape) < 0.13  # about 10% non-zeros at 2,000 genes
    codes = a.obs["L4"].cat.codes.to_numpy()
    assert (np.diff(codes) >= 0).all() and len(np.unique(codes)) == 16  # cell-type order
    assert isinstance(a.obs["L1"].dtype, pd.CategoricalDtype)


def test_scale_benchmark_runs_tiny(tmp_path):
    """benchmarks/scale.py end to end on a tiny file, both modes, one model: the CSV's columns."""
    csv = tmp_path / "scale.csv"
    cmd = [sys.executable, "benchmarks/scale.py", "--cells", "1200", "--models", "vae", "--memory-only"]
    cmd += ["--data-dir", str(tmp_path / "data"), "--csv", str(csv)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    df = pd.read_csv(csv)
    assert list(df["mode"]) == ["memory", "backed"] and (df["n_cells"] == 1200).all()
    assert (df["peak_rss_gib"] > 0).all() and df["train_cells_per_s"].isna().all()
    assert {f"rss_{phase}_gib" for phase in ("load", "train", "annotate", "evaluate", "save", "figures")} <= set(df)
    json.dumps(df.to_dict())  # plain values


def test_scale_table_merges_parts(tmp_path):
    """A part of the grid replaces its own rows of the table and keeps the others."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scale_bench", ROOT / "benchmarks" / "scale.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    csv = str(tmp_path / "scale.csv")
    row = dict(n_genes=10, peak_rss_gib=1.0, train_cells_per_s=None, train_cells_per_cpu_s=None)
    scale.write(
        [dict(model="vae", mode="memory", n_cells=100, **row), dict(model="vae", mode="backed", n_cells=100, **row)],
        csv,
    )
    scale.write([dict(model="vae", mode="memory", n_cells=100, **{**row, "train_cells_per_s": 5.0})], csv)
    df = pd.read_csv(csv)
    assert len(df) == 2 and df.set_index("mode").loc["memory", "train_cells_per_s"] == 5.0
    assert np.isnan(df.set_index("mode").loc["backed", "train_cells_per_s"])
