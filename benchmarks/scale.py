"""The whole job on 100k to 1M simulated cells: peak memory (RSS) and training throughput.

For each number of cells, simulated counts (2,000 genes, about 10% non-zeros, a 2/2/2/2 tree,
cells in cell-type order; :func:`hiermix_pyro.data.simulate_large`) are written to an ``.h5ad``
file first (kept in ``--data-dir`` and reused). Then each (model, mode) runs the main job in a
fresh process: load and prepare, build (``momix``: VAE pre-training for one epoch and nested
k-means), train one epoch, annotate, evaluate, save, and the UMAP figure; that process reports
its peak resident memory after each phase (``getrusage``: the high-water mark so far).

    .venv/bin/python benchmarks/scale.py                                   # everything, ~1 h on 2 cores
    .venv/bin/python benchmarks/scale.py --cells 1000000 --models vae      # one row
    .venv/bin/python benchmarks/scale.py --memory-only --csv benchmarks/results/scale.csv

Models: ``vae`` and ``momix`` (collapsed guide, Gaussian components, levels 2/4/5/9 = 360 paths,
``init=vae_kmeans`` with one pre-training epoch); latent 10, one hidden layer of 128, NB, batch
128, all 2,000 genes (``n_hvg=None``). Modes: ``memory`` (counts read whole, kept as CSR) and
``backed`` (counts left on disk, read in row blocks; ``HIERMIX_BACKED=1``).

Columns: ``peak_rss_gib`` (the whole job), ``rss_<phase>_gib`` (high-water mark at the end of
each phase), ``train_cells_per_s`` (training steps only, wall clock, the first step excluded),
``train_cells_per_cpu_s`` (the same per second of CPU time of the process: far less sensitive to
other jobs on a shared machine), ``seconds_<phase>``, ``load_before`` (the 1-minute load average when the run started: about 0
on an idle machine). ``--memory-only`` leaves the timing columns empty: memory is valid on a busy
machine, speed is not. Rows are merged into an existing ``--csv`` by (model, mode, n_cells), so
a grid can be measured in parts. Runs with ``--threads 1`` by
default (one torch thread); the CSV records it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

N_GENES = 2000
PHASES = ("load", "build", "train", "annotate", "evaluate", "save", "figures")
TIMING = ("train_cells_per_s", "train_cells_per_cpu_s", *(f"seconds_{p}" for p in PHASES))


def rss_gib() -> float:
    """This process's peak resident set so far, GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def data_path(data_dir: Path, n_cells: int) -> Path:
    return data_dir / f"simulated_{n_cells}x{N_GENES}.h5ad"


def simulate(path: Path, n_cells: int) -> None:
    """Write the simulated cells to ``path`` (atomically), in a process of its own."""
    from hiermix_pyro.data import simulate_large

    adata = simulate_large(n_cells, n_genes=N_GENES, seed=0)
    del adata.uns["hiermix"]  # a plain user file: load_dataset finds the levels from level_keys
    tmp = path.with_name(f".{path.name}.tmp")
    adata.write_h5ad(tmp)
    os.replace(tmp, path)


def worker(model_name: str, path: str, out: str, threads: int) -> dict:
    """The main job, phase by phase, in this (fresh) process; returns the row's numbers."""
    import torch

    torch.set_num_threads(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    import matplotlib

    matplotlib.use("Agg")
    from hiermix_pyro import plotting, workflow
    from hiermix_pyro.config import DataConfig, ModelConfig, TrainConfig
    from hiermix_pyro.models import build_model
    from hiermix_pyro.train import fit

    row, clock = {"rss_imports_gib": rss_gib()}, {}

    def phase(name, t0, c0):
        row[f"seconds_{name}"] = time.perf_counter() - t0
        row[f"rss_{name}_gib"] = rss_gib()
        clock[name] = time.process_time() - c0
        return time.perf_counter(), time.process_time()

    t, c = time.perf_counter(), time.process_time()
    data_config = DataConfig(dataset=path, level_keys=("L1", "L2", "L3", "L4"), n_hvg=None, seed=0)
    adata = workflow.load(data_config)
    row["n_cells"], row["n_genes"] = adata.n_obs, adata.n_vars
    row["backed"] = adata.X is None
    t, c = phase("load", t, c)
    options = dict(level_sizes=(2, 4, 5, 9), init="vae_kmeans", init_epochs=1) if model_name == "momix" else {}
    model_config = ModelConfig(latent_dim=10, hidden_dims=(128,), **options)
    model = build_model(model_name, adata, model_config, seed=0)
    t, c = phase("build", t, c)
    steps = []  # (wall, cpu, cells) after every SVI step
    hook = lambda model, x, s, beta: steps.append((time.perf_counter(), time.process_time(), x.shape[0]))
    train_config = TrainConfig(
        epochs=1,
        batch_size=128,
        warmup_epochs=1,
        patience=0,
        progress=False,
        device="cpu",
        checkpoint_path=str(Path(out) / "checkpoint.pt"),
    )
    history = fit(model, adata, train_config, data_config=data_config, step_hooks=(hook,))
    t, c = phase("train", t, c)
    cells = sum(n for _, _, n in steps[1:])  # the first step (warm-up) excluded
    row["train_cells"] = sum(n for _, _, n in steps)
    row["train_cells_per_s"] = cells / (steps[-1][0] - steps[0][0])
    row["train_cells_per_cpu_s"] = cells / (steps[-1][1] - steps[0][1])
    workflow.annotate(model, adata, seed=0)
    t, c = phase("annotate", t, c)
    scores = workflow.evaluate(model, adata, n_iwae_samples=100, seed=0)
    t, c = phase("evaluate", t, c)
    workflow.save_run(
        out,
        model_name=model_name,
        data_config=data_config,
        model_config=model_config,
        train_config=train_config,
        history=history,
        scores=scores,
        adata=adata,
    )
    t, c = phase("save", t, c)
    levels = adata.uns["hiermix"]["levels"]
    fig = plotting.plot_latent_umap(adata, color=[levels[-1], f"aligned_{levels[-1]}"], seed=0)
    plotting.savefig(fig, "latent_umap", Path(out) / "figures")
    t, c = phase("figures", t, c)
    row["peak_rss_gib"] = rss_gib()
    row["likelihood_cells"] = scores["likelihood_cells"]
    row["ari_finest"] = scores["levels"][-1]["ari"]
    row["cpu_seconds"] = sum(clock.values())
    return row


def run_one(model_name: str, path: Path, backed: bool, threads: int) -> dict:
    env = dict(os.environ, HIERMIX_BACKED="1" if backed else "0", HIERMIX_SCIB="0", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix="hiermix-scale-") as out:
        cmd = [sys.executable, __file__, "--worker", model_name, "--data", str(path), "--out", out]
        cmd += ["--threads", str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{model_name} on {path.name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    p.add_argument("--models", nargs="+", default=["vae", "momix"], choices=["vae", "momix"])
    p.add_argument("--modes", nargs="+", default=["memory", "backed"], choices=["memory", "backed"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "hiermix-scale"))
    p.add_argument("--memory-only", action="store_true", help="leave the timing columns empty (busy machine)")
    p.add_argument("--csv", default="benchmarks/results/scale.csv")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--simulate", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.data, a.out, a.threads)))
        return
    if a.simulate:
        simulate(Path(a.data), a.simulate)
        return
    data_dir = Path(a.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n_cells in a.cells:
        path = data_path(data_dir, n_cells)
        if not path.exists():
            print(f"simulating {n_cells:,} cells into {path}", flush=True)
            cmd = [sys.executable, __file__, "--simulate", str(n_cells), "--data", str(path)]
            subprocess.run(cmd, check=True)
        for mode in a.modes:
            for model_name in a.models:
                # the 1-minute load average before the run: about 0 on an idle machine
                row = dict(model=model_name, mode=mode, threads=a.threads, load_before=round(os.getloadavg()[0], 2))
                row.update(run_one(model_name, path, mode == "backed", a.threads))
                if a.memory_only:
                    row.update(dict.fromkeys(TIMING))
                rows.append(row)
                write(rows, a.csv)  # after every run: a long grid keeps what it measured
                print(
                    f"{n_cells:>9,} cells  {model_name:6s} {mode:6s}  peak RSS {row['peak_rss_gib']:.2f} GiB"
                    + ("" if a.memory_only else f"  {row['train_cells_per_s']:,.0f} cells/s"),
                    flush=True,
                )
    print(write(rows, a.csv).to_string(index=False))


FIRST = ["model", "mode", "n_cells", "n_genes", "peak_rss_gib", "train_cells_per_s", "train_cells_per_cpu_s"]


KEY = ["model", "mode", "n_cells"]


def write(rows: list[dict], csv: str) -> pd.DataFrame:
    """Write ``rows`` into ``csv``, replacing the rows of the same (model, mode, n_cells) and
    keeping the others: a grid run in parts (e.g. the memory-only rows measured on a busy machine,
    then the timed rows on an idle one) ends up in one table."""
    df = pd.DataFrame(rows)
    if Path(csv).exists():
        old = pd.read_csv(csv)
        keep = ~old.set_index(KEY).index.isin(df.set_index(KEY).index)
        df = pd.concat([old[keep], df], ignore_index=True)
    df = df[FIRST + [c for c in df.columns if c not in FIRST]]
    Path(csv).parent.mkdir(parents=True, exist_ok=True)
    df.round(4).to_csv(csv, index=False)
    return df[FIRST]


if __name__ == "__main__":
    main()
