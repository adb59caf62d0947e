"""The baselines' input: an image laid out on a fixed canvas, and :class:`CanvasBatch`, the canvas models'
counterpart of :class:`atomizer.atoms.tokens.AtomBatch`.

The input protocol is the paper's, and it is the baselines' handicap by design (method note, section 5):
the Atomizer reads every band on its own grid with its own GSD and never sees padding, while a
baseline reads one fixed tensor, the *canvas*, built by :func:`to_canvas`:

1. The canvas has one channel per band of :data:`CANVAS_BANDS`, the 12 Sentinel-2 L2A bands, in that
   order, and ``size_px x size_px`` pixels on a reference grid of ``gsd_m`` (120 px at 10 m: a native
   BigEarthNet patch).
2. Every present band is converted to its physical value ``(DN + dn_offset) * dn_scale`` and normalised
   with the Atomizer's fixed, sensor-free scaling (:func:`atomizer.atoms.encodings.normalize_values`, i.e.
   :data:`atomizer.atoms.encodings.PHYSICAL_SCALING`, clamped to [-4, 4]), so both families see the same
   value scale and any difference comes from how the input is laid out, not from normalisation.
3. The band is resampled, bilinearly (``torch.nn.functional.interpolate``, ``align_corners=False``),
   from its own grid onto the reference grid covering the band's ground extent: a band of ``n`` pixels
   at GSD ``g`` covers ``n * g`` metres and becomes ``round(n * g / gsd_m)`` canvas pixels. A band
   already on the reference grid is copied unchanged.
4. The result is zero-padded and centred in the canvas (centre-cropped when larger). Every band is
   centred on its own extent; the bands of one image share a centre (readers and
   :func:`atomizer.data.modalities.simulate` keep a common window), so they stay co-registered.
5. Missing bands are zero-filled. Nodata and NaN pixels are 0 on the canvas as well, so everything the
   image does not provide reads the same value, 0 (a reflectance of 0.25 after normalisation).

No mask tells the model which channels, pixels or borders are real: the model is told only the
modality's GSD (:func:`image_gsd`), which only the ScaleMAE baseline uses. A coarse modality therefore
arrives as a blurred upsampled image, a small crop as an image with a zero frame, and a band subset as
zero channels, as in the paper's comparison. (:attr:`CanvasBatch.present` records which canvas bands an
image had, for analysis; the models never read it.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import Tensor

from atomizer.atoms.encodings import normalize_values
from atomizer.atoms.tokens import extra_channel
from atomizer.data.light import LightImage, Raster
from atomizer.data.modalities import ModalitySet, load_modalities

#: A canvas model refuses an input filling fewer canvas bands than this with a valid value. One band is
#: the floor: the landscape and the test modalities include inputs of 1-3 bands, which the canvas models
#: must still read (zero-filled channels are their handicap by design), but an input with no valid value
#: at all is refused, as the Atomizer refuses an empty atom set.
MIN_CANVAS_BANDS = 1


class EmptyCanvasError(ValueError):
    """An image fills too few canvas bands with a valid value (all nodata / NaN)."""


#: The 12 Sentinel-2 L2A bands of the canvas, in channel order (B10 is not in L2A products).
CANVAS_BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


def _normalised_band(band: Raster) -> tuple[Tensor, bool]:
    """One band -> ((h, w) float32 normalised values, invalid pixels 0; whether any pixel is valid)."""
    a = band.attrs
    phys, ok = band.physical()
    ec = extra_channel(a.get("domain", "optical"), a.get("polarisation") or None)
    v = torch.from_numpy(np.ascontiguousarray(phys, dtype=np.float32))
    out = normalize_values(v, torch.full_like(v, ec))
    return torch.where(torch.from_numpy(ok), out, torch.zeros_like(out)), bool(ok.any())


def _place(band: Tensor, size_px: int) -> Tensor:
    """Centre ``band`` (h, w) in a zero (size_px, size_px) frame, cropping its centre if larger."""
    out = band.new_zeros(size_px, size_px)
    h, w = band.shape
    # Source and destination slices per axis: pad (dst offset) when smaller, crop (src offset) when larger.
    (sy, dy, ny), (sx, dx, nx) = [(max(n - size_px, 0) // 2, max(size_px - n, 0) // 2, min(n, size_px)) for n in (h, w)]
    out[dy : dy + ny, dx : dx + nx] = band[sy : sy + ny, sx : sx + nx]
    return out


def to_canvas(
    image: xr.Dataset | LightImage, canvas_bands: Sequence[str] = CANVAS_BANDS, size_px: int = 120, gsd_m: float = 10.0
) -> tuple[Tensor, Tensor]:
    """Lay an image out on the baselines' fixed canvas (protocol in the module docstring).

    Args:
        image: The image representation of :mod:`atomizer.data.readers` (any bands, native grids), or its
            :class:`~atomizer.data.light.LightImage` (the loaders' fast path: the same canvas, tested).
        canvas_bands: Band names of the canvas channels, in order; bands of the image not listed are
            ignored.
        size_px: Side of the canvas in pixels.
        gsd_m: Pixel size of the canvas grid in metres.

    Returns:
        ``(canvas (C, size_px, size_px) float32, present (C,) bool)``: ``present[c]`` says whether the
        image fills band ``canvas_bands[c]``: has it, with at least one valid pixel (the models never see
        it; it is for analysis and for refusing empty inputs).

    Raises:
        ValueError: ``size_px`` or ``gsd_m`` is not positive, or the image has no canvas band.
        EmptyCanvasError: fewer than :data:`MIN_CANVAS_BANDS` canvas bands hold a valid value.
    """
    if int(size_px) < 1 or not float(gsd_m) > 0:
        raise ValueError(f"size_px and gsd_m must be positive, got {size_px} and {gsd_m}")
    size_px, gsd_m = int(size_px), float(gsd_m)
    if not isinstance(image, LightImage):
        image = LightImage.from_xarray(image)
    have = set(image.bands)
    present = torch.tensor([b in have for b in canvas_bands], dtype=torch.bool)
    if not bool(present.any()):
        raise ValueError(
            f"image {image.attrs.get('source', '')!s} has none of the canvas bands "
            f"{list(canvas_bands)} (its bands: {sorted(have)})"
        )
    canvas = torch.zeros(len(canvas_bands), size_px, size_px)
    for c, name in enumerate(canvas_bands):
        if name not in have:
            continue
        raster = image.bands[name]
        g = raster.gsd
        band, any_valid = _normalised_band(raster)  # (h, w)
        present[c] = any_valid  # a band of nodata only fills nothing
        h, w = band.shape
        th, tw = max(1, round(h * g / gsd_m)), max(1, round(w * g / gsd_m))
        if (th, tw) != (h, w):
            band = F.interpolate(band[None, None], size=(th, tw), mode="bilinear", align_corners=False)[0, 0]
        canvas[c] = _place(band, size_px)
    if int(present.sum()) < MIN_CANVAS_BANDS:
        raise EmptyCanvasError(
            f"image {image.attrs.get('source', '')!s} fills {int(present.sum())} of the {len(canvas_bands)} canvas "
            f"bands with a valid value (at least {MIN_CANVAS_BANDS} needed): every pixel of its canvas bands is "
            "nodata or NaN, so a canvas model has nothing to answer from"
        )
    return canvas, present


def image_gsd(image: xr.Dataset | LightImage, canvas_bands: Sequence[str] = CANVAS_BANDS) -> float:
    """The modality GSD of an image: the finest GSD among its canvas bands.

    :func:`atomizer.data.modalities.simulate` brings every band finer than the modality GSD to that GSD and
    keeps coarser bands on their own grids, so the finest present band is at the modality GSD (a
    native BigEarthNet patch: 10 m). The coarsest band would say 60 m for any image holding B01.
    """
    if not isinstance(image, LightImage):
        image = LightImage.from_xarray(image)
    gsds = [image.bands[b].gsd for b in canvas_bands if b in image.bands]
    if not gsds:
        raise ValueError(f"image {image.attrs.get('source', '')!s} has none of the canvas bands")
    return min(gsds)


@dataclass(frozen=True)
class CanvasSpec:
    """The baselines' fixed input grid (the source format of the modality set)."""

    size_px: int = 64
    gsd_m: float = 10.0

    @classmethod
    def of(cls, modalities: ModalitySet | str | Path) -> CanvasSpec:
        """The canvas rule, its one home: a modality set's source format (64 px at 10 m where it names none).
        ``modalities`` may be a set or what :func:`~atomizer.data.modalities.load_modalities` reads."""
        mods = modalities if isinstance(modalities, ModalitySet) else load_modalities(modalities)
        return cls(int(mods.source_size_px or cls.size_px), float(mods.source_gsd_m or cls.gsd_m))

    @classmethod
    def of_training(cls, extra: Mapping[str, Any]) -> CanvasSpec | None:
        """The canvas of a checkpoint's training modalities (its ``extra``), None where it names none."""
        train_modalities = extra.get("train_modalities")
        return cls.of(train_modalities) if train_modalities else None


@dataclass
class CanvasBatch:
    """A batch of canvases: what every canvas model's ``forward(batch)`` reads.

    Shapes: ``pixels`` (S, C, H, W) float32, ``gsd`` (S,) float32 (the modality GSD of each image,
    :func:`image_gsd`), ``present`` (S, C) bool (which canvas bands the image had). ``extent_m`` is the
    ground side of the canvas in metres (``size_px * gsd_m`` of its :class:`CanvasSpec`, the same for every
    canvas of a batch), which a segmentation model needs to place its per-pixel output in metres
    (:func:`atomizer.atoms.dense.sample_canvas`); ``None`` for a batch built without it (a classifier
    never reads it).
    """

    pixels: Tensor
    gsd: Tensor
    present: Tensor
    extent_m: float | None = None

    @property
    def num_sets(self) -> int:
        return self.pixels.shape[0]

    def _map(self, fn) -> "CanvasBatch":
        """``fn`` applied to every tensor field (``extent_m`` is carried over)."""
        return CanvasBatch(
            **{f.name: (fn(v) if isinstance(v := getattr(self, f.name), Tensor) else v) for f in fields(self)}
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "CanvasBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "CanvasBatch":
        return self._map(lambda t: t.pin_memory())

    @classmethod
    def collate(cls, items: Sequence["CanvasBatch"]) -> "CanvasBatch":
        """Concatenate batches (each item usually a batch of one) along the set dimension; they must share
        their canvas extent."""
        if not items:
            raise ValueError("CanvasBatch.collate needs at least one batch")
        extents = {b.extent_m for b in items}
        if len(extents) > 1:
            raise ValueError(
                f"CanvasBatch.collate: the canvases cover different extents {sorted(map(str, extents))} (m); "
                "one batch holds canvases of one CanvasSpec"
            )
        return CanvasBatch(
            torch.cat([b.pixels for b in items]),
            torch.cat([b.gsd for b in items]),
            torch.cat([b.present for b in items]),
            items[0].extent_m,
        )

    @classmethod
    def from_image(
        cls, image: xr.Dataset | LightImage, canvas: CanvasSpec | None = None, wire: str = "full"
    ) -> "CanvasBatch":
        """One image on the canvas ``canvas`` (default :class:`CanvasSpec`), as a batch of one. ``wire`` is
        accepted for the model-input protocol and has no effect: a canvas, resampled and normalised floats,
        travels in its one form."""
        if not isinstance(image, LightImage):
            image = LightImage.from_xarray(image)  # once, for the canvas and its GSD
        spec = canvas or CanvasSpec()
        x, present = to_canvas(image, size_px=spec.size_px, gsd_m=spec.gsd_m)
        gsd = torch.tensor([image_gsd(image)], dtype=torch.float32)
        return cls(x[None], gsd, present[None], extent_m=spec.size_px * spec.gsd_m)


def canvas_batch(
    images: Sequence[xr.Dataset], canvas_bands: Sequence[str] = CANVAS_BANDS, size_px: int = 120, gsd_m: float = 10.0
) -> CanvasBatch:
    """Canvases of several images and their modality GSDs, as one :class:`CanvasBatch`.

    ``gsd`` is the modality GSD of each image (:func:`image_gsd`: its finest canvas band's GSD), the
    value the ScaleMAE baseline reads; ``extent_m`` is ``size_px * gsd_m``.
    """
    if len(images) == 0:
        raise ValueError("canvas_batch needs at least one image")
    laid = [to_canvas(im, canvas_bands, size_px, gsd_m) for im in images]
    gsd = torch.tensor([image_gsd(im, canvas_bands) for im in images], dtype=torch.float32)
    return CanvasBatch(torch.stack([x for x, _ in laid]), gsd, torch.stack([p for _, p in laid]), size_px * gsd_m)
