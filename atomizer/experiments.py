"""Experiments: train-and-evaluate steps the notebooks call, and the papermill experiment runner.

``atomizer experiment run SPEC.yaml`` executes a grid of parameterised notebook runs::

    name: embedded_demo
    notebook: notebooks/disjoint_modalities.ipynb
    output_dir: runs/embedded_demo      # the results store the dashboard reads
    workers: 2                          # local processes (1 = in turn)
    scheduler: null                     # or a Dask distributed address, e.g. tcp://host:8786
    parameters: {dataset: eurosat, preset: small, epochs: 8}   # shared by every run
    grid: {models: [[atomizer], [resnet]], seed: [0]}          # one run per combination

Each run gets ``<output_dir>/<run_id>/`` with the executed notebook (``notebook.ipynb``), its parameters
(``params.yaml``) and a status file (``status.json``). Finished runs are skipped; a failing run is
recorded (``failed.txt``) and reported, and the other runs go on. At the end every run's results are
collected into ``<output_dir>/results.nc`` (and the sweeps, if any).
"""

from __future__ import annotations

import itertools
import json
import re
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import xarray as xr
import yaml

from atomizer.core.config import Config
from atomizer.core.storage import atomic_write_json, atomic_write_text
from atomizer.data.modalities import load_modalities
from atomizer.engine.evaluation import evaluate_checkpoint, save_results, sweep_modalities
from atomizer.engine.training import TrainConfig, train
from atomizer.results.store import PREDICTIONS_FILE, RESULT_FILES, collect

# --------------------------------------------------------------------------------------------------
# Steps called by the notebooks
# --------------------------------------------------------------------------------------------------


def train_and_evaluate(
    model: str, out_dir: str | Path, test_modalities: str, progress: bool = True, **train_options: Any
) -> Path:
    """Train ``model`` into ``out_dir`` (resuming if a run is there) and evaluate it on every test
    modality; returns the run directory. Finished steps are not redone."""
    run = Path(out_dir)
    cfg = TrainConfig.from_dict(
        {"model": model, "test_modalities": test_modalities, "out_dir": str(run), **train_options}
    )
    if not (run / "summary.json").exists():
        train(cfg, resume=(run / "config.yaml").exists(), progress=progress)
    table, per_image = run / RESULT_FILES["table"], run / PREDICTIONS_FILE
    if not (table.exists() and per_image.exists()):
        res, preds = evaluate_checkpoint(
            run / "checkpoints" / "best.pt",
            test_modalities,
            dataset=cfg.dataset,
            data_root=cfg.data_root,
            batch_size=cfg.batch_size,
            device=cfg.device,
            model_name=cfg.label or model,
            predictions=True,
        )
        save_results(preds, per_image, overwrite=True, records=False)
        save_results(res, table, overwrite=True)
    return run


def run_sweep(
    run_dir: str | Path,
    kind: str,
    values: Sequence[float],
    bands: Sequence[str] | None = None,
    batch_size: int = 16,
    device: str = "auto",
) -> Path:
    """Evaluate a run's best checkpoint on a GSD (``kind="gsd"``) or size (``"size"``) sweep (on the run's
    test images: its test fold when cross-validated); writes ``sweep_<kind>.nc`` and the per-image
    ``sweep_<kind>_predictions.nc``."""
    from atomizer.data.modalities import ModalitySet

    run = Path(run_dir)
    cfg = TrainConfig.from_yaml(run / "config.yaml")
    test = load_modalities(cfg.test_modalities)
    size, gsd = int(test.source_size_px), float(test.source_gsd_m)
    if bands is None:  # every band the dataset's test modalities use
        bands = sorted({b for m in test for b in m.bands})
    mods = ModalitySet(f"sweep_{kind}", tuple(sweep_modalities(kind, size, gsd, bands, values)), size, gsd)
    res, preds = evaluate_checkpoint(
        run / "checkpoints" / "best.pt",
        mods,
        dataset=cfg.dataset,
        data_root=cfg.data_root,
        batch_size=batch_size,
        device=device,
        model_name=cfg.label or cfg.model,
        predictions=True,
    )
    res.attrs["sweep"] = kind
    out = run / RESULT_FILES[kind]
    save_results(preds, run / sweep_predictions_file(kind), overwrite=True, records=False)
    save_results(res, out, overwrite=True)
    return out


def sweep_predictions_file(kind: str) -> str:
    """Per-image predictions of a sweep (``sweep_gsd_predictions.nc``), for CIs over repeats."""
    return f"sweep_{kind}_predictions.nc"


# --------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------


@dataclass
class ExperimentSpec(Config):
    """An experiment: a notebook, shared parameters and a grid of runs (module docstring)."""

    kind: ClassVar[str] = "experiment"

    name: str
    notebook: str
    output_dir: str
    parameters: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    workers: int = 1
    scheduler: str | None = None
    kernel_name: str = "python3"

    def runs(self) -> list[tuple[str, dict]]:
        """(run id, parameters) for every point of the grid."""
        keys = list(self.grid)
        out = []
        for combo in itertools.product(*(self.grid[k] for k in keys)) if keys else [()]:
            point = dict(zip(keys, combo))
            rid = "_".join(f"{k}-{_slug(v)}" for k, v in point.items()) or "run"
            out.append((rid, {**self.parameters, **point}))
        return out


def _slug(v: Any) -> str:
    text = "+".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return re.sub(r"[^A-Za-z0-9._+-]", "", text)


def execute_run(notebook: str, run_dir: str, parameters: Mapping[str, Any], kernel_name: str = "python3") -> dict:
    """Execute one notebook run with papermill; never raises (the outcome is returned and recorded)."""
    import papermill as pm

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    params = {**parameters, "output_dir": str(run)}
    atomic_write_text(run / "params.yaml", yaml.safe_dump(params, sort_keys=False))
    t0 = time.time()
    status = {"run_dir": str(run), "parameters": params, "started": t0}
    try:
        pm.execute_notebook(
            notebook,
            str(run / "notebook.ipynb"),
            parameters=params,
            kernel_name=kernel_name,
            progress_bar=False,
            cwd=str(Path.cwd()),
        )
        status.update(state="done", seconds=time.time() - t0)
        (run / "failed.txt").unlink(missing_ok=True)
    except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
        status.update(state="failed", seconds=time.time() - t0, error=f"{type(e).__name__}: {e}"[:4000])
        atomic_write_text(run / "failed.txt", status["error"] + "\n" + traceback.format_exc()[-4000:])
    atomic_write_json(run / "status.json", status)
    return status


def run_experiment(spec: ExperimentSpec, only: Sequence[str] | None = None, force: bool = False) -> dict:
    """Run every pending run of ``spec``; returns ``{"done": [...], "skipped": [...], "failed": [...]}``."""
    root = Path(spec.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    pending, skipped = [], []
    for rid, params in spec.runs():
        if only and rid not in only:
            continue
        st = root / rid / "status.json"
        if not force and st.exists() and json.loads(st.read_text()).get("state") == "done":
            skipped.append(rid)
            continue
        pending.append((rid, params))
    for rid in skipped:
        print(f"[skip] {rid}: already finished", flush=True)
    results: list[dict] = []
    args = [(spec.notebook, str(root / rid), params, spec.kernel_name) for rid, params in pending]
    for rid, _ in pending:
        print(f"[run ] {rid}", flush=True)
    if spec.scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise RuntimeError(
                "scheduler is set but dask.distributed is not installed (pip install distributed)"
            ) from None
        with Client(spec.scheduler) as client:
            futures = [client.submit(execute_run, *a, pure=False) for a in args]
            results = client.gather(futures)
    elif spec.workers > 1 and len(args) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=spec.workers) as ex:
            results = list(ex.map(execute_run, *zip(*args)))
    else:
        results = [execute_run(*a) for a in args]
    done = [Path(r["run_dir"]).name for r in results if r["state"] == "done"]
    failed = [Path(r["run_dir"]).name for r in results if r["state"] == "failed"]
    for r in results:
        tag = "ok  " if r["state"] == "done" else "FAIL"
        print(
            f"[{tag}] {Path(r['run_dir']).name} ({r['seconds']:.0f} s){'' if r['state'] == 'done' else ': ' + r['error'][:300]}",
            flush=True,
        )
    for kind in RESULT_FILES:
        merged = collect(root, kind)
        if merged is not None:
            save_results(merged, root / f"{Path(RESULT_FILES[kind]).stem}_all.nc", overwrite=True)
    summary = {"done": done, "skipped": skipped, "failed": failed}
    atomic_write_json(root / "experiment.json", {"spec": spec.to_dict(), **summary})
    return summary


def run_states(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """(run id, state) of every run of ``spec``: ``done``, ``failed`` or ``pending``."""
    out = []
    for rid, _ in spec.runs():
        st = Path(spec.output_dir) / rid / "status.json"
        out.append((rid, json.loads(st.read_text())["state"] if st.exists() else "pending"))
    return out


def run_path(store: str | Path, model: str, seed: int, fold: int | None) -> Path:
    """Where a (model, seed, fold) run lives in a results store: ``<store>/<model>/seed-<s>[_fold-<f>]``."""
    return Path(store) / model / (f"seed-{seed}" + ("" if fold is None else f"_fold-{fold}"))


#: The landscape around a modality set: GSDs, fractions of the largest window, band sets (EuroSAT-MS names)
#: at the geometry of the first training modality. Every band set holds a canvas band (B10 alone has none).
LANDSCAPE = {
    "gsds": [10, 15, 20, 30, 40, 60],
    "size_fractions": [0.25, 0.5, 1.0],
    "band_sets": {
        "rgb": ["B02", "B03", "B04"],
        "rgbn": ["B02", "B03", "B04", "B08"],
        "rededge": ["B05", "B06", "B07"],
        "swir": ["B11", "B12"],
        "seen11": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B11", "B12"],
        "b8a": ["B8A"],
        "rgb_b8a": ["B02", "B03", "B04", "B8A"],
        "all13": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"],
    },
}
LANDSCAPE_FILES = {"table": "landscape.nc", "predictions": "landscape_predictions.nc"}


def landscape_set(train_modalities: str | Path, spec: Mapping[str, Any] | None = None):
    """The landscape :class:`~atomizer.data.modalities.ModalitySet` around a training modality set."""
    from atomizer.data.modalities import landscape_modalities

    spec = {**LANDSCAPE, **(spec or {})}
    train = load_modalities(train_modalities)
    first = train.modalities[0]
    return landscape_modalities(
        train, spec["gsds"], spec["size_fractions"], spec["band_sets"], first.bands, (first.size_px, first.gsd_m)
    )


def run_landscape(
    run_dir: str | Path, batch_size: int = 32, device: str = "auto", spec: Mapping[str, Any] | None = None
) -> Path:
    """Evaluate a run's best checkpoint on the landscape around its training modalities (on its test
    images: the test fold of a cross-validated run); writes ``landscape.nc`` and
    ``landscape_predictions.nc`` into the run (skipped when both exist)."""
    run = Path(run_dir)
    table, per_image = run / LANDSCAPE_FILES["table"], run / LANDSCAPE_FILES["predictions"]
    cfg = TrainConfig.from_yaml(run / "config.yaml")
    mods = landscape_set(cfg.train_modalities, spec)
    if table.exists() and per_image.exists():
        with xr.open_dataset(per_image, engine="h5netcdf") as old:  # reuse only the same landscape
            if [str(m) for m in old.modality.values] == mods.names:
                return table
    res, preds = evaluate_checkpoint(
        run / "checkpoints" / "best.pt",
        mods,
        dataset=cfg.dataset,
        data_root=cfg.data_root,
        batch_size=batch_size,
        device=device,
        model_name=cfg.label or cfg.model,
        predictions=True,
    )
    save_results(preds, per_image, overwrite=True, records=False)
    save_results(res, table, overwrite=True)
    return table


def param_list(value: Any, cast: Any = str) -> list:
    """A notebook's list parameter as a list: papermill's ``-p`` passes ``"atomizer,resnet"`` or ``"[0, 1]"``
    as strings and ``-p seeds 0`` as a scalar; a list passes through. Items are converted with ``cast``."""
    if isinstance(value, str):
        value = [x.strip() for x in value.strip("[]").replace("'", "").replace('"', "").split(",") if x.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    return [cast(x) for x in value]
