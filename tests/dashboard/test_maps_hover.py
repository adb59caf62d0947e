"""The Maps tab's hover: the class NAME under the cursor (and every class's probability), the names passed to
the page as the formatter's data, escaped, never spliced into its code.

The map is real: an (untrained) tiny Atomizer checkpoint whose class names include HTML (written on purpose,
under tmp_path) run by ``predict_map`` on a 1,280 m crop of the embedded Major-TOM scene.
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pytest
import torch
from bokeh.document import Document
from bokeh.models import CustomJSHover, HoverTool

from atomizer.dashboard._common import Roots, escape_text
from atomizer.dashboard.maps import ARGMAX, HOVER_JS, MapView, class_hover
from atomizer.models.checkpoint import save_checkpoint
from atomizer.models.registry import build_model

HOSTILE = "<img src=x onerror=window.__xss=7>"
#: Ten class names: a hostile one, one with Markdown and HTML specials, the rest EuroSAT's.
CLASSES = [HOSTILE, "Roads & rails [x](y)", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
           "Pasture", "PermanentCrop", "Residential", "SeaLake"]  # fmt: skip


@pytest.fixture(scope="module")
def hostile_map(tmp_path_factory, majortom_product_dir):
    """A MapView with a built map whose classes are ``CLASSES``."""
    from tests.data import product_fixtures as fx

    root = tmp_path_factory.mktemp("hover")
    torch.manual_seed(0)
    model = build_model("atomizer", "tiny", num_classes=len(CLASSES))
    meta = {"classes": CLASSES, "multilabel": False, "train_modalities": "eurosat_train"}
    save_checkpoint(root / "served" / "ckpt.pt", model, meta)
    scene = root / "served" / "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419"
    for band in fx.NATIVE:
        data, prof = fx.crop(majortom_product_dir, band, extent_m=1280)
        fx.write_raster(scene / f"{band}.tif", data, prof)
    view = MapView(
        checkpoint="served/ckpt.pt",
        scene=f"served/{scene.name}",
        roots=Roots({"served": root / "served"}),
        cache_dir=root / "maps",
    )
    assert view.build(blocking=True) is not None, view.status
    return view


def _hover(view: MapView):
    """The rendered figure, its class hover and the data source of the map image it inspects."""
    fig = hv.render(view.plot())
    hovers = [t for t in fig.tools if isinstance(t, HoverTool) and t.formatters]
    assert len(hovers) == 1, fig.tools
    (hover,) = hovers
    (renderer,) = hover.renderers
    return fig, hover, renderer.data_source.data


def _field(spec: str) -> str:
    """``@{name}{fmt}`` / ``@name{fmt}`` -> name."""
    name = spec[1:].split("}{")[0] if spec.startswith("@{") else spec[1:].split("{")[0]
    return name.strip("{}")


@pytest.mark.parametrize("layer", [ARGMAX, "Forest"])
def test_the_map_hover_names_the_class_under_the_cursor_with_names_escaped(hostile_map, layer):
    view = hostile_map
    assert view.param.layer.objects[1:] == CLASSES
    view.layer = layer
    fig, hover, data = _hover(view)
    formatters = set(hover.formatters.values())
    assert len(formatters) == 1
    (names,) = formatters
    assert isinstance(names, CustomJSHover)
    # the names are data, escaped; the code is the module's, whatever the names
    assert names.args["names"] == [escape_text(c) for c in CLASSES]
    assert names.args["names"][0] == "&lt;img src=x onerror=window.__xss=7&gt;"
    assert names.args["names"][1] == "Roads &amp; rails &#91;x&#93;(y)"
    assert names.code == HOVER_JS and not any(c in names.code for c in ("img", "Roads", "Forest"))
    # the rows: x, y, the class (an index column formatted as its name), then one probability per class
    labels = [label for label, _ in hover.tooltips]
    assert labels == ["x", "y", "class", "p", *[""] * (len(CLASSES) - 1)]
    assert all("<" not in v and HOSTILE not in v for _, v in hover.tooltips)
    class_spec = hover.tooltips[2][1]
    assert class_spec.endswith("{class}")
    index = np.asarray(data[_field(class_spec)][0], dtype=float)
    valid = index[np.isfinite(index)]
    assert valid.size > 0 and np.array_equal(valid, np.round(valid)) and valid.min() >= 0
    assert valid.max() <= len(CLASSES) - 1
    for i, (_, spec) in enumerate(hover.tooltips[3:]):
        assert spec.endswith(f"{{{i}}}")  # the format names the class the column holds
        p = np.asarray(data[_field(spec)][0], dtype=float)
        assert p.shape == index.shape and np.nanmin(p) >= 0 and np.nanmax(p) <= 1
        assert hover.formatters[spec[: -len(f"{{{i}}}")]] is names
    # the probabilities sum to one where the map has a value, and the argmax is the most probable class
    probs = np.stack([np.asarray(data[_field(s)][0], dtype=float) for _, s in hover.tooltips[3:]])
    ok = np.isfinite(index)
    np.testing.assert_allclose(probs[:, ok].sum(0), 1.0, atol=1e-3)
    assert np.array_equal(probs[:, ok].argmax(0), index[ok].astype(int))
    if layer == ARGMAX:  # nowhere in the document sent to the page is the hostile name raw
        doc = Document()
        doc.add_root(fig)
        sent = str(doc.to_json())
        assert HOSTILE not in sent and escape_text(HOSTILE) in sent


def test_class_hover_needs_one_probability_column_per_class():
    hover = class_hover(["a", "b"], "@image", ["@{pa}", "@{pb}"])
    assert [label for label, _ in hover.tooltips] == ["x", "y", "class", "p", ""]
    with pytest.raises(ValueError, match="2 classes but 1 probability columns"):
        class_hover(["a", "b"], "@image", ["@{pa}"])
