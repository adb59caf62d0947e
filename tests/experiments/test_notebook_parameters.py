"""Every notebook's default parameters pass its validation; bad values are refused in one line, fast."""

import ast
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from atomizer.experiments import ParameterError, check_parameters, store_runs

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def defaults(path: Path) -> dict:
    return {k: ast.literal_eval(v["default"]) for k, v in pm.inspect_notebook(str(path)).items()}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_defaults_pass_the_notebooks_own_validation(path):
    nb = nbformat.read(path, as_version=4)
    i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    first = next(c for c in nb.cells[i + 1 :] if c.cell_type == "code")
    assert "check_parameters(globals())" in first.source, f"{path.name}: the first code cell does not validate"
    check_parameters(defaults(path))  # raises on a default that cannot run


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("models", ["atomizer", "resnett"], "unknown model 'resnett'"),
        ("epochs", 0, ">= 1"),
        ("epochs", "two", "integer"),
        ("lr", -1.0, "positive"),
        ("preset", "huge", "huge"),
        ("folds", [0, 7], "folds [0, 1, 2, 3, 4]"),
        ("seeds", [], "at least one seed"),
        ("test_modalities", "no_such_set", "no_such_set"),
        ("reference", "vit", "not one of the models"),
        ("device", "tpu", "tpu"),
    ],
)
def test_bad_values_are_refused_naming_the_parameter(name, value, words):
    params = {**defaults(ROOT / "notebooks" / "disjoint_modalities.ipynb"), "models": ["atomizer", "resnet"]}
    params[name] = value
    with pytest.raises(ParameterError) as e:
        check_parameters(params)
    msg = str(e.value)
    assert "\n" not in msg and words in msg and (repr(name) in msg or "notebook parameters" in msg), msg


def test_sweep_values_outside_the_source_image_are_refused():
    gsd = defaults(ROOT / "notebooks" / "sweep.ipynb")
    assert gsd["kind"] == "gsd"
    check_parameters({**gsd, "values": [60, 640]})  # 640 m: one pixel covering the whole tile
    with pytest.raises(ParameterError, match=r"\[700.0\] outside \(0, 640\] m"):
        check_parameters({**gsd, "values": [10, 700]})
    size = {**gsd, "kind": "size"}
    check_parameters({**size, "values": []})  # the kind's defaults
    with pytest.raises(ParameterError, match=r"outside \(0, 64\] px"):
        check_parameters({**size, "values": [16, 128]})
    with pytest.raises(ParameterError, match="'kind' = 'area'"):
        check_parameters({**gsd, "kind": "area"})
    with pytest.raises(ParameterError, match="unknown masking 'blocks'"):
        check_parameters({**defaults(ROOT / "notebooks" / "beyond_the_paper.ipynb"), "maskings": ["blocks"]})


def test_store_notebooks_take_run_labels_as_models():
    land = defaults(ROOT / "notebooks" / "generalisation_landscape.ipynb")
    check_parameters({**land, "models": "atomizer-tiny,resnet@25%"})  # labels of a store's runs
    sweep = defaults(ROOT / "notebooks" / "sweep.ipynb")
    check_parameters({**sweep, "models": ["atomizer-nogsd"]})
    with pytest.raises(ParameterError, match="unknown model 'resnett'"):
        check_parameters({**sweep, "model": "resnett"})  # the model it would train


def test_a_missing_store_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="results store .* does not exist"):
        store_runs(tmp_path / "nothing_here")


def test_the_executed_notebook_stops_at_once_on_a_bad_parameter(tmp_path):
    """papermill with a bad value: the validation cell fails (nothing trained, no store written)."""
    out = tmp_path / "store"
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(
            str(ROOT / "notebooks" / "disjoint_modalities.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters={"models": ["atomizer", "resnett"], "output_dir": str(out)},
            kernel_name="python3",
            cwd=str(ROOT),
            progress_bar=False,
        )
    assert e.value.ename == "ParameterError" and "unknown model 'resnett'" in e.value.evalue
    assert not out.exists()
