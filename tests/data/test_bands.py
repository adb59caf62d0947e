"""Tests for the band/sensor catalogue (:mod:`atomizer.data.bands`) and the shipped ``atomizer/data/sensors`` tables."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest
import yaml

from atomizer.data.bands import (
    DOMAINS,
    Sensor,
    SensorSpecError,
    catalogue_table,
    get_sensor,
    list_sensors,
)

EXPECTED_SENSORS = {
    "sentinel1",
    "sentinel2",
    "landsat8",
    "landsat9",
    "modis",
    "enmap",
    "ign_aerial",
    "planetscope",
    "terrasarx",
}
SPEED_OF_LIGHT = 299_792_458.0  # m/s


# --------------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------------


def test_expected_sensors_are_catalogued():
    assert EXPECTED_SENSORS <= set(list_sensors())


@pytest.mark.parametrize("name", sorted(EXPECTED_SENSORS))
def test_every_catalogued_sensor_loads(name):
    s = get_sensor(name)
    assert isinstance(s, Sensor)
    assert s.name == name
    assert len(s.bands) >= 1
    assert len(set(s.band_names)) == len(s.bands)
    assert s.source, f"{name}: the table must say where its values come from"
    for b in s.bands:
        assert b.domain in DOMAINS
        assert b.source, f"{name}/{b.name}: band has no source"
        assert b.gsd_m > 0
        # Physical ranges per domain: catches a table written in micrometres or metres.
        if b.domain == "optical":
            assert 350 <= b.wavelength_nm <= 2500, (name, b.name, b.wavelength_nm)
            assert 0 < b.bandwidth_nm < 300, (name, b.name, b.bandwidth_nm)
        elif b.domain == "thermal":
            assert 3_000 <= b.wavelength_nm <= 15_000, (name, b.name, b.wavelength_nm)
        else:
            assert b.wavelength_nm > 1e6, (name, b.name, b.wavelength_nm)  # radar: mm to m
            assert b.polarisation is not None
    # Aliases must point at real bands.
    for alias, target in s.aliases.items():
        assert s.band(alias).name == target


def test_sentinel2_has_13_bands_with_b8a():
    s2 = get_sensor("sentinel2")
    assert len(s2.bands) == 13
    assert "B8A" in s2.band_names
    assert s2.band_names.index("B8A") == s2.band_names.index("B08") + 1
    assert s2.band("B8A").gsd_m == 20


def test_landsat8_has_11_bands():
    l8 = get_sensor("landsat8")
    assert len(l8.bands) == 11
    assert l8.band_names == [f"B{i}" for i in range(1, 12)]
    assert l8.band("B8").gsd_m == 15  # panchromatic
    assert [l8.band(n).domain for n in ("B10", "B11")] == ["thermal", "thermal"]
    assert all(l8.band(n).gsd_m == 100 for n in ("B10", "B11"))
    assert l8.band("SR_B5").name == "B5"


@pytest.mark.parametrize("name", ["landsat8", "landsat9"])
def test_landsat_collection2_l2_scaling(name):
    s = get_sensor(name)
    assert s.dn_scale == pytest.approx(2.75e-5)
    assert s.dn_offset == pytest.approx(-0.2 / 2.75e-5, rel=1e-12)
    assert s.nodata == 0
    for dn in (1, 7273, 21_818, 43_636, 65_535):
        assert (dn + s.dn_offset) * s.dn_scale == pytest.approx(dn * 2.75e-5 - 0.2, abs=1e-9)


def test_modis_mod09_convention():
    m = get_sensor("modis")
    assert m.band_names == [f"B{i}" for i in range(1, 8)]
    assert [b.gsd_m for b in m.bands] == [250, 250, 500, 500, 500, 500, 500]
    assert m.dn_scale == pytest.approx(1e-4)
    assert m.nodata == -28672
    assert m.band("sur_refl_b02").name == "B2"


def test_enmap_is_a_generated_hyperspectral_band_list():
    e = get_sensor("enmap")
    assert len(e.bands) >= 200
    assert all(b.domain == "optical" for b in e.bands)
    segments: dict[str, list] = defaultdict(list)
    for b in e.bands:
        m = re.fullmatch(r"([A-Za-z]+)(\d+)", b.name)
        assert m, b.name
        segments[m.group(1)].append(b)
    assert set(segments) == {"V", "S"}
    assert len(segments["V"]) == 91 and len(segments["S"]) == 133
    for prefix, bands in segments.items():
        wl = [b.wavelength_nm for b in bands]
        assert all(a < b for a, b in zip(wl, wl[1:])), f"{prefix} wavelengths not strictly increasing"
        assert [int(b.name[len(prefix) :]) for b in bands] == list(range(1, len(bands) + 1))
    v = [b.wavelength_nm for b in segments["V"]]
    s = [b.wavelength_nm for b in segments["S"]]
    assert 400 <= v[0] < 430 and 980 < v[-1] <= 1000
    assert 890 < s[0] < 910 and 2430 < s[-1] <= 2450
    assert all(b.gsd_m == 30 for b in e.bands)


def test_sentinel1_bands_are_sar_with_vv_vh():
    s1 = get_sensor("sentinel1")
    assert all(b.domain == "sar" for b in s1.bands)
    assert sorted(b.polarisation for b in s1.bands) == ["VH", "VV"]
    assert {b.name: b.polarisation for b in s1.bands} == {"VV": "VV", "VH": "VH"}
    carrier_nm = SPEED_OF_LIGHT / 5.405e9 * 1e9
    for b in s1.bands:
        assert b.wavelength_nm == pytest.approx(carrier_nm, rel=1e-6)
        assert b.bandwidth_nm == 0
        assert b.gsd_m == 10
    assert (s1.dn_scale, s1.dn_offset, s1.nodata) == (1, 0, None)


def test_dense_data_sensors_describe_only_real_bands():
    """The sensors of the shipped dense data: the aerial camera has R, G, B, NIR (FLAIR's elevation channel is
    no band), PlanetScope R, G, B (the basemap's alpha is no band), TerraSAR-X one X-band HH channel; every
    band's centre lies inside the visible/NIR or at the X-band carrier, and 8-bit DN map to 0-1."""
    ign, ps, tsx = get_sensor("ign_aerial"), get_sensor("planetscope"), get_sensor("terrasarx")
    assert ign.band_names == ["red", "green", "blue", "nir"] and "elevation" not in [*ign.band_names, *ign.aliases]
    assert ps.band_names == ["red", "green", "blue"] and "alpha" not in [*ps.band_names, *ps.aliases]
    for s in (ign, ps):
        centres = {b.name: b.wavelength_nm for b in s.bands}
        assert centres["blue"] < centres["green"] < centres["red"] < 700
        assert s.dn_scale * 255 == pytest.approx(1.0) and s.nodata is None
    assert ign.band("nir").wavelength_nm > 750 and all(b.gsd_m == 0.2 for b in ign.bands)
    (hh,) = tsx.bands
    assert (hh.domain, hh.polarisation, hh.bandwidth_nm) == ("sar", "HH", 0)
    assert hh.wavelength_nm == pytest.approx(SPEED_OF_LIGHT / 9.65e9 * 1e9, rel=1e-6)
    assert tsx.band("sar_amplitude").name == "HH"  # how GEO-Bench-2's CaFFe files describe the channel
    # CaFFe's own grey-value mean and std (on DN / 255) land on the fixed SAR scaling's centre and unit (-15 +- 10)
    mean, std = 0.3047126829624176 * 255, 0.32187142968177795 * 255
    assert (mean + tsx.dn_offset) * tsx.dn_scale == pytest.approx(-15.0)
    assert std * tsx.dn_scale == pytest.approx(10.0)


# --------------------------------------------------------------------------------------------------
# Cross-check against spyndex (Awesome Spectral Indices band tables)
# --------------------------------------------------------------------------------------------------

# spyndex band key -> our band name, per (our sensor, spyndex platform attribute). Every band that spyndex
# describes for the platform must be listed; ``None`` marks a band deliberately not catalogued.
SPYNDEX_MATCH: dict[tuple[str, str], dict[str, str | None]] = {
    ("sentinel2", "sentinel2a"): {
        "A": "B01",
        "B": "B02",
        "G": "B03",
        "R": "B04",
        "RE1": "B05",
        "RE2": "B06",
        "RE3": "B07",
        "N": "B08",
        "N2": "B8A",
        "WV": "B09",
        "S1": "B11",
        "S2": "B12",
    },
    ("landsat8", "landsat8"): {
        "A": "B1",
        "B": "B2",
        "G": "B3",
        "R": "B4",
        "N2": "B5",
        "S1": "B6",
        "S2": "B7",
        "T1": "B10",
        "T2": "B11",
    },
    ("landsat9", "landsat9"): {
        "A": "B1",
        "B": "B2",
        "G": "B3",
        "R": "B4",
        "N2": "B5",
        "S1": "B6",
        "S2": "B7",
        "T1": "B10",
        "T2": "B11",
    },
    ("modis", "modis"): {
        "R": "B1",
        "N2": "B2",
        "B": "B3",
        "G": "B4",
        "S1": "B6",
        "S2": "B7",
        "G1": None,  # MODIS band 11 (531 nm, 1 km ocean band): not one of the land bands 1-7
    },
}
CENTRE_TOLERANCE_NM = 15.0


def _spyndex_platform_bands(spyndex, platform: str) -> dict:
    """{spyndex band key: (generic band, platform band)} for every band spyndex describes on ``platform``."""
    out = {}
    for key in spyndex.bands.keys():
        generic = spyndex.bands[key]
        platform_band = getattr(generic, platform, None)
        if platform_band is not None:
            out[key] = (generic, platform_band)
    return out


def _canonical(band_name: str) -> str:
    """'B01' -> 'B1', 'B8A' -> 'B8A': compare band ids across zero-padding conventions."""
    return re.sub(r"^B0*(?=\d)", "B", band_name)


@pytest.mark.parametrize("sensor_name,platform", sorted(SPYNDEX_MATCH))
def test_band_table_agrees_with_spyndex(sensor_name, platform):
    spyndex = pytest.importorskip("spyndex")
    ours = get_sensor(sensor_name)
    mapping = SPYNDEX_MATCH[(sensor_name, platform)]
    described = _spyndex_platform_bands(spyndex, platform)
    assert described, f"spyndex describes no band for platform {platform!r}"

    unmapped = sorted(set(described) - set(mapping))
    assert not unmapped, (
        f"spyndex describes {platform} bands {unmapped} that SPYNDEX_MATCH does not map; "
        "add them (or None if deliberately not catalogued)"
    )
    stale = sorted(set(mapping) - set(described))
    assert not stale, f"SPYNDEX_MATCH maps {stale}, which spyndex does not describe for {platform}"

    for key, (generic, pb) in described.items():
        our_name = mapping[key]
        if our_name is None:
            # Deliberately not catalogued: make sure that is really so.
            assert _canonical(pb.band) not in {_canonical(n) for n in ours.band_names}, (
                f"{sensor_name}: spyndex {key} ({pb.band}) is marked uncatalogued but we have it"
            )
            continue
        assert our_name in ours.band_names, f"{sensor_name}: mapped band {our_name!r} does not exist"
        band = ours.band(our_name)
        ref = float(pb.wavelength)
        # Same band id as spyndex uses for this platform.
        assert _canonical(band.name) == _canonical(pb.band), (sensor_name, key, band.name, pb.band)
        # Centre within tolerance of spyndex's platform centre and inside the generic band's range.
        assert abs(band.wavelength_nm - ref) <= CENTRE_TOLERANCE_NM, (
            f"{sensor_name}/{our_name}: centre {band.wavelength_nm} nm vs spyndex {key} {ref} nm"
        )
        assert generic.min_wavelength <= band.wavelength_nm <= generic.max_wavelength, (
            f"{sensor_name}/{our_name}: centre {band.wavelength_nm} nm outside spyndex {key} range "
            f"[{generic.min_wavelength}, {generic.max_wavelength}]"
        )
        # Matching by wavelength, among the bands this table maps (so broad panchromatic and cirrus bands
        # that spyndex does not describe are left out), picks the same band as the explicit table.
        candidates = [ours.band(n) for n in mapping.values() if n is not None]
        nearest = min(candidates, key=lambda b: abs(b.wavelength_nm - ref))
        assert nearest.name == our_name, (
            f"{sensor_name}: spyndex {key} at {ref} nm is nearest to our {nearest.name}, not {our_name}"
        )
        # Widths agree to within a factor 1.5 (catches unit slips and swapped columns).
        if pb.bandwidth:
            ratio = band.bandwidth_nm / float(pb.bandwidth)
            assert 1 / 1.5 <= ratio <= 1.5, (sensor_name, our_name, band.bandwidth_nm, pb.bandwidth)


# --------------------------------------------------------------------------------------------------
# Sidecars
# --------------------------------------------------------------------------------------------------

VALID_SPEC = {
    "name": "my_camera",
    "dn_scale": 0.01,
    "dn_offset": -5,
    "nodata": 255,
    "bands": [
        {"name": "blue", "wavelength_nm": 490, "bandwidth_nm": 60, "gsd_m": 3},
        {"name": "nir", "wavelength_nm": 860, "bandwidth_nm": 40, "gsd_m": 3},
    ],
}


def _write(tmp_path, spec, suffix):
    path = tmp_path / f"sensor{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(spec))
    else:
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_valid_sidecar_loads_via_get_sensor(tmp_path, suffix):
    path = _write(tmp_path, VALID_SPEC, suffix)
    s = get_sensor(path)
    assert s.name == "my_camera"
    assert s.band_names == ["blue", "nir"]
    assert s.band("nir").wavelength_nm == 860.0
    assert (s.dn_scale, s.dn_offset, s.nodata) == (0.01, -5.0, 255.0)
    assert get_sensor(str(path)).band_names == ["blue", "nir"]  # a string path works too


def _bad_spec(bands):
    return {"name": "bad_cam", "bands": bands}


INVALID_SPECS = {
    "missing_wavelength": (
        [
            {"name": "blue", "wavelength_nm": 490, "bandwidth_nm": 60, "gsd_m": 3},
            {"name": "nir", "bandwidth_nm": 40, "gsd_m": 3},
        ],
        "nir",
        "wavelength_nm",
    ),
    "negative_width": (
        [{"name": "red", "wavelength_nm": 665, "bandwidth_nm": -30, "gsd_m": 3}],
        "red",
        "bandwidth_nm",
    ),
    "duplicated_name": (
        [
            {"name": "green", "wavelength_nm": 560, "bandwidth_nm": 30, "gsd_m": 3},
            {"name": "green", "wavelength_nm": 565, "bandwidth_nm": 30, "gsd_m": 3},
        ],
        "green",
        "twice",
    ),
    "sar_without_polarisation": (
        [{"name": "hh_band", "wavelength_nm": 55465764.66, "bandwidth_nm": 0, "gsd_m": 10, "domain": "sar"}],
        "hh_band",
        "polarisation",
    ),
}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize("case", sorted(INVALID_SPECS))
def test_invalid_sidecar_raises_naming_the_band(tmp_path, case, suffix):
    bands, bad_band, what = INVALID_SPECS[case]
    path = _write(tmp_path, _bad_spec(bands), suffix)
    with pytest.raises(SensorSpecError) as excinfo:
        get_sensor(path)
    message = str(excinfo.value)
    assert f"'{bad_band}'" in message, message
    assert what in message, message


def test_check_channels_names_the_sensor():
    s2 = get_sensor("sentinel2")
    s2.check_channels(13)  # the right count passes
    with pytest.raises(SensorSpecError, match=r"sensor 'sentinel2'") as excinfo:
        s2.check_channels(12)
    assert "12 channels" in str(excinfo.value)
    assert "13 bands" in str(excinfo.value)


def test_unknown_sensor_raises_keyerror_listing_catalogue():
    with pytest.raises(KeyError) as excinfo:
        get_sensor("no_such_sensor")
    message = str(excinfo.value)
    assert "no_such_sensor" in message
    for name in list_sensors():
        assert name in message


# --------------------------------------------------------------------------------------------------
# catalogue_table
# --------------------------------------------------------------------------------------------------


def test_catalogue_table_has_one_row_per_band():
    df = catalogue_table()
    names = list_sensors()
    assert len(df) == sum(len(get_sensor(n).bands) for n in names)
    counts = df.groupby("sensor").size().to_dict()
    assert counts == {n: len(get_sensor(n).bands) for n in names}
    assert not df.duplicated(["sensor", "band"]).any()
    for n in names:
        assert df.loc[df.sensor == n, "band"].tolist() == get_sensor(n).band_names
    sub = catalogue_table(["modis", "sentinel1"])
    assert len(sub) == 7 + 2
    assert set(sub.sensor) == {"modis", "sentinel1"}


def test_sidecar_keys_and_types_go_through_the_config_base(tmp_path):
    """Unknown top-level keys are refused (a typo must not fall back to the default scale); YAML strings
    that are unambiguous numbers are coerced; a band value of the wrong type names the band."""
    typo = {**VALID_SPEC, "dn_scal": 0.01}
    with pytest.raises(SensorSpecError, match=r"sensor 'my_camera'.*dn_scal"):
        get_sensor(_write(tmp_path, typo, ".yaml"))
    coerced = get_sensor(_write(tmp_path, {**VALID_SPEC, "dn_scale": "1e-4"}, ".yaml"))
    assert coerced.dn_scale == 1e-4
    bad_band = {**VALID_SPEC, "bands": [{"name": "red", "wavelength_nm": "abc", "bandwidth_nm": 30, "gsd_m": 3}]}
    with pytest.raises(SensorSpecError, match=r"band 'red'.*wavelength_nm.*'abc'"):
        get_sensor(_write(tmp_path, bad_band, ".yaml"))
    unknown_band_key = {**VALID_SPEC, "bands": [{**VALID_SPEC["bands"][0], "fwhm": 3}]}
    with pytest.raises(SensorSpecError, match=r"band 'blue'.*fwhm"):
        get_sensor(_write(tmp_path, unknown_band_key, ".yaml"))


@pytest.mark.parametrize(
    ("band", "words"),
    [
        ({"name": "red", "wavelength_nm": 0.665, "bandwidth_nm": 30, "gsd_m": 3}, ["red", "micrometres", "665 nm"]),
        ({"name": "mir", "wavelength_nm": 5000, "bandwidth_nm": 300, "gsd_m": 30}, ["mir", "domain: thermal"]),
        ({"name": "uv", "wavelength_nm": 120, "bandwidth_nm": 20, "gsd_m": 30}, ["uv", "300-2600 nm"]),
        (
            {"name": "t", "wavelength_nm": 10.9, "bandwidth_nm": 500, "gsd_m": 100, "domain": "thermal"},
            ["micrometres", "10900 nm"],
        ),
    ],
)
def test_implausible_wavelengths_are_refused_with_the_likely_unit(tmp_path, band, words):
    with pytest.raises(SensorSpecError) as e:
        get_sensor(_write(tmp_path, {"name": "cam", "bands": [band]}, ".yaml"))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_per_band_calibration_in_sidecar_and_catalogue(tmp_path):
    """A thermal band and the reflective bands of one product each get their own scale, offset and fill."""
    from atomizer.data.image import band_attrs

    side = tmp_path / "cam.yaml"
    side.write_text(
        "name: cam\ndn_scale: 0.0001\nnodata: 0\nbands:\n"
        "  - {name: red, wavelength_nm: 660, bandwidth_nm: 30, gsd_m: 3}\n"
        "  - {name: tir, wavelength_nm: 10900, bandwidth_nm: 600, gsd_m: 30, domain: thermal,"
        " dn_scale: 0.01, dn_offset: 15000, nodata: 65535}\n"
    )
    cam = get_sensor(side)
    assert cam.calibration("red") == (0.0001, 0.0, 0.0)
    assert cam.calibration("tir") == (0.01, 15000.0, 65535.0)
    assert band_attrs(cam.band("tir"), cam)["dn_scale"] == 0.01
    l8 = get_sensor("landsat8")
    scale, offset, _ = l8.calibration("ST_B10")  # Collection 2 ST_B10: K = DN * 0.00341802 + 149
    assert (30000 + offset) * scale == pytest.approx(30000 * 0.00341802 + 149.0)
    side.write_text(side.read_text().replace("dn_scale: 0.01", "dn_scale: hot"))
    with pytest.raises(SensorSpecError, match="tir"):
        get_sensor(side)


def test_a_sidecar_that_fails_to_parse_is_not_echoed(tmp_path):
    """A broken YAML sidecar holding a secret: the error gives the line, never the file's text."""
    path = tmp_path / "leaky.yaml"
    path.write_text("name: x\nbands:\n  - token: SECRET-hunter2: [\n")
    with pytest.raises(SensorSpecError) as err:
        Sensor.from_file(path)
    assert "not valid YAML at line" in str(err.value)
    assert "hunter2" not in str(err.value)
