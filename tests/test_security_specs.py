"""Attacks through experiment specs, Dask schedulers and the notebooks that evaluate every checkpoint of a
store: each test writes a HOSTILE file (a spec, a notebook path, a checkpoint whose pickle would write a
marker file) into tmp_path and asserts that the attack fails: the marker is not written, nothing runs (no
run folder is made), and the one-line message names the offending key."""

from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from atomizer.cli import main
from atomizer.engine.training import TrainConfig
from atomizer.experiments import ExperimentSpec, run_experiment, run_landscape, run_sweep, store_runs

ROOT = Path(__file__).resolve().parent.parent
DISJOINT = str(ROOT / "notebooks" / "disjoint_modalities.ipynb")


def _specs_write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def _specs_base(tmp_path: Path) -> dict:
    return {"name": "attack", "notebook": DISJOINT, "output_dir": str(tmp_path / "store")}


def _specs_run_cli(spec: Path, capsys) -> str:
    """``atomizer experiment run SPEC``: must be refused (exit 2) in one line; returns that line."""
    assert main(["experiment", "run", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("atomizer: error: ") and "\n" not in err, err
    return err


def test_spec_key_injection_runs_no_code(tmp_path, capsys):
    """A parameter name holding a newline and code (papermill writes names raw into the kernel)."""
    marker = tmp_path / "pwned"
    key = f"epochs\nopen({str(marker)!r}, 'w').write('pwned')\nx"
    for where in ("parameters", "grid"):
        spec = {**_specs_base(tmp_path), where: {key: [1] if where == "grid" else 1}}
        err = _specs_run_cli(_specs_write(tmp_path, yaml.safe_dump(spec)), capsys)
        assert f"{where} key " in err and "epochs\\nopen(" in err and "not a Python identifier" in err
    assert not marker.exists() and not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("value", "words"),
    [
        # bytes whose repr breaks out of papermill's quoting: '"; open(MARKER).write(...) #'
        ("!!binary {b64}", "bytes (a !!binary value?)"),
        ("2024-01-01", "is a date"),
        (".nan", "not a finite number"),
        ("!!set {{a: null}}", "is a set"),
        ("!!python/object/apply:builtins.exec [\"open({marker!r}, 'w').write('pwned')\"]", "not valid YAML"),
    ],
    ids=["binary", "date", "nan", "set", "python-object"],
)
def test_spec_value_injection_runs_no_code(tmp_path, capsys, value, words):
    import base64

    marker = tmp_path / "pwned"
    payload = f"\"; open({str(marker)!r}, 'w').write('pwned') #".encode()
    text = value.format(b64=base64.b64encode(payload).decode(), marker=str(marker))
    spec = _specs_write(
        tmp_path,
        f"name: attack\nnotebook: {DISJOINT}\noutput_dir: {tmp_path / 'store'}\nparameters:\n  dataset: {text}\n",
    )
    err = _specs_run_cli(spec, capsys)
    assert words in err and ("parameters.dataset" in err or "YAML" in err), err
    assert not marker.exists() and not (tmp_path / "store").exists()


def _specs_tiny_notebook(path: Path) -> Path:
    """A real notebook: a parameters cell (dataset, output_dir), then a cell writing into output_dir."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('dataset = ""\noutput_dir = ""')
    params.metadata["tags"] = ["parameters"]
    body = "from pathlib import Path\nPath(output_dir).mkdir(parents=True, exist_ok=True)\n"
    body += "(Path(output_dir) / 'ran.txt').write_text(dataset)"
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, path)
    return path


def test_grid_path_traversal_stays_under_output_dir(tmp_path, capsys):
    """A grid KEY ``../../x`` is refused; a grid VALUE ``../../x`` names a slugged folder inside the store."""
    base = tmp_path / "a" / "b"
    base.mkdir(parents=True)
    store = base / "store"
    spec = {"name": "attack", "notebook": str(_specs_tiny_notebook(base / "tiny.ipynb")), "output_dir": str(store)}
    err = _specs_run_cli(_specs_write(base, yaml.safe_dump({**spec, "grid": {"../../x": [1]}})), capsys)
    assert "grid key '../../x'" in err and not store.exists()

    hostile = ["../../x", "../../../y/..", "/tmp/z"]
    summary = run_experiment(ExperimentSpec.from_dict({**spec, "grid": {"dataset": hostile}}))
    assert len(summary["done"]) == 3 and not summary["failed"], summary
    runs = sorted(p for p in store.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["dataset-.x", "dataset-.y.", "dataset-tmpz"]
    assert sorted((p / "ran.txt").read_text() for p in runs) == sorted(hostile)  # the value itself is passed as is
    assert not (tmp_path / "x").exists() and not (tmp_path / "a" / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize(
    "notebook",
    ["http://127.0.0.1:9/x.ipynb", "s3://bucket/x.ipynb", "file:///etc/x.ipynb", "gs://b/x.ipynb", "abs://c/x.ipynb"],
)
def test_url_notebook_is_refused(tmp_path, capsys, notebook):
    spec = _specs_write(tmp_path, yaml.safe_dump({**_specs_base(tmp_path), "notebook": notebook}))
    err = _specs_run_cli(spec, capsys)
    assert repr(notebook) in err and "local .ipynb" in err and not (tmp_path / "store").exists()


def test_undeclared_grid_key_is_refused_before_any_run(tmp_path, capsys):
    """``seed`` on disjoint_modalities (which takes ``seeds``) used to run two identical seed-0 runs."""
    spec = {**_specs_base(tmp_path), "parameters": {"epochs": 1}, "grid": {"seed": [0, 1]}}
    err = _specs_run_cli(_specs_write(tmp_path, yaml.safe_dump(spec)), capsys)
    assert "grid key 'seed' is not a parameter of disjoint_modalities.ipynb" in err and "seeds" in err
    assert not (tmp_path / "store").exists()  # nothing ran, no run folder


@pytest.mark.parametrize("address", ["tcp://10.1.2.3:8786", "192.168.0.7:8786", "tcp://sched.example.org:8786"])
def test_plain_tcp_scheduler_off_loopback_is_refused(tmp_path, capsys, address):
    spec = {**_specs_base(tmp_path), "scheduler": address}
    err = _specs_run_cli(_specs_write(tmp_path, yaml.safe_dump(spec)), capsys)
    assert repr(address) in err and "trust_scheduler: true" in err and "tls://" in err
    assert not (tmp_path / "store").exists()
    trusted = ExperimentSpec.from_dict({**spec, "trust_scheduler": True})  # the user's explicit opt-in
    assert trusted.check()[0][0] == "run"


class _SpecsHostile:
    """Unpickling this runs ``exec`` on code that writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_hostile_checkpoint_in_a_store_is_not_executed_by_the_notebooks(tmp_path):
    """A shared store whose run's best.pt is a hostile pickle, handed to what the sweep and landscape
    notebooks call for every run of a store (store_runs -> run_sweep / run_landscape)."""
    marker = tmp_path / "pwned"
    run = tmp_path / "store" / "atomizer" / "seed-0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(
        yaml.safe_dump(TrainConfig.from_dict({"model": "atomizer", "out_dir": str(run)}).to_dict())
    )
    (run / "metrics.jsonl").write_text("")
    torch.save({"format": "atomizer-checkpoint/1", "arch": _SpecsHostile(marker)}, run / "checkpoints" / "best.pt")
    assert store_runs(tmp_path / "store") == [run]
    for evaluate in (lambda: run_landscape(run, device="cpu"), lambda: run_sweep(run, "gsd", [20.0], device="cpu")):
        with pytest.raises(ValueError) as e:
            evaluate()
        assert "\n" not in str(e.value) and "best.pt" in str(e.value), str(e.value)
        assert not marker.exists()
