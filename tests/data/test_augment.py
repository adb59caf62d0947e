"""Label-preserving augmentation (:mod:`atomizer.data.augment`) on a real EuroSAT-MS tile."""

from __future__ import annotations

import numpy as np
import pytest

from atomizer.atoms.tokens import AtomBatch
from atomizer.core.config import ConfigError
from atomizer.data.augment import AugmentConfig, augment
from atomizer.data.datasets import open_dataset
from atomizer.data.image import image_bands
from atomizer.data.layouts import read_eurosat
from atomizer.data.modalities import load_modalities, simulate
from atomizer.engine.loaders import InMemory, ModalityDataset


@pytest.fixture(scope="module")
def tile(eurosat_paths):
    tr1 = load_modalities("eurosat_train")["tr1"]  # 32 px @ 20 m, B02 B03 B04 B08
    return simulate(read_eurosat(eurosat_paths[0]), tr1), tr1


def test_flips_and_rotations_move_pixels_but_keep_every_value(tile):
    image, m = tile
    cfg = AugmentConfig(flips=True, rot90=True)
    changed = 0
    for s in range(8):
        out = augment(image, cfg, np.random.default_rng(s), m)
        assert image_bands(out) == image_bands(image)
        for b in image_bands(image):
            assert out[b].shape == image[b].shape
            np.testing.assert_array_equal(np.sort(out[b].values, axis=None), np.sort(image[b].values, axis=None))
        # one transform for every band (co-registered): the per-pixel (B02, B03) pairs are the same set
        pairs = lambda im: sorted(zip(im["B02"].values.ravel().tolist(), im["B03"].values.ravel().tolist()))  # noqa: E731
        assert pairs(out) == pairs(image)
        changed += not np.array_equal(out["B02"].values, image["B02"].values)
    assert changed >= 4  # most draws transform the image
    again = augment(image, cfg, np.random.default_rng(3), m)
    np.testing.assert_array_equal(again["B04"].values, augment(image, cfg, np.random.default_rng(3), m)["B04"].values)


def test_band_dropout_and_crops(tile):
    image, m = tile
    for s in range(10):
        out = augment(image, AugmentConfig(flips=False, rot90=False, band_drop=0.6), np.random.default_rng(s), m)
        kept = image_bands(out)
        assert 1 <= len(kept) <= 4 and set(kept) <= set(image_bands(image))
    out = augment(image, AugmentConfig(flips=False, rot90=False, crop_min=0.5), np.random.default_rng(0), m)
    h = out["B02"].shape[0]
    assert 16 <= h <= 32 and out["B02"].shape[0] == out["B02"].shape[1]
    with pytest.raises(ConfigError, match="crop_min"):
        AugmentConfig.from_dict({"crop_min": 0})


def test_training_items_are_a_pure_function_of_seed_epoch_index():
    base = InMemory(open_dataset("eurosat", "train", fold=0))
    base.items = base.items[:4]
    mods = load_modalities("eurosat_train").modalities
    ds = ModalityDataset(
        base, mods, np.arange(4) % 4, AtomBatch, random_window=True, seed=3, augment=AugmentConfig(band_drop=0.3)
    )
    a = [ds[i]["input"].value.clone() for i in range(4)]
    b = [ds[i]["input"].value for i in range(4)]
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a, b))
    ds.set_epoch(1)
    c = [ds[i]["input"].value for i in range(4)]
    assert any(x.shape != y.shape or not np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a, c))
