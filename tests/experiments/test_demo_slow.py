"""The README's demo end to end (opt-in: ``pytest -m slow``): the embedded demo spec, the recipe of record over the
5 shipped folds for both models, run as ``make demo`` runs it, streaming one progress line per epoch, then the
results store read back by ``atomizer results``. Minutes on 2 cores; the wall time is in docs/results.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_demo_runs_every_fold_of_both_models_and_streams_its_progress(tmp_path):
    spec = yaml.safe_load((ROOT / "experiments" / "embedded_demo.yaml").read_text())
    spec["output_dir"] = str(tmp_path / "store")
    spec["notebook"] = str(ROOT / spec["notebook"])
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(spec))
    run = subprocess.run(
        [sys.executable, "-m", "atomizer", "experiment", "run", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=3600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    epochs = spec["parameters"]["epochs"]
    models, folds = spec["parameters"]["models"], spec["parameters"]["folds"]
    for model in models:  # every (model, fold) printed its epochs' lines: loss, score, time (early stopping may end it)
        for fold in folds:
            pattern = rf"\[{model} seed 0 fold {fold}\] epoch 1/{epochs} loss [0-9.]+ val macro mAP [0-9.]+ \| .*left"
            assert re.search(pattern, run.stdout), (model, fold, run.stdout[-2000:])
    predictions = sorted((tmp_path / "store").rglob("predictions.nc"))
    assert len(predictions) == len(models) * len(folds)
    table = subprocess.run(
        [sys.executable, "-m", "atomizer", "results", str(tmp_path / "store"), "--reference", "atomizer"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert table.returncode == 0, table.stderr
    assert "resnet" in table.stdout and "95 %" in table.stdout
