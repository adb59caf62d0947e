"""Readers: files in, one ``xarray.Dataset`` per image out, every band on its native grid.

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

Use :func:`open_image` for anything readable; the specific readers document their layouts.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from atomizer.data.bands import Band, Sensor, SensorSpecError, get_sensor

#: Band order inside an EuroSAT-MS "allBands" GeoTIFF (B8A is last; verified on the pixels).
EUROSAT_BAND_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")
#: Processing baseline from which Sentinel-2 L2A/L1C products store DN + 1000.
S2_OFFSET_BASELINE = 400

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
    attrs = {
        "band": band.name,
        "wavelength_nm": band.wavelength_nm,
        "bandwidth_nm": band.bandwidth_nm,
        "gsd_m": band.gsd_m,
        "domain": band.domain,
        "polarisation": band.polarisation or "",
        "dn_scale": sensor.dn_scale,
        "dn_offset": sensor.dn_offset,
        "nodata": np.nan if sensor.nodata is None else sensor.nodata,
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
) -> xr.Dataset:
    """Assemble the image representation from per-band 2-D arrays with a common top-left corner.

    Args:
        arrays: band name -> (H, W) array of DN. Each band may have its own shape.
        sensor: Sensor whose band table describes ``arrays`` (bands are matched by name).
        gsd: Optional band name -> pixel size (m) of the stored grid; default: the band's native GSD.
        origin_xy: Coordinates (m) of the top-left corner (x grows east, y decreases south).
        attrs: Extra dataset attributes.
        dn_offset: Overrides the sensor's DN offset (processing-baseline offset).
    """
    if not arrays:
        raise ImageReadError("no bands to build an image from")
    x0, y0 = origin_xy
    variables = {}
    extents = set()
    for name, arr in arrays.items():
        band = sensor.band(name)
        arr = np.asarray(arr)
        if arr.ndim != 2:
            raise ImageReadError(f"band {name!r} must be 2-D, got shape {arr.shape}")
        if 0 in arr.shape:
            raise ImageReadError(f"band {name!r} is empty (shape {arr.shape})")
        g = float((gsd or {}).get(name, band.gsd_m))
        ydim, xdim = grid_dims(g)
        h, w = arr.shape
        extents.add((round(h * g, 3), round(w * g, 3)))
        over = {"gsd_m": g}
        if dn_offset is not None and band.domain != "sar":
            over["dn_offset"] = float(dn_offset)
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
    return [k for k, v in ds.data_vars.items() if "wavelength_nm" in v.attrs]


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


def describe(ds: xr.Dataset) -> "object":
    """A pandas DataFrame with one row per band: wavelength, bandwidth, GSD, grid shape, tokens."""
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
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# Sentinel-2 conventions
# --------------------------------------------------------------------------------------------------


def date_from_name(name: str) -> str | None:
    """Acquisition date (ISO) from a Sentinel-style product or patch name (``..._20170613T101031_...``)."""
    m = re.search(r"(?:^|[_/])(\d{4})(\d{2})(\d{2})T\d{6}", name)
    return f"{m.group(1)}-{m.group(2)}-{m.group(3)}" if m else None


def s2_baseline(name: str) -> int | None:
    """Processing baseline parsed from a Sentinel-2 product name (``..._N0400_...`` -> 400)."""
    m = re.search(r"_N(\d{4})(?:_|$)", name)
    return int(m.group(1)) if m else None


def s2_dn_offset(product_name: str, metadata_offset: float | None = None) -> float:
    """DN offset of a Sentinel-2 product: -1000 for processing baseline N0400 and later, else 0.

    ``N9999`` marks a reprocessed product whose baseline is not encoded in the name; without an
    explicit ``metadata_offset`` (``BOA_ADD_OFFSET`` of the product metadata) it is read as 0, the
    convention of the reprocessing campaigns before 2022. Pass ``metadata_offset`` when known.
    """
    if metadata_offset is not None:
        return float(metadata_offset)
    b = s2_baseline(product_name)
    if b is None or b == 9999:
        return 0.0
    return -1000.0 if b >= S2_OFFSET_BASELINE else 0.0


# --------------------------------------------------------------------------------------------------
# GeoTIFF readers (rioxarray)
# --------------------------------------------------------------------------------------------------


def _open_raster(path: Path) -> xr.DataArray:
    import rasterio
    import rioxarray  # noqa: F401  (registers the engine)

    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        da = rioxarray.open_rasterio(path, masked=False, cache=False)
        da = da.load()
    except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError, OSError, ValueError) as e:
        raise ImageReadError(f"{path}: not a readable GeoTIFF ({e})") from None
    return da


def _raster_meta(da: xr.DataArray) -> tuple[float, tuple[float, float], dict]:
    """(nominal pixel size, top-left corner, attrs) of a raster opened by rioxarray."""
    t = da.rio.transform()
    if abs(t.b) > 1e-9 or abs(t.d) > 1e-9:
        raise ImageReadError("rotated rasters are not supported")
    gsd = nominal_gsd(abs(t.a))
    attrs = {}
    crs = da.rio.crs
    if crs is not None:
        attrs["crs"] = crs.to_wkt()
    return gsd, (float(t.c), float(t.f)), attrs


def read_multiband_geotiff(
    path: str | Path,
    sensor: str | Path | Sensor,
    band_names: Sequence[str] | None = None,
    dn_offset: float | None = None,
) -> xr.Dataset:
    """Read a multi-band GeoTIFF whose channels are described by ``sensor`` (or ``band_names`` of it).

    All channels of a multi-band file share one grid: each band's GSD is the file's pixel size.

    Raises:
        SensorSpecError: the channel count does not match the band list.
        ImageReadError: the file is missing, corrupt or truncated.
    """
    path = Path(path)
    sensor = get_sensor(sensor)
    da = _open_raster(path)
    names = list(band_names) if band_names is not None else sensor.band_names
    sub = sensor.select(names) if band_names is not None else sensor
    sub.check_channels(da.sizes["band"], what=str(path))
    gsd, origin, attrs = _raster_meta(da)
    nodata = da.rio.nodata
    arrays = {n: da.values[i] for i, n in enumerate(names)}
    ds = build_image(
        arrays,
        sensor,
        gsd={n: gsd for n in names},
        origin_xy=origin,
        attrs={**attrs, "source": str(path)},
        dn_offset=dn_offset,
    )
    if nodata is not None:
        for n in names:
            ds[n].attrs["nodata"] = float(nodata)
    return ds


def read_eurosat(path: str | Path) -> xr.Dataset:
    """Read an EuroSAT-MS "allBands" GeoTIFF (13 bands, B8A last, L1C, every band on the 10 m grid).

    The dataset's authors resampled every band to 10 m; the image is kept on that stored grid.
    """
    return read_multiband_geotiff(path, "sentinel2", band_names=EUROSAT_BAND_ORDER)


_BAND_FILE = re.compile(r"(?:^|[_\-.])(?P<band>[A-Za-z]*\d+[A-Za-z]?|VV|VH|HH|HV)$")


def read_band_folder(
    folder: str | Path,
    sensor: str | Path | Sensor = "sentinel2",
    bands: Iterable[str] | None = None,
    dn_offset: float | None = None,
) -> xr.Dataset:
    """Read a folder of single-band GeoTIFFs (``B04.tif``, ``<patch>_B04.tif``...) at native grids.

    Files are matched to the sensor's bands by the band name at the end of the file stem. For
    Sentinel-2 the processing-baseline offset is inferred from the folder name (see
    :func:`s2_dn_offset`) unless ``dn_offset`` is given.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder")
    sensor = get_sensor(sensor)
    wanted = set(bands) if bands is not None else None
    files: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() not in (".tif", ".tiff"):
            continue
        stem = f.stem
        for b in sensor.bands:
            if stem == b.name or stem.endswith("_" + b.name):
                if wanted is None or b.name in wanted:
                    files[b.name] = f
    if wanted is not None and (missing := wanted - set(files)):
        raise ImageReadError(f"{folder}: no GeoTIFF for band(s) {sorted(missing)}")
    if not files:
        raise ImageReadError(f"{folder}: no GeoTIFF named after a band of sensor {sensor.name!r}")
    arrays, gsd, origins, attrs = {}, {}, {}, {}
    for name in sensor.band_names:
        if name not in files:
            continue
        da = _open_raster(files[name])
        if da.sizes["band"] != 1:
            raise ImageReadError(f"{files[name]}: expected one band, found {da.sizes['band']}")
        g, origin, attrs = _raster_meta(da)
        arrays[name], gsd[name], origins[name] = da.values[0], g, origin
    corners = set(origins.values())
    if dn_offset is None and sensor.name == "sentinel2":
        dn_offset = s2_dn_offset(folder.name)
    ds = build_image(
        arrays,
        sensor,
        gsd=gsd,
        origin_xy=next(iter(corners)),
        attrs={**attrs, "source": str(folder)},
        dn_offset=dn_offset,
    )
    if len(corners) > 1:  # bands with different corners: use each band's own coordinates
        grid_origin: dict[str, tuple[float, float]] = {}
        for name, (x0, y0) in origins.items():
            ydim, xdim = ds[name].dims
            g0 = grid_origin.setdefault(ydim, (x0, y0))
            if not np.allclose(g0, (x0, y0), rtol=0.0, atol=1e-3):
                raise ImageReadError(f"{folder}: bands on the {grid_name(gsd[name])} grid are not aligned")
            h, w = ds[name].shape
            ds = ds.assign_coords(
                {ydim: y0 - (np.arange(h) + 0.5) * gsd[name], xdim: x0 + (np.arange(w) + 0.5) * gsd[name]}
            )
    return ds


# --------------------------------------------------------------------------------------------------
# BigEarthNet
# --------------------------------------------------------------------------------------------------

S1_BANDS = ("VV", "VH")


def read_bigearthnet_npz(path: str | Path, include_s1: bool = False) -> xr.Dataset:
    """Read a BigEarthNet patch stored as npz (keys ``B01..B12, B8A``, optional ``VV, VH``).

    Bands are on their native grids (120/60/20 px for 10/20/60 m). Patches flagged
    ``resampled_120`` carry every band on the 120 px grid: their bands get the 10 m grid's GSD, since
    that is the grid their pixels are on.
    """
    path = Path(path)
    try:
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ImageReadError(f"{path}: not a readable npz patch ({e})") from None
    s2 = get_sensor("sentinel2")
    resampled = bool(data.pop("resampled_120", False))
    arrays = {k: v for k, v in data.items() if k in s2.band_names}
    if not arrays:
        raise ImageReadError(f"{path}: no Sentinel-2 band arrays (keys: {sorted(data)})")
    extent = 1200.0
    gsd = {k: extent / v.shape[0] for k, v in arrays.items()}
    ds = build_image(
        arrays, s2, gsd=gsd, attrs={"source": str(path), "patch_id": path.stem, "resampled_120": int(resampled)}
    )
    if include_s1 and all(k in data for k in S1_BANDS):
        s1 = get_sensor("sentinel1")
        ds = xr.merge([ds, build_image({k: data[k] for k in S1_BANDS}, s1)], combine_attrs="override")
    return ds


def read_bigearthnet_patch_folder(folder: str | Path, include_s1: bool = False) -> xr.Dataset:
    """Read a BigEarthNet patch folder of per-band GeoTIFFs (v1 ``<patch>_B01.tif`` or v2 layout)."""
    ds = read_band_folder(folder, "sentinel2", dn_offset=0.0)
    ds.attrs["patch_id"] = Path(folder).name
    return ds


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------


def open_image(
    path: str | Path,
    sensor: str | Path | Sensor | None = None,
    band_names: Sequence[str] | None = None,
) -> xr.Dataset:
    """Open any supported input as the image representation.

    * ``*.npz``: a BigEarthNet patch (:func:`read_bigearthnet_npz`);
    * a folder: per-band GeoTIFFs of ``sensor`` (default Sentinel-2) (:func:`read_band_folder`);
    * a GeoTIFF: with ``sensor`` (name or sidecar), a multi-band image of that sensor; without, a
      13-band file is read as EuroSAT-MS, anything else is refused with a hint.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_band_folder(path, sensor or "sentinel2")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return read_bigearthnet_npz(path)
    if suffix in (".tif", ".tiff"):
        if sensor is not None:
            return read_multiband_geotiff(path, sensor, band_names=band_names)
        da = _open_raster(path)
        if da.sizes["band"] == len(EUROSAT_BAND_ORDER):
            return read_eurosat(path)
        raise SensorSpecError(
            f"{path}: {da.sizes['band']} channels and no sensor given; pass a catalogued sensor name or "
            "a .yaml/.json sidecar describing its bands"
        )
    raise ImageReadError(f"{path}: unsupported input (expected .npz, .tif or a folder of GeoTIFFs)")


def read_json(path: str | Path) -> object:
    return json.loads(Path(path).read_text())
