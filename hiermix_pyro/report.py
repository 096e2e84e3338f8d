"""The results page's figures and tables (``notebooks/benchmark.md``), drawn only from the
benchmark workflow's files.

A study's tables are ``<study>.csv`` (one row per run and label level) and ``<study>_summary.csv``
(per dataset, method, level and metric: n, mean, the t-based 95% CI, the one-sided Mann-Whitney
test of each model against the best peer), written by ``make bench STUDY=<study>`` (the collect
rule, :func:`hiermix_pyro.study.write_results`) into ``benchmarks/results/studies/``, or into the
folder named by the environment variable ``HIERMIX_RESULTS_DIR``. Nothing here computes a score:
every number shown is a cell of those files.

- :func:`level_figure`: per level, the mean and its 95% CI of ARI and NMI, and the whole
  hierarchy's scores, every method of one dataset on one axis per panel (peers in grey, hollow).
- :func:`compact_table`: one row per method, cells ``mean ± half-width of the CI (n=...)`` and,
  for our models, the Mann-Whitney p against the best peer.
- :func:`lever_figure`, :func:`lever_table`: each variant's seed-by-seed difference from the
  study's baseline (``<study>_levers.csv``), with its 95% CI: the lever-by-lever ablation.
- :func:`settings_figure`, :func:`settings_table`: the VMM's used clusters and NMI against batch
  size and EM learning rate (the ``eb_sweep`` study).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from . import plotting
from .study import RESULTS_DIR as STUDY_RESULTS_DIR
from .study import load_study

SPEED_DIR = STUDY_RESULTS_DIR.parent  # benchmarks/results: the speed scripts' tables
NAMES = {
    "ari": "ARI",
    "nmi": "NMI",
    "weighted_f1": "weighted F1",
    "purity": "purity",
    "accuracy": "accuracy",
    "utilized_clusters": "used clusters",
    "h_f1": "hierarchical F1",
    "h_precision": "hierarchical precision",
    "h_recall": "hierarchical recall",
    "dendrogram_purity": "dendrogram purity",
    "iwae": "IWAE",
    "val_elbo": "validation ELBO",
    "epochs": "epochs",
}
SHORT_NAMES = {"h_f1": "hier. F1", "dendrogram_purity": "dendr. purity", "val_elbo": "val. ELBO"}  # narrow panels
RUN_LEVEL = "all"  # the summary's level of run-wide metrics (hierarchy scores, IWAE, epochs)
PEER_MARKERS = ("s", "D", "^", "v", "P", "X")
PEER_GREYS = ("0.15", "0.45", "0.3", "0.6", "0.2", "0.5")
# the page's text column is about 7 inches wide at 1280 px: figures of that width, fonts that stay legible
FIG_WIDTH = 7.5
FONT = {
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "xtick.labelsize": 11.5,
    "ytick.labelsize": 11.5,
    "legend.fontsize": 11.5,
}


def results_dir() -> Path:
    """Where the study tables are read: ``$HIERMIX_RESULTS_DIR``, else benchmarks/results/studies."""
    return Path(os.environ.get("HIERMIX_RESULTS_DIR") or STUDY_RESULTS_DIR)


def command(name: str) -> str:
    return f"make bench STUDY={name}"


def load_study_tables(name: str, folder: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """``(summary, runs)`` of study ``name``, or None when its summary does not exist (not run yet)."""
    folder = Path(folder) if folder is not None else results_dir()
    summary, runs = folder / f"{name}_summary.csv", folder / f"{name}.csv"
    if not summary.exists() or summary.stat().st_size == 0:
        return None
    s = pd.read_csv(summary)
    if s.empty:
        return None
    r = pd.read_csv(runs) if runs.exists() and runs.stat().st_size > 0 else pd.DataFrame()
    try:  # the study file's order of methods (the summary's is alphabetical)
        s = order_methods(s, load_study(name).methods)
    except (FileNotFoundError, ValueError):
        pass
    return s, r


def order_methods(summary: pd.DataFrame, order) -> pd.DataFrame:
    """``summary`` with its methods in ``order`` (those not in it last), otherwise as it was."""
    rank = {m: i for i, m in enumerate(order)}
    key = summary["method"].map(rank).fillna(len(rank))
    return summary.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def not_run(name: str) -> str:
    """The one line shown for a study whose tables do not exist."""
    return f"The study `{name}` has not been run yet: `{command(name)}` (benchmarks/studies/{name}.yaml)."


def source(name: str, summary: pd.DataFrame, folder: str | Path | None = None) -> str:
    """Which study, commit(s), file and command a figure or table comes from."""
    folder = Path(folder) if folder is not None else results_dir()
    study_file = summary["study"].iloc[0] if "study" in summary else f"benchmarks/studies/{name}.yaml"
    recorded = summary["commit"].dropna().unique() if "commit" in summary else []
    commits = sorted({c[:7] + ("-dirty" if c.endswith("-dirty") else "") for s in recorded for c in str(s).split(";")})
    try:
        table = (folder / f"{name}_summary.csv").resolve().relative_to(STUDY_RESULTS_DIR.parents[2])
    except ValueError:
        table = folder / f"{name}_summary.csv"
    commit = ", ".join(commits) or "unknown"
    return f"Study `{name}` ({study_file}, runs of commit {commit}): `{table}`, made by `{command(name)}`."


# ---- table cells ----
def half_width(low: float, high: float) -> float:
    return (high - low) / 2 if not (pd.isna(low) or pd.isna(high)) else math.nan


def format_cell(mean: float, low: float, high: float, n: int, digits: int = 3) -> str:
    """``mean ± half-width of the 95% CI (n=...)``; ``mean (n=1)`` without an interval (one seed,
    where the summary's CI is NaN); empty for a missing mean."""
    if pd.isna(mean):
        return ""
    hw = half_width(low, high)
    if int(n) < 2 or pd.isna(hw):
        return f"{mean:.{digits}f} (n={int(n)})"
    return f"{mean:.{digits}f} ± {hw:.{digits}f} (n={int(n)})"


def format_p(p: float) -> str:
    """A Mann-Whitney p for a table cell; empty where there is none."""
    if pd.isna(p):
        return ""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def levels_of(summary: pd.DataFrame, dataset: str) -> list[str]:
    """The dataset's label levels, coarse to fine, in the summary's order (without ``all``)."""
    levels = summary.loc[summary["dataset"].eq(dataset), "level"].astype(str)
    return [lvl for lvl in dict.fromkeys(levels) if lvl != RUN_LEVEL]


def methods_of(summary: pd.DataFrame, dataset: str | None = None) -> pd.DataFrame:
    """One row per method (models first, then peers, each in the study's order): method, kind,
    label, oracle_k, n_hit_ceiling, n (the most seeds of any of its scores)."""
    d = summary if dataset is None else summary[summary["dataset"].eq(dataset)]
    n = d.groupby("method", sort=False)["n"].max()
    out = d.drop_duplicates("method")[["method", "kind", "label", "oracle_k", "n_hit_ceiling"]].copy()
    out["n"] = out["method"].map(n).astype(int)
    out["_peer"] = out["kind"].eq("peer")
    return out.sort_values("_peer", kind="stable").drop(columns="_peer").reset_index(drop=True)


def default_columns(summary: pd.DataFrame, dataset: str) -> list[tuple[str, str]]:
    """(metric, level) columns of a dataset's table: ARI at every level, the hierarchical F1 and
    dendrogram purity of the whole hierarchy (NMI is in the figure; a wider table would not fit
    the page)."""
    levels = levels_of(summary, dataset)
    return [*[("ari", lvl) for lvl in levels], ("h_f1", RUN_LEVEL), ("dendrogram_purity", RUN_LEVEL)]


def column_name(metric: str, level: str) -> str:
    return NAMES.get(metric, metric) + ("" if level == RUN_LEVEL else f" {level}")


def _tested(row, cells: dict) -> bool:
    """A model's Mann-Whitney p is shown where it can say something: at least two seeds of the
    model and of the best peer (with one each, p cannot fall below 0.5)."""
    peer = cells.get((row.get("best_peer"), row["metric"], str(row["level"])))
    return row["n"] >= 2 and peer is not None and peer["n"] >= 2


def compact_table(summary: pd.DataFrame, dataset: str, columns=None, digits: int = 3) -> pd.DataFrame:
    """One row per method of ``dataset`` (index: its label, ``†`` when some of its runs stopped at
    the epoch ceiling), one column per (metric, level); cells from :func:`format_cell`, and for our
    models a second line with the one-sided Mann-Whitney p against the best peer. Rows and columns
    without a single value are left out."""
    d = summary[summary["dataset"].eq(dataset)]
    columns = list(columns) if columns is not None else default_columns(summary, dataset)
    methods = methods_of(summary, dataset)
    cells = {(r["method"], r["metric"], str(r["level"])): r for _, r in d.iterrows()}
    rows = {}
    for _, m in methods.iterrows():
        row = {}
        for metric, level in columns:
            r = cells.get((m["method"], metric, level))
            if r is None:
                row[column_name(metric, level)] = ""
                continue
            text = format_cell(r["mean"], r["ci95_low"], r["ci95_high"], r["n"], digits)
            p = format_p(r.get("mannwhitney_p", math.nan)) if text and _tested(r, cells) else ""
            row[column_name(metric, level)] = text + (f"\n{p}" if p else "")
        label = m["label"] + (" †" if m["n_hit_ceiling"] > 0 else "")
        rows[label] = row
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[column_name(*c) for c in columns])
    table = table.loc[table.ne("").any(axis=1), table.ne("").any(axis=0)]
    table.index.name = "method"
    return table


PEERS_TARGET = "peers"  # a target met when a model is above the best peer: one-sided Mann-Whitney p < ALPHA
ALPHA = 0.05


def _meets(row, target) -> bool:
    if target == PEERS_TARGET:
        return bool(row.get("mannwhitney_p", math.nan) < ALPHA)
    return bool(row["mean"] >= target)


def _target_text(target) -> str:
    return f"above every peer, p < {ALPHA:g}" if target == PEERS_TARGET else f"≥ {target:g}"


def target_table(summary: pd.DataFrame, rows, targets: dict, digits: int = 3) -> pd.DataFrame:
    """Scores against targets: a first row with the targets, then one row per ``(dataset, method)``
    of ``rows`` (index: the method's label and the dataset), one column per (metric, level) of
    ``targets``, the last column how many targets a model meets. A target is a threshold on the
    mean or :data:`PEERS_TARGET` (above the dataset's best peer, one-sided Mann-Whitney p <
    :data:`ALPHA`); a model's cell that meets it starts with ``✓``, and a peer's has no mark, since
    the targets are a model's. Cells from :func:`format_cell`.

    Raises
    ------
    KeyError
        If a row's method or a target's score is not in ``summary`` for that dataset.
    """
    names = [column_name(*c) for c in targets]
    out = {"target": [*map(_target_text, targets.values()), ""]}  # the last column: targets met
    for dataset, method in rows:
        d = summary[summary["dataset"].eq(dataset) & summary["method"].eq(method)]
        if d.empty:
            raise KeyError(f"no scores of {method!r} on {dataset!r} in the summary")
        cells, met = [], 0
        model = d["kind"].iloc[0] != "peer"
        for (metric, level), target in targets.items():
            r = d[d["metric"].eq(metric) & d["level"].astype(str).eq(level)]
            if r.empty:
                raise KeyError(f"no {metric} at {level} for {method!r} on {dataset!r} in the summary")
            r = r.iloc[0]
            hit = model and _meets(r, target)
            met += hit
            cells.append(("✓ " if hit else "") + format_cell(r["mean"], r["ci95_low"], r["ci95_high"], r["n"], digits))
        cells.append(f"{met} of {len(targets)}" if model else "")
        out[f"{d['label'].iloc[0]} ({dataset})"] = cells
    table = pd.DataFrame.from_dict(out, orient="index", columns=[*names, "targets met"])
    table.index.name = "method (dataset)"
    return table


def ceiling_notes(summary: pd.DataFrame, dataset: str | None = None) -> list[str]:
    """``† method: k of n runs stopped at the epoch ceiling`` for each method that has such runs."""
    methods = methods_of(summary, dataset)
    return [
        f"† {r['label']}: {int(r['n_hit_ceiling'])} of {r['n']} runs stopped at the epoch ceiling, "
        "not by early stopping (not converged)."
        for _, r in methods.iterrows()
        if r["n_hit_ceiling"] > 0
    ]


def training_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Our models' IWAE (nats per test cell) and training epochs, per dataset: rows (dataset,
    method), cells as :func:`format_cell`; methods without either are left out."""
    d = summary[summary["kind"].eq("model") & summary["level"].astype(str).eq(RUN_LEVEL)]
    d = d[d["metric"].isin(["iwae", "epochs"])]
    if d.empty:
        return pd.DataFrame()
    d = d.assign(
        cell=[
            format_cell(r.mean, r.ci95_low, r.ci95_high, r.n, 1 if r.metric == "iwae" else 0) for r in d.itertuples()
        ],
        column=d["metric"].map({"iwae": "IWAE (nats per test cell)", "epochs": "epochs"}),
        ceiling=d["n_hit_ceiling"].astype(int),
    )
    wide = d.pivot_table(index=["dataset", "label"], columns="column", values="cell", aggfunc="first", sort=False)
    wide = wide.reindex(columns=[c for c in ("IWAE (nats per test cell)", "epochs") if c in wide])
    ceiling = d.drop_duplicates(["dataset", "label"]).set_index(["dataset", "label"])["ceiling"]
    wide["runs at the epoch ceiling"] = ceiling.reindex(wide.index).astype(int)
    wide.columns.name = None
    wide.index = wide.index.set_names(["dataset", "method"])
    return wide.fillna("")


def _two_lines(cell) -> str:
    """``0.812 ± 0.034 (n=10)\np = 0.003`` -> ``0.812 ± 0.034`` (never broken) over
    ``n=10, p = 0.003``: a narrow column on the page."""
    if not isinstance(cell, str) or " (n=" not in cell:
        return cell
    value, _, rest = cell.partition(" (n=")
    n, _, p = rest.partition(")")
    second = f"n={n}" + (f", {p.strip()}" if p.strip() else "")
    return value.replace(" ", "\u00a0") + "\n" + second


def styled(table: pd.DataFrame):
    """``table`` for display: each cell's value on one line and its n (and p) on the next, cells
    left-aligned, in a slightly smaller font, and row names that may break after an underscore,
    so that a dataset's table fits the page."""
    breakable = table.map(_two_lines).rename(  # long variant names may break after an underscore
        index=lambda label: label.replace("_", "_\u200b") if isinstance(label, str) else label
    )
    return breakable.style.set_properties(
        **{"white-space": "pre-line", "text-align": "left", "font-size": "0.85em", "padding": "0.15em 0.35em"}
    ).set_table_styles([{"selector": "th", "props": [("font-size", "0.85em"), ("padding", "0.15em 0.35em")]}])


# ---- figures ----
def method_styles(methods: pd.DataFrame) -> dict[str, dict]:
    """Our models: filled circles in the book's qualitative colours; peers: hollow grey markers
    of distinct shapes. Legend labels carry n (seeds)."""
    styles, i_model, i_peer = {}, 0, 0
    for _, m in methods.iterrows():
        label = f"{m['label']} (n={m['n']})"
        if m["kind"] == "peer":
            grey = PEER_GREYS[i_peer % len(PEER_GREYS)]
            styles[m["method"]] = dict(
                marker=PEER_MARKERS[i_peer % len(PEER_MARKERS)], color=grey, mfc="white", mec=grey, label=label
            )
            i_peer += 1
        else:
            color = plotting.QUALITATIVE[i_model % len(plotting.QUALITATIVE)]
            styles[m["method"]] = dict(marker="o", color=color, mfc=color, mec=color, label=label)
            i_model += 1
    return styles


def _points(ax, data: pd.DataFrame, xs: list[str], methods: pd.DataFrame, styles: dict) -> None:
    """Mean and 95% CI of each method at each x (``data``: the summary rows of one metric or of
    the run-wide metrics, with column ``x``), the methods side by side around each x."""
    k = len(methods)
    width = min(0.8, 0.08 * k)
    offsets = np.linspace(-width / 2, width / 2, k) if k > 1 else np.zeros(1)
    for offset, (_, m) in zip(offsets, methods.iterrows()):
        d = data[data["method"].eq(m["method"])].set_index("x").reindex(xs)
        pos = np.arange(len(xs)) + offset
        low = (d["mean"] - d["ci95_low"]).clip(lower=0).fillna(0)
        high = (d["ci95_high"] - d["mean"]).clip(lower=0).fillna(0)
        s = styles[m["method"]]
        ax.errorbar(
            pos, d["mean"], yerr=[low, high], fmt="none", ecolor=s["color"], elinewidth=1.2, capsize=2, zorder=2
        )
        ax.plot(
            pos, d["mean"], linestyle="none", marker=s["marker"], ms=6, mfc=s["mfc"], mec=s["mec"], mew=1.3, zorder=3
        )
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlim(-0.6, len(xs) - 0.4)


def level_figure(
    summary: pd.DataFrame,
    dataset: str,
    metrics=("ari", "nmi"),
    run_metrics=("h_f1", "dendrogram_purity"),
    width: float = FIG_WIDTH,
) -> Figure | None:
    """One panel per metric of ``metrics`` (x: the label levels, coarse to fine) and one of the
    whole hierarchy's ``run_metrics`` (x: the metric): mean with its 95% CI, every method of
    ``dataset`` on the same axes (peers grey and hollow; Leiden's label says it is told k). None
    when the dataset has none of these scores."""
    import matplotlib.pyplot as plt

    d = summary[summary["dataset"].eq(dataset)].assign(level=lambda x: x["level"].astype(str))
    levels = levels_of(summary, dataset)
    panels = [
        (NAMES[m], d[d["metric"].eq(m) & d["level"].ne(RUN_LEVEL)].assign(x=lambda x: x["level"]), levels)
        for m in metrics
    ]
    run = d[d["metric"].isin(run_metrics) & d["level"].eq(RUN_LEVEL)]
    short = {m: NAMES[m].replace(" ", "\n", 1) for m in run_metrics}  # two lines: the panel is narrow
    run_xs = [short[m] for m in run_metrics if m in set(run["metric"])]
    panels.append(("whole hierarchy", run.assign(x=run["metric"].map(short)), run_xs))
    panels = [p for p in panels if len(p[1]) and p[2]]
    if not panels:
        return None
    methods = methods_of(summary, dataset)
    methods = methods[methods["method"].isin(pd.concat([p[1] for p in panels])["method"])]
    styles = method_styles(methods)
    ratios = [max(len(xs), 1.6) if title != "whole hierarchy" else 2.2 * len(xs) for title, _, xs in panels]
    with plt.rc_context(FONT):
        fig, axes = plt.subplots(
            1, len(panels), figsize=(width, 3.6), squeeze=False, sharey=True, gridspec_kw=dict(width_ratios=ratios)
        )
        for ax, (title, data, xs) in zip(axes[0], panels):
            _points(ax, data, xs, methods, styles)
            ax.set_title(title)
            if title == "whole hierarchy":  # two long names side by side
                ax.tick_params(axis="x", labelsize=10)
            ax.axhline(0, color="0.8", linewidth=0.8, zorder=1)
        # every score here is at most 1 (ARI can be negative): a t interval of few seeds that
        # reaches past the possible range is cut at the frame
        lowest = min(0.0, *(p[1]["mean"].min() for p in panels))
        axes[0, 0].set_ylim(max(lowest - 0.1, -1.0), 1.05)
        axes[0, 0].set_ylabel("mean, 95% CI")
        levels_text = "levels coarse to fine" if len(levels) > 1 else "one level"
        axes[0, 0].set_xlabel(levels_text)
        handles = [
            Line2D(
                [],
                [],
                linestyle="none",
                marker=s["marker"],
                ms=7,
                mfc=s["mfc"],
                mec=s["mec"],
                mew=1.3,
                label=s["label"],
            )
            for s in styles.values()
        ]
        ncol = 2 if len(handles) > 3 else len(handles)
        fig.suptitle(dataset, x=0.01, ha="left", fontweight="bold")
        fig.tight_layout()
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=ncol, frameon=False)
    return fig


# ---- levers: variants against the study's baseline, seed by seed ----
def _read_study_file(name: str, suffix: str, folder: str | Path | None = None) -> pd.DataFrame | None:
    """``<folder>/<study>_<suffix>.csv`` as a table, or None when it is missing or empty."""
    path = (Path(folder) if folder is not None else results_dir()) / f"{name}_{suffix}.csv"
    if not path.exists() or path.stat().st_size == 0:
        return None
    table = pd.read_csv(path)
    return None if table.empty else table


def load_levers(name: str, folder: str | Path | None = None) -> pd.DataFrame | None:
    """``<study>_levers.csv`` (:func:`hiermix_pyro.study.paired_differences`) in the study file's
    order of methods, or None without it."""
    levers = _read_study_file(name, "levers", folder)
    if levers is None:
        return None
    try:
        levers = order_methods(levers, load_study(name).methods)
    except (FileNotFoundError, ValueError):
        pass
    return levers


def _lever_columns(levers: pd.DataFrame, dataset: str) -> list[tuple[str, str]]:
    d = levers[levers["dataset"].eq(dataset)]
    levels = [lvl for lvl in dict.fromkeys(d["level"].astype(str)) if lvl != RUN_LEVEL]
    run = [m for m in ("h_f1", "dendrogram_purity", "val_elbo") if m in set(d["metric"])]
    return [
        *[("ari", lvl) for lvl in levels if ((d["metric"] == "ari") & (d["level"] == lvl)).any()],
        *[(m, RUN_LEVEL) for m in run],
    ]


def format_difference(mean: float, low: float, high: float, n: int, p: float, digits: int = 3) -> str:
    """``+0.034 ± 0.020* (n=5) p = 0.01``: the mean difference ± the half-width of its 95% CI, ``*``
    when the CI excludes 0, n pairs and the paired t-test p (:func:`styled` puts n and p on a
    second line)."""
    if pd.isna(mean):
        return ""
    hw = half_width(low, high)
    if pd.isna(hw):
        return f"{mean:+.{digits}f} (n={int(n)})"
    star = "*" if low > 0 or high < 0 else ""
    p_text = f" p = {p:.2g}" if not pd.isna(p) else ""
    return f"{mean:+.{digits}f} ± {hw:.{digits}f}{star} (n={int(n)}){p_text}"


def lever_table(levers: pd.DataFrame, dataset: str, digits: int = 3) -> pd.DataFrame:
    """One row per variant, one column per (metric, level): the mean seed-by-seed difference from
    the baseline ± the half-width of its 95% CI (t), n pairs and the paired t-test p; ``*`` where
    the CI excludes 0. Validation ELBO in nats per cell (higher is better, and needs no labels)."""
    d = levers[levers["dataset"].eq(dataset)].assign(level=lambda x: x["level"].astype(str))
    cells = {(r.method, r.metric, r.level): r for r in d.itertuples()}
    rows = {}
    for method, label in dict(zip(d["method"], d["label"])).items():
        row = {}
        for metric, level in _lever_columns(levers, dataset):
            r = cells.get((method, metric, level))
            places = 1 if metric in ("val_elbo", "iwae") else digits
            row[column_name(metric, level)] = (
                "" if r is None else format_difference(r.mean_diff, r.ci95_low, r.ci95_high, r.n, r.paired_t_p, places)
            )
        rows[label] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = f"variant − {d['baseline'].iloc[0]}" if len(d) else "variant"
    return table


def dataset_differences(
    runs: pd.DataFrame, baseline: str, other: str, metrics=("ari", "h_f1", "dendrogram_purity")
) -> pd.DataFrame:
    """Each method's scores on dataset ``other`` minus those on ``baseline``, seed by seed: for two
    preparations of the same cells (e.g. 500 and 2,000 genes), whose runs of one seed share the data
    split. Long, in :func:`hiermix_pyro.study.paired_differences`' columns (``dataset`` is
    ``other``, ``baseline`` the baseline dataset), so that :func:`lever_table` shows it; methods
    with runs on one of the two only are left out."""
    from .study import RUN_METRICS, difference_summary

    for name in (baseline, other):
        if not runs["dataset"].eq(name).any():
            raise ValueError(f"no runs of dataset {name!r} (datasets: {sorted(runs['dataset'].unique())})")
    d = runs[runs["dataset"].isin([baseline, other])]
    rows = []
    for method, m in d.groupby("method", sort=False):
        for metric in metrics:
            per_run = metric in RUN_METRICS
            values = m.drop_duplicates(["dataset", "seed"]).assign(level=RUN_LEVEL) if per_run else m
            wide = values.pivot_table(index=["level", "seed"], columns="dataset", values=metric)
            if baseline not in wide or other not in wide:
                continue
            for level, diff in (wide[other] - wide[baseline]).dropna().groupby(level="level", sort=False):
                rows.append(
                    dict(
                        dataset=other,
                        method=method,
                        label=m["label"].iloc[0],
                        baseline=baseline,
                        level=str(level),
                        metric=metric,
                        **difference_summary(diff.to_numpy()),
                    )
                )
    return pd.DataFrame(rows)


def _left_out(exclude: dict | None) -> str:
    """`` Not candidates: `a` (why); `b` (why).`` for a choice's sentence (empty without any)."""
    if not exclude:
        return ""
    return " Not candidates: " + "; ".join(f"`{k}` ({why})" for k, why in exclude.items()) + "."


def label_free_choice(levers: pd.DataFrame, dataset: str, metric: str = "val_elbo", exclude=None) -> str | None:
    """The variant a user without labels would choose: the highest mean difference in ``metric``
    (validation ELBO) from the baseline among the variants with the most seeds, leaving out those
    in ``exclude`` ({variant: why}, the study's ``not_candidates``); the baseline itself when no
    variant's mean is above it. A sentence for the page; None without that metric."""
    exclude = dict(exclude or {})
    d = levers[levers["dataset"].eq(dataset) & levers["metric"].eq(metric)]
    if d.empty:
        return None
    baseline, name = d["baseline"].iloc[0], NAMES.get(metric, metric)
    d = d[~d["method"].isin(exclude)]
    d = d[d["n"].eq(d["n"].max())]
    best = d.loc[d["mean_diff"].idxmax()] if len(d) else None
    if best is None or best["mean_diff"] <= 0:
        return f"Chosen without labels ({name}): the baseline `{baseline}`; no variant's mean is above it." + _left_out(
            exclude
        )
    ci = (
        f"95% CI {best['ci95_low']:+.2f} to {best['ci95_high']:+.2f}"
        if not pd.isna(best["ci95_low"])
        else "one seed, no interval"
    )
    return (
        f"Chosen without labels (the highest {name}): `{best['method']}`, {best['mean_diff']:+.2f} nats per "
        f"cell against `{baseline}` ({ci}, n={int(best['n'])})." + _left_out(exclude)
    )


def challengers(runs: pd.DataFrame, dataset: str, incumbent: str, exclude=None, metric: str = "val_elbo") -> str | None:
    """Whether any variant should replace ``incumbent`` (the variant with the package's defaults):
    the candidates (not in ``exclude``) whose ``metric`` (validation ELBO), paired over the seeds they
    share with it, is higher with the 95% CI above 0. A sentence for the page; None when the runs
    table lacks the incumbent or the metric."""
    from .study import paired_differences

    d = runs[runs["dataset"].eq(dataset)] if "dataset" in runs else runs
    if metric not in d or not d["method"].eq(incumbent).any():
        return None
    diffs = paired_differences(d, incumbent, metrics=(metric,))
    diffs = diffs[~diffs["method"].isin(dict(exclude or {})) & diffs["n"].ge(2)] if len(diffs) else diffs
    if diffs.empty:
        return None
    name = NAMES.get(metric, metric)
    better = diffs[diffs["ci95_low"] > 0].sort_values("mean_diff", ascending=False)
    if len(better):
        top = better.iloc[0]
        return (
            f"Against the defaults (`{incumbent}`), paired over seeds: `{top['method']}` has the higher {name}, "
            f"{top['mean_diff']:+.2f} nats per cell (95% CI {top['ci95_low']:+.2f} to {top['ci95_high']:+.2f}, "
            f"n={int(top['n'])}): it should replace them."
        )
    top = diffs.sort_values("mean_diff", ascending=False).iloc[0]
    return (
        f"Against the defaults (`{incumbent}`), paired over seeds: no variant has a higher {name} with its 95% CI "
        f"above 0; the closest, `{top['method']}`, {top['mean_diff']:+.2f} nats per cell (95% CI "
        f"{top['ci95_low']:+.2f} to {top['ci95_high']:+.2f}, n={int(top['n'])}). The defaults stay."
    )


def load_agreement(name: str, folder: str | Path | None = None) -> pd.DataFrame | None:
    """``<study>_agreement.csv`` (:func:`hiermix_pyro.study.seed_agreement`), or None without it."""
    return _read_study_file(name, "agreement", folder)


def agreement_table(agreement: pd.DataFrame, dataset: str, digits: int = 3) -> pd.DataFrame:
    """One row per variant (with its number of seeds), one column per level and their mean: the
    mean ARI between the clusterings of two seeds of the same variant."""
    d = agreement[agreement["dataset"].eq(dataset)].assign(level=lambda x: x["level"].astype(str))
    table = d.pivot_table(index="method", columns="level", values="mean_ari", sort=False).round(digits)
    seeds = d.drop_duplicates("method").set_index("method")["n_seeds"].astype(int)
    table.index = [f"{m} (n={seeds[m]})" for m in table.index]
    table.index.name = "variant (seeds)"
    table.columns.name = None
    return table


def agreement_choice(agreement: pd.DataFrame, dataset: str, exclude=None) -> str | None:
    """The variant whose seeds agree most (the mean over levels), among those with at least 3 seeds
    and not in ``exclude`` ({variant: why})."""
    exclude = dict(exclude or {})
    d = agreement[agreement["dataset"].eq(dataset) & agreement["level"].astype(str).eq("mean")]
    d = d[~d["method"].isin(exclude)]
    d = d[d["n_seeds"] >= 3]
    if d.empty:
        return None
    best = d.loc[d["mean_ari"].idxmax()]
    return (
        f"Chosen without labels (the most stable across seeds): `{best['method']}`, mean ARI "
        f"{best['mean_ari']:.3f} between two seeds' clusterings (n={int(best['n_seeds'])} seeds)." + _left_out(exclude)
    )


def lever_figure(levers: pd.DataFrame, dataset: str, width: float = FIG_WIDTH) -> Figure | None:
    """A forest plot: one panel per (metric, level) of :func:`lever_table` (narrow panels: hier. F1
    is the hierarchical F1, dendr. purity the dendrogram purity, val. ELBO the validation ELBO in
    nats per cell), one row per variant, the mean difference from the baseline with its 95% CI
    and a line at 0 (no change). None when the dataset has no differences."""
    import matplotlib.pyplot as plt

    d = levers[levers["dataset"].eq(dataset)].assign(level=lambda x: x["level"].astype(str))
    if d.empty:
        return None
    columns = _lever_columns(levers, dataset)
    methods = list(dict.fromkeys(d["method"]))
    labels = dict(zip(d["method"], d["label"]))
    ys = np.arange(len(methods))[::-1]
    with plt.rc_context(FONT):
        fig, axes = plt.subplots(
            1, len(columns), figsize=(width, 0.32 * len(methods) + 1.6), squeeze=False, sharey=True
        )
        for ax, (metric, level) in zip(axes[0], columns):
            g = d[d["metric"].eq(metric) & d["level"].eq(level)].set_index("method").reindex(methods)
            low = (g["mean_diff"] - g["ci95_low"]).clip(lower=0).fillna(0)
            high = (g["ci95_high"] - g["mean_diff"]).clip(lower=0).fillna(0)
            sure = (g["ci95_low"] > 0) | (g["ci95_high"] < 0)
            better, worse = plotting.QUALITATIVE[2], plotting.QUALITATIVE[3]  # green, red
            colors = [(better if m > 0 else worse) if s else "0.35" for m, s in zip(g["mean_diff"], sure)]
            for y, m, lo, hi, c in zip(ys, g["mean_diff"], low, high, colors):
                ax.errorbar(m, y, xerr=[[lo], [hi]], fmt="o", color=c, ms=5, capsize=2)
            ax.axvline(0, color="0.6", linewidth=0.8, zorder=0)
            title = SHORT_NAMES.get(metric, column_name(metric, level))
            ax.set_title(title.replace(" ", "\n", 1), fontsize=10.5)
            ax.tick_params(axis="x", labelsize=8.5, rotation=45)
        axes[0, 0].set_yticks(ys, [labels[m] for m in methods], fontsize=9.5)
        fig.supxlabel(f"difference from {d['baseline'].iloc[0]} (mean over seeds, 95% CI)", fontsize=10.5)
        fig.tight_layout()
    return fig


def load_elbo_alignment(name: str, folder: str | Path | None = None) -> pd.DataFrame | None:
    """``<study>_elbo_alignment.csv`` (:func:`hiermix_pyro.study.elbo_alignment`), or None without it."""
    return _read_study_file(name, "elbo_alignment", folder)


def elbo_alignment_table(alignment: pd.DataFrame, dataset: str, digits: int = 2) -> pd.DataFrame:
    """One row per labelled score (ARI per level, then the whole hierarchy's), for all variants and
    for those that gain validation ELBO over the baseline: the Spearman rho across the variants
    between their validation-ELBO gain and their gain in that score, its two-sided p and the number
    of variants."""
    d = alignment[alignment["dataset"].eq(dataset)].assign(level=lambda x: x["level"].astype(str))
    d = d.assign(
        score=[column_name(m, lvl) for m, lvl in zip(d["metric"], d["level"])],
        p_text=["" if pd.isna(p) else "< 0.001" if p < 0.001 else f"{p:.2g}" for p in d["p"]],
        rho=d["rho"].round(digits),
    )
    parts = []
    for subset, g in d.groupby("variants", sort=False):
        g = g.set_index("score")
        name = "all variants" if subset == "all" else f"variants with ELBO {subset}"
        parts.append(
            pd.DataFrame({(name, "rho"): g["rho"], (name, "p"): g["p_text"], (name, "n"): g["n_variants"].astype(int)})
        )
    table = pd.concat(parts, axis=1) if parts else pd.DataFrame()
    table.index.name = "score"
    return table


def elbo_alignment_figure(
    levers: pd.DataFrame, alignment: pd.DataFrame, dataset: str, exclude=None, width: float = FIG_WIDTH
) -> Figure | None:
    """One panel per labelled score of :func:`elbo_alignment_table`: each variant's mean
    difference from the baseline in validation ELBO (x, nats per cell) against its mean difference
    in that score (y), titled with the Spearman rho of the alignment table over all variants and
    over those right of 0 (that gain validation ELBO). Variants in ``exclude``
    (the study's ``not_candidates``) hollow. None when the dataset has no alignment rows."""
    import matplotlib.pyplot as plt

    a = alignment[alignment["dataset"].eq(dataset)].assign(level=lambda x: x["level"].astype(str))
    d = levers[levers["dataset"].eq(dataset)].assign(level=lambda x: x["level"].astype(str))
    if a.empty or d.empty:
        return None
    x = d[d["metric"].eq(a["score"].iloc[0])].set_index("method")["mean_diff"]
    exclude = set(dict(exclude or {}))
    positive = a[a["variants"].ne("all")].set_index(["metric", "level"])["rho"]
    a = a[a["variants"].eq("all")]
    cols, color = 3, plotting.QUALITATIVE[0]
    rows = math.ceil(len(a) / cols)
    with plt.rc_context(FONT):
        fig, axes = plt.subplots(rows, cols, figsize=(width, 2.5 * rows + 0.6), squeeze=False)
        for ax, r in zip(axes.flat, a.itertuples()):
            y = d[d["metric"].eq(r.metric) & d["level"].eq(r.level)].set_index("method")["mean_diff"]
            both = x.index.intersection(y.index)
            hollow = both.isin(list(exclude))
            ax.scatter(x[both][~hollow], y[both][~hollow], s=22, color=color, label="candidate")
            ax.scatter(
                x[both][hollow], y[both][hollow], s=22, facecolors="none", edgecolors=color, label="not a candidate"
            )
            ax.axhline(0, color="0.6", linewidth=0.8, zorder=0)
            ax.axvline(0, color="0.6", linewidth=0.8, zorder=0)
            gain = positive.get((r.metric, r.level), np.nan)
            ax.set_title(
                f"{SHORT_NAMES.get(r.metric, column_name(r.metric, r.level))}\nrho {r.rho:+.2f}"
                + ("" if pd.isna(gain) else f", right of 0: {gain:+.2f}"),
                fontsize=10.5,
            )
            ax.tick_params(labelsize=9)
        for ax in axes.flat[len(a) :]:
            ax.set_visible(False)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.supylabel("labelled score − baseline", fontsize=10.5)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        xlabel = f"validation ELBO − {d['baseline'].iloc[0]} (nats per cell)"
        fig.supxlabel(xlabel, fontsize=10.5, y=0.085, va="top")
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=10, frameon=False)
    return fig


SETTING = re.compile(r"bs(?P<batch_size>\d+)_emlr(?P<em_lr>[0-9.eE+-]+)$")


def settings_of(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary rows of the variants named ``<model>_bs<batch size>_emlr<rate>`` (eb_sweep), at
    each dataset's finest level, with columns batch_size and em_lr parsed from the name."""
    found = summary["method"].str.extract(SETTING)
    d = summary.assign(batch_size=pd.to_numeric(found["batch_size"]), em_lr=pd.to_numeric(found["em_lr"]))
    d = d[d["batch_size"].notna()]
    finest = {ds: (levels_of(summary, ds) or [None])[-1] for ds in d["dataset"].unique()}
    d = d[d["level"].astype(str).eq(d["dataset"].map(finest))]
    return d.assign(batch_size=d["batch_size"].astype(int), level=d["level"].astype(str))


def n_classes(runs: pd.DataFrame, dataset: str, level: str) -> int | None:
    """The number of classes at a level, from the study's run table (None if it is not there)."""
    if runs.empty or "n_classes" not in runs:
        return None
    v = runs.loc[runs["dataset"].eq(dataset) & runs["level"].astype(str).eq(level), "n_classes"]
    return int(v.iloc[0]) if len(v) else None


def settings_figure(
    summary: pd.DataFrame,
    runs: pd.DataFrame | None = None,
    metrics=("utilized_clusters", "nmi"),
    width: float = FIG_WIDTH,
) -> Figure | None:
    """Per dataset (rows) and metric (columns): the finest level's mean against the EM learning
    rate (log axis), one line per batch size; the number of cell types as a dotted line in the
    used-clusters panels. None when no variant name carries the settings."""
    import matplotlib.pyplot as plt

    d = settings_of(summary)
    d = d[d["metric"].isin(metrics)]
    if d.empty:
        return None
    runs = runs if runs is not None else pd.DataFrame()
    datasets = list(dict.fromkeys(d["dataset"]))
    batch_sizes = sorted(d["batch_size"].unique())
    colors = dict(zip(batch_sizes, plotting.QUALITATIVE))
    with plt.rc_context(FONT):
        fig, axes = plt.subplots(
            len(datasets), len(metrics), figsize=(width, 3.0 * len(datasets)), squeeze=False, sharex=True
        )
        for i, dataset in enumerate(datasets):
            for j, metric in enumerate(metrics):
                ax = axes[i, j]
                for bs in batch_sizes:
                    g = d[d["dataset"].eq(dataset) & d["metric"].eq(metric) & d["batch_size"].eq(bs)].sort_values(
                        "em_lr"
                    )
                    if g.empty:
                        continue
                    n = int(g["n"].max())
                    low = (g["mean"] - g["ci95_low"]).clip(lower=0).fillna(0)
                    high = (g["ci95_high"] - g["mean"]).clip(lower=0).fillna(0)
                    ax.errorbar(
                        g["em_lr"],
                        g["mean"],
                        yerr=[low, high],
                        marker="o",
                        color=colors[bs],
                        capsize=2,
                        label=f"batch {bs} (n={n})",
                    )
                level = d.loc[d["dataset"].eq(dataset), "level"].iloc[0]
                k = n_classes(runs, dataset, level)
                title = f"{dataset}: {NAMES.get(metric, metric)}, {level}"
                if metric == "utilized_clusters":
                    if k:
                        ax.axhline(k, color="0.4", linestyle=":")
                        title += f"\n(dotted: its {k} cell types)"
                    ax.set_ylim(bottom=0)
                ax.set_xscale("log")
                ax.set_title(title)
                if i == len(datasets) - 1:
                    ax.set_xlabel("EM learning rate (em_lr)")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.tight_layout()
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels), frameon=False)
    return fig


def settings_table(summary: pd.DataFrame, metrics=("utilized_clusters", "nmi", "ari"), digits: int = 3) -> pd.DataFrame:
    """Rows (dataset, batch size, em_lr), columns the finest level's ``metrics``, cells as
    :func:`format_cell`; the runs that stopped at the epoch ceiling counted in the last column."""
    d = settings_of(summary)
    d = d[d["metric"].isin(metrics)]
    if d.empty:
        return pd.DataFrame()
    d = d.assign(
        cell=[format_cell(r.mean, r.ci95_low, r.ci95_high, r.n, digits) for r in d.itertuples()],
        column=[f"{NAMES.get(m, m)} {lvl}" for m, lvl in zip(d["metric"], d["level"])],
    )
    index = ["dataset", "batch_size", "em_lr"]
    wide = d.pivot_table(index=index, columns="column", values="cell", aggfunc="first", sort=True)
    order = [c for m in metrics for c in dict.fromkeys(d.loc[d["metric"].eq(m), "column"])]
    wide = wide.reindex(columns=order)
    ceiling = d.drop_duplicates(index).set_index(index)["n_hit_ceiling"].astype(int)
    wide["runs at the epoch ceiling"] = ceiling.reindex(wide.index)
    wide = wide.fillna("")
    wide.columns.name = None
    wide.index = pd.MultiIndex.from_tuples(
        [(ds, int(bs), f"{lr:g}") for ds, bs, lr in wide.index], names=["dataset", "batch size", "em_lr"]
    )
    return wide


# ---- the speed scripts' tables ----
def read_speed_table(name: str, folder: str | Path | None = None) -> pd.DataFrame | None:
    """``benchmarks/results/<name>`` (a speed script's table), or None when it does not exist."""
    path = Path(folder or SPEED_DIR) / name
    return pd.read_csv(path) if path.exists() else None


def datasets_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset of a study's run table: cells, genes and classes per level (coarse to fine)."""
    if runs.empty or not {"n_cells", "n_genes", "n_classes"} <= set(runs):
        return pd.DataFrame()
    out = {}
    for dataset, d in runs.groupby("dataset", sort=False):
        first = d[d["n_cells"].notna()]
        if first.empty:
            continue
        first = first[first["seed"].eq(first["seed"].iloc[0]) & first["method"].eq(first["method"].iloc[0])]
        out[dataset] = {
            "cells": int(first["n_cells"].iloc[0]),
            "genes": int(first["n_genes"].iloc[0]),
            "levels": ", ".join(f"{lvl} ({int(k)})" for lvl, k in zip(first["level"], first["n_classes"])),
        }
    table = pd.DataFrame.from_dict(out, orient="index")
    table.index.name = "dataset"
    return table


def split_constant(table: pd.DataFrame, columns) -> tuple[pd.DataFrame, dict]:
    """``table`` without those of ``columns`` that hold one value in every row, and those values
    (the settings of a speed run, for its caption rather than a column of repeats)."""
    constant = {c: table[c].iloc[0] for c in columns if c in table and table[c].nunique(dropna=False) == 1}
    return table.drop(columns=list(constant)), constant


def script_command(script: str, settings: dict, csv: str, default_csv: str) -> str:
    """The command line of a speed script with the settings its table records, e.g.
    ``.venv/bin/python benchmarks/step_time.py --threads 1 --rounds 5``."""
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in settings.items()]
    if csv != default_csv:
        flags.append(f"--csv {csv}")
    return " ".join([f".venv/bin/python {script}", *flags])


def confusion_figure(confusions: pd.DataFrame, level: str, methods=None):
    """Heatmaps of ``benchmarks/confusion.py``'s table at ``level``, one per method: rows the true
    classes, columns the aligned clusters, cells the mean share of the row's cells (over seeds).
    None when the table has nothing at that level."""
    import matplotlib.pyplot as plt

    d = confusions[confusions["level"].eq(level)]
    methods = [m for m in (methods or d["method"].unique()) if m in set(d["method"])]
    if not methods:
        return None
    classes = sorted(set(d["true"]))
    columns = classes + sorted(set(d["aligned"]) - set(classes))  # "unmatched" last
    fig, axes = plt.subplots(1, len(methods), figsize=(2.6 * len(methods) + 1.8, 3.4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        m = d[d["method"].eq(method)]
        grid = m.pivot_table(index="true", columns="aligned", values="fraction", fill_value=0.0)
        grid = grid.reindex(index=classes, columns=columns, fill_value=0.0)
        image = ax.imshow(grid.to_numpy(), vmin=0, vmax=1, cmap="viridis")
        ax.grid(False)
        ax.set_title(f"{method} (n={int(m['n_seeds'].max())})", fontsize=11)
        ax.set_xticks(range(len(columns)), [str(i + 1) if c in classes else "–" for i, c in enumerate(columns)])
        ax.set_yticks(
            range(len(classes)), [f"{i + 1} {c[:22]}" for i, c in enumerate(classes)] if ax is axes[0][0] else []
        )
        ax.set_xlabel("aligned cluster (class no.)", fontsize=10)
        ax.tick_params(labelsize=8.5)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="share of the class's cells")
    return fig


def coarse_split_table(splits: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """``benchmarks/coarse_splits.py``'s table summarised: for each rule (the true split first, the
    model's own last) and split it made, the number of seeds and the mean ARI at the coarse level."""
    order = {rule: i for i, rule in enumerate(["truth", "single", "average", "complete", "ward_weighted", "model"])}
    table = (
        splits.assign(split=splits["split"].fillna(""))
        .groupby(["rule", "split"], sort=False)
        .agg(seeds=("seed", "nunique"), ari=("ari", "mean"))
        .reset_index()
    )
    table = table.sort_values(["rule", "seeds"], key=lambda c: c.map(order) if c.name == "rule" else -c, kind="stable")
    table["ari"] = table["ari"].round(digits)
    return table.rename(columns={"split": "split of the true groups", "ari": "mean ARI"}).reset_index(drop=True)


def level_split_table(splits: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """``benchmarks/level_splits.py``'s tables (one or several) summarised: one row per dataset (when
    the tables name it), embedding and rule, per level the mean ARI of the greedy splits from the true level above and
    the groups they split (mean number of splits over the seeds, where above 0), then the mean ARI
    with every true parent split into its true number of groups (``forced``), and the seeds."""
    rows = []
    keys = [key for key in ("dataset", "embedding", "rule") if key in splits]
    for values, part in splits.groupby(keys, sort=False):
        row = dict(zip(keys, values))
        for level, lv in part.groupby("level", sort=False):
            per_seed = lv.drop_duplicates("seed")
            split = lv.groupby("group", sort=False)["greedy_splits"].mean()
            groups = ", ".join(f"{g}" if n == 1 else f"{g} x{n:.2g}" for g, n in split[split > 0].items())
            row[f"greedy {level}"] = f"{per_seed['greedy_ari'].mean():.{digits}f} ({groups})"
        for level, lv in part.groupby("level", sort=False):
            row[f"forced {level}"] = round(lv.drop_duplicates("seed")["forced_ari"].mean(), digits)
        row["seeds"] = part["seed"].nunique()
        rows.append(row)
    return pd.DataFrame(rows)
