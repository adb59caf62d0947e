"""The image model: one ``xarray.Dataset`` per image, every band on its native grid.

The image representation used everywhere downstream is an :class:`xarray.Dataset` with

* one data variable per band, holding the stored digital numbers (DN) untouched (``uint16`` for
  Sentinel-2; nothing is rescaled or resampled on read);
* per-grid dimensions named after the grid's GSD, e.g. ``("y_10m", "x_10m")`` for the 10 m bands and
  ``("y_20m", "x_20m")`` for the 20 m bands of the same Sentinel-2 patch, with coordinates giving pixel
  centres in metres (projected coordinates for georeferenced files, local coordinates otherwise);
* variable attributes ``band, wavelength_nm, bandwidth_nm, gsd_m, domain, polarisation, dn_scale,
  dn_offset, nodata``: physical value = ``(DN + dn_offset) * dn_scale``, ``nodata`` marks missing
  pixels;
* dataset attributes ``sensor``, ``source`` (the path read) and, where known, ``crs``.

This module builds and inspects that representation; :mod:`atomizer.data.raster` opens rasters,
:mod:`atomizer.data.layouts` and :mod:`atomizer.data.products` read the inputs, and
:func:`atomizer.data.readers.open_image` dispatches any readable input to its reader.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from atomizer.data.bands import Band, Sensor
from atomizer.data.metadata import date_from_name

if TYPE_CHECKING:
    import pandas as pd

BAND_ATTRS = (
    "band",
    "wavelength_nm",
    "bandwidth_nm",
    "gsd_m",
    "domain",
    "polarisation",
    "dn_scale",
    "dn_offset",
    "nodata",
)


class ImageReadError(ValueError):
    """A file could not be read as an image; the message names the file and the reason."""


# --------------------------------------------------------------------------------------------------
# The representation
# --------------------------------------------------------------------------------------------------


def grid_name(gsd_m: float) -> str:
    """Suffix of the dimension names of the grid with pixel size ``gsd_m`` (``10 -> "10m"``)."""
    g = float(gsd_m)
    return f"{int(g)}m" if g.is_integer() else f"{g:g}m".replace(".", "p")


def grid_dims(gsd_m: float) -> tuple[str, str]:
    """Dimension names ``(y, x)`` for the grid with pixel size ``gsd_m``."""
    g = grid_name(gsd_m)
    return (f"y_{g}", f"x_{g}")


def nominal_gsd(pixel_size: float) -> float:
    """Round a GeoTIFF pixel size to its nominal value (EuroSAT stores 10.005 m for a 10 m grid)."""
    r = round(float(pixel_size))
    if r > 0 and abs(pixel_size - r) / r < 0.01:
        return float(r)
    return round(float(pixel_size), 3)


def band_attrs(band: Band, sensor: Sensor, **overrides: object) -> dict:
    scale, offset, nodata = sensor.calibration(band)
    attrs = {
        "band": band.name,
        "wavelength_nm": band.wavelength_nm,
        "bandwidth_nm": band.bandwidth_nm,
        "gsd_m": band.gsd_m,
        "domain": band.domain,
        "polarisation": band.polarisation or "",
        "dn_scale": scale,
        "dn_offset": offset,
        "nodata": np.nan if nodata is None else nodata,
        "calibration_source": f"catalogue ({sensor.name})",
    }
    attrs.update(overrides)
    return attrs


def build_image(
    arrays: Mapping[str, np.ndarray],
    sensor: Sensor,
    gsd: Mapping[str, float] | None = None,
    origin_xy: tuple[float, float] = (0.0, 0.0),
    attrs: Mapping[str, object] | None = None,
    dn_offset: float | None = None,
    calibration: Mapping[str, Mapping[str, object]] | None = None,
) -> xr.Dataset:
    """Assemble the image representation from per-band 2-D arrays with a common top-left corner.

    Args:
        arrays: band name -> (H, W) array of DN. Each band may have its own shape.
        sensor: Sensor whose band table describes ``arrays`` (bands are matched by name).
        gsd: Optional band name -> pixel size (m) of the stored grid; default: the band's native GSD.
        origin_xy: Coordinates (m) of the top-left corner (x grows east, y decreases south).
        attrs: Extra dataset attributes.
        dn_offset: Overrides the sensor's DN offset (processing-baseline offset).
        calibration: Band name -> attributes that override the catalogue's for that band (``dn_scale``,
            ``dn_offset``, ``nodata``, ``calibration_source``), from the product's own metadata.
    """
    if not arrays:
        raise ImageReadError("no bands to build an image from")
    x0, y0 = origin_xy
    variables = {}
    extents = set()
    for name, arr in arrays.items():
        band = sensor.band(name)
        if not hasattr(arr, "dask"):  # a dask array (lazy reads) stays lazy
            arr = np.asarray(arr)
        if arr.ndim != 2:
            raise ImageReadError(f"band {name!r} must be 2-D, got shape {arr.shape}")
        if 0 in arr.shape:
            raise ImageReadError(f"band {name!r} is empty (shape {arr.shape})")
        g = float((gsd or {}).get(name, band.gsd_m))
        ydim, xdim = grid_dims(g)
        h, w = arr.shape
        extents.add((round(h * g, 3), round(w * g, 3)))
        over: dict[str, object] = {"gsd_m": g}
        if dn_offset is not None and band.domain != "sar":
            over["dn_offset"] = float(dn_offset)
            over["calibration_source"] = "product name (processing baseline)"
        over.update((calibration or {}).get(name, {}))
        variables[band.name] = xr.DataArray(
            arr,
            dims=(ydim, xdim),
            coords={ydim: y0 - (np.arange(h) + 0.5) * g, xdim: x0 + (np.arange(w) + 0.5) * g},
            attrs=band_attrs(band, sensor, **over),
        )
    ds = xr.Dataset(variables)
    ds.attrs.update({"sensor": sensor.name, **(attrs or {})})
    if "acquisition_date" not in ds.attrs and (date := date_from_name(str(ds.attrs.get("source", "")))):
        ds.attrs["acquisition_date"] = date
    if len(extents) > 1:
        ds.attrs["extent_warning"] = f"bands cover different ground extents (m): {sorted(extents)}"
    return ds


def valid_mask(da: xr.DataArray) -> np.ndarray:
    """True where a band's pixel holds data: finite, and not the band's ``nodata`` value."""
    raw = np.asarray(da.values)
    ok = np.isfinite(raw) if raw.dtype.kind == "f" else np.ones(raw.shape, bool)
    nodata = da.attrs.get("nodata")
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        ok &= raw != nodata
    return ok


def physical_values(da: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """``((DN + dn_offset) * dn_scale, valid)`` of a band as float32; invalid pixels set to 0."""
    ok = valid_mask(da)
    a = da.attrs
    v = (np.asarray(da.values).astype(np.float32) + np.float32(a.get("dn_offset", 0.0))) * np.float32(
        a.get("dn_scale", 1.0)
    )
    v[~ok] = 0.0
    return v, ok


def image_bands(ds: xr.Dataset) -> list[str]:
    """Names of the band variables of an image, in dataset order."""
    return [str(k) for k, v in ds.data_vars.items() if "wavelength_nm" in v.attrs]


def image_band_table(ds: xr.Dataset) -> list[Band]:
    """The :class:`Band` of each band variable, with the GSD of its stored grid."""
    out = []
    for name in image_bands(ds):
        a = ds[name].attrs
        out.append(
            Band(
                name,
                a["wavelength_nm"],
                a["bandwidth_nm"],
                a["gsd_m"],
                a.get("domain", "optical"),
                a.get("polarisation") or None,
            )
        )
    return out


def count_tokens(ds: xr.Dataset) -> int:
    """Number of atom tokens of an image: one per pixel per band, on each band's native grid."""
    return int(sum(ds[b].size for b in image_bands(ds)))


def describe(ds: xr.Dataset) -> pd.DataFrame:
    """A pandas DataFrame with one row per band: wavelength, bandwidth, GSD, grid shape, tokens, and the
    calibration (physical value = (DN + dn_offset) * dn_scale) with where it came from."""
    import pandas as pd

    rows = []
    for name in image_bands(ds):
        a = ds[name].attrs
        rows.append(
            {
                "band": name,
                "wavelength_nm": a["wavelength_nm"],
                "bandwidth_nm": a["bandwidth_nm"],
                "gsd_m": a["gsd_m"],
                "grid": "x".join(map(str, ds[name].shape)),
                "dtype": str(ds[name].dtype),
                "tokens": int(ds[name].size),
                "dn_scale": f"{a.get('dn_scale', 1.0):.6g}",
                "dn_offset": f"{a.get('dn_offset', 0.0):.6g}",
                "nodata": a.get("nodata"),
                "calibration": a.get("calibration_source", ""),
            }
        )
    return pd.DataFrame(rows)
