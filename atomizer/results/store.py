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
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import xarray as xr

from atomizer.core.run_folder import PREDICTIONS, RunFolder
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
    "read_results_twin",
    "run_label",
]


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
    error: str | None = None

    @classmethod
    def empty(cls, error: str | None = None) -> StoreState:
        return cls(error=error)

    def metric_names(self) -> list[str]:
        """Every metric any result file of the store scores."""
        return sorted({str(m) for ds in self.results.values() if ds is not None for m in ds.metric.values})

    def models(self) -> list[str]:
        """The models of the pooled predictions (those the statistics compare)."""
        return [str(m) for m in self.predictions.model.values] if self.predictions is not None else []

    def run_labels(self) -> list[str]:
        return [str(r) for r in self.runs["run"]] if len(self.runs) else []

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
        """Every run directory of the store, sorted."""
        return find_run_dirs(self.root)

    def runs(self) -> pd.DataFrame:
        """One row per run (:func:`find_runs`)."""
        return find_runs(self.root)

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
            state.runs = self.runs()
            state.results = {kind: self.results(kind) for kind in RESULT_FILES}
            state.predictions = self.predictions()
            paths = [Path(p) for p in state.runs["path"]] if len(state.runs) else []
            state.has_landscape = any(RunFolder(p).landscape_predictions.exists() for p in paths)
            if paths:
                state.train_modalities = str(read_config(paths[0]).get("train_modalities", state.train_modalities))
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
