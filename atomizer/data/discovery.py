"""Band discovery: the one rule that finds a sensor's band files in a folder, used by every reader of a folder
(band folders, BigEarthNet patch folders, SAFE-named folders, the ``IMG_DATA`` of a ``.SAFE``).

A file holds a band when

* its suffix is ``.tif``, ``.tiff`` or ``.jp2`` (any case), and its name does not start with ``.``;
* its stem names the band as a whole token: the band's name or one of the sensor's aliases for it, bounded by
  the start or end of the stem or by a character that is neither a letter nor a digit (``B01.jp2``,
  ``scene_B02.tif``, ``B8A_20m.tif``, ``T33UUP_20170613T101031_B01.jp2``, ``..._B02_10m.jp2``,
  ``LC08_..._SR_B4.TIF``). Names are compared whole, so ``B08`` never stands for ``B8A``; case is ignored
  where that still names one band only (``s1_vv.tif`` -> ``VV``).

A band stored at several resolutions (the ``R10m``/``R20m``/``R60m`` copies of a Level-2A product) is read from
the file at the band's native GSD, else from the finest; a file's resolution is the ``<n>m`` token of its name,
else its ``R<n>m`` folder, else its pixel size. Two files holding one band at the resolution chosen are refused
in one line naming both; so is a file whose name names two bands. The sensor (a catalogued name or a sidecar)
says which names to look for: it never changes the rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from atomizer.data.bands import Sensor, get_sensor
from atomizer.data.image import ImageReadError, nominal_gsd
from atomizer.data.raster import open_raster

#: Suffixes of the files a folder's bands are read from (compared without case).
BAND_FILE_SUFFIXES = (".tif", ".tiff", ".jp2")

_RES_TOKEN = re.compile(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)m(?![A-Za-z0-9])")
_RES_FOLDER = re.compile(r"^R(\d+(?:\.\d+)?)m$", re.IGNORECASE)


def _name_pattern(sensor: Sensor) -> re.Pattern[str]:
    names = sorted(set(sensor.names_and_aliases), key=len, reverse=True)  # the longest name first (SR_B4, B4)
    return re.compile(r"(?<![A-Za-z0-9])(" + "|".join(map(re.escape, names)) + r")(?![A-Za-z0-9])", re.IGNORECASE)


def bands_in_name(stem: str, sensor: Sensor, pattern: re.Pattern[str] | None = None) -> list[str]:
    """The bands of ``sensor`` a file stem names as whole tokens (``"T33UUP_20170613T101031_B8A"`` ->
    ``["B8A"]``), in the order they appear, each once."""
    out: list[str] = []
    for m in (pattern or _name_pattern(sensor)).finditer(stem):
        band = sensor.find_band(m.group(1))
        if band is not None and band.name not in out:
            out.append(band.name)
    return out


def file_resolution(path: Path, root: Path | None = None) -> float:
    """The pixel size (m) a band file is stored at: the ``<n>m`` token of its name (``..._B02_10m.jp2``), else
    the ``R<n>m`` folder it lies in (below ``root``), else its header's pixel size."""
    if m := _RES_TOKEN.search(path.stem):
        return float(m.group(1))
    parents = path.relative_to(root).parent.parts if root is not None else (path.parent.name,)
    for part in reversed(parents):
        if m := _RES_FOLDER.match(part):
            return float(m.group(1))
    with open_raster(path) as src:
        return nominal_gsd(abs(src.transform.a))


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def find_band_files(
    folder: str | Path,
    sensor: str | Path | Sensor = "sentinel2",
    bands: Iterable[str] | None = None,
    recursive: bool = False,
    root: str | Path | None = None,
) -> dict[str, Path]:
    """The file holding each band of ``sensor`` in ``folder`` (the module's rule), in the sensor's band order.

    Args:
        folder: The folder to look in.
        sensor: Catalogued sensor name, sidecar path or :class:`Sensor`: which band names to look for.
        bands: Only these bands (names or aliases); each must be found.
        recursive: Look in sub-folders too (a SAFE's ``IMG_DATA/R10m|R20m|R60m``).
        root: The folder the files must lie in, links followed (default ``folder``).

    Raises:
        ImageReadError: not a folder; a file leading outside ``root``; a file whose name names two bands; two
            files holding one band at the same resolution; a band asked for and not found.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder")
    sensor = get_sensor(sensor)
    top = Path(root) if root is not None else folder
    wanted: set[str] | None = None
    if bands is not None:
        wanted = set()
        for name in bands:
            band = sensor.find_band(name)
            if band is None:
                raise ImageReadError(f"{folder}: sensor {sensor.name!r} has no band {name!r} ({sensor.band_names})")
            wanted.add(band.name)
    pattern = _name_pattern(sensor)
    found: dict[str, list[Path]] = {}
    for f in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        if f.suffix.lower() not in BAND_FILE_SUFFIXES or any(p.startswith(".") for p in f.relative_to(folder).parts):
            continue
        named = bands_in_name(f.stem, sensor, pattern)
        if not named or not f.is_file():
            continue
        if len(named) > 1:
            raise ImageReadError(f"{f}: the file name names bands {named} of sensor {sensor.name!r}; one band per file")
        if wanted is not None and named[0] not in wanted:
            continue
        if not _inside(f, top):
            raise ImageReadError(f"{f}: a link leading outside {top}; band files must lie in the folder read")
        found.setdefault(named[0], []).append(f)
    if wanted is not None and (missing := [b for b in sensor.band_names if b in wanted - set(found)]):
        raise ImageReadError(f"{folder}: no band file for band(s) {missing} of sensor {sensor.name!r}")
    return {b: _one_file(b, found[b], sensor, top) for b in sensor.band_names if b in found}


def _one_file(band: str, files: list[Path], sensor: Sensor, root: Path) -> Path:
    """The file a band is read from among several: at its native GSD, else the finest; refused when two tie."""
    if len(files) == 1:
        return files[0]
    res = [(file_resolution(f, root), f) for f in files]
    native = sensor.band(band).gsd_m
    at = native if any(g == native for g, _ in res) else min(g for g, _ in res)
    chosen = [f for g, f in res if g == at]
    if len(chosen) > 1:
        raise ImageReadError(f"{root}: {chosen[0]} and {chosen[1]} both hold band {band} at {at:g} m; keep one of them")
    return chosen[0]


def no_band_files(folder: Path, sensor: Sensor) -> ImageReadError:
    """The one-line error of a folder holding no file named after a band of ``sensor``."""
    names = sensor.band_names
    shown = ", ".join(names[:14]) + (", ..." if len(names) > 14 else "")
    return ImageReadError(
        f"{folder}: no .tif/.tiff/.jp2 file named after a band of sensor {sensor.name!r} ({shown}); pass the "
        "sensor whose band names the files carry (a catalogued name or a .yaml/.json sidecar)"
    )
