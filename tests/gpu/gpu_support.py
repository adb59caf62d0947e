"""What the GPU tests share: the device they run on, real input batches, and an optimiser step.

The tests run on CUDA (``pytest -m gpu``) and are skipped where there is none. ``scripts/device_check.sh
--dry-run`` runs the same tests on the CPU by setting :data:`DEVICE_ENV` to ``cpu`` (CI checks the tests
themselves that way; the comparisons with the host are then trivially on one device, the plumbing is not).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from atomizer.atoms.canvas import CanvasBatch, CanvasSpec
from atomizer.data.datasets import BigEarthNetNpz
from atomizer.data.modalities import Modality, load_modalities
from atomizer.engine.loaders import ModalityDataset, collate_items

#: The device the GPU tests use: ``cuda`` unless this variable names another (``cpu``: the dry run).
DEVICE_ENV = "ATOMIZER_GPU_TESTS_DEVICE"
#: BigEarthNet's 12 Sentinel-2 bands on their native grids: a modality that keeps the stored DN (uint16 wire).
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


def test_device() -> torch.device:
    """The device under test (:data:`DEVICE_ENV`, default ``cuda``)."""
    return torch.device(os.environ.get(DEVICE_ENV) or "cuda")


test_device.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def small() -> bool:
    """Smaller inputs off CUDA (the CPU dry run must stay quick)."""
    return test_device().type != "cuda"


def device_available() -> bool:
    return test_device().type != "cuda" or torch.cuda.is_available()


#: Every GPU test module: ``pytestmark = GPU``.
GPU = [
    pytest.mark.gpu,
    pytest.mark.skipif(not device_available(), reason=f"needs a CUDA device (or {DEVICE_ENV}=cpu, the dry run)"),
]


def modalities(name: str) -> Sequence[Modality]:
    """A shipped modality set by name, or ``native``: every band of BigEarthNet on its own grid (DN kept)."""
    if name == "native":
        return [Modality("native", 120, 10.0, S2_BANDS)]
    return list(load_modalities(name))


def ben_batch(kind: type, n: int = 8, mods: str = "bigearthnet_train", wire: str = "full", seed: int = 0) -> dict:
    """A collated batch of ``n`` real BigEarthNet patches (the embedded test split) under ``mods``, as the
    training loader builds it: ``{"input", "target", "id", "modality"}`` on the host."""
    ms = modalities(mods)
    base = BigEarthNetNpz(split="test")
    assignment = np.arange(len(base)) % len(ms)
    canvas = CanvasSpec.of(load_modalities("bigearthnet_train")) if kind is CanvasBatch else None
    ds = ModalityDataset(base, ms, assignment, kind, canvas, random_window=True, seed=seed, wire=wire)
    return collate_items([ds[i % len(base)] for i in range(n)])


def bf16_steps(model: torch.nn.Module, batch: dict, device: torch.device, steps: int = 3) -> list[float]:
    """``steps`` AdamW steps of ``model`` on ``batch`` under bf16 autocast; the losses."""
    from atomizer.core.runtime import autocast

    x, y = batch["input"].to(device), batch["target"].to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        with autocast("bf16", device):
            logits = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def assert_same_atoms(a, b) -> None:
    """Two batches hold the same tensors (dtype, shape, values; NaN equal) and the same other fields."""
    assert type(a) is type(b)
    for name, x in vars(a).items():
        y = getattr(b, name)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape, name
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=name)
        else:
            assert x == y, name
