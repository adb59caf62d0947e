"""The served dashboard in headless Chromium: every tab renders, a slider changes a plot's data, the
attention tab draws maps for a real tiny checkpoint.

The app runs as ``python -m atomizer serve --no-show`` in a subprocess; Playwright drives Debian's
Chromium (``/usr/bin/chromium``, installed by ``make chromium``; no browser is ever downloaded). Plot
data are read from the page's Bokeh document. Screenshots of each tab go to ``test-artifacts/``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dashboard_support import atomizer_serve, cv_store, evaluate_into, small_eurosat_root, train_tiny

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (install it with `make chromium`)"),
    pytest.mark.filterwarnings("ignore:No positive samples:UserWarning"),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The dashboard served on a free port, with a tiny checkpoint and a results store built from it; a
    folder for scenes served too (``--root``) and the map cache in a temporary folder (never the checkout)."""
    base = tmp_path_factory.mktemp("served")
    store = base / "store"
    scenes, map_cache = base / "scenes", base / "map_cache"
    scenes.mkdir()
    run = store / "run"
    ckpt = run / "checkpoints" / "best.pt"
    args = ("--results", store, "--checkpoint", ckpt, "--root", scenes, "--map-cache", map_cache)
    log = base / "serve.log"
    with atomizer_serve(*args, log=log) as (port, ready):
        # sessions read the store and checkpoint when a page opens: build them while the server starts
        train_tiny(run)
        evaluate_into(run, ckpt, small_eurosat_root(base / "eurosat_small"))
        ready()
        ARTIFACTS.mkdir(exist_ok=True)
        yield {"url": f"http://localhost:{port}/", "log": log, "run": run, "scenes": scenes, "map_cache": map_cache}


# Read from the page's Bokeh document: the first data-source column called ``key`` (or null).
JS_COLUMN = """(key) => {
  for (const doc of Bokeh.documents) for (const m of doc.all_models) {
    const d = m.data;
    if (d === undefined || d === null || typeof d !== 'object') continue;
    const v = d instanceof Map ? d.get(key) : d[key];
    if (v !== undefined && v !== null) return Array.from(v, (x) => (typeof x === 'number' ? x : String(x)));
  }
  return null;
}"""
# Every image glyph's array: shape, dtype, sum, max.
JS_IMAGES = """() => {
  const out = [];
  for (const doc of Bokeh.documents) for (const m of doc.all_models) {
    const d = m.data;
    if (d === undefined || d === null || typeof d !== 'object') continue;
    const v = d instanceof Map ? d.get('image') : d['image'];
    if (!v) continue;
    for (const a of v) {
      let s = 0, mx = -Infinity;
      for (const x of a) { s += x; mx = Math.max(mx, x); }
      out.push({shape: Array.from(a.shape || [a.length]), dtype: String(a.dtype || a.constructor.name), sum: s, max: mx});
    }
  }
  return out;
}"""


def _open(page, served) -> None:
    page.goto(served["url"])
    page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)


def _tab(page, name: str) -> None:
    page.locator(".bk-tab", has_text=re.compile(rf"^{re.escape(name)}$")).click()  # "Maps" is not "Attention maps"


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"dashboard_{name}.png"), full_page=True)


def _visible_canvas(page, timeout: float = 30_000) -> None:
    page.locator("canvas").first.wait_for(state="visible", timeout=timeout)


def test_spectral_tab_renders_and_width_slider_changes_the_encoding(page, served):
    _open(page, served)
    page.wait_for_function(f"() => ({JS_COLUMN})('custom_response') !== null", timeout=30_000)
    _visible_canvas(page)
    before = page.evaluate(JS_COLUMN, "custom_response")
    assert len(before) == 16
    assert page.evaluate(JS_COLUMN, "band_response") is not None
    assert page.evaluate(JS_COLUMN, "cosine") is not None  # the similarity heat map
    # drag the handle of the custom band's width slider to the right
    slider = page.locator(".bk-input-group", has=page.locator(".bk-slider-title", has_text="Width (nm)"))
    handle = slider.locator(".noUi-handle")
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 90, y, steps=6)
    page.mouse.up()
    page.wait_for_function(
        f"(b) => JSON.stringify(({JS_COLUMN})('custom_response')) !== JSON.stringify(b)", arg=before, timeout=20_000
    )
    after = page.evaluate(JS_COLUMN, "custom_response")
    assert sum(v > 0.1 for v in after) > sum(v > 0.1 for v in before)  # a wider band lights more anchors
    title = slider.locator(".bk-slider-title").inner_text()
    assert "Width (nm): 20" not in title
    _shot(page, "spectral_coverage")


def test_positional_tab_renders_the_code_image(page, served):
    _open(page, served)
    _tab(page, "Positional encodings")
    page.wait_for_function(f"() => ({JS_COLUMN})('offset_m') !== null", timeout=30_000)
    _visible_canvas(page)
    images = page.evaluate(JS_IMAGES)
    assert any(im["shape"] == [64, 64] for im in images), images  # size_px x size_px
    _shot(page, "positional_encodings")


def test_attention_tab_renders_maps_for_the_tiny_checkpoint(page, served):
    _open(page, served)
    _tab(page, "Attention maps")
    page.get_by_text("Top classes").wait_for(timeout=60_000)
    page.wait_for_function(
        f"() => ({JS_IMAGES})().filter((im) => im.dtype.startsWith('float')).length >= 14", timeout=30_000
    )
    _visible_canvas(page)
    assert page.get_by_text("13 bands").count() >= 1
    floats = [im for im in page.evaluate(JS_IMAGES) if im["dtype"].startswith("float")]
    # the all-band map (one latent's weights, summed over bands) and one map per band, 64 x 64 each
    assert all(im["shape"] == [64, 64] for im in floats), floats
    assert any(abs(im["sum"] - 1.0) < 1e-3 for im in floats), floats
    assert all(im["max"] > 0 for im in floats)
    mass = page.evaluate(JS_COLUMN, "mass")  # attention mass per band (bar chart) or latent x band
    assert mass is not None and all(v >= 0 for v in mass)
    _shot(page, "attention_maps")


def test_results_tab_shows_the_store(page, served):
    _open(page, served)
    _tab(page, "Results")
    page.get_by_text("paper (BigEarthNet): atomizer").wait_for(timeout=30_000)
    page.wait_for_function(f"() => ({JS_COLUMN})('score') !== null", timeout=30_000)
    _visible_canvas(page)
    groups = page.evaluate(JS_COLUMN, "group")
    assert groups is not None and {g.split(" · ")[0] for g in groups} == {"T1", "T2", "T3", "T4", "T5", "T6"}
    _shot(page, "results")
    # a run that keeps logging: the Refresh button re-reads the store
    assert page.get_by_role("cell", name="4242", exact=True).count() == 0
    with open(served["run"] / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "train", "step": 4242, "loss": 0.5}\n')
    page.get_by_role("button", name="Refresh").click()
    page.get_by_role("cell", name="4242", exact=True).wait_for(timeout=15_000)


def test_results_tab_shows_cis_and_follows_the_chosen_reference(page, tmp_path):
    """A store of repeats (Atomizer and ResNet, 2 seeds, real tiny runs): error bars and per-seed points in
    the page, the verdict against the reference, and choosing another reference in the Select redraws it."""
    store = cv_store(tmp_path / "cv")
    with atomizer_serve("--results", store, log=tmp_path / "serve.log") as (port, ready):
        ready()
        _open(page, {"url": f"http://localhost:{port}/"})
        page.locator(".bk-tab", has_text="Results").wait_for(timeout=120_000)
        _tab(page, "Results")
        page.get_by_text("against resnet, atomizer is").wait_for(timeout=120_000)
        page.wait_for_function(f"() => ({JS_COLUMN})('upper') !== null", timeout=30_000)  # the error bars
        lower, upper = page.evaluate(JS_COLUMN, "lower"), page.evaluate(JS_COLUMN, "upper")
        assert len(lower) == len(upper) >= 12 and all(lo <= hi for lo, hi in zip(lower, upper))
        _visible_canvas(page)
        means = page.evaluate(JS_COLUMN, "mean")
        assert means is not None and len(means) >= 12
        ARTIFACTS.mkdir(exist_ok=True)
        _shot(page, "results_repeats")
        select = page.locator(".bk-input-group", has=page.get_by_text("Reference model", exact=True)).locator("select")
        select.select_option("resnet")
        page.get_by_text("against atomizer, resnet is").wait_for(timeout=60_000)


def test_maps_tab_builds_a_map_in_the_background_and_switches_classes(page, served, majortom_product_dir):
    """The Maps tab on a real scene crop (1,280 m of the Major-TOM bands, written as GeoTIFFs in a served
    folder): Build map runs in the background, the map is drawn over the RGB composite with every class's
    probability under the cursor, and choosing a class redraws the layer. The map goes to the served map
    cache (a temporary folder), not into the checkout."""
    from tests.data import product_fixtures as fx

    scene = served["scenes"] / "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419"
    for band, _gsd in fx.NATIVE.items():
        data, prof = fx.crop(majortom_product_dir, band, extent_m=1280)
        fx.write_raster(scene / f"{band}.tif", data, prof)
    _open(page, served)
    _tab(page, "Maps")
    box = page.locator(".bk-input-group", has=page.get_by_text("Scene", exact=True)).locator("input")
    box.fill(str(scene))
    box.press("Enter")
    page.get_by_role("button", name="Build map").click()
    page.get_by_text("Map:").wait_for(timeout=120_000)  # built in the map pool; the page kept polling
    hover = "p_left_parenthesis_Forest_right_parenthesis"  # Bokeh's column for the vdim p(Forest)
    layer_range = """(col) => {
      for (const doc of Bokeh.documents) for (const m of doc.all_models) {
        const d = m.data;
        if (!d || typeof d !== 'object') continue;
        const get = (k) => (d instanceof Map ? d.get(k) : d[k]);
        if (!get(col)) continue;
        let lo = Infinity, hi = -Infinity, n = 0;
        for (const a of get('image')) for (const x of a) if (x === x) { lo = Math.min(lo, x); hi = Math.max(hi, x); n++; }
        const p = Array.from(get(col)[0]).filter((x) => x === x);
        return {lo, hi, n, plo: Math.min(...p), phi: Math.max(...p)};
      }
      return null;
    }"""
    page.wait_for_function(f"() => ({layer_range})('{hover}') !== null", timeout=30_000)
    assert list(served["map_cache"].glob("map_*.tif"))  # built into the configured cache, not the checkout
    _visible_canvas(page)
    shown = page.evaluate(layer_range, hover)  # the argmax layer: class indices of 10 EuroSAT classes
    assert shown["n"] > 0 and shown["lo"] >= 0 and shown["hi"] <= 9 and float(shown["hi"]).is_integer(), shown
    assert 0.0 <= shown["plo"] <= shown["phi"] <= 1.0, shown  # p(Forest) under the cursor
    layer = page.locator(".bk-input-group", has=page.get_by_text("Layer", exact=True)).locator("select")
    titles = """() => { const t = []; for (const doc of Bokeh.documents) for (const m of doc.all_models)
      if (typeof m.text === 'string' && m.text.endsWith('over the RGB composite')) t.push(m.text); return t; }"""
    # every plot titled so shows the argmax (a replaced plot can linger in the document's models a moment)
    assert set(page.evaluate(titles)) == {"argmax (most probable class) over the RGB composite"}
    layer.select_option("Forest")
    page.wait_for_function(f"() => ({titles})().includes('Forest over the RGB composite')", timeout=30_000)
    assert page.evaluate(layer_range, hover) is not None  # the hover columns are still every class's
    _shot(page, "maps")


def test_maps_tab_hover_shows_the_class_name_under_the_cursor(page, served, majortom_product_dir):
    """Over the built map, the tooltip names the most probable class (not its index) and gives every class's
    probability by name; the same with a class's probability layer shown."""
    from maps_support import SCENE_NAME, build_map, class_rows, hover_map, write_scene

    from atomizer.models.checkpoint import read_checkpoint

    classes = [str(c) for c in read_checkpoint(served["run"] / "checkpoints" / "best.pt")["extra"]["classes"]]
    assert len(classes) == 10
    scene = write_scene(served["scenes"] / SCENE_NAME, majortom_product_dir)
    _open(page, served)
    build_map(page, scene)
    for layer in (None, "Forest"):
        if layer is not None:
            select = page.locator(".bk-input-group", has=page.get_by_text("Layer", exact=True)).locator("select")
            select.select_option(layer)
            titles = """() => { const t = []; for (const doc of Bokeh.documents) for (const m of doc.all_models)
              if (typeof m.text === 'string' && m.text.endsWith('over the RGB composite')) t.push(m.text);
              return t; }"""
            page.wait_for_function(f"() => ({titles})().includes('{layer} over the RGB composite')", timeout=30_000)
            page.mouse.move(0, 0)  # off the map, so the tooltip is drawn afresh
        rows = hover_map(page)
        name, probs = class_rows(rows)
        assert name in classes, rows  # a name, not an index
        assert sorted(probs) == sorted(classes), rows
        assert abs(sum(probs.values()) - 1.0) < 0.01, rows
        assert probs[name] == max(probs.values()), rows  # the named class is the most probable one
    _shot(page, "maps_hover")
