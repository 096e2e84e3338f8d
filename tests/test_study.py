"""Benchmark studies (hiermix_pyro.study): reading and checking a study file, the parameters of
each run, the tidy table of finished runs and its summary (CI, Mann-Whitney, epoch ceiling);
the peers' metrics.json schema (benchmarks/peers.py)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from hiermix_pyro.study import collect, load_study, markdown_table, summarise, t_interval, write_results

ROOT = Path(__file__).resolve().parents[1]


def write_study(tmp_path, text: str) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return path


STUDY = """
seeds: [0, 1, 2]
defaults: {n_hvg: 50, init_epochs: 1}
protocol: {epochs: 7, patience: 3}
datasets:
  sim: {dataset: simulated}
variants:
  vae: {}
  momix_t: {model: momix, prior: studentt}
peers: [pca_kmeans, pca_leiden]
"""


def test_parameters_merge_defaults_protocol_dataset_variant(tmp_path):
    study = load_study(write_study(tmp_path, STUDY))
    assert study.name == "mine" and study.methods == ["vae", "momix_t", "pca_kmeans", "pca_leiden"]
    vae = study.parameters("sim", "vae", 2)
    # init_epochs is a model setting vae does not use: a grid-wide default reaches only momix
    assert "init_epochs" not in vae and vae["model"] == "vae" and vae["epochs"] == 7 and vae["patience"] == 3
    assert vae["output_dir"] == "runs/mine/sim/vae/seed2" and vae["seed"] == 2
    momix = study.parameters("sim", "momix_t", 0, device="cuda")
    assert momix["init_epochs"] == 1 and momix["prior"] == "studentt" and momix["device"] == "cuda"
    peer = study.peer_arguments("sim", 1)
    assert peer["data"]["n_hvg"] == 50 and peer["data"]["seed"] == 1 and peer["train"] == {"epochs": 7, "patience": 3}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"defaults": {"n_hvgs": 50}}, "unknown parameters"),
        ({"peers": ["seurat"]}, "unknown peers"),
        ({"variants": {"vae": {"prior": "studentt"}}}, "does not use"),  # a variant's own setting is never dropped
        ({"variants": {"x": {"model": "nosuch"}}}, "unknown model"),
        ({"variants": {"pca_kmeans": {"model": "vae"}}}, "variant and a peer"),
        ({"peer_settings": {"n_pc": 5}}, "unknown peer_settings"),
        ({"colour": "blue"}, "unknown keys"),
    ],
)
def test_study_errors_name_the_problem(tmp_path, change, message):
    spec = {**yaml.safe_load(STUDY), **change}
    with pytest.raises(ValueError, match=message):
        load_study(write_study(tmp_path, yaml.safe_dump(spec)))


def test_select_a_part_of_the_grid(tmp_path):
    path = write_study(tmp_path, STUDY)
    part = load_study(path, {"seeds": "0-1", "methods": "vae,pca_leiden", "study": "ignored"})
    assert part.runs() == [("sim", "vae", 0), ("sim", "vae", 1), ("sim", "pca_leiden", 0), ("sim", "pca_leiden", 1)]
    assert load_study(path, {"seeds": [2]}).seeds == [2]
    with pytest.raises(ValueError, match="no datasets"):
        load_study(path, {"datasets": "pbmc"})
    with pytest.raises(FileNotFoundError, match="smoke"):
        load_study("no_such_study")


def test_committed_studies_load():
    for path in (ROOT / "benchmarks" / "studies").glob("*.yaml"):
        study = load_study(path.stem)
        assert study.runs() and study.description
        if study.name != "smoke":  # the full studies use the convergence protocol
            assert study.protocol == {**study.protocol, "epochs": 10000, "patience": 100}


# ---- collect and summarise ----
ENVIRONMENT = dict(cpu_capability="AVX2", gpu=None, packages={"torch": "2.13.0", "scanpy": "1.11.5", "igraph": None})


def fake_run(root: Path, study, dataset, method, seed, ari, epochs=5, ceiling=10, peer=False):
    out = Path(study.run_dir(dataset, method, seed, root=str(root)))
    out.mkdir(parents=True)
    levels = [
        dict(level="L1", n_classes=2, ari=ari, nmi=0.5, weighted_f1=0.6, purity=0.7, utilized_clusters=2),
        dict(level="L2", n_classes=4, ari=ari / 2, nmi=0.4, weighted_f1=0.5, purity=0.6, utilized_clusters=4),
    ]
    metrics = dict(
        model=method,
        dataset="simulated",
        seed=seed,
        levels=levels,
        hierarchy=dict(h_precision=0.8, h_recall=0.9, h_f1=0.85, dendrogram_purity=0.7, tree="ward"),
        **(
            {}
            if peer
            else dict(epochs=epochs, best_epoch=epochs - 1, iwae=-100.0, config={"train": {"epochs": ceiling}})
        ),
        oracle_k=method == "pca_leiden",
        **({"environment": ENVIRONMENT} if seed == 1 else {}),  # runs made before it was recorded have none
    )
    (out / "metrics.json").write_text(json.dumps(metrics))
    parameters = (
        dict(study.peer_arguments(dataset, seed), peers=[method]) if peer else study.parameters(dataset, method, seed)
    )
    (out / "run.json").write_text(json.dumps(dict(commit="abc123", parameters=parameters)))


@pytest.fixture
def finished(tmp_path):
    study = load_study(write_study(tmp_path, STUDY))
    root = tmp_path / "runs"
    for seed in range(3):
        fake_run(root, study, "sim", "vae", seed, ari=0.6 + seed / 10, epochs=10 if seed == 0 else 5)
        fake_run(root, study, "sim", "pca_kmeans", seed, ari=0.2 + seed / 10, peer=True)
        fake_run(root, study, "sim", "pca_leiden", seed, ari=0.3 + seed / 10, peer=True)
    fake_run(root, study, "sim", "momix_t", 0, ari=0.9)  # an unfinished grid: one seed so far
    return study, root


def test_collect_one_row_per_run_and_level(finished):
    study, root = finished
    df = collect(study, runs_root=str(root))
    assert len(df) == (3 * 3 + 1) * 2
    assert set(df["study"]) == {str(study.path)} and set(df["commit"]) == {"abc123"}
    vae = df[df["method"].eq("vae")].drop_duplicates("seed").set_index("seed")
    assert vae["hit_ceiling"].tolist() == [True, False, False]  # seed 0 ran all 10 epochs
    peers = df[df["kind"].eq("peer")]
    assert set(peers["method"]) == {"pca_kmeans", "pca_leiden"} and not peers["hit_ceiling"].any()
    assert (
        df.loc[df["method"].eq("pca_leiden"), "oracle_k"].all() and not df.loc[df["method"].eq("vae"), "oracle_k"].any()
    )
    assert set(df.loc[df["method"].eq("pca_leiden"), "label"]) == {"scanpy PCA + Leiden (oracle k)"}
    environments = df.drop_duplicates(["method", "seed"]).set_index(["method", "seed"])["environment"]
    assert environments[("vae", 1)] == "AVX2 | torch 2.13.0, scanpy 1.11.5" and pd.isna(environments[("vae", 0)])


def test_summary_ci_and_mann_whitney_against_the_best_peer(finished):
    study, root = finished
    summary = summarise(collect(study, runs_root=str(root)))
    row = summary.query("method == 'vae' and level == 'L1' and metric == 'ari'").iloc[0]
    values = [0.6, 0.7, 0.8]
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)
    assert row["n"] == 3 and row["mean"] == pytest.approx(0.7) and row["sd"] == pytest.approx(0.1)
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((0.7 - half, 0.7 + half))
    # the best peer at L1 is Leiden (mean 0.4 > 0.3); vae's 3 values all above its 3: p = 1 / C(6, 3)
    assert row["best_peer"] == "pca_leiden" and row["best_peer_mean"] == pytest.approx(0.4)
    assert row["mannwhitney_p"] == pytest.approx(1 / 20)
    assert row["n_hit_ceiling"] == 1
    one = summary.query("method == 'momix_t' and level == 'L1' and metric == 'ari'").iloc[0]
    assert one["n"] == 1 and np.isnan(one["ci95_low"])  # one seed: no interval
    run_wide = summary.query("method == 'vae' and metric == 'h_f1'")
    assert run_wide["level"].tolist() == ["all"] and run_wide["n"].tolist() == [3]
    assert summary.query("kind == 'peer'")["mannwhitney_p"].isna().all()
    assert summary.query("metric == 'iwae'")["mannwhitney_p"].isna().all()  # peers have no IWAE


def test_collect_refuses_runs_made_with_other_parameters(finished):
    """Snakemake never redoes a finished run: a variant whose settings changed under the same name
    would keep its old runs, and the tables would describe a configuration that no longer exists."""
    study, root = finished
    run_json = Path(study.run_dir("sim", "vae", 1, root=str(root))) / "run.json"
    record = json.loads(run_json.read_text())
    record["parameters"]["lr"] = 0.01  # the run was made before the study's lr changed
    run_json.write_text(json.dumps(record))
    peer_json = Path(study.run_dir("sim", "pca_kmeans", 0, root=str(root))) / "run.json"
    peer_json.unlink()  # a run without its record
    with pytest.raises(ValueError, match="2 finished run") as err:
        collect(study, runs_root=str(root))
    assert "vae/seed1: lr: run 0.01, study None" in str(err.value) and "pca_kmeans/seed0: no run.json" in str(err.value)
    record["parameters"]["lr"] = None
    record["parameters"].pop("lr")
    record["parameters"]["device"] = "cuda"  # the device is not part of the configuration
    run_json.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="1 finished run"):
        collect(study, runs_root=str(root))


def test_write_results_tables(finished, tmp_path):
    study, root = finished
    paths = write_results(study, tmp_path / "results", runs_root=str(root))
    runs, summary = pd.read_csv(paths["runs"]), pd.read_csv(paths["summary"])
    assert len(runs) == 20 and set(summary["study"]) == {str(study.path)} and set(summary["commit"]) == {"abc123"}
    text = paths["markdown"].read_text()
    assert "scanpy PCA + Leiden (oracle k)" in text and "p=0.05 " in text  # not below 0.05: no star
    assert "vae: 1 run(s) stopped at the epoch ceiling" in text


def test_t_interval_needs_two_values():
    assert np.isnan(t_interval([1.0])[0])
    assert t_interval([1.0, 1.0]) == (1.0, 1.0)
    assert markdown_table(pd.DataFrame()) == "no finished runs\n"


# ---- the peers write the training notebook's schema ----
def load_peers():
    spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peer_metrics_schema(tmp_path):
    peers = load_peers()
    spec = {"data": {"dataset": "pbmc68k", "n_hvg": 60, "subsample": 150}, "peer": {"n_pcs": 10}}
    (path,) = peers.run_peers(["pca_kmeans"], spec, seed=0, runs_dir=tmp_path)
    m = json.loads(path.read_text())
    assert path == tmp_path / "pca_kmeans" / "seed0" / "metrics.json"
    assert m["oracle_k"] is False and m["n_cells"] == 150 and m["config"]["data"]["n_hvg"] == 60
    assert m["environment"]["packages"]["scanpy"] and m["environment"]["cpu_capability"]  # as the models' runs
    assert m["hierarchy"]["tree"] == "ward" and 0 <= m["hierarchy"]["h_f1"] <= 1
    level_keys = {"level", "n_classes", "ari", "nmi", "weighted_f1", "purity", "accuracy", "utilized_clusters"}
    assert all(level_keys | {"model_level", "nesting", "nesting_labels"} <= set(entry) for entry in m["levels"])
    assert [entry["n_classes"] for entry in m["levels"]] == [entry["utilized_clusters"] for entry in m["levels"]]
    labels = pd.read_csv(path.parent / "labels.csv", index_col="cell")
    levels = [entry["level"] for entry in m["levels"]]
    assert len(labels) == 150 and list(labels.columns) == levels + [f"aligned_{level}" for level in levels]
    # aligned clusters carry class names; where they agree with the truth is the accuracy after matching
    finest = levels[-1]
    assert set(labels[f"aligned_{finest}"]) <= set(labels[finest]) | {"unmatched"}


# ---- levers: variants against a baseline, seed by seed ----
def test_validation_elbo_is_the_kept_epochs(tmp_path):
    from hiermix_pyro.study import validation_elbo

    history = tmp_path / "history.json"
    history.write_text(json.dumps(dict(epoch=[1, 2, 3], val_loss=[130.0, 120.5, 125.0])))
    assert validation_elbo(history, 2) == -120.5
    assert np.isnan(validation_elbo(history, 9)) and np.isnan(validation_elbo(tmp_path / "none.json", 2))
    assert np.isnan(validation_elbo(history, None))  # a peer: no epochs


def test_collect_reads_the_validation_elbo(finished):
    study, root = finished
    run = Path(study.run_dir("sim", "vae", 1, root=str(root)))
    (run / "history.json").write_text(json.dumps(dict(epoch=[3, 4, 5], val_loss=[12.0, 11.0, 13.0])))
    df = collect(study, runs_root=str(root)).drop_duplicates(["method", "seed"]).set_index(["method", "seed"])
    assert df.loc[("vae", 1), "val_elbo"] == -11.0  # best_epoch = epochs - 1 = 4
    assert np.isnan(df.loc[("vae", 0), "val_elbo"]) and np.isnan(df.loc[("pca_kmeans", 0), "val_elbo"])


def test_paired_differences_pair_the_seeds():
    from hiermix_pyro.study import paired_differences

    rows = []
    for method, shift in (("base", 0.0), ("lever", 0.1)):
        for seed, noise in enumerate([0.0, 0.3, -0.2, 0.05]):
            if method == "lever" and seed == 3:
                continue  # unfinished: only seeds both have are paired
            run = dict(dataset="d", method=method, kind="model", label=method, seed=seed, h_f1=0.5 + noise)
            rows.append(dict(run, level="L1", ari=0.4 + noise + (shift + 0.01 * seed if shift else 0.0)))
    rows.append(dict(dataset="d", method="peer", kind="peer", label="p", seed=0, level="L1", ari=0.9, h_f1=0.9))
    out = paired_differences(pd.DataFrame(rows), "base", metrics=("ari", "h_f1"))
    ari = out.query("metric == 'ari'").iloc[0]
    # the seeds' large shared noise cancels: differences 0.1, 0.11, 0.12
    assert set(out["method"]) == {"lever"} and ari["n"] == 3 and ari["mean_diff"] == pytest.approx(0.11)
    assert (ari["ci95_low"], ari["ci95_high"]) == pytest.approx(t_interval([0.1, 0.11, 0.12]))
    assert ari["paired_t_p"] == pytest.approx(stats.ttest_1samp([0.1, 0.11, 0.12], 0.0).pvalue)
    h = out.query("metric == 'h_f1'").iloc[0]
    assert h["level"] == "all" and h["mean_diff"] == pytest.approx(0.0) and np.isnan(h["paired_t_p"])
    assert paired_differences(pd.DataFrame(rows), "nobody").empty


def test_baseline_must_be_a_variant(tmp_path):
    with pytest.raises(ValueError, match="baseline 'mixture' is not a variant"):
        load_study(write_study(tmp_path, STUDY + "baseline: mixture\n"))


def test_write_results_levers_with_a_baseline(finished, tmp_path):
    study, root = finished
    study.baseline = "vae"
    paths = write_results(study, tmp_path / "results", runs_root=str(root))
    levers = pd.read_csv(paths["levers"])
    # momix_t has seed 0 only: n = 1, no interval; its ARI L1 0.9 against vae's 0.6
    row = levers.query("metric == 'ari' and level == 'L1'").iloc[0]
    assert row["method"] == "momix_t" and row["n"] == 1 and row["mean_diff"] == pytest.approx(0.3)
    assert set(levers["study"]) == {str(study.path)}
    # one variant against the baseline: too few for a rank correlation, so an empty table
    assert paths["elbo_alignment"].exists()


def test_elbo_alignment_ranks_the_variants_gains():
    """rho is +1 where the ELBO's gains rank the variants as a score's gains do, -1 where reversed;
    a score with fewer than 3 variants, the IWAE and the ELBO itself get no row; the variants that
    gain ELBO are ranked again on their own."""
    from hiermix_pyro.study import elbo_alignment

    gains = {"a": 0.1, "b": 0.5, "c": 0.9, "d": 1.5, "e": -2.0}  # validation ELBO gains
    rows = [dict(dataset="sim", method=m, level="all", metric="val_elbo", mean_diff=g) for m, g in gains.items()]
    rows += [dict(dataset="sim", method=m, level="all", metric="iwae", mean_diff=g) for m, g in gains.items()]
    rows += [dict(dataset="sim", method=m, level="L1", metric="ari", mean_diff=g / 10) for m, g in gains.items()]
    rows += [dict(dataset="sim", method=m, level="all", metric="h_f1", mean_diff=-g) for m, g in gains.items()]
    rows[-1]["mean_diff"] = -5.0  # e loses ELBO and hierarchical F1: over all variants rho is 0, not -1
    rows += [dict(dataset="sim", method=m, level="L2", metric="ari", mean_diff=g) for m, g in list(gains.items())[:2]]
    table = elbo_alignment(pd.DataFrame(rows))
    assert list(zip(table["variants"], table["metric"], table["level"])) == [
        ("all", "ari", "L1"),
        ("all", "h_f1", "all"),
        ("gain > 0", "ari", "L1"),
        ("gain > 0", "h_f1", "all"),
    ]
    assert table["rho"].tolist() == pytest.approx([1.0, 0.0, 1.0, -1.0], abs=1e-12)
    assert table["n_variants"].tolist() == [5, 5, 4, 4]
    assert elbo_alignment(pd.DataFrame(rows).query("metric != 'val_elbo'")).empty


def test_collect_refuses_runs_whose_defaults_changed_and_accepts_named_settings(finished):
    """A run records its whole configuration (metrics.json): when a default it used has changed,
    the same parameters no longer mean that run. A setting the study names now, which the run had by
    default, matches what the run recorded."""
    study, root = finished
    path = Path(study.run_dir("sim", "momix_t", 0, root=str(root))) / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["config"]["model"] = dict(
        latent_dim=10, hidden_dims=[128], likelihood="nb", init="vae_kmeans", init_epochs=1
    )
    path.write_text(json.dumps(metrics))  # made when momix's default start was nested k-means
    with pytest.raises(ValueError, match="init: run 'vae_kmeans', now 'vae_leiden' \\(a default changed\\)"):
        collect(study, runs_root=str(root))
    study.variants["momix_t"]["init"] = "vae_kmeans"  # the study names the start the run had by default
    assert set(collect(study, runs_root=str(root))["method"]) >= {"momix_t"}
    study.variants["momix_t"]["init"] = "vae_ward"  # ... but not another one
    with pytest.raises(ValueError, match="init: run None, study 'vae_ward'"):
        collect(study, runs_root=str(root))


def test_not_candidates_must_be_variants_and_are_read(tmp_path):
    with pytest.raises(ValueError, match=r"not_candidates \['nope'\] are not variants"):
        load_study(write_study(tmp_path, STUDY + "not_candidates: {nope: why}\n"))
    first = next(iter(load_study(write_study(tmp_path, STUDY)).variants))
    study = load_study(
        write_study(tmp_path, STUDY + f"not_candidates: {{{first}: proposed after looking at labels}}\n")
    )
    assert study.not_candidates == {first: "proposed after looking at labels"}


def test_incumbent_must_be_a_variant(tmp_path):
    with pytest.raises(ValueError, match="incumbent 'nope' is not a variant"):
        load_study(write_study(tmp_path, STUDY + "incumbent: nope\n"))
    first = next(iter(load_study(write_study(tmp_path, STUDY)).variants))
    assert load_study(write_study(tmp_path, STUDY + f"incumbent: {first}\n")).incumbent == first


def test_write_results_keeps_the_previous_tables_runs(finished, tmp_path):
    """A part of a study run in a fresh clone (or on another machine) adds to the committed tables:
    the runs of the table already written that are not under the runs folder are kept, a run found
    here replaces its old rows, and ``merge=False`` tables only the runs found here."""
    import shutil

    study, root = finished
    out = tmp_path / "results"
    write_results(study, out, runs_root=str(root))
    first = pd.read_csv(out / "mine.csv")
    assert first["parameters"].notna().all()  # each row records what made its run
    shutil.rmtree(study.run_dir("sim", "vae", 2, root=str(root)))  # that run's folder is elsewhere now
    shutil.rmtree(study.run_dir("sim", "pca_leiden", 0, root=str(root)))
    metrics_path = Path(study.run_dir("sim", "vae", 1, root=str(root))) / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["levels"][0]["ari"] = 0.05  # redone here: the run folder's numbers win
    metrics_path.write_text(json.dumps(metrics))
    write_results(study, out, runs_root=str(root))
    merged = pd.read_csv(out / "mine.csv")
    assert len(merged) == len(first) == 20
    key = ["dataset", "method", "seed", "level_index"]
    pd.testing.assert_frame_equal(
        merged.query("method == 'vae' and seed == 2").reset_index(drop=True),
        first.query("method == 'vae' and seed == 2").reset_index(drop=True),
    )
    vae1 = merged.query("method == 'vae' and seed == 1").set_index(key)["ari"]
    assert vae1.iloc[0] == 0.05 and vae1.iloc[1] == first.query("method == 'vae' and seed == 1")["ari"].iloc[1]
    assert list(merged["method"].drop_duplicates()) == ["vae", "momix_t", "pca_kmeans", "pca_leiden"]  # study order
    summary = pd.read_csv(out / "mine_summary.csv").query("method == 'pca_leiden' and metric == 'ari'")
    assert set(summary["n"]) == {3}
    write_results(study, out, runs_root=str(root), merge=False)
    alone = pd.read_csv(out / "mine.csv")
    assert len(alone) == 16 and not alone.query("method == 'vae' and seed == 2").shape[0]


def test_merge_refuses_previous_runs_made_with_other_parameters_and_drops_retired_ones(finished, tmp_path):
    import shutil

    from hiermix_pyro.study import merge_previous

    study, root = finished
    out = tmp_path / "results"
    write_results(study, out, runs_root=str(root))
    previous = pd.read_csv(out / "mine.csv")
    shutil.rmtree(study.run_dir("sim", "vae", 0, root=str(root)))
    here = collect(study, runs_root=str(root))
    changed = previous.copy()
    vae0 = changed["method"].eq("vae") & changed["seed"].eq(0)
    params = json.loads(changed.loc[vae0, "parameters"].iloc[0])
    changed.loc[vae0, "parameters"] = json.dumps(dict(params, lr=0.01))
    with pytest.raises(
        ValueError, match=r"(?s)1 run\(s\) of the previous table.*sim/vae/seed0: lr: run 0.01, study None"
    ):
        merge_previous(study, here, changed)
    older = previous.drop(columns="parameters")  # a table from before the column: kept as it is
    assert len(merge_previous(study, here, older)) == 20
    study.variants.pop("vae")  # a variant the study no longer has: its old rows go
    study.seeds = [0, 1]
    merged = merge_previous(study, collect(study, runs_root=str(root)), previous)
    assert "vae" not in set(merged["method"]) and set(merged["seed"]) == {0, 1}


def test_seed_agreement_keeps_previous_rows_of_variants_not_here(finished, tmp_path):
    import anndata as ad
    from sklearn.metrics import adjusted_rand_score

    from hiermix_pyro.study import seed_agreement

    study, root = finished
    cells = [f"c{i}" for i in range(8)]
    labels = [[0, 0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0]]
    for seed, l1 in enumerate(labels):
        obs = pd.DataFrame({"cluster_L1": [str(v) for v in l1]}, index=cells)
        adata = ad.AnnData(np.zeros((8, 1), dtype=np.float32), obs=obs, uns={"hiermix": {"levels": ["L1"]}})
        adata.write_h5ad(Path(study.run_dir("sim", "vae", seed, root=str(root))) / "adata.h5ad")
    previous = pd.DataFrame(
        [
            dict(dataset="sim", method="momix_t", n_seeds=4, level="L1", n_pairs=6, mean_ari=0.5, min_ari=0.1),
            dict(dataset="sim", method="vae", n_seeds=9, level="L1", n_pairs=36, mean_ari=0.9, min_ari=0.8),
        ]
    )
    table = seed_agreement(study, str(root), previous)
    vae = table.query("method == 'vae' and level == 'L1'").iloc[0]
    assert vae["n_seeds"] == 3 and vae["n_pairs"] == 3  # found here: computed, the old row replaced
    pairs = [adjusted_rand_score(labels[a], labels[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert pairs[0] == 1.0 and vae["mean_ari"] == pytest.approx(np.mean(pairs)) and vae["min_ari"] == min(pairs)
    momix = table.query("method == 'momix_t'")  # one run here (no clusters saved): the old row stays
    assert momix["n_seeds"].tolist() == [4] and momix["mean_ari"].tolist() == [0.5]
    assert seed_agreement(study, str(root)).query("method == 'momix_t'").empty
