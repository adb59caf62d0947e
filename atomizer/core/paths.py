"""Where the library finds its data.

* Package data (always there, also in a wheel): the sensor tables and the modality sets, read with
  :mod:`importlib.resources` from ``atomizer/data/sensors`` and ``atomizer/data/modality_sets``.
* The embedded real-data slice (``data/embedded``, 34 MB, not in the wheel): from ``ATOMIZER_DATA`` (a
  folder holding ``embedded/``) if set, else from the repository this package was loaded from, else from
  ``./data`` of the working directory. :func:`embedded_dir` names every place it looked when none has it.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

#: The checkout holding this package when it runs from a source tree (editable install or ``python -m``).
REPO_ROOT = Path(__file__).resolve().parents[2]


class DataNotFoundError(FileNotFoundError):
    """The embedded dataset is in none of the places the library looks."""


def package_data(*parts: str) -> Path:
    """A folder or file shipped inside the package (``atomizer/data/...``)."""
    return Path(str(files("atomizer.data").joinpath(*parts)))


def sensors_dir() -> Path:
    """The catalogued sensor tables (one YAML per sensor)."""
    return package_data("sensors")


def modality_sets_dir() -> Path:
    """The shipped modality sets (one YAML per set)."""
    return package_data("modality_sets")


def _candidates() -> list[tuple[str, Path]]:
    out = []
    if os.environ.get("ATOMIZER_DATA"):
        out.append(("ATOMIZER_DATA", Path(os.environ["ATOMIZER_DATA"])))
    out.append(("the repository", REPO_ROOT / "data"))
    cwd = Path.cwd() / "data"
    if cwd.resolve() != (REPO_ROOT / "data").resolve():
        out.append(("the working directory", cwd))
    return out


def data_dir() -> Path:
    """The folder holding ``embedded/``: ``ATOMIZER_DATA``, the repository's ``data/`` or ``./data``.

    Raises:
        DataNotFoundError: none of them holds ``embedded/`` (the message names each place looked at).
    """
    tried = _candidates()
    for _, p in tried:
        if (p / "embedded").is_dir():
            return p
    looked = "; ".join(f"{what}: {p}" for what, p in tried)
    hint = "" if os.environ.get("ATOMIZER_DATA") else " (ATOMIZER_DATA is not set)"
    raise DataNotFoundError(
        f"the embedded data (a folder 'embedded/') was not found{hint}; looked in {looked}. "
        "Set ATOMIZER_DATA to a copy of the repository's data/ folder"
    )


def embedded_dir() -> Path:
    """``<data_dir>/embedded``: the embedded real-data slice."""
    return data_dir() / "embedded"
