"""Where the project's shipped data lives (``data/`` at the repository root).

Set ``ATOMIZER_DATA`` to point the library at another copy.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The shipped data folder: sensors, modalities and the embedded real-data slice."""
    return Path(os.environ.get("ATOMIZER_DATA", REPO_ROOT / "data"))
