"""The image representation without xarray: one :class:`Raster` per band, for the hot path of the loaders.

A :class:`LightImage` holds exactly what an image of :mod:`atomizer.data.image` holds (per band: the
values, the pixel-centre coordinates of its grid, its dimension names and attributes; the image's
attributes) as plain numpy arrays and dicts. :func:`atomizer.data.modalities.simulate` and
:func:`atomizer.atoms.tokens.tokenize` compute on it; their xarray forms convert at the edges, so both
forms give the same atoms. Building one costs microseconds where an ``xarray.Dataset`` costs milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import xarray as xr

from atomizer.data.bands import get_sensor
from atomizer.data.image import band_attrs, grid_dims
from atomizer.data.metadata import date_from_name


@dataclass
class Raster:
    """One band on its grid: ``values`` (h, w), pixel centres ``xs`` (w,) east and ``ys`` (h,) decreasing."""

    values: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    dims: tuple[str, str]
    attrs: dict[str, Any]

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    @property
    def gsd(self) -> float:
        return float(self.attrs["gsd_m"])

    def valid(self) -> np.ndarray:
        """True where the pixel holds data: finite, and not the band's ``nodata``."""
        raw = self.values
        ok = np.isfinite(raw) if raw.dtype.kind == "f" else np.ones(raw.shape, bool)
        nodata = self.attrs.get("nodata")
        if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
            ok &= raw != nodata
        return ok

    def physical(self) -> tuple[np.ndarray, np.ndarray]:
        """``((DN + dn_offset) * dn_scale, valid)`` as float32; invalid pixels set to 0."""
        ok = self.valid()
        a = self.attrs
        v = (self.values.astype(np.float32) + np.float32(a.get("dn_offset", 0.0))) * np.float32(a.get("dn_scale", 1.0))
        v[~ok] = 0.0
        return v, ok


@dataclass
class LightImage:
    """Bands (in order) and image attributes; see the module docstring."""

    bands: dict[str, Raster]
    attrs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_xarray(cls, ds: xr.Dataset) -> "LightImage":
        bands = {}
        for name, da in ds.data_vars.items():
            if "wavelength_nm" not in da.attrs:
                continue
            ydim, xdim = (str(d) for d in da.dims)
            bands[str(name)] = Raster(
                np.asarray(da.values),
                np.asarray(da[xdim].values),
                np.asarray(da[ydim].values),
                (ydim, xdim),
                dict(da.attrs),
            )
        return cls(bands, dict(ds.attrs))

    def to_xarray(self) -> xr.Dataset:
        ds = xr.Dataset(
            {
                n: xr.DataArray(r.values, dims=r.dims, coords={r.dims[0]: r.ys, r.dims[1]: r.xs}, attrs=r.attrs)
                for n, r in self.bands.items()
            }
        )
        ds.attrs.update(self.attrs)
        return ds


def common_frame(
    image: LightImage, bands: list[str] | tuple[str, ...] | None = None
) -> tuple[float, float, float, float, float]:
    """``(left, top, width, height, finest gsd)`` in metres of the ground every one of ``bands`` (default all)
    covers: the frame that :func:`atomizer.data.modalities.simulate` offsets its windows in."""
    names = list(bands) if bands is not None else list(image.bands)
    boxes = []
    for b in names:
        r = image.bands[b]
        g = r.gsd
        boxes.append((float(r.xs[0]) - g / 2, float(r.ys[0]) + g / 2, len(r.xs) * g, len(r.ys) * g, g))
    left = max(b[0] for b in boxes)
    top = min(b[1] for b in boxes)
    width = min(b[0] + b[2] for b in boxes) - left
    height = top - max(b[1] - b[3] for b in boxes)
    return left, top, width, height, min(b[4] for b in boxes)


def union_bounds(
    image: LightImage, bands: list[str] | tuple[str, ...] | None = None
) -> tuple[float, float, float, float]:
    """``(left, right, bottom, top)`` of the union of the bands' extents: the frame whose centre the atoms'
    positions are measured from (:mod:`atomizer.atoms.tokens`) and dense outputs are laid in."""
    names = list(bands) if bands is not None else list(image.bands)
    lefts, rights, bottoms, tops = [], [], [], []
    for n in names:
        r = image.bands[n]
        g = r.gsd
        xs, ys = r.xs, r.ys  # pixel centres: x increasing, y decreasing (the readers' grids)
        lefts.append(min(xs[0], xs[-1]) - g / 2)
        rights.append(max(xs[0], xs[-1]) + g / 2)
        bottoms.append(min(ys[0], ys[-1]) - g / 2)
        tops.append(max(ys[0], ys[-1]) + g / 2)
    return float(min(lefts)), float(max(rights)), float(min(bottoms)), float(max(tops))


@cache
def _s2_grid(name: str, h: int, w: int) -> tuple[np.ndarray, np.ndarray, tuple[str, str], dict[str, Any]] | None:
    """Coordinates, dimension names and attributes of a Sentinel-2 band of BigEarthNet stored at (h, w): what
    :func:`atomizer.data.image.build_image` gives it (cached; arrays read-only, attrs shared, never mutated
    downstream: :func:`atomizer.data.modalities.simulate` copies them)."""
    s2 = get_sensor("sentinel2")
    if name not in s2.band_names:
        return None
    g = 1200.0 / h
    xs = 0.0 + (np.arange(w) + 0.5) * g
    ys = 0.0 - (np.arange(h) + 0.5) * g
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys, grid_dims(g), band_attrs(s2.band(name), s2, gsd_m=g)


def bigearthnet_light(arrays: Mapping[str, np.ndarray], patch_id: str, source: str = "") -> LightImage:
    """The :class:`LightImage` of a BigEarthNet patch's Sentinel-2 arrays: the same bands, grids, coordinates
    and attributes as :func:`atomizer.data.layouts.bigearthnet_image` (tested equal), without xarray."""
    bands = {}
    for name, arr in arrays.items():
        if name == "resampled_120":
            continue
        arr = np.asarray(arr)
        grid = _s2_grid(name, *arr.shape)
        if grid is None:
            continue
        xs, ys, dims, grid_attrs = grid
        bands[name] = Raster(arr, xs, ys, dims, grid_attrs)
    resampled = bool(arrays.get("resampled_120", False))
    attrs: dict[str, Any] = {
        "sensor": "sentinel2",
        "source": source,
        "patch_id": patch_id,
        "resampled_120": int(resampled),
    }
    if date := date_from_name(source):
        attrs["acquisition_date"] = date
    return LightImage(bands, attrs)
