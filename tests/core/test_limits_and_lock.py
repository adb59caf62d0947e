"""The shared bounds and the folder write lock (``atomizer.core.limits``, ``atomizer.core.storage.locked``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from atomizer.core.limits import DEFAULT_MAX_ATOMS, InputTooLargeError, check_atoms, max_atoms
from atomizer.core.storage import LockedError, locked


def test_atom_limit_names_count_and_limit(monkeypatch):
    monkeypatch.delenv("ATOMIZER_MAX_ATOMS", raising=False)
    assert max_atoms() == DEFAULT_MAX_ATOMS
    assert check_atoms(10, limit=10) == 10
    with pytest.raises(InputTooLargeError, match=r"holds 11 atoms, above the limit of 10"):
        check_atoms(11, "x.tif", limit=10)
    monkeypatch.setenv("ATOMIZER_MAX_ATOMS", "1_000")
    assert max_atoms() == 1000
    with pytest.raises(InputTooLargeError, match="1,001 atoms"):
        check_atoms(1001)
    monkeypatch.setenv("ATOMIZER_MAX_ATOMS", "lots")
    with pytest.raises(InputTooLargeError, match="whole number"):
        max_atoms()


def test_second_holder_is_refused_in_this_process_and_another(tmp_path):
    run = tmp_path / "run"
    with locked(run):
        with pytest.raises(LockedError, match="'run' is being written by another process"):
            with locked(run):
                pass
        code = (
            "import sys\nfrom atomizer.core.storage import locked, LockedError\n"
            f"try:\n    with locked({str(run)!r}):\n        sys.exit(0)\nexcept LockedError:\n    sys.exit(3)\n"
        )
        assert subprocess.run([sys.executable, "-c", code]).returncode == 3
    with locked(run):  # released when the block ended
        pass
    with locked(run, name=".other.lock"):  # another lock name is another lock
        with locked(run):
            pass
