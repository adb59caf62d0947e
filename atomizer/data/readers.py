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

import contextvars
import json
import math
import os
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from atomizer.data.bands import Band, Sensor, SensorSpecError, get_sensor
from atomizer.data.metadata import (
    QA_INVALID_BITS,
    S2_BAND_FILE,
    MetadataError,
    landsat_metadata,
    parse_s2_metadata,
    stac_bands,
    stac_sensor,
)

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


#: Set by ``open_image(..., lazy=True)``: rasters stay on disk (dask arrays of row blocks) until a slice is read.
_LAZY: contextvars.ContextVar[bool] = contextvars.ContextVar("atomizer_lazy_reads", default=False)
#: Set by ``open_image(..., allow_remote=True)``: URLs and GDAL virtual paths may be read, with GDAL's network.
_REMOTE: contextvars.ContextVar[bool] = contextvars.ContextVar("atomizer_remote_reads", default=False)
_LAZY_ROWS = 512  # rows per block of a lazily read raster

#: The GDAL driver each raster file suffix is opened with, and the only drivers the readers use: GeoTIFF (a COG
#: is a GeoTIFF) and JPEG 2000 (Sentinel-2 SAFE). A file is read as what its name says; any other format GDAL
#: knows (a VRT, which can point at URLs or at other files, HDF, netCDF...) is refused whatever its name.
RASTER_DRIVERS = {".tif": "GTiff", ".tiff": "GTiff", ".jp2": "JP2OpenJPEG"}
_FORMAT_NAMES = {"GTiff": "GeoTIFF", "JP2OpenJPEG": "JPEG 2000"}

#: GDAL settings while the readers open local files: the network file systems (``/vsicurl/``, ``/vsis3/``...)
#: find no file (only names with this never-used extension would be fetched), and no directory is listed, so
#: no sidecar (``.ovr``, ``.msk``, ``.aux.xml``, world file) is looked for next to a raster.
GDAL_LOCAL_ONLY = {
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".atomizer-network-disabled",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "0",
}

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:/")  # http://, s3://, file:/ ... (also a Path's "http:/")


def is_remote(path: str | Path) -> bool:
    """True for a URL (``scheme://...``) or a GDAL virtual path (``/vsicurl/...``, ``/vsizip/...``)."""
    text = str(path).replace("\\", "/")
    return text.startswith("/vsi") or _SCHEME.match(text) is not None


def check_local(path: str | Path, what: str | None = None, allow_remote: bool = False) -> None:
    """Refuse a URL or GDAL virtual path in one line unless ``allow_remote`` (or ``open_image(...,
    allow_remote=True)`` around the call) allows it."""
    if is_remote(path) and not (allow_remote or _REMOTE.get()):
        raise ImageReadError(
            f"{what or path}: a URL or GDAL virtual path (/vsi...) is not read unless allowed explicitly "
            "(open_image(..., allow_remote=True))"
        )


def raster_driver(path: str | Path) -> str:
    """The GDAL driver the readers open ``path`` with (:data:`RASTER_DRIVERS`), from its suffix."""
    suffix = Path(str(path).split("?", 1)[0]).suffix.lower()
    if suffix not in RASTER_DRIVERS:
        raise ImageReadError(f"{path}: not a raster file the readers open (expected {', '.join(RASTER_DRIVERS)})")
    return RASTER_DRIVERS[suffix]


@contextmanager
def gdal_env(allow_remote: bool = False) -> Iterator[None]:
    """GDAL configured for reading: :data:`GDAL_LOCAL_ONLY` unless remote reads are allowed."""
    import rasterio

    with rasterio.Env(**({} if allow_remote or _REMOTE.get() else GDAL_LOCAL_ONLY)):
        yield


def _gdal_name(path: str | Path) -> str:
    """The name handed to GDAL: a local path never parsed as a URL (``zip:x.tif`` -> ``./zip:x.tif``)."""
    if is_remote(path):
        return str(path)
    text = os.fspath(path)
    return text if text.startswith(("/", ".")) or ":" not in text else "./" + text


@contextmanager
def open_raster(path: str | Path, allow_remote: bool = False) -> Iterator[Any]:
    """``rasterio.open`` for reading, the one way the library opens a raster it did not write: the driver of
    the file's suffix only (:data:`RASTER_DRIVERS`), a local file unless ``allow_remote``, GDAL's network off
    (:func:`gdal_env`). Yields the rasterio dataset.

    Raises:
        ImageReadError: a URL or /vsi path not allowed, no such file, or not a file of the suffix's format.
    """
    import rasterio

    check_local(path, allow_remote=allow_remote)
    driver = raster_driver(path)
    if not is_remote(path) and not Path(path).is_file():
        raise ImageReadError(f"{path}: no such file")
    with gdal_env(allow_remote):
        try:
            src = rasterio.open(_gdal_name(path), driver=driver)
        except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError, OSError, ValueError) as e:
            raise _unreadable(path, driver, e) from None
        with src:
            yield src


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _unreadable(path: str | Path, driver: str, e: BaseException) -> ImageReadError:
    return ImageReadError(
        f"{path}: not a readable {_FORMAT_NAMES[driver]} file (opened with GDAL's {driver} driver only: {_one_line(e)})"
    )


def _open_raster(path: Path | str) -> xr.DataArray:
    import rasterio
    import rioxarray  # noqa: F401  (registers the engine)

    check_local(path)
    driver = raster_driver(path)
    if not is_remote(path) and not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        with gdal_env():
            name = _gdal_name(path)
            if _LAZY.get():  # windowed reads later, block by block: the scene is never in memory at once
                return rioxarray.open_rasterio(
                    name, masked=False, cache=False, chunks={"band": 1, "y": _LAZY_ROWS, "x": -1}, driver=driver
                )
            da = rioxarray.open_rasterio(name, masked=False, cache=False, driver=driver)
            da = da.load()
    except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError, OSError, ValueError) as e:
        raise _unreadable(path, driver, e) from None
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
    path = path if isinstance(path, str) and is_remote(path) else Path(path)
    sensor = get_sensor(sensor)
    da = _open_raster(path)  # type: ignore[arg-type]
    names = list(band_names) if band_names is not None else sensor.band_names
    sub = sensor.select(names) if band_names is not None else sensor
    sub.check_channels(da.sizes["band"], what=str(path))
    gsd, origin, attrs = _raster_meta(da)
    nodata = da.rio.nodata
    values = da.data if _LAZY.get() else da.values
    arrays = {n: values[i] for i, n in enumerate(names)}
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
    if dn_offset is None and sensor.name == "sentinel2":
        dn_offset = s2_dn_offset(folder.name)
    return _read_band_files(
        {n: (f, 0) for n, f in files.items()}, sensor, folder, dn_offset=dn_offset, single_band=True
    )


def _read_band_files(
    files: Mapping[str, tuple[Path, int]],
    sensor: Sensor,
    source: Path,
    dn_offset: float | None = None,
    calibration: Mapping[str, Mapping[str, object]] | None = None,
    attrs: Mapping[str, object] | None = None,
    single_band: bool = False,
) -> xr.Dataset:
    """Read band name -> (raster file, channel) at each file's own grid into one image.

    Raises:
        ImageReadError: a file is unreadable, the bands' CRS differ, or bands of one grid are not aligned.
    """
    arrays, gsd, origins, crs = {}, {}, {}, {}
    opened: dict[Path, xr.DataArray] = {}
    order = [n for n in sensor.band_names if n in files] + [n for n in files if n not in sensor.band_names]
    for name in order:
        path, channel = files[name]
        if path not in opened:
            opened[path] = _open_raster(path)
        da = opened[path]
        if single_band and da.sizes["band"] != 1:
            raise ImageReadError(f"{path}: expected one band, found {da.sizes['band']}")
        if channel >= da.sizes["band"]:
            raise ImageReadError(f"{path}: band {name!r} is channel {channel + 1}, the file has {da.sizes['band']}")
        g, origin, meta = _raster_meta(da)
        arrays[name], gsd[name], origins[name] = (da.data if _LAZY.get() else da.values)[channel], g, origin
        crs[name] = meta.get("crs")
        if da.rio.nodata is not None and name not in (calibration or {}):
            calibration = {**(calibration or {}), name: {"nodata": float(da.rio.nodata)}}
    if len({c for c in crs.values()}) > 1:
        by = {}
        for n, c in crs.items():
            by.setdefault(_crs_label(c), []).append(n)
        raise ImageReadError(f"{source}: bands in different CRS: " + "; ".join(f"{k}: {v}" for k, v in by.items()))
    corners = set(origins.values())
    extra = {"crs": next(iter(crs.values()))} if next(iter(crs.values())) else {}
    ds = build_image(
        arrays,
        sensor,
        gsd=gsd,
        origin_xy=next(iter(corners)),
        attrs={**extra, "source": str(source), **(attrs or {})},
        dn_offset=dn_offset,
        calibration=calibration,
    )
    if len(corners) > 1:  # bands with different corners: use each band's own coordinates
        grid_origin: dict[str, tuple[float, float]] = {}
        for name, (x0, y0) in origins.items():
            ydim, xdim = ds[name].dims
            g0 = grid_origin.setdefault(ydim, (x0, y0))
            if not np.allclose(g0, (x0, y0), rtol=0.0, atol=1e-3):
                raise ImageReadError(f"{source}: bands on the {grid_name(gsd[name])} grid are not aligned")
            h, w = ds[name].shape
            ds = ds.assign_coords(
                {ydim: y0 - (np.arange(h) + 0.5) * gsd[name], xdim: x0 + (np.arange(w) + 0.5) * gsd[name]}
            )
    return ds


def _crs_label(wkt: str | None) -> str:
    if not wkt:
        return "no CRS"
    from rasterio.crs import CRS

    crs = CRS.from_wkt(wkt)
    return crs.to_string() if crs.to_epsg() is None else f"EPSG:{crs.to_epsg()}"


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
        if _LAZY.get():  # shapes from the arrays' headers; values read when computed
            data = _lazy_npz(path)
        else:
            with np.load(path) as z:
                data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ImageReadError(f"{path}: not a readable npz patch ({_one_line(e)})") from None
    return bigearthnet_image(data, str(path), path.stem, include_s1=include_s1)


def npz_headers(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{key: (shape, dtype)}`` of the arrays of an ``.npz``, from their headers: no array is read (a
    compressed member's size says nothing of what it inflates to; its header does)."""
    out = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"member {info.filename}: npy format version {version} not supported")
            out[info.filename[: -len(".npy")]] = (tuple(shape), dtype)
    return out


def _npz_member(path: Path, key: str) -> np.ndarray:
    with np.load(path) as z:
        return z[key]


def _lazy_npz(path: Path) -> dict[str, Any]:
    """The arrays of an npz as dask arrays of their header's shape (scalars read at once)."""
    import dask
    import dask.array as dsa

    data: dict[str, Any] = {}
    for key, (shape, dtype) in npz_headers(path).items():
        if len(shape) < 2:
            data[key] = _npz_member(path, key)
        else:
            data[key] = dsa.from_delayed(dask.delayed(_npz_member)(path, key), shape, dtype=dtype)
    return data


def bigearthnet_image(
    data: Mapping[str, np.ndarray],
    source: str,
    patch_id: str,
    include_s1: bool = False,
    s1: Mapping[str, np.ndarray] | None = None,
) -> xr.Dataset:
    """The image of a BigEarthNet patch from its band arrays (npz keys or an LMDB value): every band on its
    native grid over the 1,200 m patch (``resampled_120`` patches: all bands on the 10 m grid)."""
    data = dict(data)
    s2 = get_sensor("sentinel2")
    resampled = bool(data.pop("resampled_120", False))
    arrays = {k: v for k, v in data.items() if k in s2.band_names}
    if not arrays:
        raise ImageReadError(f"{source}: no Sentinel-2 band arrays (keys: {sorted(data)})")
    extent = 1200.0
    gsd = {k: extent / v.shape[0] for k, v in arrays.items()}
    ds = build_image(
        arrays, s2, gsd=gsd, attrs={"source": source, "patch_id": patch_id, "resampled_120": int(resampled)}
    )
    radar = s1 if s1 is not None else {k: data[k] for k in S1_BANDS if k in data}
    if include_s1 and all(k in radar for k in S1_BANDS):
        sensor1 = get_sensor("sentinel1")
        ds = xr.merge([ds, build_image({k: radar[k] for k in S1_BANDS}, sensor1)], combine_attrs="override")
    return ds


def read_bigearthnet_patch_folder(folder: str | Path, include_s1: bool = False) -> xr.Dataset:
    """Read a BigEarthNet patch folder of per-band GeoTIFFs (v1 ``<patch>_B01.tif`` or v2 layout)."""
    ds = read_band_folder(folder, "sentinel2", dn_offset=0.0)
    ds.attrs["patch_id"] = Path(folder).name
    return ds


# --------------------------------------------------------------------------------------------------
# Products as delivered: Sentinel-2 SAFE, Landsat Collection 2, STAC items
# --------------------------------------------------------------------------------------------------

_RASTER_SUFFIXES = (".jp2", ".tif", ".tiff")


def _safe_band_files(folder: Path, recursive: bool) -> dict[str, Path]:
    """SAFE-named band files below ``folder``, one per band at its native resolution.

    ``*_B02_10m.jp2`` / ``*_B8A_20m.tif`` (L2A) or ``*_B02.jp2`` (L1C). Where a band is stored at several
    resolutions (L2A keeps resampled copies in R20m/R60m), the file at the band's native GSD is taken;
    failing that, the finest. B08 and B8A are distinct names and never stand in for each other.
    """
    s2 = get_sensor("sentinel2")
    found: dict[str, list[tuple[float, Path]]] = {}
    files = folder.rglob("*") if recursive else folder.iterdir()
    for f in sorted(files):
        if f.suffix.lower() not in _RASTER_SUFFIXES or not f.is_file():
            continue
        m = S2_BAND_FILE.search(f.stem)
        if not m:
            continue
        band = m.group("band")
        native = s2.band(band).gsd_m
        res = float(m.group("res")) if m.group("res") else native
        found.setdefault(band, []).append((res, f))
    out = {}
    for band, options in found.items():
        native = s2.band(band).gsd_m
        exact = [f for r, f in options if r == native]
        out[band] = exact[0] if exact else min(options, key=lambda o: o[0])[1]
    return out


def read_safe(path: str | Path, bands: Iterable[str] | None = None) -> xr.Dataset:
    """Read a Sentinel-2 product as ESA delivers it: a ``.SAFE`` folder (Level-1C or Level-2A), or a folder of
    band files named the SAFE way (``T33NZA_20220706T085611_B02_10m.jp2``, ``..._B8A_20m.tif``).

    With ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml`` present, the bands are the image files it lists under
    ``GRANULE/*/IMG_DATA`` (L1C) or ``GRANULE/*/IMG_DATA/R10m|R20m|R60m`` (L2A, each band at its native
    resolution only), and the calibration is the metadata's: reflectance = (DN + ``BOA_ADD_OFFSET`` /
    ``RADIO_ADD_OFFSET``) / quantification value. Without it, the processing baseline in the product name
    decides the offset (:func:`s2_dn_offset`). The image records ``product_level`` (``L1C`` TOA / ``L2A``
    BOA), ``processing_baseline`` and, per band, ``calibration_source``.

    Raises:
        ImageReadError: no band file, a band the metadata lists is not there, or the bands' CRS differ.
        MetadataError: the metadata file is unreadable or lacks the quantification value.
    """
    folder = Path(path)
    if folder.is_file() and folder.name.startswith("MTD_MSI"):
        folder = folder.parent
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder")
    mtd = sorted(folder.glob("MTD_MSIL*.xml"))
    s2 = get_sensor("sentinel2")
    wanted = set(bands) if bands is not None else None
    attrs: dict[str, object] = {}
    calibration: dict[str, dict[str, object]] = {}
    if mtd:
        meta = parse_s2_metadata(mtd[0])
        files = _safe_band_files(folder / "GRANULE", recursive=True) if (folder / "GRANULE").is_dir() else {}
        listed = {b for b, paths in meta.image_files.items()}
        if listed:
            if missing := sorted(listed - set(files), key=s2.band_names.index):
                raise ImageReadError(f"{folder}: {mtd[0].name} lists band(s) {missing} but no image file holds them")
        if not files:
            raise ImageReadError(f"{folder}: no band image under GRANULE/*/IMG_DATA")
        level = meta.level
        where = mtd[0].name
        attrs.update(
            product_level=level,
            radiometry="TOA reflectance" if level == "L1C" else "BOA reflectance",
            processing_baseline=meta.baseline or "",
            metadata_file=str(mtd[0]),
        )
        for b in files:
            off = meta.offsets.get(b, 0.0)
            calibration[b] = {
                "dn_scale": 1.0 / meta.quantification,
                "dn_offset": float(off),
                "nodata": np.nan if meta.nodata is None else float(meta.nodata),
                "calibration_source": f"{where} (quantification {meta.quantification:g}, offset {off:g})",
            }
        dn_offset = None
    else:
        files = _safe_band_files(folder, recursive=False)
        if not files:
            raise ImageReadError(
                f"{folder}: no MTD_MSIL1C.xml / MTD_MSIL2A.xml and no band file named the SAFE way (*_B02_10m.jp2)"
            )
        name = folder.name if s2_baseline(folder.name) else next(iter(files.values())).stem
        level = (
            "L2A" if "MSIL2A" in folder.name or any(re.search(r"_\d\dm$", f.stem) for f in files.values()) else "L1C"
        )
        if "MSIL1C" in folder.name:
            level = "L1C"
        attrs.update(
            product_level=level,
            radiometry="TOA reflectance" if level == "L1C" else "BOA reflectance",
            processing_baseline=f"{s2_baseline(name) or ''}",
        )
        dn_offset = s2_dn_offset(name)
        if s2_baseline(name) is None:
            calibration = {
                b: {"calibration_source": "assumed: no MTD file and no processing baseline in the names (offset 0)"}
                for b in files
            }
    if wanted is not None:
        if missing := sorted(wanted - set(files)):
            raise ImageReadError(f"{folder}: no image file for band(s) {missing}")
        files = {b: f for b, f in files.items() if b in wanted}
    return _read_band_files(
        {b: (f, 0) for b, f in files.items()},
        s2,
        folder,
        dn_offset=dn_offset,
        calibration=calibration,
        attrs=attrs,
        single_band=True,
    )


def _landsat_mtl(folder: Path) -> Path | None:
    found = sorted(folder.glob("*_MTL.json")) + sorted(folder.glob("*_MTL.txt"))
    return found[0] if found else None


def read_landsat(path: str | Path, mask_clouds: bool = True) -> xr.Dataset:
    """Read a Landsat 8/9 Collection 2 product (Level-1 or Level-2) with its ``*_MTL.txt`` or ``*_MTL.json``.

    Every band gets its own scale and offset from the MTL: ``REFLECTANCE_MULT/ADD_BAND_n`` (Level-2 surface
    reflectance or Level-1 TOA reflectance), ``TEMPERATURE_MULT/ADD_BAND_ST_B10`` (Level-2 surface
    temperature in kelvin), ``RADIANCE_MULT/ADD_BAND_n`` (Level-1 thermal radiance). Fill (DN 0) is nodata;
    with ``mask_clouds`` the ``QA_PIXEL`` fill, dilated-cloud, cloud and cloud-shadow bits mark pixels
    invalid too (their DN is set to the fill value; ``qa_masked_pixels`` counts them).

    Raises:
        ImageReadError: a file the MTL lists is not there; bands in different CRS.
        MetadataError: the MTL is unreadable, or lacks a band's rescaling parameters.
    """
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    mtl = _landsat_mtl(folder)
    if mtl is None:
        raise ImageReadError(f"{folder}: no Landsat *_MTL.txt or *_MTL.json")
    meta = landsat_metadata(mtl)
    sensor = get_sensor(meta.sensor)
    files: dict[str, tuple[Path, int]] = {}
    for band, fname in [*meta.files.items(), *([("QA_PIXEL", meta.qa_pixel)] if meta.qa_pixel else [])]:
        if is_remote(fname) or not _inside(folder / fname, folder):  # MTL names are bare file names
            raise ImageReadError(f"{folder}: {mtl.name} lists {fname} for band {band}, outside the product folder")
    for band, fname in meta.files.items():
        f = folder / fname
        if not f.is_file():
            raise ImageReadError(f"{folder}: {mtl.name} lists {fname} for band {band}, and it is not there")
        files[band] = (f, 0)
    calibration = {
        b: {
            "dn_scale": mult,
            "dn_offset": add / mult,
            "nodata": meta.fill,
            "calibration_source": f"{mtl.name}: {what}",
        }
        for b, (mult, add, what) in meta.calibration.items()
    }
    ds = _read_band_files(
        files,
        sensor,
        folder,
        calibration=calibration,
        attrs={"product_level": meta.level, "metadata_file": str(mtl)},
        single_band=True,
    )
    if mask_clouds and meta.qa_pixel and (folder / meta.qa_pixel).is_file():
        qa_da = _open_raster(folder / meta.qa_pixel)
        qa = (qa_da.data if _LAZY.get() else qa_da.values)[0].astype(np.uint16)  # lazy: masked block by block
        bad = ((qa >> QA_INVALID_BITS[0]) & 1) == 1
        for bit in QA_INVALID_BITS[1:]:
            bad = bad | (((qa >> bit) & 1) == 1)
        masked = 0
        for b in image_bands(ds):
            if ds[b].shape != qa.shape:
                continue  # QA_PIXEL is on the 30 m grid; a 15 m panchromatic band keeps its own fill only
            arr = ds[b].data
            ds[b] = ds[b].copy(data=np.where(bad, np.asarray(meta.fill).astype(arr.dtype), arr))
            masked = int(bad.sum())
        ds.attrs["qa_masked_pixels"] = masked
        ds.attrs["qa_mask"] = (
            f"{meta.qa_pixel}: bits {', '.join(map(str, QA_INVALID_BITS))} (fill, dilated cloud, cloud, shadow)"
        )
    return ds


def read_stac_item(
    path: str | Path,
    sensor: str | Path | Sensor | None = None,
    allow_outside: bool = False,
    allow_remote: bool = False,
) -> xr.Dataset:
    """Read a local STAC item (``item.json``) whose assets point at local GeoTIFFs / COGs / JPEG2000.

    Asset hrefs must resolve inside the item's folder (relative hrefs without ``../`` escapes, symbolic links
    followed): an absolute path or ``..`` leading elsewhere is refused unless ``allow_outside``, a URL or
    ``/vsi`` href unless ``allow_remote`` (then read with GDAL's network on).

    Each data asset's channels are bands. Their wavelength and width come from ``eo:bands``
    (``center_wavelength``, ``full_width_half_max``, micrometres), their calibration from ``raster:bands``
    (``scale``, ``offset``, ``nodata``): a STAC-described sensor needs no sidecar. Where ``eo:bands`` is
    missing, the bands are matched by name (asset key or ``eo:bands`` name) to a catalogued sensor chosen by
    ``sensor``, else by the item's ``platform`` / ``constellation``.

    Raises:
        MetadataError: not a STAC item; a band with neither wavelengths nor a catalogued match.
        ImageReadError: an asset outside the item's folder, remote, or not a file.
    """
    path = Path(path)
    allow_remote = allow_remote or _REMOTE.get()
    item, bands = stac_bands(path)
    cat_name = sensor or stac_sensor(item)
    catalogued = get_sensor(cat_name) if cat_name is not None else None
    table: list[Band] = []
    files: dict[str, tuple[Path, int]] = {}
    calibration: dict[str, dict[str, object]] = {}
    for sb in bands:
        f = stac_asset_path(path, sb.asset, sb.href, allow_outside=allow_outside, allow_remote=allow_remote)
        source = "STAC"
        if sb.wavelength_nm is not None and sb.bandwidth_nm is not None:
            gsd = _file_gsd(f)
            band = Band(sb.name, sb.wavelength_nm, sb.bandwidth_nm, gsd, source=f"STAC item {path.name}")
        elif catalogued is not None:
            try:
                band = next(catalogued.band(n) for n in (sb.name, sb.asset) if _has_band(catalogued, n))
            except StopIteration:
                raise MetadataError(
                    f"{path}: asset {sb.asset!r} has no eo:bands wavelengths and no band of sensor "
                    f"{catalogued.name!r} is called {sb.name!r}"
                ) from None
            source = f"catalogue ({catalogued.name}, matched by platform)"
        else:
            raise MetadataError(
                f"{path}: asset {sb.asset!r} has no eo:bands center_wavelength/full_width_half_max and the item's "
                "platform/constellation names no catalogued sensor (pass sensor=...)"
            )
        if band.name in files:
            raise MetadataError(f"{path}: band {band.name!r} appears in two assets")
        table.append(band)
        files[band.name] = (f, sb.channel)
        cal: dict[str, object] = {"calibration_source": source}
        if sb.scale is not None or sb.offset is not None:
            scale = 1.0 if sb.scale is None else sb.scale
            cal.update(dn_scale=scale, dn_offset=(sb.offset or 0.0) / scale, calibration_source="STAC raster:bands")
        elif catalogued is None:
            cal.update(dn_scale=1.0, dn_offset=0.0, calibration_source="STAC (no raster:bands: DN as stored)")
        if sb.nodata is not None:
            cal["nodata"] = sb.nodata
        calibration[band.name] = cal
    from_catalogue = catalogued is not None and all(c["calibration_source"] != "STAC" for c in calibration.values())
    desc = Sensor(
        name=catalogued.name if from_catalogue and catalogued is not None else f"stac:{item.id}",
        bands=tuple(table),
        dn_scale=catalogued.dn_scale if catalogued is not None else 1.0,
        dn_offset=catalogued.dn_offset if catalogued is not None else 0.0,
        nodata=catalogued.nodata if catalogued is not None else None,
    )
    attrs = {"stac_item": item.id}
    if item.datetime is not None:
        attrs["acquisition_date"] = item.datetime.date().isoformat()
    token = _REMOTE.set(allow_remote)
    try:
        return _read_band_files(files, desc, path, calibration=calibration, attrs=attrs)
    finally:
        _REMOTE.reset(token)


def stac_asset_path(
    item_path: Path, asset: str, href: str, allow_outside: bool = False, allow_remote: bool = False
) -> Path:
    """The file a STAC asset's ``href`` names, relative to the item's folder; refused in one line naming the
    asset when it is a URL or ``/vsi`` path (unless ``allow_remote``), or resolves outside the item's folder
    (an absolute path, a ``../`` escape, a link leading out; unless ``allow_outside``), or is not a file."""
    if is_remote(href):
        if not allow_remote:
            raise ImageReadError(
                f"{item_path}: asset {asset!r} points at a URL or GDAL virtual path ({href}); remote assets are "
                "read only when allowed explicitly (allow_remote=True)"
            )
        return href  # type: ignore[return-value]  # GDAL reads it (open_raster allows it)
    folder = item_path.parent
    target = folder / href  # an absolute href stays absolute
    if not allow_outside and not _inside(target, folder):
        raise ImageReadError(
            f"{item_path}: asset {asset!r} points at {href}, outside the item's folder; assets elsewhere are "
            "read only when allowed explicitly (allow_outside=True)"
        )
    if not target.is_file():
        raise ImageReadError(f"{item_path}: asset {asset!r} points at {href}, which is not a local file")
    return target


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` (symbolic links followed) lies in ``folder``."""
    return path.resolve().is_relative_to(folder.resolve())


def _has_band(sensor: Sensor, name: str) -> bool:
    try:
        sensor.band(name)
        return True
    except KeyError:
        return False


def _file_gsd(path: Path | str) -> float:
    with open_raster(path) as src:
        return nominal_gsd(abs(src.transform.a))


def product_kind(path: str | Path) -> str | None:
    """``"safe"``, ``"safe_named"``, ``"landsat"`` or ``"stac"`` when ``path`` is such a product, else None."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() == ".json" and not p.name.endswith("_MTL.json"):
            try:
                doc = json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                return None
            return "stac" if isinstance(doc, dict) and doc.get("type") == "Feature" else None
        if p.name.startswith("MTD_MSIL") and p.suffix.lower() == ".xml":
            return "safe"
        if p.name.endswith(("_MTL.txt", "_MTL.json")):
            return "landsat"
        return None
    if not p.is_dir():
        return None
    if p.suffix.upper() == ".SAFE" or any(p.glob("MTD_MSIL*.xml")):
        return "safe"
    if _landsat_mtl(p) is not None:
        return "landsat"
    if any(
        S2_BAND_FILE.search(f.stem) and re.search(r"T\d{2}[A-Z]{3}_\d{8}T\d{6}_", f.name)
        for f in p.iterdir()
        if f.suffix.lower() in _RASTER_SUFFIXES
    ):
        return "safe_named"
    return None


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------


def open_image(
    path: str | Path,
    sensor: str | Path | Sensor | None = None,
    band_names: Sequence[str] | None = None,
    lazy: bool = False,
    allow_outside: bool = False,
    allow_remote: bool = False,
) -> xr.Dataset:
    """Open any supported input as the image representation.

    With ``lazy``, the bands of GeoTIFF/JPEG2000 files are dask arrays of row blocks: nothing is read until
    a slice is computed (``atomizer map`` reads a whole scene one strip of windows at a time); Landsat's
    QA_PIXEL mask is applied block by block too; an npz patch's arrays are read from their headers only. So
    ``count_tokens(open_image(path, lazy=True))`` counts an input's atoms before any pixel is read.

    Rasters are opened with the GDAL driver of their suffix only (:data:`RASTER_DRIVERS`: GeoTIFF/COG,
    JPEG 2000), GDAL's network off. ``path`` must be a local file or folder, and a STAC item's assets must lie
    in the item's folder; ``allow_outside=True`` accepts assets anywhere on this machine, ``allow_remote=True``
    URLs and GDAL virtual paths (``/vsicurl/...``) as ``path`` or asset, read with GDAL's network on.

    * a Sentinel-2 ``.SAFE`` folder, its ``MTD_MSIL*.xml``, or a folder of SAFE-named band files
      (:func:`read_safe`); a Landsat Collection 2 folder with its MTL (:func:`read_landsat`); a STAC item
      ``.json`` (:func:`read_stac_item`);
    * ``*.npz``: a BigEarthNet patch (:func:`read_bigearthnet_npz`);
    * a folder: per-band GeoTIFFs of ``sensor`` (default Sentinel-2) (:func:`read_band_folder`);
    * a GeoTIFF: with ``sensor`` (name or sidecar), a multi-band image of that sensor; without, a
      13-band file is read as EuroSAT-MS, anything else is refused with a hint.
    """
    check_local(path, allow_remote=allow_remote)
    token, remote = _LAZY.set(lazy), _REMOTE.set(allow_remote)
    try:
        if is_remote(path):  # allowed: one raster, as GDAL names it
            return _open_image(str(path), sensor, band_names, allow_outside)  # type: ignore[arg-type]
        return _open_image(Path(path), sensor, band_names, allow_outside)
    finally:
        _LAZY.reset(token)
        _REMOTE.reset(remote)


def _open_image(
    path: Path, sensor: str | Path | Sensor | None, band_names: Sequence[str] | None, allow_outside: bool = False
) -> xr.Dataset:
    if isinstance(path, str):  # a URL or /vsi path (allowed by open_image)
        suffix = Path(path.split("?", 1)[0]).suffix.lower()
        if suffix not in RASTER_DRIVERS:
            raise ImageReadError(f"{path}: a remote input must be a GeoTIFF/COG or JPEG 2000 file")
        if sensor is None:
            raise SensorSpecError(f"{path}: pass the sensor of a remote raster")
        return read_multiband_geotiff(path, sensor, band_names=band_names)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    kind = product_kind(path) if sensor is None or str(path).endswith(".json") else None
    if kind in ("safe", "safe_named"):
        return read_safe(path)
    if kind == "landsat":
        return read_landsat(path)
    if kind == "stac":
        return read_stac_item(path, sensor=sensor, allow_outside=allow_outside)
    if path.is_dir():
        return read_band_folder(path, sensor or "sentinel2")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return read_bigearthnet_npz(path)
    if suffix in (".tif", ".tiff"):
        if sensor is not None:
            return read_multiband_geotiff(path, sensor, band_names=band_names)
        with open_raster(path) as src:  # the header only: how many channels
            channels = src.count
        if channels == len(EUROSAT_BAND_ORDER):
            return read_eurosat(path)
        raise SensorSpecError(
            f"{path}: {channels} channels and no sensor given; pass a catalogued sensor name or "
            "a .yaml/.json sidecar describing its bands"
        )
    raise ImageReadError(f"{path}: unsupported input (expected .npz, .tif or a folder of GeoTIFFs)")


def read_json(path: str | Path) -> object:
    return json.loads(Path(path).read_text())
