"""Pretraining runs in a results store: listed apart from the labelled runs, and the Results tab's Pretraining
section (table and reconstruction-loss curves).

The store is real: a tiny training run evaluated on a few embedded test tiles (``atomizer/seed-0_fold-0``, as
the disjoint notebook lays a store out) and a real three-step masked-atom pretraining run beside it
(``pretrain/atomizer_fold-0``). A second pretraining folder, named with HTML on purpose, holds the first run's
config and the first lines of its metrics log and no summary: a run still pretraining.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import panel as pn
import pytest
from bokeh.document import Document
from dashboard_support import (
    DASH_HOSTILE_RUN,
    atomizer_serve,
    evaluate_into,
    small_eurosat_root,
    train_tiny,
)

from atomizer.dashboard.results import ResultsView
from atomizer.engine.pretraining import PretrainConfig, pretrain
from atomizer.results.store import PRETRAINING_COLUMNS, ResultsStore, find_runs

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:No positive samples:UserWarning"),
]

CHROMIUM = Path("/usr/bin/chromium")
TRAINED = "atomizer/seed-0_fold-0"
PRETRAINED = "pretrain/atomizer_fold-0"
LIVE = f"pretrain/{DASH_HOSTILE_RUN}"
#: Lines of the finished run's metrics log the "running" copy holds: eval 0, train 1, eval 1, train 2.
LIVE_LINES = 4


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store with one labelled training run (evaluated), one finished pretraining run and one running."""
    base = tmp_path_factory.mktemp("pretrain_store")
    root = base / "store"
    ckpt = train_tiny(root / TRAINED)
    evaluate_into(root / TRAINED, ckpt, small_eurosat_root(base / "eurosat_small"))
    cfg = PretrainConfig.from_dict(
        {
            "steps": 3,
            "eval_every": 1,
            "eval_images": 4,
            "batch_size": 4,
            "sources": [{"dataset": "eurosat", "limit": 8}],
            "preset": "tiny",
            "device": "cpu",
            "out_dir": str(root / PRETRAINED),
        }
    )
    pretrain(cfg, progress=False)
    live = root / LIVE
    live.mkdir(parents=True)
    shutil.copy(root / PRETRAINED / "config.yaml", live / "config.yaml")
    lines = (root / PRETRAINED / "metrics.jsonl").read_text().splitlines(keepends=True)
    (live / "metrics.jsonl").write_text("".join(lines[:LIVE_LINES]))
    return root


def test_store_lists_pretraining_runs_apart_with_the_files_values(store):
    state = ResultsStore(store).read()
    assert state.error is None
    # the module-level listing sees every run folder; the store's labelled runs leave the pretraining ones out
    assert {PRETRAINED, LIVE} <= set(find_runs(store)["run"])
    assert state.run_labels() == [TRAINED]
    assert state.pretraining_labels() == sorted([PRETRAINED, LIVE])
    pre = state.pretraining.set_index("run")
    assert list(state.pretraining.columns) == PRETRAINING_COLUMNS
    # a finished run: its summary.json's values
    summary = json.loads((store / PRETRAINED / "summary.json").read_text())
    done = pre.loc[PRETRAINED]
    assert done["status"] == "done" and done["model"] == "atomizer" and done["masking"] == "random"
    assert done["mask_ratio"] == pytest.approx(0.9) and done["planned_steps"] == 3
    assert done["step"] == summary["step"] == 3 and done["images"] == summary["images"] == 8
    assert done["eval_loss_start"] == pytest.approx(summary["eval_loss_start"])
    assert done["eval_loss_end"] == pytest.approx(summary["eval_loss_end"])
    # a run still pretraining: its metrics log's (last step logged, first and last reconstruction loss)
    live = pre.loc[LIVE]
    records = _records(store / LIVE / "metrics.jsonl")
    evals = [r for r in records if r["kind"] == "eval"]
    assert live["status"] == "running" and live["step"] == max(r["step"] for r in records) == 2
    assert pd.isna(live["images"])  # known once the summary is written
    assert live["eval_loss_start"] == pytest.approx(evals[0]["loss"])
    assert live["eval_loss_end"] == pytest.approx(evals[-1]["loss"])
    # every logged loss of both runs, by kind
    curves = state.pretraining_curves
    logged = _records(store / PRETRAINED / "metrics.jsonl")
    done_curve = curves[curves["run"] == PRETRAINED]
    assert list(done_curve["step"]) == [r["step"] for r in logged]
    assert list(done_curve["kind"]) == [r["kind"] for r in logged]
    np.testing.assert_allclose(done_curve["loss"], [r["loss"] for r in logged])


def test_pretraining_folders_leave_the_labelled_runs_and_tables_unchanged(store, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(store / TRAINED, plain / TRAINED)
    with_pre, without = ResultsStore(store).read(), ResultsStore(plain).read()
    assert with_pre.error is None and without.error is None
    drop = ["path", "updated"]
    pd.testing.assert_frame_equal(with_pre.runs.drop(columns=drop), without.runs.drop(columns=drop))
    pd.testing.assert_frame_equal(with_pre.table("macro_map"), without.table("macro_map"))
    assert with_pre.metric_names() == without.metric_names()
    assert with_pre.train_modalities == without.train_modalities == "eurosat_train"
    # the view: the training-curves selector holds the labelled run only
    view = ResultsView(root=str(store))
    assert view.param.run.objects == [TRAINED] and view.run == TRAINED
    assert list(view.table().index) == ["atomizer"]


def test_pretraining_section_draws_one_curve_per_chosen_run(store):
    view = ResultsView(root=str(store))
    assert view.pretrain_runs == sorted([PRETRAINED, LIVE])  # every run drawn at first
    section = view.pretraining_view()
    assert [type(o).__name__ for o in section.objects] == ["Markdown", "DataFrame"]
    assert isinstance(view.pretraining_curves_view(), pn.pane.HoloViews)
    chart = view._pretraining_chart()
    eval_curves = {e.label: e for e in chart if type(e).__name__ == "Curve" and e.label}
    assert set(eval_curves) == {PRETRAINED, LIVE}  # one reconstruction-loss line per run
    for run in (PRETRAINED, LIVE):
        evals = [r for r in _records(store / run / "metrics.jsonl") if r["kind"] == "eval"]
        assert list(eval_curves[run].dimension_values("step")) == [r["step"] for r in evals]
        np.testing.assert_allclose(eval_curves[run].dimension_values("loss"), [r["loss"] for r in evals])
    faint = [e for e in chart if type(e).__name__ == "Curve" and not e.label]
    assert len(faint) == 2 and all(set(e.dimension_values("run")) < {PRETRAINED, LIVE} for e in faint)
    # choosing one run draws it alone; choosing none says so
    view.pretrain_runs = [PRETRAINED]
    assert {e.label for e in view._pretraining_chart() if e.label} == {PRETRAINED}
    view.pretrain_runs = []
    assert isinstance(view.pretraining_curves_view(), pn.pane.Alert)
    view.pretrain_runs = [LIVE]
    # the running run logs another reconstruction loss: a poll notices, the choice is kept, the table follows
    with open(store / LIVE / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"kind": "train", "step": 3, "loss": 0.25}) + "\n")
        fh.write(json.dumps({"kind": "eval", "step": 3, "loss": 0.125}) + "\n")
    try:
        assert view.poll() is True
        assert view.pretrain_runs == [LIVE]
        live = view.pretraining().set_index("run").loc[LIVE]
        assert live["step"] == 3 and live["eval_loss_end"] == pytest.approx(0.125)
        curve = next(e for e in view._pretraining_chart() if e.label == LIVE)
        assert list(curve.dimension_values("step")) == [0, 1, 3]
    finally:  # the module's store as it was
        lines = (store / PRETRAINED / "metrics.jsonl").read_text().splitlines(keepends=True)
        (store / LIVE / "metrics.jsonl").write_text("".join(lines[:LIVE_LINES]))


def test_hostile_pretraining_run_name_is_shown_as_text(store):
    view = ResultsView(root=str(store))
    table = next(o for o in view.pretraining_view().objects if o.name == "pretraining")
    page = html.unescape(table.get_root(Document()).text)  # the HTML the browser gets
    assert html.escape(LIVE) in page and DASH_HOSTILE_RUN not in page
    assert str(store) not in page  # runs are named relative to the store, never by the server path
    assert view.__panel__() is not None  # the whole tab builds with the section


def test_store_without_pretraining_runs_shows_the_note(store, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(store / TRAINED, plain / TRAINED)
    view = ResultsView(root=str(plain))
    assert view.pretraining().empty and view.param.pretrain_runs.objects == [] and view.pretrain_runs == []
    note = view.pretraining_view()
    assert isinstance(note, pn.pane.Alert) and note.object.startswith("No pretraining runs under")
    assert isinstance(view.pretraining_curves_view(), pn.Column) and not view.pretraining_curves_view().objects
    assert view.run == TRAINED and view.table() is not None


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (install it with `make chromium`)")
def test_results_tab_renders_the_pretraining_section(page, store, tmp_path):
    with atomizer_serve("--results", store, "--no-warm", log=tmp_path / "serve.log") as (port, ready):
        ready()
        page.goto(f"http://localhost:{port}/")
        page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)
        tab = page.locator(".bk-tab", has_text=re.compile(r"^Results$"))
        tab.wait_for(timeout=120_000)
        tab.click()
        page.get_by_text("Pretraining: masked reconstruction").wait_for(timeout=60_000)
        page.get_by_role("cell", name=PRETRAINED, exact=True).wait_for(timeout=60_000)
        assert page.get_by_role("cell", name=LIVE, exact=True).count() == 1  # the hostile name, as text
        assert page.evaluate("() => document.querySelectorAll('img[src=\"x\"]').length") == 0
        assert page.evaluate("() => window.__xss") is None  # no injected handler ran
