"""BigEarthNet in the community LMDB form: the encoding, the dataset and `atomizer prepare`.

Pixels are real throughout: the embedded BigEarthNet v2 patches (npz) hold the same arrays as the real
LMDB of ``../shared/data/benv2_lmdb_real`` (checked byte for byte where that folder exists). The GeoTIFF
folders that `prepare` converts are written by the fixture from those real arrays in the official v2
layout (``<tile>/<patch>/<patch>_B01.tif``); the metadata parquet is built from the embedded metadata rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from atomizer.data import lmdb_store as ls
from atomizer.data.datasets import BigEarthNetLMDB, BigEarthNetNpz, open_dataset
from atomizer.data.layouts import read_bigearthnet_npz
from tests.conftest import EMBEDDED, SHARED

REAL_LMDB = SHARED / "benv2_lmdb_real"


def v2_rows() -> list[dict]:
    meta = json.loads((EMBEDDED / "bigearthnet" / "metadata.json").read_text())
    return [m for m in meta if m.get("ben_version") == "v2" and m.get("split")]


def s2_arrays(pid: str) -> dict[str, np.ndarray]:
    with np.load(EMBEDDED / "bigearthnet" / "patches" / f"{pid}.npz") as z:
        return {k: z[k] for k in ls.S2_BANDS}


def s1_arrays(pid: str) -> dict[str, np.ndarray] | None:
    with np.load(EMBEDDED / "bigearthnet" / "patches" / f"{pid}.npz") as z:
        return {k: z[k] for k in ls.S1_BANDS} if all(k in z.files for k in ls.S1_BANDS) else None


@pytest.fixture(scope="module")
def lmdb_root(tmp_path_factory) -> Path:
    """An LMDB of the embedded v2 patches and their S1 twins, with an official-style metadata.parquet."""
    root = tmp_path_factory.mktemp("benv2")
    env = ls.open_env(root / ls.LMDB_DIR, readonly=False, map_size=1 << 28)
    rows = v2_rows()
    with env.begin(write=True) as txn:
        for m in rows:
            txn.put(m["patch_id"].encode(), ls.encode_patch(s2_arrays(m["patch_id"])))
            if (radar := s1_arrays(m["patch_id"])) is not None:
                txn.put(m["s1_name"].encode(), ls.encode_patch(radar))
    env.close()
    pd.DataFrame(
        {
            "patch_id": [m["patch_id"] for m in rows],
            "labels": [m["labels_19"] for m in rows],
            "split": [m["split"] for m in rows],
            "country": [m["country"] for m in rows],
            "s1_name": [m["s1_name"] for m in rows],
            "s2v1_name": [m["s2v1_name"] for m in rows],
            "contains_seasonal_snow": False,
            "contains_cloud_or_shadow": False,
        }
    ).to_parquet(root / "metadata.parquet")
    return root


def test_encoding_is_byte_compatible_with_the_real_lmdb():
    if not (REAL_LMDB / ls.LMDB_DIR / "data.mdb").is_file():
        pytest.skip("the real community LMDB (../shared/data/benv2_lmdb_real) is not next to this checkout")
    reader = ls.PatchReader(REAL_LMDB / ls.LMDB_DIR)
    keys = reader.keys()
    assert len(keys) == 48
    rows = {m["patch_id"]: m for m in v2_rows()}
    checked = 0
    with reader._txn() as txn:
        for key in keys:
            if key in rows:
                assert ls.encode_patch(s2_arrays(key)) == txn.get(key.encode())
                assert ls.encode_patch(s1_arrays(key)) == txn.get(rows[key]["s1_name"].encode())
                checked += 1
    assert checked == 24
    ds = BigEarthNetLMDB(REAL_LMDB, split="test")
    assert len(ds) == 6 and ds[0]["image"]["B8A"].shape == (60, 60)


def test_lmdb_dataset_gives_the_npz_images(lmdb_root):
    lm = BigEarthNetLMDB(lmdb_root, split="train")
    npz = {r["id"]: r for r in BigEarthNetNpz(split=None).records}
    assert len(lm) == sum(m["split"] == "train" for m in v2_rows()) > 0
    for i in range(len(lm)):
        item = lm[i]
        ref = read_bigearthnet_npz(npz[item["id"]]["path"])
        assert sorted(item["image"].data_vars) == sorted(ref.data_vars)
        for b in ref.data_vars:
            np.testing.assert_array_equal(item["image"][b].values, ref[b].values)
            assert item["image"][b].dims == ref[b].dims and item["image"][b].attrs == ref[b].attrs
    assert lm.targets().shape == (len(lm), 19)
    with_s1 = BigEarthNetLMDB(lmdb_root, split="test", include_s1=True)
    s1 = next(with_s1[i]["image"] for i in range(len(with_s1)) if s1_arrays(with_s1.records[i]["id"]) is not None)
    assert s1["VV"].dtype == np.float32 and s1["VV"].shape == (120, 120)
    assert len(open_dataset("bigearthnet_lmdb", "test", lmdb_root)) == sum(m["split"] == "test" for m in v2_rows())


def test_snow_cloud_list_and_balanced_subset(lmdb_root, tmp_path):
    all_ids = BigEarthNetLMDB(lmdb_root).ids()
    ex = tmp_path / "exclude.parquet"
    pd.DataFrame({"patch_id": all_ids[:3]}).to_parquet(ex)
    kept = BigEarthNetLMDB(lmdb_root, exclude=ex).ids()
    assert kept == all_ids[3:]
    sub = BigEarthNetLMDB(lmdb_root, max_per_class=2)
    counts: dict[str, int] = {}
    for r in sub.records:
        for c in r["labels"]:
            counts[c] = counts.get(c, 0) + 1
    assert max(counts.values()) <= 2 and len(sub) < len(all_ids)
    with pytest.raises(FileNotFoundError, match="metadata.parquet"):
        BigEarthNetLMDB(tmp_path)
    with pytest.raises(KeyError, match="not in the LMDB"):
        ls.PatchReader(lmdb_root / ls.LMDB_DIR).get("S2A_no_such_patch")


@pytest.fixture()
def geotiff_root(tmp_path) -> Path:
    """The official v2 folder layout, written from the real arrays of 6 embedded patches."""
    root = tmp_path / "BigEarthNet-S2"
    for m in v2_rows()[:6]:
        ls.write_patch_folder(root, m["patch_id"], s2_arrays(m["patch_id"]))
    return root


def test_prepare_writes_rico_hdl_bytes_and_resumes(geotiff_root, tmp_path, monkeypatch):
    out = tmp_path / "prepared"
    first = ls.prepare_bigearthnet(geotiff_root, out, workers=1, limit=2, progress=False)
    assert first["written"] == 2 and first["total"] == 2
    # a kill during the next run: the first transaction commits, the second never does
    real_commit, calls = ls._commit, {"n": 0}

    def dying(env, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_commit(env, batch)

    monkeypatch.setattr(ls, "_commit", dying)
    with pytest.raises(KeyboardInterrupt):
        ls.prepare_bigearthnet(geotiff_root, out, workers=1, commit_every=2, progress=False)
    monkeypatch.setattr(ls, "_commit", real_commit)
    assert len(ls.existing_keys(out / ls.LMDB_DIR)) == 4
    done = ls.prepare_bigearthnet(geotiff_root, out, workers=2, progress=False)
    assert done["skipped"] == 4 and done["written"] == 2 and done["total"] == 6
    reader = ls.PatchReader(out / ls.LMDB_DIR)
    with reader._txn() as txn:
        for key in reader.keys():  # the same bytes the official encoder writes (see the real-LMDB test)
            assert txn.get(key.encode()) == ls.encode_patch(s2_arrays(key))
    v = ls.verify_lmdb(out / ls.LMDB_DIR, root=geotiff_root)
    assert v == {"checked": 6, "errors": []}


def test_prepare_cli_counts_against_metadata_and_verifies(geotiff_root, lmdb_root, tmp_path, capsys):
    from atomizer.cli import main

    out = tmp_path / "prepared"
    code = main(
        ["prepare", "bigearthnet", str(geotiff_root), "--out", str(out), "--workers", "1", "--quiet",
         "--metadata", str(lmdb_root / "metadata.parquet"), "--verify"]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text
    assert "6 patches written" in text and "verified 6 patches: 0 error(s)" in text
    assert f"{len(v2_rows()) - 6} metadata patches are not in the database" in text
    assert (out / "metadata.parquet").is_file()
    prepared = BigEarthNetLMDB(out)  # the prepared root reads as a dataset: the metadata rows it holds
    assert len(prepared) == 6 and prepared.missing == len(v2_rows()) - 6
    with rasterio.open(next(geotiff_root.rglob("*_B04.tif")), "r+") as dst:  # a source changed after the fact
        dst.write(np.zeros((120, 120), np.uint16), 1)
    assert main(["prepare", "bigearthnet", str(geotiff_root), "--out", str(out), "--verify-only"]) == 1
    assert "differs from its source" in capsys.readouterr().out
    assert main(["prepare", "bigearthnet", str(tmp_path / "nowhere"), "--out", str(out), "--quiet"]) == 2


def test_prepare_the_real_official_v2_folder(tmp_path):
    """The one patch of the official v2 GeoTIFF layout in ../shared/data (the rico-hdl integration fixture)."""
    root = SHARED / "benv2_geotiff_real" / "BigEarthNet-S2"
    if not root.is_dir():
        pytest.skip("../shared/data/benv2_geotiff_real is not next to this checkout")
    s = ls.prepare_bigearthnet(root, tmp_path, workers=1, progress=False)
    assert s["written"] == 1 and s["total"] == 1
    key = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43"
    arrays = ls.PatchReader(tmp_path / ls.LMDB_DIR).get(key)
    assert arrays["B02"].shape == (120, 120) and arrays["B8A"].shape == (60, 60) and arrays["B01"].shape == (20, 20)
    assert arrays["B02"].dtype == np.uint16
    assert ls.verify_lmdb(tmp_path / ls.LMDB_DIR, root=root)["errors"] == []
