"""A regular (non-editable) install works: the wheel holds the sensor tables and modality sets, and an
install of it, run from outside the repository, lists sensors and inspects a real file."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=out,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("atomizer-*.whl")
    return whl


def test_wheel_holds_the_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for sensor in ("sentinel2", "sentinel1", "landsat8", "landsat9", "modis", "enmap"):
        assert f"atomizer/data/sensors/{sensor}.yaml" in names
    assert "atomizer/data/modality_sets/eurosat_test.yaml" in names
    assert not any(n.startswith(("tests/", "data/embedded")) for n in names)


def test_installed_wheel_lists_sensors_and_inspects_a_file(wheel, tmp_path, eurosat_paths):
    site = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("ATOMIZER_DATA", None)
    code = (
        "import atomizer, sys; from atomizer.cli import main; "
        "assert atomizer.__file__.startswith(sys.argv[1]), atomizer.__file__; "
        "sys.exit(main(sys.argv[2:]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(site), "sensors"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sentinel2" in out.stdout and "B8A" in out.stdout
    tif = Path(eurosat_paths[0]).resolve()
    out = subprocess.run(
        [sys.executable, "-c", code, str(site), "inspect", str(tif)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "total atom tokens" in out.stdout
    # the embedded dataset is not in the wheel: a clear one-line error names where it looked
    out = subprocess.run(
        [sys.executable, "-c", "from atomizer.core.paths import embedded_dir; embedded_dir()"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode != 0 and "ATOMIZER_DATA" in out.stderr and "the repository" in out.stderr
