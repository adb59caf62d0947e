"""The shipped modality sets of the CaFFe dense set (``caffe_train`` / ``caffe_test``): one band (TerraSAR-X
HH), so the sets differ in GSD and window size only; every modality fits every real image of
``data/embedded/dense/caffe``, and a tiny Atomizer trains on them with ``atomizer train`` and is scored on
the test modalities with ``atomizer evaluate`` (a real run: two epochs on the shipped images)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import yaml

from atomizer.cli import main
from atomizer.data.manifest import ManifestDataset
from atomizer.data.modalities import Modality, ModalityError, check_disjoint, check_fit, load_modalities, simulate
from tests.conftest import EMBEDDED

MANIFEST = EMBEDDED / "dense" / "caffe" / "manifest.csv"


def test_caffe_sets_differ_in_size_and_gsd_and_share_only_the_one_band():
    train, test = load_modalities("caffe_train"), load_modalities("caffe_test")
    assert {b for s in (train, test) for m in s for b in m.bands} == {"HH"}
    assert (train.source_size_px, train.source_gsd_m) == (test.source_size_px, test.source_gsd_m) == (512, 6)
    # check_disjoint's size, GSD and range rules all hold; only its band rules fail, as they must with one band
    band_rules = {f"{te.name} has the same band set as {tr.name}" for te in test for tr in train}
    band_rules.add("no test modality contains a band unseen in training")
    assert set(check_disjoint(train, test)) == band_rules
    assert all(10 <= m.gsd_m <= 20 for m in train)
    gsds, sizes = [m.gsd_m for m in train], [m.size_px for m in train]
    assert any(m.gsd_m < min(gsds) for m in test) and any(m.gsd_m > max(gsds) for m in test)  # finer and coarser
    assert any(m.size_px < min(sizes) for m in test) and any(m.size_px > max(sizes) for m in test)
    assert len(set(train.names)) == len(train) and len(set(test.names)) == len(test)


def test_every_caffe_modality_fits_every_real_image():
    ds = ManifestDataset(MANIFEST)
    mods = [*load_modalities("caffe_train"), *load_modalities("caffe_test")]
    assert len(ds.records) == 9
    filled = dict.fromkeys([m.name for m in mods], 0)  # images whose centred window is mostly SAR, not padding
    for rec in ds.records:
        image = ds.load(rec)
        check_fit(image, mods, "caffe")
        for m in mods:
            out = simulate(image, m)
            assert out["HH"].shape == (m.size_px, m.size_px), (rec["id"], m.name)
            values = np.asarray(out["HH"].values, dtype=np.float64)
            assert np.isfinite(values).all(), (rec["id"], m.name)
            filled[m.name] += int((values > 0).mean() > 0.5)
    # CaFFe zero-pads its patches: two of the nine (sample_1632, sample_5353) are padding at their centre
    assert all(n >= 7 for n in filled.values()), filled
    # a window wider than the 6 m images (512 px x 6 m = 3,072 m) is refused in one line
    with pytest.raises(ModalityError, match="3,?0?72|window"):
        check_fit(ds.load(ds.records[0]), [Modality("wide", 520, 6.0, ("HH",))], "caffe")


def test_atomizer_train_and_evaluate_on_caffe_with_its_modality_sets(tmp_path, capsys):
    """``atomizer train`` (tiny Atomizer, 2 epochs on fold 0) then ``atomizer evaluate`` on caffe_test."""
    cfg = {
        "model": "atomizer",
        "preset": "tiny",
        "dataset": str(MANIFEST),
        "fold": 0,
        "train_modalities": "caffe_train",
        "test_modalities": "caffe_test",
        "epochs": 2,
        "batch_size": 2,
        "device": "cpu",
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "train.yaml"), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{") :])
    assert summary["step"] >= 2 and np.isfinite(summary["best_val_miou"])
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(x["loss"]) for x in lines if x["kind"] == "train")
    res_path = tmp_path / "results.nc"
    ckpt = run / "checkpoints" / "best.pt"
    assert main(["evaluate", str(ckpt), "--modalities", "caffe_test", "--out", str(res_path)]) == 0
    with xr.open_dataset(res_path) as res:
        assert list(res.modality.values) == load_modalities("caffe_test").names
        miou = res["score"].sel(metric="miou").values
        assert np.isfinite(miou).all() and ((miou >= 0) & (miou <= 100)).all()
