"""The parameters of notebooks/train.ipynb: typed, all known to the package, none unknown accepted."""

from __future__ import annotations

from pathlib import Path

import papermill
import pytest

from hiermix_pyro.workflow import NOTEBOOK_PARAMETERS, check_parameters

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "train.ipynb"


def test_parameters_cell_matches_the_package():
    parameters = papermill.inspect_notebook(str(NOTEBOOK))
    assert tuple(parameters) == NOTEBOOK_PARAMETERS
    assert {"hierarchy", "level_keys"} <= set(parameters)
    untyped = [name for name, p in parameters.items() if p["inferred_type_name"] == "None"]
    assert not untyped, f"parameters without a type annotation: {untyped}"
    assert parameters["level_sizes"]["inferred_type_name"] == "Optional[list[int]]"
    assert parameters["hierarchy"]["inferred_type_name"] == "Optional[str]"


def test_check_parameters_names_unknown_and_valid():
    import json

    namespace = dict.fromkeys(NOTEBOOK_PARAMETERS)
    # what an IPython kernel and the notebook's own imports put into globals()
    namespace.update(
        In=[""],
        Out={},
        get_ipython=print,
        exit=None,
        quit=None,
        open=open,
        _i1="",
        __name__="__main__",
        json=json,
        Optional=__import__("typing").Optional,
    )
    check_parameters(namespace)
    with pytest.raises(ValueError) as error:
        check_parameters({**namespace, "hierarchy_typo": "tree.csv", "seeds": 3})
    message = str(error.value)
    assert "unknown parameters: hierarchy_typo (did you mean hierarchy?), seeds (did you mean seed?)" in message
    assert "valid parameters: " + ", ".join(NOTEBOOK_PARAMETERS) in message


def test_notebook_fails_at_once_on_an_unknown_parameter(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOKE_TEST", "1")
    with pytest.raises(papermill.PapermillExecutionError) as error:
        papermill.execute_notebook(
            str(NOTEBOOK),
            str(tmp_path / "out.ipynb"),
            kernel_name="python3",
            progress_bar=False,
            parameters={"hierarchy_typo": "tree.csv", "output_dir": str(tmp_path / "run")},
        )
    message = str(error.value)
    assert "ValueError" in message and "unknown parameters: hierarchy_typo (did you mean hierarchy?)" in message
    assert "valid parameters: model, dataset, seed" in message and "hierarchy, level_keys" in message
    assert error.value.ename == "ValueError" and "check_parameters(globals())" in error.value.source
    assert not (tmp_path / "run").exists()
