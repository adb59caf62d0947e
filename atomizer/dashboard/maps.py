"""Maps: a land-cover map of a whole scene over its RGB composite, built in the background.

The map is :func:`atomizer.engine.mapping.predict_map` (the same function as ``atomizer map``); this view
starts it in a worker thread (the page stays responsive, a progress bar follows it), caches the GeoTIFF
per (checkpoint, scene, window, stride) under ``cache_dir``, and draws the chosen class's probability
(or the argmax class) over the scene's RGB composite, with the window grid and the probabilities of every
class under the cursor. Use in a notebook::

    from atomizer.dashboard.maps import MapView
    view = MapView(checkpoint="runs/x/checkpoints/best.pt", scene="data/embedded/majortom/...")
    view.build(blocking=True)      # writes the map, returns its path
    view                           # the interactive view
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import holoviews as hv
import numpy as np
import panel as pn
import param

from atomizer.core.paths import data_dir
from atomizer.dashboard._common import PLOT_WIDTH, alert, error_text
from atomizer.data.readers import open_image
from atomizer.engine.attention import rgb_composite
from atomizer.engine.mapping import MAP_NODATA, predict_map

ARGMAX = "argmax (most probable class)"


def _default_scene() -> str:
    try:
        found = sorted((data_dir() / "embedded" / "majortom").glob("*/*/B02.tif"))
    except Exception:  # noqa: BLE001  (no embedded data: the user types a path)
        return ""
    return str(found[0].parent) if found else ""


class MapView(pn.viewable.Viewer):
    """A classifier's map of a scene: probabilities per class over the RGB composite."""

    checkpoint = param.String(default="", doc="Checkpoint of any model (.pt).")
    scene = param.String(default="", doc="Scene: .SAFE, Landsat C2 folder, STAC item, band folder or GeoTIFF.")
    window_m = param.Number(default=0.0, bounds=(0, None), doc="Window side in m (0: the training extent).")
    stride_m = param.Number(default=0.0, bounds=(0, None), doc="Stride in m (0: the window, no overlap).")
    layer = param.Selector(default=ARGMAX, objects=[ARGMAX], doc="Class probability (or argmax) shown.")
    cache_dir = param.String(default="runs/maps", doc="Where built maps are kept.")
    status = param.String(default="", doc="What the view is doing.")

    def __init__(self, **params):
        if not params.get("scene"):
            params["scene"] = _default_scene()
        super().__init__(**params)
        self.progress = pn.indicators.Progress(value=0, max=100, visible=False, sizing_mode="stretch_width")
        self.button = pn.widgets.Button(name="Build map", button_type="primary")
        self.button.on_click(lambda _event: self.build())
        self._thread: threading.Thread | None = None
        self._done = (0, 0)
        self._error: str | None = None
        self.map_path: Path | None = None
        self._map: tuple | None = None  # (probs (C,H,W), classes, transform bounds)
        self._periodic = None

    # ------------------------------------------------------------------ building
    def target(self) -> Path:
        """The cached map of the current inputs."""
        key = f"{Path(self.checkpoint).resolve()}|{Path(self.scene).resolve()}|{self.window_m:g}|{self.stride_m:g}"
        return Path(self.cache_dir) / f"map_{hashlib.sha256(key.encode()).hexdigest()[:12]}.tif"

    def _run(self) -> None:
        try:
            out = self.target()
            out.parent.mkdir(parents=True, exist_ok=True)
            if not out.exists():
                predict_map(
                    self.checkpoint,
                    self.scene,
                    out,
                    window_m=self.window_m or None,
                    stride_m=self.stride_m or None,
                    progress=False,
                    on_progress=lambda d, t: setattr(self, "_done", (d, t)),
                )
            self.map_path = out
        except Exception as e:  # noqa: BLE001  (shown in the page)
            self._error = error_text(e)

    def build(self, blocking: bool = False) -> Path | None:
        """Build (or load from the cache) the map of the current inputs in a worker thread."""
        if self._thread is not None and self._thread.is_alive():
            return None
        if not self.checkpoint.strip() or not self.scene.strip():
            self.status = "Give a checkpoint and a scene."
            return None
        self._error, self.map_path, self._map, self._done = None, None, None, (0, 0)
        self.status = "Building the map..."
        self.progress.visible, self.progress.value = True, 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if blocking:
            self._thread.join()
            self._poll()
            return self.map_path
        if pn.state.curdoc is not None and self._periodic is None:
            self._periodic = pn.state.add_periodic_callback(self._poll, period=500)
        return None

    def close(self) -> None:
        """Stop following a build and drop the map held for this session (the GeoTIFF stays cached)."""
        if self._periodic is not None:
            self._periodic.stop()
            self._periodic = None
        self._map = None

    def _poll(self) -> None:
        d, t = self._done
        if t:
            self.progress.value = int(100 * d / t)
        if self._thread is not None and not self._thread.is_alive():
            self.progress.visible = False
            if self._periodic is not None:
                self._periodic.stop()
                self._periodic = None
            if self._error:
                self.status = self._error
            elif self.map_path is not None:
                with param.parameterized.batch_call_watchers(self):  # the plot is drawn once, not per change
                    self._load()
                    self.status = f"Map: {self.map_path}"

    def _load(self) -> None:
        import json

        import rasterio

        with rasterio.open(self.map_path) as src:
            data = src.read()
            classes = json.loads(src.tags().get("classes", "[]")) or list(src.descriptions[:-1])
            b = src.bounds
            window_m, stride_m = float(src.tags()["window_m"]), float(src.tags()["stride_m"])
        self._map = (data, classes, (b.left, b.bottom, b.right, b.top), window_m, stride_m)
        self.param.layer.objects = [ARGMAX, *classes]
        if self.layer not in self.param.layer.objects:
            self.layer = ARGMAX
        self.param.trigger("layer")

    # ------------------------------------------------------------------ plots
    def window_grid(self) -> hv.Path:
        """The windows' outlines (one rectangle per window), in the map's coordinates."""
        data, _, (x0, y0, x1, y1), window_m, stride_m = self._map
        xs = list(np.arange(x0, x1 - window_m + 1e-6, stride_m))
        ys = list(np.arange(y1, y0 + window_m - 1e-6, -stride_m))
        if xs[-1] + window_m < x1 - 1e-6:
            xs.append(x1 - window_m)
        if ys[-1] - window_m > y0 + 1e-6:
            ys.append(y0 + window_m)
        rects = [
            [(x, y), (x + window_m, y), (x + window_m, y - window_m), (x, y - window_m), (x, y)] for x in xs for y in ys
        ]
        return hv.Path(rects).opts(color="white", line_width=0.5, alpha=0.5)

    @param.depends("layer", "status")
    def plot(self):
        if self._map is None:
            return alert(self.status or "Build a map: choose a checkpoint and a scene, then press Build map.", "info")
        data, classes, bounds, _, _ = self._map
        step = max(1, data.shape[1] // 400)  # at most ~400 px a side on screen
        sub = data[:, ::step, ::step]
        rgb = rgb_composite(open_image(self.scene))
        layers = []
        if rgb is not None:
            rs = max(1, rgb.shape[0] // 400)
            layers.append(hv.RGB(rgb[::rs, ::rs], bounds=bounds).opts(alpha=1.0))
        probs = sub[:-1]
        vdims = [f"p({c})" for c in classes]
        if self.layer == ARGMAX:
            shown = np.where(sub[-1] == MAP_NODATA, np.nan, sub[-1])
            cmap, clim, label = "Category10", (0, max(len(classes) - 1, 1)), "argmax"
        else:
            shown = np.where(probs[classes.index(self.layer)] == MAP_NODATA, np.nan, probs[classes.index(self.layer)])
            cmap, clim, label = "viridis", (0, 1), f"p({self.layer})"
        ds = hv.Dataset(
            (
                np.linspace(bounds[0], bounds[2], shown.shape[1]),
                np.linspace(bounds[3], bounds[1], shown.shape[0]),
                shown,
                *[np.where(p == MAP_NODATA, np.nan, p) for p in probs],
            ),
            ["x", "y"],
            [label, *vdims],
        )
        img = hv.Image(ds, ["x", "y"], [label, *vdims]).opts(
            cmap=cmap, clim=clim, alpha=0.6, colorbar=True, tools=["hover"], width=PLOT_WIDTH, height=PLOT_WIDTH,
            title=f"{self.layer} over the RGB composite", data_aspect=1,
        )  # fmt: skip
        return hv.Overlay([*layers, img, self.window_grid()]).opts(width=PLOT_WIDTH, height=PLOT_WIDTH)

    def __panel__(self):
        controls = pn.Column(
            pn.Param(self.param, parameters=["checkpoint", "scene", "window_m", "stride_m", "layer"], show_name=False),
            self.button,
            self.progress,
            pn.pane.Markdown(self.param.status),
            width=320,
        )
        return pn.Row(controls, self.plot)
