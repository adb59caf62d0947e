"""Raster reading: the one way the library opens a raster file it did not write (issue 23's confined GDAL
opening), and rasters to the image model.

* :func:`open_raster` (the rasterio dataset) and :func:`open_raster_array` (the pixels) open a file with the
  GDAL driver of its suffix only (:data:`RASTER_DRIVERS`: GeoTIFF/COG, JPEG 2000), a local file unless remote
  reads are allowed, GDAL's network off (:data:`GDAL_LOCAL_ONLY`);
* :func:`reading` sets, for the readers called inside it, whether rasters are read lazily (dask arrays of
  row blocks) and whether URLs / GDAL virtual paths may be read (what ``open_image(..., lazy=...,
  allow_remote=...)`` asks for);
* :func:`read_multiband_geotiff` reads a multi-band file whose channels are named (band descriptions, a band
  list, a sidecar: :func:`channel_bands`), :func:`read_band_files` a set of band files (each on its own grid)
  into one image.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from atomizer.data.bands import Sensor, SensorSpecError, get_sensor, is_catalogued, sensors_naming
from atomizer.data.image import ImageReadError, build_image, grid_name, nominal_gsd

#: Set by ``open_image(..., lazy=True)``: rasters stay on disk (dask arrays of row blocks) until a slice is read.
_LAZY: contextvars.ContextVar[bool] = contextvars.ContextVar("atomizer_lazy_reads", default=False)
#: Set by ``open_image(..., allow_remote=True)``: URLs and GDAL virtual paths may be read, with GDAL's network.
_REMOTE: contextvars.ContextVar[bool] = contextvars.ContextVar("atomizer_remote_reads", default=False)
_LAZY_ROWS = 512  # rows per block of a lazily read raster


def lazy_reads() -> bool:
    """True inside ``reading(lazy=True)`` (``open_image(..., lazy=True)``): rasters stay on disk as dask arrays."""
    return _LAZY.get()


def remote_allowed() -> bool:
    """True inside ``reading(allow_remote=True)``: URLs and GDAL virtual paths may be read."""
    return _REMOTE.get()


@contextmanager
def reading(lazy: bool | None = None, allow_remote: bool | None = None) -> Iterator[None]:
    """Within the block, the readers read lazily (``lazy``) and may read URLs / GDAL virtual paths
    (``allow_remote``); ``None`` keeps the enclosing setting. Restored on exit."""
    tokens: list[tuple[contextvars.ContextVar[bool], contextvars.Token[bool]]] = []
    if lazy is not None:
        tokens.append((_LAZY, _LAZY.set(lazy)))
    if allow_remote is not None:
        tokens.append((_REMOTE, _REMOTE.set(allow_remote)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


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


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _unreadable(path: str | Path, driver: str, e: BaseException) -> ImageReadError:
    return ImageReadError(
        f"{path}: not a readable {_FORMAT_NAMES[driver]} file (opened with GDAL's {driver} driver only: {one_line(e)})"
    )


def open_raster_array(path: Path | str) -> xr.DataArray:
    import rasterio
    import rioxarray  # noqa: F401  (registers the engine)

    check_local(path)
    driver = raster_driver(path)
    if not is_remote(path) and not Path(path).is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        with gdal_env():
            name = _gdal_name(path)
            if lazy_reads():  # windowed reads later, block by block: the scene is never in memory at once
                return _one_array(
                    path,
                    rioxarray.open_rasterio(
                        name, masked=False, cache=False, chunks={"band": 1, "y": _LAZY_ROWS, "x": -1}, driver=driver
                    ),
                )
            da = _one_array(path, rioxarray.open_rasterio(name, masked=False, cache=False, driver=driver))
            da = da.load()
    except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError, OSError, ValueError) as e:
        raise _unreadable(path, driver, e) from None
    return da


def _one_array(path: Path | str, opened: object) -> xr.DataArray:
    """What rioxarray opened, as the one array a GeoTIFF / JPEG 2000 file is (never subdatasets)."""
    if not isinstance(opened, xr.DataArray):
        raise ImageReadError(f"{path}: not a single raster (the file holds {type(opened).__name__})")
    return opened


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


def band_descriptions(path: str | Path) -> tuple[int, tuple[str, ...] | None]:
    """``(channel count, band descriptions)`` of a raster from its header (no pixel read); the descriptions are
    ``None`` when no channel has one (GDAL writes none unless asked)."""
    with open_raster(path) as src:
        count = int(src.count)
        raw = tuple((d or "").strip() for d in src.descriptions)
    return count, (raw if any(raw) else None)


def channel_bands(
    path: str | Path,
    count: int,
    descriptions: Sequence[str] | None,
    sensor: str | Path | Sensor | None = None,
    band_names: Sequence[str | None] | None = None,
) -> tuple[Sensor, list[str | None], dict[str, str]]:
    """Which band each channel of a multi-band raster holds, by name, never by count or position alone:
    ``(sensor, band name per channel, attrs saying where the names came from)``.

    * ``band_names`` (explicit channel order) win; without ``sensor`` they must name the bands of exactly one
      catalogued sensor; a ``None`` (YAML ``~``) or ``"-"`` entry says that channel is no band (an alpha
      channel, an elevation model) and is not read;
    * else the file's band descriptions, matched to ``sensor``'s bands by name or alias; without ``sensor``, to
      the one catalogued sensor that names them all (recorded in ``sensor_from``);
    * else a sidecar's band list, which is the file's channel order (a sidecar describes its file). A
      catalogued sensor's band list is the catalogue's order, not the file's: it names no channel.

    Raises:
        SensorSpecError: one line naming the file and what is missing (names, a sensor), or the channel count
            differs from the band list.
    """
    what = str(path)
    attrs: dict[str, str] = {}
    given = get_sensor(sensor) if sensor is not None else None
    skip: set[int] = set()
    if band_names is not None:
        skip = {i for i, n in enumerate(band_names) if n is None or str(n).strip() in ("", "-")}
        names, source = [str(n) for i, n in enumerate(band_names) if i not in skip], "band_names"
        if skip:
            attrs["channels_skipped"] = ", ".join(str(i + 1) for i in sorted(skip))
    elif descriptions is not None:
        names, source = list(descriptions), "band descriptions"
        attrs["band_names_from"] = "file band descriptions"
        if given is not None and not is_catalogued(given) and len(names) == len(given.bands):
            if all(given.find_band(n) is None for n in names):  # free text, not band names: the sidecar's order
                names, attrs["band_names_from"] = given.band_names, f"sidecar {given.name!r} (channel order)"
    elif given is not None and not is_catalogued(given):
        given.check_channels(count, what=what)
        order: list[str | None] = list(given.band_names)
        return given, order, {"band_names_from": f"sidecar {given.name!r} (channel order)"}
    else:
        who = (
            f"sensor {given.name!r} is catalogued, and its band list ({len(given.bands)} bands) is not"
            if given is not None
            else "no sensor is given, and"
        )
        raise SensorSpecError(
            f"{what}: {count} channels without band descriptions; {who} the file's channel order: pass "
            "band_names (--bands) in channel order, a .yaml/.json sidecar listing the channels in order, or write the band "
            "names into the file's band descriptions"
        )
    if given is None:
        if any(not n for n in names):
            raise SensorSpecError(
                f"{what}: channel(s) {[i + 1 for i, n in enumerate(names) if not n]} have no {source}"
            )
        found = sensors_naming(names)
        if len(found) != 1:
            why = f"names the bands of sensors {found}" if found else "names the bands of no catalogued sensor"
            raise SensorSpecError(
                f"{what}: its {source} ({', '.join(names)}) {why}; pass the sensor (a catalogued name or a sidecar)"
            )
        given = get_sensor(found[0])
        attrs["sensor_from"] = f"{source} (the one catalogued sensor naming them all)"
    bands = [given.find_band(n) if n else None for n in names]
    if unmatched := [f"{i + 1}: {n!r}" for i, (n, b) in enumerate(zip(names, bands)) if b is None]:
        raise SensorSpecError(
            f"{what}: channel(s) {', '.join(unmatched)} of its {source} name no band of sensor {given.name!r} "
            f"({', '.join(given.band_names)})"
        )
    canonical = [b.name for b in bands if b is not None]
    if dup := sorted({n for n in canonical if canonical.count(n) > 1}):
        raise SensorSpecError(f"{what}: band(s) {dup} named by two channels of its {source}")
    if count != len(canonical) + len(skip):
        skipped = f" and skip {len(skip)} channel(s)" if skip else ""
        raise SensorSpecError(
            f"{what} has {count} channels but its {source} name {len(canonical)} bands of sensor {given.name!r} "
            f"({', '.join(canonical)}){skipped}"
        )
    per_channel: list[str | None] = []
    it = iter(canonical)
    for i in range(count):
        per_channel.append(None if i in skip else next(it))
    return given, per_channel, attrs


def read_multiband_geotiff(
    path: str | Path,
    sensor: str | Path | Sensor | None = None,
    band_names: Sequence[str | None] | None = None,
    dn_offset: float | None = None,
) -> xr.Dataset:
    """Read a multi-band GeoTIFF, each channel matched to a band by name (:func:`channel_bands`): explicit
    ``band_names`` in channel order, else the file's band descriptions (a 12-band Sentinel-2 Level-2A export
    described ``B01 ... B8A, B09, B11, B12`` reads as those 12 bands, with or without ``sensor``), else a
    sidecar's band list.

    All channels of a multi-band file share one grid: each band's GSD is the file's pixel size.

    Raises:
        SensorSpecError: the channels cannot be named, or their count does not match the band list.
        ImageReadError: the file is missing, corrupt or truncated.
    """
    path = path if isinstance(path, str) and is_remote(path) else Path(path)
    count, descriptions = band_descriptions(path)
    desc, names, name_attrs = channel_bands(path, count, descriptions, sensor, band_names)
    da = open_raster_array(path)
    if da.sizes["band"] != count:
        raise ImageReadError(f"{path}: the header says {count} channels, the pixels {da.sizes['band']}")
    gsd, origin, attrs = _raster_meta(da)
    nodata = da.rio.nodata
    values = da.data if lazy_reads() else da.values
    arrays = {n: values[i] for i, n in enumerate(names) if n is not None}
    ds = build_image(
        arrays,
        desc,
        gsd={n: gsd for n in arrays},
        origin_xy=origin,
        attrs={**attrs, "source": str(path), **name_attrs},
        dn_offset=dn_offset,
    )
    if nodata is not None:
        for n in arrays:
            ds[n].attrs["nodata"] = float(nodata)
    return ds


def read_band_files(
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
            opened[path] = open_raster_array(path)
        da = opened[path]
        if single_band and da.sizes["band"] != 1:
            raise ImageReadError(f"{path}: expected one band, found {da.sizes['band']}")
        if channel >= da.sizes["band"]:
            raise ImageReadError(f"{path}: band {name!r} is channel {channel + 1}, the file has {da.sizes['band']}")
        g, origin, meta = _raster_meta(da)
        arrays[name], gsd[name], origins[name] = (da.data if lazy_reads() else da.values)[channel], g, origin
        crs[name] = meta.get("crs")
        if da.rio.nodata is not None and name not in (calibration or {}):
            calibration = {**(calibration or {}), name: {"nodata": float(da.rio.nodata)}}
    if len({c for c in crs.values()}) > 1:
        by: dict[str, list[str]] = {}
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
            ydim, xdim = (str(d) for d in ds[name].dims)
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
