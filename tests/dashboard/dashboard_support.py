"""Helpers shared by the dashboard tests: a tiny trained run and a small results store built from it.

Not a test module. The run is real (``atomizer.engine.training.train`` on the embedded EuroSAT slice, two
steps) and so are its results (``atomizer.engine.evaluation.evaluate_checkpoint`` on a few embedded test
tiles, saved with ``save_results``); only the number of images is cut to keep the tests fast.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from atomizer.data.datasets import embedded_path


def train_tiny(out_dir: Path) -> Path:
    """Train the tiny Atomizer for two steps into ``out_dir``; returns ``best.pt``."""
    from atomizer.engine.training import TrainConfig, train

    train(
        TrainConfig(
            model="atomizer",
            preset="tiny",
            dataset="eurosat",
            epochs=1,
            max_steps=2,
            batch_size=4,
            train_limit=8,
            val_limit=4,
            device="cpu",
            out_dir=str(out_dir),
        ),
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
