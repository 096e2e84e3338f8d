"""The results page's figures and tables (hiermix_pyro.report) on small summaries made by
hiermix_pyro.study.summarise from hand-made run tables: cells, dropped rows and columns, the
epoch-ceiling flag, the figures, the eb_sweep settings parsed from variant names."""

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

from hiermix_pyro import report
from hiermix_pyro.study import summarise

matplotlib.use("Agg")

PEER_LABELS = {"pca_leiden": "scanpy PCA + Leiden (oracle k)", "pca_kmeans": "scanpy PCA + k-means (k)"}


def runs_table(
    methods=("vae", "momix", "pca_leiden", "pca_kmeans"), seeds=(0, 1, 2), levels=("L1", "L2"), dataset="sim"
):
    """A tidy table as hiermix_pyro.study.collect writes it: one row per run and level."""
    rng = np.random.default_rng(0)
    rows = []
    for i, method in enumerate(methods):
        peer = method in PEER_LABELS
        for seed in seeds:
            run = dict(
                dataset=dataset,
                method=method,
                kind="peer" if peer else "model",
                label=PEER_LABELS.get(method, method),
                oracle_k=method == "pca_leiden",
                seed=seed,
                h_f1=0.5 + 0.05 * i + 0.01 * rng.standard_normal(),
                h_precision=0.6,
                h_recall=0.7,
                dendrogram_purity=0.6 + 0.01 * rng.standard_normal(),
                iwae=np.nan if peer else -100.0 - rng.random(),
                epochs=np.nan if peer else 40 + seed,
                hit_ceiling=method == "momix" and seed == 0,
            )
            for j, level in enumerate(levels):
                rows.append(
                    dict(
                        run,
                        level=level,
                        n_classes=2 * (j + 1),
                        ari=0.3 + 0.1 * i + 0.02 * rng.standard_normal(),
                        nmi=0.4 + 0.05 * i + 0.02 * rng.standard_normal(),
                        weighted_f1=np.nan,  # a metric nobody has: its column must not appear
                        utilized_clusters=2.0 * (j + 1),
                    )
                )
    return pd.DataFrame(rows)


@pytest.fixture
def summary():
    """The study's order of methods (summarise sorts them by name)."""
    return report.order_methods(summarise(runs_table()), ["vae", "momix", "pca_leiden", "pca_kmeans"])


def test_format_cell_single_seed_has_no_interval():
    assert report.format_cell(0.5, np.nan, np.nan, 1) == "0.500 (n=1)"
    assert report.format_cell(0.5, 0.4, 0.7, 3) == "0.500 ± 0.150 (n=3)"
    assert report.format_cell(np.nan, np.nan, np.nan, 0) == ""
    assert report.format_p(0.0004) == "p < 0.001" and report.format_p(0.0312) == "p = 0.031"
    assert report.format_p(math.nan) == ""


def test_compact_table_cells_rows_and_columns(summary):
    table = report.compact_table(summary, "sim")
    assert list(table.columns) == ["ARI L1", "ARI L2", "hierarchical F1", "dendrogram purity"]
    assert list(table.index) == ["vae", "momix †", "scanpy PCA + Leiden (oracle k)", "scanpy PCA + k-means (k)"]
    text = " ".join(table.to_numpy().ravel())
    assert "± 0.0 " not in text and "nan" not in text and "(n=3)" in text
    assert "p = " in table.loc["vae", "ARI L1"] and "p" not in table.loc["scanpy PCA + k-means (k)", "ARI L1"]
    wide = report.compact_table(summary, "sim", columns=[("weighted_f1", "L1"), ("ari", "L1")])
    assert list(wide.columns) == ["ARI L1"]  # an all-empty column is dropped
    assert report.ceiling_notes(summary, "sim") == [
        "† momix: 1 of 3 runs stopped at the epoch ceiling, not by early stopping (not converged)."
    ]


def test_single_seed_rows_show_n_and_no_p():
    one = summarise(runs_table(seeds=(0,)))
    table = report.compact_table(one, "sim")
    cells = table.to_numpy().ravel()
    assert all(c.endswith("(n=1)") for c in cells) and not any("±" in c or "p" in c for c in cells)


def test_rows_without_a_value_are_dropped(summary):
    extra = summary[summary["method"].eq("vae")].assign(method="empty", label="empty", mean=np.nan)
    table = report.compact_table(pd.concat([summary, extra]), "sim")
    assert "empty" not in table.index and len(table) == 4


def test_training_table_models_only(summary):
    table = report.training_table(summary)
    assert list(table.index.get_level_values("method")) == ["vae", "momix"]
    assert table.loc[("sim", "momix"), "runs at the epoch ceiling"] == 1


def test_level_figure_draws_every_method(summary):
    fig = report.level_figure(summary, "sim")
    assert [ax.get_title() for ax in fig.axes] == ["ARI", "NMI", "whole hierarchy"]
    assert fig.get_size_inches()[0] <= 10  # not wider than the page
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [
        "vae (n=3)",
        "momix (n=3)",
        "scanpy PCA + Leiden (oracle k) (n=3)",
        "scanpy PCA + k-means (k) (n=3)",
    ]
    assert report.level_figure(summary, "no such dataset") is None


def test_settings_from_variant_names():
    runs = runs_table(methods=("vmm_bs64_emlr0.01", "vmm_bs128_emlr0.001", "vmm_bs128_emlr0.1"), seeds=(0,))
    summary = summarise(runs)
    settings = report.settings_of(summary)
    assert set(settings["level"]) == {"L2"}  # the finest level only
    assert sorted(set(zip(settings["batch_size"], settings["em_lr"]))) == [(64, 0.01), (128, 0.001), (128, 0.1)]
    table = report.settings_table(summary)
    assert table.loc[("sim", 128, "0.1"), "used clusters L2"] == "4.000 (n=1)"
    fig = report.settings_figure(summary, runs)
    assert len(fig.axes) == 2 and "its 4 cell types" in fig.axes[0].get_title()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["batch 64 (n=1)", "batch 128 (n=1)"]
    assert report.settings_figure(summarise(runs_table())) is None  # no settings in the names


def test_study_tables_and_sources(tmp_path, summary, monkeypatch):
    assert report.load_study_tables("headline", tmp_path) is None
    assert report.not_run("eb_sweep").endswith("`make bench STUDY=eb_sweep` (benchmarks/studies/eb_sweep.yaml).")
    summary.insert(0, "study", "benchmarks/studies/mine.yaml")
    summary.insert(1, "commit", "0123456789abcdef;fedcba9876543210-dirty")
    summary.to_csv(tmp_path / "mine_summary.csv", index=False)
    runs_table().to_csv(tmp_path / "mine.csv", index=False)
    monkeypatch.setenv("HIERMIX_RESULTS_DIR", str(tmp_path))
    loaded, runs = report.load_study_tables("mine")
    assert len(loaded) == len(summary) and len(runs) == 24
    text = report.source("mine", loaded)
    assert "benchmarks/studies/mine.yaml" in text and "0123456, fedcba9-dirty" in text
    assert "`make bench STUDY=mine`" in text


def test_legacy_tables_are_documented():
    """Every file of the retired grid runner has its entry (what, command, commit) in the legacy
    README, and the results page reads neither them nor the removed runner."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    legacy = root / "benchmarks" / "results" / "legacy"
    readme = (legacy / "README.md").read_text()
    files = [p.relative_to(legacy).as_posix() for p in legacy.rglob("*") if p.is_file() and p.name != "README.md"]
    assert files and all(f"| `{f}` |" in readme for f in files), files
    assert "e33e406" in readme
    page = (root / "notebooks" / "benchmark.md").read_text()
    assert "legacy/" in page and "bench." not in page.replace("make bench", "")


def test_speed_table_settings_go_to_the_caption():
    table = pd.DataFrame({"tool": ["a", "b"], "threads": [2, 2], "epochs": [5, 5], "seconds_per_epoch": [0.7, 0.6]})
    shown, settings = report.split_constant(table, ["threads", "epochs", "rounds"])
    assert list(shown.columns) == ["tool", "seconds_per_epoch"] and settings == {"threads": 2, "epochs": 5}
    command = report.script_command("benchmarks/step_time.py", {"batch_size": 512}, "x.csv", "y.csv")
    assert command == ".venv/bin/python benchmarks/step_time.py --batch-size 512 --csv x.csv"


def test_confusion_figure_one_panel_per_method():
    conf = pd.DataFrame(
        dict(
            method=["m", "m", "m", "p"],
            level=["L2", "L2", "L2", "L2"],
            true=["a", "a", "b", "a"],
            aligned=["a", "unmatched", "b", "a"],
            fraction=[0.75, 0.25, 1.0, 1.0],
            sd=[0.1, 0.1, 0.0, 0.0],
            n_seeds=[3, 3, 3, 1],
        )
    )
    fig = report.confusion_figure(conf, "L2")
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert len(heatmaps) == 2 and heatmaps[0].get_title() == "m (n=3)"
    assert heatmaps[0].images[0].get_array().shape == (2, 3)  # classes a, b; clusters a, b, unmatched
    assert report.confusion_figure(conf, "L9") is None


def test_lever_table_and_figure(tmp_path, monkeypatch):
    from hiermix_pyro.study import paired_differences

    runs = runs_table(methods=("momix", "vae", "pca_leiden"), seeds=(0, 1, 2, 3))
    runs["val_elbo"] = -100.0 + runs["seed"] + 2.0 * runs["method"].eq("vae")
    levers = paired_differences(runs, "momix")
    levers.insert(0, "study", "benchmarks/studies/mine.yaml")
    levers.to_csv(tmp_path / "mine_levers.csv", index=False)
    monkeypatch.setenv("HIERMIX_RESULTS_DIR", str(tmp_path))
    read = report.load_levers("mine")
    table = report.lever_table(read, "sim")
    assert list(table.index) == ["vae"] and table.index.name == "variant − momix"
    assert list(table.columns) == ["ARI L1", "ARI L2", "hierarchical F1", "dendrogram purity", "validation ELBO"]
    ari = read.query("metric == 'ari' and level == 'L1'").iloc[0]
    assert (
        table.loc["vae", "ARI L1"].startswith(f"{ari['mean_diff']:+.3f} ± ") and "(n=4)" in table.loc["vae", "ARI L1"]
    )
    assert table.loc["vae", "validation ELBO"] == "+2.0 ± 0.0* (n=4)"  # the same every seed: no p
    assert report.label_free_choice(read, "sim").startswith(
        "Chosen without labels (the highest validation ELBO): `vae`, +2.00"
    )
    assert "the baseline `momix`" in report.label_free_choice(read.assign(mean_diff=-1.0), "sim")
    # a variant the study marks as no candidate is left out of the choice, and said to be
    left_out = report.label_free_choice(read, "sim", exclude={"vae": "other level sizes"})
    assert "the baseline `momix`" in left_out and left_out.endswith("Not candidates: `vae` (other level sizes).")
    fig = report.lever_figure(read, "sim")
    assert len(fig.axes) == 5
    assert report.lever_figure(read, "other") is None and report.load_levers("absent") is None


def test_elbo_alignment_table_and_figure(tmp_path, monkeypatch):
    from hiermix_pyro.study import elbo_alignment, paired_differences

    runs = runs_table(methods=("momix", "vae", "mixture", "indmom"), seeds=(0, 1, 2, 3))
    gain = runs["method"].map({"momix": 0.0, "vae": 1.0, "mixture": 2.0, "indmom": 3.0})
    runs["val_elbo"] = -100.0 + runs["seed"] + gain
    runs["ari"] = 0.5 - 0.1 * gain  # the labels prefer what the ELBO does not
    levers = paired_differences(runs, "momix")
    elbo_alignment(levers).to_csv(tmp_path / "mine_elbo_alignment.csv", index=False)
    monkeypatch.setenv("HIERMIX_RESULTS_DIR", str(tmp_path))
    alignment = report.load_elbo_alignment("mine")
    table = report.elbo_alignment_table(alignment, "sim")
    assert list(table.index[:2]) == ["ARI L1", "ARI L2"]
    assert table.loc["ARI L1", ("all variants", "rho")] == -1.0 and table.loc["ARI L1", ("all variants", "n")] == 3
    assert table.loc["ARI L1", ("variants with ELBO gain > 0", "n")] == 3  # every variant gains ELBO here
    fig = report.elbo_alignment_figure(levers, alignment, "sim", exclude={"vae": "why"})
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(table) and panels[0].get_title() == "ARI L1\nrho -1.00, right of 0: -1.00"
    assert report.elbo_alignment_figure(levers, alignment, "other") is None
    assert report.load_elbo_alignment("absent") is None


def test_format_difference_marks_intervals_that_exclude_zero():
    assert report.format_difference(0.1, 0.05, 0.15, 5, 0.01) == "+0.100 ± 0.050* (n=5) p = 0.01"
    assert report.format_difference(-0.1, -0.3, 0.1, 5, 0.3) == "-0.100 ± 0.200 (n=5) p = 0.3"
    assert report._two_lines(report.format_difference(0.1, 0.05, 0.15, 5, 0.01)).endswith("\nn=5, p = 0.01")


def test_agreement_table_and_choice(tmp_path, monkeypatch):
    rows = [
        dict(dataset="sim", method=m, n_seeds=n, level=lvl, n_pairs=3, mean_ari=v, min_ari=v)
        for m, n, values in (("a", 3, (0.9, 0.7)), ("b", 2, (1.0, 1.0)), ("c", 4, (0.8, 0.6)))
        for lvl, v in zip(("L1", "mean"), values)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "mine_agreement.csv", index=False)
    monkeypatch.setenv("HIERMIX_RESULTS_DIR", str(tmp_path))
    agreement = report.load_agreement("mine")
    table = report.agreement_table(agreement, "sim")
    assert list(table.index) == ["a (n=3)", "b (n=2)", "c (n=4)"] and list(table.columns) == ["L1", "mean"]
    # b agrees most but has two seeds only: the choice needs three
    assert "`a`, mean ARI 0.700" in report.agreement_choice(agreement, "sim")
    assert "`c`, mean ARI 0.600" in report.agreement_choice(agreement, "sim", exclude={"a": "why"})
    assert report.load_agreement("absent") is None


def test_coarse_split_table_orders_rules_and_counts_seeds():
    splits = pd.DataFrame(
        [
            dict(seed=s, rule=rule, split=split, ari=ari)
            for s in range(3)
            for rule, split, ari in [
                ("model", np.nan, 0.3 + 0.1 * s),
                ("single", "a | b+c" if s < 2 else "a+b | c", 1.0 if s < 2 else 0.2),
                ("truth", "a | b+c", 1.0),
            ]
        ]
    )
    table = report.coarse_split_table(splits)
    assert table["rule"].tolist() == ["truth", "single", "single", "model"]
    assert table["seeds"].tolist() == [3, 2, 1, 3]
    assert table["mean ARI"].tolist() == [1.0, 1.0, 0.2, 0.4]


def test_level_split_table_has_one_row_per_embedding_and_rule():
    rows = []
    for seed in range(2):
        for rule, l2_split in [("variance", "big"), ("likelihood", "small")]:
            ari = 0.5 + 0.1 * seed if rule == "variance" else 0.9
            rows += [
                dict(
                    embedding="pca",
                    rule=rule,
                    seed=seed,
                    level="L1",
                    group="all",
                    greedy_splits=1,
                    greedy_ari=0.2,
                    forced_ari=0.2,
                ),
                dict(
                    embedding="pca",
                    rule=rule,
                    seed=seed,
                    level="L2",
                    group="big",
                    greedy_splits=int(l2_split == "big"),
                    greedy_ari=ari,
                    forced_ari=0.95,
                ),
                dict(
                    embedding="pca",
                    rule=rule,
                    seed=seed,
                    level="L2",
                    group="small",
                    greedy_splits=int(l2_split == "small") + seed,
                    greedy_ari=ari,
                    forced_ari=0.95,
                ),
            ]
    table = report.level_split_table(pd.DataFrame(rows)).set_index("rule")
    assert table.loc["variance", "greedy L2"] == "0.550 (big, small x0.5)"  # the second seed also split small
    assert table.loc["likelihood", "greedy L2"] == "0.900 (small x1.5)"
    assert table.loc["variance", "greedy L1"] == "0.200 (all)" and table.loc["likelihood", "forced L2"] == 0.95
    assert table["seeds"].tolist() == [2, 2]


def test_challengers_replace_the_defaults_only_with_a_clear_gain():
    runs = runs_table(methods=("d", "a", "b", "x", "pca_leiden"), seeds=(0, 1, 2, 3))
    noise = {0: 0.1, 1: -0.1, 2: 0.05, 3: -0.05}
    gain = {"d": 0.0, "a": 0.3, "b": 0.0, "x": 2.0, "pca_leiden": 0.0}
    runs["val_elbo"] = (
        -100.0 + runs["seed"] + runs["method"].map(gain) + runs["seed"].map(noise) * runs["method"].eq("b")
    )
    sentence = report.challengers(runs, "sim", "d", exclude={"x": "why"})
    assert "`a` has the higher validation ELBO, +0.30" in sentence and sentence.endswith("it should replace them.")
    runs.loc[runs["method"].eq("a"), "val_elbo"] -= 0.3  # a tie: nobody beats the defaults
    sentence = report.challengers(runs, "sim", "d", exclude={"x": "why"})
    assert "no variant has a higher validation ELBO" in sentence and sentence.endswith("The defaults stay.")
    assert "`x`" not in sentence and report.challengers(runs, "sim", "absent") is None
    runs["iwae"] = runs["val_elbo"] + 0.5 * runs["method"].eq("x")  # the page's check: another bound, no exclusions
    sentence = report.challengers(runs, "sim", "d", metric="iwae")
    assert (
        "`x` has the higher IWAE, +2.50" in sentence
        and report.challengers(runs.drop(columns="iwae"), "sim", "d", metric="iwae") is None
    )


def test_dataset_differences_pair_the_seeds_of_two_preparations():
    genes500 = runs_table(dataset="genes500")
    genes2000 = genes500[genes500["method"].isin(["momix", "pca_leiden"])].assign(dataset="genes2000")
    genes2000["ari"] += 0.05 + 0.01 * genes2000["seed"]  # seeds 0-2: a mean gain of 0.06
    runs = pd.concat([genes500, genes2000, runs_table(dataset="genes2000", methods=("extra",))])
    diffs = report.dataset_differences(runs, "genes500", "genes2000")
    assert set(diffs["method"]) == {"momix", "pca_leiden"}  # "extra" has no runs on genes500
    ari = diffs[diffs["metric"].eq("ari")]
    assert ari["n"].eq(3).all() and np.allclose(ari["mean_diff"], 0.06)
    assert set(diffs.loc[diffs["metric"].eq("h_f1"), "level"]) == {"all"}
    table = report.lever_table(diffs, "genes2000")
    assert table.index.name == "variant − genes500" and "+0.060" in table.loc["momix", "ARI L1"]
    with pytest.raises(ValueError, match="no runs of dataset 'absent'"):
        report.dataset_differences(runs, "genes500", "absent")


def test_target_table_marks_the_models_targets_met(summary):
    targets = {("ari", "L1"): 0.35, ("ari", "L2"): 0.9, ("h_f1", "all"): report.PEERS_TARGET}
    table = report.target_table(summary, [("sim", "momix"), ("sim", "vae"), ("sim", "pca_leiden")], targets)
    assert list(table.index) == ["target", "momix (sim)", "vae (sim)", "scanpy PCA + Leiden (oracle k) (sim)"]
    assert table.loc["target"].tolist() == ["≥ 0.35", "≥ 0.9", "above every peer, p < 0.05", ""]
    # runs_table: ARI about 0.3 + 0.1 i (vae i=0, momix i=1, pca_leiden i=2) and hierarchical F1 0.5 + 0.05 i
    assert table.loc["momix (sim)", "ARI L1"].startswith("✓") and not table.loc["vae (sim)", "ARI L1"].startswith("✓")
    assert not table.loc["momix (sim)", "ARI L2"].startswith("✓")
    assert not table.loc["momix (sim)", "hierarchical F1"].startswith("✓")  # below the peer: p near 1
    assert table.loc["momix (sim)", "targets met"] == "1 of 3" and table.loc["vae (sim)", "targets met"] == "0 of 3"
    peer = table.loc["scanpy PCA + Leiden (oracle k) (sim)"]
    assert "✓" not in " ".join(peer) and peer["targets met"] == ""  # 0.5 clears 0.35, but targets are a model's
    above = summary.assign(mannwhitney_p=summary["mannwhitney_p"].where(~summary["method"].eq("vae"), 0.01))
    assert report.target_table(above, [("sim", "vae")], targets).loc["vae (sim)", "hierarchical F1"].startswith("✓")
    with pytest.raises(KeyError, match="absent"):
        report.target_table(summary, [("sim", "absent")], targets)
    with pytest.raises(KeyError, match="weighted_f1"):
        report.target_table(summary, [("sim", "momix")], {("weighted_f1", "L1"): 0.5})
