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


# --------------------------------------------------------------------------------------------------
# Every import is declared
# --------------------------------------------------------------------------------------------------

#: Folders whose imports must all be declared (runtime, an extra, or dev).
IMPORT_FOLDERS = ("atomizer", "dashboards", "scripts", "notebooks", "tests")
#: Modules of this repository that tests import by name (not distributions): the package, and every module of tests/.
LOCAL_MODULES = {"atomizer", "tests"} | {p.stem for p in (Path(__file__).resolve().parent).rglob("*.py")}


def _requirement_name(req: str) -> str:
    import re

    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _imported_modules() -> dict[str, set[str]]:
    """Top-level module -> files (relative) that import it, over the .py files and notebook code cells."""
    import ast
    import json

    found: dict[str, set[str]] = {}
    for folder in IMPORT_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix == ".py":
                text = path.read_text()
            elif path.suffix == ".ipynb" and ".ipynb_checkpoints" not in path.parts:
                cells = json.loads(path.read_text())["cells"]
                code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
                text = "\n".join(ln for ln in code.splitlines() if not ln.lstrip().startswith(("%", "!")))
            else:
                continue
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(path.relative_to(ROOT).as_posix())
    return found


def test_every_third_party_import_is_declared():
    """Each module imported under atomizer/, dashboards/, scripts/, notebooks/ and tests/ belongs to a
    distribution pyproject.toml declares (runtime, an extra, or dev): a fresh `make setup` can run it."""
    import importlib.metadata

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    for reqs in project["optional-dependencies"].values():
        declared |= {_requirement_name(r) for r in reqs}
    distributions = importlib.metadata.packages_distributions()
    undeclared = []
    for module, files in sorted(_imported_modules().items()):
        if module in sys.stdlib_module_names or module in LOCAL_MODULES:
            continue
        # a module that is not installed is known by its own name (e.g. an optional extra's)
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not dists & declared:
            undeclared.append(f"{module} ({sorted(dists)}; imported by {sorted(files)[0]})")
    assert not undeclared, "imported but not declared in pyproject.toml: " + "; ".join(undeclared)
    assert project["optional-dependencies"]["distributed"] == ["distributed>=2024.1"]


def test_dependency_floors_exclude_vulnerable_releases():
    """torch >= 2.6 (CVE-2025-32434: weights_only), bokeh >= 3.8.2 (CVE-2026-21883), pyarrow >= 14.0.1
    (CVE-2023-47248); the installed versions satisfy every floor."""
    import importlib.metadata
    import re

    import tomllib

    reqs = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {_requirement_name(r): re.search(r">=\s*([\d.]+)", r).group(1) for r in reqs if ">=" in r}
    as_tuple = lambda v: tuple(int(x) for x in re.findall(r"\d+", v)[:3])  # noqa: E731
    for name, floor in {"torch": "2.6", "bokeh": "3.8.2", "pyarrow": "14.0.1", "filelock": "3.13.1"}.items():
        assert as_tuple(floors[name]) >= as_tuple(floor), (name, floors[name])
    for name, floor in floors.items():
        installed = importlib.metadata.version(name)
        assert as_tuple(installed) >= as_tuple(floor), f"{name} {installed} is below the floor {floor}"
