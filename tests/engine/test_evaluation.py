"""Evaluation's loader: worker processes and streaming from the source give exactly the in-process,
in-memory predictions (Atomizer atoms travel compact from the workers; the canvas baselines as canvases)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import atomizer.engine.evaluation as evaluation
import atomizer.engine.loaders as loaders
from atomizer.atoms.canvas import CanvasSpec
from atomizer.data.datasets import EuroSAT
from atomizer.data.modalities import load_modalities
from atomizer.models.registry import build_model


@pytest.mark.parametrize("arch", ["atomizer", "resnet"])
def test_workers_and_streaming_give_the_in_process_predictions(arch, monkeypatch):
    data = EuroSAT(split="test")
    data.records = data.records[:10]
    mods = [m for m in load_modalities("eurosat_test") if m.name in ("T1", "T3")]  # DN kept; averaged
    torch.manual_seed(0)
    model = build_model(arch, "tiny", num_classes=len(data.classes)).eval()
    kw = dict(canvas=CanvasSpec(64, 10.0), batch_size=4, device="cpu", model_name=arch)
    ref = evaluation.predict_modalities(model, data, mods, **kw)
    monkeypatch.setattr(loaders, "IN_MEMORY_MAX_IMAGES", 5)  # 10 images: read per modality, not kept
    streamed = evaluation.predict_modalities(model, data, mods, num_workers=2, **kw)
    np.testing.assert_array_equal(streamed["logit"].values, ref["logit"].values)
    np.testing.assert_array_equal(streamed["target"].values, ref["target"].values)
    assert list(streamed.image.values) == list(ref.image.values)


def test_a_large_dataset_is_not_kept_in_memory(monkeypatch):
    """Training and validation datasets cache what they read only when small: the full BigEarthNet
    (69,373 training patches) would otherwise be held whole in every loader worker."""
    data = EuroSAT(split="test")
    mods = load_modalities("eurosat_train").modalities
    small = loaders.ModalityDataset(data, mods)
    small[0]
    assert small._cache is not None and 0 in small._cache
    monkeypatch.setattr(loaders, "IN_MEMORY_MAX_IMAGES", len(data) - 1)
    large = loaders.ModalityDataset(data, mods)
    large[0]
    assert large._cache is None
    assert loaders.ModalityDataset(data, mods, cache=True)._cache is not None  # asked for: kept
