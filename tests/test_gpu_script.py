"""benchmarks/gpu.sh on the CPU with tiny sizes, so that the GPU script cannot rot between the
rare runs on a GPU; and the JIT fallback on the CUDA fuser error of Pyro issue #3338."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def gpu_module():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_script_cpu_path(tmp_path):
    out = tmp_path / "gpu"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--device", "cpu", "--tiny", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = pd.read_csv(out / "gpu_throughput.csv")
    ours = table[table["model"].isin(["vae", "momix", "vmm"])]
    assert set(ours["model"]) == {"vae", "momix", "vmm"} and set(ours["mode"]) == {"eager", "jit"}
    assert (table["model"] == "momix structured").sum() == 2  # eager, at both tiny batch sizes
    assert (ours["cells_per_s"] > 0).all() and ours["gpu"].str.startswith("cpu").all()
    assert "scvi-tools SCVI" in set(table["model"]) or "scvi-tools SCVI skipped" in proc.stdout
    metrics = json.loads((out / "train-momix" / "metrics.json").read_text())
    assert metrics["model"] == "momix" and metrics["device"] == "cpu"
    assert (out / "train-momix.ipynb").exists() and (out / "environment.txt").exists()


def test_jit_falls_back_on_the_cuda_fuser_error(monkeypatch, capsys):
    gpu = gpu_module()
    error = RuntimeError(
        "The following operation failed in the TorchScript interpreter.\n"
        "RuntimeError: default_program(24): error: extra text after expected end of number"
    )
    assert gpu.is_fuser_error(error) and not gpu.is_fuser_error(RuntimeError("shape mismatch"))
    calls = []

    def throughput(name, adata, data, device, batch_size, jit, seconds):
        calls.append(jit)
        if jit and len(calls) <= failures:
            raise error
        return 100.0, 10, 0.1

    monkeypatch.setattr(gpu, "throughput", throughput)
    monkeypatch.setattr(gpu, "disable_gpu_fuser", lambda: calls.append("fuser off"))
    failures = 1
    assert gpu.measure("momix", None, None, None, 128, "jit", 1.0) == (
        100.0,
        10,
        0.1,
        "jit: GPU fuser off (Pyro #3338)",
    )
    assert calls == [True, "fuser off", True] and "Pyro #3338" in capsys.readouterr().out
    calls.clear()
    failures = 3
    result = gpu.measure("momix", None, None, None, 128, "jit", 1.0)
    assert result[-1] == "jit failed (Pyro #3338): eager" and calls == [True, "fuser off", True, False]
    calls.clear()
    with pytest.raises(RuntimeError, match="shape"):
        monkeypatch.setattr(gpu, "throughput", lambda *args: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
        gpu.measure("vae", None, None, None, 128, "jit", 1.0)
