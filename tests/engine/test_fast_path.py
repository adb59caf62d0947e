"""The loaders' fast path (LightImage: no xarray object per item) gives exactly the atoms of the xarray path,
on real images under every shipped modality, for the Atomizer and for the canvas baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atomizer.atoms.canvas import CanvasBatch, CanvasSpec
from atomizer.atoms.tokens import AtomBatch
from atomizer.core.paths import modality_sets_dir
from atomizer.data.datasets import BigEarthNetNpz, EuroSAT
from atomizer.data.light import LightImage, bigearthnet_light
from atomizer.data.modalities import load_modalities
from atomizer.data.readers import read_bigearthnet_npz
from atomizer.engine.loaders import ModalityDataset

SETS = sorted(p.stem for p in modality_sets_dir().glob("*.yaml"))


def assert_same(a, b) -> None:
    assert type(a) is type(b)
    for name, x in vars(a).items():
        y = getattr(b, name)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape, name
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=name)  # NaN: unknown date
        else:
            assert x == y, name


@pytest.mark.parametrize("name", SETS)
def test_fast_path_equals_xarray_path_under_every_modality(name):
    mods = load_modalities(name)
    base = EuroSAT(split="test") if mods.source_size_px == 64 else BigEarthNetNpz(split="test")
    n = min(len(base), 3 * len(mods))
    assignment = np.arange(len(base)) % len(mods)
    for kind, canvas in ((AtomBatch, None), (CanvasBatch, CanvasSpec(64, 10.0))):
        fast = ModalityDataset(base, mods, assignment, kind, canvas, random_window=True, seed=3, fast=True)
        slow = ModalityDataset(base, mods, assignment, kind, canvas, random_window=True, seed=3, fast=False)
        assert fast.fast and not slow.fast
        for i in range(n):
            a, b = fast[i], slow[i]
            assert_same(a["input"], b["input"])
            assert torch.equal(a["target"], b["target"]) and a["id"] == b["id"]
            assert isinstance(fast.simulated(i), LightImage)


def test_bigearthnet_light_matches_the_reader(ben_patch_paths):
    for path in ben_patch_paths[:5]:
        ref = read_bigearthnet_npz(path)
        with np.load(path) as z:
            light = bigearthnet_light({k: z[k] for k in z.files}, path.stem, str(path))
        back = light.to_xarray()
        assert list(back.data_vars) == list(ref.data_vars) and back.attrs == ref.attrs
        for b in ref.data_vars:
            assert back[b].attrs == ref[b].attrs and back[b].dims == ref[b].dims
            np.testing.assert_array_equal(back[b].values, ref[b].values)
            for d in ref[b].dims:
                np.testing.assert_array_equal(back[b][d].values, ref[b][d].values)
