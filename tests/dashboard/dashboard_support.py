"""Helpers shared by the dashboard tests: a tiny trained run and a small results store built from it.

Not a test module. The run is real (``atomizer.engine.training.train`` on the embedded EuroSAT slice, two
steps) and so are its results (``atomizer.engine.evaluation.evaluate_checkpoint`` on a few embedded test
tiles, saved with ``save_results``); only the number of images is cut to keep the tests fast.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from atomizer.data.datasets import embedded_path


def train_tiny(out_dir: Path) -> Path:
    """Train the tiny Atomizer for two steps into ``out_dir``; returns ``best.pt``."""
    from conftest import TINY_TRAIN

    from atomizer.engine.training import TrainConfig, train

    train(
        TrainConfig.from_dict({**TINY_TRAIN, "max_steps": 2, "train_limit": 8, "out_dir": str(out_dir)}),
        progress=False,
    )
    best = out_dir / "checkpoints" / "best.pt"
    assert best.is_file(), f"training wrote no {best}"
    return best


def small_eurosat_root(dst: Path, n_images: int = 5) -> Path:
    """A EuroSAT root whose test split holds ``n_images`` embedded test tiles (one per class), linked."""
    src = embedded_path("eurosat")
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "index.csv", dst / "index.csv")
    split = pd.read_csv(src / "split.csv")
    test = split[split["split"] == "test"].groupby("label").head(1).head(n_images)
    test.to_csv(dst / "split.csv", index=False)
    for label in split["label"].unique():
        (dst / label).symlink_to(src / label, target_is_directory=True)
    return dst


def evaluate_into(run_dir: Path, checkpoint: Path, data_root: Path) -> Path:
    """Evaluate ``checkpoint`` on every eurosat_test modality; write ``run_dir/results.nc``."""
    from atomizer.engine.evaluation import evaluate_checkpoint, save_results

    res = evaluate_checkpoint(checkpoint, "eurosat_test", data_root=str(data_root), batch_size=8, device="cpu")
    return save_results(res, run_dir / "results.nc")


def cv_store(root: Path) -> Path:
    """A results store of real tiny runs with per-image predictions: Atomizer and ResNet, seeds 0 and 1,
    fold 0 of the shipped folds (one optimiser step each, so the scores are near chance)."""
    from atomizer.experiments import run_path, train_and_evaluate

    for model in ("atomizer", "resnet"):
        for seed in (0, 1):
            train_and_evaluate(
                model,
                run_path(root, model, seed, 0),
                "eurosat_test",
                progress=False,
                preset="tiny",
                dataset="eurosat",
                epochs=1,
                max_steps=1,
                batch_size=8,
                val_limit=4,
                seed=seed,
                fold=0,
                device="cpu",
                val_every_epoch=False,
            )
    return root


#: Hostile strings of :func:`dash_hostile_store`: a run folder, a model label and a modality name holding HTML.
DASH_HOSTILE_RUN = "<img src=x onerror=window.__xss=1>"
DASH_HOSTILE_LABEL = "atomizer<img src=x onerror=window.__xss=2>"
DASH_HOSTILE_MODALITY = "T1<script>window.__xss=3</script>"


def dash_hostile_store(root: Path, n_images: int = 12) -> Path:
    """A results store written in the library's formats whose names carry HTML (this writes hostile names on
    purpose: the dashboard must show them as text). Two runs: one in a folder named ``DASH_HOSTILE_RUN`` labelled
    ``DASH_HOSTILE_LABEL``, one ``resnet``; each has ``config.yaml``, ``metrics.jsonl``, ``results.nc`` and
    ``predictions.nc`` (seeded random probabilities for ``n_images`` images, ten classes) on two test
    modalities, one named ``DASH_HOSTILE_MODALITY``."""
    import json

    import numpy as np
    import xarray as xr
    import yaml

    from atomizer.data.modalities import Modality
    from atomizer.engine.evaluation import save_results, scores_of

    mods = [
        Modality(DASH_HOSTILE_MODALITY, 64, 10.0, ("B02", "B03", "B04")),
        Modality("T2", 32, 20.0, ("B02", "B03", "B04")),
    ]
    classes = [f"class{i}" for i in range(10)]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(classes), n_images)
    target = np.eye(len(classes), dtype=np.uint8)[labels]
    for folder, model, label in ((DASH_HOSTILE_RUN, "atomizer", DASH_HOSTILE_LABEL), ("resnet", "resnet", "resnet")):
        run = root / folder
        run.mkdir(parents=True)
        cfg = {"model": model, "label": label, "preset": "tiny", "dataset": "eurosat", "seed": 0, "fold": 0}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        lines = [{"kind": "train", "step": s, "loss": 2.0 - 0.1 * s} for s in range(1, 4)]
        lines.append({"kind": "val", "step": 3, "loss": 1.5, "macro_map": 20.0})
        (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        logit = rng.normal(size=(len(mods), n_images, len(classes))).astype(np.float32)
        logit[:, np.arange(n_images), labels] += 1.0  # better than chance, so the statistics have signal
        prob = np.exp(logit) / np.exp(logit).sum(-1, keepdims=True)
        preds = xr.Dataset(
            {
                "probability": (("modality", "image", "class"), prob.astype(np.float32)),
                "logit": (("modality", "image", "class"), logit),
                "target": (("image", "class"), target),
            },
            coords={
                "modality": [m.name for m in mods],
                "image": [f"img{i:03d}" for i in range(n_images)],
                "class": classes,
                "size_px": ("modality", [m.size_px for m in mods]),
                "gsd_m": ("modality", [m.gsd_m for m in mods]),
                "bands": ("modality", [" ".join(m.bands) for m in mods]),
            },
            attrs={"model": label, "multilabel": 0},
        )
        save_results(preds, run / "predictions.nc", overwrite=True, records=False)
        save_results(scores_of(preds, mods), run / "results.nc", overwrite=True)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@contextmanager
def atomizer_serve(*args: str | Path, log: Path, timeout: float = 120.0) -> Iterator[tuple[int, Callable[[], None]]]:
    """``python -m atomizer serve --port P --no-show *args`` in a subprocess (output to ``log``), stopped on exit.

    Yields ``(port, ready)``: ``ready()`` waits until the server listens (failing the test with the end of the
    log if it exits or does not listen within ``timeout``), so a caller can prepare files meanwhile.
    """
    import pytest

    repo = Path(__file__).resolve().parents[2]
    port = free_port()
    with open(log, "w") as out:
        cmd = [sys.executable, "-m", "atomizer", "serve", "--port", str(port), "--no-show", *map(str, args)]
        proc = subprocess.Popen(cmd, cwd=repo, stdout=out, stderr=subprocess.STDOUT)

    def ready() -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                pytest.fail(f"atomizer serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("localhost", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        pytest.fail(f"atomizer serve did not listen on port {port} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")

    try:
        yield port, ready
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
