"""A user's own .h5ad with their own cell-type hierarchy (issue 9, section 4).

The levels come from exactly one place: the built-in PBMC tree (built-in datasets only), a
hierarchy table (``hierarchy``), or obs columns (``level_keys``); and ``metrics.json`` says which
model level was scored against which label level.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from hiermix_pyro import workflow
from hiermix_pyro.config import DataConfig, ModelConfig, TrainConfig, from_dict
from hiermix_pyro.data import default_hierarchy, download_pbmc_purified, load_dataset, prepare, simulate_hierarchy
from hiermix_pyro.models import build_model

EXAMPLE = Path(__file__).parent / "data" / "example_hierarchy.csv"  # the README's example
NAMES = ["B naive", "B memory", "CD4 T", "CD8 T", "NK", "Monocyte"]  # its finest labels
PBMC = ["CD19+ B", "CD56+ NK", "CD4+ T Helper", "CD8+ Cytotoxic T", "CD14+ Monocyte", "CD34+"]  # built-in names


def user_adata(names=NAMES, cells_per_leaf: int = 20) -> ad.AnnData:
    """Simulated counts of six leaves, labelled with ``names`` in ``obs['cell_type']`` only."""
    sim = simulate_hierarchy(branching=(2, 3), cells_per_leaf=cells_per_leaf, n_genes=60, seed=0)
    mapping = dict(zip(sim.obs["L2"].cat.categories, names))
    obs = pd.DataFrame({"cell_type": sim.obs["L2"].astype(str).map(mapping)}, index=sim.obs_names)
    return ad.AnnData(sim.X.copy(), obs=obs, var=pd.DataFrame(index=sim.var_names))


def write(adata: ad.AnnData, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


def levels_of(adata: ad.AnnData) -> list[str]:
    return adata.uns["hiermix"]["levels"]


# --- the built-in tree belongs to the built-in datasets -------------------------------------


def test_user_file_with_builtin_names_gets_one_level(tmp_path):
    path = write(user_adata(PBMC), tmp_path / "user.h5ad")
    for source in (path, str(path), ad.read_h5ad(path)):
        adata = load_dataset(source, labels_key="cell_type")
        assert levels_of(adata) == ["cell_type"]
        assert "L1" not in adata.obs
    # who wants the built-in tree for their file passes it as a table
    tree = tmp_path / "pbmc_tree.csv"
    default_hierarchy().to_csv(tree)
    adata = load_dataset(path, labels_key="cell_type", hierarchy=tree)
    assert levels_of(adata) == ["L1", "L2", "L3", "L4"]
    assert [adata.obs[level].nunique() for level in levels_of(adata)] == [2, 5, 6, 6]


def write_tarball(path: Path, n_cells: int) -> None:
    """A tiny 10x v2 MEX tarball (3 genes) as download_pbmc_purified fetches it."""
    import io
    import tarfile

    import scipy.io
    import scipy.sparse as sp

    counts = np.random.default_rng(n_cells).poisson(2.0, (n_cells, 3)) + 1
    matrix = io.BytesIO()
    scipy.io.mmwrite(matrix, sp.coo_matrix(counts.T))
    files = {
        "genes.tsv": b"ENSG1\tA\nENSG2\tB\nENSG3\tC\n",
        "matrix.mtx": matrix.getvalue(),
        "barcodes.tsv": "".join(f"AAAC{i}-1\n" for i in range(n_cells)).encode(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"filtered_matrices_mex/hg19/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_downloaded_purified_populations_keep_the_builtin_tree(tmp_path):
    server = tmp_path / "server"
    for name, n in (("b_cells", 3), ("cd34", 4)):
        write_tarball(server / name / f"{name}_filtered_gene_bc_matrices.tar.gz", n)
    adata = download_pbmc_purified(
        cache_dir=tmp_path / "cache", populations=["b_cells", "cd34"], base_url=server.as_uri(), progress=False
    )
    assert adata.uns["hiermix_source"] == "pbmc_purified"
    assert levels_of(load_dataset(adata)) == ["L1", "L2", "L3", "L4"]  # labels_key: cell_type
    path = write(adata, tmp_path / "purified.h5ad")  # the mark survives the file
    assert levels_of(load_dataset(path)) == ["L1", "L2", "L3", "L4"]
    del adata.uns["hiermix_source"]  # the same cells without the mark: a user's data
    assert levels_of(load_dataset(adata, labels_key="cell_type")) == ["cell_type"]


# --- hierarchy tables -----------------------------------------------------------------------


def test_example_file_gives_three_levels():
    adata = load_dataset(user_adata(), labels_key="cell_type", hierarchy=EXAMPLE)
    assert levels_of(adata) == ["compartment", "lineage", "cell_type"]
    assert adata.uns["hiermix"]["labels_key"] == "cell_type"
    assert [adata.obs[level].nunique() for level in levels_of(adata)] == [2, 4, 6]
    monocytes = adata.obs[adata.obs["cell_type"] == "Monocyte"].iloc[0]
    assert (monocytes["compartment"], monocytes["lineage"]) == ("myeloid", "myeloid")


def test_last_column_renaming_the_labels_is_the_finest_level(tmp_path):
    table = pd.read_csv(EXAMPLE, index_col=0)
    table["name"] = [f"{label} cell" for label in table.index]  # one-to-one: a renaming
    path = tmp_path / "renamed.tsv"
    table.drop(columns="compartment").to_csv(path, sep="\t")
    adata = load_dataset(user_adata(), labels_key="cell_type", hierarchy=path)
    assert levels_of(adata) == ["lineage", "name"]  # not lineage, name, cell_type
    assert adata.uns["hiermix"]["labels_key"] == "name"
    assert adata.obs["name"].nunique() == 6
    # drop_labels then names the finest level's labels
    dropped = load_dataset(user_adata(), labels_key="cell_type", hierarchy=path, drop_labels=("NK cell",))
    assert "NK cell" not in dropped.obs["name"].cat.categories and dropped.n_obs == 100


def test_hierarchy_errors(tmp_path):
    user = user_adata()
    with pytest.raises(FileNotFoundError, match="hierarchy file .*nope.csv' not found"):
        load_dataset(user, labels_key="cell_type", hierarchy=tmp_path / "nope.csv")
    partial = tmp_path / "partial.csv"
    partial.write_text("".join(EXAMPLE.read_text().splitlines(keepends=True)[:5]))  # no NK, no Monocyte
    with pytest.raises(ValueError, match=r"missing from the hierarchy table: \['Monocyte', 'NK'\]"):
        load_dataset(user, labels_key="cell_type", hierarchy=partial)
    twice = tmp_path / "twice.csv"
    twice.write_text(EXAMPLE.read_text() + "NK,myeloid,myeloid\n")
    with pytest.raises(ValueError, match=r"listed more than once: \['NK'\]"):
        load_dataset(user, labels_key="cell_type", hierarchy=twice)
    gap = tmp_path / "gap.csv"
    gap.write_text(EXAMPLE.read_text().replace("NK,lymphoid,NK", "NK,,NK"))
    with pytest.raises(ValueError, match=r"empty entries: \{'compartment': \['NK'\]\}"):
        load_dataset(user, labels_key="cell_type", hierarchy=gap)
    clash = tmp_path / "clash.csv"
    clash.write_text(EXAMPLE.read_text().replace("cell_type,compartment,", "label,cell_type,"))
    with pytest.raises(ValueError, match="coarser level 'cell_type' has the name of the labels column"):
        load_dataset(user, labels_key="cell_type", hierarchy=clash)


# --- level_keys -----------------------------------------------------------------------------


def with_compartment(adata: ad.AnnData) -> ad.AnnData:
    adata.obs["compartment"] = np.where(adata.obs["cell_type"] == "Monocyte", "myeloid", "lymphoid")
    return adata


def test_level_keys_use_columns_of_the_file(tmp_path):
    path = write(with_compartment(user_adata()), tmp_path / "user.h5ad")
    adata = workflow.load(DataConfig(dataset=str(path), level_keys=("compartment", "cell_type"), n_hvg=None))
    assert levels_of(adata) == ["compartment", "cell_type"]
    assert adata.uns["hiermix"]["labels_key"] == "cell_type"
    assert [adata.obs[level].nunique() for level in levels_of(adata)] == [2, 6]
    assert levels_of(load_dataset(path, level_keys=["cell_type"])) == ["cell_type"]


def test_level_keys_errors():
    user = with_compartment(user_adata())
    with pytest.raises(
        ValueError,
        match=r"level_keys \['lineage'\] are not columns of adata.obs; available: "
        r"\['cell_type', 'compartment'\]",
    ):
        load_dataset(user, level_keys=("lineage", "cell_type"))
    user.obs.loc[user.obs_names[0], "compartment"] = "myeloid"  # one B naive cell now myeloid
    assert user.obs["cell_type"].iloc[0] == "B naive"
    with pytest.raises(
        ValueError,
        match=r"'cell_type' does not determine 'compartment': label 'B naive' has "
        r"the parents \['lymphoid', 'myeloid'\]",
    ):
        load_dataset(user, level_keys=("compartment", "cell_type"))
    user.obs.loc[user.obs_names[0], "compartment"] = np.nan
    with pytest.raises(ValueError, match=r"obs\['compartment'\] has no value for 1 cells"):
        load_dataset(user, level_keys=("compartment", "cell_type"))
    with pytest.raises(ValueError, match="not both"):
        load_dataset(user, hierarchy=EXAMPLE, level_keys=("compartment", "cell_type"))


def test_simulated_level_keys_choose_among_its_levels():
    adata = load_dataset("simulated", level_keys=("L1", "L3"), branching=(2, 2, 2), cells_per_leaf=5, n_genes=20)
    assert levels_of(adata) == ["L1", "L3"] and adata.uns["hiermix"]["labels_key"] == "L3"


# --- configuration: DataConfig, papermill strings, the benchmark workflow's studies ---------


def test_data_config_fields_and_checks():
    config = from_dict(DataConfig, {"hierarchy": str(EXAMPLE), "level_keys": []})
    assert config.hierarchy == str(EXAMPLE) and config.level_keys == ()
    keys = from_dict(DataConfig, {"level_keys": '["compartment", "cell_type"]'}).level_keys  # papermill -p
    assert keys == ("compartment", "cell_type")
    assert from_dict(DataConfig, {"level_keys": "cell_type"}).level_keys == ("cell_type",)
    assert DataConfig(level_keys=["a", "b"]).level_keys == ("a", "b")
    with pytest.raises(ValueError, match="either hierarchy .* or level_keys .*, not both"):
        DataConfig(hierarchy="tree.csv", level_keys=("a", "b"))
    with pytest.raises(ValueError, match="labels_key='x' differs from the finest of level_keys"):
        DataConfig(labels_key="x", level_keys=("a", "b"))
    with pytest.raises(ValueError, match="repeats a column"):
        DataConfig(level_keys=("a", "a"))
    with pytest.raises(TypeError, match="tuple of obs columns"):
        DataConfig(level_keys="cell_type")


def test_a_study_passes_the_hierarchy_on(tmp_path):
    """A dataset of a benchmark study with its own hierarchy: the training runs and the peers
    (their DataConfig) get it, as a papermill parameter and as a DataConfig field."""
    from hiermix_pyro.study import load_study

    path = tmp_path / "mine.yaml"
    path.write_text(
        "datasets:\n"
        f"  table: {{dataset: user.h5ad, labels_key: cell_type, hierarchy: {EXAMPLE}}}\n"
        "  columns: {dataset: user.h5ad, level_keys: [c, f]}\n"
        "variants: {vae: {}}\n"
        "peers: [pca_kmeans]\n"
    )
    study = load_study(path)
    assert study.parameters("table", "vae", 0)["hierarchy"] == str(EXAMPLE)
    assert from_dict(DataConfig, study.parameters("columns", "vae", 0)).level_keys == ("c", "f")
    assert study.data_config("table", 0).hierarchy == str(EXAMPLE)
    assert study.data_config("columns", 1).level_keys == ("c", "f")
    assert study.peer_arguments("columns", 0)["data"]["level_keys"] == ("c", "f")


# --- which model level was scored against which label level ---------------------------------


@pytest.fixture(scope="module")
def two_levels() -> ad.AnnData:
    return prepare(simulate_hierarchy(branching=(2, 2), cells_per_leaf=20, n_genes=40, seed=0), n_hvg=None, seed=0)


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("vae", {}, ["kmeans", "kmeans"]),
        ("mixture", {}, [1, 1]),  # one model level for two label levels
        ("momix", {"init": "random"}, [1, 2]),
        ("momix", {"init": "random", "level_sizes": (2, 2, 2)}, [3, 3]),  # three for two: the finest
    ],
    ids=["vae", "mixture", "momix", "momix-3-levels"],
)
def test_level_map_in_scores(two_levels, name, options, expected):
    adata = two_levels.copy()
    net = build_model(name, adata, ModelConfig(latent_dim=2, hidden_dims=(8,), **options), seed=0)
    workflow.annotate(net, adata)
    assert adata.uns["hiermix"]["level_map"] == {"L1": expected[0], "L2": expected[1]}
    scores = workflow.evaluate(net, adata, n_iwae_samples=2)
    assert [(s["level"], s["model_level"]) for s in scores["levels"]] == list(zip(["L1", "L2"], expected))


def test_run_with_user_file_and_hierarchy_csv(tmp_path):
    """End to end: a user's .h5ad + the example CSV give the three levels, each with its model level."""
    path = write(user_adata(cells_per_leaf=30), tmp_path / "user.h5ad")
    data = DataConfig(dataset=str(path), labels_key="cell_type", hierarchy=str(EXAMPLE), n_hvg=50, subsample=150)
    metrics = workflow.run(
        "mixture",
        data,
        ModelConfig(latent_dim=2, hidden_dims=(16,)),
        TrainConfig(epochs=1, batch_size=64, progress=False),
        output_dir=tmp_path / "run",
        n_iwae_samples=2,
    )
    assert [(lvl["level"], lvl["n_classes"], lvl["model_level"]) for lvl in metrics["levels"]] == [
        ("compartment", 2, 1),
        ("lineage", 4, 1),
        ("cell_type", 6, 1),
    ]
    assert metrics["config"]["data"]["hierarchy"] == str(EXAMPLE)
    saved = ad.read_h5ad(tmp_path / "run" / "adata.h5ad")
    assert dict(saved.uns["hiermix"]["level_map"]) == {"compartment": 1, "lineage": 1, "cell_type": 1}
