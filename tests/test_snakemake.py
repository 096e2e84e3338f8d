"""The benchmark workflow (benchmarks/Snakefile): every study's dry run lists its grid; the
profiles parse. Nothing is trained here (the smoke study runs for real in .ci/run)."""

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hiermix_pyro.study import PEERS, load_study

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
STUDIES = sorted(p.stem for p in (ROOT / "benchmarks" / "studies").glob("*.yaml"))
pytestmark = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed (the bench extra)")


@functools.cache
def dry_run(*args: str) -> str:
    """``snakemake -n -F`` (every job, as if nothing were done yet) from the repository root."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(SNAKEMAKE), "-s", "benchmarks/Snakefile", "-n", "-F", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table of a dry run: ``{rule: count}``."""
    table = output.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_every_study_is_a_file_the_workflow_reads():
    assert {"smoke", "headline", "hierarchy", "eb_sweep"} <= set(STUDIES)


@pytest.mark.parametrize("study", STUDIES)
def test_dry_run_lists_the_whole_grid(study):
    s = load_study(study)
    counts = job_counts(dry_run("--config", f"study={study}"))
    n_data, n_seeds = len(s.datasets), len(s.seeds)
    assert counts.get("train", 0) == n_data * len(s.variants) * n_seeds
    scanpy = [p for p in s.peers if PEERS[p].env == "main"]
    assert counts.get("peer_scanpy", 0) == n_data * len(scanpy) * n_seeds
    scvi = [p for p in s.peers if PEERS[p].env == "scvi"]
    assert counts.get("peer_scvi", 0) == (n_data * n_seeds if scvi else 0)  # one SCVI fit for both clusterings
    assert counts["collect"] == 1


def test_headline_grid_and_one_run_each_kind():
    """The headline grid: 7 models, momix with the divisive start (two variants) and 4 peers on 6 datasets (4, two
    of them also with 2,000 genes) with 10 seeds; each run writes into runs/headline/<dataset>/<method>/seed<k>/
    under the convergence protocol."""
    out = dry_run("--config", "study=headline")
    counts = job_counts(out)
    assert counts["train"] == 6 * 9 * 10 and counts["peer_scanpy"] == 6 * 2 * 10 and counts["peer_scvi"] == 6 * 10
    for method in (
        "vae",
        "mixture",
        "momix",
        "momix_divisive_top",
        "momix_divisive_top150",
        "indmom",
        "vampprior",
        "gmm",
        "vmm",
        "pca_leiden",
        "pca_kmeans",
    ):
        assert f"runs/headline/pbmc_sorted9/{method}/seed9/metrics.json" in out
    for peer in ("scvi_leiden", "scvi_kmeans"):
        assert f"runs/headline/pbmc_3tech/{peer}/seed0/metrics.json" in out
    assert '"epochs": 10000, "patience": 100' in out
    assert ".venv-scvi/bin/python benchmarks/peers.py scvi_leiden scvi_kmeans" in out
    assert "papermill" in out and "notebooks/train.ipynb runs/headline/" in out  # never into notebooks/


def test_every_job_imports_the_package_of_its_own_checkout():
    """A run records its checkout's commit, so it must run that checkout's code: every job that runs
    Python puts the checkout first on PYTHONPATH, also when the environment's editable install
    points at another checkout (a git worktree sharing .venv)."""
    out = dry_run("--config", "study=headline", "datasets=pbmc_sorted9", "seeds=0")
    commands = [block.split("\n\n")[0] for block in out.split("Shell command:")[1:]]
    python_jobs = [c for c in commands if "papermill" in c or "peers.py" in c]
    assert len(python_jobs) >= 3  # the models, the scanpy peers and the scVI fit
    assert all(f"PYTHONPATH={ROOT}" in c for c in python_jobs), python_jobs[0]


def test_dry_run_of_a_part():
    """--config datasets=... seeds=... methods=... select part of a study's grid."""
    out = dry_run(
        "--quiet", "rules", "--config", "study=headline", "datasets=pbmc_sorted9", "seeds=0-4", "methods=vae,pca_leiden"
    )
    assert job_counts(out)["train"] == 5 and job_counts(out)["peer_scanpy"] == 5


def test_slurm_profile_parses_and_gives_training_a_gpu():
    profile = yaml.safe_load((ROOT / "benchmarks/profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["set-resources"]["train"]["gpu"] == 1 and profile["set-resources"]["peer_scvi"]["gpu"] == 1
    out = dry_run("--profile", "benchmarks/profiles/slurm", "--config", "study=smoke")
    assert "Using profiles benchmarks/profiles/slurm" in out
    train_jobs = out.split("rule train:")[1:]
    assert train_jobs and all("gpu=1" in block.split("Shell command")[0] for block in train_jobs)
    assert '"device": "cuda"' in out  # the GPU job's notebook gets device=cuda


def test_default_profile_never_redoes_a_finished_run():
    profile = yaml.safe_load((ROOT / "benchmarks/profiles/default/config.yaml").read_text())
    assert profile["rerun-triggers"] == ["mtime"] and profile["rerun-incomplete"] is True
