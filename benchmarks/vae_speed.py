"""Training throughput of our `vae` against scvi-tools' SCVI, same architecture, one process.

Same cells (pbmc_sorted, 500 seurat_v3 HVGs, 90% of cells for training as in BASELINES.md),
NB likelihood, latent 10, one hidden layer of 128, batch 128, the same torch thread count.
Times only the optimisation steps of each (no validation passes). Speeds are reported as
cells per second and as the ratio ours / SCVI measured in this run.

    python benchmarks/vae_speed.py --epochs 20 --threads 2 --csv benchmarks/results/vae_speed.csv

Needs scvi-tools (< 1.5 on Python 3.11) in the same environment, e.g. a separate venv:
    python -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0 \\
        && .venv-bench/bin/pip install "scvi-tools<1.5" -e . -c .ci/constraints.txt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import pyro
import torch
from pyro.infer import SVI
from pyro.optim import ClippedAdam

from hiermix_pyro.config import ModelConfig
from hiermix_pyro.data import load_dataset, prepare
from hiermix_pyro.models import build_model
from hiermix_pyro.train import CountTensors, make_elbo, seed_everything


def time_ours(adata, epochs: int, jit: bool, validation: bool) -> float:
    """Seconds for ``epochs`` epochs of SVI steps of our vae on the training cells."""
    seed_everything(0)
    pyro.clear_param_store()
    pyro.enable_validation(validation)
    model = build_model("vae", adata, ModelConfig(latent_dim=10, hidden_dims=(128,), likelihood="nb"))
    data = CountTensors.from_adata(adata, split="train")
    svi = SVI(model.model, model.guide, ClippedAdam({"lr": 1e-3, "clip_norm": 10.0}), make_elbo(model, jit=jit))
    beta = torch.tensor(1.0) if jit else 1.0
    for x, s in data.batches(128, drop_last=jit):  # one untimed epoch: warm-up, JIT compilation
        svi.step(x, s, n_obs=len(data), beta=beta)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, s in data.batches(128, shuffle=True, drop_last=jit):
            svi.step(x, s, n_obs=len(data), beta=beta)
    pyro.enable_validation(True)
    return time.perf_counter() - t0


def time_scvi(adata, epochs: int) -> float:
    """Seconds for ``epochs`` epochs of scvi-tools SCVI on the same training cells."""
    import scvi

    scvi.settings.seed = 0
    train = adata[adata.obs["split"] == "train"].copy()
    scvi.model.SCVI.setup_anndata(train)
    model = scvi.model.SCVI(train, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb")
    kwargs = dict(batch_size=128, train_size=1.0, accelerator="cpu", enable_progress_bar=False,
                  early_stopping=False, logger=False, enable_checkpointing=False)
    model.train(max_epochs=1, **kwargs)  # warm-up, as for ours
    t0 = time.perf_counter()
    model.train(max_epochs=epochs, **kwargs)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--csv", default="benchmarks/results/vae_speed.csv")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    adata = prepare(load_dataset("pbmc_sorted"), n_hvg=500, split=(0.9, 0.0, 0.1), seed=0)
    n = int((adata.obs["split"] == "train").sum())
    rows = []
    for name, fn in [("scvi-tools SCVI", lambda: time_scvi(adata, a.epochs)),
                     ("hiermix vae", lambda: time_ours(adata, a.epochs, jit=False, validation=True)),
                     ("hiermix vae (no validation)", lambda: time_ours(adata, a.epochs, jit=False, validation=False)),
                     ("hiermix vae (jit)", lambda: time_ours(adata, a.epochs, jit=True, validation=False))]:
        seconds = fn()
        rows.append(dict(tool=name, train_cells=n, epochs=a.epochs, threads=a.threads, seconds=round(seconds, 2),
                         seconds_per_epoch=round(seconds / a.epochs, 3), cells_per_second=round(n * a.epochs / seconds)))
        print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    df["ratio_to_scvi"] = (df["cells_per_second"] / df.loc[0, "cells_per_second"]).round(2)
    Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.csv, index=False)
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
