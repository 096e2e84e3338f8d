"""Benchmarks: run a grid of (model variant x seed) on one dataset, collect and summarise.

A model variant is written ``name`` or ``name:key=value,key=value`` with keys of
:class:`~hiermix_pyro.config.ModelConfig` or :class:`~hiermix_pyro.config.TrainConfig`
(e.g. ``mixture:n_components=20``, ``momix:warmup_epochs_discrete=0``). Runs whose
``metrics.json`` already exists are skipped, so an interrupted grid resumes where it stopped.

Command line (``python -m hiermix_pyro.bench --help``)::

    python -m hiermix_pyro.bench --models vae mixture --dataset pbmc_sorted \\
        --drop-labels "CD14+ Monocyte" --seeds 0 1 2 --csv benchmarks/results/sorted9.csv
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import DataConfig, ModelConfig, TrainConfig, from_dict
from .train import RESUMABLE_CHANGES
from .workflow import config_hash, run


def parse_variant(spec: str) -> tuple[str, dict]:
    """``"momix:guide=collapsed,level_sizes=(2,4)"`` -> ``("momix", {"guide": "collapsed", "level_sizes": (2, 4)})``."""
    name, _, rest = spec.partition(":")
    items = re.split(r",(?![^()\[\]]*[)\]])", rest)  # commas inside (...) or [...] belong to a value
    return name, dict(_parse_setting(item) for item in filter(None, items))


def _parse_setting(item: str) -> tuple[str, object]:
    """``"key=value"`` with the value read as a Python literal when it is one."""
    key, _, value = item.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def split_settings(settings: dict, where: str) -> tuple[dict, dict]:
    """``{key: value}`` -> (ModelConfig settings, TrainConfig settings); unknown keys are an error."""
    model = {k: v for k, v in settings.items() if k in {f.name for f in fields(ModelConfig)}}
    train = {k: v for k, v in settings.items() if k in {f.name for f in fields(TrainConfig)}}
    unknown = set(settings) - set(model) - set(train)
    if unknown:
        raise ValueError(f"{where}: unknown settings {', '.join(sorted(unknown))} (keys of ModelConfig or TrainConfig)")
    return model, train


def shared_model_settings(name: str, settings: dict) -> dict:
    """The grid-wide ModelConfig settings that model ``name`` uses (a grid's ``--set init=random``
    is meant for the models that have an init). A variant's own settings are never filtered: a
    model given a setting it does not use fails (:meth:`CountModel.check_options`)."""
    from .models import MODELS
    from .models.base import COMMON_OPTIONS

    return {k: v for k, v in settings.items() if k in COMMON_OPTIONS or k in MODELS[name].options}


def variant_label(spec: str) -> str:
    """A folder-safe label for a variant spec."""
    return spec.replace(":", "-").replace(",", "-").replace("=", "")


def run_grid(
    variants,
    seeds,
    *,
    data: dict,
    model: dict | None = None,
    train: dict | None = None,
    out_dir="runs/bench",
    n_iwae_samples: int = 100,
) -> pd.DataFrame:
    """Run every variant with every seed (skipping finished runs); return :func:`collect`."""
    out_dir = Path(out_dir)
    for spec in variants:
        name, options = parse_variant(spec)
        model_options, train_options = split_settings(options, f"variant {spec!r}")
        for seed in seeds:
            run_dir = out_dir / f"{variant_label(spec)}-seed{seed}"
            configs = (
                from_dict(DataConfig, {**data, "seed": seed}),
                from_dict(ModelConfig, {**shared_model_settings(name, model or {}), **model_options}),
                from_dict(TrainConfig, {**(train or {}), **train_options, "seed": seed, "progress": False}),
            )
            if (run_dir / "metrics.json").exists():
                check_finished_run(run_dir, *configs)
                continue
            print(f"== {spec}, seed {seed} -> {run_dir}", flush=True)
            run(name, *configs, output_dir=run_dir, n_iwae_samples=n_iwae_samples)
            (run_dir / "variant.txt").write_text(spec)
    return collect(out_dir)


def check_finished_run(run_dir: Path, data: DataConfig, model: ModelConfig, train: TrainConfig) -> None:
    """A finished run is skipped only if it was made with the same configuration (package defaults
    included): otherwise stop, naming the folder, rather than report an old run as a new one."""
    saved = json.loads((run_dir / "metrics.json").read_text())["config"]
    old = tuple(
        from_dict(cls, saved[key])
        for cls, key in ((DataConfig, "data"), (ModelConfig, "model"), (TrainConfig, "train"))
    )
    if config_hash(*old) != config_hash(data, model, train):
        differ = [
            f"{key}.{field}: {getattr(o, field)!r} then, {getattr(n, field)!r} now"
            for key, o, n in zip(("data", "model", "train"), old, (data, model, train))
            for field in asdict(n)
            if getattr(o, field) != getattr(n, field) and field not in RESUMABLE_CHANGES
        ]
        raise ValueError(
            f"{run_dir} holds a finished run of another configuration ({'; '.join(differ)}); "
            "move it away or choose another --out"
        )


def collect(out_dir) -> pd.DataFrame:
    """One row per (run, level) from every ``metrics.json`` below ``out_dir``."""
    rows = []
    for path in sorted(Path(out_dir).glob("*/metrics.json")):
        m = json.loads(path.read_text())
        spec = (path.parent / "variant.txt").read_text() if (path.parent / "variant.txt").exists() else m["model"]
        history = path.parent / "history.json"  # the median epoch is robust to bursts of load on a shared machine
        median_s = float(np.median(json.loads(history.read_text())["seconds"])) if history.exists() else np.nan
        for level in m["levels"]:
            rows.append(
                dict(
                    variant=spec,
                    model=m["model"],
                    dataset=m["dataset"],
                    seed=m["seed"],
                    device=m["device"],
                    epochs=m["epochs"],
                    seconds_per_epoch=m["seconds_per_epoch"],
                    median_seconds_per_epoch=median_s,
                    iwae=m["iwae"],
                    elbo=m["elbo"],
                    **level,
                    **{f"scib_{k}": v for k, v in m.get("scib", {}).items() if k != "metrics"},
                )
            )
    return pd.DataFrame(rows)


RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def load_results(pattern: str = "*.csv", results_dir=RESULTS_DIR) -> pd.DataFrame:
    """All committed result tables matching ``pattern``, with a ``table`` column (file stem)."""
    frames = [pd.read_csv(path).assign(table=path.stem) for path in sorted(Path(results_dir).glob(pattern))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def mean_sd(df: pd.DataFrame, metric: str, by=("variant",), columns="level", digits: int = 2) -> pd.DataFrame:
    """A ``mean ± sd`` (over seeds) table of one metric: rows ``by``, columns ``columns``."""
    g = df.groupby([*by, columns], sort=False)[metric]
    cell = g.mean().round(digits).astype(str) + " ± " + g.std().fillna(0).round(digits).astype(str)
    return cell.unstack(columns)


def summarise(
    df: pd.DataFrame,
    metrics=(
        "ari",
        "nmi",
        "weighted_f1",
        "purity",
        "accuracy",
        "utilized_clusters",
        "iwae",
        "epochs",
        "seconds_per_epoch",
    ),
) -> pd.DataFrame:
    """Mean and standard deviation over seeds, per variant and level (of the metrics present)."""
    return df.groupby(["variant", "level"], sort=False)[[m for m in metrics if m in df]].agg(["mean", "std"]).round(3)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", required=True, help="variants: name or name:key=value,...")
    p.add_argument("--dataset", default="pbmc68k")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--drop-labels", nargs="*", default=[])
    p.add_argument("--labels-key"), p.add_argument("--batch-key"), p.add_argument("--data-dir")
    p.add_argument("--hierarchy", help="CSV/TSV: finest label, then the levels coarse to fine")
    p.add_argument("--level-keys", nargs="*", default=[], help="obs columns holding the levels, coarse to fine")
    p.add_argument("--n-hvg", type=int, default=500)
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="ModelConfig or TrainConfig fields for every run, e.g. latent_dim=20 'hidden_dims=(100,100)'",
    )
    p.add_argument("--n-iwae-samples", type=int, default=100)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per run: torch and every OpenMP/BLAS pool (scikit-learn's too)",
    )
    p.add_argument("--out", default=None, help="run folders (default runs/bench/<dataset>)")
    p.add_argument("--csv", default=None, help="write all rows here (e.g. benchmarks/results/x.csv)")
    a = p.parse_args(argv)
    if a.threads:  # idle OpenMP workers of other libraries spin and steal a core on a small machine
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(a.threads)
        threadpool_limits(a.threads)
    try:
        model, train = split_settings(dict(_parse_setting(item) for item in a.set), "--set")
    except ValueError as err:
        raise SystemExit(str(err)) from None
    data = dict(
        dataset=a.dataset,
        drop_labels=tuple(a.drop_labels),
        labels_key=a.labels_key,
        batch_key=a.batch_key,
        data_dir=a.data_dir,
        n_hvg=a.n_hvg,
        hierarchy=a.hierarchy,
        level_keys=tuple(a.level_keys),
    )
    df = run_grid(
        a.models,
        a.seeds,
        data=data,
        model=model,
        train=train,
        out_dir=a.out or f"runs/bench/{Path(a.dataset).stem}",
        n_iwae_samples=a.n_iwae_samples,
    )
    if a.csv:
        Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(a.csv, index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(summarise(df))


if __name__ == "__main__":
    main()
