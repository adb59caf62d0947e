"""Tests for :mod:`atomizer.data.modalities`: simulation of coarser modalities from real images (BigEarthNet,
EuroSAT-MS, Major-TOM) and the shipped modality sets in ``atomizer/data/modality_sets``."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import xarray as xr
import yaml

from atomizer.core.paths import modality_sets_dir
from atomizer.data.bands import get_sensor
from atomizer.data.image import count_tokens, image_bands
from atomizer.data.layouts import read_band_folder, read_bigearthnet_npz, read_eurosat
from atomizer.data.modalities import (
    Assignment,
    Modality,
    ModalityError,
    area_average,
    check_disjoint,
    load_modalities,
    overlap_matrix,
    simulate,
)

S2 = get_sensor("sentinel2")


def _is_resampled(p) -> bool:
    with np.load(p) as z:
        return bool(z["resampled_120"]) if "resampled_120" in z.files else False


@pytest.fixture(scope="module")
def ben_path(ben_patch_paths):
    return next(p for p in ben_patch_paths if not _is_resampled(p))


@pytest.fixture(scope="module")
def ben(ben_path):
    """A native-resolution BigEarthNet patch (10/20/60 m grids, 1200 m square)."""
    return read_bigearthnet_npz(ben_path)


@pytest.fixture(scope="module")
def ben_s1(ben_patch_paths):
    for p in ben_patch_paths:
        with np.load(p) as z:
            if "VV" in z.files and not _is_resampled(p):
                return read_bigearthnet_npz(p, include_s1=True)
    pytest.fail("no BigEarthNet patch with Sentinel-1 bands")


@pytest.fixture(scope="module")
def ben_resampled(ben_patch_paths):
    return read_bigearthnet_npz(next(p for p in ben_patch_paths if _is_resampled(p)))


@pytest.fixture(scope="module")
def eurosat(eurosat_paths):
    return read_eurosat(eurosat_paths[0])


@pytest.fixture(scope="module")
def majortom(majortom_product_dir):
    return read_band_folder(majortom_product_dir)


@pytest.fixture(scope="module")
def majortom_3km(majortom):
    """The top-left 3 km x 3 km of the scene (300/150/50 px): cheap for many random windows."""
    return majortom.isel({f"{a}_{g}m": slice(0, 3000 // g) for g in (10, 20, 60) for a in "yx"})


def _f64(da: xr.DataArray) -> np.ndarray:
    return da.values.astype(np.float64)


def _image_frame(image, bands):
    """(left, top, width, height) of the ground square all ``bands`` cover."""
    lefts, tops, rights, bottoms = [], [], [], []
    for b in bands:
        da, g = image[b], image[b].attrs["gsd_m"]
        ydim, xdim = da.dims
        lefts.append(float(da[xdim][0]) - g / 2)
        tops.append(float(da[ydim][0]) + g / 2)
        rights.append(float(da[xdim][-1]) + g / 2)
        bottoms.append(float(da[ydim][-1]) - g / 2)
    left, top = max(lefts), min(tops)
    return left, top, min(rights) - left, top - max(bottoms)


def _expected_px(image, modality, band):
    return math.floor(modality.extent_m / max(image[band].attrs["gsd_m"], modality.gsd_m) + 1e-6)


# --------------------------------------------------------------------------------------------------
# Area averaging
# --------------------------------------------------------------------------------------------------


def test_overlap_matrix_rows_are_area_fractions():
    src = np.arange(0, 121) * 10.0
    dst = np.arange(0, 49) * 25.0
    w = overlap_matrix(src, dst)
    assert w.shape == (48, 120)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_allclose(w[0, :3], [0.4, 0.4, 0.2])  # 25 m cell = 10 + 10 + 5 m
    np.testing.assert_allclose(w.sum(axis=0), 0.4)  # each 10 m source cell is spread over 25 m cells


def test_area_average_ignores_invalid_pixels():
    v = np.array([[1.0, 3.0], [5.0, 7.0]])
    w = np.array([[0.5, 0.5]])
    out, ok = area_average(v, w, w, valid=np.array([[True, False], [True, True]]))
    assert ok.all() and out[0, 0] == pytest.approx((1 + 5 + 7) / 3)
    out, ok = area_average(v, w, w, valid=np.array([[False, False], [False, True]]))
    assert not ok[0, 0]  # a quarter of the cell is valid: below min_valid


@pytest.mark.parametrize("gsd", [15, 20, 24, 25, 30, 40, 60])
def test_full_extent_average_preserves_the_mean(ben, gsd):
    m = Modality("m", 1200 // gsd, gsd, ("B02", "B04", "B08"))
    out = simulate(ben, m)
    for b in m.bands:
        assert out[b].shape == (1200 // gsd, 1200 // gsd)
        assert out[b].dims == (f"y_{gsd}m", f"x_{gsd}m")
        assert _f64(out[b]).mean() == pytest.approx(_f64(ben[b]).mean(), rel=1e-6)
        # a coarser image, not a copy: less variance than the 10 m band
        assert _f64(out[b]).std() < _f64(ben[b]).std()


def test_integer_factor_equals_block_means(ben):
    m = Modality("m3", 40, 30, ("B02", "B08"))
    out = simulate(ben, m)
    for b in m.bands:
        expected = _f64(ben[b]).reshape(40, 3, 40, 3).mean(axis=(1, 3))
        assert out[b].dtype == np.float32
        np.testing.assert_allclose(_f64(out[b]), expected, rtol=1e-6)
        assert out[b].attrs["gsd_m"] == 30.0
        assert out[b].attrs["wavelength_nm"] == ben[b].attrs["wavelength_nm"]
    np.testing.assert_allclose(out["x_30m"].values, 15 + 30 * np.arange(40))
    np.testing.assert_allclose(out["y_30m"].values, -15 - 30 * np.arange(40))


def test_integer_factor_block_means_at_an_offset_window(majortom):
    """A 1000 m window 30 m east and 70 m south of the scene corner, 10 m -> 20 m."""
    m = Modality("off", 50, 20, ("B02", "B04"))
    out = simulate(majortom, m, offset_m=(30.0, 70.0))
    for b in m.bands:
        sub = _f64(majortom[b])[7:107, 3:103]
        np.testing.assert_allclose(_f64(out[b]), sub.reshape(50, 2, 50, 2).mean(axis=(1, 3)), rtol=1e-6)
    x0 = float(majortom["x_10m"][0]) - 5
    y0 = float(majortom["y_10m"][0]) + 5
    assert out["x_20m"].values[0] == pytest.approx(x0 + 30 + 10)
    assert out["y_20m"].values[0] == pytest.approx(y0 - 70 - 10)


def test_non_integer_factor_preserves_the_total(ben):
    m = Modality("m25", 48, 25, ("B03", "B04"))
    out = simulate(ben, m)
    for b in m.bands:
        src = _f64(ben[b])
        assert out[b].shape == (48, 48)
        assert _f64(out[b]).sum() * 25**2 == pytest.approx(src.sum() * 10**2, rel=1e-6)
        # first 25 m cell: rows/cols 0, 1 fully, row/col 2 half
        w = np.array([1.0, 1.0, 0.5])
        assert float(out[b][0, 0]) == pytest.approx((w[:, None] * w[None, :] * src[:3, :3]).sum() / 6.25, rel=1e-6)
        # second cell in x: cols 2 (half), 3, 4
        wx = np.array([0.5, 1.0, 1.0])
        assert float(out[b][0, 1]) == pytest.approx((w[:, None] * wx[None, :] * src[:3, 2:5]).sum() / 6.25, rel=1e-6)


def test_coarser_bands_keep_their_native_values(ben, ben_path):
    m = Modality("t4", 50, 24, ("B01", "B02", "B09", "B05"))
    out = simulate(ben, m)
    with np.load(ben_path) as z:
        for b in ("B01", "B09"):  # 60 m > 24 m: cropped, untouched
            assert out[b].dtype == np.uint16
            assert out[b].dims == ("y_60m", "x_60m") and out[b].attrs["gsd_m"] == 60
            np.testing.assert_array_equal(out[b].values, z[b])
    assert out["B02"].shape == (50, 50) and out["B02"].attrs["gsd_m"] == 24
    assert out["B05"].shape == (50, 50) and out["B05"].dtype == np.float32  # 20 m < 24 m: averaged


def test_coarser_bands_cropped_in_a_subwindow(majortom):
    m = Modality("sub", 100, 12, ("B01", "B05", "B02"))  # 1200 m window in the 10,680 m scene
    out = simulate(majortom, m)
    x0, y0, ext = out.attrs["window_m"]
    assert ext == pytest.approx(1200)
    for b, g in (("B01", 60), ("B05", 20)):
        ydim, xdim = f"y_{g}m", f"x_{g}m"
        assert out[b].shape == (1200 // g, 1200 // g)
        xs, ys = out[b][xdim].values, out[b][ydim].values
        assert set(xs) <= set(majortom[xdim].values) and set(ys) <= set(majortom[ydim].values)
        assert np.all((xs >= x0) & (xs <= x0 + ext)) and np.all((ys <= y0) & (ys >= y0 - ext))
        np.testing.assert_array_equal(out[b].values, majortom[b].sel({xdim: xs, ydim: ys}).values)
        assert out[b].dtype == np.uint16
    assert out["B02"].shape == (100, 100) and out["B02"].attrs["gsd_m"] == 12


def test_band_averaged_to_the_gsd_of_a_native_band_shares_its_cells(majortom):
    """B02 brought to 60 m lands on B01's 60 m cells (one grid per dimension name), whatever the offset."""
    m = Modality("g60", 20, 60, ("B01", "B02"))
    b02 = _f64(majortom["B02"])
    x10 = majortom["x_10m"].values
    y10 = majortom["y_10m"].values
    for off in [(0.0, 0.0), (10.0, 10.0), (30.0, 30.0), (50.0, 20.0)]:
        out = simulate(majortom, m, offset_m=off)
        assert out["B01"].shape == out["B02"].shape == (20, 20), off
        np.testing.assert_array_equal(out["B01"]["x_60m"].values, out["B02"]["x_60m"].values)
        assert out.sizes["x_60m"] == 20 and out.sizes["y_60m"] == 20
        assert not np.isnan(_f64(out["B02"])).any()
        # B02 at a cell = mean of the 6 x 6 B02 pixels inside that B01 pixel
        for i, j in [(0, 0), (7, 13), (19, 19)]:
            cx, cy = float(out["x_60m"][j]), float(out["y_60m"][i])
            cols = np.nonzero(np.abs(x10 - cx) < 30)[0]
            rows = np.nonzero(np.abs(y10 - cy) < 30)[0]
            assert len(cols) == len(rows) == 6
            assert float(out["B02"][i, j]) == pytest.approx(b02[np.ix_(rows, cols)].mean(), rel=1e-6)


@pytest.mark.parametrize(
    "modality",
    [
        Modality("a", 56, 20, ("B01", "B8A", "B02")),  # 1120 m: not a multiple of 60 m
        Modality("b", 20, 60, ("B01", "B02", "B05")),
        Modality("c", 37, 13, ("B09", "B05", "B03")),  # 481 m
        Modality("d", 16, 40, ("B8A", "B11")),
    ],
    ids=lambda m: m.name,
)
def test_pixel_count_is_floor_of_extent_over_gsd_at_any_window(majortom_3km, modality):
    """The same modality gives the same shapes wherever the window falls (random offsets included)."""
    shapes = set()
    for seed in range(8):
        out = simulate(majortom_3km, modality, rng=np.random.default_rng(seed))
        assert image_bands(out) == list(modality.bands)
        for b in modality.bands:
            n = _expected_px(majortom_3km, modality, b)
            assert out[b].shape == (n, n), (seed, b)
            assert out[b].attrs["gsd_m"] == max(majortom_3km[b].attrs["gsd_m"], modality.gsd_m)
        shapes.add(tuple(out[b].shape for b in modality.bands))
        assert count_tokens(out) == sum(_expected_px(majortom_3km, modality, b) ** 2 for b in modality.bands)
    assert len(shapes) == 1


# --------------------------------------------------------------------------------------------------
# Nodata
# --------------------------------------------------------------------------------------------------


def test_nodata_pixels_are_excluded_and_empty_blocks_become_nodata(ben):
    img = ben.copy(deep=True)
    assert img["B02"].attrs["nodata"] == 0
    assert (ben["B02"].values != 0).all()  # real patch: no nodata to begin with
    v = img["B02"].values
    v[0, 0] = 0  # 1 of the 4 pixels of 20 m cell (0, 0)
    v[2:4, 2:4] = 0  # all of cell (1, 1)
    v[4:6, 4] = 0  # 2 of 4 of cell (2, 2): half still valid
    m = Modality("m20", 60, 20, ("B02",))
    clean = _f64(simulate(ben, m)["B02"])
    out = simulate(img, m)["B02"]
    raw = _f64(ben["B02"])
    assert float(out[0, 0]) == pytest.approx((raw[0, 1] + raw[1, 0] + raw[1, 1]) / 3, rel=1e-6)
    assert float(out[1, 1]) == 0.0 and out.attrs["nodata"] == 0  # fully nodata -> nodata
    assert float(out[2, 2]) == pytest.approx((raw[4, 5] + raw[5, 5]) / 2, rel=1e-6)
    changed = np.zeros(clean.shape, bool)
    changed[0, 0] = changed[1, 1] = changed[2, 2] = True
    np.testing.assert_allclose(_f64(out)[~changed], clean[~changed], rtol=1e-6)  # no leak into neighbours
    # the source image is not modified by simulate
    assert float(img["B02"][0, 0]) == 0


def test_nan_pixels_of_float_bands_are_excluded(ben_s1):
    img = ben_s1.copy(deep=True)
    vv = img["VV"].values
    assert np.isfinite(vv).all()
    raw = vv.astype(np.float64).copy()
    vv[0, 0] = np.nan
    vv[2:4, 0:2] = np.nan
    out = simulate(img, Modality("s1", 60, 20, ("VV", "B02")))["VV"]
    assert float(out[0, 0]) == pytest.approx((raw[0, 1] + raw[1, 0] + raw[1, 1]) / 3, rel=1e-5)
    assert np.isnan(float(out[1, 0]))
    assert np.isfinite(_f64(out)).sum() == 60 * 60 - 1


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_window_bigger_than_the_image(ben, eurosat):
    with pytest.raises(ModalityError, match="1400 m window"):
        simulate(ben, Modality("big", 70, 20, ("B02",)))
    with pytest.raises(ModalityError, match="window"):
        simulate(eurosat, Modality("big", 33, 20, ("B02",)))  # 660 m > 640 m
    out = simulate(eurosat, Modality("fits", 32, 20, ("B02",)))  # exactly the tile
    assert out["B02"].shape == (32, 32)


def test_window_offset_outside_the_image(ben):
    m = Modality("w", 50, 20, ("B02",))  # 1000 m in 1200 m
    with pytest.raises(ModalityError, match="outside"):
        simulate(ben, m, offset_m=(-10.0, 0.0))
    with pytest.raises(ModalityError, match="outside"):
        simulate(ben, m, offset_m=(0.0, 210.0))
    out = simulate(ben, m, offset_m=(200.0, 200.0))  # flush with the bottom-right corner
    assert out["x_20m"].values[-1] == pytest.approx(1190.0)


def test_missing_band_names_the_band(ben):
    with pytest.raises(ModalityError, match="B10"):
        simulate(ben, Modality("t6", 36, 16, ("B02", "B10")))
    eurosat_t6 = load_modalities("eurosat_test")["T6"]
    assert "B10" in eurosat_t6.bands
    with pytest.raises(ModalityError, match="B10"):
        simulate(ben, eurosat_t6)


def test_band_without_a_pixel_in_the_window(ben):
    with pytest.raises(ModalityError, match="B01"):
        simulate(ben, Modality("tiny", 5, 10, ("B02", "B01")))  # 50 m window, 60 m pixels


@pytest.mark.parametrize("kw", [dict(size_px=0), dict(gsd_m=0), dict(gsd_m=-5), dict(bands=())])
def test_invalid_modality(kw):
    args = dict(name="bad", size_px=10, gsd_m=20, bands=("B02",))
    args.update(kw)
    with pytest.raises(ModalityError, match="bad"):
        Modality(**args)


def test_load_modalities_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="eurosat_train"):
        load_modalities("no_such_set")
    p = tmp_path / "broken.yaml"
    p.write_text(yaml.safe_dump({"modalities": [{"name": "x", "size_px": 10, "bands": ["B02"]}]}))
    with pytest.raises(ModalityError, match="gsd_m"):
        load_modalities(p)
    p.write_text(yaml.safe_dump({"modalities": []}))
    with pytest.raises(ModalityError, match="no modalities"):
        load_modalities(p)


# --------------------------------------------------------------------------------------------------
# Window position
# --------------------------------------------------------------------------------------------------


def test_default_window_is_centred(ben):
    out = simulate(ben, Modality("t6", 70, 16, ("B02", "B8A")))  # 1120 m in 1200 m
    x0, y0, ext = out.attrs["window_m"]
    assert (x0, y0, ext) == pytest.approx((40.0, -40.0, 1120.0))
    assert out["B8A"].shape == (56, 56) and out["B02"].shape == (70, 70)
    assert out["x_16m"].values[0] == pytest.approx(48.0)


@pytest.mark.parametrize("bands, finest", [(("B02", "B05"), 10.0), (("B05", "B8A", "B01"), 20.0)])
def test_random_windows_stay_inside_and_snap_to_the_finest_grid(majortom_3km, bands, finest):
    m = Modality("r", 40, 25, bands)  # 1000 m window
    left, top, width, height = _image_frame(majortom_3km, bands)
    offsets = set()
    for seed in range(12):
        out = simulate(majortom_3km, m, rng=np.random.default_rng(seed))
        x0, y0, ext = out.attrs["window_m"]
        dx, dy = x0 - left, top - y0
        assert -1e-6 <= dx <= width - ext + 1e-6 and -1e-6 <= dy <= height - ext + 1e-6
        assert dx / finest == pytest.approx(round(dx / finest), abs=1e-6)
        assert dy / finest == pytest.approx(round(dy / finest), abs=1e-6)
        offsets.add((round(dx), round(dy)))
        for b in bands:
            ydim, xdim = out[b].dims
            g = out[b].attrs["gsd_m"]
            assert out[b][xdim].values[0] - g / 2 >= left - 1e-6
            assert out[b][xdim].values[-1] + g / 2 <= left + width + 1e-6
            assert out[b][ydim].values[0] + g / 2 <= top + 1e-6
            assert out[b][ydim].values[-1] - g / 2 >= top - height - 1e-6
    assert len(offsets) >= 10  # the windows really move


def test_same_seed_same_crop(majortom_3km):
    m = Modality("r", 30, 30, ("B02", "B11", "B09"))
    a = simulate(majortom_3km, m, rng=np.random.default_rng(123))
    b = simulate(majortom_3km, m, rng=np.random.default_rng(123))
    xr.testing.assert_identical(a, b)
    c = simulate(majortom_3km, m, rng=np.random.default_rng(124))
    assert a.attrs["window_m"] != c.attrs["window_m"]


def test_assignment_is_balanced_and_seeded():
    a = Assignment.random(202, 4, seed=3)
    counts = np.bincount(a.modality_index, minlength=4)
    assert counts.sum() == 202 and counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(a.modality_index, Assignment.random(202, 4, seed=3).modality_index)
    assert not np.array_equal(a.modality_index, Assignment.random(202, 4, seed=4).modality_index)


# --------------------------------------------------------------------------------------------------
# The shipped modality sets
# --------------------------------------------------------------------------------------------------

DATASETS = ("eurosat", "bigearthnet")


@pytest.mark.parametrize("dataset", DATASETS)
def test_shipped_sets_sizes_and_disjointness(dataset):
    train = load_modalities(f"{dataset}_train")
    test = load_modalities(f"{dataset}_test")
    assert (modality_sets_dir() / f"{dataset}_train.yaml").is_file()
    assert len(train) >= 4
    assert len(test) == 6
    assert check_disjoint(train, test) == []
    for s in (train, test):
        assert len(set(s.names)) == len(s)
        for m in s:
            for b in m.bands:
                S2.band(b)  # every band is a Sentinel-2 band
    assert train.source_gsd_m == 10
    assert train.source_size_px == {"eurosat": 64, "bigearthnet": 120}[dataset]


def _apply_all(image, modalities):
    for m in modalities:
        out = simulate(image, m)
        assert image_bands(out) == list(m.bands), m.name
        for b in m.bands:
            n = _expected_px(image, m, b)
            assert out[b].shape == (n, n), (m.name, b)
            assert np.isfinite(_f64(out[b])).all(), (m.name, b)
            assert (_f64(out[b]) > 0).all(), (m.name, b)  # real pixels, no nodata introduced
        assert out.attrs["modality"] == m.name
        assert count_tokens(out) < count_tokens(image)


@pytest.mark.parametrize("kind", ["train", "test"])
def test_bigearthnet_modalities_apply_to_real_patches(ben, ben_resampled, kind):
    mods = load_modalities(f"bigearthnet_{kind}")
    _apply_all(ben, mods)
    _apply_all(ben_resampled, mods)


@pytest.mark.parametrize("kind", ["train", "test"])
def test_eurosat_modalities_apply_to_real_tiles(eurosat_paths, kind):
    mods = load_modalities(f"eurosat_{kind}")
    for path in eurosat_paths[::50]:
        _apply_all(read_eurosat(path), mods)


def test_eurosat_training_modalities_with_random_windows(eurosat):
    for i, m in enumerate(load_modalities("eurosat_train")):
        out = simulate(eurosat, m, rng=np.random.default_rng(i))
        for b in m.bands:
            assert out[b].shape == (m.size_px, m.size_px)


def test_check_disjoint_reports_a_shared_gsd():
    train = list(load_modalities("bigearthnet_train"))
    test = list(load_modalities("bigearthnet_test"))
    assert check_disjoint(train, test) == []
    bad = [replace(test[1], gsd_m=train[0].gsd_m)] + test[2:] + test[:1]
    problems = check_disjoint(train, bad)
    assert any("shares GSD" in p and test[1].name in p and train[0].name in p for p in problems)


def test_check_disjoint_reports_size_band_set_and_range_problems():
    train = list(load_modalities("eurosat_train"))
    test = list(load_modalities("eurosat_test"))
    same_size = [replace(test[0], size_px=train[2].size_px)] + test[1:]
    assert any("shares size" in p for p in check_disjoint(train, same_size))
    same_bands = [replace(test[1], bands=train[1].bands)] + test[:1] + test[2:]
    assert any("same band set" in p for p in check_disjoint(train, same_bands))
    inside = [Modality("in", 22, 17, ("B02", "B8A"))]
    problems = check_disjoint(train, inside)
    assert "no test GSD lies outside the training GSD range" in problems
    assert "no test size lies outside the training size range" in problems
    seen_only = [Modality("seen", 8, 70, ("B02", "B03"))]
    assert "no test modality contains a band unseen in training" in check_disjoint(train, seen_only)


def test_modality_distance_and_landscape_grid():
    from atomizer.data.modalities import landscape_modalities, modality_distance

    train = load_modalities("eurosat_train")
    for m in train:
        assert modality_distance(m, train.modalities)["total"] == 0.0
    tr1 = train["tr1"]  # 32 px @ 20 m, B02 B03 B04 B08
    coarser = Modality("x", tr1.size_px, tr1.gsd_m * 2, tr1.bands)
    d = modality_distance(coarser, [tr1])
    assert d["geometry"] == pytest.approx(1.0) and d["bands"] == 0.0  # one octave of GSD
    unseen = Modality("y", tr1.size_px, tr1.gsd_m, ("B8A", "B10"))
    d = modality_distance(unseen, train.modalities)
    assert d["bands"] == 1.0 and d["unseen_bands"] == 1.0 and d["geometry"] == 0.0
    grid = landscape_modalities(train, [10, 60], [0.5, 1.0], {"b8a": ["B8A"]}, tr1.bands, (tr1.size_px, tr1.gsd_m))
    extent = train.source_size_px * train.source_gsd_m
    assert all(m.size_px * m.gsd_m <= extent for m in grid)  # no window outside the source image
    assert set(train.names) <= set(grid.names) and "b_b8a" in grid.names and "g60_s10" in grid.names
    keys = [(m.size_px, m.gsd_m, frozenset(m.bands)) for m in grid]
    assert len(keys) == len(set(keys))  # no modality twice


@pytest.mark.parametrize("name", ["../../x", "sub/set", ".hidden", ""])
def test_a_modality_name_is_never_a_path(name):
    """A name without suffix (as a checkpoint's train_modalities may carry) names a shipped set, never a file."""
    with pytest.raises(ModalityError, match="not a modality set name"):
        load_modalities(name)
