"""Maps: a land-cover map of a whole scene over its RGB composite, built in the background.

The map is :func:`atomizer.engine.mapping.predict_map` (the same function as ``atomizer map``); this view
runs it in the server's map pool (a few workers for every session; the page stays responsive, a progress
bar follows it), caches the GeoTIFF per (checkpoint, scene, window, stride) under ``cache_dir``, and draws
the chosen class's probability (or the argmax class) over the scene's RGB composite, with the window grid;
under the cursor, the name of the most probable class and the probability of every class
(:func:`class_hover`). Use in a notebook::

    from atomizer.dashboard.maps import MapView
    view = MapView(checkpoint="runs/x/checkpoints/best.pt", scene="data/embedded/majortom/...")
    view.build(blocking=True)      # writes the map, returns its path
    view                           # the interactive view

What one user can ask of a served dashboard is bounded:

* paths: the checkpoint and the scene are read only under the view's ``roots``;
* windows: a map has at most ``max_windows`` windows, and no more than a stride of an eighth of the window
  would give on that scene (:func:`window_cap`); above, the build is refused in one line with the count and
  the cap;
* work: builds run in one process-wide pool of :data:`MAP_WORKERS` threads; sessions asking for the same
  map (same checkpoint file, scene, window, stride and cache folder) share one build, and a build is
  cancelled (between rows of windows) when every session that asked for it has closed;
* disk: the cache folder is kept under ``cache_max_bytes``, least recently used maps out first
  (:func:`evict`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import holoviews as hv
import numpy as np
import panel as pn
import param
import xarray as xr
from bokeh.models import CustomJSHover, HoverTool
from holoviews.core.util import dimension_sanitizer

from atomizer.core.paths import data_dir
from atomizer.core.storage import locked
from atomizer.dashboard._common import (
    PLOT_WIDTH,
    Roots,
    alert,
    choice_select,
    default_roots,
    escape_text,
    file_key,
    path_choices,
    safe_error,
)
from atomizer.data.readers import open_image, open_raster
from atomizer.data.rgb import RGB_BANDS, rgb_composite
from atomizer.engine.mapping import MAP_NODATA, MapError, default_window_m, predict_map, scene_grid
from atomizer.models.checkpoint import read_checkpoint

ARGMAX = "argmax (most probable class)"

#: Threads building maps for every session of the process together.
MAP_WORKERS = 2
#: Default cap on the windows of one map.
DEFAULT_MAX_WINDOWS = 10_000
#: The stride may not go below the window divided by this (at most this^2 windows cover a pixel).
MIN_STRIDE_DIVISOR = 8
#: Default size bound of the map cache folder (bytes).
DEFAULT_CACHE_BYTES = 2 * 1024**3
#: Longest side (px) of what the page draws: the map and the RGB composite are read decimated to it.
SCREEN_PX = 400
#: A built map as the page draws it: probabilities and argmax (C+1, H, W), classes, bounds (left, bottom, right,
#: top), window and stride (m).
_Map = tuple[np.ndarray, list[str], tuple[float, float, float, float], float, float]


#: The map hover's formatter. The class names arrive as data (``names``: the map file's tags, which come from
#: a checkpoint someone sent, escaped with :func:`escape_text`), never as source; the format says what a row
#: shows: ``class`` (the value is a class index: its name) or a class index ``i`` (the value is that class's
#: probability: ``name: p``). The escaped names are turned back into their text here because Bokeh escapes
#: every formatter's output before it reaches the tooltip, which then shows each name as typed, as text.
HOVER_JS = """
const text = (s) => String(s).replace(/&#91;/g, "[").replace(/&#93;/g, "]").replace(/&lt;/g, "<")
  .replace(/&gt;/g, ">").replace(/&quot;/g, '"').replace(/&#x27;/g, "'").replace(/&amp;/g, "&");
if (format === "class") {
  const i = Math.round(Number(value));
  return i >= 0 && i < names.length ? text(names[i]) : "-";
}
const i = Number(format);
const name = Number.isInteger(i) && i >= 0 && i < names.length ? text(names[i]) : "?";
return name + ": " + Number(value).toFixed(3);
"""


def class_hover(classes: Sequence[str], class_field: str, prob_fields: Sequence[str]) -> HoverTool:
    """The hover of a map: x and y, the name of the most probable class (``class_field``: the Bokeh column of
    the argmax index, e.g. ``"@image"``), and every class's probability as ``name: p`` (``prob_fields[i]``:
    the column of class ``i``). The names reach the page only escaped, as the formatter's data."""
    if len(prob_fields) != len(classes):
        raise ValueError(f"class_hover: {len(classes)} classes but {len(prob_fields)} probability columns")
    names = CustomJSHover(args={"names": [escape_text(c) for c in classes]}, code=HOVER_JS)
    rows = [("x", "$x"), ("y", "$y"), ("class", f"{class_field}{{class}}")]
    rows += [("p" if i == 0 else "", f"{field}{{{i}}}") for i, field in enumerate(prob_fields)]
    return HoverTool(tooltips=rows, formatters=dict.fromkeys([class_field, *prob_fields], names))


def default_cache_dir() -> Path:
    """Where maps are cached when the caller names no folder: ``ATOMIZER_MAP_CACHE``, else a per-user folder
    in the system's temporary directory (never the working directory or the checkout)."""
    env = os.environ.get("ATOMIZER_MAP_CACHE")
    if env:
        return Path(env).expanduser()
    uid = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    return Path(tempfile.gettempdir()) / f"atomizer-maps-{uid}"


def _default_scene(roots: Roots) -> str:
    """The embedded Major-TOM scene, as the roots show it ("" when absent or not under the roots)."""
    try:
        found = sorted((data_dir() / "embedded" / "majortom").glob("*/*/B02.tif"))
    except OSError:  # no embedded data: the user chooses a scene
        return ""
    return roots.display(found[0].parent) if found and roots.contains(found[0].parent) else ""


class MapBuildCancelled(RuntimeError):
    """A map build stopped because every session that asked for it has closed."""


# --------------------------------------------------------------------------------------------------
# Builds: one pool, one build per target, cancelled when nobody waits for it
# --------------------------------------------------------------------------------------------------

_POOL = ThreadPoolExecutor(max_workers=MAP_WORKERS, thread_name_prefix="atomizer-map")
_BUILDS: dict[str, _Build] = {}
_LOCK = threading.RLock()
_STARTED = [0]  # predict_map calls made by the pool (a shared build counts once)


def builds_started() -> int:
    """How many maps the pool has started computing in this process (cached and shared builds not counted)."""
    return _STARTED[0]


@dataclass(eq=False)
class _Build:
    out: Path
    views: set = field(default_factory=set)
    cancel: threading.Event = field(default_factory=threading.Event)
    done: tuple[int, int] = (0, 0)
    future: Future | None = None

    def progress(self, done: int, total: int) -> None:
        """predict_map's per-row callback: record progress, tell the views, stop if nobody waits any more."""
        self.done = (done, total)
        with _LOCK:
            views = list(self.views)
        for v in views:
            v._on_build_progress(done, total)
        if self.cancel.is_set():
            raise MapBuildCancelled("the map build was cancelled: its sessions closed")


def window_cap(image: xr.Dataset, window_m: float, max_windows: int) -> int:
    """The most windows a map of ``image`` may have: ``max_windows``, and no more than windows of
    ``window_m`` every ``window_m / MIN_STRIDE_DIVISOR`` would give on this scene."""
    return min(int(max_windows), scene_grid(image, window_m, window_m / MIN_STRIDE_DIVISOR).n_windows)


def check_windows(checkpoint: Path, scene: Path, window_m: float, stride_m: float, max_windows: int) -> None:
    """Refuse a map of more windows than :func:`window_cap` allows, in one line with the count and the cap
    (only headers are read: the checkpoint's training extent, the scene's grid)."""
    window = float(window_m) if window_m else default_window_m(read_checkpoint(checkpoint)["extra"])
    stride = float(stride_m) if stride_m else window
    image = open_image(scene, lazy=True)
    n = scene_grid(image, window, stride).n_windows
    cap = window_cap(image, window, max_windows)
    if n > cap:
        raise MapError(
            f"a map with a {window:g} m window every {stride:g} m has {n:,} windows on this scene, above the cap "
            f"of {cap:,} (at most {int(max_windows):,}, and a stride of at least {window / MIN_STRIDE_DIVISOR:g} m); "
            "choose a larger stride"
        )


def evict(folder: str | Path, max_bytes: int, keep: tuple[Path, ...] = ()) -> list[Path]:
    """Delete the least recently used files of the map cache ``folder`` until it holds at most ``max_bytes``;
    files of builds in progress and ``keep`` stay. Returns what was deleted."""
    folder = Path(folder)
    with _LOCK:
        busy = {b.out.name for b in _BUILDS.values()}
    files = []
    for f in folder.glob("map_*"):
        try:
            st = f.lstat()
        except OSError:
            continue
        if f.is_file() and not f.is_symlink():
            files.append((st.st_atime, st.st_size, f))
    total = sum(size for _, size, _ in files)
    gone: list[Path] = []
    for _, size, f in sorted(files, key=lambda t: t[0]):
        if total <= max_bytes:
            break
        if f in keep or f.name.endswith(".lock") or any(f.name.startswith(b) for b in busy):
            continue
        try:
            f.unlink()
        except OSError:
            continue
        total -= size
        gone.append(f)
    return gone


def _touch(path: Path) -> None:
    """Mark a cached map as used now (access time; its modification time stays)."""
    try:
        st = path.stat()
        os.utime(path, ns=(time.time_ns(), st.st_mtime_ns))
    except OSError:
        pass


def _cache_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if hasattr(os, "getuid") and folder.stat().st_uid != os.getuid():
        raise MapError(f"the map cache folder {folder.name!r} belongs to another user; configure another one")
    return folder


def _run(build: _Build, checkpoint: Path, scene: Path, window_m: float, stride_m: float, gsd_m: float,
         max_windows: int, cache_bytes: int) -> Path:  # fmt: skip
    out = build.out
    if build.cancel.is_set():
        raise MapBuildCancelled("the map build was cancelled: its sessions closed")
    _cache_folder(out.parent)
    if not out.exists():
        check_windows(checkpoint, scene, window_m, stride_m, max_windows)
        with locked(out.parent, what="map", name=out.name + ".lock"):  # another process building it: refused
            if not out.exists():
                with _LOCK:
                    _STARTED[0] += 1
                predict_map(
                    checkpoint,
                    scene,
                    out,
                    window_m=window_m or None,
                    stride_m=stride_m or None,
                    gsd_m=gsd_m or None,
                    progress=False,
                    on_progress=build.progress,
                )
    _touch(out)
    evict(out.parent, cache_bytes, keep=(out,))
    return out


def _forget(build: _Build) -> None:
    with _LOCK:
        if _BUILDS.get(str(build.out)) is build:
            del _BUILDS[str(build.out)]


def _start(view: MapView, out: Path, *args: Any) -> _Build:
    """The build of ``out``: the one in progress (shared) or a new one in the pool; ``view`` follows it."""
    with _LOCK:
        build = _BUILDS.get(str(out))
        if build is not None and build.future is not None and not build.future.done():
            build.views.add(view)
            build.cancel.clear()  # a build its last session was leaving: wanted again
            return build
        build = _Build(out)
        _BUILDS[str(out)] = build
        build.views.add(view)
        build.future = _POOL.submit(_run, build, *args)
        build.future.add_done_callback(lambda _f: _forget(build))
        return build


def _leave(view: MapView, build: _Build) -> None:
    """``view`` no longer follows ``build``: the last one to leave cancels it."""
    with _LOCK:
        build.views.discard(view)
        if not build.views and build.future is not None and not build.future.done():
            build.cancel.set()
            build.future.cancel()  # not started yet: never runs


# --------------------------------------------------------------------------------------------------
# The view
# --------------------------------------------------------------------------------------------------


class MapView(pn.viewable.Viewer):
    """A classifier's map of a scene: probabilities per class over the RGB composite."""

    checkpoint = param.String(default="", doc="Checkpoint of any model (.pt).")
    scene = param.String(default="", doc="Scene: .SAFE, Landsat C2 folder, STAC item, band folder or GeoTIFF.")
    window_m = param.Number(default=0.0, bounds=(0, None), doc="Window side in m (0: the training extent).")
    stride_m = param.Number(default=0.0, bounds=(0, None), doc="Stride in m (0: the window, no overlap).")
    gsd_m = param.Number(
        default=0.0,
        bounds=(0, None),
        doc="Output GSD in m (0: the scene's finest; a segmentation model answers each pixel).",
    )
    layer = param.Selector[str](default=ARGMAX, objects=[ARGMAX], doc="Class probability (or argmax) shown.")
    cache_dir = param.String(default="", doc="Where built maps are kept (empty: default_cache_dir()).")
    cache_max_bytes = param.Integer(default=DEFAULT_CACHE_BYTES, bounds=(0, None), doc="Size bound of the cache.")
    max_windows = param.Integer(default=DEFAULT_MAX_WINDOWS, bounds=(1, None), doc="Most windows of one map.")
    roots = param.ClassSelector(
        class_=Roots, default=None, allow_None=True, doc="The folders whose files this view may read."
    )
    status = param.String(default="", doc="What the view is doing (escaped: shown as Markdown).")

    def __init__(self, **params):
        if params.get("cache_dir") is not None:
            params["cache_dir"] = str(params["cache_dir"])
        if params.get("roots") is None:
            params["roots"] = default_roots(params.get("checkpoint"), params.get("scene"))
        if not params.get("scene"):
            params["scene"] = _default_scene(params["roots"])
        super().__init__(**params)
        self.progress = pn.indicators.Progress(value=0, max=100, visible=False, sizing_mode="stretch_width")
        self.button = pn.widgets.Button(name="Build map", button_type="primary")
        self.button.on_click(self._clicked)
        self._build: _Build | None = None
        self._done = (0, 0)
        self.map_path: Path | None = None
        self._map: _Map | None = None  # (probs (C,H,W), classes, bounds, window_m, stride_m)
        self._rgb: tuple | None = None  # (scene, composite)
        self._periodic = None

    @property
    def served(self) -> Roots:
        """The folders this view reads under (``__init__`` always sets ``roots``)."""
        if self.roots is None:
            raise RuntimeError(f"{type(self).__name__} has no roots")
        return self.roots

    # ------------------------------------------------------------------ building
    def _paths(self) -> tuple[Path, Path]:
        return self.served.resolve(self.checkpoint, "checkpoint"), self.served.resolve(self.scene, "scene")

    def target(self) -> Path:
        """The cached map of the current inputs (the checkpoint file's version is part of the key)."""
        ckpt, scene = self._paths()
        key = f"{file_key(ckpt)}|{scene}|{self.window_m:g}|{self.stride_m:g}" + (
            f"|{self.gsd_m:g}" if self.gsd_m else ""
        )
        folder = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
        return folder.expanduser().resolve() / f"map_{hashlib.sha256(key.encode()).hexdigest()[:16]}.tif"

    def _on_build_progress(self, done: int, total: int) -> None:
        self._done = (done, total)

    def _clicked(self, _event: param.parameterized.Event) -> None:
        self.build()

    def build(self, blocking: bool = False) -> Path | None:
        """Build (or load from the cache) the map of the current inputs in the server's map pool."""
        if self._build is not None and self._build.future is not None and not self._build.future.done():
            return None
        if not self.checkpoint.strip() or not self.scene.strip():
            self.status = "Give a checkpoint and a scene."
            return None
        try:
            ckpt, scene = self._paths()
            out = self.target()
        except ValueError as e:
            self.status = safe_error(e, self.served)
            return None
        self.map_path, self._map, self._done = None, None, (0, 0)
        self.status = "Building the map..."
        self.progress.visible, self.progress.value = True, 0
        build = self._build = _start(
            self, out, ckpt, scene, self.window_m, self.stride_m, self.gsd_m, self.max_windows, self.cache_max_bytes
        )
        if blocking and build.future is not None:  # (_start always sets it)
            try:
                build.future.result()
            except (Exception, CancelledError):  # noqa: BLE001  (shown by _poll)
                pass
            self._poll()
            return self.map_path
        if pn.state.curdoc is not None and self._periodic is None:
            self._periodic = pn.state.add_periodic_callback(self._poll, period=500)
        return None

    def close(self) -> None:
        """The session closed: stop following the build (cancelled if no other session follows it) and drop
        the map held for this session (the GeoTIFF stays cached)."""
        if self._periodic is not None:
            self._periodic.stop()
            self._periodic = None
        if self._build is not None:
            _leave(self, self._build)
        self._map, self._rgb = None, None

    def _poll(self) -> None:
        d, t = self._done
        if t:
            self.progress.value = int(100 * d / t)
        future = None if self._build is None else self._build.future
        if future is None or not future.done():
            return
        self.progress.visible = False
        if self._periodic is not None:
            self._periodic.stop()
            self._periodic = None
        if future.cancelled():
            self.status = "The map build was cancelled."
            return
        error = future.exception()
        if error is not None:
            self.status = safe_error(error, self.served)
            return
        path = self.map_path = future.result()
        with param.parameterized.batch_call_watchers(self):  # the plot is drawn once, not per change
            self._load(path)
            self.status = f"Map: {escape_text(self.served.display(path))}"

    def _load(self, path: Path) -> None:
        from rasterio.enums import Resampling

        with open_raster(path) as src:
            step = max(1, math.ceil(max(src.height, src.width) / SCREEN_PX))
            if step == 1:
                data = src.read()
            else:  # read decimated (from the overviews): what the page draws, never the whole scene
                shape = (src.count, math.ceil(src.height / step), math.ceil(src.width / step))
                data = src.read(out_shape=shape, resampling=Resampling.nearest)
                probs = data[:-1]
                data[-1] = np.where((probs == MAP_NODATA).any(0), MAP_NODATA, probs.argmax(0))
            classes = json.loads(src.tags().get("classes", "[]")) or list(src.descriptions[:-1])
            b = src.bounds
            window_m, stride_m = float(src.tags()["window_m"]), float(src.tags()["stride_m"])
        self._map = (data, [str(c) for c in classes], (b.left, b.bottom, b.right, b.top), window_m, stride_m)
        self.param.layer.objects = [ARGMAX, *self._map[1]]
        if self.layer not in self.param.layer.objects:
            self.layer = ARGMAX
        self.param.trigger("layer")

    def _composite(self) -> np.ndarray | None:
        """The scene's RGB composite, read decimated to the screen (cached for this session)."""
        scene = self.served.resolve(self.scene, "scene")
        if self._rgb is None or self._rgb[0] != scene:
            image = open_image(scene, lazy=True)
            rgb = None
            if all(b in image for b in RGB_BANDS):
                step = max(1, math.ceil(max(image[RGB_BANDS[0]].shape) / SCREEN_PX))
                bands = {b: image[b].isel({d: slice(None, None, step) for d in image[b].dims}) for b in RGB_BANDS}
                try:
                    rgb = rgb_composite(xr.Dataset({b: (("y", "x"), da.values, da.attrs) for b, da in bands.items()}))
                except ValueError:  # bands on different grids: no composite
                    rgb = None
            self._rgb = (scene, rgb)
        return self._rgb[1]

    # ------------------------------------------------------------------ plots
    def window_grid(self) -> hv.Path:
        """The windows' outlines (one rectangle per window), in the map's coordinates."""
        if self._map is None:
            raise LookupError("no map built yet")
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
        step = max(1, data.shape[1] // SCREEN_PX)  # at most ~400 px a side on screen
        sub = data[:, ::step, ::step]
        try:
            rgb = self._composite()
        except (OSError, ValueError):  # the scene moved or became unreadable: the map alone
            rgb = None
        layers = []
        if rgb is not None:
            rs = max(1, rgb.shape[0] // SCREEN_PX)
            layers.append(hv.RGB(rgb[::rs, ::rs], bounds=bounds).opts(alpha=1.0))
        probs = [np.where(p == MAP_NODATA, np.nan, p) for p in sub[:-1]]
        argmax = np.where(sub[-1] == MAP_NODATA, np.nan, sub[-1])
        column = [f"@{{{dimension_sanitizer(f'p({c})')}}}" for c in classes]  # Bokeh's column of p(class)
        more = [(f"p({c})", p) for c, p in zip(classes, probs, strict=True)]
        if self.layer == ARGMAX:
            shown, label, class_field = argmax, "argmax", "@image"
            cmap, clim, clabel = "Category10", (0, max(len(classes) - 1, 1)), "argmax"
        else:  # the layer's probability is the image; the argmax is a hover column
            shown, label, class_field = probs[classes.index(self.layer)], "probability", "@{argmax}"
            more.insert(0, ("argmax", argmax))
            cmap, clim, clabel = "viridis", (0, 1), f"p({self.layer})"
        ds = hv.Dataset(
            (
                np.linspace(bounds[0], bounds[2], shown.shape[1]),
                np.linspace(bounds[3], bounds[1], shown.shape[0]),
                shown,
                *[v for _, v in more],
            ),
            ["x", "y"],
            [label, *[n for n, _ in more]],
        )
        img = hv.Image(ds, ["x", "y"], [label, *[n for n, _ in more]]).opts(
            cmap=cmap, clim=clim, clabel=clabel, alpha=0.6, colorbar=True, width=PLOT_WIDTH, height=PLOT_WIDTH,
            tools=[class_hover(classes, class_field, column)], title=f"{self.layer} over the RGB composite",
            data_aspect=1,
        )  # fmt: skip
        return hv.Overlay([*layers, img, self.window_grid()]).opts(width=PLOT_WIDTH, height=PLOT_WIDTH)

    def __panel__(self):
        controls = pn.Column(
            choice_select(self, "checkpoint", path_choices(self.served, "**/*.pt"), "Checkpoints"),
            choice_select(
                self, "scene", path_choices(self.served, "**/B02.tif", "**/*.SAFE/MTD_MSIL*.xml", parent=True), "Scenes"
            ),
            pn.Param(
                self.param,
                parameters=["checkpoint", "scene", "window_m", "stride_m", "gsd_m", "layer"],
                show_name=False,
            ),
            self.button,
            self.progress,
            pn.pane.Markdown(self.param.status),
            width=320,
        )
        return pn.Row(controls, self.plot)
