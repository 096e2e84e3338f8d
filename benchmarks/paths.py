"""Cost of one SVI step against the number of enumerated paths, for momix and indmom.

    .venv/bin/python benchmarks/paths.py                      # writes benchmarks/results/paths.csv
    .venv/bin/python benchmarks/paths.py --rounds 7 --steps 10 --threads 1

The hierarchy grows at its finest level: 2/2/3/3 (36 paths), 2/4/5/9 (360, the reference),
2/4/5/27 (1,080) and 2/4/5/90 (3,600). ``momix`` (collapsed guide, Gaussian components) has one
component per path; ``indmom`` has one per cluster (sum of the level sizes), but its model
enumerates the branch and every level, L x (product of the level sizes) combinations, which the
column ``n_enumerated`` gives. Otherwise as ``benchmarks/step_time.py``: one fixed batch of 128
cells of pbmc_sorted (9 populations, 500 HVGs), latent 20, MLP 2 x 100, NB, components
initialised at random, eager (no JIT); the models and a ``vae`` reference timed in interleaved
rounds in one process, the median over rounds; ``ms_per_step`` is the CPU time of the single
computing thread (robust to other jobs; with ``--threads`` > 1 the wall clock),
``wall_ms_per_step`` the wall clock, ``ratio_to_vae`` within this run. ``--dataset simulated``
uses simulated counts instead (no data files needed; the tests run it that way).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import pandas as pd
import pyro
import torch
from pyro.infer import SVI
from pyro.optim import ClippedAdam
from threadpoolctl import threadpool_limits

from hiermix_pyro.config import DataConfig, ModelConfig
from hiermix_pyro.data import prepare, simulate_hierarchy
from hiermix_pyro.models import build_model
from hiermix_pyro.train import CountTensors, make_elbo, seed_everything
from hiermix_pyro.workflow import load

LEVELS = [(2, 2, 3, 3), (2, 4, 5, 9), (2, 4, 5, 27), (2, 4, 5, 90)]


def data(dataset: str, n_genes: int):
    if dataset == "simulated":
        return prepare(simulate_hierarchy(branching=(2, 2, 2), cells_per_leaf=60, n_genes=n_genes, seed=0), n_hvg=None)
    return load(DataConfig(dataset=dataset, drop_labels=("CD14+ Monocyte",), n_hvg=n_genes))


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--models", nargs="+", default=["momix", "indmom"], choices=["momix", "indmom"])
    p.add_argument("--levels", nargs="+", default=None, help="level sizes, e.g. 2,4,5,9 (default: the four above)")
    p.add_argument("--dataset", default="pbmc_sorted")
    p.add_argument("--n-genes", type=int, default=500)
    p.add_argument("--csv", default="benchmarks/results/paths.csv")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    threadpool_limits(a.threads)
    clock = time.thread_time if a.threads == 1 else time.perf_counter
    levels = [tuple(int(k) for k in s.split(",")) for s in a.levels] if a.levels else LEVELS
    adata = data(a.dataset, a.n_genes)
    x, s = CountTensors.from_adata(adata, split="train")[: a.batch_size]
    n_obs = int((adata.obs["split"] == "train").sum())
    args = (x,) if s is None else (x, s)
    store = pyro.get_param_store()
    variants = [("vae", "vae", None)] + [(f"{m} {'/'.join(map(str, ks))}", m, ks) for m in a.models for ks in levels]
    runners = {}
    for label, name, sizes in variants:
        seed_everything(0)
        options = {} if sizes is None else dict(init="random", level_sizes=sizes)
        model = build_model(name, adata, ModelConfig(latent_dim=20, hidden_dims=(100, 100), **options))
        kwargs = dict(n_obs=n_obs, beta=1.0, **model.schedule(0.0, 1.0))  # the usage regulariser at full weight
        with store.scope() as state:
            svi = SVI(model.model, model.guide, ClippedAdam({"lr": 1e-3}), make_elbo(model))
            for _ in range(3):  # warm-up
                svi.step(*args, **kwargs)
        runners[label] = (svi, kwargs, state, name, sizes)
    cpu = {label: [] for label in runners}
    wall = {label: [] for label in runners}
    for _ in range(a.rounds):
        for label, (svi, kwargs, state, *_) in runners.items():
            with store.scope(state):
                t0, w0 = clock(), time.perf_counter()
                for _ in range(a.steps):
                    svi.step(*args, **kwargs)
                cpu[label].append((clock() - t0) / a.steps)
                wall[label].append((time.perf_counter() - w0) / a.steps)
    vae_ms = 1e3 * statistics.median(cpu["vae"])
    rows = []
    for label, (*_, name, sizes) in runners.items():
        ms = 1e3 * statistics.median(cpu[label])
        rows.append(
            dict(
                model=name,
                level_sizes="/".join(map(str, sizes)) if sizes else "",
                n_paths=math.prod(sizes) if sizes else 0,
                n_components=(math.prod(sizes) if name == "momix" else sum(sizes)) if sizes else 0,
                n_enumerated=(math.prod(sizes) * (len(sizes) if name == "indmom" else 1)) if sizes else 0,
                ms_per_step=round(ms, 2),
                ratio_to_vae=round(ms / vae_ms, 2),
                wall_ms_per_step=round(1e3 * statistics.median(wall[label]), 2),
                threads=a.threads,
                batch_size=a.batch_size,
                rounds=a.rounds,
                dataset=a.dataset,
            )
        )
    df = pd.DataFrame(rows)
    Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.csv, index=False)
    print(df.to_string(index=False))
    return df


if __name__ == "__main__":
    main()
