"""Manifest datasets (``atomizer.data.manifest``): hand-written manifests over real tiles.

Every manifest, card and broken mask below is written by the test around real pixels (EuroSAT-MS tiles,
BigEarthNet patches, TerraMesh Sentinel-2 + Sentinel-1 images and their land-cover masks); where the test
alters a real file's metadata (georeference dropped or shifted), it says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
import yaml

from atomizer.data.base import multi_hot
from atomizer.data.datasets import BigEarthNetNpz, EuroSAT, dataset_folds, open_dataset
from atomizer.data.image import image_bands
from atomizer.data.manifest import ManifestDataset, ManifestError, check_manifest, read_mask
from tests.conftest import EMBEDDED, REPO_ROOT, SHARED, find_data

TERRAMESH_IDS = ("282D_485L_3_3", "38D_378R_2_3", "433D_629L_3_1", "609U_541L_3_0", "637U_59R_1_3")


def terramesh_dir() -> Path:
    return find_data(EMBEDDED / "dense" / "terramesh", SHARED / "dense_real" / "terramesh", pattern="images/*.tif")


def eurosat_manifest(folder: Path, per_class: int = 3) -> Path:
    """A hand-written single-label manifest over real EuroSAT tiles copied into ``folder/images``."""
    src = EMBEDDED / "eurosat"
    split = pd.read_csv(src / "split.csv")
    rows = []
    for label, group in split.groupby("label"):
        for k, path in enumerate(group["path"]):
            if k >= per_class:
                break
            dst = folder / "images" / Path(path).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / path, dst)
            rows.append({"image": f"images/{dst.name}", "label": label, "split": ["train", "val", "test"][k % 3]})
    manifest = folder / "labels.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def ben_manifest(folder: Path, n: int = 8) -> Path:
    """A hand-written multi-label manifest (labels joined by ';') over real BigEarthNet npz patches."""
    src = EMBEDDED / "bigearthnet"
    meta = [m for m in json.loads((src / "metadata.json").read_text()) if m.get("split")][:n]
    (folder / "patches").mkdir(parents=True, exist_ok=True)
    rows = []
    for m in meta:
        shutil.copy(src / "patches" / f"{m['patch_id']}.npz", folder / "patches")
        rows.append({"id": m["patch_id"], "image": f"patches/{m['patch_id']}.npz", "labels": ";".join(m["labels_19"])})
    manifest = folder / "ben.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    (folder / "ben.yaml").write_text(yaml.safe_dump({"classes_file": "classes.txt"}))
    classes = json.loads((src / "label_nomenclature.json").read_text())["labels_19_order"]
    (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    return manifest


def terramesh_manifest(folder: Path, with_s1: bool = True) -> Path:
    """A hand-written mask manifest over the real TerraMesh S2 (+ S1) images and their land-cover masks."""
    src = terramesh_dir()
    for sub in ("images", "masks"):
        shutil.copytree(src / sub, folder / sub, dirs_exist_ok=True)
    rows = []
    for i, sid in enumerate(TERRAMESH_IDS):
        row = {"id": sid, "image_s2": f"images/{sid}_s2l2a.tif", "mask": f"masks/{sid}_lulc.tif"}
        if with_s1:
            row["image_s1"] = f"images/{sid}_s1rtc.tif"
        row["split"] = ["train", "train", "train", "validation", "test"][i]
        rows.append(row)
    manifest = folder / "lulc.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    card = {
        "sensor": {"s2": "sentinel2", "s1": "sentinel1"},
        "bands": {
            "s2": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"],
            "s1": ["VV", "VH"],
        },
        "classes": {1: "water", 2: "trees", 3: "flooded vegetation", 4: "crops", 5: "built area", 6: "bare ground"}
        | {7: "snow/ice", 8: "clouds", 9: "rangeland"},  # the class table of its README
        "ignore_index": 0,
    }
    (folder / "lulc.yaml").write_text(yaml.safe_dump(card))
    return manifest


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def test_single_label_manifest_reads_the_tiles_as_the_eurosat_reader_does(tmp_path):
    manifest = eurosat_manifest(tmp_path)
    ds = ManifestDataset(manifest)
    assert ds.task == "classification" and not ds.multilabel and len(ds) == 30
    assert ds.classes == sorted(pd.read_csv(EMBEDDED / "eurosat" / "index.csv")["label"].unique())
    assert [len(ManifestDataset(manifest, s)) for s in ("train", "validation", "test")] == [10, 10, 10]
    item = ds[0]
    ref = EuroSAT()
    r = next(r for r in ref.records if r["path"].name == Path(ds.records[0]["images"][""]).name)
    want = ref.load(r)
    assert image_bands(item["image"]) == image_bands(want)
    for b in image_bands(want):
        np.testing.assert_array_equal(item["image"][b].values, want[b].values)
    assert int(item["target"]) == ds.classes.index(r["labels"][0]) and item["id"] == Path(r["path"]).stem


def test_multi_label_manifest_matches_the_bigearthnet_reader(tmp_path):
    manifest = ben_manifest(tmp_path)
    ds = open_dataset(str(manifest))
    ref = BigEarthNetNpz()
    assert ds.multilabel and ds.classes == ref.classes and len(ds) == 8
    by_id = {r["id"]: r for r in ref.records}
    for i, r in enumerate(ds.records):
        torch.testing.assert_close(ds[i]["target"], multi_hot(by_id[r["id"]]["labels"], ref.classes))
    img, want = ds[0]["image"], ref.load(by_id[ds.records[0]["id"]])
    assert {b: img[b].shape for b in image_bands(img)} == {b: want[b].shape for b in image_bands(want)}


def test_parquet_and_geojson_manifests_give_the_same_samples(tmp_path):
    manifest = eurosat_manifest(tmp_path, per_class=1)
    df = pd.read_csv(manifest)
    df.to_parquet(tmp_path / "labels_pq.parquet")
    features = [
        {"type": "Feature", "geometry": None, "properties": {k: str(v) for k, v in row.items()}}
        for row in df.to_dict("records")
    ]
    (tmp_path / "labels_gj.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    want = [(r["id"], r["labels"], r["split"]) for r in ManifestDataset(manifest).records]
    for other in ("labels_pq.parquet", "labels_gj.geojson"):
        got = [(r["id"], r["labels"], r["split"]) for r in ManifestDataset(tmp_path / other).records]
        assert got == want


def test_mask_manifest_merges_coregistered_images_and_reads_masks_on_the_grid(tmp_path):
    manifest = terramesh_manifest(tmp_path)
    ds = ManifestDataset(manifest)
    assert ds.task == "segmentation" and ds.multilabel and 0 not in ds.class_ids
    item = ds[0]
    bands = image_bands(item["image"])
    assert {"B02", "B8A", "VV", "VH"} <= set(bands) and item["image"].attrs["sensor"] == "sentinel2+sentinel1"
    with rasterio.open(tmp_path / "masks" / f"{TERRAMESH_IDS[0]}_lulc.tif") as src:
        stored = src.read(1)
    mask = ds.mask(ds.records[0])
    np.testing.assert_array_equal(mask, stored)
    present = [n for i, n in zip(ds.class_ids, ds.classes) if (stored == i).any()]
    assert ds.classes_present(ds.records[0]) == present
    torch.testing.assert_close(item["target"], multi_hot(present, ds.classes))


def test_a_mask_on_another_grid_is_read_by_nearest_never_interpolated(tmp_path):
    """The test writes a real mask at twice the pixel size (every other pixel), still georeferenced."""
    manifest = terramesh_manifest(tmp_path, with_s1=False)
    ds = ManifestDataset(manifest)
    path = tmp_path / "masks" / f"{TERRAMESH_IDS[1]}_lulc.tif"
    with rasterio.open(path) as src:
        full, profile = src.read(1), src.profile
    coarse = full[::2, ::2]
    t = profile["transform"]
    profile.update(
        width=coarse.shape[1], height=coarse.shape[0], transform=rasterio.Affine(t.a * 2, 0, t.c, 0, t.e * 2, t.f)
    )
    with rasterio.open(tmp_path / "coarse.tif", "w", **profile) as dst:
        dst.write(coarse, 1)
    image = ds.load(ds.records[1])
    got = read_mask(tmp_path / "coarse.tif", image)
    np.testing.assert_array_equal(
        got, np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)[: full.shape[0], : full.shape[1]]
    )
    assert set(np.unique(got)) <= set(np.unique(coarse))


# --------------------------------------------------------------------------------------------------
# dataset check: the summary, the folds, and each broken manifest refused in one line naming the row
# --------------------------------------------------------------------------------------------------


def test_check_summarises_and_writes_stratified_folds_once(tmp_path):
    manifest = eurosat_manifest(tmp_path, per_class=5)
    pd.read_csv(manifest).drop(columns="split").to_csv(manifest, index=False)
    summary = check_manifest(manifest)
    text = "\n".join(summary.lines())
    assert "50 samples, task classification, 10 classes" in text and "64x64 px @ 10 m (50)" in text
    assert summary.atoms["min"] == summary.atoms["max"] == 13 * 64 * 64
    folds = pd.read_csv(tmp_path / "labels.folds.csv")
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4] and len(folds) == 50
    labels = {r["id"]: r["labels"][0] for r in ManifestDataset(manifest).records}
    per_class = folds.assign(label=folds["id"].map(labels)).groupby("label")["fold"].nunique()
    assert (per_class == 5).all()  # 5 tiles per class: one in each fold
    before = (tmp_path / "labels.folds.csv").read_bytes()
    assert "kept as it is" in check_manifest(manifest, seed=7).folds
    assert (tmp_path / "labels.folds.csv").read_bytes() == before
    train = open_dataset(str(manifest), "train", fold=0)
    test = open_dataset(str(manifest), "test", fold=0)
    assert len(train) == 30 and len(test) == 10 and not set(train.ids()) & set(test.ids())
    assert dataset_folds(str(manifest))["fold"].max() == 4


def test_grouped_folds_keep_a_group_together(tmp_path):
    manifest = eurosat_manifest(tmp_path, per_class=3)
    df = pd.read_csv(manifest).drop(columns="split")
    df["group"] = [f"g{i // 2}" for i in range(len(df))]  # pairs of tiles share a (made-up) group
    df.to_csv(manifest, index=False)
    check_manifest(manifest, folds=3)
    folds = pd.read_csv(tmp_path / "labels.folds.csv").set_index("id")["fold"]
    ds = ManifestDataset(manifest)
    for g in df["group"].unique():
        ids = [r["id"] for r in ds.records if r["group"] == g]
        assert folds[ids].nunique() == 1


def test_check_of_a_mask_manifest_reports_coverage_and_classes(tmp_path):
    summary = check_manifest(terramesh_manifest(tmp_path), write_folds=False)
    assert summary.task == "segmentation" and 0 < summary.mask_coverage["min"] <= summary.mask_coverage["max"] <= 1
    assert abs(sum(summary.class_pixels.values()) - 1) < 1e-9
    assert "VV (5)" in "\n".join(summary.lines())


def _broken(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A manifest broken in one way, and the words its one-line refusal must contain."""
    if case in ("missing", "unknown class", "outside", "undescribed band", "duplicate"):
        manifest = eurosat_manifest(tmp_path, per_class=1)
        df = pd.read_csv(manifest)
        if case == "missing":
            df.loc[3, "image"] = "images/no_such_tile.tif"
        elif case == "unknown class":
            (tmp_path / "labels.yaml").write_text(yaml.safe_dump({"classes": sorted(df["label"])}))
            df.loc[4, "label"] = "Glacier"
        elif case == "outside":
            df.loc[2, "image"] = "../../etc/hosts"
        elif case == "duplicate":
            df.loc[5, "image"] = df.loc[1, "image"]
        else:  # a channel order naming a band Sentinel-2 does not have
            bands = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B13"]
            (tmp_path / "labels.yaml").write_text(yaml.safe_dump({"sensor": "sentinel2", "bands": bands}))
        df.to_csv(manifest, index=False)
        words = {
            "missing": "row 5",
            "unknown class": "row 6",
            "outside": "row 4",
            "undescribed band": "B13",
            "duplicate": "row 7",
        }
        return manifest, words[case]
    manifest = terramesh_manifest(tmp_path, with_s1=False)
    path = tmp_path / "masks" / f"{TERRAMESH_IDS[2]}_lulc.tif"
    with rasterio.open(path) as src:
        data, profile = src.read(1), src.profile
    if case == "misaligned":  # the test crops the real mask and drops its georeference
        data = data[:200, :200]
        profile.update(width=200, height=200, crs=None, transform=rasterio.Affine.identity())
    elif case == "non-overlapping":  # the test shifts the real mask's georeference 500 km east
        t = profile["transform"]
        profile.update(transform=rasterio.Affine(t.a, 0, t.c + 500_000, 0, t.e, t.f))
    elif case == "unknown mask value":  # the test writes class id 12 (absent from the class table) into it
        data = data.copy()
        data[:10, :10] = 12
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return manifest, {"misaligned": "misaligned", "non-overlapping": "does not overlap", "unknown mask value": "12"}[
        case
    ]


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "unknown class",
        "outside",
        "undescribed band",
        "duplicate",
        "misaligned",
        "non-overlapping",
        "unknown mask value",
    ],
)
def test_check_refuses_a_broken_manifest_in_one_line_naming_the_row(tmp_path, case):
    manifest, words = _broken(tmp_path, case)
    with pytest.raises((ManifestError, ValueError, KeyError)) as e:
        check_manifest(manifest, write_folds=False)
    msg = str(e.value.args[0] if e.value.args else e.value)
    assert "\n" not in msg and words in msg, msg
    if case not in ("outside", "duplicate", "unknown class"):
        assert "row" in msg and ("id" in msg or case == "missing"), msg
    assert not (tmp_path / f"{manifest.stem}.folds.csv").exists()


def test_dataset_check_command_prints_the_summary_and_refuses_in_one_line(tmp_path):
    good = eurosat_manifest(tmp_path / "good", per_class=1)
    run = subprocess.run(
        [sys.executable, "-m", "atomizer", "dataset", "check", str(good), "--folds", "3"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert run.returncode == 0, run.stderr
    assert "10 samples, task classification" in run.stdout and "wrote labels.folds.csv: 3 folds" in run.stdout
    bad, words = _broken(tmp_path / "bad", "missing")
    run = subprocess.run(
        [sys.executable, "-m", "atomizer", "dataset", "check", str(bad)], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert run.returncode == 2 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atomizer: error: ") and words in lines[0]


def test_a_path_outside_is_read_only_under_the_named_data_root(tmp_path):
    manifest = tmp_path / "m" / "labels.csv"
    manifest.parent.mkdir()
    tile = EMBEDDED / "eurosat" / "Forest" / "Forest_1.tif"
    pd.DataFrame([{"image": str(tile.resolve()), "label": "Forest"}]).to_csv(manifest, index=False)
    with pytest.raises(ManifestError, match="outside the manifest's folder"):
        ManifestDataset(manifest)
    ds = ManifestDataset(manifest, data_root=EMBEDDED / "eurosat")
    assert image_bands(ds[0]["image"])[0] == "B01"


def test_without_split_column_a_split_asks_for_folds(tmp_path):
    manifest = eurosat_manifest(tmp_path, per_class=1)
    pd.read_csv(manifest).drop(columns="split").to_csv(manifest, index=False)
    with pytest.raises(ManifestError, match="no split column"):
        open_dataset(str(manifest), "train")
    with pytest.raises(ManifestError, match="dataset check"):
        open_dataset(str(manifest), "train", fold=0)


@pytest.mark.parametrize(
    "column,value",
    [
        ("image", "https://example.com/tile.tif"),
        ("image", "/vsicurl/https://example.com/tile.tif"),
        ("image", "/etc/hosts"),
        ("sidecar", "../outside.yaml"),
        ("mask", "../../secret.tif"),
    ],
)
def test_a_hostile_manifest_reads_nothing_outside_its_folder(tmp_path, column, value):
    """A manifest someone sends: URLs, virtual paths, absolute paths and escapes are refused in one line
    naming the row, before anything is opened."""
    manifest = eurosat_manifest(tmp_path / "m", per_class=1)
    df = pd.read_csv(manifest)
    if column == "mask":
        df = df.rename(columns={"label": "mask"})
    df[column] = df[column].astype(object) if column in df else ""
    df.loc[0, column] = value
    df.to_csv(manifest, index=False)
    with pytest.raises(ManifestError) as e:
        ManifestDataset(manifest)
    msg = str(e.value)
    assert "row 2" in msg and "\n" not in msg and ("outside" in msg or "URL" in msg)


def test_a_link_leading_out_of_the_folder_is_refused(tmp_path):
    manifest = eurosat_manifest(tmp_path / "m", per_class=1)
    outside = tmp_path / "elsewhere.tif"
    shutil.copy(EMBEDDED / "eurosat" / "Forest" / "Forest_1.tif", outside)
    (tmp_path / "m" / "images" / "link.tif").symlink_to(outside)
    df = pd.read_csv(manifest)
    df.loc[0, "image"] = "images/link.tif"
    df.to_csv(manifest, index=False)
    with pytest.raises(ManifestError, match="outside the manifest's folder"):
        ManifestDataset(manifest)


def test_a_card_with_an_unknown_key_is_refused_by_name(tmp_path):
    manifest = eurosat_manifest(tmp_path, per_class=1)
    (tmp_path / "labels.yaml").write_text("sensor: sentinel2\nexec: rm -rf /\n")
    with pytest.raises(ManifestError, match="exec"):
        ManifestDataset(manifest)


def test_a_stac_item_collection_is_a_manifest(tmp_path, majortom_product_dir):
    """A STAC ItemCollection written by the test around real Major-TOM band files: each item a sample, its
    data assets the image (bands matched to the platform's sensor by asset name), its properties the label
    and split; an asset leading out of the collection's folder is refused."""
    bands = ["B02", "B03", "B04", "B08"]
    features = []
    for k, label in enumerate(["forest", "water"]):
        folder = tmp_path / f"scene{k}"
        folder.mkdir()
        for b in bands:
            shutil.copy(majortom_product_dir / f"{b}.tif", folder / f"{b}.tif")
        features.append(
            {
                "type": "Feature",
                "stac_version": "1.0.0",
                "id": f"scene{k}",
                "geometry": None,
                "properties": {"datetime": "2022-01-14T08:11:49Z", "platform": "sentinel-2a", "label": label}
                | {"split": ["train", "test"][k]},
                "assets": {b: {"href": f"scene{k}/{b}.tif", "roles": ["data"]} for b in bands},
                "links": [],
            }
        )
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    ds = ManifestDataset(path)
    assert ds.ids() == ["scene0", "scene1"] and ds.classes == ["forest", "water"] and ds.task == "classification"
    item = ds[0]
    assert image_bands(item["image"]) == bands and int(item["target"]) == 0
    with rasterio.open(majortom_product_dir / "B08.tif") as src:
        np.testing.assert_array_equal(item["image"]["B08"].values, src.read(1))
    assert [r["id"] for r in ManifestDataset(path, "test").records] == ["scene1"]
    features[1]["assets"]["B02"]["href"] = "../../elsewhere/B02.tif"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    with pytest.raises(ManifestError, match="row 3 .*outside"):
        ManifestDataset(path)[1]
