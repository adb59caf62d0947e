"""Results: the runs of a results store, their scores on the test modalities, sweeps and training curves.

Everything shown is read by a :class:`~atomizer.results.store.ResultsStore` (a :class:`StoreState` per store
signature, shared by every session of a served dashboard, plus the landscape and the report); this view only
arranges and plots it. The
paper's published numbers (:mod:`atomizer.results.paper`: ``PAPER_TABLE1``, ``PAPER_RESOLUTION_SWEEP``,
``PAPER_SIZE_SWEEP``, macro mAP % on BigEarthNet) are drawn as reference marks labelled
"paper (BigEarthNet)". Served, the view re-reads the store periodically and redraws when a file
changed (a run still training keeps appending to its metrics log); the Refresh button does it now.

The store's pretraining runs (``atomizer pretrain`` run folders inside it, e.g. the disjoint notebook's
``<store>/pretrain/<model>_fold-<k>/``) are listed apart, in the Pretraining section: their model, masking,
steps and reconstruction loss at the start and end, and the reconstruction loss of the fixed held-in batch
against step, one line per chosen run (``pretrain_runs``), the training loss faint.

Use in a notebook::

    from atomizer.dashboard.results import ResultsView
    view = ResultsView(root="runs/embedded_demo")
    view.runs()                    # DataFrame of runs
    view.table()                   # model x test modality (metric ``view.metric``), every run
    view.summary()                 # mean, sd, 95 % CI per model and modality (atomizer.results.stats)
    view.differences()             # ``view.reference`` minus each model, paired, Holm-corrected
    view.pretraining()             # DataFrame of pretraining runs (reconstruction loss at start and end)
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
import xarray as xr

from atomizer.core.run_folder import CONFIG, METRICS, PREDICTIONS, RESULTS, SUMMARY, sweep_file
from atomizer.dashboard._common import (
    PLOT_HEIGHT,
    PLOT_WIDTH,
    STORES,
    TABLES,
    OutsideRootsError,
    Roots,
    alert,
    escape_text,
)
from atomizer.results import stats
from atomizer.results.paper import PAPER_LABEL, PAPER_METRIC, PAPER_RESOLUTION_SWEEP, PAPER_SIZE_SWEEP, PAPER_TABLE1
from atomizer.results.store import ResultsStore, StoreState

T = TypeVar("T")


def _shown(value: T | None, what: str) -> T:
    """``value``, which a chart draws (its view shows a message instead when the store has none)."""
    if value is None:
        raise LookupError(f"the store holds no {what} to draw")
    return value


def base_model(name: str) -> str:
    """``"atomizer (runs/x)"`` -> ``"atomizer"`` (collect() appends the run when models repeat)."""
    return str(name).split(" (")[0].strip().lower()


class ResultsView(pn.viewable.Viewer):
    """Tables and charts of a results store (a folder of run directories)."""

    root = param.String(default="runs", doc="Results store: a folder holding run directories at any depth.")
    roots = param.ClassSelector(
        class_=Roots,
        default=None,
        allow_None=True,
        precedence=-1,
        doc="Folders a served dashboard may read (the store must lie under them); None: any folder (notebooks).",
    )
    metric = param.Selector[str](default=PAPER_METRIC, objects=[PAPER_METRIC], doc="Metric of the tables and charts.")
    run = param.Selector[str | None](
        default=None, objects=[], allow_None=True, doc="Run whose training curves are shown."
    )
    pretrain_runs = param.ListSelector(
        default=[], objects=[], doc="Pretraining runs whose reconstruction-loss curves are drawn."
    )
    reference = param.Selector[str | None](
        default=None, objects=[], allow_None=True, doc="Model the others are compared with (paired differences)."
    )
    resamples = param.Integer(default=1000, bounds=(100, 20000), doc="Bootstrap / permutation resamples.")
    refresh_s = param.Integer(default=10, bounds=(2, 3600), doc="Seconds between re-reads of the store when served.")
    refresh = param.Event(doc="Re-read the store now.")
    version = param.Integer(default=0, precedence=-1, doc="Bumped whenever the store was re-read.")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._signature: tuple = ()
        self._data: StoreState = StoreState.empty()
        self._stats: dict[tuple, Any] = {}
        self._store: ResultsStore | None = None
        self._periodic: Any = None
        self.reload()

    # ------------------------------------------------------------------ the store
    def store_path(self) -> Path:
        """The store's real path; :class:`~atomizer.dashboard._common.OutsideRootsError` when ``roots`` are set
        and ``root`` lies outside them (nothing under it is then listed or read)."""
        if self.roots is None:
            return Path(self.root).expanduser().resolve()
        return self.roots.resolve(self.root, "results store")

    def shown(self, path: str | Path | None = None) -> str:
        """How a path (default: the store) is named in the page: relative to its root when served."""
        shown = Path(path) if path is not None else self._store.root if self._store is not None else None
        if shown is None:
            return str(self.root)
        return self.roots.display(shown) if self.roots is not None else str(shown)

    def scrub(self, text: str) -> str:
        """An error text as the page shows it: no absolute server path when served."""
        return self.roots.scrub(text) if self.roots is not None else str(text)

    def store_signature(self) -> tuple:
        """(path, mtime, size) of every file the store reads; changes when a run writes anything."""
        return self._store.scan() if self._store is not None else ()

    @param.depends("root", "refresh", watch=True)
    def reload(self) -> None:
        """Re-read the store and redraw."""
        try:
            store = ResultsStore(self.store_path())
        except OutsideRootsError as e:  # refused before anything under it is listed
            self._store, self._signature = None, ()
            data = self._data = StoreState.empty(str(e))
        else:
            self._store = store
            self._signature = store.signature()
            # every session of a served dashboard reads a store once (by its files' signature), not once each
            data = self._data = STORES.get((str(store.root), self._signature), store.read)
        metrics = data.metric_names()
        self.param.metric.objects = metrics or [PAPER_METRIC]
        if self.metric not in self.param.metric.objects:
            self.metric = PAPER_METRIC if PAPER_METRIC in metrics else self.param.metric.objects[0]
        models = data.models()
        if list(self.param.reference.objects) != models:  # re-setting the same (or no) options loops the Select
            self.param.reference.objects = models
        if self.reference not in models and models:
            self.reference = "atomizer" if "atomizer" in models else models[0]
        self._stats = {}
        runs = data.run_labels()
        self.param.run.objects = runs
        if self.run not in runs:
            self.run = runs[0] if runs else None
        pretraining = data.pretraining_labels()
        known = list(self.param.pretrain_runs.objects)
        if pretraining != known:  # runs that appeared are drawn; those the user left out stay out
            chosen = [r for r in self.pretrain_runs if r in pretraining] + [r for r in pretraining if r not in known]
            self.param.pretrain_runs.objects = pretraining
            self.pretrain_runs = [r for r in pretraining if r in chosen]
        self.version += 1

    def poll(self, max_age_s: float = 0.0) -> bool:
        """Reload if any file of the store changed since the last read; True when it did.

        With ``max_age_s``, a signature of the store that another session computed less than that long ago is
        reused (the periodic polls of many sessions scan the store once per period between them)."""
        if self._store is None:
            return False
        if self._store.signature(max_age_s) != self._signature:
            self.reload()
            return True
        return False

    def _periodic_poll(self) -> None:
        self.poll(max_age_s=0.9 * self.refresh_s)

    def runs(self) -> pd.DataFrame:
        """One row per run (:func:`atomizer.results.store.find_runs`)."""
        return self._data.runs

    def results(self, kind: str = "table") -> xr.Dataset | None:
        """The merged results of one kind (``"table"``, ``"gsd"``, ``"size"``), or None."""
        return self._data.results.get(kind)

    def scores(self, kind: str = "table") -> pd.DataFrame:
        """Long table of ``metric``: model, modality, size_px, gsd_m, bands, score."""
        return self._data.scores(kind, self.metric)

    def table(self) -> pd.DataFrame | None:
        """Table-1 style: model x test modality of ``metric`` (None without results)."""
        return self._data.table(self.metric)

    def paper_table(self) -> pd.DataFrame:
        """The paper's Table 1 (macro mAP %, BigEarthNet), rows labelled ``paper (BigEarthNet): <model>``."""
        cols = [f"T{i}" for i in range(1, 7)]
        return pd.DataFrame({f"{PAPER_LABEL}: {m}": v for m, v in PAPER_TABLE1.items()}, index=cols).T

    # ------------------------------------------------------------------ repeats and statistics
    def predictions(self) -> xr.Dataset | None:
        """Per-image predictions of every (model, seed) pooled over folds, or None."""
        return self._data.predictions

    def _shared_stat(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """A statistic of this store version, computed once for every session (and kept for this one)."""
        if key not in self._stats:
            where = str(self._store.root) if self._store is not None else None
            self._stats[key] = TABLES.get((where, self._signature, *key), compute)
        return self._stats[key]

    def _stat_metric(self) -> str:
        return self.metric if self.metric in stats.METRICS else "macro_map"

    def summary(self) -> pd.DataFrame | None:
        """Mean, sd, 95 % CI and per-seed scores per model and test modality (cached per store version)."""
        if self.predictions() is None:
            return None
        data, metric, resamples = self._data, self._stat_metric(), self.resamples
        return self._shared_stat(("summary", metric, resamples), lambda: data.summary(metric, resamples))

    def differences(self) -> pd.DataFrame | None:
        """``reference`` minus every other model: paired difference, CI, Holm-corrected p (cached)."""
        if len(self._data.models()) < 2 or self.reference is None:
            return None
        data, metric, reference, resamples = self._data, self._stat_metric(), self.reference, self.resamples
        return self._shared_stat(
            ("diff", metric, reference, resamples), lambda: data.differences(reference, metric, resamples)
        )

    def _ci_chart(self) -> hv.Overlay:
        s = _shown(self.summary(), "per-image predictions")
        df = s.assign(ci_group=[f"{mo} · {m}" for mo, m in zip(s["modality"], s["model"])])
        bars = hv.Bars(
            df, "ci_group", ["mean", "model", "modality", "ci_low", "ci_high", "seeds"], label="mean over seeds"
        ).opts(
            color="model",
            cmap="Category10",
            tools=["hover"],
            xrotation=45,
            show_legend=False,
            width=PLOT_WIDTH + 200,
            height=PLOT_HEIGHT + 40,
            xlabel="test modality · model",
            ylabel=f"{s['metric'].iloc[0]} (%)",
        )
        errs = hv.ErrorBars(
            [(g, m, m - lo, hi - m) for g, m, lo, hi in zip(df["ci_group"], df["mean"], df["ci_low"], df["ci_high"])],
            "ci_group",
            ["mean", "neg", "pos"],
            label="95 % CI",
        ).opts(line_width=1.5)
        points = hv.Scatter(
            [(g, v) for g, vals in zip(df["ci_group"], df["per_seed"]) for v in vals],
            "ci_group",
            "mean",
            label="each seed",
        ).opts(color="black", size=5, tools=["hover"])
        layers = [bars, errs, points]
        if s["metric"].iloc[0] == PAPER_METRIC:
            ref = [
                (g, PAPER_TABLE1[base_model(m)][int(str(mo)[1:]) - 1])
                for g, m, mo in zip(df["ci_group"], df["model"], df["modality"])
                if base_model(m) in PAPER_TABLE1
                and str(mo)[:1] == "T"
                and str(mo)[1:].isdigit()
                and 1 <= int(str(mo)[1:]) <= 6
            ]
            if ref:
                layers.append(
                    hv.Scatter(ref, "ci_group", "mean", label=PAPER_LABEL).opts(
                        marker="dash", size=28, line_width=3, color="crimson"
                    )
                )
        return hv.Overlay(layers).opts(
            legend_position="top_left",
            show_legend=True,
            title="mean over seeds, 95 % CI (bootstrap over test images), each seed",
        )

    def _difference_chart(self) -> hv.Overlay:
        d = _shown(self.differences(), "paired differences")
        df = d.assign(diff_group=[f"{mo} · {o}" for mo, o in zip(d["modality"], d["other"])])
        bars = hv.Bars(df, "diff_group", ["difference", "other", "modality", "p_holm"]).opts(
            color="other",
            cmap="Category10",
            tools=["hover"],
            xrotation=45,
            show_legend=False,
            width=PLOT_WIDTH + 200,
            height=PLOT_HEIGHT,
            xlabel="test modality · other model",
            ylabel=f"{self.reference} minus other (points)",
        )
        errs = hv.ErrorBars(
            [
                (g, v, v - lo, hi - v)
                for g, v, lo, hi in zip(df["diff_group"], df["difference"], df["ci_low"], df["ci_high"])
            ],
            "diff_group",
            ["difference", "neg", "pos"],
        ).opts(line_width=1.5)
        sig = df[df["significant"] & ((df["ci_low"] > 0) | (df["ci_high"] < 0))]  # as in stats.verdict
        marks = hv.Labels(
            [(g, hi + 1.0, "*") for g, hi in zip(sig["diff_group"], sig["ci_high"])],
            ["diff_group", "difference"],
            "text",
        ).opts(text_font_size="16pt", text_color="black")
        zero = hv.HLine(0).opts(color="black", line_width=1)
        return (bars * errs * marks * zero).opts(
            title=f"paired difference, 95 % CI; * Holm-corrected permutation p < 0.05 ({self._stat_metric()})"
        )

    def landscape(self) -> pd.DataFrame | None:
        """Score against distance from the training modalities per model (:mod:`atomizer.results.landscape`),
        or None when no run has been evaluated on the landscape (cached per store version)."""
        store, data = self._store, self._data
        if store is None or not data.has_landscape:
            return None
        train, metric, resamples = data.train_modalities, self._stat_metric(), self.resamples
        return self._shared_stat(
            ("landscape", train, metric, resamples), lambda: store.landscape(train, metric, resamples)
        )

    def _landscape_chart(self) -> hv.Layout:
        df = _shown(self.landscape(), "generalisation landscape")
        panels = []
        for kind, col, xlabel in (
            ("geometry", "distance_geometry", "geometry distance (octaves of GSD, size)"),
            ("bands", "distance_bands", "band-set distance (1 - Jaccard)"),
        ):
            layers = []
            for model, g in df.groupby("model", sort=False):
                pts = g[g["kind"] == kind]
                tr = g[g["kind"] == "train"]
                layers.append(
                    hv.ErrorBars(
                        [
                            (x, m, m - lo, hi - m)
                            for x, m, lo, hi in zip(pts[col], pts["mean"], pts["ci_low"], pts["ci_high"])
                        ],
                        col,
                        ["mean", "neg", "pos"],
                    )
                )
                layers.append(
                    hv.Scatter(pts, col, ["mean", "modality", "model"], label=str(model)).opts(size=7, tools=["hover"])
                )
                layers.append(
                    hv.Scatter(tr, col, ["mean", "modality", "model"], label=f"{model}: training").opts(
                        marker="star", size=14, tools=["hover"]
                    )
                )
            panels.append(
                hv.Overlay(layers).opts(
                    width=PLOT_WIDTH // 2 + 120,
                    height=PLOT_HEIGHT,
                    xlabel=xlabel,
                    ylabel=f"{self._stat_metric()} (%)",
                    legend_position="bottom_left",
                    title=f"landscape: {kind}",
                )
            )
        return (panels[0] + panels[1]).opts(shared_axes=False)

    @param.depends("version", "metric", "resamples")
    def landscape_view(self):
        if self.landscape() is None:
            return alert(
                "No generalisation landscape yet: run notebooks/generalisation_landscape.ipynb on this "
                "store (it evaluates every run on modalities around the training ones).",
                "info",
            )
        return pn.pane.HoloViews(self._landscape_chart(), name="landscape")

    @param.depends("version", "metric", "reference", "resamples")
    def repeats_view(self):
        preds = self.predictions()
        if preds is None:
            return alert(
                f"No per-image predictions ({PREDICTIONS}) under {escape_text(repr(self.shown()))}: the confidence "
                "intervals need them (runs written by the disjoint_modalities notebook or "
                "`atomizer.experiments.train_and_evaluate`).",
                "info",
            )
        s = _shown(self.summary(), "per-image predictions")
        head = (
            f"**{escape_text(s['metric'].iloc[0])}** (%): mean over {preds.sizes['seed']} seed(s) x {preds.attrs['folds']} "
            f"fold(s) [95 % CI], {preds.sizes['image']} test images"
        )
        parts = [
            pn.pane.Markdown(head, margin=(0, 10)),
            pn.pane.DataFrame(stats.mean_ci_table(s), name="ci_table", escape=True, sizing_mode="stretch_width"),
            pn.pane.HoloViews(self._ci_chart(), name="ci_bars"),
        ]
        d = self.differences()
        if d is not None:
            table, words = stats.verdict(d)
            parts += [
                pn.pane.Markdown(
                    f"**{escape_text(self.reference)} minus each model** (points; `*` significant)", margin=(0, 10)
                ),
                pn.pane.DataFrame(table, name="who_wins", escape=True, sizing_mode="stretch_width"),
                pn.pane.HoloViews(self._difference_chart(), name="differences"),
                pn.pane.Markdown(f"**Verdict.** {escape_text(words)}", name="verdict", margin=(0, 10)),
            ]
        return pn.Column(*parts)

    # ------------------------------------------------------------------ plots
    def _bar_chart(self):
        df = self.scores("table")
        df = df.assign(group=[f"{mo} · {m}" for mo, m in zip(df["modality"], df["model"])])
        bars = hv.Bars(df, "group", ["score", "model", "modality", "bands"], label="this store").opts(
            color="model",
            cmap="Category10",
            tools=["hover"],
            xrotation=45,
            show_legend=False,
            width=PLOT_WIDTH + 200,
            height=PLOT_HEIGHT + 40,
            xlabel="test modality · model",
            ylabel=f"{self.metric} (%)",
            title=f"{self.metric} per model and test modality",
        )
        layers = [bars]
        if self.metric == PAPER_METRIC:
            ref = []
            for g, m, mo in zip(df["group"], df["model"], df["modality"]):
                vals = PAPER_TABLE1.get(base_model(m))
                if (
                    vals is not None
                    and str(mo).startswith("T")
                    and str(mo)[1:].isdigit()
                    and 1 <= int(str(mo)[1:]) <= 6
                ):
                    ref.append((g, vals[int(str(mo)[1:]) - 1]))
            if ref:
                layers.append(
                    hv.Scatter(ref, "group", "score", label=PAPER_LABEL).opts(
                        marker="dash", size=28, line_width=3, color="black", tools=["hover"]
                    )
                )
        return hv.Overlay(layers).opts(legend_position="top_left", show_legend=True)

    def _sweep_chart(self, kind: str):
        axis = "gsd_m" if kind == "gsd" else "size_px"
        sweep: Mapping[float, float] | Mapping[int, float] = (
            PAPER_RESOLUTION_SWEEP if kind == "gsd" else PAPER_SIZE_SWEEP
        )
        paper = {float(k): v for k, v in sweep.items()}  # GSD (m) or size (px) -> macro mAP %
        df = self.scores(kind)
        layers = []
        for model, d in df.groupby("model", sort=False):
            d = d.sort_values(axis)
            layers.append(hv.Curve(d, axis, "score", label=str(model)).opts(line_width=2))
            layers.append(hv.Scatter(d, axis, "score", label=str(model)).opts(size=7))
        if self.metric == PAPER_METRIC:
            x = np.array(sorted(paper), dtype=float)
            y = np.array([paper[k] for k in sorted(paper)])
            layers.append(
                hv.Curve((x, y), axis, "score", label=PAPER_LABEL).opts(
                    color="black", line_dash="dashed", line_width=1.5
                )
            )
            layers.append(hv.Scatter((x, y), axis, "score", label=PAPER_LABEL).opts(color="black", marker="x", size=9))
        title = "resolution sweep" if kind == "gsd" else "input size sweep"
        return hv.Overlay(layers).opts(
            width=PLOT_WIDTH // 2 + 160,
            height=PLOT_HEIGHT,
            legend_position="bottom_left",
            xlabel="GSD (m/px)" if kind == "gsd" else "size (px)",
            ylabel=f"{self.metric} (%)",
            title=f"{title} (Atomizer in the paper)",
        )

    def training_curves(self) -> pd.DataFrame:
        """The metrics log of the selected run (empty without one)."""
        return self._data.run_metrics(self.run)

    def _curves_chart(self):
        m = self.training_curves()
        train = m[m["kind"] == "train"] if len(m) else m
        val = m[m["kind"] == "val"] if len(m) else m
        layers = [hv.Curve(train, "step", "loss", label="train loss").opts(color="steelblue", line_width=2)]
        if len(val):  # a run without validation records has only the training curve (still an overlay)
            layers += [
                hv.Curve(val, "step", "loss", label="val loss").opts(color="orange", line_width=2),
                hv.Scatter(val, "step", "loss").opts(color="orange", size=6),
            ]
        loss = hv.Overlay(layers).opts(
            width=PLOT_WIDTH // 2 + 60,
            height=PLOT_HEIGHT - 40,
            title=f"loss: {self.run}",
            legend_position="top_right",
            show_legend=True,
        )
        key = PAPER_METRIC if PAPER_METRIC in val else None
        if key is None:
            return loss
        score = (hv.Curve(val, "step", key, label=f"val {key}") * hv.Scatter(val, "step", key)).opts(
            hv.opts.Curve(color="seagreen", line_width=2), hv.opts.Scatter(color="seagreen", size=6)
        )
        score = score.opts(width=PLOT_WIDTH // 2 + 60, height=PLOT_HEIGHT - 40, title=f"validation {key}")
        return (loss + score).opts(shared_axes=False)

    @param.depends("version", "metric")
    def table_view(self):
        if self._data.error:
            return alert(
                f"Cannot read the store {escape_text(repr(self.shown()))}: {escape_text(self.scrub(self._data.error))}",
                "warning",
            )
        t = self.table()
        if t is None:
            return alert(
                f"No test-modality results ({RESULTS}) under {escape_text(repr(self.shown()))} yet. Evaluate a "
                f"checkpoint: `atomizer evaluate CKPT --modalities SET --out RUN/{RESULTS}`.",
                "info",
            )
        shown = t.round(2)
        ref = self.paper_table() if self.metric == PAPER_METRIC else None
        parts: list[Any] = [
            pn.pane.Markdown(f"**{escape_text(self.metric)}** (%) per model and test modality", margin=(0, 10)),
            pn.pane.DataFrame(shown, name="table", escape=True, sizing_mode="stretch_width"),
        ]
        if ref is not None:
            parts += [
                pn.pane.Markdown("Paper, Table 1 (macro mAP %, BigEarthNet; modality lists differ):", margin=(0, 10)),
                pn.pane.DataFrame(ref, escape=True, sizing_mode="stretch_width"),
            ]
        parts.append(pn.pane.HoloViews(self._bar_chart(), name="bars"))
        return pn.Column(*parts)

    @param.depends("version", "metric")
    def sweeps_view(self):
        panes: list[Any] = []
        for kind in ("gsd", "size"):
            f = sweep_file(kind)
            if self.results(kind) is None:
                panes.append(alert(f"No {'resolution' if kind == 'gsd' else 'size'} sweep ({f}) yet.", "info"))
            else:
                panes.append(pn.pane.HoloViews(self._sweep_chart(kind), name=f"sweep_{kind}"))
        return pn.Row(*panes)

    @param.depends("version", "run")
    def curves_view(self):
        if self.run is None:
            return alert(f"No runs under {escape_text(repr(self.shown()))}.", "info")
        m = self.training_curves()
        if m.empty or "kind" not in m or not (m["kind"] == "train").any():
            return alert(f"Run {escape_text(repr(self.run))} has no training steps logged yet.", "info")
        return pn.pane.HoloViews(self._curves_chart(), name="curves")

    @param.depends("version")
    def runs_view(self):
        df = self.runs()
        if self._data.error:
            return alert(
                f"Cannot read the store {escape_text(repr(self.shown()))}: {escape_text(self.scrub(self._data.error))}",
                "warning",
            )
        if df.empty:
            where = self._store
            why = (
                "does not exist"
                if where is None or not where.root.exists()
                else "holds only pretraining runs (see Pretraining)"
                if len(self.pretraining())
                else f"holds no run directory ({CONFIG} + {METRICS})"
            )
            return alert(
                f"No runs: {escape_text(repr(self.shown()))} {why}. Train one with `atomizer train CONFIG --out STORE/RUN`.",
                "info",
            )
        cols = [
            "run",
            "model",
            "preset",
            "dataset",
            "status",
            "step",
            "last_loss",
            "best_val_macro_map",
            "best_val_miou",
        ]
        show = df[[c for c in cols if c in df and not (c == "best_val_miou" and df[c].isna().all())]].copy()
        show["updated"] = pd.to_datetime(df["updated"], unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")
        return pn.pane.DataFrame(show.round(4), index=False, escape=True, name="runs", sizing_mode="stretch_width")

    # ------------------------------------------------------------------ pretraining
    def pretraining(self) -> pd.DataFrame:
        """One row per pretraining run of the store (:data:`atomizer.results.store.PRETRAINING_COLUMNS`): model,
        masking, mask_ratio, status, steps done, images, reconstruction loss at the start and at the end."""
        return self._data.pretraining

    def pretraining_curves(self) -> pd.DataFrame:
        """The logged losses (run, kind ``eval`` / ``train``, step, loss) of the chosen pretraining runs."""
        return self._data.pretraining_curve(self.pretrain_runs)

    def _pretraining_chart(self) -> hv.Overlay:
        curves = self.pretraining_curves()
        every = list(self.param.pretrain_runs.objects)
        palette = hv.Cycle("Category10").values
        layers: list[Any] = []
        for run in self.pretrain_runs:
            color = palette[every.index(run) % len(palette)] if run in every else "gray"
            g = curves[curves["run"] == run]
            train, evals = g[g["kind"] == "train"], g[g["kind"] == "eval"]
            if len(train):  # faint and out of the legend: the held-in batch's loss is the comparable one
                layers.append(hv.Curve(train, "step", ["loss", "run"]).opts(color=color, alpha=0.25, line_width=1))
            if len(evals):
                layers.append(
                    hv.Curve(evals, "step", ["loss", "run"], label=run).opts(
                        color=color, line_width=2.5, tools=["hover"]
                    )
                )
                layers.append(hv.Scatter(evals, "step", ["loss", "run"]).opts(color=color, size=5))
        loss = curves["loss"].to_numpy(dtype=float)
        logy = bool(len(loss)) and bool((loss > 0).all()) and float(loss.max() / loss.min()) > 3.0
        return hv.Overlay(layers).opts(
            frame_width=PLOT_WIDTH,  # the legend (run names) is beside the plot, which keeps its size
            frame_height=PLOT_HEIGHT - 40,
            logy=logy,
            xlabel="step",
            ylabel="reconstruction loss" + (" (log)" if logy else ""),
            title="reconstruction loss of the fixed held-in batch (lines, dots); training batches (faint)",
            legend_position="right",
            show_legend=True,
        )

    @param.depends("version")
    def pretraining_view(self):
        if self._data.error:
            return alert(
                f"Cannot read the store {escape_text(repr(self.shown()))}: {escape_text(self.scrub(self._data.error))}",
                "warning",
            )
        df = self.pretraining()
        if df.empty:
            return alert(
                f"No pretraining runs under {escape_text(repr(self.shown()))} (run folders of `atomizer pretrain "
                "CONFIG`, e.g. the disjoint notebook's `pretrain/<model>_fold-<k>/`).",
                "info",
            )
        show = df.drop(columns=["path"]).copy()
        show["updated"] = pd.to_datetime(df["updated"], unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")
        return pn.Column(
            pn.pane.Markdown(
                f"{len(df)} pretraining run(s); losses are the reconstruction loss of the fixed held-in batch "
                f"(from {SUMMARY} when the run finished, else the last logged)",
                margin=(0, 10),
            ),
            pn.pane.DataFrame(show.round(4), index=False, escape=True, name="pretraining", sizing_mode="stretch_width"),
        )

    @param.depends("version", "pretrain_runs")
    def pretraining_curves_view(self):
        if self._data.error or self.pretraining().empty:
            return pn.Column()  # the note above says why
        if not self.pretrain_runs:
            return alert("Choose pretraining runs above to draw their curves.", "info")
        if self.pretraining_curves().empty:
            return alert("The chosen pretraining runs have logged no loss yet.", "info")
        return pn.pane.HoloViews(self._pretraining_chart(), name="pretraining_curves")

    # ------------------------------------------------------------------ page
    def start_polling(self) -> None:
        """Poll the store every ``refresh_s`` seconds (served sessions only; stops with the session)."""
        if self._periodic is None:
            self._periodic = pn.state.add_periodic_callback(self._periodic_poll, period=self.refresh_s * 1000)

    def close(self) -> None:
        """Stop polling and drop this session's references to the store (its shared copy stays cached)."""
        if self._periodic is not None:
            self._periodic.stop()
            self._periodic = None
        self._data, self._stats = StoreState.empty(), {}

    @param.depends("refresh_s", watch=True)
    def _set_period(self) -> None:
        if self._periodic is not None:
            self._periodic.period = self.refresh_s * 1000

    def report_bytes(self) -> bytes:
        """The self-contained HTML report of the store (:meth:`ResultsStore.report`), built once per store
        state, reference and resamples for every session (a click does not recompute the bootstraps)."""
        store = self._store
        if store is None:
            raise OutsideRootsError(self._data.error or "no results store")
        reference, resamples = self.reference or "atomizer", self.resamples
        key = (str(store.root), self._signature, "report", reference, resamples)
        return TABLES.get(key, lambda: store.report(reference, resamples))

    def report_file(self) -> io.BytesIO:
        """The report as a file object, for the download button."""
        return io.BytesIO(self.report_bytes())

    def __panel__(self):
        w = pn.widgets
        button = w.Button(name="Refresh", button_type="primary", width=100)
        button.on_click(lambda _e: self.param.trigger("refresh"))
        download = w.FileDownload(
            callback=self.report_file, filename="atomizer_report.html", button_type="success", label="Report (HTML)",
            width=140,
        )  # fmt: skip
        controls = pn.Row(
            w.TextInput.from_param(self.param.root, name="Results store", width=360),
            w.Select.from_param(self.param.metric, name="Metric", width=160),
            w.Select.from_param(self.param.reference, name="Reference model", width=160),
            w.Select.from_param(self.param.run, name="Run (training curves)", width=280),
            pn.Column(pn.Spacer(height=18), button),
            pn.Column(pn.Spacer(height=18), download),
        )
        if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
            pn.state.onload(self.start_polling)
        return pn.Column(
            controls,
            "### Runs",
            pn.param.ParamMethod(self.runs_view, loading_indicator=True, lazy=True),
            "### Test modalities: repeats, confidence intervals, paired differences",
            pn.param.ParamMethod(self.repeats_view, loading_indicator=True, lazy=True),
            "### Generalisation landscape: score against distance from the training modalities",
            pn.param.ParamMethod(self.landscape_view, loading_indicator=True, lazy=True),
            "### Test modalities: every run",
            pn.param.ParamMethod(self.table_view, loading_indicator=True, lazy=True),
            "### Sweeps",
            pn.param.ParamMethod(self.sweeps_view, loading_indicator=True, lazy=True),
            "### Training curves",
            pn.param.ParamMethod(self.curves_view, loading_indicator=True, lazy=True),
            "### Pretraining: masked reconstruction",
            pn.param.ParamMethod(self.pretraining_view, loading_indicator=True, lazy=True),
            # the run names are labels of the checkboxes: text nodes, never HTML
            w.CheckBoxGroup.from_param(self.param.pretrain_runs, name="Pretraining runs (curves)", inline=True),
            pn.param.ParamMethod(self.pretraining_curves_view, loading_indicator=True, lazy=True),
            sizing_mode="stretch_width",
        )
