"""The results store: a folder tree of runs that dashboards, notebooks and reports read.

A *run directory* is what :func:`atomizer.engine.training.train` writes, plus the evaluation files; every
file name comes from :mod:`atomizer.core.run_folder` (``RunFolder(path).config``, ``.metrics``, ...):

    config              the TrainConfig used
    metrics             one JSON object per training step / validation (grows while running)
    summary             written when training ends
    best, last          the checkpoints
    results (+ .json)   test-modality scores, dims (model, modality, metric); attrs seed, fold.
                        The .nc is authoritative; the .json twin (for other tools) names the SHA-256 of
                        the .nc it was made from (:func:`read_results_twin` checks it)
    predictions         per-image probabilities, dims (modality, image, class), and targets
    sweep(kind)         the resolution (``gsd``) and size (``size``) sweeps, same dims
    failed              written by the experiment runner when the run failed

A *results store* is any folder holding run directories at any depth; :class:`ResultsStore` reads one
(runs, their tables, metrics, predictions, sweeps, landscape, report, and a signature that changes when
any of its files does) and :class:`StoreState` is what it held at one signature. A result and its twin
are written as one unit under the folder's lock (:func:`atomizer.core.storage.locked`, ``.lock``): both
temporary files first, then both renamed.

A run folder whose ``config.yaml`` is a pretraining config (``atomizer pretrain``: image ``sources``,
``masking``, ``mask_ratio``; :func:`~atomizer.core.run_folder.is_pretraining_config`) is a *pretraining run*
(the disjoint notebook keeps them at ``<store>/pretrain/<model>_fold-<k>/``): it is listed apart
(:meth:`ResultsStore.pretraining`, with its reconstruction-loss curves), never among the labelled runs of
:meth:`ResultsStore.runs` and the tables.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr

from atomizer.core.run_folder import PREDICTIONS, RunFolder, is_pretraining_config
from atomizer.core.storage import read_jsonl
from atomizer.results._runs import (
    PREDICTIONS_FILE,
    READ_FILES,
    RESULT_FILES,
    TWIN_HASH_KEY,
    collect,
    collect_predictions,
    find_run_dirs,
    find_runs,
    read_config,
    read_metrics,
    read_results_twin,
    run_label,
)

__all__ = [
    "PREDICTIONS_FILE",
    "PRETRAINING_COLUMNS",
    "PRETRAINING_CURVE_COLUMNS",
    "READ_FILES",
    "RESULT_FILES",
    "SCORE_COLUMNS",
    "TWIN_HASH_KEY",
    "ResultsStore",
    "StoreState",
    "collect",
    "collect_predictions",
    "find_run_dirs",
    "find_runs",
    "read_config",
    "read_metrics",
    "read_pretraining",
    "read_results_twin",
    "run_label",
    "split_runs",
]


# --------------------------------------------------------------------------------------------------
# Pretraining runs: listed apart from the labelled runs
# --------------------------------------------------------------------------------------------------

#: Columns of :meth:`ResultsStore.pretraining`: the run (its folder relative to the store), its config's
#: model, masking and mask_ratio, its status (running, done, failed), steps done and the config's ``steps``
#: (<NA> for a progressive run, whose length the stages set), unlabelled images (<NA> until the summary is
#: written), the reconstruction loss of the fixed held-in batch at the start and at the end (the last one
#: logged, while running), the last change (seconds since the epoch) and the real path.
PRETRAINING_COLUMNS = [
    "run",
    "model",
    "masking",
    "mask_ratio",
    "status",
    "step",
    "planned_steps",
    "images",
    "eval_loss_start",
    "eval_loss_end",
    "updated",
    "path",
]
#: Columns of :meth:`ResultsStore.pretraining_curves`: one row per logged loss, ``kind`` ``eval`` (the
#: reconstruction loss of the fixed held-in batch) or ``train`` (the step's batch).
PRETRAINING_CURVE_COLUMNS = ["run", "kind", "step", "loss"]


def _number(value: Any) -> float:
    """``value`` as a float, NaN when it is none (a missing or foreign entry of a summary or log)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float("nan")
    return float(value)


def _read_summary(run_dir: Path) -> dict[str, Any]:
    """A run's ``summary.json``; empty when there is none yet or it is not a JSON object."""
    try:
        summary = json.loads(RunFolder(run_dir).summary.read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _updated(run_dir: Path) -> float:
    """The last change of a run folder's files (a temporary file renamed meanwhile is skipped)."""
    times = [0.0]
    for p in run_dir.iterdir():
        try:
            times.append(p.stat().st_mtime)
        except OSError:
            continue
    return max(times)


def split_runs(run_dirs: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """``run_dirs`` split into (labelled runs, pretraining runs) by their ``config.yaml``."""
    labelled: list[Path] = []
    pretraining: list[Path] = []
    for d in run_dirs:
        cfg = read_config(d)
        (pretraining if isinstance(cfg, Mapping) and is_pretraining_config(cfg) else labelled).append(d)
    return labelled, pretraining


def read_pretraining(root: str | Path, run_dirs: Sequence[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pretraining runs ``run_dirs`` of the store ``root``: one row each (:data:`PRETRAINING_COLUMNS`) and
    their logged losses (:data:`PRETRAINING_CURVE_COLUMNS`).

    A finished run's step, images and start and end losses are its ``summary.json``'s; a run still pretraining
    (no summary yet) shows its metrics log's: the last step logged, the first and the last reconstruction loss."""
    root = Path(root)
    rows: list[dict[str, Any]] = []
    curves: list[pd.DataFrame] = []
    for d in run_dirs:
        run = RunFolder(d)
        label = run_label(d, root)
        cfg = read_config(d)
        summary = _read_summary(d) if run.summary.exists() else {}
        log = pd.DataFrame([r for r in read_jsonl(run.metrics) if r.get("kind") in ("train", "eval")])
        if len(log):
            log = log.reindex(columns=["kind", "step", "loss"])
            log["step"] = pd.to_numeric(log["step"], errors="coerce")
            log["loss"] = pd.to_numeric(log["loss"], errors="coerce")
            log = log.dropna(subset=["step", "loss"])
            log = log[log["step"].map(math.isfinite)].astype({"step": int, "loss": float})
            curves.append(log.assign(run=label)[PRETRAINING_CURVE_COLUMNS])
        evals = log[log["kind"] == "eval"] if len(log) else log
        if run.failed.exists():
            status = "failed"
        elif run.summary.exists():
            status = "done"
        else:
            status = "running"
        logged_step = float(log["step"].max()) if len(log) else 0.0
        step = _number(summary.get("step", logged_step))
        rows.append(
            {
                "run": label,
                "model": cfg.get("model"),
                "masking": cfg.get("masking"),
                "mask_ratio": _number(cfg.get("mask_ratio")),
                "status": status,
                "step": int(step) if math.isfinite(step) else 0,
                "planned_steps": _number(cfg.get("steps")) if cfg.get("source_epochs") is None else float("nan"),
                "images": _number(summary.get("images")),
                "eval_loss_start": _number(
                    summary.get("eval_loss_start", evals["loss"].iloc[0] if len(evals) else None)
                ),
                "eval_loss_end": _number(summary.get("eval_loss_end", evals["loss"].iloc[-1] if len(evals) else None)),
                "updated": _updated(d),
                "path": str(d),
            }
        )
    table = pd.DataFrame(rows, columns=PRETRAINING_COLUMNS)
    for col in ("planned_steps", "images"):  # counts; <NA> where unknown (a running or progressive run)
        table[col] = table[col].round().astype("Int64")
    curve = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=PRETRAINING_CURVE_COLUMNS)
    return table, curve


# --------------------------------------------------------------------------------------------------
# The store as an object: what it holds at one signature, read once, for views to arrange
# --------------------------------------------------------------------------------------------------

#: Columns of :meth:`StoreState.scores`.
SCORE_COLUMNS = ["model", "modality", "size_px", "gsd_m", "bands", "score"]


@dataclass(eq=False)
class StoreState:
    """What a results store held when it was read: its runs, merged results of each kind, pooled per-image
    predictions. ``error`` names what could not be read (a half-written or foreign file), so a view shows it
    instead of raising. Views share one state per store signature; nothing in it changes once read."""

    runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    results: dict[str, xr.Dataset | None] = field(default_factory=dict)
    predictions: xr.Dataset | None = None
    #: Whether any run has been evaluated on the generalisation landscape.
    has_landscape: bool = False
    #: The training modalities of the store's first run (what the landscape distances are measured from).
    train_modalities: str = "eurosat_train"
    #: The pretraining runs (:data:`PRETRAINING_COLUMNS`), apart from ``runs``, and their logged losses.
    pretraining: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PRETRAINING_COLUMNS))
    pretraining_curves: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PRETRAINING_CURVE_COLUMNS))
    error: str | None = None

    @classmethod
    def empty(cls, error: str | None = None) -> StoreState:
        return cls(error=error)

    def metric_names(self) -> list[str]:
        """Every metric any result file of the store scores, and the one its per-image predictions give the
        statistics (``miou`` for masks, ``macro_map`` for labels) when runs wrote predictions only."""
        names = {str(m) for ds in self.results.values() if ds is not None for m in ds.metric.values}
        if self.predictions is not None:
            names.add("miou" if self.predictions.attrs.get("task") == "segmentation" else "macro_map")
        return sorted(names)

    def models(self) -> list[str]:
        """The models of the pooled predictions (those the statistics compare)."""
        return [str(m) for m in self.predictions.model.values] if self.predictions is not None else []

    def run_labels(self) -> list[str]:
        return [str(r) for r in self.runs["run"]] if len(self.runs) else []

    def pretraining_labels(self) -> list[str]:
        """The pretraining runs (folders relative to the store), sorted."""
        return [str(r) for r in self.pretraining["run"]] if len(self.pretraining) else []

    def pretraining_curve(self, labels: Sequence[str] | None = None) -> pd.DataFrame:
        """The logged losses (:data:`PRETRAINING_CURVE_COLUMNS`) of the pretraining runs ``labels`` (None: all)."""
        c = self.pretraining_curves
        return c if labels is None or not len(c) else c[c["run"].isin(list(labels))]

    def run_metrics(self, label: str | None) -> pd.DataFrame:
        """The metrics log of the run ``label`` (empty for an unknown or no run)."""
        if label is None or not len(self.runs):
            return pd.DataFrame()
        row = self.runs[self.runs["run"] == label]
        return read_metrics(row["path"].iloc[0]) if len(row) else pd.DataFrame()

    def scores(self, kind: str, metric: str) -> pd.DataFrame:
        """Long table of ``metric`` in the results of ``kind``: model, modality, size_px, gsd_m, bands, score."""
        ds = self.results.get(kind)
        if ds is None or metric not in ds.metric.values:
            return pd.DataFrame(columns=SCORE_COLUMNS)
        df = ds["score"].sel(metric=metric).to_dataframe(name="score").reset_index()
        return df[[c for c in SCORE_COLUMNS if c in df]]

    def table(self, metric: str) -> pd.DataFrame | None:
        """Table-1 style: model x test modality of ``metric`` (None without results)."""
        df = self.scores("table", metric)
        if df.empty:
            return None
        t = df.pivot(index="model", columns="modality", values="score")
        return t[list(dict.fromkeys(df["modality"]))]

    def summary(self, metric: str, n_resamples: int) -> pd.DataFrame | None:
        """Mean, sd, 95 % CI and per-seed scores per model and test modality (:func:`stats.summarize`)."""
        from atomizer.results import stats

        if self.predictions is None:
            return None
        return stats.summarize(self.predictions, metric, n_resamples=n_resamples)

    def differences(self, reference: str | None, metric: str, n_resamples: int) -> pd.DataFrame | None:
        """``reference`` minus every other model: paired difference, CI, Holm-corrected p (None with fewer than
        two models or no reference)."""
        from atomizer.results import stats

        if self.predictions is None or reference is None or self.predictions.sizes["model"] < 2:
            return None
        return stats.paired_differences(self.predictions, reference, metric=metric, n_resamples=n_resamples)


class ResultsStore:
    """A results store (a folder holding run directories at any depth), read.

    Everything a view shows of a store comes from here: :meth:`read` (a :class:`StoreState`), :meth:`signature`
    (changes when any file the store reads does: key caches on it), :meth:`landscape`, :meth:`report`. Nothing
    is read by making one."""

    #: The last signature of each store (resolved path -> (monotonic time, signature)), shared in the process:
    #: the periodic polls of a served dashboard's sessions scan a store once per period between them.
    _signatures: dict[str, tuple[float, tuple]] = {}
    _signatures_lock = threading.Lock()
    _max_signatures = 64

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.root)!r})"

    def run_dirs(self) -> list[Path]:
        """Every run directory of the store (pretraining runs included), sorted."""
        return find_run_dirs(self.root)

    def pretraining_dirs(self) -> list[Path]:
        """The pretraining runs of the store (run folders whose ``config.yaml`` is a pretraining config), sorted."""
        return split_runs(self.run_dirs())[1]

    def runs(self, pretraining_dirs: Sequence[Path] | None = None) -> pd.DataFrame:
        """One row per labelled run (:func:`find_runs`), the pretraining runs (``pretraining_dirs``, default
        :meth:`pretraining_dirs`) left out: :meth:`pretraining` lists them."""
        df = find_runs(self.root)
        apart = {str(d) for d in (self.pretraining_dirs() if pretraining_dirs is None else pretraining_dirs)}
        if not len(df) or not apart:
            return df
        return df[~df["path"].isin(apart)].reset_index(drop=True)

    def pretraining(self, pretraining_dirs: Sequence[Path] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The pretraining runs (``pretraining_dirs``, default :meth:`pretraining_dirs`), one row each
        (:data:`PRETRAINING_COLUMNS`), and their logged losses (:data:`PRETRAINING_CURVE_COLUMNS`):
        :func:`read_pretraining`."""
        dirs = self.pretraining_dirs() if pretraining_dirs is None else pretraining_dirs
        return read_pretraining(self.root, dirs)

    def results(self, kind: str = "table") -> xr.Dataset | None:
        """The merged results of one kind (``"table"``, ``"gsd"``, ``"size"``), or None (:func:`collect`)."""
        return collect(self.root, kind)

    def predictions(self, name: str = PREDICTIONS) -> xr.Dataset | None:
        """Every run's per-image predictions pooled (:func:`collect_predictions`)."""
        return collect_predictions(self.root, name)

    def scan(self) -> tuple:
        """(path, mtime, size) of every file the store reads (:data:`READ_FILES`) in every run."""
        sig = []
        for d in self.run_dirs():
            for name in READ_FILES:
                p = d / name
                try:
                    st = p.stat()
                except OSError:
                    continue
                sig.append((str(p), st.st_mtime_ns, st.st_size))
        return tuple(sig)

    def signature(self, max_age_s: float = 0.0) -> tuple:
        """:meth:`scan` of the store, reusing the one any caller in this process made less than ``max_age_s``
        ago (0: always scan). Every scan is remembered for the next caller."""
        key = str(self.root)
        cls = type(self)
        with cls._signatures_lock:
            hit = cls._signatures.get(key)
        if hit is not None and max_age_s > 0 and time.monotonic() - hit[0] < max_age_s:
            return hit[1]
        sig = self.scan()
        with cls._signatures_lock:
            cls._signatures[key] = (time.monotonic(), sig)
            while len(cls._signatures) > cls._max_signatures:  # bounded: the oldest store seen goes out
                cls._signatures.pop(next(iter(cls._signatures)))
        return sig

    def read(self) -> StoreState:
        """Runs, merged results of each kind and pooled per-image predictions (an ``error`` in the state
        instead of raising: a half-written or foreign file must not break a page)."""
        state = StoreState()
        try:
            apart = self.pretraining_dirs()
            state.runs = self.runs(apart)
            state.results = {kind: self.results(kind) for kind in RESULT_FILES}
            state.predictions = self.predictions()
            paths = [Path(p) for p in state.runs["path"]] if len(state.runs) else []
            state.has_landscape = any(RunFolder(p).landscape_predictions.exists() for p in paths)
            if paths:
                state.train_modalities = str(read_config(paths[0]).get("train_modalities", state.train_modalities))
            state.pretraining, state.pretraining_curves = self.pretraining(apart)
        except Exception as e:  # noqa: BLE001
            state.error = f"{type(e).__name__}: {e}"
        return state

    def landscape(self, train_modalities: str, metric: str, n_resamples: int) -> pd.DataFrame | None:
        """Score against distance from ``train_modalities`` per model (:func:`atomizer.results.landscape.landscape`),
        or None when no run has been evaluated on the landscape."""
        from atomizer.results.landscape import landscape

        return landscape(self.root, train_modalities, metric, n_resamples=n_resamples)

    def report(self, reference: str = "atomizer", n_resamples: int = 2000) -> bytes:
        """The self-contained HTML report of the store (:func:`atomizer.results.report.build_report`), encoded."""
        from atomizer.results.report import build_report

        return build_report(self.root, reference=reference, n_resamples=n_resamples).encode()
