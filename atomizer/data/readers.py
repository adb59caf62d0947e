"""Readers: files in, one ``xarray.Dataset`` per image out, every band on its native grid.

:func:`open_image` opens anything readable, dispatching by what the path is. The image model is
:mod:`atomizer.data.image`; the readers live by job:

* :mod:`atomizer.data.raster`: opening a raster (GeoTIFF/COG, JPEG 2000) confined to its suffix's GDAL driver,
  local files and GDAL's network off; a multi-band GeoTIFF of a known sensor;
* :mod:`atomizer.data.discovery`: the one rule that finds a sensor's band files in any folder;
* :mod:`atomizer.data.layouts`: our own layouts (BigEarthNet npz patches and folders, EuroSAT-MS, band folders);
* :mod:`atomizer.data.products`: products as delivered (Sentinel-2 SAFE, Landsat Collection 2, STAC items).

This module also re-exports the names code outside :mod:`atomizer.data` imports from it (see ``__all__``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import xarray as xr

from atomizer.data.bands import Sensor, SensorSpecError
from atomizer.data.image import ImageReadError, build_image, count_tokens, describe, image_bands, valid_mask
from atomizer.data.layouts import (
    EUROSAT_BAND_ORDER,
    read_band_folder,
    read_bigearthnet_npz,
    read_eurosat,
)
from atomizer.data.products import product_kind, read_landsat, read_safe, read_stac_item
from atomizer.data.raster import (
    GDAL_LOCAL_ONLY,
    RASTER_DRIVERS,
    band_descriptions,
    check_local,
    is_remote,
    open_raster,
    read_multiband_geotiff,
    reading,
)

__all__ = [
    "open_image",
    # re-exported for callers outside atomizer.data (engine, bench, dashboard, cli, tests, notebooks)
    "GDAL_LOCAL_ONLY",
    "ImageReadError",
    "build_image",
    "count_tokens",
    "describe",
    "image_bands",
    "open_raster",
    "read_band_folder",
    "read_bigearthnet_npz",
    "read_stac_item",
    "valid_mask",
]


def open_image(
    path: str | Path,
    sensor: str | Path | Sensor | None = None,
    band_names: Sequence[str | None] | None = None,
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

    ``sensor`` (a catalogued name or a sidecar) describes the bands; it never changes how they are found:

    * a Sentinel-2 ``.SAFE`` folder, its ``MTD_MSIL*.xml``, or a folder of SAFE-named band files
      (:func:`read_safe`); a Landsat Collection 2 folder with its MTL (:func:`read_landsat`); a STAC item
      ``.json`` (:func:`read_stac_item`);
    * ``*.npz``: a BigEarthNet patch (:func:`read_bigearthnet_npz`);
    * a folder: one band file per band of ``sensor`` (default Sentinel-2), ``.tif``/``.tiff``/``.jp2`` named
      after the band (:func:`read_band_folder`, the one rule of :mod:`atomizer.data.discovery`);
    * a GeoTIFF: its channels named by ``band_names``, else by the file's band descriptions (matched to
      ``sensor`` by name; without ``sensor``, to the one catalogued sensor naming them all), else by a
      sidecar's band list (:func:`read_multiband_geotiff`). A file without descriptions of 13 channels and no
      sensor is read as EuroSAT-MS (:func:`read_eurosat`, its documented band order); anything else is refused
      with a hint (a catalogued sensor's band list is not a file's channel order).
    """
    check_local(path, allow_remote=allow_remote)
    with reading(lazy=lazy, allow_remote=allow_remote):
        if is_remote(path):  # allowed: one raster, as GDAL names it
            return _open_image(str(path), sensor, band_names, allow_outside)
        return _open_image(Path(path), sensor, band_names, allow_outside)


def _open_image(
    path: Path | str,
    sensor: str | Path | Sensor | None,
    band_names: Sequence[str | None] | None,
    allow_outside: bool = False,
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
    kind = product_kind(path)  # whatever the sensor: it describes the bands, it never changes how they are found
    if kind in ("safe", "safe_named"):
        return read_safe(path, sensor=sensor)
    if kind == "landsat":
        return read_landsat(path, sensor=sensor)
    if kind == "stac":
        return read_stac_item(path, sensor=sensor, allow_outside=allow_outside)
    if path.is_dir():
        return read_band_folder(path, sensor or "sentinel2")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return read_bigearthnet_npz(path)
    if suffix in (".tif", ".tiff"):
        if sensor is None and band_names is None:
            channels, descriptions = band_descriptions(path)  # the header only
            if descriptions is None and channels == len(EUROSAT_BAND_ORDER):
                return read_eurosat(path)
        return read_multiband_geotiff(path, sensor, band_names=band_names)
    raise ImageReadError(f"{path}: unsupported input (expected .npz, .tif or a folder of band files)")
