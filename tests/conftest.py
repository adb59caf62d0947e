"""Shared fixtures: where the real data lives.

Tests read the repository's embedded slice (``data/embedded/...``), which ships with the project; a
checkout that has the full shared folder next to it (``../shared/data/...``) is used as a fallback.
All paths are relative to the repository root, never absolute machine paths.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = REPO_ROOT / "data" / "embedded"
SHARED = REPO_ROOT.parent / "shared" / "data"


def find_data(*candidates: str | Path, pattern: str | None = None) -> Path:
    """The first existing candidate (relative to the repo root), or fail the test with the places tried.

    With ``pattern``, a candidate counts only if it holds at least one path matching that glob.
    """
    tried = []
    for c in candidates:
        p = Path(c) if Path(c).is_absolute() else REPO_ROOT / c
        tried.append(str(p))
        if p.exists() and (pattern is None or next(p.glob(pattern), None) is not None):
            return p
    pytest.fail(f"real data not found; looked in: {', '.join(tried)}")


@pytest.fixture(scope="session")
def ben_patch_paths() -> list[Path]:
    """BigEarthNet patches (``<patch_id>.npz``), sorted by name."""
    d = find_data(EMBEDDED / "bigearthnet" / "patches", SHARED / "ben_real_mini" / "patches", pattern="*.npz")
    return sorted(d.glob("*.npz"))


@pytest.fixture(scope="session")
def eurosat_paths() -> list[Path]:
    """EuroSAT-MS "allBands" GeoTIFFs (``<Class>/<Class>_<n>.tif``), sorted."""
    d = find_data(EMBEDDED / "eurosat", SHARED / "eurosat_ms_real", pattern="*/*.tif")
    return sorted(d.glob("*/*.tif"))


@pytest.fixture(scope="session")
def majortom_product_dir() -> Path:
    """The Major-TOM cell 0U_199R product folder (baseline N0400, one GeoTIFF per band)."""
    cell = find_data(EMBEDDED / "majortom" / "0U_199R", SHARED / "majortom_s2l2a" / "0U_199R", pattern="*/B02.tif")
    return sorted(p.parent for p in cell.glob("*/B02.tif"))[0]


#: Debian's Chromium: the browser tests use it and never download one (``make chromium`` installs it).
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright launches Debian's Chromium (dashboards, reports)."""
    return {
        **browser_type_launch_args,
        "executable_path": str(CHROMIUM),
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1400, "height": 1000}}


#: The one tiny training run the tests share: a real Atomizer (tiny preset) trained one step on EuroSAT.
TINY_TRAIN = dict(
    model="atomizer",
    preset="tiny",
    dataset="eurosat",
    epochs=1,
    max_steps=1,
    batch_size=4,
    train_limit=4,
    val_limit=4,
    device="cpu",
)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A real tiny run folder (config, checkpoints best.pt and last.pt with optimizer state, metrics), trained
    once per session. Read-only for the tests: copy it before writing into it."""
    from atomizer.engine.training import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny") / "run"
    train(TrainConfig.from_dict({**TINY_TRAIN, "out_dir": str(out)}), progress=False)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): small
    models gain little from two, and lose a lot on a shared CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
