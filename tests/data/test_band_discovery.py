"""One band-discovery rule for every folder, and band names read from the file (issue 25).

Pixels are real: crops of the Major-TOM Sentinel-2 L2A bands shipped under ``data/embedded/majortom`` (the
600 m top-left window of cell 0U_199R, georeferencing kept, see :mod:`tests.data.product_fixtures`), copied DN
for DN into folders named every way a user's folder may be named, as GeoTIFF and as JPEG 2000 (re-encoded
losslessly, checked pixel for pixel); and real EuroSAT-MS tiles. What the tests write is the file names, the
band descriptions of the 12-band export, and the Landsat folder's MTL removal.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

from atomizer.data.bands import SensorSpecError
from atomizer.data.discovery import find_band_files
from atomizer.data.image import ImageReadError, count_tokens, describe, image_bands, physical_values
from atomizer.data.layouts import EUROSAT_BAND_ORDER, read_band_folder, read_eurosat
from atomizer.data.products import product_kind, read_safe
from atomizer.data.readers import open_image
from tests.data import product_fixtures as fx

#: The folder name of the product the crops come from: its processing baseline (N0400) sets the DN offset.
PRODUCT = fx.SAFE_NAME.removesuffix(".SAFE")
#: Atoms of the 12 cropped bands: four 10 m bands of 60x60 px, six 20 m of 30x30, two 60 m of 10x10.
ATOMS = 4 * 60 * 60 + 6 * 30 * 30 + 2 * 10 * 10
#: How a user's folder may name its band files (``{b}`` the band, ``{g}`` its native GSD in metres).
NAMINGS = {
    "plain": "{b}",
    "prefixed": "scene_{b}",
    "resolution": "{b}_{g}m",
    "safe_l1c": "T33NZA_20220706T085611_{b}",
    "safe_l2a": "T33NZA_20220706T085611_{b}_{g}m",
}
SUFFIXES = {".tif": "GTiff", ".TIFF": "GTiff", ".jp2": "JP2OpenJPEG"}
L2A_EXPORT = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


@pytest.fixture(scope="module")
def crops(majortom_product_dir) -> dict[str, tuple[np.ndarray, dict]]:
    return {b: fx.crop(majortom_product_dir, b) for b in fx.NATIVE}


def _folder(root: Path, naming: str, suffix: str, crops, name: str = PRODUCT) -> Path:
    folder = root / f"{naming}{suffix.replace('.', '_')}" / name
    for b, g in fx.NATIVE.items():
        data, prof = crops[b]
        fx.write_raster(folder / (NAMINGS[naming].format(b=b, g=g) + suffix), data, prof, SUFFIXES[suffix])
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory, crops) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("named")
    return {(n, s): _folder(root, n, s, crops) for n in NAMINGS for s in SUFFIXES}


def _same_image(a, b) -> None:
    """The same atoms: bands, grids, coordinates, DN and calibration (the source path aside)."""
    assert image_bands(a) == image_bands(b)
    assert describe(a).equals(describe(b))
    for band in image_bands(a):
        assert a[band].dims == b[band].dims, band
        assert a[band].attrs == b[band].attrs, band
        np.testing.assert_array_equal(a[band].values, b[band].values, err_msg=band)
        for dim in a[band].dims:
            np.testing.assert_array_equal(a[dim].values, b[dim].values)
    assert {k: v for k, v in a.attrs.items() if k != "source"} == {k: v for k, v in b.attrs.items() if k != "source"}


def test_jpeg2000_copies_are_lossless(folders, crops):
    for band in ("B02", "B8A", "B01"):
        f = next(folders[("plain", ".jp2")].glob(f"{band}.jp2"))
        with rasterio.open(f) as src:
            assert src.driver == "JP2OpenJPEG"
            np.testing.assert_array_equal(src.read(1), crops[band][0])
            assert src.transform == crops[band][1]["transform"]


@pytest.mark.parametrize("naming", NAMINGS)
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_every_naming_and_extension_gives_the_same_atoms_with_and_without_sensor(folders, crops, naming, suffix):
    reference = open_image(folders[("plain", ".tif")])
    for sensor in (None, "sentinel2"):
        ds = open_image(folders[(naming, suffix)], sensor=sensor)
        _same_image(ds, reference)
    # the atoms are the real pixels, with the offset of the product's processing baseline (N0400: -1000)
    assert count_tokens(reference) == ATOMS
    for band in fx.NATIVE:
        np.testing.assert_array_equal(reference[band].values, crops[band][0], err_msg=band)
        assert reference[band].attrs["gsd_m"] == fx.NATIVE[band]
        assert reference[band].attrs["dn_offset"] == -1000.0
        assert reference[band].attrs["calibration_source"] == "product name (processing baseline)"
    assert reference.attrs["product_level"] == "L2A" and reference.attrs["processing_baseline"] == "400"


def test_safe_named_folder_reads_the_same_through_every_reader(folders):
    """A folder of SAFE-named L1C bands: ``read_safe`` (what ``open_image`` picks), ``read_band_folder``
    (what ``--sensor sentinel2`` used to pick, and refused) and ``open_image`` with either flag agree."""
    folder = folders[("safe_l1c", ".jp2")]
    assert product_kind(folder) == "safe_named"
    via_safe = read_safe(folder)
    for ds in (read_band_folder(folder), read_band_folder(folder, "sentinel2"), open_image(folder, "sentinel2")):
        _same_image(ds, via_safe)
    assert via_safe["B04"].attrs["dn_offset"] == -1000.0  # from the folder's product name


def test_safe_named_folder_without_a_product_name_is_calibrated_the_same_way(tmp_path, crops):
    folder = _folder(tmp_path, "safe_l1c", ".jp2", crops, name="downloads")
    a, b = open_image(folder), open_image(folder, sensor="sentinel2")
    _same_image(a, b)
    assert a.attrs["product_level"] == "L1C"  # SAFE band names without a resolution: the Level-1C naming
    assert a["B02"].attrs["dn_offset"] == 0.0
    assert a["B02"].attrs["calibration_source"].startswith("assumed: no MTD")


def test_b08_never_stands_for_b8a(tmp_path, crops):
    folder = tmp_path / PRODUCT
    for band, name in (("B08", "scene_B08.jp2"), ("B04", "B04.tif")):
        fx.write_raster(folder / name, crops[band][0], crops[band][1], SUFFIXES[Path(name).suffix])
    ds = open_image(folder)
    assert image_bands(ds) == ["B04", "B08"]  # no B8A file: no B8A band, B08 is not read for it
    with pytest.raises(ImageReadError, match=r"no band file for band\(s\) \['B8A'\]"):
        read_band_folder(folder, bands=["B8A"])
    fx.write_raster(folder / "B8A_20m.tif", crops["B8A"][0], crops["B8A"][1])
    ds = open_image(folder, sensor="sentinel2")
    np.testing.assert_array_equal(ds["B8A"].values, crops["B8A"][0])
    np.testing.assert_array_equal(ds["B08"].values, crops["B08"][0])
    assert ds["B8A"].shape == (30, 30) and ds["B08"].shape == (60, 60)


def test_a_band_at_several_resolutions_is_read_at_its_native_one(tmp_path, crops):
    """Level-2A keeps resampled copies (R20m, R60m): the native file wins, else the finest; the resolution
    comes from the name's ``<n>m``, else the ``R<n>m`` folder."""
    folder = tmp_path / "granule"
    coarse = {}
    for band in ("B02", "B8A"):
        data, prof = crops[band]
        t = prof["transform"]
        fx.write_raster(
            folder / f"R{fx.NATIVE[band]}m" / f"T33NZA_20220706T085611_{band}.jp2", data, prof, "JP2OpenJPEG"
        )
        k = 60 // fx.NATIVE[band]
        coarse[band] = data.reshape(data.shape[0] // k, k, -1, k).mean((1, 3)).astype(data.dtype)
        p60 = {**prof, "transform": rasterio.Affine(60.0, 0.0, t.c, 0.0, -60.0, t.f)}
        fx.write_raster(folder / "R60m" / f"T33NZA_20220706T085611_{band}_60m.jp2", coarse[band], p60, "JP2OpenJPEG")
    files = find_band_files(folder, "sentinel2", recursive=True)
    assert files == {
        "B02": folder / "R10m" / "T33NZA_20220706T085611_B02.jp2",
        "B8A": folder / "R20m" / "T33NZA_20220706T085611_B8A.jp2",
    }
    (folder / "R10m" / "T33NZA_20220706T085611_B02.jp2").unlink()  # no native copy left: the finest
    assert find_band_files(folder, "sentinel2", recursive=True)["B02"].parent.name == "R60m"


def test_two_files_for_one_band_at_one_resolution_are_refused_naming_both(tmp_path, crops):
    folder = tmp_path / "scene"
    fx.write_raster(folder / "B02.tif", *crops["B02"])
    fx.write_raster(folder / "scene_B02.jp2", *crops["B02"], driver="JP2OpenJPEG")
    (folder / "._B02.tif").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork: hidden, never a band
    with pytest.raises(ImageReadError, match=r"B02\.tif and .*scene_B02\.jp2 both hold band B02 at 10 m") as e:
        open_image(folder)
    assert "\n" not in str(e.value)
    (folder / "scene_B02.jp2").unlink()
    assert image_bands(open_image(folder)) == ["B02"]
    fx.write_raster(folder / "B03_B04.tif", *crops["B03"])
    with pytest.raises(ImageReadError, match=r"B03_B04\.tif: the file name names bands \['B03', 'B04'\]"):
        open_image(folder)


def test_a_band_file_linking_out_of_the_folder_is_refused(tmp_path, crops):
    outside = fx.write_raster(tmp_path / "elsewhere" / "secret.tif", *crops["B01"])
    folder = tmp_path / "scene"
    fx.write_raster(folder / "B02.tif", *crops["B02"])
    (folder / "B01.tif").symlink_to(outside)
    with pytest.raises(ImageReadError, match=r"B01\.tif: a link leading outside"):
        open_image(folder)


def test_the_cli_inspects_a_jp2_folder_the_same_with_and_without_sensor(folders, capsys):
    from atomizer.cli import main

    outputs = []
    for flag in ([], ["--sensor", "sentinel2"]):
        assert main(["inspect", str(folders[("safe_l2a", ".jp2")]), *flag]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert f"total atom tokens: {ATOMS:,}" in outputs[0] and "sensor=sentinel2" in outputs[0]
    assert "product_level: L2A" in outputs[0]


# --------------------------------------------------------------------------------------------------
# Multi-band GeoTIFFs: band names from the file, matched by name
# --------------------------------------------------------------------------------------------------


def _export(path: Path, tile: Path, names, descriptions=True) -> Path:
    """A GeoTIFF of the real EuroSAT tile's channels for ``names`` (in that order); the band descriptions are
    written by this test (as Level-2A exports carry them)."""
    with rasterio.open(tile) as src:
        data, profile = src.read([EUROSAT_BAND_ORDER.index(n) + 1 for n in names]), src.profile
    profile.update(count=len(names))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = tuple(descriptions) if not isinstance(descriptions, bool) else tuple(names)
    return path


def test_a_described_twelve_band_export_reads_by_name_with_and_without_sensor(tmp_path, eurosat_paths):
    tile = eurosat_paths[0]
    export = _export(tmp_path / "l2a_export.tif", tile, L2A_EXPORT)
    truth = read_eurosat(tile)
    with_sensor, without = open_image(export, sensor="sentinel2"), open_image(export)
    for ds in (with_sensor, without):
        assert image_bands(ds) == list(L2A_EXPORT) and ds.attrs["sensor"] == "sentinel2"
        assert ds.attrs["band_names_from"] == "file band descriptions"
        for b in L2A_EXPORT:  # each channel is the band its description names (B8A is 9th here, 13th in EuroSAT)
            np.testing.assert_array_equal(ds[b].values, truth[b].values, err_msg=b)
            assert ds[b].attrs["wavelength_nm"] == truth[b].attrs["wavelength_nm"]
    assert "sensor_from" in without.attrs and "sensor_from" not in with_sensor.attrs
    assert count_tokens(without) == 12 * 64 * 64
    # explicit band names win over the descriptions
    ds = open_image(export, sensor="sentinel2", band_names=["B12", *L2A_EXPORT[1:-1], "B01"])
    np.testing.assert_array_equal(ds["B12"].values, truth["B01"].values)


def test_an_undescribed_export_is_refused_in_one_line_with_a_hint(tmp_path, eurosat_paths):
    bare = _export(tmp_path / "bare.tif", eurosat_paths[0], L2A_EXPORT, descriptions=False)
    for sensor, what in ((None, "no sensor is given"), ("sentinel2", "sensor 'sentinel2' is catalogued")):
        with pytest.raises(SensorSpecError, match=f"12 channels without band descriptions; {what}") as e:
            open_image(bare, sensor=sensor)
        assert "band_names" in str(e.value) and "\n" not in str(e.value)
    # a EuroSAT-MS tile (13 undescribed channels, no sensor) keeps its documented layout
    assert image_bands(open_image(eurosat_paths[0])) == list(EUROSAT_BAND_ORDER)


def test_descriptions_naming_several_sensors_or_none_are_refused(tmp_path, eurosat_paths):
    landsat = _export(tmp_path / "sr.tif", eurosat_paths[0], ("B02", "B03", "B04"), ["SR_B2", "SR_B3", "SR_B4"])
    with pytest.raises(SensorSpecError, match=r"names the bands of sensors \['landsat8', 'landsat9'\]"):
        open_image(landsat)
    ds = open_image(landsat, sensor="landsat8")  # aliases honoured: SR_B4 is B4
    assert image_bands(ds) == ["B2", "B3", "B4"] and ds["B4"].attrs["wavelength_nm"] == pytest.approx(654.6)
    typo = _export(tmp_path / "typo.tif", eurosat_paths[0], ("B02", "B03"), ["B02", "B3O"])
    with pytest.raises(SensorSpecError, match=r"channel\(s\) 2: 'B3O' .* no band of sensor 'sentinel2'"):
        open_image(typo, sensor="sentinel2")
    with pytest.raises(SensorSpecError, match="names the bands of no catalogued sensor"):
        open_image(typo)


# --------------------------------------------------------------------------------------------------
# Landsat without its MTL
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["L2", "L1"])
def test_a_landsat_folder_without_mtl_warns_which_level_and_scaling_it_assumes(tmp_path, majortom_product_dir, level):
    folder = fx.build_landsat(majortom_product_dir, tmp_path, level=level)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # with its MTL: no warning, the MTL's own scaling
        assert open_image(folder, sensor="landsat8").attrs["product_level"] == level
    next(folder.glob("*_MTL.txt")).unlink()
    with pytest.warns(UserWarning, match=r"no Landsat \*_MTL.*assuming a Collection 2 Level-2 product") as w:
        ds = open_image(folder, sensor="landsat8")
    message = str(w[0].message)
    assert "DN * 2.75e-05 - 0.2" in message and "\n" not in message
    assert ("Level-1 (L1TP)" in message) == (level == "L1")
    assert ds.attrs["product_level"] == "L2"
    assert ds["B4"].attrs["calibration_source"].startswith("assumed: Collection 2 Level-2")
    with rasterio.open(next(folder.glob("*_B4.TIF"))) as src:
        dn = int(src.read(1)[3, 2])
    refl, _ = physical_values(ds["B4"])
    assert refl[3, 2] == pytest.approx(dn * 2.75e-05 - 0.2, abs=1e-6)
