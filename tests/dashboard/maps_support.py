"""Helpers of the Maps tab's browser tests (not a test module): a real scene crop, and the map's tooltip read
from the page after moving the mouse over the map."""

from __future__ import annotations

from pathlib import Path

#: A Sentinel-2 product name for the scene folder (the scene is a crop of the embedded Major-TOM product).
SCENE_NAME = "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419"


def write_scene(folder: Path, product: Path, extent_m: int = 1280) -> Path:
    """A real ``extent_m`` crop of the embedded Major-TOM ``product``, one GeoTIFF per band, in ``folder``."""
    from tests.data import product_fixtures as fx

    for band in fx.NATIVE:
        data, prof = fx.crop(product, band, extent_m=extent_m)
        fx.write_raster(folder / f"{band}.tif", data, prof)
    return folder


def build_map(page, scene: Path, timeout: float = 120_000) -> None:
    """In the open page: the Maps tab, ``scene`` typed in the Scene box, Build map pressed, the map built."""
    import re

    page.locator(".bk-tab", has_text=re.compile(r"^Maps$")).click()
    box = page.locator(".bk-input-group", has=page.get_by_text("Scene", exact=True)).locator("input")
    box.fill(str(scene))
    box.press("Enter")
    page.get_by_role("button", name="Build map").click()
    page.get_by_text("Map:").wait_for(timeout=timeout)


def hover_map(page) -> list[tuple[str, str]]:
    """Move the mouse over the drawn map until its tooltip shows (a grid of points over the largest visible
    canvas, the map's); returns the tooltip's rows as (label, value), labels without their colon."""
    import re

    canvases = page.locator("canvas:visible")
    canvases.first.wait_for(timeout=30_000)
    boxes = [b for b in (canvases.nth(i).bounding_box() for i in range(canvases.count())) if b]
    box = max(boxes, key=lambda b: b["width"] * b["height"])
    tooltip = page.locator(".bk-tooltip-content:visible")
    class_label = tooltip.locator(".bk-tooltip-row-label", has_text=re.compile(r"^\s*class:\s*$"))
    for fy in (0.5, 0.4, 0.6, 0.3, 0.7):
        for fx in (0.4, 0.3, 0.5, 0.2, 0.6):
            page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=3)
            try:
                class_label.first.wait_for(timeout=2_000)
            except Exception:  # noqa: BLE001  (playwright's TimeoutError: not over the map, try another point)
                continue
            rows = tooltip.first.locator(".bk-tooltip-row-label")
            values = tooltip.first.locator(".bk-tooltip-row-value")
            labels = [t.strip().removesuffix(":") for t in rows.all_inner_texts()]
            return list(zip(labels, [t.strip() for t in values.all_inner_texts()], strict=True))
    raise AssertionError("no map tooltip appeared over the map")


def class_rows(rows: list[tuple[str, str]]) -> tuple[str, dict[str, float]]:
    """The tooltip's class under the cursor and the probability of each class (``name: p`` rows)."""
    labels = [label for label, _ in rows]
    i = labels.index("class")
    probs = {}
    for _, value in rows[i + 1 :]:
        name, _, p = value.rpartition(": ")
        probs[name] = float(p)
    return rows[i][1], probs
