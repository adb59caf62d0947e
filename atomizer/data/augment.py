"""Label-preserving augmentation of an image, applied after the modality simulation and before the
model's input is built (atoms or canvas), so Atomizer and the baselines get the same augmentation.

* ``flips``: mirror left-right and/or top-bottom (each with probability 1/2);
* ``rot90``: rotate by a random multiple of 90 degrees (only when every band's grid is square);
* ``crop_min``: keep a random square sub-window of side ``f`` x the window, ``f ~ U[crop_min, 1]``,
  at the same GSD (a smaller ground extent; 1.0 disables it);
* ``band_drop``: drop each band with this probability (at least one band is always kept).

Flips and rotations act on every band's pixel grid around the common window centre (readers and
:func:`atomizer.data.modalities.simulate` keep one window for all bands); coordinates are unchanged. The
image records them (``attrs["augment_grid"]``) and :func:`augment_grid` repeats them on a segmentation
target centred on the same window. All
randomness comes from the generator the caller passes (a pure function of ``(seed, epoch, index)`` in
:class:`atomizer.engine.loaders.ModalityDataset`), so a resumed run draws the same augmentation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import xarray as xr

from atomizer.core.config import Config
from atomizer.data.image import image_bands
from atomizer.data.modalities import Modality, simulate


@dataclasses.dataclass(frozen=True)
class AugmentConfig(Config):
    """Which augmentations a training run applies (``TrainConfig.augment``)."""

    kind: ClassVar[str] = "augmentation"

    flips: bool = True
    rot90: bool = True
    crop_min: float = 1.0
    band_drop: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_min <= 1.0:
            raise ValueError(f"augmentation: crop_min must be in (0, 1], got {self.crop_min}")
        if not 0.0 <= self.band_drop < 1.0:
            raise ValueError(f"augmentation: band_drop must be in [0, 1), got {self.band_drop}")


def augment(
    image: xr.Dataset, cfg: AugmentConfig, rng: np.random.Generator, modality: Modality | None = None
) -> xr.Dataset:
    """One random augmentation of ``image`` (see the module docstring); ``modality`` is the modality the
    image was simulated with (its size and GSD define the crop)."""
    names = image_bands(image)
    if cfg.band_drop > 0 and len(names) > 1:
        keep = [b for b in names if rng.random() >= cfg.band_drop]
        if not keep:
            keep = [names[int(rng.integers(len(names)))]]
        image = image[keep]
        names = keep
    if cfg.crop_min < 1.0 and modality is not None:
        f = rng.uniform(cfg.crop_min, 1.0)
        size = max(1, int(round(f * modality.size_px)))
        if size < modality.size_px:
            image = simulate(image, Modality("crop", size, modality.gsd_m, tuple(names)), rng=rng)
    flip_x = cfg.flips and rng.random() < 0.5
    flip_y = cfg.flips and rng.random() < 0.5
    square = all(image[b].shape[0] == image[b].shape[1] for b in names)
    k = int(rng.integers(4)) if cfg.rot90 and square else 0
    if not (flip_x or flip_y or k):
        return image
    out = image.copy()
    out.attrs["augment_grid"] = [int(flip_x), int(flip_y), k]  # what :func:`augment_grid` repeats on a target
    for b in names:
        a = image[b].values
        if flip_x:
            a = a[:, ::-1]
        if flip_y:
            a = a[::-1, :]
        if k:
            a = np.rot90(a, k)
        out[b] = image[b].copy(data=np.ascontiguousarray(a))
    return out


def augment_grid(grid: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """Apply to a grid centred on the same window (a segmentation target on its output grid) the flips and
    rotation :func:`augment` applied to the bands of the image whose ``attrs`` are given, so every output
    pixel keeps the label of the ground its atoms now show (a crop is already in the image's ``window_m``)."""
    flip_x, flip_y, k = attrs.get("augment_grid", (0, 0, 0))
    if flip_x:
        grid = grid[:, ::-1]
    if flip_y:
        grid = grid[::-1, :]
    if k:
        grid = np.rot90(grid, k)
    return np.ascontiguousarray(grid)
