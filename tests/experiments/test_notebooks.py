"""Notebooks run through papermill with smoke parameters; the experiment runner skips and continues."""

import json
import math
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill as pm
import pytest
import yaml

from atomizer.engine.evaluation import load_results
from atomizer.experiments import ExperimentSpec, run_experiment, run_path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SMOKE = dict(preset="tiny", epochs=1, max_steps=2, batch_size=4, train_limit=8, val_limit=4, device="cpu")
PNG = b"\x89PNG\r\n\x1a\n"


def test_notebooks_are_clean_and_parameterised():
    assert {p.name for p in NOTEBOOKS} >= {
        "disjoint_modalities.ipynb",
        "sweep.ipynb",
        "explore_encodings.ipynb",
        "generalisation_landscape.ipynb",
    }
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: {len(tagged)} parameters cells"
        for line in tagged[0].source.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                # annotated, with a help comment, and no derived values (a literal on the right)
                assert ":" in line.split("=")[0] and "#" in line, f"{path.name}: {line!r}"
                literal = line.split("=", 1)[1].split("#")[0].strip()
                assert yaml.safe_load(literal) is not None or literal in ('""', "''"), line
        assert all(
            c.get("outputs", []) == [] and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"
        ), f"{path.name} committed with outputs"
        assert nb.cells[0].cell_type == "markdown" and "Time" in nb.cells[0].source
        assert pm.inspect_notebook(str(path))  # papermill sees the parameters


@pytest.fixture(scope="module")
def disjoint_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nb") / "store"
    nb_out = out.parent / "disjoint.ipynb"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "disjoint_modalities.ipynb"),
        str(nb_out),
        kernel_name="python3",
        parameters={
            **SMOKE,
            "models": ["atomizer", "resnet"],
            "seeds": [0, 1],
            "folds": [0],
            "n_resamples": 200,
            "output_dir": str(out),
        },
        cwd=str(ROOT),
        progress_bar=False,
    )
    return out, nb_out


def test_disjoint_notebook_writes_results_and_figure(disjoint_run):
    out, nb_out = disjoint_run
    for model in ("atomizer", "resnet"):
        for seed in (0, 1):
            run = run_path(out, model, seed, 0)
            res = load_results(run / "results.nc")
            assert res["score"].dims == ("model", "modality", "metric")
            assert res.sizes["modality"] == 6 and list(res.model.values) == [model]
            assert np.isfinite(res["score"].values).all()
            assert (res.attrs["seed"], res.attrs["fold"]) == (seed, 0)
            assert (run / "predictions.nc").exists()
    assert (out / "table1.png").read_bytes()[:8] == PNG
    assert (out / "differences.png").read_bytes()[:8] == PNG
    summary = pd.read_csv(out / "statistics.csv")
    assert set(summary["model"]) == {"atomizer", "resnet"} and (summary["seeds"] == 2).all()
    # (macro mAP is biased under resampling: a BCa interval of a near-chance model on 41 images need not
    # hold the point estimate; the interval itself must be a proper, finite one)
    assert (summary["ci_low"] < summary["ci_high"]).all() and np.isfinite(summary[["ci_low", "ci_high"]]).all().all()
    diffs = pd.read_csv(out / "differences.csv")
    assert set(diffs["other"]) == {"resnet"} and len(diffs) == 6 and (diffs["p_holm"] >= diffs["p_value"]).all()
    nb = nbformat.read(nb_out, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Verdict: against resnet, atomizer is" in text
    assert any(
        o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


@pytest.mark.parametrize("kind,values", [("gsd", [10, 20, 40]), ("size", [16, 32, 64])])
def test_sweep_notebook(disjoint_run, tmp_path, kind, values):
    out, _ = disjoint_run
    run = run_path(out, "atomizer", 0, 0)
    pm.execute_notebook(
        str(ROOT / "notebooks" / "sweep.ipynb"),
        str(tmp_path / f"sweep_{kind}.ipynb"),
        kernel_name="python3",
        parameters={**SMOKE, "kind": kind, "run_dir": str(run), "values": values, "output_dir": str(tmp_path)},
        cwd=str(ROOT),
        progress_bar=False,
    )
    res = load_results(run / f"sweep_{kind}.nc")
    coord = "gsd_m" if kind == "gsd" else "size_px"
    assert sorted(res[coord].values.tolist()) == sorted(float(v) for v in values)
    assert np.isfinite(res["score"].values).all()
    assert (run / f"sweep_{kind}.png").read_bytes()[:8] == PNG


def test_resolution_sweep_over_a_store_with_its_default_values(disjoint_run, tmp_path):
    """Every run of the store swept (repeats, CIs) with the notebook's DEFAULT GSDs, 60 m included."""
    out, _ = disjoint_run
    pm.execute_notebook(
        str(ROOT / "notebooks" / "sweep.ipynb"),
        str(tmp_path / "sweep.ipynb"),
        kernel_name="python3",
        parameters={"store": str(out), "seeds": [0, 1], "device": "cpu", "output_dir": str(tmp_path)},
        cwd=str(ROOT),
        progress_bar=False,
    )
    res = load_results(run_path(out, "resnet", 1, 0) / "sweep_gsd.nc")
    assert sorted(res["gsd_m"].values.tolist()) == [10.0, 20.0, 30.0, 40.0, 60.0]
    assert all(s * g <= 640 for s, g in zip(res["size_px"].values, res["gsd_m"].values))
    assert (run_path(out, "atomizer", 0, 0) / "sweep_gsd_predictions.nc").exists()
    assert (out / "sweep_gsd.png").read_bytes()[:8] == PNG


def test_landscape_notebook_scores_against_distance(disjoint_run, tmp_path):
    out, _ = disjoint_run
    nb_out = tmp_path / "landscape.ipynb"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "generalisation_landscape.ipynb"),
        str(nb_out),
        kernel_name="python3",
        parameters={
            "store": str(out),
            "seeds": [0],
            "gsds": [20, 40],
            "size_fractions": [0.5],
            "n_resamples": 100,
            "device": "cpu",
        },
        cwd=str(ROOT),
        progress_bar=False,
    )
    for model in ("atomizer", "resnet"):
        land = load_results(run_path(out, model, 0, 0) / "landscape.nc")
        names = [str(m) for m in land.modality.values]
        assert {"tr1", "tr2", "tr3", "tr4", "g40_s8", "b_b8a"} <= set(names)
        assert np.isfinite(land["score"].values).all()
    assert (out / "landscape.png").read_bytes()[:8] == PNG
    near_far = pd.read_csv(out / "landscape_near_far.csv", index_col=0)
    assert set(near_far.index) == {"atomizer", "resnet"} and "training" in near_far.columns


def test_explore_encodings_notebook_runs(tmp_path):
    out = tmp_path / "explore.ipynb"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "explore_encodings.ipynb"),
        str(out),
        kernel_name="python3",
        cwd=str(ROOT),
        progress_bar=False,
    )
    nb = nbformat.read(out, as_version=4)
    kinds = {o.get("output_type") for c in nb.cells if c.cell_type == "code" for o in c.outputs}
    assert "error" not in kinds and ({"display_data", "execute_result"} & kinds)


def test_runner_skips_finished_runs_and_continues_past_failures(tmp_path, capsys):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "notebook": str(ROOT / "notebooks" / "disjoint_modalities.ipynb"),
                "output_dir": str(tmp_path / "store"),
                "parameters": {**SMOKE, "max_steps": 1},
                "grid": {"models": [["atomizer"], ["no_such_model"]]},
            }
        )
    )
    spec = ExperimentSpec.from_yaml(spec_path)
    assert [rid for rid, _ in spec.runs()] == ["models-atomizer", "models-no_such_model"]
    first = run_experiment(spec)
    assert first == {"done": ["models-atomizer"], "skipped": [], "failed": ["models-no_such_model"]}
    store = tmp_path / "store"
    assert "no_such_model" in (store / "models-no_such_model" / "failed.txt").read_text()
    assert (store / "models-atomizer" / "notebook.ipynb").exists()
    params = yaml.safe_load((store / "models-atomizer" / "params.yaml").read_text())
    assert params["models"] == ["atomizer"] and params["max_steps"] == 1
    merged = load_results(store / "results_all.nc")
    assert [str(m) for m in merged.model.values] == ["atomizer"] and merged.sizes["modality"] == 6
    mtime = (store / "models-atomizer" / "notebook.ipynb").stat().st_mtime
    second = run_experiment(spec)
    assert second["skipped"] == ["models-atomizer"] and second["failed"] == ["models-no_such_model"]
    assert (store / "models-atomizer" / "notebook.ipynb").stat().st_mtime == mtime
    assert "[skip] models-atomizer" in capsys.readouterr().out
    assert json.loads((store / "experiment.json").read_text())["failed"] == ["models-no_such_model"]


def test_a_finished_run_whose_parameters_changed_runs_again(tmp_path, monkeypatch, capsys):
    """Adding seeds to a spec reruns its finished run (the notebook resumes its finished sub-runs); an
    unchanged finished run is skipped. The notebook itself is not the point here: execution is recorded."""
    from atomizer.experiments import runner

    ran: list[dict] = []

    def execute(notebook, run_dir, parameters, kernel_name="python3"):
        ran.append(dict(parameters))
        status = {"run_dir": run_dir, "parameters": dict(parameters), "state": "done", "seconds": 0.0}
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "status.json").write_text(json.dumps(status))
        return status

    monkeypatch.setattr(runner, "execute_run", execute)
    body = {"name": "t", "notebook": str(ROOT / "notebooks" / "disjoint_modalities.ipynb"),
            "output_dir": str(tmp_path / "store"), "parameters": {**SMOKE, "seeds": [0]}}  # fmt: skip
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(body))
    assert run_experiment(ExperimentSpec.from_yaml(spec_path))["done"] == ["run"]
    assert run_experiment(ExperimentSpec.from_yaml(spec_path))["skipped"] == ["run"] and len(ran) == 1
    body["parameters"]["seeds"] = [0, 1]
    spec_path.write_text(yaml.safe_dump(body))
    capsys.readouterr()
    assert run_experiment(ExperimentSpec.from_yaml(spec_path))["done"] == ["run"]
    assert ran[-1]["seeds"] == [0, 1] and len(ran) == 2
    assert "finished with other parameters: seeds" in capsys.readouterr().out
    assert runner.changed_parameters({"a": [1], "b": 2}, {"a": (1,), "b": 2}) == []
    assert runner.changed_parameters(None, {"a": 1}) == ["(none recorded)"]


def test_shipped_experiment_specs_parse():
    for name in ("embedded_demo.yaml", "eurosat_cv.yaml", "paper_table1.yaml"):
        spec = ExperimentSpec.from_yaml(ROOT / "experiments" / name)
        runs = spec.runs()
        assert runs and all((ROOT / spec.notebook).exists() for _ in runs)
        assert all(not math.isnan(len(p)) for _, p in runs)
    demo = ExperimentSpec.from_yaml(ROOT / "experiments" / "embedded_demo.yaml")
    models = {m for _, p in demo.runs() for m in p["models"]}
    assert "atomizer" in models and len(models) >= 2
