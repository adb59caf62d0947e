"""Product metadata: what the Sentinel-2 ``MTD_MSIL*.xml``, the Landsat ``*_MTL.txt`` / ``_MTL.json``, a
STAC item and a product's name say about its bands and their calibration (pure parsing; the readers open the
pixels).

Every parser returns plain Python values and raises :class:`MetadataError` (one line naming the file and
the field) when the metadata is missing or inconsistent.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class MetadataError(ValueError):
    """A product's metadata is missing, unreadable or inconsistent; the message names the file."""


# --------------------------------------------------------------------------------------------------
# What a product's name says (Sentinel conventions)
# --------------------------------------------------------------------------------------------------

#: Processing baseline from which Sentinel-2 L2A/L1C products store DN + 1000.
S2_OFFSET_BASELINE = 400


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


#: A Sentinel-2 tile and sensing time as SAFE band files carry them: ``T33UUP_20170613T101031``.
S2_TILE_TIME = re.compile(r"(?<![A-Za-z0-9])T\d{2}[A-Z]{3}_\d{8}T\d{6}(?![A-Za-z0-9])")


@dataclass(frozen=True)
class S2NameInfo:
    """What the names of a Sentinel-2 folder and its band files say when no metadata file does.

    Attributes:
        level: ``"L1C"`` / ``"L2A"``: from ``MSIL1C``/``MSIL2A`` in the names, else from SAFE-named band files
            (``T33UUP_20170613T101031_B01``: Level-1C; ``..._B01_60m``: Level-2A); ``None`` when nothing says.
        baseline: Processing baseline (``400``) from the first name carrying one (``_N0400_``), or ``None``.
        dn_offset: The DN offset that baseline implies (:func:`s2_dn_offset`; 0 without one).
    """

    level: str | None
    baseline: int | None
    dn_offset: float


def s2_name_info(folder_name: str, file_stems: Iterable[str]) -> S2NameInfo:
    """Level, processing baseline and DN offset of Sentinel-2 band files from their folder's and their own names
    (the folder's name first): the same answer whichever way the folder is read."""
    stems = list(file_stems)
    names = [folder_name, *stems]
    named = next((n for n in names if s2_baseline(n) is not None), None)
    level = next(("L1C" if "MSIL1C" in n else "L2A" for n in names if "MSIL1C" in n or "MSIL2A" in n), None)
    if level is None and (safe := [s for s in stems if S2_TILE_TIME.search(s)]):
        level = "L2A" if any(re.search(r"_\d\dm$", s) for s in safe) else "L1C"
    return S2NameInfo(
        level=level,
        baseline=s2_baseline(named) if named is not None else None,
        dn_offset=s2_dn_offset(named) if named is not None else 0.0,
    )


# --------------------------------------------------------------------------------------------------
# Sentinel-2 (SAFE)
# --------------------------------------------------------------------------------------------------

#: Band order of the ``band_id`` attributes in Sentinel-2 metadata (0 = B01 ... 8 = B8A ... 12 = B12).
S2_BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
#: A SAFE band file stem: ``T33NZA_20220706T085611_B02_10m`` (L2A) or ``T33NZA_20220706T085611_B8A`` (L1C).
S2_BAND_FILE = re.compile(r"(?:^|_)(?P<band>B(?:0[1-9]|1[0-2]|8A))(?:_(?P<res>10|20|60)m)?$")


@dataclass(frozen=True)
class S2Metadata:
    """What a Sentinel-2 product metadata file says.

    Attributes:
        path: The ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml`` read.
        level: ``"L1C"`` (top-of-atmosphere) or ``"L2A"`` (bottom-of-atmosphere).
        baseline: Processing baseline, e.g. ``"04.00"``.
        quantification: Reflectance quantification value (reflectance = (DN + offset) / value).
        offsets: Band name -> additive DN offset (``BOA_ADD_OFFSET`` / ``RADIO_ADD_OFFSET``); empty before
            baseline 04.00, where none is stored.
        image_files: Band name -> image file paths relative to the SAFE root (without extension), as listed.
        nodata: DN of the ``NODATA`` special value.
        spacecraft: ``Sentinel-2A`` ...
    """

    path: Path
    level: str
    baseline: str | None
    quantification: float
    offsets: dict[str, float] = field(default_factory=dict)
    image_files: dict[str, list[str]] = field(default_factory=dict)
    nodata: float | None = 0.0
    spacecraft: str | None = None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(root: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in root.iter() if _local(e.tag) == name]


def _number(path: Path, el: ET.Element) -> float:
    try:
        return float((el.text or "").strip())
    except ValueError:
        raise MetadataError(f"{path}: {_local(el.tag)} is not a number ({el.text!r})") from None


def parse_s2_metadata(path: str | Path) -> S2Metadata:
    """Parse ``MTD_MSIL1C.xml`` or ``MTD_MSIL2A.xml``: level, baseline, quantification and per-band offsets."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise MetadataError(f"{path}: not a readable Sentinel-2 metadata file ({e})") from None
    level_text = " ".join((e.text or "") for e in _find(root, "PROCESSING_LEVEL") + _find(root, "PRODUCT_TYPE"))
    if "2A" in level_text or "L2A" in path.name:
        level = "L2A"
    elif "1C" in level_text or "L1C" in path.name:
        level = "L1C"
    else:
        raise MetadataError(f"{path}: no PROCESSING_LEVEL / PRODUCT_TYPE saying Level-1C or Level-2A")
    baseline = next((e.text.strip() for e in _find(root, "PROCESSING_BASELINE") if e.text), None)
    qname = "BOA_QUANTIFICATION_VALUE" if level == "L2A" else "QUANTIFICATION_VALUE"
    qs = _find(root, qname)
    if not qs:
        raise MetadataError(f"{path}: no {qname}")
    quant = _number(path, qs[0])
    if quant <= 0:
        raise MetadataError(f"{path}: {qname} must be positive, got {quant:g}")
    # band_id -> physical band name from the spectral information, else the standard order
    names = dict(enumerate(S2_BAND_IDS))
    for si in _find(root, "Spectral_Information"):
        bid, phys = si.get("bandId"), si.get("physicalBand")
        if bid is not None and phys:
            names[int(bid)] = _s2_name(phys)
    offsets: dict[str, float] = {}
    for el in _find(root, "BOA_ADD_OFFSET" if level == "L2A" else "RADIO_ADD_OFFSET"):
        bid = el.get("band_id")
        if bid is None or int(bid) not in names:
            raise MetadataError(f"{path}: {_local(el.tag)} with unknown band_id {bid!r}")
        offsets[names[int(bid)]] = _number(path, el)
    files: dict[str, list[str]] = {}
    for el in _find(root, "IMAGE_FILE") + _find(root, "IMAGE_FILE_2A"):
        text = (el.text or "").strip()
        m = S2_BAND_FILE.search(Path(text).name)
        if m:
            files.setdefault(m.group("band"), []).append(text)
    nodata: float | None = 0.0
    for sv in _find(root, "Special_Values"):
        kids = {_local(c.tag): (c.text or "").strip() for c in sv}
        if kids.get("SPECIAL_VALUE_TEXT") == "NODATA" and kids.get("SPECIAL_VALUE_INDEX"):
            nodata = float(kids["SPECIAL_VALUE_INDEX"])
    craft = next((e.text.strip() for e in _find(root, "SPACECRAFT_NAME") if e.text), None)
    return S2Metadata(path, level, baseline, quant, offsets, files, nodata, craft)


def _s2_name(physical: str) -> str:
    """``B1`` -> ``B01``, ``B8A`` -> ``B8A`` (metadata spells bands without the leading zero)."""
    m = re.fullmatch(r"B(\d{1,2})(A?)", physical.strip())
    if not m:
        return physical.strip()
    return f"B{int(m.group(1)):02d}{m.group(2)}" if not m.group(2) else f"B{int(m.group(1))}{m.group(2)}"


# --------------------------------------------------------------------------------------------------
# Landsat Collection 2 (MTL)
# --------------------------------------------------------------------------------------------------

_MTL_LINE = re.compile(r"^\s*(?P<key>[A-Z0-9_]+)\s*=\s*(?P<value>.*?)\s*$")


def parse_mtl(path: str | Path) -> dict[str, Any]:
    """A Landsat ``*_MTL.txt`` (ODL ``GROUP = ... END_GROUP``) or ``*_MTL.json`` as nested dicts of strings.

    Both forms give ``{"LANDSAT_METADATA_FILE": {"PRODUCT_CONTENTS": {...}, ...}}``.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise MetadataError(f"{path}: cannot read the MTL file ({e})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise MetadataError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or "LANDSAT_METADATA_FILE" not in data:
            raise MetadataError(f"{path}: no LANDSAT_METADATA_FILE group")
        return data
    root: dict[str, Any] = {}
    stack = [root]
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.strip() == "END":
            continue
        m = _MTL_LINE.match(line)
        if not m:
            raise MetadataError(f"{path}: line {n} is not 'KEY = VALUE': {line.strip()!r}")
        key, value = m.group("key"), m.group("value").strip('"')
        if key == "GROUP":
            child: dict[str, Any] = {}
            stack[-1][value] = child
            stack.append(child)
        elif key == "END_GROUP":
            if len(stack) == 1:
                raise MetadataError(f"{path}: line {n}: END_GROUP without GROUP")
            stack.pop()
        else:
            stack[-1][key] = value
    if "LANDSAT_METADATA_FILE" not in root:
        raise MetadataError(f"{path}: no LANDSAT_METADATA_FILE group")
    return root


@dataclass(frozen=True)
class LandsatMetadata:
    """What an MTL file says about a Landsat Collection 2 product.

    Attributes:
        path: The MTL read.
        sensor: Catalogued sensor (``landsat8`` / ``landsat9``).
        level: ``"L1"`` or ``"L2"`` (from ``PROCESSING_LEVEL``: ``L1TP``, ``L2SP``...).
        files: Catalogued band name -> file name (``B4`` -> ``LC08_..._SR_B4.TIF``).
        calibration: Band name -> ``(mult, add, what)``: physical value = DN * mult + add; ``what`` names
            the MTL fields (``REFLECTANCE_MULT_BAND_4``...) and the unit.
        qa_pixel: File name of the ``QA_PIXEL`` band, if listed.
        fill: Fill DN of the bands (0 in Collection 2).
    """

    path: Path
    sensor: str
    level: str
    files: dict[str, str]
    calibration: dict[str, tuple[float, float, str]]
    qa_pixel: str | None = None
    fill: float = 0.0


def landsat_metadata(path: str | Path) -> LandsatMetadata:
    """Bands, files and per-band scale/offset of a Landsat Collection 2 product from its MTL."""
    path = Path(path)
    meta = parse_mtl(path)["LANDSAT_METADATA_FILE"]
    contents = meta.get("PRODUCT_CONTENTS", {})
    image = meta.get("IMAGE_ATTRIBUTES", {})
    craft = str(image.get("SPACECRAFT_ID", contents.get("SPACECRAFT_ID", ""))).upper()
    sensors = {"LANDSAT_8": "landsat8", "LANDSAT_9": "landsat9"}
    if craft not in sensors:
        raise MetadataError(f"{path}: SPACECRAFT_ID {craft or '(missing)'} is not Landsat 8 or 9")
    plevel = str(contents.get("PROCESSING_LEVEL", ""))
    if not plevel.startswith(("L1", "L2")):
        raise MetadataError(f"{path}: PROCESSING_LEVEL {plevel or '(missing)'} is neither Level-1 nor Level-2")
    level = plevel[:2]
    files: dict[str, str] = {}
    for key, value in contents.items():
        m = re.fullmatch(r"FILE_NAME_BAND_(ST_B)?(\d{1,2})", key)
        if m:
            files[f"B{int(m.group(2))}"] = str(value)
    if not files:
        raise MetadataError(f"{path}: PRODUCT_CONTENTS lists no FILE_NAME_BAND_n")
    cal: dict[str, tuple[float, float, str]] = {}

    def num(group: Mapping[str, Any], key: str) -> float:
        try:
            return float(group[key])
        except (KeyError, ValueError):
            raise MetadataError(f"{path}: {key} missing or not a number") from None

    # (MTL group, key prefix before the band number, what it calibrates to), first match per band wins
    rules = {
        "L2": [
            ("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", "REFLECTANCE", "_BAND_", "surface reflectance"),
            ("LEVEL2_SURFACE_TEMPERATURE_PARAMETERS", "TEMPERATURE", "_BAND_ST_B", "surface temperature, K"),
        ],
        "L1": [
            ("LEVEL1_RADIOMETRIC_RESCALING", "REFLECTANCE", "_BAND_", "TOA reflectance"),
            ("LEVEL1_RADIOMETRIC_RESCALING", "RADIANCE", "_BAND_", "TOA radiance, W/(m2 sr um)"),
        ],
    }[level]
    for b in files:
        n = b[1:]
        for group, kind, infix, what in rules:
            params = meta.get(group, {})
            if f"{kind}_MULT{infix}{n}" in params:
                mult, add = num(params, f"{kind}_MULT{infix}{n}"), num(params, f"{kind}_ADD{infix}{n}")
                cal[b] = (mult, add, f"{kind}_MULT/ADD{infix}{n} ({what})")
                break
    if missing := sorted(set(files) - set(cal), key=lambda b: int(b[1:])):
        raise MetadataError(f"{path}: no rescaling parameters for band(s) {missing}")
    qa = contents.get("FILE_NAME_QUALITY_L1_PIXEL")
    return LandsatMetadata(path, sensors[craft], level, files, cal, str(qa) if qa else None)


#: QA_PIXEL bits that make a pixel invalid: 0 fill, 1 dilated cloud, 3 cloud, 4 cloud shadow.
QA_INVALID_BITS = (0, 1, 3, 4)


# --------------------------------------------------------------------------------------------------
# STAC items
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StacBand:
    """One band of a STAC asset: where it is (``href`` as the item writes it: relative to the item's folder,
    absolute, or a URL) and what the item says about it."""

    asset: str
    href: str
    channel: int  # 0-based channel in the asset's file
    name: str
    wavelength_nm: float | None
    bandwidth_nm: float | None
    scale: float | None
    offset: float | None
    nodata: float | None


def _band_lists(asset: Any) -> tuple[list[dict], list[dict]]:
    """``(eo bands, raster bands)`` of an asset: STAC 1.0 ``eo:bands`` / ``raster:bands`` or STAC 1.1 ``bands``."""
    extra = dict(asset.extra_fields)
    eo = list(extra.get("eo:bands") or [])
    raster = list(extra.get("raster:bands") or [])
    if not eo and not raster and extra.get("bands"):  # STAC 1.1: one list, prefixed fields
        for b in extra["bands"]:
            eo.append(
                {
                    "name": b.get("name"),
                    "center_wavelength": b.get("eo:center_wavelength"),
                    "full_width_half_max": b.get("eo:full_width_half_max"),
                }
            )
            raster.append({"scale": b.get("raster:scale"), "offset": b.get("raster:offset"), "nodata": b.get("nodata")})
    return eo, raster


def stac_bands(item_path: str | Path | Mapping[str, Any]) -> tuple[Any, list[StacBand]]:
    """The pystac item and its data bands: one :class:`StacBand` per channel of each data asset, from an item
    file or an item in memory (a dict: one feature of an ItemCollection).

    Wavelength and width come from ``eo:bands`` (micrometres, converted to nm); scale, offset and nodata
    from ``raster:bands`` (physical value = DN * scale + offset).
    """
    import pystac

    if isinstance(item_path, Mapping):
        name = item_path.get("id", "?")
        if item_path.get("type") != "Feature":
            raise MetadataError(
                f"STAC item {name!r}: not a STAC item (type is {item_path.get('type')!r}, not 'Feature')"
            )
        try:
            item = pystac.Item.from_dict(dict(item_path), preserve_dict=True)
        except Exception as e:  # pystac raises many kinds for a bad dict
            raise MetadataError(f"STAC item {name!r}: not a readable STAC item ({' '.join(str(e).split())})") from None
        item_path = Path(f"STAC item {item.id}")
    else:
        item_path = Path(item_path)
        try:
            item = pystac.Item.from_file(str(item_path))
        except Exception as e:  # pystac raises many kinds for a bad file
            raise MetadataError(f"{item_path}: not a readable STAC item ({e})") from None
    bands: list[StacBand] = []
    for key, asset in item.assets.items():
        roles = asset.roles or []
        if roles and "data" not in roles:
            continue
        href = asset.href  # as written: the reader resolves it against the item's folder, and confines it
        if not str(href).lower().endswith((".tif", ".tiff", ".jp2")):
            continue
        eo, raster = _band_lists(asset)
        count = max(len(eo), len(raster), 1)
        for c in range(count):
            eb = eo[c] if c < len(eo) else {}
            r = raster[c] if c < len(raster) else {}
            um, fw = eb.get("center_wavelength"), eb.get("full_width_half_max")
            bands.append(
                StacBand(
                    asset=key,
                    href=str(href),
                    channel=c,
                    name=str(eb.get("name") or (key if count == 1 else f"{key}_{c + 1}")),
                    wavelength_nm=None if um is None else float(um) * 1000.0,
                    bandwidth_nm=None if fw is None else float(fw) * 1000.0,
                    scale=None if r.get("scale") is None else float(r["scale"]),
                    offset=None if r.get("offset") is None else float(r["offset"]),
                    nodata=None if r.get("nodata") is None else float(r["nodata"]),
                )
            )
    if not bands:
        raise MetadataError(f"{item_path}: the STAC item has no data asset pointing at a GeoTIFF/JPEG2000")
    return item, bands


#: STAC ``platform`` / ``constellation`` values -> catalogued sensor.
STAC_PLATFORMS = {
    "sentinel-2a": "sentinel2",
    "sentinel-2b": "sentinel2",
    "sentinel-2c": "sentinel2",
    "sentinel-2": "sentinel2",
    "landsat-8": "landsat8",
    "landsat-9": "landsat9",
    "sentinel-1a": "sentinel1",
    "sentinel-1b": "sentinel1",
    "sentinel-1": "sentinel1",
    "terra": "modis",
    "aqua": "modis",
    "enmap": "enmap",
}


def stac_sensor(item: Any) -> str | None:
    """The catalogued sensor an item's ``platform`` or ``constellation`` names, if any."""
    for key in ("platform", "constellation"):
        value = str(item.properties.get(key, "")).lower()
        if value in STAC_PLATFORMS:
            return STAC_PLATFORMS[value]
    return None
