"""Attacks on the dashboard's Attention and Maps tabs (issue 23), each asserting that the attack fails.

Real files throughout: a checkpoint of a real tiny Atomizer (built, not trained: the weights do not matter
here), a real scene crop of the embedded Major-TOM product written as GeoTIFFs, real maps written by the
real ``predict_map``. Several tests WRITE HOSTILE FILES on purpose, all under ``tmp_path``: a checkpoint
whose pickle would write a marker file when unpickled, a checkpoint whose class names are HTML, a modality
set whose modality name is HTML, a scene folder named with HTML.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import panel as pn
import pytest
import torch

from atomizer.dashboard._common import Roots
from atomizer.dashboard.attention import AttentionMaps
from atomizer.dashboard.maps import _POOL, MAP_WORKERS, MapBuildCancelled, MapView, builds_started, evict
from atomizer.models.checkpoint import FORMAT, save_checkpoint
from atomizer.models.registry import build_model

HOSTILE = '<img src=x onerror="alert(1)">'
EUROSAT_CLASSES = [
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
]  # fmt: skip


def maps_checkpoint(path: Path, classes: list[str] | None = None, **extra) -> Path:
    """A real tiny Atomizer checkpoint (untrained) with EuroSAT's training modalities."""
    torch.manual_seed(0)
    model = build_model("atomizer", "tiny", num_classes=10)
    meta = {"classes": classes or EUROSAT_CLASSES, "multilabel": False, "train_modalities": "eurosat_train"}
    return save_checkpoint(path, model, {**meta, **extra})


def maps_hostile_checkpoint(path: Path, marker: Path) -> Path:
    """HOSTILE: a torch file whose pickle writes ``marker`` when unpickled with weights_only=False."""

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('pwned')",))

    torch.save({"format": FORMAT, "arch": "atomizer", "extra": {"x": Payload()}}, path)
    return path


def maps_scene(folder: Path, product: Path, extent_m: int = 1280) -> Path:
    """A real 1,280 m crop of the embedded Major-TOM product, one GeoTIFF per band."""
    from tests.data import product_fixtures as fx

    for band in fx.NATIVE:
        data, prof = fx.crop(product, band, extent_m=extent_m)
        fx.write_raster(folder / f"{band}.tif", data, prof)
    return folder


def maps_html_texts(obj) -> list[str]:
    """The HTML/Markdown text of every pane under ``obj`` (Alert, Markdown, HTML; a DataFrame as rendered)."""
    out = []
    if isinstance(obj, pn.pane.DataFrame):
        out.append(obj.object.to_html(escape=obj.escape, index=obj.index))
    elif isinstance(obj, pn.pane.Markdown | pn.pane.HTML | pn.pane.Alert) and isinstance(obj.object, str):
        out.append(obj.object)
    for child in getattr(obj, "objects", []) or []:
        out.extend(maps_html_texts(child))
    return out


@pytest.fixture
def maps_served(tmp_path, majortom_product_dir):
    """What a served dashboard was started with: one root holding a checkpoint and a scene; the map cache
    elsewhere under tmp_path (never the checkout)."""
    root = tmp_path / "served"
    ckpt = maps_checkpoint(root / "runs" / "ckpt.pt")
    scene = maps_scene(root / "scenes" / "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419",
                       majortom_product_dir)  # fmt: skip
    return {
        "root": root,
        "roots": Roots({"served": root}),
        "checkpoint": ckpt,
        "scene": scene,
        "cache": tmp_path / "map_cache",
        "outside": tmp_path / "outside",
    }


def maps_view(s: dict, **params) -> MapView:
    params = {"checkpoint": "served/runs/ckpt.pt", "scene": f"served/scenes/{s['scene'].name}", **params}
    return MapView(roots=s["roots"], cache_dir=s["cache"], **params)


# ------------------------------------------------------------------------------------ code from checkpoints


def test_hostile_checkpoint_in_attention_tab_runs_nothing(maps_served):
    marker = maps_served["root"] / "attention_marker.txt"
    maps_hostile_checkpoint(maps_served["root"] / "evil.pt", marker)
    app = AttentionMaps(checkpoint="served/evil.pt", roots=maps_served["roots"])
    view = app.main_view()
    assert not marker.exists()  # the pickle did not run
    assert isinstance(view, pn.pane.Alert) and view.alert_type == "danger"
    assert "\n" not in view.object and str(maps_served["root"]) not in view.object
    assert "<" not in view.object.replace("&lt;", "")  # one escaped line


def test_hostile_checkpoint_in_maps_tab_runs_nothing(maps_served):
    marker = maps_served["root"] / "maps_marker.txt"
    maps_hostile_checkpoint(maps_served["root"] / "evil.pt", marker)
    view = maps_view(maps_served, checkpoint="served/evil.pt")
    assert view.build(blocking=True) is None
    assert not marker.exists()  # the pickle did not run
    assert "checkpoint" in view.status and "\n" not in view.status
    assert str(maps_served["root"]) not in view.status and "<" not in view.status


# ------------------------------------------------------------------------------------ paths outside the roots


def test_attention_tab_refuses_paths_outside_its_roots(maps_served, eurosat_paths):
    outside = maps_served["outside"]
    outside.mkdir()
    ckpt = maps_checkpoint(outside / "elsewhere.pt")
    app = AttentionMaps(checkpoint=str(ckpt), roots=maps_served["roots"])
    view = app.main_view()
    assert isinstance(view, pn.pane.Alert) and "not under the folders this dashboard serves" in view.object
    assert str(outside) not in view.object and "/" + outside.name not in view.object
    # the input and the sidecar boxes too, relative escapes included
    inside = AttentionMaps(checkpoint="served/runs/ckpt.pt", roots=maps_served["roots"])
    for field, value in (("path", str(eurosat_paths[0])), ("path", "../outside"), ("sensor", "/etc/passwd.yaml")):
        inside.param.update({"path": "", "sensor": "", field: value})
        shown = inside.main_view()
        assert isinstance(shown, pn.pane.Alert) and "not under the folders" in shown.object, (field, value)
        assert str(eurosat_paths[0].parent) not in shown.object and "/etc" not in shown.object


def test_maps_tab_refuses_paths_outside_its_roots(maps_served):
    outside = maps_served["outside"]
    outside.mkdir()
    before = builds_started()
    for params in ({"checkpoint": str(maps_checkpoint(outside / "elsewhere.pt"))}, {"scene": str(outside)},
                   {"scene": "served/../outside"}):  # fmt: skip
        view = maps_view(maps_served, **params)
        assert view.build(blocking=True) is None
        assert "not under the folders this dashboard serves" in view.status, params
        assert str(outside) not in view.status and str(maps_served["root"]) not in view.status
    assert builds_started() == before  # nothing was built: no file in the cache either
    assert not maps_served["cache"].exists() or not any(maps_served["cache"].iterdir())


# ------------------------------------------------------------------------------------ stored XSS


def test_hostile_class_and_modality_names_are_escaped_in_attention_panes(maps_served, eurosat_paths):
    root = maps_served["root"]
    mods = root / "mods.yaml"  # HOSTILE: a modality set whose modality name is HTML
    mods.write_text(
        "modalities:\n"
        f"  - name: '{HOSTILE}'\n    size_px: 32\n    gsd_m: 20\n    bands: [B02, B03, B04, B08]\n"
        "source: {size_px: 64, gsd_m: 10}\n"
    )
    classes = [HOSTILE, *EUROSAT_CLASSES[1:]]  # HOSTILE: a class name that is HTML
    maps_checkpoint(root / "xss.pt", classes=classes, train_modalities="served/mods.yaml")
    shutil.copy(eurosat_paths[0], root / "tile.tif")
    app = AttentionMaps(checkpoint="served/xss.pt", roots=maps_served["roots"], path="served/tile.tif")
    hostile = [m for m in app.param.modality.objects if HOSTILE in m]
    assert hostile, app.param.modality.objects  # offered (a Select shows it as text)
    app.modality = hostile[0]
    panes = maps_html_texts(app.main_view())
    text = "\n".join(panes)
    assert "&lt;img src=x onerror=" in text  # the modality name, escaped, in the info line
    assert "<img" not in text
    # the class name reaches the top-classes table escaped (the untrained model may rank it anywhere)
    app.param.update(modality="native")
    probs = app.result().probabilities()
    assert HOSTILE in probs.index
    table = maps_html_texts(app.main_view())
    assert all("<img" not in t for t in table)


def test_hostile_scene_name_is_escaped_in_maps_status(maps_served):
    bad = maps_served["root"] / "scenes" / HOSTILE.replace("/", "")  # HOSTILE: a scene folder named with HTML
    bad.mkdir(parents=True)
    view = maps_view(maps_served, scene=f"served/scenes/{bad.name}")
    view.build(blocking=True)
    assert view.status and "<img" not in view.status and "&lt;" in view.status
    panes = maps_html_texts(view.plot())
    assert panes and all("<img" not in t for t in panes)


# ------------------------------------------------------------------------------------ bounded work


def test_stride_of_one_pixel_is_refused_with_the_count_and_the_cap(maps_served):
    before = builds_started()
    view = maps_view(maps_served, stride_m=10.0)  # 1 px of the 10 m grid
    assert view.build(blocking=True) is None
    assert "3,969 windows" in view.status and "cap of 81" in view.status, view.status
    assert "\n" not in view.status and builds_started() == before
    assert not list(maps_served["cache"].glob("map_*.tif"))
    # and the absolute cap: 4 windows allowed by the scene, 3 by max_windows
    view = maps_view(maps_served, max_windows=3)
    assert view.build(blocking=True) is None and "4 windows" in view.status and "cap of 3" in view.status


def _maps_fill_pool() -> threading.Event:
    """Occupy every worker of the map pool until the returned event is set (so what is submitted next waits)."""
    release, started = threading.Event(), threading.Barrier(MAP_WORKERS + 1)

    def hold() -> None:
        started.wait()
        release.wait()

    for _ in range(MAP_WORKERS):
        _POOL.submit(hold)
    started.wait()
    return release


def test_two_sessions_asking_for_one_map_share_one_build(maps_served):
    a, b = maps_view(maps_served), maps_view(maps_served)
    before = builds_started()
    release = _maps_fill_pool()
    try:
        a.build()
        b.build()
        assert a._build is b._build and len(a._build.views) == 2  # one build followed by both sessions
    finally:
        release.set()
    a._build.future.result(timeout=120)
    a._poll(), b._poll()
    assert builds_started() == before + 1
    assert a.map_path == b.map_path and a.map_path.exists()
    assert a.map_path.parent == maps_served["cache"].resolve()
    assert not list(maps_served["cache"].glob("*.partial.tif"))


def test_closing_the_session_cancels_its_build(maps_served):
    # before it starts: queued behind a full pool, it never runs
    before = builds_started()
    release = _maps_fill_pool()
    try:
        queued = maps_view(maps_served)
        queued.build()
        queued.close()
    finally:
        release.set()
    assert queued._build.future.cancelled() and builds_started() == before

    # while it runs: the session closes after the first row of windows; the build stops there
    class ClosingView(MapView):
        def _on_build_progress(self, done: int, total: int) -> None:
            super()._on_build_progress(done, total)
            self.close()

    view = ClosingView(roots=maps_served["roots"], cache_dir=maps_served["cache"], checkpoint="served/runs/ckpt.pt",
                       scene=f"served/scenes/{maps_served['scene'].name}")  # fmt: skip
    assert view.build(blocking=True) is None
    assert isinstance(view._build.future.exception(), MapBuildCancelled)
    done, total = view._done
    assert 0 < done < total == 4  # 2 x 2 windows, stopped after the first row
    assert not view.target().exists()  # no finished map (the partial one stays for a later resume)
    assert "cancelled" in view.status


def test_map_cache_is_evicted_down_to_its_bound(maps_served):
    cache = maps_served["cache"]
    cache.mkdir()
    old = []
    for i in range(3):  # earlier maps (real files of the size of a map), least recently used first
        f = cache / f"map_old{i}.tif"
        f.write_bytes(os.urandom(200_000))
        os.utime(f, (1_000_000 + i, 1_000_000 + i))
        old.append(f)
    view = maps_view(maps_served, cache_max_bytes=450_000)
    path = view.build(blocking=True)
    assert path is not None and path.exists(), view.status
    size = path.stat().st_size
    kept = sorted(p.name for p in cache.glob("map_*") if p.is_file() and not p.name.endswith(".lock"))
    total = sum((cache / n).stat().st_size for n in kept)
    assert total <= max(450_000, size), kept  # down to the bound (or the new map alone, if larger)
    assert not old[0].exists()  # the least recently used went first
    assert path.name in kept  # the map just built stays
    # the bound alone, on a folder: down to it, what is kept stays
    remaining = [p for p in old if p.exists()]
    assert sorted(evict(cache, 0, keep=(path,))) == sorted(remaining)
    assert [p.name for p in cache.glob("map_*.tif")] == [path.name]
