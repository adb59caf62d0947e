"""Readers of products as delivered: Sentinel-2 SAFE (L1C, L2A), SAFE-named band folders, Landsat Collection 2
(Level-1, Level-2, MTL as text and JSON), STAC items.

Pixels are real (crops of the Major-TOM L2A product, see :mod:`tests.data.product_fixtures`); the metadata
around them (MTD XML, MTL, STAC item) is written by the fixtures, in the products' own schemas.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from atomizer.data.bands import SensorSpecError
from atomizer.data.image import ImageReadError, count_tokens, physical_values
from atomizer.data.metadata import MetadataError, parse_mtl, parse_s2_metadata
from atomizer.data.products import product_kind, read_landsat, read_safe, read_stac_item
from atomizer.data.readers import open_image
from tests.data import product_fixtures as fx


@pytest.fixture(scope="module")
def safe_l2a(tmp_path_factory, majortom_product_dir) -> Path:
    return fx.build_safe(majortom_product_dir, tmp_path_factory.mktemp("safe"))


def test_safe_l2a_bands_native_grids_and_calibration(safe_l2a, majortom_product_dir):
    ds = open_image(safe_l2a)
    assert product_kind(safe_l2a) == "safe"
    assert ds.attrs["product_level"] == "L2A" and ds.attrs["processing_baseline"] == "04.00"
    assert sorted(ds.data_vars) == sorted(fx.NATIVE)
    for band, gsd in fx.NATIVE.items():  # every band at its native resolution only (not the R20m copy)
        assert ds[band].attrs["gsd_m"] == gsd
        assert ds[band].shape == (fx.CROP_M // gsd,) * 2
    # lossless JPEG2000: DN equal to the source GeoTIFF's
    ref, _ = fx.crop(majortom_product_dir, "B8A")
    np.testing.assert_array_equal(ds["B8A"].values, ref)
    b08, _ = fx.crop(majortom_product_dir, "B08")
    np.testing.assert_array_equal(ds["B08"].values, b08)  # B08 is B08, never B8A
    # a reflectance checked by hand: (DN + BOA_ADD_OFFSET) / BOA_QUANTIFICATION_VALUE, offset applied once
    dn = int(ds["B04"].values[7, 11])
    refl, ok = physical_values(ds["B04"])
    assert ok[7, 11]
    assert refl[7, 11] == pytest.approx((dn - 1000) / 10000, abs=1e-6)
    assert "MTD_MSIL2A.xml" in ds["B04"].attrs["calibration_source"]
    assert ds.attrs["crs"] and "32633" in rasterio.crs.CRS.from_wkt(ds.attrs["crs"]).to_string()


def test_safe_l1c_reads_radio_offset(tmp_path, majortom_product_dir):
    safe = fx.build_safe(majortom_product_dir, tmp_path, level="L1C", driver="GTiff")
    ds = read_safe(safe)
    assert ds.attrs["product_level"] == "L1C" and ds.attrs["radiometry"] == "TOA reflectance"
    meta = parse_s2_metadata(safe / "MTD_MSIL1C.xml")
    assert meta.offsets["B8A"] == -1000 and meta.quantification == 10000
    assert ds["B12"].attrs["dn_offset"] == -1000 and ds["B12"].attrs["dn_scale"] == pytest.approx(1e-4)


def test_safe_named_folder_without_metadata(tmp_path, majortom_product_dir):
    folder = fx.build_safe_named_folder(majortom_product_dir, tmp_path)
    assert product_kind(folder) == "safe_named"
    ds = open_image(folder)
    assert ds["B8A"].attrs["gsd_m"] == 20 and ds["B08"].attrs["gsd_m"] == 10
    # no MTD: the offset comes from the baseline in the file names (T33NZA_20220706...: the product is N0400,
    # but the band files carry no baseline, so it is 0 and said so)
    assert ds["B02"].attrs["calibration_source"].startswith("assumed: no MTD")


def test_safe_metadata_naming_missing_band_is_refused(tmp_path, majortom_product_dir):
    safe = fx.build_safe(majortom_product_dir, tmp_path, driver="GTiff")
    next(safe.rglob("*_B05_20m.tif")).unlink()
    with pytest.raises(ImageReadError, match=r"lists band\(s\) \['B05'\]"):
        read_safe(safe)


def test_bands_in_different_crs_are_refused(tmp_path, majortom_product_dir):
    folder = fx.build_safe_named_folder(majortom_product_dir, tmp_path)
    f = next(folder.glob("*_B03_10m.tif"))
    with rasterio.open(f) as src:
        data, prof = src.read(1), {"crs": rasterio.crs.CRS.from_epsg(32634), "transform": src.transform}
    fx.write_raster(f, data, prof)
    with pytest.raises(ImageReadError, match="different CRS"):
        open_image(folder)


@pytest.mark.parametrize("fmt", ["txt", "json"])
def test_landsat_l2_per_band_calibration_and_qa(tmp_path, majortom_product_dir, fmt):
    folder = fx.build_landsat(majortom_product_dir, tmp_path, fmt=fmt)
    assert product_kind(folder) == "landsat"
    ds = open_image(folder)
    assert ds.attrs["sensor"] == "landsat8" and ds.attrs["product_level"] == "L2"
    assert sorted(ds.data_vars) == ["B1", "B10", "B2", "B3", "B4", "B5", "B6", "B7"]
    assert ds["B4"].attrs["gsd_m"] == 30 and ds["B10"].attrs["gsd_m"] == 30
    # a reflectance by hand: DN * REFLECTANCE_MULT_BAND_4 + REFLECTANCE_ADD_BAND_4
    with rasterio.open(next(folder.glob("*_SR_B4.TIF"))) as src:
        dn = int(src.read(1)[3, 2])
    refl, ok = physical_values(ds["B4"])
    assert refl[3, 2] == pytest.approx(dn * 2.75e-05 - 0.2, abs=1e-6)
    # the thermal band has its own scaling (kelvin)
    with rasterio.open(next(folder.glob("*_ST_B10.TIF"))) as src:
        st = int(src.read(1)[3, 2])
    kelvin, _ = physical_values(ds["B10"])
    assert kelvin[3, 2] == pytest.approx(st * 0.00341802 + 149.0, abs=1e-3)
    assert 250 < kelvin[3, 2] < 340
    assert "TEMPERATURE_MULT/ADD_BAND_ST_B10" in ds["B10"].attrs["calibration_source"]
    # fill row and the QA cloud block are invalid; the rest is valid
    assert not ok[0].any() and not ok[5:9, 5:9].any() and ok[3, 2]
    assert ds.attrs["qa_masked_pixels"] == 20 + 16


def test_landsat_l1_reflectance_and_radiance(tmp_path, majortom_product_dir):
    folder = fx.build_landsat(majortom_product_dir, tmp_path, level="L1")
    ds = read_landsat(folder)
    assert ds.attrs["product_level"] == "L1"
    with rasterio.open(next(folder.glob("*_B2.TIF"))) as src:
        dn = int(src.read(1)[4, 4])
    v, _ = physical_values(ds["B2"])
    assert v[4, 4] == pytest.approx(dn * 2.0e-05 - 0.1, abs=1e-6)
    assert "RADIANCE" in ds["B10"].attrs["calibration_source"]


def test_landsat_mtl_naming_absent_file_or_missing_scaling(tmp_path, majortom_product_dir):
    folder = fx.build_landsat(majortom_product_dir, tmp_path)
    next(folder.glob("*_SR_B6.TIF")).unlink()
    with pytest.raises(ImageReadError, match="SR_B6.TIF for band B6"):
        read_landsat(folder)
    mtl = next(folder.glob("*_MTL.txt"))
    text = mtl.read_text().replace("REFLECTANCE_MULT_BAND_3", "X_MULT_BAND_3")
    (tmp_path / "bad_MTL.txt").write_text(text)
    from atomizer.data.metadata import landsat_metadata

    with pytest.raises(MetadataError, match="B3"):
        landsat_metadata(tmp_path / "bad_MTL.txt")
    assert parse_mtl(mtl)["LANDSAT_METADATA_FILE"]["IMAGE_ATTRIBUTES"]["SPACECRAFT_ID"] == "LANDSAT_8"


def test_stac_item_needs_no_sidecar(tmp_path, majortom_product_dir):
    item = fx.build_stac(majortom_product_dir, tmp_path)
    assert product_kind(item) == "stac"
    ds = open_image(item)
    assert list(ds.data_vars) == ["B02", "B03", "B04", "B08", "B11"]
    assert ds["B03"].attrs["wavelength_nm"] == pytest.approx(fx.NATIVE and 559.8, abs=0.5)
    assert ds["B11"].attrs["gsd_m"] == 20
    dn = int(ds["B03"].values[2, 9])
    v, _ = physical_values(ds["B03"])
    assert v[2, 9] == pytest.approx(dn * 0.0001 - 0.1, abs=1e-6)  # raster:bands scale and offset
    assert ds["B03"].attrs["calibration_source"] == "STAC raster:bands"
    assert count_tokens(ds) == 4 * 60 * 60 + 30 * 30


def test_stac_item_without_eo_bands_falls_back_to_platform(tmp_path, majortom_product_dir):
    item = fx.build_stac(majortom_product_dir, tmp_path, eo=False, bands=("B04", "B8A"))
    ds = read_stac_item(item)
    assert ds["B8A"].attrs["wavelength_nm"] == pytest.approx(864.7, abs=1.0)
    doc = json.loads(item.read_text())
    doc["properties"]["platform"] = "unknown-sat"
    doc["properties"].pop("constellation")
    item.write_text(json.dumps(doc))
    with pytest.raises(MetadataError, match="no catalogued sensor"):
        read_stac_item(item)


def test_stac_item_in_memory_reads_as_its_file_and_keeps_the_confinement(tmp_path, majortom_product_dir):
    """One feature of an ItemCollection, given as a dict with the file its hrefs are relative to, reads as the
    item file does; a href leaving that folder or pointing at a URL is refused as for a file."""
    item = fx.build_stac(majortom_product_dir, tmp_path)
    doc = json.loads(item.read_text())
    collection = item.parent / "items.json"  # hrefs are relative to its folder
    from_file, from_dict = read_stac_item(item), read_stac_item(collection, item=doc)
    assert list(from_dict.data_vars) == list(from_file.data_vars)
    for b in from_file.data_vars:
        np.testing.assert_array_equal(from_dict[b].values, from_file[b].values)
        assert from_dict[b].attrs == from_file[b].attrs
    assert from_dict.attrs["stac_item"] == doc["id"] and from_dict.attrs["source"].endswith(f"items.json#{doc['id']}")
    assert list(read_stac_item(item.parent, item=doc).data_vars) == list(from_file.data_vars)  # or the folder
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(item.parent / "B04.tif", outside / "B04.tif")
    doc["assets"]["B04"]["href"] = "../outside/B04.tif"
    with pytest.raises(ImageReadError, match=r"asset 'B04' points at \.\./outside/B04\.tif, outside the item's folder"):
        read_stac_item(collection, item=doc)
    assert read_stac_item(collection, item=doc, allow_outside=True)["B04"].shape == (60, 60)
    doc["assets"]["B04"]["href"] = "http://127.0.0.1:9/B04.tif"
    with pytest.raises(ImageReadError, match="asset 'B04' points at a URL"):
        read_stac_item(collection, item=doc)
    with pytest.raises(MetadataError, match="not a STAC item"):
        read_stac_item(collection, item={"type": "FeatureCollection", "features": []})


def test_a_product_read_with_a_sensor_flag_is_the_same_product(tmp_path, majortom_product_dir, safe_l2a):
    """``sensor`` describes the bands of a SAFE or a Landsat product; it never changes how they are found, and
    a catalogued sensor that is not the product's is refused in one line."""
    a, b = open_image(safe_l2a), open_image(safe_l2a, sensor="sentinel2")
    assert list(a.data_vars) == list(b.data_vars) and a.attrs == b.attrs
    for band in a.data_vars:
        assert a[band].attrs == b[band].attrs
        np.testing.assert_array_equal(a[band].values, b[band].values)
    with pytest.raises(SensorSpecError, match="a Sentinel-2 product; sensor 'landsat8' does not describe"):
        open_image(safe_l2a, sensor="landsat8")
    landsat = fx.build_landsat(majortom_product_dir, tmp_path)
    assert open_image(landsat, sensor="landsat8")["B4"].attrs == open_image(landsat)["B4"].attrs
    with pytest.raises(SensorSpecError, match="says landsat8; sensor 'landsat9' does not describe it"):
        open_image(landsat, sensor="landsat9")


def test_cli_inspect_prints_calibration_and_source(tmp_path, majortom_product_dir, capsys):
    from atomizer.cli import main

    folder = fx.build_landsat(majortom_product_dir, tmp_path)
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "TEMPERATURE_MULT/ADD_BAND_ST_B10" in out and "dn_scale" in out
    assert f"total atom tokens: {8 * 20 * 20:,}" in out
    shutil.rmtree(folder)
    assert main(["inspect", str(folder)]) == 2


@pytest.mark.parametrize("kind", ["safe", "landsat", "stac"])
def test_lazy_reads_give_the_same_image_block_by_block(tmp_path, majortom_product_dir, safe_l2a, kind):
    """``open_image(..., lazy=True)`` (what ``atomizer map`` uses): every band a dask array until sliced, with
    the same values, grids and calibration as the eager read, for each product kind."""
    path = {
        "safe": lambda: safe_l2a,
        "landsat": lambda: fx.build_landsat(majortom_product_dir, tmp_path, fmt="txt"),
        "stac": lambda: fx.build_stac(majortom_product_dir, tmp_path),
    }[kind]()
    eager, lazy = open_image(path), open_image(path, lazy=True)
    assert list(lazy.data_vars) == list(eager.data_vars)
    for b in eager.data_vars:
        assert hasattr(lazy[b].data, "dask"), b  # Landsat: the QA_PIXEL mask applied lazily too
        assert lazy[b].attrs == eager[b].attrs
        assert lazy[b].dims == eager[b].dims
        np.testing.assert_array_equal(lazy[b].isel({lazy[b].dims[0]: slice(3, 9)}).values, eager[b].values[3:9])
        np.testing.assert_array_equal(lazy[b].values, eager[b].values)
    assert lazy.attrs == eager.attrs  # Landsat: the same count of QA-masked pixels
    assert not hasattr(open_image(path)[next(iter(eager.data_vars))].data, "dask")  # eager again afterwards
