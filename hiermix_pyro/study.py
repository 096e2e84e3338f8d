"""Benchmark studies: what ``benchmarks/Snakefile`` runs, and the tables it makes of the results.

A study is one YAML file in ``benchmarks/studies/`` (see ``smoke.yaml`` for a commented one)::

    seeds: [0, 1]
    defaults: {n_hvg: 500}                      # notebook parameters of every run
    protocol: {epochs: 10000, patience: 100}    # training: early stopping, with a ceiling
    datasets:                                   # name -> notebook parameters (the data)
      pbmc_sorted9: {dataset: pbmc_sorted, drop_labels: [CD14+ Monocyte]}
    variants:                                   # name -> notebook parameters (model and options)
      momix: {model: momix}
    peers: [pca_leiden, pca_kmeans]             # names of PEERS
    peer_settings: {n_pcs: 50}                  # benchmarks/peers.py options

Each (dataset, variant, seed) is one papermill run of ``notebooks/train.ipynb`` with the
parameters ``defaults`` < ``protocol`` < dataset < variant (later ones win), plus ``seed`` and
``output_dir``; a model setting in ``defaults`` or ``protocol`` reaches only the models that use
it, while a variant's own settings are never filtered (a model refuses a setting it would
ignore). Each (dataset, peer, seed) runs ``benchmarks/peers.py`` on the same prepared cells
(the same DataConfig: genes, subsample, split, levels). Every run writes
``runs/<study>/<dataset>/<method>/seed<k>/metrics.json``.

:func:`collect` turns the finished runs into one tidy table (one row per run and label level)
and :func:`summarise` into means, standard deviations, t-based 95% confidence intervals and a
one-sided Mann-Whitney test of each model against the best peer.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from .config import DataConfig, ModelConfig, TrainConfig, from_dict

REPO = Path(__file__).resolve().parents[1]
STUDIES_DIR = REPO / "benchmarks" / "studies"
RESULTS_DIR = REPO / "benchmarks" / "results" / "studies"


@dataclass(frozen=True)
class Peer:
    """A peer method: an embedding of the cells, then a clustering at the true number of classes."""

    embedding: str  # pca (scanpy: log-normalise, PCA) | scvi (scvi-tools SCVI latent)
    clustering: str  # leiden | kmeans (hiermix_pyro.metrics.cluster_latent)
    label: str

    @property
    def oracle_k(self) -> bool:
        """Leiden finds its own number of clusters; bisecting its resolution to the true k uses the
        labels, an oracle the other methods do not get in the same way."""
        return self.clustering == "leiden"

    @property
    def env(self) -> str:
        """The environment it runs in: scvi-tools has its own (``make scvi-env``)."""
        return "scvi" if self.embedding == "scvi" else "main"


PEERS = {
    "pca_leiden": Peer("pca", "leiden", "scanpy PCA + Leiden (oracle k)"),
    "pca_kmeans": Peer("pca", "kmeans", "scanpy PCA + k-means (k)"),
    "scvi_leiden": Peer("scvi", "leiden", "scVI + Leiden (oracle k)"),
    "scvi_kmeans": Peer("scvi", "kmeans", "scVI + k-means (k)"),
}
PEER_OPTIONS = ("n_pcs", "n_latent", "gene_likelihood")  # peer_settings keys (benchmarks/peers.py)
TRAIN_KEYS = {f.name for f in fields(TrainConfig)}
DATA_KEYS = {f.name for f in fields(DataConfig)}


@dataclass
class Study:
    """A parsed study file (see the module docstring)."""

    name: str
    path: Path
    seeds: list[int]
    datasets: dict[str, dict]
    variants: dict[str, dict]
    peers: list[str] = field(default_factory=list)
    defaults: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)
    peer_settings: dict = field(default_factory=dict)
    threads: int = 1
    env: dict = field(default_factory=dict)  # environment variables of every run (e.g. HIERMIX_SCIB)
    description: str = ""
    baseline: str | None = None  # a variant the others are compared with seed by seed (<study>_levers.csv)
    # variants that may not be chosen as defaults by a score without labels, each with its reason
    not_candidates: dict[str, str] = field(default_factory=dict)
    # the variant with the package's defaults: another replaces it only if paired over seeds its
    # validation ELBO is higher with the 95% CI above 0 (report.challengers)
    incumbent: str | None = None

    @property
    def methods(self) -> list[str]:
        return [*self.variants, *self.peers]

    def run_dir(self, dataset: str, method: str, seed: int, root: str = "runs") -> str:
        """``<root>/<study>/<dataset>/<method>/seed<k>``: one run's folder."""
        return f"{root}/{self.name}/{dataset}/{method}/seed{seed}"

    def runs(self) -> list[tuple[str, str, int]]:
        """Every (dataset, method, seed) of the study, in grid order."""
        return [(d, m, s) for d in self.datasets for m in self.methods for s in self.seeds]

    def parameters(self, dataset: str, variant: str, seed: int, device: str | None = None) -> dict:
        """The notebook parameters of one training run (``output_dir`` included)."""
        from .models import MODELS
        from .models.base import COMMON_OPTIONS

        own = {**self.datasets[dataset], **self.variants[variant]}
        model = own["model"]
        used = set(COMMON_OPTIONS) | set(MODELS[model].options)
        model_keys = {f.name for f in fields(ModelConfig)}
        shared = {
            k: v for k, v in {**self.defaults, **self.protocol}.items() if k not in model_keys or k in used
        }  # grid-wide model settings: only for the models that use them
        params = {**shared, **own, "seed": seed, "output_dir": self.run_dir(dataset, variant, seed)}
        if device:
            params["device"] = device
        return params

    def data_config(self, dataset: str, seed: int) -> DataConfig:
        """The DataConfig shared by every method of ``dataset`` at ``seed`` (peers get it too)."""
        params = {**self.defaults, **self.datasets[dataset], "seed": seed}
        return from_dict(DataConfig, {k: v for k, v in params.items() if k in DATA_KEYS})

    def peer_arguments(self, dataset: str, seed: int) -> dict:
        """What ``benchmarks/peers.py`` needs besides the peer names: data, training protocol
        (scVI's epochs, patience, batch size, learning rate), peer options."""
        from dataclasses import asdict

        train = {k: v for k, v in {**self.defaults, **self.protocol}.items() if k in TRAIN_KEYS}
        return dict(
            data=asdict(self.data_config(dataset, seed)), train=train, peer=self.peer_settings, study=str(self.path)
        )

    def validate(self) -> None:
        """Fail on anything a run would fail on late: unknown parameters, models, peers, settings
        a model does not use; names that clash."""
        from .models import MODELS
        from .workflow import NOTEBOOK_PARAMETERS

        allowed = set(NOTEBOOK_PARAMETERS) - {"seed", "output_dir"}
        for where, params in [
            ("defaults", self.defaults),
            ("protocol", self.protocol),
            *[(f"dataset {k}", v) for k, v in self.datasets.items()],
            *[(f"variant {k}", v) for k, v in self.variants.items()],
        ]:
            unknown = set(params) - allowed
            if unknown:
                raise ValueError(
                    f"{self.path.name}: {where}: unknown parameters {sorted(unknown)}; "
                    f"valid: {', '.join(sorted(allowed))}"
                )
        if unknown := [p for p in self.peers if p not in PEERS]:
            raise ValueError(f"{self.path.name}: unknown peers {unknown}; valid: {', '.join(PEERS)}")
        if unknown := set(self.peer_settings) - set(PEER_OPTIONS):
            raise ValueError(f"{self.path.name}: unknown peer_settings {sorted(unknown)}; valid: {PEER_OPTIONS}")
        if self.incumbent is not None and self.incumbent not in self.variants:
            raise ValueError(f"{self.path.name}: incumbent {self.incumbent!r} is not a variant")
        if unknown := [v for v in self.not_candidates if v not in self.variants]:
            raise ValueError(f"{self.path.name}: not_candidates {unknown} are not variants")
        if self.baseline is not None and self.baseline not in self.variants:
            raise ValueError(
                f"{self.path.name}: baseline {self.baseline!r} is not a variant; variants: {', '.join(self.variants)}"
            )
        if clash := set(self.variants) & set(self.peers):
            raise ValueError(f"{self.path.name}: names used by a variant and a peer: {sorted(clash)}")
        for name in [*self.datasets, *self.variants]:
            if not name or "/" in name or name.startswith("seed"):
                raise ValueError(f"{self.path.name}: {name!r} cannot name a folder of runs")
        for variant, params in self.variants.items():
            if params.get("model") not in MODELS:
                raise ValueError(
                    f"{self.path.name}: variant {variant}: unknown model {params.get('model')!r}; "
                    f"valid: {', '.join(MODELS)}"
                )
        for dataset in self.datasets:
            for variant in self.variants:
                params = self.parameters(dataset, variant, self.seeds[0] if self.seeds else 0)
                model = params["model"]
                try:
                    MODELS[model].check_options(from_dict(ModelConfig, params), model)
                    from_dict(TrainConfig, params), from_dict(DataConfig, params)
                except (ValueError, TypeError) as err:
                    raise ValueError(f"{self.path.name}: {dataset} / {variant}: {err}") from None


def load_study(name_or_path, select: dict | None = None) -> Study:
    """Read ``benchmarks/studies/<name>.yaml`` (or a path) into a :class:`Study`.

    ``select`` narrows the grid, for running a study in parts: ``datasets``, ``methods`` (variant
    or peer names) and ``seeds``, each a list or a comma-separated string (Snakemake's ``--config
    datasets=pbmc_sorted9 seeds=0,1,2``); seeds also as a range ``0-4``.
    """
    import yaml

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = STUDIES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        names = ", ".join(sorted(p.stem for p in STUDIES_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no study file {path}; the studies in {STUDIES_DIR}: {names}")
    spec = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in fields(Study)} - {"name", "path"}
    if unknown := set(spec) - known:
        raise ValueError(f"{path.name}: unknown keys {sorted(unknown)}; valid: {sorted(known)}")
    study = Study(
        name=path.stem,
        path=path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path,
        seeds=[int(s) for s in spec.get("seeds", [0])],
        datasets={k: dict(v or {}) for k, v in spec.get("datasets", {}).items()},
        variants={k: dict(v or {}) for k, v in spec.get("variants", {}).items()},
        peers=list(spec.get("peers", [])),
        defaults=dict(spec.get("defaults") or {}),
        protocol=dict(spec.get("protocol") or {}),
        peer_settings=dict(spec.get("peer_settings") or {}),
        threads=int(spec.get("threads", 1)),
        env={k: str(v) for k, v in (spec.get("env") or {}).items()},
        description=spec.get("description", ""),
        baseline=spec.get("baseline"),
        not_candidates={str(k): str(v) for k, v in (spec.get("not_candidates") or {}).items()},
        incumbent=spec.get("incumbent"),
    )
    for key in ("datasets", "variants"):  # a dataset or variant without parameters is its own name
        for name, params in getattr(study, key).items():
            params.setdefault("dataset" if key == "datasets" else "model", name)
    study.validate()
    return _select(study, select or {})


def _as_list(value) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _select(study: Study, select: dict) -> Study:
    datasets, methods = _as_list(select.get("datasets")), _as_list(select.get("methods"))
    seeds = []
    for item in _as_list(select.get("seeds")):
        lo, _, hi = item.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    for name, chosen, valid in [("datasets", datasets, study.datasets), ("methods", methods, study.methods)]:
        if unknown := set(chosen) - set(valid):
            raise ValueError(f"{study.name}: no {name} {sorted(unknown)} in the study; it has {list(valid)}")
    if datasets:
        study.datasets = {k: v for k, v in study.datasets.items() if k in datasets}
    if methods:
        study.variants = {k: v for k, v in study.variants.items() if k in methods}
        study.peers = [p for p in study.peers if p in methods]
    if seeds:
        study.seeds = seeds
    return study


def git_commit(repo=REPO) -> str:
    """The checked-out commit, with ``-dirty`` when tracked files of the package or the training
    notebook differ from it (what a run's code was); ``unknown`` outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "hiermix_pyro", "notebooks/train.ipynb"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def environment_summary(env: dict | None) -> str | None:
    """A run's environment (``metrics.json``'s ``environment``) in one table cell: the instruction set of
    torch's CPU kernels or the GPU, then the package versions; None for runs made before it was recorded."""
    if not env:
        return None
    packages = ", ".join(f"{name} {version}" for name, version in env.get("packages", {}).items() if version)
    return f"{env.get('gpu') or env.get('cpu_capability')} | {packages}"


# ---- collect and summarise ----
LEVEL_METRICS = ("ari", "nmi", "weighted_f1", "purity", "accuracy", "utilized_clusters")
RUN_METRICS = ("h_f1", "h_precision", "h_recall", "dendrogram_purity", "iwae", "val_elbo", "epochs")
TESTED = ("ari", "nmi", "weighted_f1", "purity", "accuracy", "h_f1", "dendrogram_purity")  # higher is better


def collect(study: Study, runs_root="runs") -> pd.DataFrame:
    """One row per finished run and label level of ``study`` (runs without ``metrics.json`` are
    left out). Columns: the study file, the commit the run was made with, dataset, method,
    kind (model / peer), label, oracle_k, seed, the level's scores, the run's hierarchy scores,
    epochs, best_epoch, epochs_max and hit_ceiling (the run stopped at its epoch ceiling, not by
    early stopping), timings."""
    rows, stale = [], []
    for dataset, method, seed in study.runs():
        run_dir = Path(study.run_dir(dataset, method, seed, root=runs_root))
        path = run_dir / "metrics.json"
        if not path.exists():
            continue
        m = json.loads(path.read_text())
        provenance = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
        if problem := _parameter_mismatch(study, dataset, method, seed, provenance, m.get("config")):
            stale.append(f"{run_dir}: {problem}")
            continue
        peer = PEERS.get(method)
        epochs_max = m.get("config", {}).get("train", {}).get("epochs")
        epochs = m.get("epochs")
        run = dict(
            study=str(study.path),
            commit=provenance.get("commit", "unknown"),
            dataset=dataset,
            method=method,
            kind="peer" if peer else "model",
            label=peer.label if peer else method,
            model=m.get("model"),
            oracle_k=bool(m.get("oracle_k", False)),
            seed=seed,
            **{k: m.get("hierarchy", {}).get(k, np.nan) for k in ("h_precision", "h_recall", "h_f1")},
            dendrogram_purity=m.get("hierarchy", {}).get("dendrogram_purity", np.nan),
            tree=m.get("hierarchy", {}).get("tree"),
            iwae=m.get("iwae", np.nan),
            elbo=m.get("elbo", np.nan),
            val_elbo=validation_elbo(run_dir / "history.json", m.get("best_epoch")),
            epochs=epochs,
            best_epoch=m.get("best_epoch"),
            epochs_max=epochs_max,
            hit_ceiling=bool(epochs is not None and epochs_max is not None and epochs >= epochs_max),
            device=m.get("device"),
            train_seconds=m.get("train_seconds", np.nan),
            seconds_per_epoch=m.get("seconds_per_epoch", np.nan),
            n_cells=m.get("n_cells"),
            n_genes=m.get("n_genes"),
            parameters=json.dumps(_comparable(provenance["parameters"]), sort_keys=True),
            environment=environment_summary(m.get("environment")),
        )
        for level_index, level in enumerate(m["levels"], start=1):
            rows.append({**run, "level_index": level_index, **level})
    if stale:
        raise ValueError(
            f"{len(stale)} finished run(s) of study {study.name} were made with other parameters than "
            f"{study.path.name} gives them now (Snakemake never redoes a finished run, so their tables "
            "would describe another configuration). Give a changed variant a new name, or delete these "
            "run folders to redo them:\n  " + "\n  ".join(stale)
        )
    return pd.DataFrame(rows)


RUN_KEY = ["dataset", "method", "seed"]


def merge_previous(study: Study, df: pd.DataFrame, previous: pd.DataFrame) -> pd.DataFrame:
    """``df`` (the runs found under the runs folder) plus the rows of ``previous`` (a table this
    study's collection wrote before, e.g. the committed one) for the runs ``df`` lacks: runs made
    in another checkout or on another machine, whose folders are not here. A run found here
    replaces its old rows. Old rows of runs the study no longer has (a variant, dataset or seed
    dropped) are left out; an old row that records its parameters (a ``parameters`` column,
    written since the tables merge) must match what the study gives that run now, else this raises, as
    :func:`collect` does for run folders. Tables written before that column existed are kept as
    they are: their runs were checked when those tables were made."""
    if previous is None or previous.empty:
        return df
    wanted = set(study.runs())
    here = set(map(tuple, df[RUN_KEY].itertuples(index=False))) if len(df) else set()
    keys = list(zip(previous["dataset"], previous["method"], previous["seed"].astype(int)))
    keep = np.array([k in wanted and k not in here for k in keys], dtype=bool)
    old = previous[keep]
    stale = []
    if "parameters" in old.columns:
        for (dataset, method, seed), params in (
            old.dropna(subset=["parameters"]).groupby(RUN_KEY)["parameters"].first().items()
        ):
            if problem := _parameter_mismatch(study, dataset, method, int(seed), {"parameters": json.loads(params)}):
                stale.append(f"{dataset}/{method}/seed{seed}: {problem}")
    if stale:
        raise ValueError(
            f"{len(stale)} run(s) of the previous table of study {study.name} were made with other "
            f"parameters than {study.path.name} gives them now. Give a changed variant a new name, or "
            "collect without the previous table (--runs-only):\n  " + "\n  ".join(stale)
        )
    merged = pd.concat([d for d in (old, df) if len(d)], ignore_index=True)
    order = {m: i for i, m in enumerate(study.methods)}
    merged["_order"] = merged["method"].map(order)
    return (
        merged.sort_values(["dataset", "_order", "seed", "level_index"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def validation_elbo(history_path: Path, best_epoch) -> float:
    """The ELBO per validation cell (KL weight 1, no regulariser) at the epoch the run kept: minus
    ``history.json``'s ``val_loss`` at ``best_epoch``. A score that needs no labels, the one a user
    can choose settings by. NaN for runs without a history (the peers) or without that epoch."""
    if best_epoch is None or not history_path.exists():
        return np.nan
    history = json.loads(history_path.read_text())
    by_epoch = dict(zip(history.get("epoch", []), history.get("val_loss", [])))
    loss = by_epoch.get(int(best_epoch))
    return -float(loss) if loss is not None and np.isfinite(loss) else np.nan


def _comparable(params: dict) -> dict:
    """Parameters as JSON gives them back (tuples as lists), without the device: a run may move
    between a CPU and a GPU and still be the same configuration."""
    params = json.loads(json.dumps(params))
    params.pop("device", None)
    params.get("train", {}).pop("device", None)
    return params


def _parameter_mismatch(
    study: Study, dataset: str, method: str, seed: int, provenance: dict, config: dict | None = None
) -> str | None:
    """Why a finished run does not belong to ``study`` as it reads now (None when it does): its
    ``run.json`` is missing, or its recorded parameters differ from the study's for that run, or
    (model runs, from ``config``: the configuration ``metrics.json`` records) a model setting the
    run used differs from what the same parameters give now, because a default changed.

    A parameter the study now names explicitly, which the run got by default, matches when the
    run's recorded configuration has that value: the run was made with exactly that setting."""
    if "parameters" not in provenance:
        return "no run.json with its parameters: cannot tell which configuration made it"
    if method in PEERS:
        expected = dict(study.peer_arguments(dataset, seed), peers=provenance["parameters"].get("peers", [method]))
    else:
        expected = study.parameters(dataset, method, seed)
    recorded, expected = _comparable(provenance["parameters"]), _comparable(expected)
    used = {
        k: v for section in _comparable(config or {}).values() if isinstance(section, dict) for k, v in section.items()
    }
    keys = sorted(
        k
        for k in set(recorded) | set(expected)
        if recorded.get(k) != expected.get(k) and not (k not in recorded and k in used and used[k] == expected[k])
    )
    problems = [f"{k}: run {recorded.get(k)!r}, study {expected.get(k)!r}" for k in keys]
    if method not in PEERS and config and "model" in config:
        problems += _default_changes(expected, _comparable(config)["model"])
    return "; ".join(problems) or None


def _default_changes(params: dict, recorded: dict) -> list[str]:
    """The model settings a run recorded that differ from what ``params`` give now (with today's
    defaults, the model's own included), among the settings the model uses."""
    from .models import MODELS
    from .models.base import COMMON_OPTIONS

    cls = MODELS[params["model"]]
    now = _comparable(asdict(cls.resolve(from_dict(ModelConfig, params))))
    used = set(COMMON_OPTIONS) | set(cls.options)
    return [
        f"{k}: run {recorded[k]!r}, now {now[k]!r} (a default changed)"
        for k in sorted(used)
        if k in recorded and k in now and recorded[k] != now[k]
    ]


def t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided t-based confidence interval of the mean; NaN with fewer than two values."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    n = len(values)
    if n < 2:
        return (np.nan, np.nan)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return (float(values.mean() - half), float(values.mean() + half))


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, method, level, metric): n, mean, sd, 95% CI (t), and for the models the
    one-sided Mann-Whitney U test (alternative: the model scores higher) against the best peer
    at that level (the peer with the highest mean; the same peer for every model). Run-wide
    metrics (hierarchical F1, dendrogram purity, IWAE, epochs) have level ``all``.
    ``n_hit_ceiling`` counts the method's runs that stopped at their epoch ceiling."""
    from scipy import stats

    if df.empty:
        return pd.DataFrame()
    keys = ["dataset", "method", "kind", "label", "oracle_k"]
    per_level = df.melt(
        id_vars=[*keys, "seed", "level"], value_vars=[m for m in LEVEL_METRICS if m in df], var_name="metric"
    )
    runs = df.drop_duplicates(["dataset", "method", "seed"])
    per_run = runs.melt(
        id_vars=[*keys, "seed"], value_vars=[m for m in RUN_METRICS if m in df], var_name="metric"
    ).assign(level="all")
    long = pd.concat([per_level, per_run], ignore_index=True)
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long.dropna(subset=["value"])
    level_order = {lvl: i for i, lvl in enumerate(dict.fromkeys([*df["level"], "all"]))}
    ceiling = runs.groupby(["dataset", "method"])["hit_ceiling"].sum()
    rows = []
    for (dataset, method, kind, label, oracle, level, metric), g in long.groupby(
        [*keys, "level", "metric"], sort=False
    ):
        low, high = t_interval(g["value"])
        rows.append(
            dict(
                dataset=dataset,
                method=method,
                kind=kind,
                label=label,
                oracle_k=oracle,
                level=level,
                metric=metric,
                n=len(g),
                mean=g["value"].mean(),
                sd=g["value"].std(ddof=1) if len(g) > 1 else np.nan,
                ci95_low=low,
                ci95_high=high,
                n_hit_ceiling=int(ceiling.get((dataset, method), 0)),
            )
        )
    out = pd.DataFrame(rows)
    out[["best_peer", "best_peer_mean", "mannwhitney_u", "mannwhitney_p"]] = [None, np.nan, np.nan, np.nan]
    values = long.groupby(["dataset", "level", "metric", "method"])["value"]  # the seeds' values of each cell
    for (dataset, level, metric), g in out.groupby(["dataset", "level", "metric"]):
        peers = g[g["kind"].eq("peer")]
        if peers.empty or metric not in TESTED:
            continue
        best = peers.loc[peers["mean"].idxmax()]
        peer_values = values.get_group((dataset, level, metric, best["method"]))
        for i, method in g.loc[g["kind"].eq("model"), "method"].items():
            test = stats.mannwhitneyu(
                values.get_group((dataset, level, metric, method)), peer_values, alternative="greater"
            )
            out.loc[i, ["best_peer", "best_peer_mean", "mannwhitney_u", "mannwhitney_p"]] = [
                best["method"],
                best["mean"],
                float(test.statistic),
                float(test.pvalue),
            ]
    out["_level"] = out["level"].map(level_order)
    return out.sort_values(["dataset", "_level", "metric", "kind", "method"], kind="stable").drop(columns="_level")


def wide_table(summary: pd.DataFrame, metrics=("ari", "weighted_f1", "h_f1", "dendrogram_purity")) -> pd.DataFrame:
    """:func:`summarise` as one readable table per dataset: rows (dataset, method label), columns
    "metric level", cells ``mean ± half-width of the 95% CI (n)`` and, for our models, the
    Mann-Whitney p against the best peer (``*``: p < 0.05)."""

    def cell(r) -> str:
        ci = "" if np.isnan(r["ci95_low"]) else f" ± {(r['ci95_high'] - r['ci95_low']) / 2:.3f}"
        p = (
            ""
            if pd.isna(r["mannwhitney_p"])
            else f" p={r['mannwhitney_p']:.2g}{'*' if r['mannwhitney_p'] < 0.05 else ''}"
        )
        return f"{r['mean']:.3f}{ci} ({r['n']}){p}"

    d = summary[summary["metric"].isin(metrics)]
    if d.empty:
        return pd.DataFrame()
    d = d.assign(cell=d.apply(cell, axis=1), column=d["metric"] + " " + d["level"].astype(str))
    wide = d.pivot_table(index=["dataset", "label"], columns="column", values="cell", aggfunc="first", sort=False)
    return wide[[c for m in metrics for c in wide.columns if c.split(" ")[0] == m]].fillna("")


def markdown_table(summary: pd.DataFrame, metrics=("ari", "weighted_f1", "h_f1", "dendrogram_purity")) -> str:
    """:func:`wide_table` in Markdown, one table per dataset, with the runs that hit their epoch
    ceiling listed under it."""
    if summary.empty:
        return "no finished runs\n"
    wide = wide_table(summary, metrics)
    lines = []
    for dataset, table in wide.groupby(level="dataset", sort=False):
        columns = list(table.columns)
        lines += [f"### {dataset}", "", "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(row) + " |" for (_, label), row in table.iterrows()]
        ceiling = summary[summary["dataset"].eq(dataset)].drop_duplicates("method").query("n_hit_ceiling > 0")
        lines += [
            f"\n{r['label']}: {r['n_hit_ceiling']} run(s) stopped at the epoch ceiling." for _, r in ceiling.iterrows()
        ]
        lines.append("")
    return "\n".join(lines)


LEVER_METRICS = ("ari", "h_f1", "dendrogram_purity", "val_elbo", "iwae")  # the lever table's columns


def difference_summary(diff) -> dict:
    """Paired differences summarised: ``n``, ``mean_diff``, its 95% CI (t: ``ci95_low``,
    ``ci95_high``) and the two-sided one-sample t-test p against 0 (``paired_t_p``; NaN with one
    difference or with all of them equal)."""
    from scipy import stats

    x = np.asarray(diff, dtype=float)
    low, high = t_interval(x)
    p = float(stats.ttest_1samp(x, 0.0).pvalue) if len(x) > 1 and np.ptp(x) > 1e-12 else np.nan
    return dict(n=len(x), mean_diff=float(x.mean()), ci95_low=low, ci95_high=high, paired_t_p=p)


def paired_differences(df: pd.DataFrame, baseline: str, metrics=LEVER_METRICS) -> pd.DataFrame:
    """Each model variant against ``baseline``, seed by seed: per (dataset, method, level, metric),
    the differences variant - baseline over the seeds both have, their n, mean, 95% CI (t) and the
    two-sided paired t-test p. A lever's effect with the seed's data split and initialisation noise
    paired out. Level-wise metrics per level; run-wide ones at level ``all``."""
    cols = ["dataset", "method", "label", "seed"]
    models = df[df["kind"].eq("model")]
    level_rows = models.melt(
        id_vars=[*cols, "level"], value_vars=[m for m in metrics if m in LEVEL_METRICS and m in df]
    )
    run_rows = (
        models.drop_duplicates(["dataset", "method", "seed"])
        .melt(id_vars=cols, value_vars=[m for m in metrics if m in RUN_METRICS and m in df])
        .assign(level="all")
    )
    long = pd.concat([level_rows, run_rows], ignore_index=True).rename(columns={"variable": "metric"})
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    wide = long.pivot_table(index=["dataset", "level", "metric", "seed"], columns="method", values="value")
    if baseline not in wide:
        return pd.DataFrame()
    labels = models.drop_duplicates("method").set_index("method")["label"]
    level_order = {lvl: i for i, lvl in enumerate(dict.fromkeys([*df["level"], "all"]))}
    metric_order = {m: i for i, m in enumerate(metrics)}
    rows = []
    for method in [m for m in wide.columns if m != baseline]:
        diff = (wide[method] - wide[baseline]).dropna()
        for (dataset, level, metric), d in diff.groupby(level=["dataset", "level", "metric"], sort=False):
            rows.append(
                dict(
                    dataset=dataset,
                    method=method,
                    label=labels.get(method, method),
                    baseline=baseline,
                    level=level,
                    metric=metric,
                    **difference_summary(d.to_numpy()),
                    _order=(level_order.get(level, 99), metric_order.get(metric, 99)),
                )
            )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values(["dataset", "_order"], kind="stable").drop(columns="_order").reset_index(drop=True)


def elbo_alignment(levers: pd.DataFrame, score: str = "val_elbo") -> pd.DataFrame:
    """Whether the score without labels points where the labels point: per (dataset, metric, level)
    of ``levers`` (:func:`paired_differences`), the Spearman rank correlation across the variants
    between their mean difference from the baseline in ``score`` (validation ELBO) and in that
    metric, with ``n_variants`` and the two-sided p; once over all variants (``variants="all"``)
    and once over those whose ``score`` is above the baseline's (``variants="gain > 0"``, the ones
    a user choosing by that score would weigh). Where rho is near 1, a variant that gains ELBO gains
    that score too; where it is near 0 or below, choosing by the ELBO cannot find the variants that
    score best against the labels."""
    from scipy import stats

    if levers.empty or not levers["metric"].eq(score).any():
        return pd.DataFrame()
    rows = []
    for dataset, d in levers.groupby("dataset", sort=False):
        x = d[d["metric"].eq(score)].set_index("method")["mean_diff"]
        for subset, keep in (("all", x.index), ("gain > 0", x.index[x > 0])):
            for (metric, level), g in d[~d["metric"].isin([score, "iwae"])].groupby(["metric", "level"], sort=False):
                y = g.set_index("method")["mean_diff"]
                both = keep.intersection(y.index)
                if len(both) < 3:
                    continue
                rho, p = stats.spearmanr(x[both], y[both])
                rows.append(
                    dict(
                        dataset=dataset,
                        score=score,
                        variants=subset,
                        metric=metric,
                        level=level,
                        n_variants=len(both),
                        rho=rho,
                        p=p,
                    )
                )
    return pd.DataFrame(rows)


def seed_agreement(study: Study, runs_root="runs", previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """How far the clusterings of different seeds agree, per (dataset, model variant, level): the
    ARI between the ``obs['cluster_<level>']`` of every pair of finished seeds (each run annotates
    all cells of the dataset, whatever its split), their mean and minimum, and a row ``level =
    "mean"`` averaging the levels. It needs no labels: the stability of a clustering under new
    seeds (data split, initialisation, training noise) is a way to choose settings without labels
    (Lange et al. 2004, Neural Computation 16(6)). Peers are left out (they save aligned labels).

    A (dataset, variant) with fewer than two runs here keeps its rows of ``previous`` (the table
    written before, from run folders that are elsewhere now): the pairs need both runs' clusters,
    so seeds found here and seeds known only from ``previous`` are never paired (``n_seeds``
    says how many seeds a row compares)."""
    import itertools

    import anndata as ad
    from sklearn.metrics import adjusted_rand_score

    rows = []
    for dataset in study.datasets:
        for method in study.variants:
            runs = {}
            for seed in study.seeds:
                run_dir = Path(study.run_dir(dataset, method, seed, root=runs_root))
                if (run_dir / "metrics.json").exists() and (run_dir / "adata.h5ad").exists():
                    adata = ad.read_h5ad(run_dir / "adata.h5ad", backed="r")
                    levels = list(adata.uns["hiermix"]["levels"])
                    runs[seed] = adata.obs[[f"cluster_{lvl}" for lvl in levels]].astype(str).set_axis(levels, axis=1)
                    adata.file.close()
            if len(runs) < 2:
                if previous is not None and len(previous):
                    rows += previous[previous["dataset"].eq(dataset) & previous["method"].eq(method)].to_dict("records")
                continue
            per_level = {}
            for a, b in itertools.combinations(sorted(runs), 2):
                cells = runs[a].index.intersection(runs[b].index)
                for level in runs[a].columns:
                    per_level.setdefault(level, []).append(
                        adjusted_rand_score(runs[a].loc[cells, level], runs[b].loc[cells, level])
                    )
            base = dict(dataset=dataset, method=method, n_seeds=len(runs))
            for level, values in per_level.items():
                rows.append(
                    dict(base, level=level, n_pairs=len(values), mean_ari=np.mean(values), min_ari=np.min(values))
                )
            means = [np.mean(v) for v in per_level.values()]
            rows.append(
                dict(
                    base,
                    level="mean",
                    n_pairs=len(next(iter(per_level.values()))),
                    mean_ari=np.mean(means),
                    min_ari=np.nan,
                )
            )
    return pd.DataFrame(rows)


def write_results(study: Study, out_dir=RESULTS_DIR, runs_root="runs", merge: bool = True) -> dict[str, Path]:
    """Collect and summarise ``study`` into ``<out_dir>/<study>.csv``, ``<study>_summary.csv`` and
    ``<study>_summary.md``, and with a ``baseline`` the seed-by-seed differences of every variant
    from it into ``<study>_levers.csv`` (:func:`paired_differences`) and the agreement between
    seeds into ``<study>_agreement.csv`` (:func:`seed_agreement`), and how the validation ELBO's
    differences rank against the labelled ones into ``<study>_elbo_alignment.csv``
    (:func:`elbo_alignment`); returns their paths.

    With ``merge`` (the default) the tables already in ``out_dir`` are read first and their runs
    that are not under ``runs_root`` are kept (:func:`merge_previous`): a part of a study run in a
    fresh clone, or on another machine, adds to the committed tables instead of replacing them.
    ``merge=False`` tables only the runs found here."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = {}
    for part, name in (("runs", f"{study.name}.csv"), ("agreement", f"{study.name}_agreement.csv")) if merge else ():
        try:
            previous[part] = pd.read_csv(out_dir / name)
        except (FileNotFoundError, pd.errors.EmptyDataError):  # none yet, or a table of no runs
            pass
    df = merge_previous(study, collect(study, runs_root), previous.get("runs"))
    summary = summarise(df)
    if len(summary):
        summary.insert(0, "study", str(study.path))
        summary.insert(1, "commit", ";".join(sorted(df["commit"].unique())))
    paths = dict(
        runs=out_dir / f"{study.name}.csv",
        summary=out_dir / f"{study.name}_summary.csv",
        markdown=out_dir / f"{study.name}_summary.md",
    )
    df.to_csv(paths["runs"], index=False)
    summary.to_csv(paths["summary"], index=False)
    merged_from = (
        f" and the runs its tables held before (made elsewhere: each row of {study.name}.csv names its commit)"
        if merge
        else ""
    )
    header = (
        f"# Study `{study.name}` ({study.path})\n\n{study.description.strip()}\n\n"
        f"Made by `make bench STUDY={study.name}` (benchmarks/Snakefile) from the runs in "
        f"runs/{study.name}/{merged_from}. Cells: mean ± half-width of the 95% confidence interval (t), (n seeds), "
        "and for our models the one-sided Mann-Whitney p of model > the best peer at that level "
        "(* p < 0.05). Leiden (oracle k) has its resolution searched until it gives the true number "
        "of classes: it is told k. Level `all`: scores of the whole hierarchy (hierarchical F1, "
        "dendrogram purity).\n\n"
    )
    paths["markdown"].write_text(header + markdown_table(summary))
    if study.baseline:
        levers = paired_differences(df, study.baseline) if len(df) else pd.DataFrame()
        if len(levers):
            levers.insert(0, "study", str(study.path))
        paths["levers"] = out_dir / f"{study.name}_levers.csv"
        levers.to_csv(paths["levers"], index=False)
        paths["agreement"] = out_dir / f"{study.name}_agreement.csv"
        seed_agreement(study, runs_root, previous.get("agreement")).to_csv(paths["agreement"], index=False)
        paths["elbo_alignment"] = out_dir / f"{study.name}_elbo_alignment.csv"
        elbo_alignment(levers).to_csv(paths["elbo_alignment"], index=False)
    return paths


def main(argv=None) -> None:
    """``python -m hiermix_pyro.study <study> [--out DIR]``: collect and summarise a study's runs."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("study", help="a name in benchmarks/studies/ or a path to a study YAML")
    p.add_argument("--out", default=str(RESULTS_DIR))
    p.add_argument("--runs", default="runs", help="the folder the study's runs are under (default: runs)")
    p.add_argument(
        "--runs-only",
        action="store_true",
        help="table only the runs found under --runs (default: keep the runs of the tables already in --out that are not there)",
    )
    a = p.parse_args(argv)
    paths = write_results(load_study(a.study), a.out, runs_root=a.runs, merge=not a.runs_only)
    print(paths["markdown"].read_text())


if __name__ == "__main__":
    main()
