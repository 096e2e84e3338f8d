"""Training throughput on one GPU: vae, momix (collapsed) and vmm, eager and JIT, beside scvi-tools.

Called by ``benchmarks/gpu.sh`` (which also runs the main job once on the GPU); on its own:

    .venv/bin/python benchmarks/gpu.py                          # cuda, writes benchmarks/results/gpu_throughput.csv
    .venv/bin/python benchmarks/gpu.py --device cpu --tiny --csv /tmp/gpu.csv   # the CPU check the tests run

Data: 100,000 simulated cells x 2,000 genes (:func:`hiermix_pyro.data.simulate_large`, about 10%
non-zeros), 80% for training, kept sparse (CSR) on the device; each step densifies its own
minibatch there, so no step copies counts from the host. Models: latent 10, one hidden layer of
128, NB; momix with levels 2/4/5/9 (360 paths, collapsed guide, components initialised at
random: the initialisation does not change the cost of a step); vmm with K = 100 and its
Empirical-Bayes M-step after every SVI step, as in training. Batch sizes 128 and 4,096; eager
and JIT (``JitTrace_ELBO`` / ``JitTraceEnum_ELBO``). Last, ``momix structured`` (the guide that
decodes every one of the 360 paths, about 150 times a ``vae`` step on a CPU) eagerly at batch
128 only.

Each configuration runs a few warm-up steps (and its JIT compilation), then steps for about
``--seconds`` seconds; cells/s is the number of cells in the timed steps over their wall time,
with the device synchronised at both ends. A JIT run that fails with the CUDA fuser error of
Pyro issue #3338 (NNC/nvrtc: ``default_program(..): error: ...``) is retried once with the GPU
fuser switched off, and run eagerly if that fails too; the ``note`` column says which.

scvi-tools SCVI (same architecture, ``n_hidden=128, n_latent=10, n_layers=1``, NB) runs on the
same training cells when ``import scvi`` works, else a line says it was skipped. Its cells/s is
taken from the difference between a 1-epoch and a (1 + k)-epoch ``train()`` call, which removes
its fixed set-up cost; its data loader feeds minibatches from host memory (its design), ours
are on the device.

The whole script keeps to ``--budget-s`` seconds: configurations that would start after it are
recorded as skipped. Columns: gpu (device name), model, batch_size, mode, cells_per_s, steps,
seconds, note, n_cells, n_genes, torch, pyro.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.optim import ClippedAdam

from hiermix_pyro.config import ModelConfig
from hiermix_pyro.data import prepare, simulate_large
from hiermix_pyro.models import build_model
from hiermix_pyro.train import CountTensors, Stepper, seed_everything

MODELS = {  # label -> (model, ModelConfig options beyond latent 10, hidden (128,))
    "vae": ("vae", {}),
    "momix": ("momix", dict(guide="collapsed", level_sizes=(2, 4, 5, 9), init="random")),
    "vmm": ("vmm", {}),
    "momix structured": ("momix", dict(guide="structured", level_sizes=(2, 4, 5, 9), init="random")),
}
STRUCTURED_MAX_BATCH = 512  # the structured guide decodes every path: [360, B, G] tensors
FUSER_ERROR = ("default_program", "nvrtc", "fuser", "NVRTC")  # Pyro #3338 and its relatives


def is_fuser_error(err: BaseException) -> bool:
    """Whether ``err`` is the JIT's CUDA kernel-compilation failure (Pyro issue #3338)."""
    return isinstance(err, RuntimeError) and any(key in str(err) for key in FUSER_ERROR)


def disable_gpu_fuser() -> None:
    """Switch off TorchScript's GPU fusers (NNC), whose generated CUDA code #3338 fails to compile."""
    torch._C._jit_override_can_fuse_on_gpu(False)
    torch._C._jit_set_texpr_fuser_enabled(False)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(name, adata, data, device, batch_size, jit, seconds, warmup_steps=5) -> tuple[float, int, float]:
    """Cells per second of SVI steps (plus vmm's M-step) on ``data``: (cells/s, steps, seconds)."""
    seed_everything(0)
    pyro.clear_param_store()
    model_name, options = MODELS[name]
    model = build_model(model_name, adata, ModelConfig(latent_dim=10, hidden_dims=(128,), **options)).to(device)
    model.train()
    stepper = Stepper(model, ClippedAdam({"lr": 1e-3, "clip_norm": 10.0}), n_obs=len(data), jit=jit)

    def batches():
        while True:
            yield from data.batches(batch_size, shuffle=True, drop_last=True)

    stream = batches()

    def step():
        x, s = next(stream)
        stepper.step(x, s, beta=1.0, progress=0.0)
        model.prior_step(x, s)
        return x.shape[0]

    for _ in range(warmup_steps):
        step()
    sync(device)
    cells, steps, t0 = 0, 0, time.perf_counter()
    while steps < 5 or time.perf_counter() - t0 < seconds:
        cells += step()
        steps += 1
        if steps % 20 == 0:
            sync(device)
    sync(device)
    elapsed = time.perf_counter() - t0
    return cells / elapsed, steps, elapsed


def measure(name, adata, data, device, batch_size, mode, seconds) -> tuple[float, int, float, str]:
    """One configuration; JIT falls back as the module docstring says. Returns (cells/s, steps, s, note)."""
    if mode == "eager":
        return (*throughput(name, adata, data, device, batch_size, False, seconds), "")
    try:
        return (*throughput(name, adata, data, device, batch_size, True, seconds), "")
    except RuntimeError as err:
        if not is_fuser_error(err):
            raise
        first = str(err).strip().splitlines()[-1][:200]
        print(f"  JIT failed with the CUDA fuser error of Pyro #3338 ({first}); retrying with the GPU fuser off")
    disable_gpu_fuser()
    try:
        return (*throughput(name, adata, data, device, batch_size, True, seconds), "jit: GPU fuser off (Pyro #3338)")
    except RuntimeError as err:
        if not is_fuser_error(err):
            raise
        print("  JIT failed again with the fuser off; running eagerly instead")
    return (*throughput(name, adata, data, device, batch_size, False, seconds), "jit failed (Pyro #3338): eager")


def scvi_throughput(adata, device, batch_size, epochs) -> tuple[float, int, float, str] | None:
    """scvi-tools SCVI on the training cells: (cells/s, steps, seconds, note), or None without scvi-tools."""
    try:
        import scvi
    except ImportError as err:
        print(f"scvi-tools SCVI skipped: cannot import scvi ({err})")
        return None
    scvi.settings.seed = 0
    train_cells = adata[(adata.obs["split"] == "train").to_numpy()].copy()
    scvi.model.SCVI.setup_anndata(train_cells)
    model = scvi.model.SCVI(train_cells, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb")
    kwargs = dict(
        batch_size=batch_size,
        train_size=1.0,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        enable_progress_bar=False,
        early_stopping=False,
        logger=False,
        enable_checkpointing=False,
    )
    times = []
    for n in (1, 1 + epochs):  # the difference removes the fixed cost of setting up a train() call
        t0 = time.perf_counter()
        model.train(max_epochs=n, **kwargs)
        times.append(time.perf_counter() - t0)
    seconds = max(times[1] - times[0], 1e-9)
    steps = epochs * math.ceil(train_cells.n_obs / batch_size)
    return epochs * train_cells.n_obs / seconds, steps, seconds, f"scvi-tools {scvi.__version__}; host data loader"


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a few thousand cells and 100 genes: the CPU check of the tests")
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 4096])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--structured-modes", nargs="+", default=["eager"], choices=["eager", "jit"])
    p.add_argument("--modes", nargs="+", default=["eager", "jit"], choices=["eager", "jit"])
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per configuration")
    p.add_argument("--scvi-epochs", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=300.0, help="start no configuration after this many seconds")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--csv", default="benchmarks/results/gpu_throughput.csv")
    a = p.parse_args(argv)
    if a.tiny:
        a.cells, a.genes, a.batch_sizes, a.seconds, a.scvi_epochs = 2000, 100, [32, 256], 0.2, 1
    if a.threads:
        torch.set_num_threads(a.threads)
    start = time.perf_counter()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available here; run with --device cpu (and --tiny for a quick check)")
    gpu = device_name(device)
    print(f"device: {gpu}; torch {torch.__version__}, pyro {pyro.__version__}", flush=True)
    t0 = time.perf_counter()
    adata = prepare(simulate_large(a.cells, n_genes=a.genes, seed=0), n_hvg=None, seed=0)
    data = CountTensors.from_adata(adata, device, "train")  # CSR on the device
    print(
        f"data: {adata.n_obs:,} cells x {adata.n_vars:,} genes ({len(data):,} for training, "
        f"{adata.X.nnz / np.prod(adata.shape):.1%} non-zeros) in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    rows = []

    def record(model, batch_size, mode, result, note=""):
        cells_per_s, steps, seconds, extra = result if result else (float("nan"), 0, 0.0, "")
        row = dict(
            gpu=gpu,
            model=model,
            batch_size=batch_size,
            mode=mode,
            cells_per_s=round(cells_per_s, 1),
            steps=steps,
            seconds=round(seconds, 2),
            note="; ".join(n for n in (extra, note) if n),
            n_cells=adata.n_obs,
            n_genes=adata.n_vars,
            torch=torch.__version__,
            pyro=pyro.__version__,
        )
        rows.append(row)
        print(
            f"{model:16s} batch {batch_size:5d} {mode:5s} {row['cells_per_s']:>12,.0f} cells/s  {row['note']}",
            flush=True,
        )

    for batch_size in a.batch_sizes:
        if batch_size > len(data):
            print(f"batch {batch_size} is larger than the {len(data)} training cells: skipped")
            continue
        for name in a.models:
            structured = "structured" in name
            if structured and batch_size > STRUCTURED_MAX_BATCH:
                print(f"{name}: batch {batch_size} skipped (it decodes every path; at most {STRUCTURED_MAX_BATCH})")
                continue
            for mode in a.structured_modes if structured else a.modes:
                if time.perf_counter() - start > a.budget_s:
                    record(name, batch_size, mode, None, f"skipped: past the {a.budget_s:.0f} s budget")
                    continue
                record(name, batch_size, mode, measure(name, adata, data, device, batch_size, mode, a.seconds))
        if time.perf_counter() - start > a.budget_s:
            record("scvi-tools SCVI", batch_size, "-", None, f"skipped: past the {a.budget_s:.0f} s budget")
            continue
        result = scvi_throughput(adata, device, batch_size, a.scvi_epochs)
        if result is not None:
            record("scvi-tools SCVI", batch_size, "-", result)
    df = pd.DataFrame(rows)
    Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.csv, index=False)
    print(f"wrote {a.csv} in {time.perf_counter() - start:.0f} s", flush=True)
    return df


if __name__ == "__main__":
    main()
