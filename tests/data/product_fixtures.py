"""Builders of real-pixel product fixtures: a Sentinel-2 SAFE tree, a Landsat Collection 2 folder, a STAC item.

What is real and what is written, for every fixture:

* **Pixels are real**: crops of the Major-TOM Sentinel-2 L2A product of cell 0U_199R (T33NZA, 2022-07-06,
  processing baseline N0400) shipped under ``data/embedded/majortom``, copied DN for DN (the SAFE bands
  re-encoded losslessly as JPEG2000, checked by the tests to round-trip exactly).
* **Metadata is written by us**: the ``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml`` (in the schema of processing
  baseline 04.00, with that product's quantification value and offsets), the Landsat MTL files, the STAC
  item. The Landsat fixture's DN are the real Sentinel-2 reflectances re-expressed in the Collection 2
  Level-2 scaling (DN = (reflectance + 0.2) / 2.75e-5); its ST_B10 DN are derived from the real B11 band,
  and its QA_PIXEL cloud block and fill stripe are written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

SAFE_NAME = "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419.SAFE"
TILE_STEM = "T33NZA_20220706T085611"
S2_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
NATIVE = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B11": 20, "B12": 20,
}  # fmt: skip
CROP_M = 600  # ground extent of the crops (m): 60 px at 10 m, 30 at 20 m, 10 at 60 m


def crop(product: Path, band: str, extent_m: int = CROP_M) -> tuple[np.ndarray, dict]:
    """The top-left ``extent_m`` crop of a Major-TOM band and its georeferencing profile."""
    with rasterio.open(product / f"{band}.tif") as src:
        g = abs(src.transform.a)
        n = int(extent_m // g)
        data = src.read(1, window=((0, n), (0, n)))
        profile = {"crs": src.crs, "transform": src.transform, "dtype": src.dtypes[0]}
    return data, profile


def write_raster(path: Path, data: np.ndarray, profile: dict, driver: str = "GTiff", **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = {"QUALITY": "100", "REVERSIBLE": "YES"} if driver == "JP2OpenJPEG" else {}
    with rasterio.open(
        path,
        "w",
        driver=driver,
        height=data.shape[0],
        width=data.shape[1],
        count=1,
        dtype=data.dtype,
        crs=profile["crs"],
        transform=profile["transform"],
        **opts,
        **extra,
    ) as dst:
        dst.write(data, 1)
    return path


def _mtd_xml(level: str, files: list[str], offset: int = -1000, quant: int = 10000) -> str:
    """An MTD_MSIL1C/2A.xml in the baseline-04.00 schema (the elements the reader uses)."""
    ns = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-" + ("2A" if level == "L2A" else "1C") + ".xsd"
    root = "Level-2A_User_Product" if level == "L2A" else "Level-1C_User_Product"
    qv = (
        f'<BOA_QUANTIFICATION_VALUE unit="none">{quant}</BOA_QUANTIFICATION_VALUE>'
        if level == "L2A"
        else f'<QUANTIFICATION_VALUE unit="none">{quant}</QUANTIFICATION_VALUE>'
    )
    tag = "BOA_ADD_OFFSET" if level == "L2A" else "RADIO_ADD_OFFSET"
    offs = "".join(f'<{tag} band_id="{i}">{offset}</{tag}>' for i in range(13))
    offs = (
        f"<BOA_ADD_OFFSET_VALUES_LIST>{offs}</BOA_ADD_OFFSET_VALUES_LIST>"
        if level == "L2A"
        else (f"<Radiometric_Offset_List>{offs}</Radiometric_Offset_List>")
    )
    spectral = "".join(
        f'<Spectral_Information bandId="{i}" physicalBand="{b.replace("B0", "B")}"/>' for i, b in enumerate(S2_IDS)
    )
    images = "".join(f"<IMAGE_FILE>{f}</IMAGE_FILE>" for f in files)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:{root} xmlns:n1="{ns}">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_TYPE>S2MSI{"2A" if level == "L2A" else "1C"}</PRODUCT_TYPE>
      <PROCESSING_LEVEL>Level-{"2A" if level == "L2A" else "1C"}</PROCESSING_LEVEL>
      <PROCESSING_BASELINE>04.00</PROCESSING_BASELINE>
      <Datatake datatakeIdentifier="GS2A_20220706T085611_036000_N04.00"><SPACECRAFT_NAME>Sentinel-2A</SPACECRAFT_NAME></Datatake>
      <Product_Organisation><Granule_List><Granule>{images}</Granule></Granule_List></Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>
      <Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>
      <QUANTIFICATION_VALUES_LIST>{qv}</QUANTIFICATION_VALUES_LIST>
      {offs}
      <Spectral_Information_List>{spectral}</Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:{root}>
"""


def build_safe(product: Path, out: Path, level: str = "L2A", driver: str = "JP2OpenJPEG", mtd: bool = True) -> Path:
    """A SAFE tree of real Major-TOM pixels. L2A: ``IMG_DATA/R10m|R20m|R60m`` with the 10 m bands also
    stored, 2x2-averaged, in R20m (as ESA's L2A does), so a reader must pick the native copy. L1C: flat
    ``IMG_DATA``. Returns the ``.SAFE`` folder."""
    ext = ".jp2" if driver == "JP2OpenJPEG" else ".tif"
    name = SAFE_NAME if level == "L2A" else SAFE_NAME.replace("MSIL2A", "MSIL1C")
    safe = out / name
    granule = safe / "GRANULE" / f"{level}_T33NZA_A036000_20220706T090847" / "IMG_DATA"
    listed = []
    for band, gsd in NATIVE.items():
        data, prof = crop(product, band)
        if level == "L2A":
            rel = f"R{gsd}m/{TILE_STEM}_{band}_{gsd}m"
        else:
            rel = f"{TILE_STEM}_{band}"
        write_raster(granule / (rel + ext), data, prof, driver)
        listed.append(f"GRANULE/{granule.parent.name}/IMG_DATA/{rel}")
        if level == "L2A" and gsd == 10:  # the resampled 20 m copy that L2A products carry
            coarse = data.reshape(data.shape[0] // 2, 2, data.shape[1] // 2, 2).mean((1, 3)).astype(data.dtype)
            t = prof["transform"]
            p20 = {**prof, "transform": Affine(t.a * 2, t.b, t.c, t.d, t.e * 2, t.f)}
            write_raster(granule / f"R20m/{TILE_STEM}_{band}_20m{ext}", coarse, p20, driver)
    if mtd:
        (safe / f"MTD_MSI{'L2A' if level == 'L2A' else 'L1C'}.xml").write_text(_mtd_xml(level, listed))
    return safe


def build_safe_named_folder(product: Path, out: Path, driver: str = "GTiff") -> Path:
    """A flat folder of SAFE-named band files (``T33NZA_..._B02_10m.tif``, ``..._B8A_20m.tif``), no metadata."""
    folder = out / "safe_named"
    ext = ".jp2" if driver == "JP2OpenJPEG" else ".tif"
    for band, gsd in NATIVE.items():
        data, prof = crop(product, band)
        write_raster(folder / f"{TILE_STEM}_{band}_{gsd}m{ext}", data, prof, driver)
    return folder


LANDSAT_ID = "LC08_L2SP_190057_20220706_20220721_02_T1"
#: Landsat band -> the Sentinel-2 band whose real reflectance it carries.
LANDSAT_FROM_S2 = {"B1": "B01", "B2": "B02", "B3": "B03", "B4": "B04", "B5": "B8A", "B6": "B11", "B7": "B12"}
SR_MULT, SR_ADD = 2.75e-05, -0.2
ST_MULT, ST_ADD = 0.00341802, 149.0


def _landsat_grid(product: Path, s2band: str, n: int = 20) -> tuple[np.ndarray, dict]:
    """A real S2 band's reflectance on a 30 m grid, ``n`` px square: 10 m bands as 3x3 block means; 20 m and
    60 m bands as 60 m block means, each split into 2x2 pixels of 30 m."""
    data, prof = crop(product, s2band, extent_m=n * 30 if NATIVE[s2band] != 60 else 1200)
    g = abs(prof["transform"].a)
    refl = (data.astype(np.float64) - 1000.0) / 10000.0  # baseline N0400: offset -1000
    if g == 10:
        refl = refl[: n * 3, : n * 3].reshape(n, 3, n, 3).mean((1, 3))
    elif g == 20:
        r60 = refl[: n * 3 // 2, : n * 3 // 2].reshape(n // 2, 3, n // 2, 3).mean((1, 3))
        refl = np.repeat(np.repeat(r60, 2, 0), 2, 1)
    else:
        r60 = refl[: n // 2, : n // 2]
        refl = np.repeat(np.repeat(r60, 2, 0), 2, 1)
    t = prof["transform"]
    return refl, {**prof, "transform": Affine(30.0, 0.0, t.c, 0.0, -30.0, t.f)}


def build_landsat(product: Path, out: Path, level: str = "L2", fmt: str = "txt", n: int = 20) -> Path:
    """A Landsat 8 Collection 2 folder (Level-2 SR_B1..7 + ST_B10 + QA_PIXEL, or Level-1 B1..7, B10) with MTL."""
    pid = LANDSAT_ID if level == "L2" else LANDSAT_ID.replace("L2SP", "L1TP")
    folder = out / pid
    folder.mkdir(parents=True, exist_ok=True)
    contents: dict[str, str] = {}
    prof = None
    for lb, sb in LANDSAT_FROM_S2.items():
        refl, prof = _landsat_grid(product, sb, n)
        if level == "L2":
            dn = np.clip(np.round((refl - SR_ADD) / SR_MULT), 1, 65535).astype(np.uint16)
            fname = f"{pid}_SR_{lb}.TIF"
        else:
            dn = np.clip(np.round((refl + 0.1) / 2.0e-05), 1, 65535).astype(np.uint16)
            fname = f"{pid}_{lb}.TIF"
        dn[0, :] = 0  # a fill row (written)
        write_raster(folder / fname, dn, prof)
        contents[f"FILE_NAME_BAND_{lb[1:]}"] = fname
    b11, prof = _landsat_grid(product, "B11", n)
    if level == "L2":
        kelvin = 290.0 + 40.0 * b11  # derived from the real SWIR band (written transform)
        st = np.clip(np.round((kelvin - ST_ADD) / ST_MULT), 1, 65535).astype(np.uint16)
        st[0, :] = 0
        write_raster(folder / f"{pid}_ST_B10.TIF", st, prof)
        contents["FILE_NAME_BAND_ST_B10"] = f"{pid}_ST_B10.TIF"
        qa = np.full((n, n), 21824, np.uint16)  # clear-land value of Collection 2
        qa[0, :] = 1  # fill
        qa[5:9, 5:9] = 22280  # cloud (bit 3) + dilated cloud (bit 1)
        write_raster(folder / f"{pid}_QA_PIXEL.TIF", qa, prof)
        contents["FILE_NAME_QUALITY_L1_PIXEL"] = f"{pid}_QA_PIXEL.TIF"
    else:
        rad = np.clip(np.round((8.0 + 2.0 * b11 - 0.1) / 3.342e-04), 1, 65535).astype(np.uint16)
        write_raster(folder / f"{pid}_B10.TIF", rad, prof)
        contents["FILE_NAME_BAND_10"] = f"{pid}_B10.TIF"
    contents["PROCESSING_LEVEL"] = "L2SP" if level == "L2" else "L1TP"
    groups: dict[str, dict[str, str]] = {
        "PRODUCT_CONTENTS": {"LANDSAT_PRODUCT_ID": pid, **contents},
        "IMAGE_ATTRIBUTES": {"SPACECRAFT_ID": "LANDSAT_8", "SENSOR_ID": "OLI_TIRS"},
    }
    if level == "L2":
        groups["LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"] = {
            **{f"REFLECTANCE_MULT_BAND_{i}": "2.75E-05" for i in range(1, 8)},
            **{f"REFLECTANCE_ADD_BAND_{i}": "-0.200000" for i in range(1, 8)},
        }
        groups["LEVEL2_SURFACE_TEMPERATURE_PARAMETERS"] = {
            "TEMPERATURE_MULT_BAND_ST_B10": "0.00341802",
            "TEMPERATURE_ADD_BAND_ST_B10": "149.000000",
        }
    else:
        groups["LEVEL1_RADIOMETRIC_RESCALING"] = {
            **{f"REFLECTANCE_MULT_BAND_{i}": "2.0000E-05" for i in range(1, 8)},
            **{f"REFLECTANCE_ADD_BAND_{i}": "-0.100000" for i in range(1, 8)},
            "RADIANCE_MULT_BAND_10": "3.3420E-04",
            "RADIANCE_ADD_BAND_10": "0.10000",
        }
    if fmt == "json":
        doc = {"LANDSAT_METADATA_FILE": groups}
        (folder / f"{pid}_MTL.json").write_text(json.dumps(doc, indent=2))
    else:
        lines = ["GROUP = LANDSAT_METADATA_FILE"]
        for g, kv in groups.items():
            lines.append(f"  GROUP = {g}")
            lines += [
                f'    {k} = "{v}"' if not v[0].isdigit() and v[0] != "-" else f"    {k} = {v}" for k, v in kv.items()
            ]
            lines.append(f"  END_GROUP = {g}")
        lines += ["END_GROUP = LANDSAT_METADATA_FILE", "END"]
        (folder / f"{pid}_MTL.txt").write_text("\n".join(lines) + "\n")
    return folder


#: eo:bands of the STAC fixture (micrometres), the Sentinel-2A band-average values of the catalogue.
def build_stac(
    product: Path, out: Path, eo: bool = True, bands: tuple[str, ...] = ("B02", "B03", "B04", "B08", "B11")
) -> Path:
    """A STAC item (``item.json``) over crops of the real Major-TOM bands, as local GeoTIFF assets."""
    from atomizer.data.bands import get_sensor

    s2 = get_sensor("sentinel2")
    folder = out / "stac"
    assets = {}
    for b in bands:
        data, prof = crop(product, b)
        write_raster(folder / f"{b}.tif", data, prof)
        band = s2.band(b)
        asset = {"href": f"./{b}.tif", "type": "image/tiff; application=geotiff", "roles": ["data"]}
        if eo:
            asset["eo:bands"] = [
                {
                    "name": b,
                    "center_wavelength": band.wavelength_nm / 1000.0,
                    "full_width_half_max": band.bandwidth_nm / 1000.0,
                }
            ]
        asset["raster:bands"] = [{"scale": 0.0001, "offset": -0.1, "nodata": 0, "data_type": "uint16"}]
        assets[b] = asset
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ],
        "id": "S2A_33NZA_20220706_0_L2A_crop",
        "geometry": None,
        "properties": {"datetime": "2022-07-06T08:56:11Z", "platform": "sentinel-2a", "constellation": "sentinel-2"},
        "links": [],
        "assets": assets,
    }
    (folder / "item.json").write_text(json.dumps(item, indent=2))
    return folder / "item.json"
