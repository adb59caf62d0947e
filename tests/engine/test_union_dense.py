"""One segmentation Atomizer trained on two sensors' datasets at once (a union, :mod:`atomizer.data.union`):
TerraMesh (Sentinel-2 + Sentinel-1 at 10 m) and CaFFe (TerraSAR-X HH at 6-6.67 m), every image read as it is
(modality set ``native``), scored per part. Real shipped data; the run is short (tiny preset, one epoch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from atomizer.data.datasets import open_dataset
from atomizer.data.modalities import NATIVE_MODALITY, ModalityError, check_dataset_fit, load_modalities, modality_set
from atomizer.engine.loaders import ModalityDataset, collate_items
from atomizer.engine.metrics import part_miou, segmentation_scores
from tests.conftest import EMBEDDED, REPO_ROOT

TERRAMESH = (EMBEDDED / "dense" / "terramesh" / "manifest.csv").relative_to(REPO_ROOT).as_posix()
CAFFE = (EMBEDDED / "dense" / "caffe" / "manifest.csv").relative_to(REPO_ROOT).as_posix()
UNION = f"{TERRAMESH}+{CAFFE}"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)


def test_native_keeps_every_band_on_its_grid_and_batches_two_sensors():
    """A TerraMesh and a CaFFe image in one batch: each keeps all its bands at its own GSD and its whole extent;
    the targets are each mask on its own output grid (224 px at 10 m, 512 px at 6-6.67 m), padded."""
    u = open_dataset(UNION, "test", fold=0)
    ds = ModalityDataset(u, [NATIVE_MODALITY], dense=True)
    items = [ds[0], ds[1]]
    assert [it["id"].split("/")[0] for it in items] == ["terramesh", "caffe"]
    sizes = [int(it["target"].shape[0]) for it in items]
    assert sizes == [224, 512]
    raw = [u[0]["image"], u[1]["image"]]
    assert len(raw[0].data_vars) == 14 and len(raw[1].data_vars) == 1
    assert items[0]["gsd"] == pytest.approx(10.0) and 6.0 <= items[1]["gsd"] <= 6.7
    t1 = items[1]["target"]
    assert int(t1[t1 >= 0].min()) >= 9  # CaFFe's classes sit after TerraMesh's nine
    batch = collate_items(items)
    assert batch["target"].shape == (2, 512 * 512)
    assert int((batch["target"][0] >= 0).sum()) <= 224 * 224  # TerraMesh's row: its own pixels, then padding


def test_a_modality_set_that_fits_one_sensor_is_refused_naming_the_part():
    u = open_dataset(UNION, "train", fold=0)
    with pytest.raises(ModalityError) as e:
        check_dataset_fit(u, load_modalities("terramesh_train").modalities, "dataset union")
    msg = str(e.value)
    assert "\n" not in msg and "part 'caffe'" in msg and "native" in msg
    check_dataset_fit(u, modality_set("native").modalities, "dataset union")  # native fits every image


def test_part_miou_scores_each_part_on_its_images_and_classes():
    """Two parts (classes a/0, a/1 | b/0); a pixel of part b predicted as a class of part a is a miss of b/0."""
    conf = torch.zeros(2, 3, 3, dtype=torch.long)
    conf[0, 0, 0], conf[0, 1, 1], conf[0, 1, 0] = 5, 3, 1  # image of part a
    conf[1, 2, 2], conf[1, 2, 0] = 6, 2  # image of part b: 2 pixels predicted as a/0
    out = part_miou(conf, ["a", "b"], ["a", "a", "b"])
    assert out["a"] == pytest.approx(100 * (5 / 6 + 3 / 4) / 2)
    assert out["b"] == pytest.approx(100 * 6 / 8)  # not 100: the cross-part predictions count against b
    whole = segmentation_scores(conf)["miou"]
    assert whole != pytest.approx(out["a"]) and whole != pytest.approx(out["b"])
    with pytest.raises(ValueError, match="image parts"):
        part_miou(conf, ["a"], ["a", "a", "b"])


def test_train_and_evaluate_one_atomizer_on_the_union(tmp_path, capsys):
    from atomizer.cli import main
    from atomizer.engine.evaluation import evaluate_checkpoint
    from atomizer.engine.training import TrainConfig, train
    from atomizer.models.checkpoint import load_trained

    cfg = TrainConfig.from_dict(
        {
            "model": "atomizer",
            "preset": "tiny",
            "model_overrides": {"encoding": {"gsd_code": False}},
            "dataset": UNION,
            "fold": 0,
            "train_modalities": "native",
            "test_modalities": "native",
            "epochs": 1,
            "max_steps": 2,
            "batch_size": 2,
            "device": "cpu",
            "out_dir": str(tmp_path / "run"),
        }
    )
    summary = train(cfg, progress=False)
    trained = load_trained(summary["best"])
    assert trained.extra["task"] == "segmentation" and len(trained.extra["classes"]) == 12
    assert trained.extra["classes"][9] == "caffe/rock"
    res, preds = evaluate_checkpoint(summary["best"], "native", predictions=True, batch_size=2, device="cpu")
    assert preds["part"].values.tolist() == ["terramesh", "caffe", "caffe"]  # fold 0's test images
    assert preds["confusion"].shape == (1, 3, 12, 12)
    conf = preds["confusion"].values[0]
    assert conf[0, 9:, :].sum() == 0 and conf[1:, :9, :].sum() == 0  # each image is true only in its part
    scores = res["score"].sel(model=res.model.values[0], modality="native")
    for part in ("terramesh", "caffe"):
        v = float(scores.sel(metric=f"miou_{part}"))
        assert math.isfinite(v) and 0.0 <= v <= 100.0
    assert int(res["size_px"].values[0]) == 0 and str(res["bands"].values[0]) == "native"
    assert main(["evaluate", summary["best"], "--modalities", "native", "--device", "cpu", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "miou_terramesh" in out and "miou_caffe" in out
    assert np.isfinite(float(scores.sel(metric="miou")))
