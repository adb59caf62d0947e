"""Datasets: labels, official splits and layouts, the class-balanced subset rule."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin

from atomizer.data.bands import get_sensor
from atomizer.data.base import multi_hot
from atomizer.data.datasets import (
    BigEarthNetNpz,
    BigEarthNetOfficial,
    EuroSAT,
    balanced_subset,
    ben19_classes,
    embedded_path,
    open_dataset,
)

BEN = embedded_path("bigearthnet")
S2 = get_sensor("sentinel2")
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


def test_bigearthnet_npz_labels_and_splits():
    meta = {m["patch_id"]: m for m in json.loads((BEN / "metadata.json").read_text())}
    classes = ben19_classes()
    assert len(classes) == 19 and classes[0] == "Urban fabric"
    total = 0
    for split in ("train", "validation", "test"):
        ds = BigEarthNetNpz(split=split)
        total += len(ds)
        for i in range(len(ds)):
            rec = ds.records[i]
            assert meta[rec["id"]]["split"] == split
        item = ds[0]
        assert item["target"].shape == (19,)
        assert [classes[j] for j in np.flatnonzero(item["target"].numpy())] == sorted(
            meta[item["id"]]["labels_19"], key=classes.index
        )
    assert total == sum(1 for m in meta.values() if m.get("split"))
    assert len(BigEarthNetNpz()) == total


def test_eurosat_fixed_split_and_single_labels():
    sizes = {s: len(EuroSAT(split=s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 122, "validation": 40, "test": 40}
    ds = EuroSAT(split="test")
    assert ds.classes == sorted(ds.classes) and len(ds.classes) == 10
    assert Counter(r["label_idx"] for r in ds.records) == {i: 4 for i in range(10)}
    item = ds[0]
    assert item["target"].ndim == 0 and ds.classes[int(item["target"])] in item["id"]
    ids = [set(EuroSAT(split=s).ids()) for s in ("train", "validation", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    with pytest.raises(ValueError, match="unknown split"):
        EuroSAT(split="holdout")


def test_multi_hot_refuses_unknown_label():
    with pytest.raises(KeyError, match="Mars"):
        multi_hot(["Mars"], ben19_classes())


def test_balanced_subset_caps_every_class_on_official_metadata():
    df = pd.read_parquet(BEN / "reference" / "benv2_metadata_sample.parquet")
    labels = [list(x) for x in df["labels"]]
    cap = 40
    keep = balanced_subset(labels, cap, seed=0)
    counts = Counter(c for i in keep for c in labels[i])
    assert max(counts.values()) <= cap
    full = Counter(c for ls in labels for c in ls)
    rare = [c for c, n in full.items() if n <= cap // 4]
    # a class with few images keeps at least the images that carry no over-cap class
    assert all(counts[c] > 0 for c in rare)
    assert len(keep) == len(set(keep.tolist()))
    assert not np.array_equal(keep, balanced_subset(labels, cap, seed=1))


def _write_band_tifs(folder, patch_id, arrays):
    folder.mkdir(parents=True)
    for b, arr in arrays.items():
        g = S2.band(b).gsd_m
        with rasterio.open(
            folder / f"{patch_id}_{b}.tif",
            "w",
            driver="GTiff",
            height=arr.shape[0],
            width=arr.shape[1],
            count=1,
            dtype=arr.dtype,
            crs="EPSG:32633",
            transform=from_origin(500_000, 5_000_000, g, g),
        ) as dst:
            dst.write(arr[None])


def _native_npz_patches(n):
    out = []
    for m in json.loads((BEN / "metadata.json").read_text()):
        with np.load(BEN / "patches" / f"{m['patch_id']}.npz") as z:
            if not bool(z["resampled_120"]):
                out.append((m, {b: z[b] for b in BANDS}))
        if len(out) == n:
            return out
    return out


def test_official_v2_layout_with_parquet(tmp_path):
    patches = _native_npz_patches(2)
    root = tmp_path / "BigEarthNet-S2"
    rows = []
    for i, (m, arrays) in enumerate(patches):
        pid = f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{10 + i}_{20 + i}"
        _write_band_tifs(root / pid.rsplit("_", 2)[0] / pid, pid, arrays)
        rows.append({"patch_id": pid, "labels": m["labels_19"], "split": "train" if i == 0 else "test"})
    rows.append(
        {"patch_id": "S2B_MSIL2A_20180101T000000_N9999_R001_T32ABC_1_1", "labels": ["Urban fabric"], "split": "train"}
    )  # listed but not downloaded
    meta = tmp_path / "metadata.parquet"
    pd.DataFrame(rows).to_parquet(meta)
    ds = BigEarthNetOfficial(root, "v2", meta, split="train")
    assert ds.ids() == [rows[0]["patch_id"]]
    item = ds[0]
    assert item["image"]["B02"].shape == (120, 120) and item["image"]["B01"].shape == (20, 20)
    np.testing.assert_array_equal(item["image"]["B11"].values, patches[0][1]["B11"])
    assert item["target"].sum() == len(patches[0][0]["labels_19"])
    assert len(BigEarthNetOfficial(root, "v2", meta)) == 2
    assert len(BigEarthNetOfficial(root, "v2", meta, check_files=False)) == 3
    with pytest.raises(ValueError, match="metadata.parquet"):
        BigEarthNetOfficial(root, "v2")


def test_official_v1_layout_maps_43_to_19(tmp_path):
    ((m, arrays),) = _native_npz_patches(1)
    root = tmp_path / "BigEarthNet-v1.0"
    pid = "S2A_MSIL2A_20170613T101031_0_0"
    _write_band_tifs(root / pid, pid, arrays)
    labels43 = ["Non-irrigated arable land", "Pastures", "Airports"]  # Airports has no 19-class label
    (root / pid / f"{pid}_labels_metadata.json").write_text(json.dumps({"labels": labels43}))
    ds = BigEarthNetOfficial(root, "v1")
    assert ds.records[0]["labels"] == ["Arable land", "Pastures"]
    assert ds[0]["image"]["B05"].shape == (60, 60)


def test_shipped_folds_test_every_eurosat_tile_once_and_keep_validation_inside_training():
    tested: list[str] = []
    for k in range(5):
        tr, va, te = (set(open_dataset("eurosat", s, fold=k).ids()) for s in ("train", "validation", "test"))
        assert not (tr & va) and not (tr & te) and not (va & te)
        assert len(tr | va | te) == 202
        labels = [r["labels"][0] for r in open_dataset("eurosat", "test", fold=k).records]
        assert min(labels.count(c) for c in set(labels)) >= 4  # stratified: every class in every test fold
        tested += sorted(te)
    assert sorted(tested) == sorted(open_dataset("eurosat").ids())  # each tile tested exactly once
    with pytest.raises(ValueError, match="fold must be in 0..4"):
        open_dataset("eurosat", "test", fold=5)


def test_make_folds_reproduces_the_shipped_assignment():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        [sys.executable, "scripts/make_folds.py", "--verify"], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(": ok") == 2
