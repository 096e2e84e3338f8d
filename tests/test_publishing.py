"""Publishing furniture: licence, citation, workflows, book buttons, lint config, version.

The GitHub workflows cannot run here, so their YAML is parsed and their triggers and steps
checked against what the repository actually provides (.ci/run, the Makefile's targets).
"""

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
import yaml

import hiermix_pyro

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
REPO_URL = "https://github.com/hiermix-pyro/hiermix-pyro"
BOOK_URL = "https://hiermix-pyro.github.io/hiermix-pyro"


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _triggers(workflow: dict) -> dict:
    """The workflow's `on:` mapping. YAML 1.1 reads the bare key `on` as the boolean True."""
    on = workflow.get("on", workflow.get(True))
    assert on is not None, "workflow has no `on:` triggers"
    if isinstance(on, str):
        on = {on: None}
    elif isinstance(on, list):
        on = dict.fromkeys(on)
    return on


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def _index(steps: list[dict], predicate) -> int:
    hits = [i for i, s in enumerate(steps) if predicate(s)]
    assert hits, "no such step"
    return hits[0]


def _uses(action: str):
    return lambda step: step.get("uses", "").split("@")[0] == action


def _runs(command: str):
    return lambda step: re.search(rf"(^|\s){re.escape(command)}(\s|$)", step.get("run", "")) is not None


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w.-]*):", (ROOT / "Makefile").read_text(), re.M))


def _sets_up_python_311(steps: list[dict]) -> None:
    step = steps[_index(steps, _uses("actions/setup-python"))]
    version = step["with"]["python-version"]
    assert isinstance(version, str), "quote python-version: YAML reads 3.10 as the float 3.1"
    assert version == "3.11"


# ---- workflows --------------------------------------------------------------------------


def test_ci_workflow_runs_the_ci_script_on_every_push_and_pull_request():
    workflow = _yaml(WORKFLOWS / "ci.yml")
    on = _triggers(workflow)
    assert {"push", "pull_request"} <= set(on)
    for event in ("push", "pull_request"):  # no branch filter: every push and every PR
        assert not (on[event] or {}).get("branches"), event
    assert all("ubuntu" in job["runs-on"] for job in workflow["jobs"].values())
    steps = _steps(workflow)
    assert _index(steps, _uses("actions/checkout")) < _index(steps, _runs("bash .ci/run"))
    _sets_up_python_311(steps)
    assert (ROOT / ".ci" / "run").is_file()


def test_book_workflow_builds_with_make_and_deploys_to_pages_from_main():
    workflow = _yaml(WORKFLOWS / "book.yml")
    on = _triggers(workflow)
    assert "pull_request" not in on, "a pull request must not deploy the book"
    assert on["push"]["branches"] == ["main"]
    steps = _steps(workflow)
    _sets_up_python_311(steps)
    build = _index(steps, _runs("make book"))
    upload = _index(steps, _uses("actions/upload-pages-artifact"))
    deploy = _index(steps, _uses("actions/deploy-pages"))
    assert _index(steps, _uses("actions/checkout")) < build < upload < deploy
    assert steps[upload]["with"]["path"].strip("./") == "_build/html"
    assert "book" in _make_targets()
    assert "_build/html" in (ROOT / "Makefile").read_text()  # where `make book` writes
    # Pages deployment needs these token permissions, at the workflow or the job level
    for job in workflow["jobs"].values():
        permissions = {**workflow.get("permissions", {}), **job.get("permissions", {})}
        assert permissions.get("pages") == "write"
        assert permissions.get("id-token") == "write"
        assert job["environment"]["name"] == "github-pages"


def test_workflow_actions_are_pinned_to_a_version():
    for path in WORKFLOWS.glob("*.yml"):
        for step in _steps(_yaml(path)):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+(\.\d+)*", step["uses"]), (path.name, step["uses"])


def test_readme_badges_point_at_the_workflows():
    readme = (ROOT / "README.md").read_text()
    badges = re.findall(rf"\({re.escape(REPO_URL)}/actions/workflows/([\w.-]+)/badge\.svg\)", readme)
    assert set(badges) == {"ci.yml", "book.yml"}
    assert all((WORKFLOWS / name).is_file() for name in badges)
    assert BOOK_URL in readme
    assert re.search(r"^## Cite$", readme, re.M)
    assert "CITATION.cff" in readme


# ---- licence and citation ---------------------------------------------------------------


def test_license_is_mit_as_pyproject_says():
    text = (ROOT / "LICENSE").read_text()
    assert text.splitlines()[0] == "MIT License"
    assert "Copyright (c) 2026 the hiermix-pyro developers" in text
    assert "Permission is hereby granted, free of charge, to any person obtaining a copy" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text
    project = _pyproject()["project"]
    assert project["license"] == "MIT"
    assert project.get("license-files", ["LICENSE"]) == ["LICENSE"]


def test_citation_cff_cites_the_project_and_the_works_it_implements():
    cff = _yaml(ROOT / "CITATION.cff")
    project = _pyproject()["project"]
    assert cff["cff-version"] == "1.2.0"
    assert cff["type"] == "software"
    assert cff["title"].startswith("hiermix-pyro")
    assert str(cff["version"]) == project["version"]
    assert cff["license"] == project["license"]
    assert cff["repository-code"] == _yaml(ROOT / "_config.yml")["repository"]["url"]
    assert cff["authors"] and cff["message"]

    references = cff["references"]
    assert len(references) == 3
    for ref in references:  # required by the CFF schema
        assert ref["type"] and ref["title"] and ref["authors"], ref.get("title")
    by_title = {ref["title"]: ref for ref in references}

    scvae = by_title["scVAE: variational auto-encoders for single-cell gene expression data"]
    assert scvae["doi"] == "10.1093/bioinformatics/btaa293"
    assert (scvae["journal"], scvae["volume"], scvae["issue"], scvae["year"]) == ("Bioinformatics", 36, 16, 2020)
    assert (scvae["start"], scvae["end"]) == (4415, 4422)
    authors = ["Grønbech", "Vording", "Timshel", "Sønderby", "Pers", "Winther"]
    assert [a["family-names"] for a in scvae["authors"]] == authors

    vmm = by_title["The VampPrior Mixture Model"]
    assert [a["family-names"] for a in vmm["authors"]] == ["Stirn", "Knowles"]
    assert vmm["year"] == 2025
    assert "AISTATS" in vmm["conference"]["name"]

    (mom,) = [ref for ref in references if "mixture-of-mixtures" in ref["title"].lower()]
    assert "scvae" in mom["title"].lower()
    assert "doi" not in mom, "no identifier is recorded for it here: do not invent one"


# ---- the book ---------------------------------------------------------------------------


def test_book_config_links_the_repository_and_launch_buttons():
    config = _yaml(ROOT / "_config.yml")
    assert config["repository"]["url"] == REPO_URL
    assert config["repository"]["branch"] == "main"
    launch = config["launch_buttons"]
    assert launch["binderhub_url"] == "https://mybinder.org"
    assert launch["colab_url"] == "https://colab.research.google.com"
    assert launch["notebook_interface"] == "classic"
    assert not launch.get("thebe"), "thebe would load a kernel from the network on the page"
    assert config["html"]["use_repository_button"] is True
    assert config["html"]["use_issues_button"] is True
    # buttons are links: the MathJax bundle that keeps the build offline is still there
    assert "sphinx-mathjax-offline" in config["sphinx"]["extra_extensions"]


# ---- version, changelog -----------------------------------------------------------------


def test_version_comes_from_the_package_metadata():
    assert hiermix_pyro.__version__ == importlib.metadata.version("hiermix-pyro")
    version = _pyproject()["project"]["version"]
    assert hiermix_pyro.__version__ == version
    source = (ROOT / "hiermix_pyro" / "__init__.py").read_text()
    assert 'version("hiermix-pyro")' in source
    assert version not in source, "the version is set in pyproject.toml only"


def test_changelog_has_unreleased_and_the_current_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "Keep a Changelog" in text
    headings = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert headings[0] == "Unreleased"
    assert _pyproject()["project"]["version"] in headings
    for heading in headings:  # each heading has its link definition at the bottom
        assert re.search(rf"^\[{re.escape(heading)}\]: https://", text, re.M), heading


# ---- lint configuration ------------------------------------------------------------------


def _ruff_pin() -> str:
    dev = _pyproject()["project"]["optional-dependencies"]["dev"]
    (pin,) = [r for r in dev if re.match(r"ruff\b", r)]
    match = re.fullmatch(r"ruff==([\d.]+)", pin.replace(" ", ""))
    assert match, f"pin ruff exactly, so `make lint` and pre-commit agree: {pin}"
    return match.group(1)


def test_ruff_is_configured_and_make_lint_runs_it():
    ruff = _pyproject()["tool"]["ruff"]
    assert ruff["line-length"] == 120
    assert {"E", "F", "W", "I", "UP", "B"} <= set(ruff["lint"]["select"])
    assert "notebooks/*.ipynb" in ruff.get("extend-exclude", []), "the .ipynb twins are generated by jupytext"
    _ruff_pin()
    assert "lint" in _make_targets()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\.PHONY:.*\blint\b", makefile, re.M)
    assert "$(BIN)/ruff check . && $(BIN)/ruff format --check ." in makefile


def test_pre_commit_runs_ruff_and_jupytext_sync():
    config = _yaml(ROOT / ".pre-commit-config.yaml")
    repos = {repo["repo"]: repo for repo in config["repos"]}

    ruff = repos["https://github.com/astral-sh/ruff-pre-commit"]
    ids = {hook["id"] for hook in ruff["hooks"]}
    assert ids & {"ruff", "ruff-check"} and "ruff-format" in ids
    assert ruff["rev"] == f"v{_ruff_pin()}"

    (jupytext,) = repos["https://github.com/mwouts/jupytext"]["hooks"]
    assert jupytext["id"] == "jupytext"
    assert "--sync" in jupytext["args"]
    files = re.compile(jupytext["files"])
    sources = sorted((ROOT / "notebooks").glob("*.md"))
    assert sources
    for source in sources:
        rel = source.relative_to(ROOT).as_posix()
        assert files.search(rel), rel
        assert not files.search(rel.replace(".md", ".ipynb"))


@pytest.mark.parametrize("path", [".pre-commit-config.yaml", "CITATION.cff", "_config.yml"])
def test_yaml_files_parse(path):
    assert isinstance(_yaml(ROOT / path), dict)
