"""Tests of hiermix_pyro.data: loaders, hierarchy, simulator, validation, preprocessing."""

from __future__ import annotations

import io
import tarfile

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.io
import scipy.sparse as sp

from hiermix_pyro.data import (
    DATASETS,
    add_hierarchy,
    default_hierarchy,
    download_pbmc_purified,
    load_dataset,
    loaders,
    prepare,
    read_10x_purified_tarball,
    resolve_data_dir,
    simulate_hierarchy,
    validate_counts,
)

SORTED_FILE = loaders._PACKAGE_DATA_DIR / "pbmc_sorted.h5ad"
TECH_FILE = loaders._PACKAGE_DATA_DIR / "pbmc_3tech.h5ad"


@pytest.fixture(scope="module")
def pbmc68k() -> ad.AnnData:
    return load_dataset("pbmc68k")


def small_adata(counts=None, labels=("a", "a", "b", "b")) -> ad.AnnData:
    """Four cells x three genes of counts with a label and a batch column."""
    counts = np.array([[1, 0, 2], [0, 3, 1], [4, 1, 0], [2, 2, 2]]) if counts is None else counts
    obs = pd.DataFrame({"label": list(labels), "batch": ["x", "y", "x", "y"]})
    obs.index = obs.index.astype(str)
    return ad.AnnData(np.asarray(counts, dtype=np.float32), obs=obs)


# --- embedded pbmc68k -----------------------------------------------------------------------


def test_pbmc68k_counts_are_integers(pbmc68k):
    reference = sc.datasets.pbmc68k_reduced()
    n_counts = reference.obs["n_counts"].to_numpy()[:, None]
    product = np.expm1(reference.raw.X.toarray().astype(np.float64)) * n_counts / 1e4
    counts = pbmc68k.X.toarray()
    assert sp.isspmatrix_csr(pbmc68k.X) and pbmc68k.X.dtype == np.float32
    assert pbmc68k.shape == (700, 765)
    assert list(pbmc68k.var_names) == list(reference.raw.var_names)
    assert np.abs(counts - product).max() < 0.1
    assert (counts >= 0).all() and (counts == np.rint(counts)).all()


def test_pbmc68k_totals_match_n_counts(pbmc68k):
    # n_counts is the total over all genes, of which raw keeps 765: totals are a part of it,
    # and the scale is right when every cell's smallest non-zero count is exactly one
    totals = np.asarray(pbmc68k.X.sum(axis=1)).ravel()
    assert (totals <= pbmc68k.obs["n_counts"].to_numpy() + 0.5).all()
    smallest = [row.data.min() for row in pbmc68k.X]
    assert np.all(np.asarray(smallest) == 1)


def test_pbmc68k_hierarchy(pbmc68k):
    info = pbmc68k.uns["hiermix"]
    levels = ["L1", "L2", "L3", "L4"]
    assert info == {"dataset": "pbmc68k", "levels": levels, "labels_key": "L4", "batch_key": None}
    dendritic = pbmc68k.obs[pbmc68k.obs["bulk_labels"] == "Dendritic"].iloc[0]
    assert (dendritic["L1"], dendritic["L2"], dendritic["L3"]) == ("non-stem", "myeloid", "myeloid")
    assert (pbmc68k.obs["L4"].astype(str) == pbmc68k.obs["bulk_labels"].astype(str)).all()
    assert all(isinstance(pbmc68k.obs[level].dtype, pd.CategoricalDtype) for level in levels)


# --- named real sets and the data directory -------------------------------------------------


@pytest.mark.skipif(not SORTED_FILE.exists(), reason="pbmc_sorted.h5ad not available")
def test_pbmc_sorted_hierarchy_without_monocytes():
    adata = load_dataset("pbmc_sorted", data_dir=SORTED_FILE.parent, drop_labels=("CD14+ Monocyte",))
    levels = adata.uns["hiermix"]["levels"]
    assert [adata.obs[level].cat.categories.size for level in levels] == [2, 4, 5, 9]
    assert adata.n_obs == 3874 - 168
    assert "CD14+ Monocyte" not in adata.obs["cell_type"].cat.categories


@pytest.mark.skipif(not TECH_FILE.exists(), reason="pbmc_3tech.h5ad not available")
@pytest.mark.filterwarnings("ignore:dropping:UserWarning")
def test_pbmc_3tech_batches():
    adata = load_dataset("pbmc_3tech", data_dir=TECH_FILE.parent)
    assert adata.uns["hiermix"]["batch_key"] == "batch"
    assert adata.uns["hiermix"]["levels"] == ["cell_type"]
    assert set(adata.obs["batch"].cat.categories) == {"V3", "V2", "VDJ"}
    prepared = prepare(adata, n_hvg=100)
    assert prepared.n_vars == 100


def test_data_dir_resolution(tmp_path, monkeypatch):
    assert resolve_data_dir(tmp_path) == tmp_path
    monkeypatch.setenv("HIERMIX_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match="pbmc_sorted.h5ad not found.*HIERMIX_DATA_DIR"):
        load_dataset("pbmc_sorted")


def test_data_dir_error_names_every_place(tmp_path, monkeypatch):
    monkeypatch.delenv("HIERMIX_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loaders, "_PACKAGE_DATA_DIR", tmp_path / "beside_repo")
    with pytest.raises(FileNotFoundError) as error:
        resolve_data_dir()
    message = str(error.value)
    assert str(tmp_path.parent / "shared" / "data") in message
    assert str(tmp_path / "beside_repo") in message and "HIERMIX_DATA_DIR" in message


# --- user AnnData and h5ad files ------------------------------------------------------------


def test_anndata_input_is_copied():
    user = small_adata()
    adata = load_dataset(user, labels_key="label", batch_key="batch")
    info = {"dataset": "AnnData", "levels": ["label"], "labels_key": "label", "batch_key": "batch"}
    assert adata.uns["hiermix"] == info
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert "hiermix" not in user.uns and user.obs["label"].dtype == object


def test_h5ad_path_and_layer(tmp_path):
    user = small_adata()
    user.layers["counts"] = user.X.copy()
    user.X = np.log1p(user.X)
    path = tmp_path / "user.h5ad"
    user.write_h5ad(path)
    adata = load_dataset(path, labels_key="label", layer="counts")
    np.testing.assert_array_equal(adata.X.toarray(), user.layers["counts"])
    assert adata.uns["hiermix"]["dataset"] == str(path)
    with pytest.raises(ValueError, match="layer 'raw' not found"):
        load_dataset(str(path), labels_key="label", layer="raw")


def test_custom_hierarchy_from_csv(tmp_path):
    table = tmp_path / "tree.csv"
    table.write_text("label,lineage\na,first\nb,second\n")
    adata = load_dataset(small_adata(), labels_key="label", hierarchy=table)
    assert adata.uns["hiermix"]["levels"] == ["lineage"]  # one-to-one with the labels: the finest level itself
    assert list(adata.obs["lineage"]) == ["first", "first", "second", "second"]
    tsv = tmp_path / "tree.tsv"
    tsv.write_text("label\ttop\tleaf\na\tT\ta\nb\tT\tb\n")
    assert add_hierarchy(small_adata(), "label", tsv) == ["top", "leaf"]
    with pytest.raises(ValueError, match=r"missing from the hierarchy table: \['b'\]"):
        add_hierarchy(small_adata(), "label", pd.DataFrame({"top": ["T"]}, index=["a"]))


def test_default_hierarchy_covers_sorted_populations():
    table = default_hierarchy()
    assert list(table.columns) == ["L1", "L2", "L3", "L4"]
    assert (table["L4"] == table.index).all() and len(table) == 11
    assert table.loc["Dendritic", "L2"] == "myeloid"


# --- bad inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [(0.5, "non-integer"), (-1.0, "negative"), (np.nan, "NaN"), (np.inf, "infinite")],
)
def test_validate_counts_bad_values(value, message):
    adata = small_adata()
    adata.X[0, 0] = value
    with pytest.raises(ValueError, match=message):
        validate_counts(adata)
    adata.X = sp.csr_matrix(adata.X)
    with pytest.raises(ValueError, match=message):
        validate_counts(adata)


def test_validate_counts_zero_cells_and_empty():
    adata = small_adata()
    adata.X[1] = 0
    with pytest.raises(ValueError, match=r"1 of 4 cells have zero total counts.*filter_cells"):
        validate_counts(adata)
    with pytest.raises(ValueError, match="empty data"):
        validate_counts(small_adata()[:0])
    validate_counts(small_adata())


def test_load_errors():
    with pytest.raises(ValueError, match="labels_key is required.*'label', 'batch'"):
        load_dataset(small_adata())
    with pytest.raises(ValueError, match="labels_key='cell_type' is not a column.*'label'"):
        load_dataset(small_adata(), labels_key="cell_type")
    with pytest.raises(ValueError, match="batch_key='donor' is not a column.*'batch'"):
        load_dataset(small_adata(), labels_key="label", batch_key="donor")
    with pytest.raises(ValueError, match="unknown dataset 'pbmc3k'.*" + ", ".join(DATASETS)):
        load_dataset("pbmc3k")
    with pytest.raises(ValueError, match=r"drop_labels \['c'\] are not labels.*'a', 'b'"):
        load_dataset(small_adata(), labels_key="label", drop_labels=("c",))
    with pytest.raises(TypeError, match="n_genes"):
        load_dataset("pbmc68k", n_genes=10)


def test_drop_labels_removes_cells_and_categories():
    adata = load_dataset(small_adata(), labels_key="label", drop_labels=("a",))
    assert adata.n_obs == 2 and list(adata.obs["label"].cat.categories) == ["b"]


# --- simulator ------------------------------------------------------------------------------


def test_simulator_shapes_levels_and_determinism():
    adata = simulate_hierarchy(seed=3)
    assert adata.shape == (16 * 40, 200)
    assert [adata.obs[f"L{d}"].nunique() for d in range(1, 5)] == [2, 4, 8, 16]
    assert adata.obs["L3"].iloc[0] == adata.obs["L4"].iloc[0].rsplit(".", 1)[0]
    assert adata.uns["hiermix"]["levels"] == ["L1", "L2", "L3", "L4"]
    assert {"library"} <= set(adata.obs) and "dispersion" in adata.var
    assert 1500 < np.median(np.asarray(adata.X.sum(axis=1))) < 2700
    validate_counts(adata)
    same, other = simulate_hierarchy(seed=3), simulate_hierarchy(seed=4)
    assert (adata.X != same.X).nnz == 0 and (adata.X != other.X).nnz > 0


def test_simulator_batches_and_dataset_name():
    adata = load_dataset("simulated", seed=1, branching=(3, 2), n_batches=3, cells_per_leaf=10)
    assert adata.shape == (60, 200)
    assert adata.uns["hiermix"]["batch_key"] == "batch"
    assert adata.uns["hiermix"]["levels"] == ["L1", "L2"]
    assert adata.obs["batch"].nunique() == 3


# --- prepare --------------------------------------------------------------------------------


def test_prepare_hvg_and_split(pbmc68k):
    adata = prepare(pbmc68k, n_hvg=200, seed=0)
    assert adata.n_vars == 200 and adata.uns["hiermix"]["n_hvg"] == 200
    fractions = adata.obs["split"].value_counts(normalize=True)[["train", "validation", "test"]]
    np.testing.assert_allclose(fractions, [0.8, 0.1, 0.1], atol=0.01)
    # stratified: every label with enough cells has some in the test split
    crosstab = pd.crosstab(adata.obs["L4"], adata.obs["split"])
    assert (crosstab.loc[crosstab.sum(axis=1) >= 10, "test"] > 0).all()
    assert "split" not in pbmc68k.obs and pbmc68k.n_vars == 765


def test_prepare_seeds_and_subsample():
    adata = load_dataset("simulated")
    first, again = prepare(adata, seed=1), prepare(adata, seed=1)
    assert first.uns["hiermix"]["n_hvg"] is None and first.n_vars == 200
    assert (first.obs["split"] == again.obs["split"]).all()
    assert (first.obs["split"] != prepare(adata, seed=2).obs["split"]).any()
    small = prepare(adata, subsample=320, split=(0.5, 0.0, 0.5))
    assert small.n_obs == 320 and (small.obs["L4"].value_counts() == 20).all()
    assert (small.obs["split"] == "validation").sum() == 0
    with pytest.raises(ValueError, match="split must be"):
        prepare(adata, split=(0.8, 0.3, -0.1))


def test_prepare_drops_cells_empty_after_hvg_and_small_classes():
    simulated = simulate_hierarchy(seed=0)
    counts = simulated.X.toarray()
    variances = sc.pp.highly_variable_genes(simulated, flavor="seurat_v3", n_top_genes=50, inplace=False)
    counts[0] = 0
    counts[0, variances["variances_norm"].argmin()] = 1  # its only count: in a gene HVG drops
    labels = simulated.obs["L4"].astype(str).to_numpy()
    labels[-1] = "lonely"  # a class of one cell cannot be stratified
    user = ad.AnnData(counts, obs=pd.DataFrame({"label": labels}, index=simulated.obs_names))
    with pytest.warns(UserWarning) as records:
        prepared = prepare(load_dataset(user, labels_key="label"), n_hvg=50)
    messages = " ".join(str(r.message) for r in records)
    assert "dropping 1 cells with zero counts" in messages and "cannot stratify" in messages
    assert prepared.shape == (simulated.n_obs - 1, 50)


# --- public download, offline ---------------------------------------------------------------


def write_purified_tarball(path, n_cells: int, seed: int) -> np.ndarray:
    """Write a tiny 10x v2 MEX tarball (3 genes); return its cells x genes counts."""
    counts = np.random.default_rng(seed).poisson(2.0, (n_cells, 3))
    files = {"genes.tsv": b"ENSG1\tA\nENSG2\tB\nENSG3\tC\n"}
    files["barcodes.tsv"] = "".join(f"AAAC{i}-1\n" for i in range(n_cells)).encode()
    matrix = io.BytesIO()
    scipy.io.mmwrite(matrix, sp.coo_matrix(counts.T))  # genes x cells
    files["matrix.mtx"] = matrix.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"filtered_matrices_mex/hg19/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return counts


def test_read_10x_purified_tarball(tmp_path):
    path = tmp_path / "cd34.tar.gz"
    counts = write_purified_tarball(path, n_cells=4, seed=0)
    adata = read_10x_purified_tarball(path, "CD34+")
    np.testing.assert_array_equal(adata.X.toarray(), counts)
    assert list(adata.var_names) == ["ENSG1", "ENSG2", "ENSG3"]
    assert list(adata.var["gene_symbol"]) == ["A", "B", "C"]
    assert adata.obs_names[0] == "AAAC0-1_CD34+" and (adata.obs["cell_type"] == "CD34+").all()


def test_download_pbmc_purified_offline(tmp_path):
    server = tmp_path / "server"
    names = ("b_cells", "cd34")
    sources = {name: server / name / f"{name}_filtered_gene_bc_matrices.tar.gz" for name in names}
    expected = [write_purified_tarball(path, n, n) for path, n in zip(sources.values(), (3, 5))]
    cache = tmp_path / "cache"
    kwargs = dict(cache_dir=cache, populations=list(names), base_url=server.as_uri())
    adata = download_pbmc_purified(**kwargs)
    assert adata.shape == (8, 3) and list(adata.var["gene_symbol"]) == ["A", "B", "C"]
    assert list(adata.obs["cell_type"].cat.categories) == ["CD19+ B", "CD34+"]
    np.testing.assert_array_equal(adata.X.toarray(), np.vstack(expected))
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in sources.values())
    for path in sources.values():  # the second call reads the cache only
        path.unlink()
    again = download_pbmc_purified(**kwargs)
    assert (again.X != adata.X).nnz == 0
    loaded = load_dataset(again, labels_key="cell_type")
    assert loaded.uns["hiermix"]["levels"] == ["L1", "L2", "L3", "L4"]


@pytest.mark.skipif(not TECH_FILE.exists(), reason="pbmc_3tech.h5ad not available")
def test_hvg_on_few_cells_of_real_data():
    """Smoke runs subsample real data to 300 cells, where seurat_v3's default loess is singular."""
    adata = load_dataset("pbmc_3tech")
    with pytest.warns(UserWarning, match="wider span"):
        small = prepare(adata, n_hvg=100, subsample=300, seed=0)
    assert small.n_vars == 100 and small.uns["hiermix"]["n_hvg"] == 100
