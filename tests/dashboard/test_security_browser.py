"""Stored XSS in the served dashboard (issue 23), in headless Chromium: a store whose run folder, model label
and modality name hold HTML (written on purpose, under tmp_path) is served with ``atomizer serve``; the Results
tab shows the names as text, no injected element exists in the page and no injected handler ran. The same for
a checkpoint whose class names hold HTML, in the Maps tab's tooltip over a built map.

Playwright drives Debian's Chromium (``/usr/bin/chromium``, installed by ``make chromium``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dashboard_support import (
    DASH_HOSTILE_LABEL,
    DASH_HOSTILE_MODALITY,
    DASH_HOSTILE_RUN,
    atomizer_serve,
    dash_hostile_store,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
#: A class name holding HTML, for the Maps tab's tooltip.
MAPS_HOSTILE_CLASS = "<img src=x onerror=window.__xss=4>"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (install it with `make chromium`)"),
]


def test_dash_hostile_store_names_render_as_text(page, tmp_path):
    store = dash_hostile_store(tmp_path / "store")
    with atomizer_serve("--results", store, "--no-warm", log=tmp_path / "serve.log") as (port, ready):
        ready()
        page.goto(f"http://localhost:{port}/")
        page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)
        tab = page.locator(".bk-tab", has_text=re.compile(r"^Results$"))
        tab.wait_for(timeout=120_000)
        tab.click()
        # the runs table (the hostile run folder) and the verdict (the hostile model label) are rendered
        page.get_by_role("cell", name=DASH_HOSTILE_RUN, exact=True).first.wait_for(timeout=120_000)
        page.get_by_text("Verdict.").first.wait_for(timeout=120_000)
        assert page.get_by_text(DASH_HOSTILE_LABEL).count() >= 1  # shown as text
        assert page.get_by_text(DASH_HOSTILE_MODALITY).count() >= 1
        assert page.locator('img[src="x"]').count() == 0  # no injected element, in the page or a shadow root
        assert page.evaluate("() => document.querySelectorAll('img[src=\"x\"]').length") == 0
        assert page.evaluate("() => window.__xss") is None  # no injected handler or script ran


def test_hostile_class_name_in_the_maps_tooltip_renders_as_text(page, tmp_path, majortom_product_dir):
    """A checkpoint whose class names hold HTML (written on purpose, under tmp_path): the Maps tab builds its
    map and the tooltip over it shows the names as text; no injected element exists and no handler ran."""
    import torch
    from maps_support import SCENE_NAME, build_map, class_rows, hover_map, write_scene

    from atomizer.models.checkpoint import save_checkpoint
    from atomizer.models.registry import build_model

    classes = [MAPS_HOSTILE_CLASS, "Roads & rails [x](y)", *[f"class{i}" for i in range(8)]]
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path / "runs" / "evil.pt",
        build_model("atomizer", "tiny", num_classes=len(classes)),
        {"classes": classes, "multilabel": False, "train_modalities": "eurosat_train"},
    )
    scenes = tmp_path / "scenes"
    args = ("--results", tmp_path / "runs", "--checkpoint", ckpt, "--root", scenes, "--no-warm")
    with atomizer_serve(*args, "--map-cache", tmp_path / "map_cache", log=tmp_path / "serve.log") as (port, ready):
        scene = write_scene(scenes / SCENE_NAME, majortom_product_dir)
        ready()
        page.goto(f"http://localhost:{port}/")
        page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)
        page.locator(".bk-tab", has_text=re.compile(r"^Maps$")).wait_for(timeout=120_000)
        build_map(page, scene)
        name, probs = class_rows(hover_map(page))
        assert name in classes  # the class under the cursor, by name
        assert sorted(probs) == sorted(classes)  # every name as typed, as text (not &lt;...&gt;)
        assert page.locator('img[src="x"]').count() == 0  # no injected element, in the page or a shadow root
        assert page.evaluate("() => document.querySelectorAll('img[src=\"x\"]').length") == 0
        assert page.evaluate("() => window.__xss") is None  # no injected handler or script ran
