"""Time one SVI step of each model on the same minibatch, in one process, with the same threads
(components initialised at random: the initialisation does not change the cost of a step).

    .venv/bin/python benchmarks/step_time.py [--threads 1] [--rounds 5] [--steps 10]

Data: pbmc_sorted, 9 populations (CD14+ monocytes dropped), 500 HVGs; one fixed batch of 128
cells; latent 20, MLP 2 x 100, NB. Models are timed in interleaved rounds (each round runs
every model for ``--steps`` steps after its warm-up), so machine load that drifts during the
run hits all models alike; the median over rounds is reported, with its ratio to ``vae``
(jit or not); ``vae, TraceEnum_ELBO`` is the same VAE under the enumeration-aware ELBO, which
isolates what Pyro's enumeration machinery costs per step; "(compiled)" rows evaluate
log p(x | z) through ``torch.compile`` (``compile_likelihood``). Two clocks: ``ms_per_step`` is
the CPU time of the (single) computing thread (``--threads 1``; with more threads, the wall
clock), which other jobs on a shared machine disturb far less than the wall clock; ``wall_ms_per_step`` is the wall clock. Ratios use the CPU time.
Writes ``benchmarks/results/step_time.csv`` (``--batch-size 512 --csv
benchmarks/results/step_time_b512.csv`` for the larger batch).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import pyro
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.optim import ClippedAdam
from threadpoolctl import threadpool_limits

from hiermix_pyro.config import DataConfig, ModelConfig
from hiermix_pyro.models import build_model
from hiermix_pyro.train import CountTensors, make_elbo, seed_everything
from hiermix_pyro.workflow import load

VARIANTS = [  # (label, model name, ModelConfig options, jit, compile_likelihood)
    ("vae", "vae", {}, False, False),
    ("vae, TraceEnum_ELBO", "vae", {}, False, False),  # what Pyro's enumeration machinery alone costs
    ("mixture", "mixture", {}, False, False),
    ("indmom", "indmom", {}, False, False),
    ("momix collapsed normal", "momix", dict(guide="collapsed", prior="normal"), False, False),
    ("momix collapsed studentt", "momix", dict(guide="collapsed", prior="studentt"), False, False),
    # the same ELBO with y1..yL enumerated by Pyro in the model (the book's teaching form)
    ("momix collapsed normal, enumerated", "momix", dict(guide="collapsed", sum_paths="enumerate"), False, False),
    ("momix structured normal", "momix", dict(guide="structured", prior="normal"), False, False),
    ("momix structured studentt", "momix", dict(guide="structured", prior="studentt"), False, False),
    ("momix structured normal (compiled)", "momix", dict(guide="structured", prior="normal"), False, True),
    ("momix structured studentt (compiled)", "momix", dict(guide="structured", prior="studentt"), False, True),
    ("vae (jit)", "vae", {}, True, False),
    ("momix collapsed normal (jit)", "momix", dict(guide="collapsed", prior="normal"), True, False),
    ("momix collapsed studentt (jit)", "momix", dict(guide="collapsed", prior="studentt"), True, False),
]
SLOW = {label for label, *_ in VARIANTS if "structured" in label}  # fewer steps per round


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--skip", nargs="*", default=[], help="labels of variants to leave out")
    p.add_argument("--csv", default="benchmarks/results/step_time.csv")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    threadpool_limits(a.threads)  # no spinning OpenMP/BLAS workers of other libraries
    # one computing thread: its CPU time; several: only the wall clock measures a step
    clock = time.thread_time if a.threads == 1 else time.perf_counter
    adata = load(DataConfig(dataset="pbmc_sorted", drop_labels=("CD14+ Monocyte",), n_hvg=500))
    x, s = CountTensors.from_adata(adata, split="train")[: a.batch_size]
    n_obs = int((adata.obs["split"] == "train").sum())
    args = (x,) if s is None else (x, s)  # the jit traces tensors only: no None argument
    runners, store = {}, pyro.get_param_store()
    for label, name, options, jit, compiled in VARIANTS:
        if label in a.skip:
            continue
        seed_everything(0)
        random_init = {} if name == "vae" else dict(init="random")  # the vae refuses settings it does not use
        config = ModelConfig(latent_dim=20, hidden_dims=(100, 100), **random_init, **options)
        model = build_model(name, adata, config)
        if compiled:
            model.compile_likelihood()
        with store.scope() as state:  # models share parameter names: one store each
            elbo = (
                TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
                if "TraceEnum" in label
                else make_elbo(model, jit=jit)
            )
            svi = SVI(model.model, model.guide, ClippedAdam({"lr": 1e-3}), elbo)
            beta = torch.tensor(1.0) if jit else 1.0
            for _ in range(3):  # warm-up (and jit compilation)
                svi.step(*args, n_obs=n_obs, beta=beta)
        runners[label] = (svi, beta, state)
    times = {label: [] for label in runners}
    walls = {label: [] for label in runners}
    for _ in range(a.rounds):
        for label, (svi, beta, state) in runners.items():
            n = max(1, a.steps // 5) if label in SLOW else a.steps
            with store.scope(state):
                t0, w0 = clock(), time.perf_counter()
                for _ in range(n):
                    svi.step(*args, n_obs=n_obs, beta=beta)
                times[label].append((clock() - t0) / n)
                walls[label].append((time.perf_counter() - w0) / n)
    rows = []
    med = {label: 1e3 * statistics.median(ts) for label, ts in times.items()}
    for label, ms in med.items():
        ref = "vae (jit)" if label.endswith("(jit)") and "vae (jit)" in times else "vae"
        rows.append(
            dict(
                variant=label,
                ms_per_step=round(ms, 2),
                ratio_to_vae=round(ms / med[ref], 2),
                reference=ref,
                ratio_to_plain_vae=round(ms / med["vae"], 2),
                wall_ms_per_step=round(1e3 * statistics.median(walls[label]), 2),
                threads=a.threads,
                batch_size=a.batch_size,
                rounds=a.rounds,
            )
        )
    df = pd.DataFrame(rows)
    Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.csv, index=False)
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
