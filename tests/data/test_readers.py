"""Tests for the readers (:mod:`atomizer.data.readers` and the modules it dispatches to) on real data
(BigEarthNet npz, EuroSAT-MS GeoTIFF, Major-TOM scene) and on broken inputs written into ``tmp_path``."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import rasterio
import xarray as xr
import yaml
from rasterio.transform import from_origin

from atomizer.data.bands import SensorSpecError, get_sensor
from atomizer.data.image import (
    ImageReadError,
    build_image,
    count_tokens,
    describe,
    grid_dims,
    grid_name,
    image_band_table,
    image_bands,
    nominal_gsd,
)
from atomizer.data.layouts import (
    EUROSAT_BAND_ORDER,
    read_band_folder,
    read_bigearthnet_npz,
    read_bigearthnet_patch_folder,
    read_eurosat,
)
from atomizer.data.metadata import s2_baseline, s2_dn_offset
from atomizer.data.raster import read_multiband_geotiff
from atomizer.data.readers import open_image

S2 = get_sensor("sentinel2")
BEN_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
NATIVE_PX = {10: 120, 20: 60, 60: 20}  # BigEarthNet patch side per native GSD
MAJORTOM_PX = {10: 1068, 20: 534, 60: 178}


def _flag(npz_path) -> bool:
    with np.load(npz_path) as z:
        return bool(z["resampled_120"]) if "resampled_120" in z.files else False


def _npz(npz_path) -> dict[str, np.ndarray]:
    with np.load(npz_path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def ben_native_path(ben_patch_paths):
    """A native-resolution patch that also carries Sentinel-1 VV/VH."""
    for p in ben_patch_paths:
        z = _npz(p)
        if not _flag(p) and "VV" in z:
            return p
    pytest.fail("no native BigEarthNet patch with Sentinel-1 bands")


@pytest.fixture(scope="module")
def ben_resampled_path(ben_patch_paths):
    for p in ben_patch_paths:
        if _flag(p):
            return p
    pytest.fail("no resampled_120 BigEarthNet patch")


@pytest.fixture(scope="module")
def majortom(majortom_product_dir):
    return read_band_folder(majortom_product_dir)


@pytest.fixture(scope="module")
def s2_reference(ben_patch_paths):
    """The independent Sentinel-2 band table shipped with the BigEarthNet slice."""
    return json.loads((ben_patch_paths[0].parents[1] / "reference" / "sentinel2_bands.json").read_text())


def _write_tif(path, arrays, transform, crs="EPSG:32633", dtype=None, **profile):
    arrays = np.asarray(arrays)
    if arrays.ndim == 2:
        arrays = arrays[None]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=arrays.shape[1],
        width=arrays.shape[2],
        count=arrays.shape[0],
        dtype=dtype or arrays.dtype,
        crs=crs,
        transform=transform,
        **profile,
    ) as dst:
        dst.write(arrays)
    return path


# --------------------------------------------------------------------------------------------------
# Small helpers of the representation
# --------------------------------------------------------------------------------------------------


def test_grid_names_and_nominal_gsd():
    assert grid_name(10) == "10m" and grid_name(60.0) == "60m" and grid_name(2.5) == "2p5m"
    assert grid_dims(20) == ("y_20m", "x_20m")
    assert nominal_gsd(10.0049) == 10.0  # EuroSAT's 10.005 m pixel is the 10 m grid
    assert nominal_gsd(9.99) == 10.0
    assert nominal_gsd(30.0) == 30.0
    assert nominal_gsd(2.5) == 2.5  # far from an integer: kept


def test_build_image_rejects_bad_arrays():
    with pytest.raises(ImageReadError, match="B02.*2-D"):
        build_image({"B02": np.zeros(5)}, S2)
    with pytest.raises(ImageReadError, match="B02.*empty"):
        build_image({"B02": np.zeros((0, 4))}, S2)
    with pytest.raises(ImageReadError):
        build_image({}, S2)
    with pytest.raises(KeyError, match="B99"):
        build_image({"B99": np.zeros((2, 2))}, S2)


# --------------------------------------------------------------------------------------------------
# BigEarthNet npz patches
# --------------------------------------------------------------------------------------------------


def test_ben_native_patch_has_12_bands_on_three_grids(ben_native_path):
    ds = read_bigearthnet_npz(ben_native_path)
    assert sorted(image_bands(ds)) == sorted(BEN_BANDS)
    for b in BEN_BANDS:
        g = int(S2.band(b).gsd_m)
        assert ds[b].dims == (f"y_{g}m", f"x_{g}m"), b
        assert ds[b].shape == (NATIVE_PX[g], NATIVE_PX[g]), b
    assert {d: n for d, n in ds.sizes.items()} == {
        "y_10m": 120,
        "x_10m": 120,
        "y_20m": 60,
        "x_20m": 60,
        "y_60m": 20,
        "x_60m": 20,
    }
    assert count_tokens(ds) == 4 * 120**2 + 6 * 60**2 + 2 * 20**2 == 80_000
    assert ds.attrs["sensor"] == "sentinel2"
    assert ds.attrs["patch_id"] == ben_native_path.stem
    assert ds.attrs["resampled_120"] == 0
    assert "extent_warning" not in ds.attrs


def test_ben_values_are_the_npz_arrays_untouched(ben_native_path):
    z = _npz(ben_native_path)
    ds = read_bigearthnet_npz(ben_native_path)
    for b in BEN_BANDS:
        assert ds[b].dtype == z[b].dtype == np.uint16, b
        np.testing.assert_array_equal(ds[b].values, z[b], err_msg=b)
        assert ds[b].attrs["dn_scale"] == pytest.approx(1e-4)
        assert ds[b].attrs["dn_offset"] == 0.0
        assert ds[b].attrs["nodata"] == 0


def test_ben_band_attrs_match_the_catalogue_and_the_reference_table(ben_native_path, s2_reference):
    ds = read_bigearthnet_npz(ben_native_path)
    ref = s2_reference["bands"]
    for b in BEN_BANDS:
        a, band = ds[b].attrs, S2.band(b)
        assert a["band"] == b
        assert a["wavelength_nm"] == band.wavelength_nm == pytest.approx(ref[b]["center_nm"]), b
        assert a["bandwidth_nm"] == band.bandwidth_nm == pytest.approx(ref[b]["bandwidth_nm"]), b
        assert a["gsd_m"] == band.gsd_m == ref[b]["gsd_m"], b
        assert ds[b].shape == (ref[b]["ben_px"], ref[b]["ben_px"]), b
        assert a["domain"] == "optical"
    table = {bt.name: bt for bt in image_band_table(ds)}
    assert table["B8A"].wavelength_nm == pytest.approx(864.7) and table["B8A"].gsd_m == 20


def test_ben_local_coordinates_cover_the_same_1200m_on_every_grid(ben_native_path):
    ds = read_bigearthnet_npz(ben_native_path)
    for g in (10, 20, 60):
        y, x = ds[f"y_{g}m"].values, ds[f"x_{g}m"].values
        np.testing.assert_allclose(np.diff(x), g)
        np.testing.assert_allclose(np.diff(y), -g)
        assert x[0] - g / 2 == pytest.approx(0.0) and x[-1] + g / 2 == pytest.approx(1200.0)
        assert y[0] + g / 2 == pytest.approx(0.0) and y[-1] - g / 2 == pytest.approx(-1200.0)


def test_every_ben_patch_reads_with_the_token_count_its_flag_implies(ben_patch_paths):
    assert len(ben_patch_paths) >= 10
    n_resampled = 0
    for p in ben_patch_paths:
        ds = read_bigearthnet_npz(p)
        flag = _flag(p)
        n_resampled += flag
        assert ds.attrs["resampled_120"] == int(flag), p.name
        # the flag agrees with the stored shapes: a 60 m band is 20 px natively, 120 px when resampled
        assert ds["B01"].shape == ((120, 120) if flag else (20, 20)), p.name
        assert count_tokens(ds) == (12 * 120**2 if flag else 80_000), p.name
    assert n_resampled >= 1


def test_ben_metadata_lists_every_patch(ben_patch_paths):
    meta = json.loads((ben_patch_paths[0].parents[1] / "metadata.json").read_text())
    ids = {r["patch_id"] for r in meta}
    assert {p.stem for p in ben_patch_paths} <= ids
    assert {r["ben_version"] for r in meta} == {"v1", "v2"}


def test_ben_resampled_patch_has_every_band_on_the_120px_grid(ben_resampled_path):
    z = _npz(ben_resampled_path)
    assert bool(z["resampled_120"]) is True
    ds = read_bigearthnet_npz(ben_resampled_path)
    assert ds.attrs["resampled_120"] == 1
    assert sorted(image_bands(ds)) == sorted(BEN_BANDS)
    for b in BEN_BANDS:
        assert ds[b].dims == ("y_10m", "x_10m"), b
        assert ds[b].shape == (120, 120), b
        assert ds[b].attrs["gsd_m"] == 10.0, b  # the grid its pixels are on
        assert ds[b].attrs["wavelength_nm"] == S2.band(b).wavelength_nm, b
        np.testing.assert_array_equal(ds[b].values, z[b], err_msg=b)
    assert set(ds.sizes) == {"y_10m", "x_10m"}
    assert count_tokens(ds) == 172_800


def test_ben_sentinel1_bands_only_on_request(ben_native_path):
    z = _npz(ben_native_path)
    plain = read_bigearthnet_npz(ben_native_path)
    assert "VV" not in plain and "VH" not in plain
    ds = read_bigearthnet_npz(ben_native_path, include_s1=True)
    for b in ("VV", "VH"):
        assert ds[b].dims == ("y_10m", "x_10m")
        assert ds[b].dtype == np.float32
        np.testing.assert_array_equal(ds[b].values, z[b])
        assert ds[b].attrs["domain"] == "sar" and ds[b].attrs["polarisation"] == b
        assert ds[b].attrs["bandwidth_nm"] == 0
    np.testing.assert_array_equal(ds["B02"].values, z["B02"])  # S2 untouched by the merge
    assert ds["B02"].attrs["dn_offset"] == 0.0
    assert count_tokens(ds) == 80_000 + 2 * 120**2
    assert ds.attrs["patch_id"] == ben_native_path.stem


# --------------------------------------------------------------------------------------------------
# EuroSAT-MS GeoTIFF
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eurosat_one_per_class(eurosat_paths):
    seen, out = set(), []
    for p in eurosat_paths:
        if p.parent.name not in seen:
            seen.add(p.parent.name)
            out.append(p)
    assert len(out) == 10
    return out


def test_eurosat_13_bands_on_the_10m_grid(eurosat_paths):
    path = eurosat_paths[0]
    ds = read_eurosat(path)
    assert sorted(image_bands(ds)) == sorted(EUROSAT_BAND_ORDER)
    assert len(image_bands(ds)) == 13
    for b in EUROSAT_BAND_ORDER:
        assert ds[b].dims == ("y_10m", "x_10m") and ds[b].shape == (64, 64), b
        assert ds[b].attrs["gsd_m"] == 10.0, b
        assert ds[b].attrs["wavelength_nm"] == S2.band(b).wavelength_nm, b
        assert ds[b].dtype == np.uint16
    assert count_tokens(ds) == 13 * 64 * 64
    assert ds.attrs["source"] == str(path)
    assert "UTM" in ds.attrs["crs"] or "utm" in ds.attrs["crs"].lower()


def test_eurosat_channels_matched_by_name_b8a_last(eurosat_one_per_class):
    for path in eurosat_one_per_class:
        ds = read_eurosat(path)
        with rasterio.open(path) as src:
            raw = src.read()  # (13, 64, 64), channel i+1 = band i
            t = src.transform
        assert raw.shape[0] == 13
        np.testing.assert_array_equal(ds["B8A"].values, raw[12], err_msg=str(path))
        np.testing.assert_array_equal(ds["B08"].values, raw[7], err_msg=str(path))
        np.testing.assert_array_equal(ds["B09"].values, raw[8], err_msg=str(path))
        np.testing.assert_array_equal(ds["B10"].values, raw[9], err_msg=str(path))
        np.testing.assert_array_equal(ds["B12"].values, raw[11], err_msg=str(path))
        for i, b in enumerate(EUROSAT_BAND_ORDER):
            np.testing.assert_array_equal(ds[b].values, raw[i], err_msg=f"{path} {b}")
        # georeferenced: the top-left pixel centre is half a (nominal) pixel from the file's corner
        assert ds["x_10m"].values[0] == pytest.approx(t.c + 5.0)
        assert ds["y_10m"].values[0] == pytest.approx(t.f - 5.0)


def test_eurosat_band_identity_on_the_pixels(eurosat_one_per_class):
    """B10 (cirrus) is dark, B8A (narrow NIR) tracks B08 (NIR): a swapped order would break both."""
    stack = {b: [] for b in ("B08", "B8A", "B10", "B02")}
    for path in eurosat_one_per_class:
        ds = read_eurosat(path)
        for b in stack:
            stack[b].append(ds[b].values.astype(float).ravel())
    v = {b: np.concatenate(x) for b, x in stack.items()}
    assert np.corrcoef(v["B8A"], v["B08"])[0, 1] > 0.95
    assert np.corrcoef(v["B8A"], v["B02"])[0, 1] < 0.6
    assert v["B10"].mean() < 100 < v["B8A"].mean()


# --------------------------------------------------------------------------------------------------
# Major-TOM scene: a folder of single-band GeoTIFFs
# --------------------------------------------------------------------------------------------------


def test_majortom_native_grids_and_token_count(majortom):
    assert sorted(image_bands(majortom)) == sorted(BEN_BANDS)
    for b in BEN_BANDS:
        g = int(S2.band(b).gsd_m)
        assert majortom[b].dims == (f"y_{g}m", f"x_{g}m"), b
        assert majortom[b].shape == (MAJORTOM_PX[g], MAJORTOM_PX[g]), b
        assert majortom[b].attrs["gsd_m"] == g
    expected = sum(MAJORTOM_PX[int(S2.band(b).gsd_m)] ** 2 for b in BEN_BANDS)
    assert expected == 4 * 1068**2 + 6 * 534**2 + 2 * 178**2 == 6_336_800
    assert count_tokens(majortom) == expected
    assert 6.3e6 <= count_tokens(majortom) < 6.4e6


def test_majortom_offset_from_the_N0400_product_name(majortom, majortom_product_dir):
    assert "_N0400_" in majortom_product_dir.name
    for b in BEN_BANDS:
        assert majortom[b].attrs["dn_offset"] == -1000.0, b
        assert majortom[b].attrs["dn_scale"] == pytest.approx(1e-4)
    # physical value = (DN - 1000) / 10000: a plausible reflectance, not shifted by +0.1
    red = (majortom["B04"].values.astype(float) + majortom["B04"].attrs["dn_offset"]) * 1e-4
    assert 0.0 < np.median(red) < 0.5


def test_majortom_values_are_the_files_untouched(majortom, majortom_product_dir):
    for b in BEN_BANDS:
        with rasterio.open(majortom_product_dir / f"{b}.tif") as src:
            raw = src.read(1)
        assert majortom[b].dtype == raw.dtype == np.uint16
        np.testing.assert_array_equal(majortom[b].values, raw, err_msg=b)
    assert "cloud_mask" not in majortom


def test_majortom_georeferenced_coordinates(majortom, majortom_product_dir):
    with rasterio.open(majortom_product_dir / "B02.tif") as src:
        t, crs = src.transform, src.crs
    for g in (10, 20, 60):
        x, y = majortom[f"x_{g}m"].values, majortom[f"y_{g}m"].values
        assert np.all(np.diff(x) > 0) and np.all(np.diff(y) < 0)
        np.testing.assert_allclose(np.diff(x), g)
        np.testing.assert_allclose(np.diff(y), -g)
        assert x[0] == pytest.approx(t.c + g / 2) and y[0] == pytest.approx(t.f - g / 2)
        # every grid covers the same 10,680 m square
        assert x[-1] + g / 2 == pytest.approx(t.c + 10_680) and y[-1] - g / 2 == pytest.approx(t.f - 10_680)
    assert x[0] > 100_000  # projected (UTM) metres, not pixel indices
    assert rasterio.crs.CRS.from_wkt(majortom.attrs["crs"]) == crs


def test_describe_table(majortom):
    df = describe(majortom)
    assert list(df.columns) == [
        "band",
        "wavelength_nm",
        "bandwidth_nm",
        "gsd_m",
        "grid",
        "dtype",
        "tokens",
        "dn_scale",
        "dn_offset",
        "nodata",
        "calibration",
    ]
    assert set(df["dn_offset"]) == {"-1000"}  # baseline N0400 in the product name
    assert len(df) == 12
    assert df["tokens"].sum() == count_tokens(majortom)
    row = df.set_index("band")
    assert row.loc["B02", "grid"] == "1068x1068" and row.loc["B02", "gsd_m"] == 10
    assert row.loc["B8A", "grid"] == "534x534" and row.loc["B8A", "wavelength_nm"] == pytest.approx(864.7)
    assert row.loc["B09", "grid"] == "178x178" and row.loc["B09", "tokens"] == 178**2
    assert set(df["dtype"]) == {"uint16"}


def test_describe_ben_patch(ben_native_path):
    df = describe(read_bigearthnet_npz(ben_native_path)).set_index("band")
    assert df["tokens"].sum() == 80_000
    assert df.loc["B01", "grid"] == "20x20" and df.loc["B05", "grid"] == "60x60"


# --------------------------------------------------------------------------------------------------
# Sentinel-2 processing baselines
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, baseline, offset",
    [
        ("S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419", 400, -1000.0),
        ("S2B_MSIL2A_20230101T000000_N0509_R018_T48QUE_20230101T000000", 509, -1000.0),
        ("S2A_MSIL2A_20200223T032739_N0214_R018_T48QUE_20200223T070000", 214, 0.0),
        ("S2A_MSIL1C_20180101T000000_N0399_R001_T01ABC_20180101T000000", 399, 0.0),
        ("S2B_MSIL2A_20200223T032739_N9999_R018_T48QUE_20230924T183543", 9999, 0.0),
        ("S2A_MSIL2A_20170613T101031_39_24", None, 0.0),
        ("B04", None, 0.0),
    ],
)
def test_s2_dn_offset_from_the_product_name(name, baseline, offset):
    assert s2_baseline(name) == baseline
    assert s2_dn_offset(name) == offset


def test_s2_dn_offset_metadata_wins():
    assert s2_dn_offset("S2B_MSIL2A_20200223T032739_N9999_R018_T48QUE_20230924T183543", -1000) == -1000.0
    assert s2_dn_offset("S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419", 0) == 0.0


@pytest.mark.parametrize("baseline", ["N9999", "N0301"])
def test_renamed_product_copy_gets_no_offset(tmp_path, majortom, majortom_product_dir, baseline):
    name = majortom_product_dir.name.replace("N0400", baseline)
    assert name != majortom_product_dir.name
    copy = tmp_path / name
    copy.mkdir()
    for b in ("B01", "B09"):  # the small 60 m files are enough
        shutil.copy(majortom_product_dir / f"{b}.tif", copy / f"{b}.tif")
    ds = read_band_folder(copy)
    assert sorted(image_bands(ds)) == ["B01", "B09"]
    for b in ("B01", "B09"):
        assert ds[b].attrs["dn_offset"] == 0.0
        np.testing.assert_array_equal(ds[b].values, majortom[b].values)
    # an explicit offset (BOA_ADD_OFFSET of the product metadata) overrides the name
    assert read_band_folder(copy, dn_offset=-1000)["B01"].attrs["dn_offset"] == -1000.0


def test_band_folder_band_subset(majortom_product_dir, majortom):
    ds = read_band_folder(majortom_product_dir, bands=["B09", "B8A"])
    assert sorted(image_bands(ds)) == ["B09", "B8A"]
    np.testing.assert_array_equal(ds["B8A"].values, majortom["B8A"].values)
    with pytest.raises(ImageReadError, match="B10"):
        read_band_folder(majortom_product_dir, bands=["B02", "B10"])


# --------------------------------------------------------------------------------------------------
# open_image dispatch
# --------------------------------------------------------------------------------------------------


def test_open_image_dispatches_npz(ben_native_path):
    xr.testing.assert_identical(open_image(ben_native_path), read_bigearthnet_npz(ben_native_path))


def test_open_image_dispatches_eurosat_tif(eurosat_paths):
    ds = open_image(eurosat_paths[-1])
    xr.testing.assert_identical(ds, read_eurosat(eurosat_paths[-1]))
    assert len(image_bands(ds)) == 13


def test_open_image_dispatches_folder(tmp_path, majortom_product_dir, majortom):
    folder = tmp_path / majortom_product_dir.name
    folder.mkdir()
    for b in ("B01", "B09", "cloud_mask"):
        shutil.copy(majortom_product_dir / f"{b}.tif", folder / f"{b}.tif")
    ds = open_image(folder)
    assert sorted(image_bands(ds)) == ["B01", "B09"]
    assert ds["B01"].attrs["dn_offset"] == -1000.0
    np.testing.assert_array_equal(ds["B09"].values, majortom["B09"].values)


def test_open_image_with_a_sidecar_sensor(tmp_path, eurosat_paths):
    """A custom sensor described by a sidecar reads the same pixels under its own band names."""
    bands = [
        {
            "name": f"c{i:02d}",
            "wavelength_nm": S2.band(b).wavelength_nm,
            "bandwidth_nm": S2.band(b).bandwidth_nm,
            "gsd_m": 10,
        }
        for i, b in enumerate(EUROSAT_BAND_ORDER)
    ]
    sidecar = tmp_path / "my_cam.yaml"
    sidecar.write_text(yaml.safe_dump({"name": "my_cam", "nodata": None, "bands": bands}))
    ds = open_image(eurosat_paths[0], sensor=sidecar)
    assert image_bands(ds) == [f"c{i:02d}" for i in range(13)]
    assert ds.attrs["sensor"] == "my_cam"
    with rasterio.open(eurosat_paths[0]) as src:
        np.testing.assert_array_equal(ds["c12"].values, src.read(13))
    assert ds["c12"].attrs["wavelength_nm"] == pytest.approx(864.7)


def test_open_image_refuses_a_tif_of_unknown_layout_without_sensor(tmp_path, eurosat_paths):
    with rasterio.open(eurosat_paths[0]) as src:
        raw, t = src.read(), src.transform
    four = _write_tif(tmp_path / "four.tif", raw[1:5], t)
    with pytest.raises(SensorSpecError, match="4 channels"):
        open_image(four)
    # with the right band list it reads
    ds = open_image(four, sensor="sentinel2", band_names=["B02", "B03", "B04", "B08"])
    np.testing.assert_array_equal(ds["B08"].values, raw[4])


def test_a_catalogued_sensor_names_no_channel_of_an_undescribed_file(eurosat_paths):
    """``sensor="sentinel2"`` on a EuroSAT-MS tile: the catalogue's order (B8A 9th) is not the file's (B8A
    13th); the channels are named by ``band_names``, a file's descriptions or a sidecar, never by position."""
    with pytest.raises(SensorSpecError, match=r"13 channels without band descriptions; sensor 'sentinel2'") as e:
        open_image(eurosat_paths[0], sensor="sentinel2")
    assert "band_names" in str(e.value) and "sidecar" in str(e.value)
    ds = open_image(eurosat_paths[0], sensor="sentinel2", band_names=EUROSAT_BAND_ORDER)
    xr.testing.assert_identical(ds, read_eurosat(eurosat_paths[0]))


def test_a_sidecar_reads_a_file_described_in_free_text_in_its_own_order(tmp_path, eurosat_paths):
    """A sidecar's band list is its file's channel order: descriptions that name none of its bands (free text)
    leave that order; descriptions naming its bands reorder by name."""
    with rasterio.open(eurosat_paths[0]) as src:
        raw, t = src.read([2, 3, 4]), src.transform
    side = tmp_path / "cam.yaml"
    bands = [
        {"name": n, "wavelength_nm": w, "bandwidth_nm": 40, "gsd_m": 10}
        for n, w in (("b", 490), ("g", 560), ("r", 665))
    ]
    side.write_text(yaml.safe_dump({"name": "cam", "bands": bands}))
    free = _write_tif(tmp_path / "free.tif", raw, t)
    with rasterio.open(free, "r+") as dst:
        dst.descriptions = ("blue light", "green light", "red light")
    ds = open_image(free, sensor=side)
    np.testing.assert_array_equal(ds["r"].values, raw[2])
    assert ds.attrs["band_names_from"] == "sidecar 'cam' (channel order)"
    named = _write_tif(tmp_path / "named.tif", raw[::-1], t)
    with rasterio.open(named, "r+") as dst:
        dst.descriptions = ("r", "g", "b")
    ds = open_image(named, sensor=side)
    np.testing.assert_array_equal(ds["r"].values, raw[2])
    np.testing.assert_array_equal(ds["b"].values, raw[0])


def test_open_image_unsupported_suffix(tmp_path):
    p = tmp_path / "image.jp2"
    p.write_bytes(b"\x00" * 64)
    with pytest.raises(ImageReadError, match="image.jp2"):
        open_image(p)


# --------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------


def test_truncated_geotiff_raises_naming_the_file(tmp_path, eurosat_paths):
    data = eurosat_paths[0].read_bytes()
    bad = tmp_path / "half_eurosat.tif"
    bad.write_bytes(data[: len(data) // 2])
    for reader in (read_eurosat, open_image):
        with pytest.raises(ImageReadError, match="half_eurosat.tif"):
            reader(bad)


def test_truncated_geotiff_with_header_first_raises(tmp_path, eurosat_paths):
    """Header (IFD) at the start, pixel data cut: must not come back as zeros."""
    with rasterio.open(eurosat_paths[0]) as src:
        raw, t = src.read(), src.transform
    full = _write_tif(tmp_path / "full.tif", raw, t)  # uncompressed, directory first
    data = full.read_bytes()
    assert int.from_bytes(data[4:8], "little") < 1024  # the directory is at the start
    xr.testing.assert_equal(read_eurosat(full)["B8A"], read_eurosat(eurosat_paths[0])["B8A"])
    bad = tmp_path / "cut.tif"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.tif"):
        read_eurosat(bad)


def test_truncated_band_in_a_folder_raises(tmp_path, majortom_product_dir):
    folder = tmp_path / "scene"
    folder.mkdir()
    shutil.copy(majortom_product_dir / "B01.tif", folder / "B01.tif")
    data = (majortom_product_dir / "B09.tif").read_bytes()
    (folder / "B09.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="B09.tif"):
        read_band_folder(folder)


def test_random_bytes_tif_raises(tmp_path):
    bad = tmp_path / "noise.tif"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ImageReadError, match="noise.tif"):
        open_image(bad)
    with pytest.raises(ImageReadError, match="noise.tif"):
        read_multiband_geotiff(bad, "sentinel2")


def test_missing_paths_raise(tmp_path):
    missing = tmp_path / "nowhere.tif"
    with pytest.raises(ImageReadError, match="nowhere.tif"):
        open_image(missing)
    with pytest.raises(ImageReadError, match="nowhere.tif"):
        read_eurosat(missing)
    with pytest.raises(ImageReadError, match="nowhere.npz"):
        read_bigearthnet_npz(tmp_path / "nowhere.npz")
    with pytest.raises(ImageReadError, match="nowhere_dir"):
        read_band_folder(tmp_path / "nowhere_dir")


def test_band_count_mismatch_names_the_sensor(eurosat_paths):
    with pytest.raises(SensorSpecError, match=r"13 channels.*'landsat8'.*11 bands"):
        read_multiband_geotiff(eurosat_paths[0], "landsat8")
    with pytest.raises(SensorSpecError, match="sentinel2"):
        read_multiband_geotiff(eurosat_paths[0], "sentinel2", band_names=["B02", "B03", "B04"])


def test_sidecar_missing_wavelength_names_the_band(tmp_path, eurosat_paths):
    bands = [{"name": f"c{i}", "wavelength_nm": 400 + 10 * i, "bandwidth_nm": 10, "gsd_m": 10} for i in range(13)]
    del bands[7]["wavelength_nm"]
    sidecar = tmp_path / "broken.yaml"
    sidecar.write_text(yaml.safe_dump({"name": "broken", "bands": bands}))
    with pytest.raises(SensorSpecError, match=r"c7.*wavelength_nm"):
        open_image(eurosat_paths[0], sensor=sidecar)


def test_unknown_sensor_is_a_key_error(eurosat_paths, majortom_product_dir):
    with pytest.raises(KeyError, match="sentinel7"):
        read_multiband_geotiff(eurosat_paths[0], "sentinel7")
    with pytest.raises(KeyError, match="sentinel7"):
        open_image(eurosat_paths[0], sensor="sentinel7")
    with pytest.raises(KeyError, match="sentinel7"):
        read_band_folder(majortom_product_dir, sensor="sentinel7")


def test_folder_without_band_files(tmp_path, majortom_product_dir):
    folder = tmp_path / "no_bands"
    folder.mkdir()
    (folder / "README.txt").write_text("nothing here")
    shutil.copy(majortom_product_dir / "cloud_mask.tif", folder / "cloud_mask.tif")
    with pytest.raises(ImageReadError, match="no_bands"):
        read_band_folder(folder)
    with pytest.raises(ImageReadError, match="no_bands"):
        open_image(folder)


def test_band_file_with_two_channels_is_refused(tmp_path, eurosat_paths):
    with rasterio.open(eurosat_paths[0]) as src:
        raw, t = src.read(), src.transform
    folder = tmp_path / "two"
    folder.mkdir()
    _write_tif(folder / "B02.tif", raw[1:3], t)
    with pytest.raises(ImageReadError, match="B02.tif.*one band"):
        read_band_folder(folder)


def test_npz_without_band_keys(tmp_path):
    p = tmp_path / "labels_only.npz"
    np.savez(p, labels=np.arange(19), resampled_120=np.array(False))
    with pytest.raises(ImageReadError, match=r"labels_only.npz.*labels"):
        read_bigearthnet_npz(p)
    with pytest.raises(ImageReadError, match="labels_only.npz"):
        open_image(p)


def test_corrupt_and_malformed_npz(tmp_path, ben_native_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(1).bytes(2048))
    with pytest.raises(ImageReadError, match="junk.npz"):
        read_bigearthnet_npz(junk)
    data = ben_native_path.read_bytes()
    half = tmp_path / "half.npz"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="half.npz"):
        read_bigearthnet_npz(half)
    # zip directory intact, one member's compressed bytes damaged
    with zipfile.ZipFile(ben_native_path) as zf:
        member = next(i for i in zf.infolist() if i.filename == "B02.npy")
    damaged = bytearray(data)
    start = member.header_offset + 200
    damaged[start : start + 64] = bytes(b ^ 0xFF for b in damaged[start : start + 64])
    flipped = tmp_path / "flipped.npz"
    flipped.write_bytes(bytes(damaged))
    with pytest.raises(ImageReadError, match="flipped.npz"):
        read_bigearthnet_npz(flipped)
    flat = tmp_path / "flat.npz"
    np.savez(flat, B02=np.zeros(100, np.uint16))
    with pytest.raises(ImageReadError, match="B02"):
        read_bigearthnet_npz(flat)


# --------------------------------------------------------------------------------------------------
# BigEarthNet official patch folders (v1 and v2), written from a real patch
# --------------------------------------------------------------------------------------------------


def _write_patch_folder(folder, patch_id, arrays, x0=600_000.0, y0=5_500_000.0, extra_files=()):
    folder.mkdir(parents=True)
    for b, arr in arrays.items():
        g = S2.band(b).gsd_m
        assert arr.shape[0] * g == 1200  # native grid
        _write_tif(folder / f"{patch_id}_{b}.tif", arr, from_origin(x0, y0, g, g))
    for name, text in extra_files:
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_bigearthnet_patch_folder_layouts(tmp_path, ben_patch_paths, version):
    meta = {r["patch_id"]: r for r in json.loads((ben_patch_paths[0].parents[1] / "metadata.json").read_text())}
    path = next(p for p in ben_patch_paths if not _flag(p) and meta.get(p.stem, {}).get("ben_version") == version)
    patch_id = path.stem
    z = _npz(path)
    arrays = {b: z[b] for b in BEN_BANDS}
    if version == "v1":  # <root>/<patch>/<patch>_B01.tif + <patch>_labels_metadata.json
        folder = tmp_path / "BigEarthNet-v1.0" / patch_id
        extra = [(f"{patch_id}_labels_metadata.json", json.dumps({"labels": meta[patch_id]["labels_43"]}))]
    else:  # <root>/<tile>/<patch>/<patch>_B01.tif
        tile = patch_id.rsplit("_", 2)[0]
        folder = tmp_path / "BigEarthNet-S2" / tile / patch_id
        extra = []
    _write_patch_folder(folder, patch_id, arrays, extra_files=extra)
    ds = read_bigearthnet_patch_folder(folder)
    assert ds.attrs["patch_id"] == patch_id
    assert sorted(image_bands(ds)) == sorted(BEN_BANDS)
    for b in BEN_BANDS:
        g = int(S2.band(b).gsd_m)
        assert ds[b].dims == (f"y_{g}m", f"x_{g}m"), b
        assert ds[b].attrs["gsd_m"] == g
        assert ds[b].dtype == np.uint16
        assert ds[b].attrs["dn_offset"] == 0.0
        np.testing.assert_array_equal(ds[b].values, z[b], err_msg=b)
    assert count_tokens(ds) == 80_000
    for g in (10, 20, 60):
        assert ds[f"x_{g}m"].values[0] == pytest.approx(600_000 + g / 2)
        assert ds[f"y_{g}m"].values[0] == pytest.approx(5_500_000 - g / 2)
    assert "crs" in ds.attrs
    # same pixels and grids as the npz reader (only coordinates differ: georeferenced vs local)
    npz = read_bigearthnet_npz(path)
    for b in BEN_BANDS:
        assert ds[b].shape == npz[b].shape and ds[b].dims == npz[b].dims


def test_band_folder_bands_with_different_corners_keep_their_own_coordinates(tmp_path, ben_native_path):
    z = _npz(ben_native_path)
    folder = tmp_path / "shifted"
    folder.mkdir()
    _write_tif(folder / "B02.tif", z["B02"], from_origin(600_000, 5_500_000, 10, 10))
    _write_tif(folder / "B01.tif", z["B01"], from_origin(600_060, 5_500_000, 60, 60))  # one 60 m pixel east
    ds = read_band_folder(folder)
    assert ds["x_10m"].values[0] == pytest.approx(600_005)
    assert ds["x_60m"].values[0] == pytest.approx(600_090)
    assert ds["y_60m"].values[0] == pytest.approx(5_500_000 - 30)
    # two bands on the same grid with different corners cannot share coordinates
    _write_tif(folder / "B03.tif", z["B03"], from_origin(600_005, 5_500_000, 10, 10))  # half a pixel off
    with pytest.raises(ImageReadError, match="not aligned"):
        read_band_folder(folder)


def test_lazy_npz_and_geotiff_read_nothing_until_computed_and_equal_the_eager_read(ben_patch_paths, eurosat_paths):
    """``open_image(..., lazy=True)`` of an npz patch (shapes from its headers) and of a EuroSAT GeoTIFF: every
    band a dask array, the same atom count, attributes and values as the eager read."""
    from atomizer.data.layouts import npz_headers

    for path in (ben_patch_paths[0], eurosat_paths[0]):
        eager, lazy = open_image(path), open_image(path, lazy=True)
        assert count_tokens(lazy) == count_tokens(eager) and lazy.attrs == eager.attrs
        for b in eager.data_vars:
            assert hasattr(lazy[b].data, "dask"), b
            assert lazy[b].attrs == eager[b].attrs and lazy[b].dtype == eager[b].dtype
            np.testing.assert_array_equal(lazy[b].values, eager[b].values)
    with np.load(ben_patch_paths[0]) as z:
        assert npz_headers(ben_patch_paths[0]) == {k: (z[k].shape, z[k].dtype) for k in z.files}


def test_a_channel_named_none_is_skipped_and_the_count_still_checked():
    """A channel that is no band (an alpha channel, an elevation model) is skipped explicitly with ``None``
    in the channel order; the real 12-channel TerraMesh Sentinel-2 file read with its 9th channel skipped."""
    from atomizer.data.bands import SensorSpecError
    from atomizer.data.raster import read_multiband_geotiff
    from tests.conftest import EMBEDDED

    path = EMBEDDED / "dense" / "terramesh" / "images" / "282D_485L_3_3_s2l2a.tif"
    order = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    full = read_multiband_geotiff(path, "sentinel2", band_names=order)
    skipped = read_multiband_geotiff(path, "sentinel2", band_names=[*order[:8], None, *order[9:]])
    assert "B8A" not in skipped and list(skipped.data_vars) == [b for b in full.data_vars if b != "B8A"]
    np.testing.assert_array_equal(skipped["B09"].values, full["B09"].values)
    assert skipped.attrs["channels_skipped"] == "9"
    with pytest.raises(SensorSpecError, match="12 channels"):
        read_multiband_geotiff(path, "sentinel2", band_names=[*order[:8], None])
