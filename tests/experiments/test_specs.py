"""Experiment specs are data: checked whole before anything runs, run folders slugged and inside the store,
the store locked while a runner writes it, schedulers checked (the attacks themselves: tests/test_security.py)."""

import sys
from pathlib import Path

import papermill as pm
import pytest
import yaml

from atomizer.core.storage import LockedError, locked
from atomizer.experiments import (
    ExperimentSpec,
    SpecError,
    check_rendered,
    check_scheduler,
    local_notebook,
    notebook_parameters,
    run_experiment,
    run_path,
)

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def spec_of(tmp_path: Path, **kw) -> ExperimentSpec:
    base = {"name": "t", "notebook": "notebooks/disjoint_modalities.ipynb", "output_dir": str(tmp_path / "store")}
    return ExperimentSpec.from_dict({**base, **kw})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_declared_parameters_are_what_papermill_sees(path):
    assert notebook_parameters(path) == list(pm.inspect_notebook(str(path)))


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "experiments").glob("*.yaml")))
def test_shipped_specs_pass_the_whole_check(name):
    """Every spec under experiments/ (the dense and adapter experiments included) passes the runner's check."""
    planned = ExperimentSpec.from_yaml(ROOT / "experiments" / name).check()
    assert planned and all(params["output_dir"] == str(run) for _, params, run in planned)


def test_a_relative_notebook_is_found_next_to_the_spec(tmp_path, monkeypatch):
    (tmp_path / "specs").mkdir()
    nb = tmp_path / "specs" / "mine.ipynb"
    nb.write_bytes((ROOT / "notebooks" / "sweep.ipynb").read_bytes())
    spec_path = tmp_path / "specs" / "s.yaml"
    spec_path.write_text(yaml.safe_dump({"name": "t", "notebook": "mine.ipynb", "output_dir": str(tmp_path / "o")}))
    monkeypatch.chdir(tmp_path)
    assert ExperimentSpec.from_yaml(spec_path).notebook_path().resolve() == nb.resolve()
    with pytest.raises(SpecError, match="not a .ipynb file"):
        local_notebook("notebooks/disjoint_modalities.py")
    with pytest.raises(SpecError, match="not found"):
        local_notebook("nowhere.ipynb")


def test_output_dir_is_injected_only_where_the_notebook_declares_it(tmp_path):
    land = spec_of(tmp_path, notebook="notebooks/generalisation_landscape.ipynb", parameters={"seeds": [0]})
    assert [params for _, params, _ in land.check()] == [{"seeds": [0]}]
    with pytest.raises(SpecError, match="parameters key 'output_dir' is not a parameter of generalisation"):
        spec_of(tmp_path, notebook="notebooks/generalisation_landscape.ipynb", parameters={"output_dir": "x"}).check()


def test_run_folders_are_slugged_and_distinct(tmp_path):
    spec = spec_of(tmp_path, grid={"models": [["atomizer", "resnet"]], "lr": [0.001, 1e-2]})
    assert [rid for rid, _ in spec.runs()] == ["models-atomizer-resnet_lr-0.001", "models-atomizer-resnet_lr-0.01"]
    clash = spec_of(tmp_path, grid={"dataset": ["a/b", "ab"]})
    with pytest.raises(SpecError, match="two grid points give the same run folder 'dataset-ab'"):
        clash.check()
    assert not (tmp_path / "store").exists()


def test_every_grid_point_is_checked_before_the_first_run(tmp_path):
    """The second grid value is bad: nothing runs, not even the first point."""
    spec = {"name": "t", "notebook": "notebooks/disjoint_modalities.ipynb", "output_dir": str(tmp_path / "store")}
    with pytest.raises(ValueError, match=r"grid.models\[1\]\[0\] is a bytes"):
        ExperimentSpec.from_dict({**spec, "grid": {"models": [["atomizer"], [b"resnet"]]}})
    with pytest.raises(ValueError, match=r"grid.lr\[1\] = inf is not a finite number"):
        ExperimentSpec.from_dict({**spec, "grid": {"lr": [0.001, float("inf")]}})


def test_rendered_parameters_round_trip_and_nothing_else():
    check_rendered({"a": 'x"; import os\n\\"', "b": [1, 2.5, None, True, {'k"': "v"}], "c": "é\u2028"})
    with pytest.raises(SpecError):
        check_rendered({"a": b'"; open("m", "w") #'})  # papermill would write this unquoted
    with pytest.raises(SpecError, match="not an assignment"):
        check_rendered({"a\nopen('m', 'w')\nb": 1})


def test_a_second_runner_of_the_same_store_is_refused(tmp_path):
    spec = spec_of(tmp_path, parameters={"epochs": 1})
    with locked(tmp_path / "store", "results store", name=".experiment.lock"):
        with pytest.raises(LockedError) as e:
            run_experiment(spec)
    assert "\n" not in str(e.value) and "results store 'store'" in str(e.value)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [".experiment.lock"]  # nothing ran


def test_unknown_only_run_is_refused(tmp_path):
    with pytest.raises(SpecError, match="no run 'models-vit'"):
        run_experiment(spec_of(tmp_path, grid={"models": [["atomizer"]]}), only=["models-vit"])


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("tcp://127.0.0.1:8786", True),
        ("tcp://localhost:8786", True),
        ("tcp://[::1]:8786", True),
        ("127.0.0.2:8786", True),
        ("tls://sched.example.org:8786", True),
        ("inproc://10.0.0.1/1/1", True),
        ("tcp://10.0.0.1:8786", False),
        ("ws://10.0.0.1:8786", False),
        ("tcp://localhost.example.org:8786", False),
        ("ftp://10.0.0.1:8786", False),
    ],
)
def test_scheduler_addresses(address, ok):
    if ok:
        check_scheduler(address)
    else:
        with pytest.raises(SpecError):
            check_scheduler(address)
    check_scheduler("tcp://10.0.0.1:8786", trust=True)


def test_tls_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"unknown tls key\(s\) \['password'\]"):
        spec_of(tmp_path, scheduler="tls://h:8786", tls={"password": "x"})
    with pytest.raises(ValueError, match="not a tls:// address"):
        spec_of(tmp_path, scheduler="tcp://127.0.0.1:8786", tls={"ca_file": "ca.pem"})


def test_missing_distributed_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed: its import raises ImportError
    spec = spec_of(tmp_path, parameters={"epochs": 1}, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(RuntimeError, match=r"pip install 'atomizer\[distributed\]'"):
        run_experiment(spec)
    assert not [p for p in (tmp_path / "store").iterdir() if p.is_dir()]  # no run started


def test_tls_client_uses_the_spec_files(tmp_path):
    pytest.importorskip("distributed")
    from atomizer.experiments import _client

    spec = spec_of(tmp_path, scheduler="tls://127.0.0.1:1", tls={"ca_file": str(tmp_path / "missing.pem")})
    with pytest.raises(FileNotFoundError, match="tls.ca_file file .* not found"):
        _client(spec)


def test_run_path_keeps_a_label_inside_the_store(tmp_path):
    assert run_path(tmp_path, "resnet@25%", 1, 0) == tmp_path / "resnet@25%" / "seed-1_fold-0"
    for label in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ValueError, match="cannot name a run folder"):
            run_path(tmp_path, label, 0, None)
