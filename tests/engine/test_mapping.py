"""`atomizer map`: a classifier slid over a real scene, written as a georeferenced GeoTIFF.

The scene is a real crop of the Major-TOM L2A product (pixels real; the crop is a band folder we write).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import TINY_TRAIN

from atomizer.engine.mapping import MAP_NODATA, MapError, predict_map, scene_grid
from atomizer.engine.training import TrainConfig, train
from tests.data import product_fixtures as fx


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_run):
    """The session's tiny Atomizer, and a ResNet trained the same way."""
    cfg = TrainConfig.from_dict({**TINY_TRAIN, "model": "resnet", "out_dir": str(tmp_path_factory.mktemp("resnet"))})
    return {"atomizer": tiny_run / "checkpoints" / "best.pt", "resnet": Path(train(cfg, progress=False)["best"])}


@pytest.fixture(scope="module")
def scene(tmp_path_factory, majortom_product_dir) -> Path:
    """A 1,920 m x 1,920 m crop of the real scene, every band at native resolution, a nodata corner written."""
    folder = tmp_path_factory.mktemp("scene") / "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419"
    for band, gsd in fx.NATIVE.items():
        data, prof = fx.crop(majortom_product_dir, band, extent_m=1920)
        n = 320 // gsd
        data[:n, :n] = 0  # a 320 m nodata corner (DN 0 = Sentinel-2 nodata)
        fx.write_raster(folder / f"{band}.tif", data, prof)
    return folder


def test_map_georeferenced_probabilities_and_nodata(checkpoints, scene, tmp_path):
    out = tmp_path / "map.tif"
    summary = predict_map(checkpoints["atomizer"], scene, out, stride_m=320, progress=False)
    assert summary["window_m"] == 640  # the largest extent of eurosat_train
    assert summary["windows"] == 25  # (1920 - 640) / 320 + 1 = 5 per axis
    with rasterio.open(out) as m, rasterio.open(scene / "B02.tif") as src:
        assert m.crs == src.crs
        assert m.bounds == pytest.approx(src.bounds)
        assert m.transform == src.transform
        assert m.count == len(summary["classes"]) + 1
        assert m.descriptions[-1] == "argmax" and m.descriptions[0] == summary["classes"][0]
        assert m.nodata == MAP_NODATA and m.profile["compress"] == "deflate" and m.profile["tiled"]
        assert m.overviews(1)  # 192 px: one overview level
        probs, arg = m.read(list(range(1, m.count))), m.read(m.count)
    assert np.all(probs[:, :32, :32] == MAP_NODATA) and np.all(arg[:32, :32] == MAP_NODATA)  # the nodata corner
    valid = arg != MAP_NODATA
    assert valid.mean() > 0.95
    np.testing.assert_allclose(probs[:, valid].sum(0), 1.0, atol=1e-4)  # softmax (EuroSAT is single-label)
    np.testing.assert_array_equal(arg[valid], probs[:, valid].argmax(0))
    # overlapping windows average: the centre pixel (covered by 4 windows) differs from a corner window's value
    assert not np.allclose(probs[:, 96, 96], probs[:, 40, 40])


def test_map_interrupted_run_resumes_to_the_same_map(checkpoints, scene, tmp_path, monkeypatch):
    ref = tmp_path / "ref.tif"
    predict_map(checkpoints["atomizer"], scene, ref, window_m=640, stride_m=320, progress=False)
    import atomizer.engine.mapping as mapping

    out = tmp_path / "map.tif"
    calls = {"n": 0}
    real = mapping._classify_row

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(mapping, "_STRIP", 64)  # flush every 64 rows, so the kill lands after a flush
    monkeypatch.setattr(mapping, "_classify_row", dying)
    with pytest.raises(KeyboardInterrupt):
        predict_map(checkpoints["atomizer"], scene, out, window_m=640, stride_m=320, progress=False)
    record = json.loads(out.with_name("map.tif.progress.json").read_text())
    assert 0 < record["rows_written"] < 192 and not out.exists()
    monkeypatch.setattr(mapping, "_classify_row", real)
    calls["n"] = 0
    resumed = predict_map(checkpoints["atomizer"], scene, out, window_m=640, stride_m=320, progress=False)
    assert resumed["windows"] == 25 and not out.with_name("map.tif.progress.json").exists()
    with rasterio.open(ref) as a, rasterio.open(out) as b:
        np.testing.assert_allclose(a.read(), b.read(), atol=1e-6)


def test_map_canvas_baseline_and_errors(checkpoints, scene, tmp_path):
    out = tmp_path / "resnet.tif"
    s = predict_map(checkpoints["resnet"], scene, out, progress=False)
    assert s["windows"] == 9  # 640 m windows, no overlap: 3 x 3
    with rasterio.open(out) as m:
        arg = m.read(m.count)
    assert set(np.unique(arg[arg != MAP_NODATA])) <= set(range(len(s["classes"])))
    with pytest.raises(MapError, match="exists"):
        predict_map(checkpoints["resnet"], scene, out, progress=False)
    with pytest.raises(MapError, match="larger than the scene"):
        predict_map(checkpoints["resnet"], scene, tmp_path / "x.tif", window_m=5000, progress=False)


def test_cli_map_one_line(checkpoints, scene, tmp_path, capsys):
    from atomizer.cli import main

    assert main(["map", str(checkpoints["atomizer"]), str(scene), "--out", str(tmp_path / "m.tif"), "--quiet"]) == 0
    assert "9 windows of 640 m" in capsys.readouterr().out
    assert main(["map", str(checkpoints["atomizer"]), str(scene), "--out", str(tmp_path / "m.tif")]) == 2
    assert "exists" in capsys.readouterr().err


def test_scene_grid_covers_edges(scene):
    from atomizer.data.readers import open_image

    g = scene_grid(open_image(scene), 640, 500)
    assert g.xs == (0, 50, 100, 128) and g.window_px == 64  # the last window flush with the edge
    with pytest.raises(MapError, match="gaps"):
        scene_grid(open_image(scene), 640, 700)


@pytest.mark.parametrize("model", ["atomizer", "resnet"])
def test_strips_read_lazily_give_exactly_the_windows_of_the_whole_scene(checkpoints, scene, tmp_path, model):
    """The map reads the scene one strip of windows at a time (dask-backed bands, nothing else in memory);
    each window's probabilities equal the model on the same window simulated from the whole scene read at
    once (no overlap: a window's pixels hold its own probabilities)."""
    import torch

    from atomizer.data.modalities import Modality, simulate
    from atomizer.data.readers import image_bands, open_image
    from atomizer.engine.loaders import model_input
    from atomizer.engine.mapping import strip
    from atomizer.models.checkpoint import load_model
    from atomizer.models.registry import input_type

    lazy = open_image(scene, lazy=True)
    assert all(hasattr(lazy[b].data, "dask") for b in image_bands(lazy))  # nothing read yet
    out = tmp_path / "map.tif"
    predict_map(checkpoints[model], scene, out, window_m=640, progress=False)
    whole = open_image(scene)
    grid = scene_grid(whole, 640, 640)
    mod = Modality("w", grid.window_px, grid.gsd_m, tuple(image_bands(whole)))
    net = load_model(checkpoints[model]).eval()
    with rasterio.open(out) as m:
        probs = m.read(list(range(1, m.count)))
    for y0, x0 in [(grid.ys[1], grid.xs[1]), (grid.ys[-1], grid.xs[0]), (grid.ys[1], grid.xs[-1])]:
        win = simulate(whole, mod, offset_m=(x0 * grid.gsd_m, y0 * grid.gsd_m))
        with torch.no_grad():
            p = net(model_input(win, input_type(net), None if model == "atomizer" else _canvas(checkpoints[model])))
        expected = p.float().softmax(-1)[0].numpy()
        np.testing.assert_allclose(probs[:, y0 + 5, x0 + 5], expected, atol=1e-5)
        light, dy = strip(lazy, grid, y0)
        assert len(light.bands["B02"].ys) < grid.height  # only the strip's rows were read


def _canvas(ckpt):
    from atomizer.atoms.canvas import CanvasSpec
    from atomizer.data.modalities import load_modalities
    from atomizer.models.checkpoint import read_checkpoint

    mods = load_modalities(read_checkpoint(ckpt)["extra"]["train_modalities"])
    return CanvasSpec(int(mods.source_size_px or 64), float(mods.source_gsd_m or 10.0))


def test_a_checkpoint_trained_on_whole_images_asks_for_a_window():
    from atomizer.engine.mapping import default_window_m

    assert default_window_m({"train_modalities": "eurosat_train"}) > 0
    with pytest.raises(MapError, match="whole images as read .*pass --window-m"):
        default_window_m({"train_modalities": "native"})
    with pytest.raises(MapError, match="records no training modalities"):
        default_window_m({})
