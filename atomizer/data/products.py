"""Products as delivered: a Sentinel-2 ``.SAFE`` (or a folder of SAFE-named band files), a Landsat
Collection 2 folder with its MTL, a STAC item; each read into the image model (:mod:`atomizer.data.image`)
with the calibration its own metadata states (:mod:`atomizer.data.metadata`). Files a product's metadata
names must lie inside the product (issue 23): see :func:`stac_asset_path` and :func:`read_landsat`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from atomizer.data.bands import Band, Sensor, SensorSpecError, get_sensor, is_catalogued
from atomizer.data.discovery import BAND_FILE_SUFFIXES, bands_in_name, find_band_files
from atomizer.data.image import ImageReadError, image_bands, nominal_gsd
from atomizer.data.metadata import (
    QA_INVALID_BITS,
    S2_TILE_TIME,
    MetadataError,
    landsat_metadata,
    parse_s2_metadata,
    s2_name_info,
    stac_bands,
    stac_sensor,
)
from atomizer.data.raster import (
    is_remote,
    lazy_reads,
    open_raster,
    open_raster_array,
    read_band_files,
    reading,
    remote_allowed,
)


def _s2_sensor(sensor: str | Path | Sensor | None, folder: Path) -> Sensor:
    """The band table of a Sentinel-2 product: the catalogue's, or a sidecar's (metadata only); another
    catalogued sensor does not describe it."""
    if sensor is None:
        return get_sensor("sentinel2")
    desc = get_sensor(sensor)
    if is_catalogued(desc) and desc.name != "sentinel2":
        raise SensorSpecError(f"{folder}: a Sentinel-2 product; sensor {desc.name!r} does not describe its bands")
    return desc


def _safe_image_files(safe: Path, sensor: Sensor) -> dict[str, Path]:
    """The band files of a ``.SAFE``: under ``GRANULE/*/IMG_DATA`` (and its ``R10m|R20m|R60m``), found by the one
    rule of :func:`find_band_files` (each band at its native resolution)."""
    files: dict[str, Path] = {}
    for img in sorted(safe.glob("GRANULE/*/IMG_DATA")):
        for band, f in find_band_files(img, sensor, recursive=True, root=safe).items():
            if band in files:
                raise ImageReadError(f"{safe}: {files[band]} and {f} both hold band {band}; keep one granule")
            files[band] = f
    return files


def read_safe(
    path: str | Path, bands: Iterable[str] | None = None, sensor: str | Path | Sensor | None = None
) -> xr.Dataset:
    """Read a Sentinel-2 product as ESA delivers it: a ``.SAFE`` folder (Level-1C or Level-2A), or a folder of
    band files named the SAFE way (``T33NZA_20220706T085611_B02_10m.jp2``, ``..._B8A_20m.tif``).

    With ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml`` present, the bands are the image files under
    ``GRANULE/*/IMG_DATA`` (L1C) or ``GRANULE/*/IMG_DATA/R10m|R20m|R60m`` (L2A, each band at its native
    resolution only), and the calibration is the metadata's: reflectance = (DN + ``BOA_ADD_OFFSET`` /
    ``RADIO_ADD_OFFSET``) / quantification value. Without it, the names decide (:func:`read_s2_band_files`).
    The files are found by the one rule of :func:`find_band_files`; ``sensor`` (default: the catalogue's
    Sentinel-2, or a sidecar) only describes the bands. The image records ``product_level`` (``L1C`` TOA /
    ``L2A`` BOA), ``processing_baseline`` and, per band, ``calibration_source``.

    Raises:
        ImageReadError: no band file, a band the metadata lists is not there, or the bands' CRS differ.
        MetadataError: the metadata file is unreadable or lacks the quantification value.
    """
    folder = Path(path)
    if folder.is_file() and folder.name.startswith("MTD_MSI"):
        folder = folder.parent
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder")
    s2 = _s2_sensor(sensor, folder)
    mtd = sorted(folder.glob("MTD_MSIL*.xml"))
    if not mtd:
        files = find_band_files(folder, s2, bands=bands)
        if not files:
            raise ImageReadError(
                f"{folder}: no MTD_MSIL1C.xml / MTD_MSIL2A.xml and no band file named the SAFE way (*_B02_10m.jp2)"
            )
        return read_s2_band_files(folder, files, s2)
    wanted = set(bands) if bands is not None else None
    meta = parse_s2_metadata(mtd[0])
    files = _safe_image_files(folder, s2)
    listed = {b for b, paths in meta.image_files.items()}
    if listed:
        if missing := sorted(listed - set(files), key=_order(s2)):
            raise ImageReadError(f"{folder}: {mtd[0].name} lists band(s) {missing} but no image file holds them")
    if not files:
        raise ImageReadError(f"{folder}: no band image under GRANULE/*/IMG_DATA")
    level = meta.level
    where = mtd[0].name
    attrs: dict[str, object] = dict(
        product_level=level,
        radiometry="TOA reflectance" if level == "L1C" else "BOA reflectance",
        processing_baseline=meta.baseline or "",
        metadata_file=str(mtd[0]),
    )
    calibration: dict[str, dict[str, object]] = {}
    for b in files:
        off = meta.offsets.get(b, 0.0)
        calibration[b] = {
            "dn_scale": 1.0 / meta.quantification,
            "dn_offset": float(off),
            "nodata": np.nan if meta.nodata is None else float(meta.nodata),
            "calibration_source": f"{where} (quantification {meta.quantification:g}, offset {off:g})",
        }
    if wanted is not None:
        if missing := sorted(wanted - set(files)):
            raise ImageReadError(f"{folder}: no image file for band(s) {missing}")
        files = {b: f for b, f in files.items() if b in wanted}
    return read_band_files(
        {b: (f, 0) for b, f in files.items()},
        s2,
        folder,
        calibration=calibration,
        attrs=attrs,
        single_band=True,
    )


def _order(sensor: Sensor) -> Callable[[str], int]:
    names = sensor.band_names
    return lambda b: names.index(b) if b in names else len(names)


def read_s2_band_files(
    folder: Path, files: Mapping[str, Path], sensor: Sensor, dn_offset: float | None = None
) -> xr.Dataset:
    """Sentinel-2 band files without a metadata file, calibrated from what the names say (:func:`s2_name_info`:
    the processing baseline's DN offset, the product level): every folder of Sentinel-2 bands (a band folder,
    a SAFE-named folder, a BigEarthNet patch folder) reads through here, so its image is the same whichever
    reader or ``sensor`` flag brought it. ``dn_offset`` overrides the names' offset.
    """
    info = s2_name_info(folder.name, [f.stem for f in files.values()])
    attrs: dict[str, object] = {}
    if info.level is not None:
        attrs.update(
            product_level=info.level,
            radiometry="TOA reflectance" if info.level == "L1C" else "BOA reflectance",
        )
    if info.baseline is not None:
        attrs["processing_baseline"] = f"{info.baseline}"
    calibration: dict[str, dict[str, object]] = {}
    if dn_offset is None:
        dn_offset = info.dn_offset
        if info.baseline is None:
            calibration = {
                b: {"calibration_source": "assumed: no MTD file and no processing baseline in the names (offset 0)"}
                for b in files
            }
    return read_band_files(
        {b: (f, 0) for b, f in files.items()},
        sensor,
        folder,
        dn_offset=dn_offset,
        calibration=calibration,
        attrs=attrs,
        single_band=True,
    )


def _landsat_mtl(folder: Path) -> Path | None:
    found = sorted(folder.glob("*_MTL.json")) + sorted(folder.glob("*_MTL.txt"))
    return found[0] if found else None


def read_landsat(path: str | Path, mask_clouds: bool = True, sensor: str | Path | Sensor | None = None) -> xr.Dataset:
    """Read a Landsat 8/9 Collection 2 product (Level-1 or Level-2) with its ``*_MTL.txt`` or ``*_MTL.json``.

    Every band gets its own scale and offset from the MTL: ``REFLECTANCE_MULT/ADD_BAND_n`` (Level-2 surface
    reflectance or Level-1 TOA reflectance), ``TEMPERATURE_MULT/ADD_BAND_ST_B10`` (Level-2 surface
    temperature in kelvin), ``RADIANCE_MULT/ADD_BAND_n`` (Level-1 thermal radiance). Fill (DN 0) is nodata;
    with ``mask_clouds`` the ``QA_PIXEL`` fill, dilated-cloud, cloud and cloud-shadow bits mark pixels
    invalid too (their DN is set to the fill value; ``qa_masked_pixels`` counts them).

    ``sensor`` (default: the MTL's spacecraft) only describes the bands: a sidecar may, another catalogued
    sensor than the MTL's is refused.

    Raises:
        ImageReadError: a file the MTL lists is not there; bands in different CRS.
        MetadataError: the MTL is unreadable, or lacks a band's rescaling parameters.
        SensorSpecError: ``sensor`` is a catalogued sensor other than the MTL's.
    """
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    mtl = _landsat_mtl(folder)
    if mtl is None:
        raise ImageReadError(f"{folder}: no Landsat *_MTL.txt or *_MTL.json")
    meta = landsat_metadata(mtl)
    if sensor is not None and is_catalogued(desc := get_sensor(sensor)) and desc.name != meta.sensor:
        raise SensorSpecError(f"{folder}: {mtl.name} says {meta.sensor}; sensor {desc.name!r} does not describe it")
    sensor = get_sensor(sensor if sensor is not None else meta.sensor)
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
    ds = read_band_files(
        files,
        sensor,
        folder,
        calibration=calibration,
        attrs={"product_level": meta.level, "metadata_file": str(mtl)},
        single_band=True,
    )
    if mask_clouds and meta.qa_pixel and (folder / meta.qa_pixel).is_file():
        qa_da = open_raster_array(folder / meta.qa_pixel)
        qa = (qa_da.data if lazy_reads() else qa_da.values)[0].astype(np.uint16)  # lazy: masked block by block
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
    item: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Read a local STAC item whose assets point at local GeoTIFFs / COGs / JPEG2000: the item file ``path``
    (``item.json``), or the item in memory ``item`` (a dict: one feature of an ItemCollection) whose hrefs are
    relative to ``path``'s folder (``path``: the ItemCollection or manifest file it came from, or that folder).

    Asset hrefs must resolve inside the item's folder (relative hrefs without ``../`` escapes, symbolic links
    followed): an absolute path or ``..`` leading elsewhere is refused unless ``allow_outside``, a URL or
    ``/vsi`` href unless ``allow_remote`` (then read with GDAL's network on). An item in memory obeys the same
    rules, the folder of ``path`` standing for the item file's folder.

    Each data asset's channels are bands. Their wavelength and width come from ``eo:bands``
    (``center_wavelength``, ``full_width_half_max``, micrometres), their calibration from ``raster:bands``
    (``scale``, ``offset``, ``nodata``): a STAC-described sensor needs no sidecar. Where ``eo:bands`` is
    missing, the bands are matched by name (asset key or ``eo:bands`` name) to a catalogued sensor chosen by
    ``sensor``, else by the item's ``platform`` / ``constellation``.

    Raises:
        MetadataError: not a STAC item; a band with neither wavelengths nor a catalogued match.
        ImageReadError: an asset outside the item's folder, remote, or not a file.
    """
    allow_remote = allow_remote or remote_allowed()
    if item is not None:
        where = Path(path)
        base = where if where.is_dir() else where.parent
        if not base.is_dir():
            raise ImageReadError(f"{base}: not a folder (the folder of STAC item {item.get('id', '?')!r})")
        stac, bands = stac_bands(item)
        path = Path(f"{where}#{stac.id}")  # names the item in messages and as the image's source
    else:
        path = Path(path)
        stac, bands = stac_bands(path)
        base = path.parent
    cat_name = sensor or stac_sensor(stac)
    catalogued = get_sensor(cat_name) if cat_name is not None else None
    table: list[Band] = []
    files: dict[str, tuple[Path, int]] = {}
    calibration: dict[str, dict[str, object]] = {}
    for sb in bands:
        f = stac_asset_path(
            path, sb.asset, sb.href, allow_outside=allow_outside, allow_remote=allow_remote, folder=base
        )
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
        name=catalogued.name if from_catalogue and catalogued is not None else f"stac:{stac.id}",
        bands=tuple(table),
        dn_scale=catalogued.dn_scale if catalogued is not None else 1.0,
        dn_offset=catalogued.dn_offset if catalogued is not None else 0.0,
        nodata=catalogued.nodata if catalogued is not None else None,
    )
    attrs = {"stac_item": stac.id}
    if stac.datetime is not None:
        attrs["acquisition_date"] = stac.datetime.date().isoformat()
    with reading(allow_remote=allow_remote):
        return read_band_files(files, desc, path, calibration=calibration, attrs=attrs)


def stac_asset_path(
    item_path: Path,
    asset: str,
    href: str,
    allow_outside: bool = False,
    allow_remote: bool = False,
    folder: Path | None = None,
) -> Path:
    """The file a STAC asset's ``href`` names, relative to the item's folder (``folder``, default the item
    file's); refused in one line naming the asset when it is a URL or ``/vsi`` path (unless ``allow_remote``),
    or resolves outside the item's folder (an absolute path, a ``../`` escape, a link leading out; unless
    ``allow_outside``), or is not a file."""
    if is_remote(href):
        if not allow_remote:
            raise ImageReadError(
                f"{item_path}: asset {asset!r} points at a URL or GDAL virtual path ({href}); remote assets are "
                "read only when allowed explicitly (allow_remote=True)"
            )
        return href  # type: ignore[return-value]  # GDAL reads it (open_raster allows it)
    folder = item_path.parent if folder is None else folder
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
    s2 = get_sensor("sentinel2")
    if any(
        f.suffix.lower() in BAND_FILE_SUFFIXES and S2_TILE_TIME.search(f.stem) and bands_in_name(f.stem, s2)
        for f in p.iterdir()
    ):
        return "safe_named"
    return None
