"""Run folders read: every run directory of a results store, its configuration, metrics log, result tables and
per-image predictions, merged over the store.

The implementation of :mod:`atomizer.results.store`, which is the public home of these names (import them from
there); :mod:`atomizer.results.landscape`, :mod:`~atomizer.results.report` and :mod:`~atomizer.results.scaling`
read through this module so that the store can offer the landscape and the report without an import cycle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import yaml

from atomizer.core import run_folder
from atomizer.core.run_folder import LANDSCAPE_PREDICTIONS, PREDICTIONS, RESULTS, RunFolder, sweep_file
from atomizer.core.storage import file_sha256, read_jsonl

#: The result files of a run by kind: the test-modality table and the two sweeps.
RESULT_FILES: dict[str, str] = {"table": RESULTS, **{k: sweep_file(k) for k in run_folder.SWEEP_KINDS}}
#: Per-image probabilities on the test modalities (what the statistics are computed from).
PREDICTIONS_FILE = PREDICTIONS
#: Every file of a run the store reads: its signature is theirs (path, mtime, size).
READ_FILES: tuple[str, ...] = (
    run_folder.CONFIG,
    run_folder.METRICS,
    run_folder.SUMMARY,
    run_folder.FAILED,
    PREDICTIONS,
    LANDSCAPE_PREDICTIONS,
    *RESULT_FILES.values(),
)


def find_run_dirs(root: str | Path) -> list[Path]:
    """Every run directory under ``root`` (``root`` itself included), sorted."""
    root = Path(root)
    if not root.exists():
        return []
    out = [root] if RunFolder(root).is_run() else []
    out += sorted(p.parent for p in root.rglob(run_folder.CONFIG) if p.parent != root and RunFolder(p.parent).is_run())
    return out


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The configuration a run was made with (an empty dict for an empty file)."""
    return yaml.safe_load(RunFolder(run_dir).config.read_text()) or {}


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """The metrics log of a run as a DataFrame (empty if none yet), read by the one reader of
    ``metrics.jsonl`` (:func:`atomizer.core.storage.jsonl_lines`, also the training loop's): a half-written
    last line is left out; any other line that is not a record is skipped (with a warning) and the lines
    after it are read."""
    return pd.DataFrame(read_jsonl(RunFolder(run_dir).metrics))


#: The key of a result's JSON twin that names the SHA-256 of the netCDF file it was made from.
TWIN_HASH_KEY = "netcdf_sha256"


def read_results_twin(path: str | Path) -> dict:
    """The JSON twin (``.json``) of a result file ``path`` (``.nc``), checked against it.

    The ``.nc`` is the authoritative record; its twin is a JSON copy for other tools, which names the
    SHA-256 of the ``.nc`` it was made from. Both are written as one unit under the folder's lock, so they
    disagree only after a writer that bypassed it, or an edit by hand.

    Raises:
        FileNotFoundError: either file is missing.
        ValueError: the twin is not valid JSON, names no hash, or was made from another version of the
            ``.nc`` (one line: re-run the evaluation to write both again).
    """
    path = Path(path)
    twin = path.with_suffix(".json")
    for f in (path, twin):
        if not f.is_file():
            raise FileNotFoundError(f"{f.name} not found beside {path.name}")
    try:
        records = json.loads(twin.read_text())
    except ValueError:
        raise ValueError(f"{twin.name}: not valid JSON") from None
    if not isinstance(records, dict) or TWIN_HASH_KEY not in records:
        raise ValueError(f"{twin.name}: names no {TWIN_HASH_KEY} of its {path.name}; cannot check it is its twin")
    if records[TWIN_HASH_KEY] != file_sha256(path):
        raise ValueError(
            f"{twin.name} was made from another version of {path.name} (the two disagree); "
            f"{path.name} is the record: re-run the evaluation to write both again"
        )
    return records


def run_label(run_dir: Path, root: Path) -> str:
    rel = run_dir.relative_to(root) if run_dir != root else Path(run_dir.name)
    return str(rel)


def find_runs(root: str | Path) -> pd.DataFrame:
    """One row per run: label, model, preset, dataset, status, step, best validation score, files."""
    root = Path(root)
    rows = []
    for d in find_run_dirs(root):
        run = RunFolder(d)
        cfg = read_config(d)
        m = read_metrics(d)
        train = m[m["kind"] == "train"] if len(m) else m
        val = m[m["kind"] == "val"] if len(m) else m
        if run.failed.exists():
            status = "failed"
        elif run.results.exists() or (d / PREDICTIONS_FILE).exists():  # evaluated (a table, or per-image only)
            status = "done"
        elif run.summary.exists():
            status = "trained"
        else:
            status = "running"
        rows.append(
            {
                "run": run_label(d, root),
                "path": str(d),
                "model": cfg.get("model"),
                "preset": cfg.get("preset"),
                "dataset": cfg.get("dataset"),
                "seed": cfg.get("seed"),
                "status": status,
                "step": int(train["step"].max()) if len(train) else 0,
                "last_loss": float(train["loss"].iloc[-1]) if len(train) else float("nan"),
                "best_val_macro_map": float(val["macro_map"].max())
                if len(val) and "macro_map" in val
                else float("nan"),
                "best_val_miou": float(val["miou"].max()) if len(val) and "miou" in val else float("nan"),
                "updated": max((os.path.getmtime(p) for p in d.iterdir()), default=0.0),
                **{f"has_{k}": (d / f).exists() for k, f in RESULT_FILES.items()},
            }
        )
    return pd.DataFrame(rows)


def collect(root: str | Path, kind: str = "table") -> xr.Dataset | None:
    """Merge the result files of every run under ``root`` along ``model``.

    Each run's model entry is relabelled ``"<model> (<run>)"`` when several runs hold the same model,
    so nothing is silently dropped. Returns ``None`` when no run has that kind of result yet.
    """
    if kind not in RESULT_FILES:
        raise KeyError(f"kind must be one of {sorted(RESULT_FILES)}, got {kind!r}")
    root = Path(root)
    parts = []
    for d in find_run_dirs(root):
        f = d / RESULT_FILES[kind]
        if f.exists():
            with xr.open_dataset(f, engine="h5netcdf") as ds:
                ds = ds.load()
            ds = ds.assign_coords(run=("model", [run_label(d, root)] * ds.sizes["model"]))
            parts.append(ds)
    if not parts:
        return None
    names = [str(m) for p in parts for m in p.model.values]
    if len(set(names)) < len(names):
        parts = [p.assign_coords(model=[f"{m} ({r})" for m, r in zip(p.model.values, p.run.values)]) for p in parts]
    return xr.concat(parts, dim="model", coords="minimal", compat="override", combine_attrs="drop_conflicts")


def as_scores(ds: xr.Dataset) -> xr.Dataset:
    """A run's predictions in the store's one layout, ``probability`` (modality, image, class) and ``target``
    (image, class): a segmentation run's per-image confusion matrices (modality, image, true, predicted) are
    laid out as C x C "classes" (``true->predicted``) with a zero target, which
    :func:`atomizer.results.stats.metric_values` reads back for ``miou``."""
    if "confusion" not in ds:
        return ds
    conf = ds["confusion"].values
    m, n, c, _ = conf.shape
    names = [f"{t}->{q}" for t in ds["true"].values for q in ds["predicted"].values]
    return xr.Dataset(
        {
            "probability": (("modality", "image", "class"), conf.reshape(m, n, c * c).astype(np.float32)),
            "target": (("image", "class"), np.zeros((n, c * c), np.uint8)),
        },
        coords={
            "modality": ds.modality.values,
            "image": ds.image.values,
            "class": names,
            **{k: ("modality", ds[k].values) for k in ("size_px", "gsd_m", "bands") if k in ds.coords},
        },
        attrs={**ds.attrs, "task": "segmentation"},
    )


def collect_predictions(root: str | Path | Sequence[str | Path], name: str = PREDICTIONS_FILE) -> xr.Dataset | None:
    """Every run's per-image predictions under ``root`` (one store, or several read as one: e.g. two
    experiments on the same data and folds; files called ``name``: the test modalities'
    ``predictions.nc``, or ``landscape_predictions.nc``), as one Dataset for :mod:`atomizer.results.stats`.

    Runs are keyed by (model label, seed, fold) from their ``config.yaml`` (``label`` or ``model``,
    ``seed``, ``fold``); the folds of a seed are pooled along ``image``, so with k-fold cross-validation
    each seed covers every image once. Returns ``score`` (model, seed, modality, image, class), NaN where a
    (model, seed) lacks an image (an unfinished fold), and ``target`` (image, class); attrs ``folds``
    (number of distinct folds) and ``runs``. None when no run has predictions yet.

    Raises:
        ValueError: two runs claim the same (model, seed, fold), or disagree on an image's target.
    """
    roots = [Path(root)] if isinstance(root, (str, Path)) else [Path(r) for r in root]
    groups: dict[tuple[str, int], list[xr.Dataset]] = {}
    seen: dict[tuple[str, int, int], Path] = {}
    folds: set[int] = set()
    targets: dict[str, np.ndarray] = {}
    for d in (d for r in roots for d in find_run_dirs(r)):
        f = d / name
        if not f.exists():
            continue
        cfg = read_config(d)
        key = (
            str(cfg.get("label") or cfg.get("model")),
            int(cfg.get("seed", 0)),
            -1 if cfg.get("fold") is None else int(cfg["fold"]),
        )
        if key in seen:
            raise ValueError(f"runs {seen[key]} and {d} are both {key} (model, seed, fold); give one a 'label'")
        seen[key] = d
        folds.add(key[2])
        with xr.open_dataset(f, engine="h5netcdf") as ds:
            ds = as_scores(ds.load())
        for img, t in zip(ds.image.values, ds["target"].values):
            if str(img) in targets and not (targets[str(img)] == t).all():
                raise ValueError(f"image {img}: runs disagree on its target (different datasets in one store?)")
            targets[str(img)] = t
        groups.setdefault(key[:2], []).append(ds)
    if not groups:
        return None
    images = sorted(targets)
    models = sorted({m for m, _ in groups})
    seeds = sorted({s for _, s in groups})
    first = next(iter(groups.values()))[0]
    modalities = [str(m) for m in first.modality.values]
    classes = [str(c) for c in first["class"].values]
    score = np.full((len(models), len(seeds), len(modalities), len(images), len(classes)), np.nan, np.float32)
    pos = {img: i for i, img in enumerate(images)}
    for (m, s), parts in groups.items():
        for ds in parts:
            if [str(x) for x in ds.modality.values] != modalities:
                raise ValueError(f"{m} seed {s}: other test modalities than the rest of the store")
            idx = [pos[str(i)] for i in ds.image.values]
            score[models.index(m), seeds.index(s)][:, idx] = ds["probability"].values
    return xr.Dataset(
        {
            "score": (("model", "seed", "modality", "image", "class"), score),
            "target": (("image", "class"), np.stack([targets[i] for i in images]).astype(np.uint8)),
        },
        coords={
            "model": models,
            "seed": seeds,
            "modality": modalities,
            "image": images,
            "class": classes,
            **{c: ("modality", first[c].values) for c in ("size_px", "gsd_m", "bands") if c in first.coords},
        },
        attrs={
            "folds": len(folds),
            "runs": len(seen),
            "multilabel": int(first.attrs.get("multilabel", 0)),
            "task": str(first.attrs.get("task", "classification")),
        },
    )
