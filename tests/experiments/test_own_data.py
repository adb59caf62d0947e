"""Your own data end to end: a hand-written manifest over real tiles trains and evaluates with ``atomizer
train`` / ``atomizer evaluate`` (single label, multi-label, masks), runs through ``disjoint_modalities`` with
``atomizer experiment run``, and shows in the dashboard's Results view.

The manifests, cards and the modality sets of the mask data are written by the tests (what a user writes by
hand); the pixels are real (EuroSAT-MS, BigEarthNet, TerraMesh Sentinel-2 + Sentinel-1 with land-cover masks).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from atomizer.engine.evaluation import load_results
from atomizer.experiments.steps import run_path
from tests.conftest import REPO_ROOT
from tests.data.test_manifest import ben_manifest, eurosat_manifest, terramesh_manifest

TINY = {
    "model": "atomizer",
    "preset": "tiny",
    "epochs": 1,
    "max_steps": 1,
    "batch_size": 4,
    "device": "cpu",
    "val_every_epoch": False,
}


def cli(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "atomizer", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_and_evaluate(tmp_path: Path, manifest: Path, train_mods: str, test_mods: str, model: str = "atomizer"):
    cfg = tmp_path / "train.yaml"
    out = tmp_path / "run"
    cfg.write_text(
        yaml.safe_dump(
            {
                **TINY,
                "model": model,
                "dataset": str(manifest),
                "train_modalities": train_mods,
                "test_modalities": test_mods,
                "out_dir": str(out),
            }
        )
    )
    r = cli("train", cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "checkpoints" / "best.pt").is_file()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["dataset"] == str(manifest)
    results = tmp_path / "results.nc"
    r = cli("evaluate", out / "checkpoints" / "best.pt", "--modalities", test_mods, "--out", results)
    assert r.returncode == 0, r.stderr[-3000:]
    res = load_results(results)
    assert res.attrs["dataset"] == str(manifest) and res.attrs["split"] == "test"
    assert np.isfinite(res["score"].values).all()
    return res


def test_single_label_manifest_trains_and_evaluates_from_the_cli(tmp_path):
    manifest = eurosat_manifest(tmp_path / "data", per_class=3)
    res = train_and_evaluate(tmp_path, manifest, "eurosat_train", "eurosat_test")
    assert res.sizes["modality"] == 6 and "top1" in res.metric.values  # single-label metrics


def test_multi_label_manifest_trains_and_evaluates_from_the_cli(tmp_path):
    manifest = ben_manifest(tmp_path / "data", n=12)
    df = pd.read_csv(manifest)
    df["split"] = ["train"] * 6 + ["validation"] * 3 + ["test"] * 3
    df.to_csv(manifest, index=False)
    res = train_and_evaluate(tmp_path, manifest, "bigearthnet_train", "bigearthnet_test", model="resnet")
    assert "micro_map" in res.metric.values and list(res.model.values) == ["resnet"]  # multi-label


def test_mask_manifest_with_two_sensors_trains_a_segmentation_model_on_its_own_modalities(tmp_path):
    manifest = terramesh_manifest(tmp_path / "data")
    train = {
        "source": {"size_px": 224, "gsd_m": 10},
        "modalities": [
            {"name": "tr1", "size_px": 64, "gsd_m": 20, "bands": ["B02", "B03", "B04", "B08", "VV"]},
            {"name": "tr2", "size_px": 48, "gsd_m": 30, "bands": ["B05", "B06", "B11", "B12", "VH"]},
        ],
    }
    test = {
        "source": {"size_px": 224, "gsd_m": 10},
        "modalities": [
            {"name": "te1", "size_px": 96, "gsd_m": 10, "bands": ["B02", "B03", "B04", "B08"]},
            {"name": "te2", "size_px": 32, "gsd_m": 40, "bands": ["B8A", "B11", "VV", "VH"]},
        ],
    }
    (tmp_path / "lulc_train.yaml").write_text(yaml.safe_dump(train))
    (tmp_path / "lulc_test.yaml").write_text(yaml.safe_dump(test))
    res = train_and_evaluate(tmp_path, manifest, str(tmp_path / "lulc_train.yaml"), str(tmp_path / "lulc_test.yaml"))
    # a mask manifest trains a segmentation model (task: auto): mIoU on the masks' own 10 m grid
    assert list(res.metric.values) == ["miou", "overall_accuracy"] and list(res.modality.values) == ["te1", "te2"]
    # a modality asking for a band the manifest's images lack is refused before training, in one line
    bad = dict(train, modalities=[{"name": "nir", "size_px": 32, "gsd_m": 20, "bands": ["B10"]}])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    cfg = tmp_path / "bad_train.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                **TINY,
                "dataset": str(manifest),
                "train_modalities": str(tmp_path / "bad.yaml"),
                "out_dir": str(tmp_path / "x"),
            }
        )
    )
    r = cli("train", cfg)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "B10" in lines[0] and "lulc.csv" in lines[0]


@pytest.fixture(scope="module")
def manifest_store(tmp_path_factory) -> tuple[Path, Path]:
    """``atomizer experiment run`` of the disjoint_modalities notebook over a manifest with written folds."""
    root = tmp_path_factory.mktemp("own")
    manifest = eurosat_manifest(root / "data", per_class=5)
    pd.read_csv(manifest).drop(columns="split").to_csv(manifest, index=False)
    r = cli("dataset", "check", manifest)
    assert r.returncode == 0, r.stderr
    store = root / "store"
    spec = root / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "own_data",
                "notebook": str(REPO_ROOT / "notebooks" / "disjoint_modalities.ipynb"),
                "output_dir": str(store),
                "parameters": {
                    "dataset": str(manifest),
                    "train_modalities": "eurosat_train",
                    "test_modalities": "eurosat_test",
                    "models": ["atomizer"],
                    "preset": "tiny",
                    "epochs": 1,
                    "max_steps": 2,
                    "batch_size": 4,
                    "device": "cpu",
                    "seeds": [0],
                    "folds": [0],
                    "n_resamples": 100,
                },
            }
        )
    )
    r = cli("experiment", "run", spec)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return manifest, store


def test_experiment_run_on_a_manifest_uses_its_folds(manifest_store):
    manifest, store = manifest_store
    run = run_path(store / "run", "atomizer", 0, 0)  # a spec without a grid: one run, "run"
    res = load_results(run / "results.nc")
    assert res.attrs["dataset"] == str(manifest) and res.attrs["fold"] == 0 and res.sizes["modality"] == 6
    folds = pd.read_csv(manifest.with_name("labels.folds.csv"))
    preds = load_results(run / "predictions.nc")
    assert {str(i) for i in preds["image"].values} == set(folds.loc[folds["fold"] == 0, "id"])  # fold 0 tested


def test_dashboard_results_view_shows_the_manifest_runs(manifest_store):
    from atomizer.dashboard.results import ResultsView

    manifest, store = manifest_store
    view = ResultsView(root=str(store), resamples=100)
    view.__panel__()
    runs = view.runs_view()
    table = runs.object
    assert str(manifest) in set(table["dataset"]) and set(table["model"]) == {"atomizer"}
    s = view.summary()
    assert s is not None and set(s["model"]) == {"atomizer"} and len(s) == 6
