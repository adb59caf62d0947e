"""Adapters on a frozen segmentation Atomizer (the dense decoder is its task head): a base trained on TerraMesh
(Sentinel-2 + Sentinel-1) adapted to CaFFe (TerraSAR-X HH, its own classes), real shipped data, short runs."""

from __future__ import annotations

import pytest
import torch

from atomizer.engine.evaluation import evaluate_checkpoint
from atomizer.engine.training import TrainConfig, train
from atomizer.models.checkpoint import load_model, read_checkpoint
from tests.conftest import EMBEDDED, REPO_ROOT

TERRAMESH = (EMBEDDED / "dense" / "terramesh" / "manifest.csv").relative_to(REPO_ROOT).as_posix()
CAFFE = (EMBEDDED / "dense" / "caffe" / "manifest.csv").relative_to(REPO_ROOT).as_posix()


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)


def test_a_terramesh_model_adapted_to_caffe_trains_only_adapters_and_its_pixel_classifier(tmp_path):
    common = {"model": "atomizer", "preset": "tiny", "model_overrides": {"encoding": {"gsd_code": False}},
              "fold": 0, "epochs": 1, "batch_size": 2, "dense_train_queries": 256, "device": "cpu"}  # fmt: skip
    base = train(
        TrainConfig.from_dict({**common, "dataset": TERRAMESH, "train_modalities": "terramesh_train",
                               "test_modalities": "terramesh_test", "max_steps": 1, "out_dir": str(tmp_path / "base")}),
        progress=False,
    )  # fmt: skip
    adapters = {"kinds": ["lora", "spectral"], "head": "fc", "max_fraction": 0.2}
    adapted = train(
        TrainConfig.from_dict({**common, "dataset": CAFFE, "train_modalities": "caffe_train", "test_modalities":
                               "caffe_test", "max_steps": 2, "lr": 0.01, "init": base["best"], "adapters": adapters,
                               "out_dir": str(tmp_path / "adapted")}),
        progress=False,
    )  # fmt: skip
    b = read_checkpoint(base["best"])["state_dict"]
    a = read_checkpoint(adapted["last"])
    assert a["extra"]["task"] == "segmentation" and a["extra"]["adapters"]["head"] == "fc"
    trained = {"dense.fc.weight", "dense.fc.bias", "dense.out_norm.weight", "dense.out_norm.bias"}
    for k, v in a["state_dict"].items():
        if ".lora_" in k or k.startswith("encoder.mlp.") or k in trained or k.startswith("head.fc."):
            continue  # (the pooling head's own classifier is sized for the new classes, and unused by a segmenter)
        assert torch.equal(v, b[k.replace(".base.", ".")]), k  # encoder, pooling head, rest of the decoder: frozen
    assert a["state_dict"]["dense.fc.weight"].shape[0] == len(a["extra"]["classes"]) != b["dense.fc.weight"].shape[0]
    rep = adapted["trainable_parameters"]
    assert rep["head"] == sum(a["state_dict"][k].numel() for k in trained)  # the pixel classifier only
    model = load_model(adapted["best"])
    assert any(".lora_" in k for k, _ in model.named_parameters())
    res = evaluate_checkpoint(adapted["best"], "caffe_test", dataset=CAFFE, batch_size=2, device="cpu")
    assert "miou" in [str(m) for m in res["metric"].values]
