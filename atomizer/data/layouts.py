"""Our own layouts: a BigEarthNet patch (npz, LMDB value or folder of per-band GeoTIFFs), a EuroSAT-MS
"allBands" GeoTIFF, and a folder of single-band rasters of any sensor (found by the one rule of
:mod:`atomizer.data.discovery`), each read into the image model (:mod:`atomizer.data.image`) on its bands'
native grids."""

from __future__ import annotations

import re
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from atomizer.data.bands import Sensor, get_sensor, is_catalogued
from atomizer.data.discovery import find_band_files, no_band_files
from atomizer.data.image import ImageReadError, build_image
from atomizer.data.products import read_s2_band_files
from atomizer.data.raster import lazy_reads, one_line, read_band_files, read_multiband_geotiff

#: Band order inside an EuroSAT-MS "allBands" GeoTIFF (B8A is last; verified on the pixels).
EUROSAT_BAND_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")


# --------------------------------------------------------------------------------------------------
# EuroSAT and band folders
# --------------------------------------------------------------------------------------------------


def read_eurosat(path: str | Path) -> xr.Dataset:
    """Read an EuroSAT-MS "allBands" GeoTIFF (13 bands, B8A last, L1C, every band on the 10 m grid).

    The dataset's authors resampled every band to 10 m; the image is kept on that stored grid.
    """
    return read_multiband_geotiff(path, "sentinel2", band_names=EUROSAT_BAND_ORDER)


def read_band_folder(
    folder: str | Path,
    sensor: str | Path | Sensor = "sentinel2",
    bands: Iterable[str] | None = None,
    dn_offset: float | None = None,
) -> xr.Dataset:
    """Read a folder of single-band rasters (``B04.tif``, ``scene_B04.jp2``, ``B8A_20m.tif``,
    ``T33UUP_20170613T101031_B01.jp2``...) at their native grids.

    The files are found by the one rule of :func:`atomizer.data.discovery.find_band_files` (``.tif``, ``.tiff``,
    ``.jp2``; the band's name as a whole token of the file name; B08 never for B8A; several resolutions of a
    band: the native one); ``sensor`` only says which band names to look for and describes them.

    * Sentinel-2: calibrated from the names (:func:`atomizer.data.products.read_s2_band_files`: the processing
      baseline's offset, the product level), exactly as a SAFE-named folder read by :func:`read_safe` is;
      ``dn_offset`` overrides the names' offset.
    * Landsat 8/9 (catalogued) without its MTL: the catalogue's Collection 2 Level-2 scaling, with a warning
      saying so (a folder with its MTL is read by :func:`read_landsat`).

    Raises:
        ImageReadError: not a folder, no band file, a band of ``bands`` missing, two files for one band.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder")
    desc = get_sensor(sensor)
    files = find_band_files(folder, desc, bands=bands)
    if not files:
        raise no_band_files(folder, desc)
    if desc.name == "sentinel2":
        return read_s2_band_files(folder, files, desc, dn_offset=dn_offset)
    calibration: dict[str, dict[str, object]] = {}
    attrs: dict[str, object] = {}
    if is_catalogued(desc) and desc.name in LANDSAT_SENSORS:
        level, note = _landsat_without_mtl(folder, files, desc)
        attrs["product_level"] = level
        calibration = {b: {"calibration_source": note} for b in files}
    return read_band_files(
        {n: (f, 0) for n, f in files.items()},
        desc,
        folder,
        dn_offset=dn_offset,
        calibration=calibration,
        attrs=attrs,
        single_band=True,
    )


#: Catalogued sensors whose products carry an MTL with each band's scaling.
LANDSAT_SENSORS = ("landsat8", "landsat9")
#: Bands only a Landsat Level-1 product holds (Level-2 has no panchromatic, cirrus or TIRS band 11).
LANDSAT_L1_ONLY = ("B8", "B9", "B11")


def _landsat_without_mtl(folder: Path, files: dict[str, Path], sensor: Sensor) -> tuple[str, str]:
    """Warn (one line) that a Landsat band folder without its MTL is read with the catalogue's Collection 2
    Level-2 scaling; ``(product level assumed, calibration source)``."""

    def linear(band: str) -> str:
        scale, offset, _ = sensor.calibration(band)
        add = offset * scale
        return f"DN * {scale:g} {'-' if add < 0 else '+'} {abs(add):g}"

    reflect = f"surface reflectance = {linear('B4')}"
    thermal = f", B10 kelvin = {linear('B10')}" if "B10" in sensor.band_names else ""
    stems = " ".join(f.stem for f in files.values())
    doubt = ""
    if m := re.search(r"(?<![A-Za-z0-9])(L1(?:TP|GT|GS))(?![A-Za-z0-9])", stems):
        doubt = f" although the file names say Level-1 ({m.group(1)}), whose scaling differs"
    elif level1 := [b for b in LANDSAT_L1_ONLY if b in files]:
        doubt = f" although it holds {', '.join(level1)}, which only Level-1 products have"
    warnings.warn(
        f"{folder}: no Landsat *_MTL.txt / *_MTL.json; assuming a Collection 2 Level-2 product ({reflect}"
        f"{thermal}){doubt}; put the product's MTL in the folder to read its own scaling",
        stacklevel=3,
    )
    return "L2", "assumed: Collection 2 Level-2 scaling (no MTL in the folder)"


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
        if lazy_reads():  # shapes from the arrays' headers; values read when computed
            data = _lazy_npz(path)
        else:
            with np.load(path) as z:
                data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ImageReadError(f"{path}: not a readable npz patch ({one_line(e)})") from None
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
