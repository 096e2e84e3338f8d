"""Training throughput of our `vae` against scvi-tools' SCVI, same architecture, one process.

Same cells (pbmc_sorted, 500 seurat_v3 HVGs, 90% of cells for training as in BASELINES.md),
NB likelihood, latent 10, one hidden layer of 128, batch 128, the same torch thread count.
Times only the optimisation steps of each (no validation passes), in interleaved rounds (the
median is kept), so that load from other processes affects every tool alike. Speeds are
reported as cells per second and as the ratio ours / SCVI measured in this run.

    python benchmarks/vae_speed.py --epochs 10 --rounds 3 --threads 2 --csv benchmarks/results/vae_speed.csv

Needs scvi-tools (< 1.5 on Python 3.11) in the same environment, e.g. a separate venv:
    python -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0 \\
        && .venv-bench/bin/pip install "scvi-tools<1.5" -e . -c .ci/constraints.txt
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.optim import ClippedAdam

from hiermix_pyro.config import ModelConfig
from hiermix_pyro.data import load_dataset, prepare
from hiermix_pyro.models import build_model
from hiermix_pyro.train import CountTensors, Stepper, seed_everything


def ours(adata, jit: bool, validation: bool):
    """A function running ``epochs`` epochs of SVI steps of our vae on the training cells."""
    seed_everything(0)
    pyro.clear_param_store()
    model = build_model("vae", adata, ModelConfig(latent_dim=10, hidden_dims=(128,), likelihood="nb"))
    data = CountTensors.from_adata(adata, split="train")
    stepper = Stepper(model, ClippedAdam({"lr": 1e-3, "clip_norm": 10.0}), n_obs=len(data), jit=jit)

    def train(epochs: int) -> None:
        with pyro.validation_enabled(validation):
            for _ in range(epochs):
                for x, s in data.batches(128, shuffle=True, drop_last=jit):
                    stepper.step(x, s, beta=1.0)

    return train


def scvi_tools(adata):
    """A function running ``epochs`` epochs of scvi-tools SCVI on the same training cells."""
    import scvi

    scvi.settings.seed = 0
    train_cells = adata[adata.obs["split"] == "train"].copy()
    scvi.model.SCVI.setup_anndata(train_cells)
    model = scvi.model.SCVI(train_cells, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb")
    kwargs = dict(
        batch_size=128,
        train_size=1.0,
        accelerator="cpu",
        enable_progress_bar=False,
        early_stopping=False,
        logger=False,
        enable_checkpointing=False,
    )
    return lambda epochs: model.train(max_epochs=epochs, **kwargs)


TOOLS = {
    "scvi-tools SCVI": lambda adata: scvi_tools(adata),
    "hiermix vae": lambda adata: ours(adata, jit=False, validation=True),
    "hiermix vae (Pyro validation off)": lambda adata: ours(adata, jit=False, validation=False),
    "hiermix vae (jit, validation off)": lambda adata: ours(adata, jit=True, validation=False),
}


def load():
    return prepare(load_dataset("pbmc_sorted"), n_hvg=500, split=(0.9, 0.0, 0.1), seed=0)


def worker(tool: str, epochs: int) -> None:
    """Time one tool in a process of its own (Pyro's parameter store is global)."""
    train = TOOLS[tool](load())
    train(1)  # warm-up and JIT compilation, untimed
    t0 = time.perf_counter()
    train(epochs)
    print(f"SECONDS {time.perf_counter() - t0}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the median is kept")
    p.add_argument("--csv", default="benchmarks/results/vae_speed.csv")
    p.add_argument("--worker", choices=list(TOOLS), help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.worker:
        return worker(a.worker, a.epochs)
    seconds = {name: [] for name in TOOLS}
    for r in range(a.rounds):  # interleaved rounds: load from other processes hits every tool alike
        for name in TOOLS:
            cmd = [sys.executable, __file__, "--worker", name, "--epochs", str(a.epochs), "--threads", str(a.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            seconds[name].append(float(out.split("SECONDS")[-1]))
            print(f"round {r + 1}: {name}: {seconds[name][-1]:.2f} s", flush=True)
    n = int((load().obs["split"] == "train").sum())
    rows = []
    for name, times in seconds.items():
        med = float(np.median(times))
        rows.append(
            dict(
                tool=name,
                train_cells=n,
                epochs=a.epochs,
                rounds=a.rounds,
                threads=a.threads,
                seconds_per_epoch=round(med / a.epochs, 3),
                cells_per_second=round(n * a.epochs / med),
            )
        )
    df = pd.DataFrame(rows)
    df["ratio_to_scvi"] = (df["cells_per_second"] / df.loc[0, "cells_per_second"]).round(2)
    Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.csv, index=False)
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
