"""The environment files agree: environment.yml installs the package defined by pyproject.toml."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_consistent_with_pyproject():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    # python and pip are pinned
    assert any(re.fullmatch(r"python=3\.\d+", d) for d in conda)
    assert any(re.fullmatch(r"pip=[\d.]+", d) for d in conda)
    # the pinned python satisfies requires-python
    minor = int(next(d for d in conda if d.startswith("python=")).split(".")[1])
    assert minor >= int(py["project"]["requires-python"].split(".")[1])
    # the pip section installs this package with its dev extra, and torch at the release CI uses
    assert "-e .[dev]" in pip
    assert "torch==2.13.0" in pip
    torch_req = next(r for r in py["project"]["dependencies"] if _name(r) == "torch")
    lo = re.search(r">=\s*([\d.]+)", torch_req).group(1)
    hi = re.search(r"<\s*([\d.]+)", torch_req).group(1)
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(lo) <= (2, 13, 0) < as_tuple(hi)
    # everything else the pip section names is declared in pyproject
    declared = {_name(r) for r in py["project"]["dependencies"]}
    declared |= {_name(r) for extra in py["project"]["optional-dependencies"].values() for r in extra}
    for req in pip:
        if req.startswith("-e"):
            continue
        assert _name(req) in declared, f"environment.yml installs {req} that pyproject.toml does not declare"


def test_required_packages_declared():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {_name(r) for r in py["project"]["dependencies"]}
    declared |= {_name(r) for r in py["project"]["optional-dependencies"]["dev"]}
    for pkg in (
        "torch",
        "jupyterlab",
        "panel",
        "holoviews",
        "xarray",
        "rioxarray",
        "matplotlib",
        "papermill",
        "pytest",
    ):
        assert pkg in declared, pkg
    assert py["project"]["scripts"]["atomizer"] == "atomizer.cli:main"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert re.search(r"^make test\b", ci, re.M)
