"""The dashboards driven from Python: set parameters, check the data each view derives.

Uses a real tiny checkpoint (two training steps on the embedded EuroSAT slice) and a results store
evaluated from it; no browser (see test_dashboard_browser.py).
"""

from __future__ import annotations

import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import panel as pn
import pytest
import torch
from dashboard_support import cv_store, dash_hostile_store, evaluate_into, small_eurosat_root, train_tiny

from atomizer.atoms.encodings import DEFAULT_ANCHORS, positional_grid, rbf_spectral_encoding
from atomizer.dashboard.app import TAB_TITLES, build_app
from atomizer.dashboard.attention import AttentionMaps, embedded_items
from atomizer.dashboard.positional import PositionalEncodings
from atomizer.dashboard.results import PAPER_LABEL, ResultsView
from atomizer.dashboard.spectral import SpectralCoverage
from atomizer.data.bands import get_sensor
from atomizer.engine.evaluation import results_dataset, save_results, sweep_modalities
from atomizer.experiments import run_landscape, run_path
from atomizer.results.paper import PAPER_TABLE1

REPO_ROOT = Path(__file__).resolve().parents[2]
# evaluating on five tiles leaves classes without positives; torchmetrics says so for each of them
pytestmark = pytest.mark.filterwarnings("ignore:No positive samples:UserWarning")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    """A tiny trained run with test-modality results: {"store", "run", "checkpoint"}."""
    store = tmp_path_factory.mktemp("dashboard_store")
    run = store / "run"
    ckpt = train_tiny(run)
    data_root = small_eurosat_root(tmp_path_factory.mktemp("eurosat_small"))
    evaluate_into(run, ckpt, data_root)
    return {"store": store, "run": run, "checkpoint": ckpt}


# ------------------------------------------------------------------------------------------ spectral


def test_custom_band_width_changes_encoding_and_lights_more_anchors():
    app = SpectralCoverage(center_nm=800.0, width_nm=10.0)
    narrow = app.custom_encoding()
    assert narrow.shape == (len(DEFAULT_ANCHORS),)
    app.width_nm = 300.0
    wide = app.custom_encoding()
    assert not np.allclose(narrow, wide)
    assert app.lit_anchors(wide) > app.lit_anchors(narrow)
    assert np.linalg.norm(wide) == pytest.approx(1.0, abs=1e-5)
    # the bars of the custom band follow the parameters
    bars = app.custom_bars()
    np.testing.assert_allclose(bars.dimension_values("custom_response"), wide, atol=1e-6)
    # and equal the library's code (first K channels)
    lib = rbf_spectral_encoding(torch.tensor([800.0]), torch.tensor([300.0]))[0, : len(DEFAULT_ANCHORS)]
    np.testing.assert_allclose(wide, lib.numpy(), atol=1e-6)


def test_similarity_matrix_same_sensor_has_unit_diagonal():
    app = SpectralCoverage(sensor_a="sentinel2", sensor_b="sentinel2")
    sim = app.similarity()
    names = get_sensor("sentinel2").band_names
    assert list(sim.index) == names and list(sim.columns) == names
    np.testing.assert_allclose(np.diag(sim.values), 1.0, atol=1e-6)
    np.testing.assert_allclose(sim.values, sim.values.T, atol=1e-6)
    # across sensors: Landsat 8's red band is most similar to Sentinel-2's red band
    app.sensor_b = "landsat8"
    cross = app.similarity()
    assert list(cross.columns)[:7] == ["B1", "B2", "B3", "B4", "B5", "B6", "B7"]
    assert cross.loc["B04"].idxmax() == "B4"
    assert app.similarity_plot().data.shape[0] == cross.size


def test_band_table_selected_band_and_sidecar(tmp_path):
    app = SpectralCoverage(sensors=["sentinel2"])
    t = app.band_table()
    assert set(t["sensor"]) == {"sentinel2"} and len(t) == 13
    np.testing.assert_allclose(t["hi_nm"] - t["lo_nm"], t["bandwidth_nm"])
    app.band = "sentinel2 B12"
    b12 = get_sensor("sentinel2").band("B12")
    np.testing.assert_allclose(app.band_encoding(), app.encode(b12.wavelength_nm, b12.bandwidth_nm))
    side = tmp_path / "cam.yaml"
    side.write_text("name: cam\nbands:\n  - {name: nir, wavelength_nm: 860, bandwidth_nm: 40, gsd_m: 3}\n")
    app.sidecar = str(side)
    assert app.sidecar_error is None
    assert "cam nir" in list(app.band_table()["label"])
    assert "cam" in app.param.sensor_a.objects
    assert app.similarity("cam", "sentinel2").loc["nir"].idxmax() == "B8A"
    app.sidecar = str(tmp_path / "missing.yaml")
    assert app.sidecar_error and "missing.yaml" in app.sidecar_error
    assert isinstance(app._messages(), pn.pane.Alert)
    assert "cam nir" not in list(app.band_table()["label"])


# ------------------------------------------------------------------------------------------ positional


def test_positional_image_shape_follows_size_and_changes_with_gsd():
    app = PositionalEncodings(size_px=40, gsd_m=10.0, channel=3, axis="x")
    img10 = app.code_image()
    assert img10.shape == (40, 40)
    ref = positional_grid(40, 10.0, app.num_bands, app.max_freq, app.ref_m)[:, :, 0, 3].numpy()
    np.testing.assert_allclose(img10, ref)
    app.gsd_m = 30.0
    img30 = app.code_image()
    assert img30.shape == (40, 40) and not np.allclose(img10, img30)
    app.size_px = 17
    assert app.code_image().shape == (17, 17)
    assert app.image_plot().dimension_values(2, flat=False).shape == (17, 17)
    # the x code is constant down columns, the y code along rows
    assert np.allclose(app.code_image(), app.code_image()[0:1, :])
    app.axis = "y"
    assert np.allclose(app.code_image(), app.code_image()[:, 0:1])


def test_channel_bounds_follow_code_dim_and_ground_point_snaps_to_its_pixel():
    app = PositionalEncodings(num_bands=8)
    assert app.param.channel.bounds == (0, 16)
    app.channel = 16
    app.num_bands = 4
    assert app.param.channel.bounds == (0, 8) and app.channel == 8
    app.gsd_list = [10, 20, 60]
    df = app.ground_point_codes()
    assert sorted(df["gsd_m"].unique()) == [10.0, 20.0, 60.0]
    assert (df.groupby("gsd_m")["channel"].count() == app.code_dim).all()
    for g, d in df.groupby("gsd_m"):
        assert abs(d["pixel_offset_m"].iloc[0] - app.point_m) <= g / 2 + 1e-6
    ch = app.fourier_channels()
    assert app.channel in set(ch["channel"]) and ch["offset_m"].max() == pytest.approx(app.extent_m() / 2)


# ------------------------------------------------------------------------------------------ attention


def _check_maps(app: AttentionMaps) -> None:
    res = app.result()
    for block in range(len(res.weights)):
        app.block = block
        maps = app.band_maps()
        assert set(maps) == set(res.bands)
        for band, m in maps.items():
            assert m.shape[1:] == res.image[band].shape, band  # the band's native grid
        per_latent = sum(m.sum(axis=(1, 2)) for m in maps.values())
        np.testing.assert_allclose(per_latent, 1.0, atol=1e-4)
        np.testing.assert_allclose(app.latent_band_mass().sum(axis=1), 1.0, atol=1e-4)
    assert app.band_mass()["mass"].sum() == pytest.approx(1.0, abs=1e-4)
    assert app.pixel_map().sum() == pytest.approx(1.0, abs=1e-4)


def test_attention_maps_on_native_grids_sum_to_one(tiny_run):
    app = AttentionMaps(checkpoint=str(tiny_run["checkpoint"]))
    assert app.param.latent.bounds == (0, 15) and app.param.block.bounds == (0, 1)
    assert app.input_path() and "eurosat" in app.input_path()  # the checkpoint's dataset
    _check_maps(app)
    app.latent = 5
    mass5 = app.band_mass()
    assert list(mass5["wavelength_nm"]) == sorted(mass5["wavelength_nm"])
    view = app.main_view()
    assert not isinstance(view, pn.pane.Alert)
    # a BigEarthNet patch: bands on three native grids (10, 20, 60 m)
    ben = next(v for k, v in embedded_items().items() if k.startswith("BigEarthNet"))
    app.source = ben
    maps = app.band_maps()
    assert maps["B02"].shape[1:] == (120, 120) and maps["B05"].shape[1:] == (60, 60)
    assert maps["B01"].shape[1:] == (20, 20)
    _check_maps(app)
    assert app.pixel_map().shape == (120, 120)
    # a test modality of the checkpoint: a genuinely coarser image
    app.modality = next(m for m in app.param.modality.objects if m.startswith("eurosat_test T2"))
    maps = app.band_maps()
    assert set(maps) == {"B02", "B03", "B04", "B08", "B11", "B12"}
    assert all(m.shape[1:] == (16, 16) for m in maps.values())  # 16 px @ 40 m, averaged from 10 m
    _check_maps(app)


def test_attention_bad_inputs_show_an_alert(tiny_run, tmp_path):
    missing = AttentionMaps(checkpoint=str(tmp_path / "nope.pt"))
    view = missing.main_view()
    assert isinstance(view, pn.pane.Alert) and "nope.pt" in view.object
    missing.__panel__()  # builds without raising
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert isinstance(AttentionMaps(checkpoint=str(garbage)).main_view(), pn.pane.Alert)
    bad_input = tmp_path / "broken.tif"
    bad_input.write_bytes(b"not a tiff")
    app = AttentionMaps(checkpoint=str(tiny_run["checkpoint"]), path=str(bad_input))
    view = app.main_view()
    assert isinstance(view, pn.pane.Alert) and "broken.tif" in view.object
    assert app.status() is not None
    none = AttentionMaps().main_view()
    assert isinstance(none[0], pn.pane.Alert) and none[0].alert_type == "info"


# ------------------------------------------------------------------------------------------ results


def test_results_view_shows_model_and_six_modalities(tiny_run):
    view = ResultsView(root=str(tiny_run["store"]))
    runs = view.runs()
    assert list(runs["run"]) == ["run"] and runs["status"].iloc[0] == "done"
    table = view.table()
    assert list(table.index) == ["atomizer"]
    assert list(table.columns) == ["T1", "T2", "T3", "T4", "T5", "T6"]
    assert view.metric == "macro_map" and "top1" in view.param.metric.objects
    chart = {type(e).__name__: e for e in view._bar_chart()}
    assert len(chart["Bars"]) == 6
    assert set(chart["Bars"].dimension_values("modality")) == {"T1", "T2", "T3", "T4", "T5", "T6"}
    np.testing.assert_allclose(chart["Scatter"].dimension_values("score"), PAPER_TABLE1["atomizer"])
    assert chart["Scatter"].label == PAPER_LABEL
    assert not view.training_curves().empty
    assert not isinstance(view.table_view(), pn.pane.Alert)
    sweeps = view.sweeps_view()
    assert all(isinstance(p, pn.pane.Alert) for p in sweeps)  # no sweep files yet: empty states
    view.metric = "top1"
    assert view.table().shape == (1, 6)
    assert "Scatter" not in {type(e).__name__ for e in view._bar_chart()}  # paper marks are macro mAP only


def test_results_view_sweeps_refresh_and_empty_store(tiny_run, tmp_path):
    store = tmp_path / "store"
    run = store / "live"
    run.mkdir(parents=True)
    for f in ("config.yaml", "metrics.jsonl", "results.nc"):
        shutil.copy(tiny_run["run"] / f, run / f)
    view = ResultsView(root=str(store))
    assert view.poll() is False
    steps = int(view.runs()["step"].iloc[0])
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(f'{{"kind": "train", "step": {steps + 1}, "loss": 0.5}}\n')
    assert view.poll() is True
    assert int(view.runs()["step"].iloc[0]) == steps + 1
    # a resolution sweep file appears: its chart carries the paper's reference curve
    mods = sweep_modalities("gsd", 64, 10.0, ["B02", "B03", "B04"], [10, 20, 40])
    save_results(
        results_dataset(np.array([[[30.0], [25.0], [20.0]]]), ["atomizer"], mods, ["macro_map"]), run / "sweep_gsd.nc"
    )
    view.param.trigger("refresh")
    chart = view._sweep_chart("gsd")
    labels = {e.label for e in chart}
    assert PAPER_LABEL in labels and "atomizer" in labels
    assert list(view.scores("gsd")["gsd_m"]) == [10.0, 20.0, 40.0]
    empty = ResultsView(root=str(tmp_path / "nothing"))
    assert empty.runs().empty and empty.table() is None
    assert isinstance(empty.runs_view(), pn.pane.Alert)
    assert isinstance(empty.table_view(), pn.pane.Alert)
    assert isinstance(empty.curves_view(), pn.pane.Alert)


def test_results_view_repeats_cis_and_paired_differences(tmp_path):
    view = ResultsView(root=str(cv_store(tmp_path / "cv")), resamples=200)
    view.__panel__()  # the whole page builds (runs without validation records included)
    assert not isinstance(view.curves_view(), pn.pane.Alert)
    assert view.reference == "atomizer" and set(view.param.reference.objects) == {"atomizer", "resnet"}
    s = view.summary()
    assert set(s["model"]) == {"atomizer", "resnet"} and (s["seeds"] == 2).all() and len(s) == 12
    assert (s["ci_low"] < s["ci_high"]).all()
    chart = {type(e).__name__: e for e in view._ci_chart()}
    assert len(chart["Bars"]) == 12 and len(chart["ErrorBars"]) == 12
    assert len(view._ci_chart().get(2)) == 24  # one point per seed per bar
    d = view.differences()
    assert set(d["other"]) == {"resnet"} and len(d) == 6
    col = view.repeats_view()
    names = {getattr(o, "name", "") for o in col.objects}
    assert {"ci_table", "ci_bars", "who_wins", "differences", "verdict"} <= names
    verdict = next(o for o in col.objects if getattr(o, "name", "") == "verdict").object
    assert "against resnet, atomizer is" in verdict
    view.reference = "resnet"  # the paired view follows the chosen reference
    assert set(view.differences()["other"]) == {"atomizer"}
    assert np.allclose(view.differences()["difference"].values, -d["difference"].values)
    empty = ResultsView(root=str(tmp_path / "none"))
    assert empty.summary() is None and isinstance(empty.repeats_view(), pn.pane.Alert)
    assert isinstance(view.landscape_view(), pn.pane.Alert)  # not evaluated on the landscape yet
    for model in ("atomizer", "resnet"):
        run_landscape(
            run_path(tmp_path / "cv", model, 0, 0), device="cpu", spec={"gsds": [40], "size_fractions": [0.5]}
        )
    assert view.poll() is True  # the new landscape files are noticed
    land = view.landscape()
    assert set(land["kind"]) == {"train", "geometry", "bands"} and set(land["model"]) == {"atomizer", "resnet"}
    assert (land[land["kind"] == "train"]["distance_total"] == 0).all()
    layout = view._landscape_chart()
    assert len(layout) == 2  # geometry and band panels
    assert not isinstance(view.landscape_view(), pn.pane.Alert)


# ------------------------------------------------------------------------------------------ app, entry, CLI


def test_build_app_has_the_five_tabs(tiny_run):
    tabs = build_app(results_root=tiny_run["store"], checkpoint=tiny_run["checkpoint"])
    assert isinstance(tabs, pn.Tabs)
    assert (
        list(tabs._names)
        == list(TAB_TITLES)
        == ["Spectral coverage", "Positional encodings", "Attention maps", "Results", "Maps"]
    )
    # every tab reads under one set of roots (the store, the checkpoint's folder, the embedded data) and names
    # paths relative to them, never as server paths
    roots = tabs.roots
    assert all(app.roots is roots for name, app in tabs.apps.items() if name != "positional")
    ckpt = tabs.apps["attention"].checkpoint
    assert not Path(ckpt).is_absolute() and roots.resolve(ckpt) == tiny_run["checkpoint"].resolve()
    assert tabs.apps["maps"].checkpoint == ckpt and tabs.apps["maps"].scene
    assert tabs.apps["results"].root == roots.display(tiny_run["store"]) and tabs.apps["results"].table() is not None
    with pytest.raises(ValueError, match="is not a folder"):
        build_app(results_root=tiny_run["store"], roots=[tiny_run["checkpoint"]])


def test_results_polls_share_one_scan_and_the_report_is_cached(tmp_path):
    """The periodic polls of many sessions scan a store once per period between them; the report download is
    built once per store state (a second click, or another session, gets the same bytes without rebuilding)."""
    store = dash_hostile_store(tmp_path / "store")  # two runs with per-image predictions
    run = store / "resnet"
    a, b = ResultsView(root=str(store), resamples=100), ResultsView(root=str(store), resamples=100)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "train", "step": 99, "loss": 0.5}\n')
    assert b.poll(max_age_s=3600) is False  # the signature another session just computed is reused: no rescan
    assert b.poll() is True and a.poll() is True  # a fresh scan sees the change
    report = a.report_bytes()
    assert b"<html" in report[:500].lower()
    assert a.report_bytes() is report and b.report_bytes() is report  # cached per store state
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "train", "step": 100, "loss": 0.4}\n')
    assert a.poll() is True and a.report_bytes() is not report  # a new state, a new report


def test_sessions_share_models_store_and_statistics_and_free_their_own(tiny_run):
    """Two sessions of one server: one model object, one store read, one statistics table; a closed
    session drops its references (the shared copies stay in the bounded caches)."""
    a = build_app(results_root=tiny_run["store"], checkpoint=tiny_run["checkpoint"])
    b = build_app(results_root=tiny_run["store"], checkpoint=tiny_run["checkpoint"])
    ra, rb = a.apps["results"], b.apps["results"]
    assert ra._data is rb._data  # read once
    assert a.apps["attention"]._model_entry()[0] is b.apps["attention"]._model_entry()[0]
    assert a.apps["attention"].result() is b.apps["attention"].result()
    if ra.predictions() is not None:
        assert ra.summary() is rb.summary()
    ra.close()
    a.apps["attention"].close()
    assert ra._data is not rb._data and ra._data.runs.empty and a.apps["attention"]._models == {}
    assert rb.table() is not None  # the other session is untouched


def test_shared_cache_computes_once_under_concurrency_and_stays_bounded():
    import threading
    import time

    from atomizer.dashboard._common import SharedCache

    cache, calls = SharedCache(maxsize=2), []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return object()

    got: list = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("k", slow))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(g) for g in got}) == 1  # six sessions, one computation
    cache.get("x", object)
    cache.get("y", object)
    assert len(cache) == 2 and cache.get("k", lambda: "again") == "again"  # least recently used went out
    with pytest.raises(ZeroDivisionError):
        cache.get("bad", lambda: 1 / 0)
    assert cache.get("bad", lambda: 5) == 5  # a failure is not cached


def test_servable_entry_reads_its_arguments(tiny_run, monkeypatch):
    monkeypatch.setattr(
        sys,
        "argv",
        ["dashboards/app.py", "--results", str(tiny_run["store"]), "--checkpoint", str(tiny_run["checkpoint"])],
    )
    ns = runpy.run_path(str(REPO_ROOT / "dashboards" / "app.py"))
    assert ns["_args"].results == str(tiny_run["store"])
    assert ns["_args"].checkpoint == str(tiny_run["checkpoint"])


def test_serve_subcommand_is_registered():
    from atomizer import cli

    args = cli.build_parser().parse_args(["serve", "--port", "5999", "--results", "x", "--no-show"])
    assert args.command == "serve" and args.port == 5999 and args.results == "x" and args.show is False
    assert args.checkpoint is None
    assert cli.build_parser().parse_args(["serve"]).show is True
    assert cli.build_parser().parse_args(["serve"]).warm is True and args.threads == 4


# ------------------------------------------------------------------------------------------ maps


def test_map_view_builds_in_background_and_draws_classes(tiny_run, tmp_path, majortom_product_dir):
    """The Maps tab runs `predict_map` in a worker thread on a real scene crop, caches the GeoTIFF, and draws
    the chosen class's probability over the RGB composite with the window grid and hover probabilities."""
    import holoviews as hv

    from atomizer.dashboard.maps import ARGMAX, MapView
    from tests.data import product_fixtures as fx

    scene = tmp_path / "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419"
    for band, _gsd in fx.NATIVE.items():
        data, prof = fx.crop(majortom_product_dir, band, extent_m=1280)
        fx.write_raster(scene / f"{band}.tif", data, prof)
    view = MapView(checkpoint=str(tiny_run["checkpoint"]), scene=str(scene), cache_dir=str(tmp_path / "maps"))
    assert view.plot().__class__.__name__ == "Alert"  # nothing built yet: a message, not an error
    redraws = []  # what the plot depends on: one batch of changes when the map arrives, so one redraw
    view.param.watch(lambda *events: redraws.append(events), ["layer", "status"])
    path = view.build(blocking=True)
    assert len(redraws) == 2  # "Building the map...", then the map (its layer list, layer and status at once)
    assert path is not None and path.exists() and path.parent == tmp_path / "maps", view.status
    assert view.status.startswith("Map:") and not view.progress.visible
    classes = view.param.layer.objects[1:]
    assert len(classes) == 10 and view.layer == ARGMAX
    overlay = view.plot()
    assert isinstance(overlay, hv.Overlay)
    kinds = [type(el).__name__ for el in overlay]
    assert kinds == ["RGB", "Image", "Path"]
    assert len(overlay.Path.I.data) == 4  # 1,280 m scene, 640 m windows: 2 x 2
    view.layer = classes[3]
    img = view.plot().Image.I
    values = img.dimension_values(f"p({classes[3]})")
    assert np.nanmax(values) <= 1.0 and np.nanmin(values) >= 0.0
    assert f"p({classes[0]})" in [d.name for d in img.vdims]  # every class under the cursor
    # a second build of the same inputs loads the cached map without recomputing
    mtime = path.stat().st_mtime_ns
    assert view.build(blocking=True) == path and path.stat().st_mtime_ns == mtime
    # a bad scene is a message in the page
    view.scene = str(tmp_path / "nowhere")
    view.build(blocking=True)
    assert "no such file" in view.status
