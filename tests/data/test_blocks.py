"""Spatial blocks (atomizer.data.blocks) of the shipped TerraMesh tiles (real Sentinel-2 / Sentinel-1 pixels and
land-cover masks): pixels copied exactly, georeferencing shifted, folds rotating over every tile's blocks."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.windows import Window

from atomizer.data.blocks import write_blocks
from atomizer.data.folds import fold_split
from atomizer.data.manifest import ManifestDataset, ManifestError
from tests.conftest import EMBEDDED

TERRAMESH = EMBEDDED / "dense" / "terramesh"


@pytest.fixture(scope="module")
def blocks(tmp_path_factory):
    out = tmp_path_factory.mktemp("blocks")
    return write_blocks(TERRAMESH / "manifest.csv", out, n=2)


def test_every_block_is_the_source_window_with_its_own_georeference(blocks):
    table = pd.read_csv(blocks)
    source = pd.read_csv(TERRAMESH / "manifest.csv").set_index("id")
    assert len(table) == 4 * len(source) and table["id"].is_unique
    for row in table.itertuples():
        r, c = int(row.id[-3]), int(row.id[-1])
        for col in ("image_s2l2a", "image_s1rtc", "mask"):
            with rasterio.open(TERRAMESH / source.loc[row.source, col]) as src:
                want = src.read(window=Window(c * 112, r * 112, 112, 112))
                shifted = src.transform * (c * 112, r * 112)
                names = src.descriptions
            with rasterio.open(blocks.parent / getattr(row, col)) as got:
                assert got.shape == (112, 112) and (got.transform.c, got.transform.f) == pytest.approx(shifted)
                assert got.transform.a == src.transform.a and got.crs == src.crs and got.descriptions == names
                np.testing.assert_array_equal(got.read(), want)


def test_folds_test_one_block_of_every_tile_and_train_on_the_rest(blocks):
    table = pd.read_csv(blocks)
    assert sorted(table.groupby("source")["fold"].apply(sorted).map(tuple).unique()) == [(0, 1, 2, 3)]
    positions = table[table["fold"] == 0]["id"].str[-4:]
    assert positions.nunique() > 1  # the tested block's position changes from tile to tile
    ds = ManifestDataset(blocks)
    assert ds.task == "segmentation" and ds.ignore_index == 0 and "snow / ice" in ds.classes
    folds = ds.folds_table()
    for k in range(4):
        test = fold_split(ManifestDataset(blocks), folds, k, "test")
        val = fold_split(ManifestDataset(blocks), folds, k, "validation")
        train = fold_split(ManifestDataset(blocks), folds, k, "train")
        sources = [r["id"].rsplit("_", 1)[0] for r in test.records]
        assert len(sources) == len(set(sources)) == 5 and len(val) == 5 and len(train) == 10
        assert not {r["id"] for r in test.records} & {r["id"] for r in train.records}
    item = ds[0]
    assert item["mask"].values.shape == (112, 112) and item["mask"].gsd == 10


def test_refusals_are_one_line(blocks, tmp_path):
    with pytest.raises(ManifestError, match="holds a manifest already"):
        write_blocks(TERRAMESH / "manifest.csv", blocks.parent)
    with pytest.raises(ManifestError, match="at least 2"):
        write_blocks(TERRAMESH / "manifest.csv", tmp_path / "one", n=1)
    # a classification manifest written around one real TerraMesh image (the labels are made up for the test)
    shutil.copy(TERRAMESH / "images" / "282D_485L_3_3_s2l2a.tif", tmp_path / "a.tif")
    (tmp_path / "labels.csv").write_text("id,image,label\na,a.tif,crops\n")
    (tmp_path / "labels.yaml").write_text("sensor: sentinel2\n")
    with pytest.raises(ManifestError, match="segmentation manifests") as e:
        write_blocks(tmp_path / "labels.csv", tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_the_command_writes_blocks_and_refuses_in_one_line(tmp_path, capsys):
    from atomizer.cli import main

    assert main(["dataset", "blocks", str(TERRAMESH / "manifest.csv"), str(tmp_path / "b"), "--n", "3"]) == 0
    table = pd.read_csv(tmp_path / "b" / "manifest.csv")
    assert len(table) == 45 and sorted(table["fold"].unique()) == list(range(9))
    with rasterio.open(tmp_path / "b" / table["mask"][0]) as m:
        assert m.shape == (74, 74)  # 224 // 3; the last 2 px of each side are left out
    capsys.readouterr()
    assert main(["dataset", "blocks", str(TERRAMESH / "manifest.csv"), str(tmp_path / "b")]) != 0
    err = capsys.readouterr().err.strip()
    assert "holds a manifest already" in err and "\n" not in err and "Traceback" not in err
