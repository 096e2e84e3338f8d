"""Packaging facts that CI would otherwise only find on a fresh machine."""

import re
import tomllib
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda names that differ from PyPI names
CONDA_TO_PYPI = {"pytorch": "torch", "python-igraph": "igraph"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in ("notebooks", "test", "book"):
        wanted |= {_name(r) for r in project["optional-dependencies"][extra] if not r.startswith("hiermix-pyro")}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = set()
    for dep in env["dependencies"]:
        for item in dep["pip"] if isinstance(dep, dict) else [dep]:
            if not item.startswith("-e"):
                listed.add(CONDA_TO_PYPI.get(_name(item), _name(item)))
    listed -= {"python", "pip"}
    assert listed == wanted


@pytest.mark.parametrize("source", sorted((ROOT / "notebooks").glob("*.md")), ids=lambda p: p.name)
def test_notebook_pairs_are_in_sync(source):
    """Each MyST notebook has its .ipynb twin with the same cells (CI also checks the bytes)."""
    paired = source.with_suffix(".ipynb")
    assert paired.exists(), f"run: jupytext --to ipynb {source.relative_to(ROOT)}"
    expected = jupytext.read(source)
    actual = nbformat.read(paired, as_version=4)
    cells = lambda nb: [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]
    assert cells(actual) == cells(expected), f"out of sync: run `make sync` ({source.name})"
    assert not any(c.get("outputs") for c in actual.cells), "commit notebooks without outputs"


def test_train_notebook_has_a_parameters_cell():
    nb = nbformat.read(ROOT / "notebooks" / "train.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    for name in ("model", "dataset", "seed", "epochs", "device", "likelihood", "output_dir", "smoke_test"):
        assert re.search(rf"^{name}\s*(:[^=]*)?= ", params[0].source, re.M), name
