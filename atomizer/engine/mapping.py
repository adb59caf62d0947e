"""Land-cover maps: a classifier slid over a whole scene, written as a georeferenced GeoTIFF.

The scene is cut into windows of the ground extent the model was trained on (the largest extent of its
training modalities unless ``window_m`` says otherwise), every window tokenized at native resolution
(each band on its own grid, nothing resampled: :func:`atomizer.data.modalities.simulate` at the scene's
finest GSD) and classified in batches. Each output pixel (the scene's finest grid) holds the class
probabilities averaged over the windows that cover it (``stride_m < window_m`` overlaps them), plus
the argmax class. Memory is bounded by the scene's width, not its size: the scene is opened lazily (``open_image(...,
lazy=True)``) and read one strip of windows at a time (:func:`strip`), windows are streamed one row at a
time, and only the output rows not yet written (at most one 256-row tile strip plus a window) are held;
finished strips go to disk.

An interrupted run resumes where it stopped (``resume=True``, the default): the output is written to
``<out>.partial.tif`` with a progress record ``<out>.progress.json`` updated atomically after each
finished block of rows, and renamed to ``<out>`` once complete.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from atomizer.atoms.canvas import CanvasSpec, EmptyCanvasError
from atomizer.atoms.dense import DenseQueries
from atomizer.atoms.tokens import EmptyTokenSetError
from atomizer.core.storage import atomic_write_json
from atomizer.data.bands import Sensor
from atomizer.data.light import LightImage, Raster, common_frame
from atomizer.data.modalities import NATIVE, Modality, load_modalities, simulate
from atomizer.data.readers import GDAL_LOCAL_ONLY, image_bands, open_image, valid_mask
from atomizer.engine.loaders import model_input
from atomizer.models.checkpoint import load_trained
from atomizer.models.registry import input_type, is_dense

_STRIP = 256  # output rows per write: the GeoTIFF's tile height
_GDAL_CACHE_MB = 64  # GDAL block cache while a map is read and written

#: Fill value of every band of a map (probabilities lie in [0, 1], the argmax band holds class indices).
MAP_NODATA = -1.0


class MapError(ValueError):
    """A map cannot be made from these inputs (window larger than the scene, inconsistent options...)."""


@dataclass(frozen=True)
class WindowGrid:
    """The scene's finest grid and the windows laid over it (pixel units of that grid)."""

    gsd_m: float
    width: int
    height: int
    left: float
    top: float
    window_px: int
    xs: tuple[int, ...]  # window left columns
    ys: tuple[int, ...]  # window top rows
    in_gsd_m: float = 0.0  # the scene's finest GSD, what windows are read at (0: the output's, ``gsd_m``)

    @property
    def input_gsd_m(self) -> float:
        return self.in_gsd_m or self.gsd_m

    def window_modality(self, bands: Sequence[str]) -> Modality:
        """The window as read from the scene: its extent at the scene's finest GSD, every band native."""
        return Modality(
            "map_window", int(round(self.window_px * self.gsd_m / self.input_gsd_m)), self.input_gsd_m, tuple(bands)
        )

    @property
    def n_windows(self) -> int:
        return len(self.xs) * len(self.ys)


def _offsets(size: int, window: int, stride: int) -> tuple[int, ...]:
    """Window starts every ``stride`` px, plus one flush with the far edge so the whole size is covered."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return tuple(starts)


def _frame_only(image: xr.Dataset) -> LightImage:
    """The bands' grids without their values (nothing read from a lazy image), for :func:`common_frame`."""
    bands = {}
    for b in image_bands(image):
        da = image[b]
        ydim, xdim = (str(d) for d in da.dims)
        bands[b] = Raster(
            np.empty((0, 0)), np.asarray(da[xdim].values), np.asarray(da[ydim].values), (ydim, xdim), da.attrs
        )
    return LightImage(bands, dict(image.attrs))


def strip(image: xr.Dataset, grid: WindowGrid, y0: int) -> tuple[LightImage, float]:
    """The rows of every band under the window row starting at grid row ``y0`` (plus one pixel of the band
    above and below), read now (a lazy image reads only these), and the ``dy`` offset of the window top from
    the strip's frame: what :func:`simulate` needs to cut that row's windows exactly as from the whole
    scene (every column is kept, so ``dx`` is unchanged)."""
    top_m = grid.top - y0 * grid.gsd_m
    bottom_m = top_m - grid.window_px * grid.gsd_m
    out = {}
    for b in image_bands(image):
        da = image[b]
        ydim, xdim = (str(d) for d in da.dims)
        g = float(da.attrs["gsd_m"])
        ys = np.asarray(da[ydim].values)  # pixel centres, decreasing
        r0 = max(0, int(math.floor((float(ys[0]) + g / 2 - top_m) / g + 1e-6)) - 1)
        r1 = min(len(ys), int(math.ceil((float(ys[0]) + g / 2 - bottom_m) / g - 1e-6)) + 1)
        part = da.isel({ydim: slice(r0, r1)})
        out[b] = Raster(np.asarray(part.values), np.asarray(da[xdim].values), ys[r0:r1], (ydim, xdim), dict(da.attrs))
    light = LightImage(out, dict(image.attrs))
    strip_top = common_frame(light)[1]
    return light, strip_top - top_m


def scene_grid(image: xr.Dataset, window_m: float, stride_m: float, gsd_m: float | None = None) -> WindowGrid:
    """Lay windows of ``window_m`` every ``stride_m`` over the output grid: the image's finest grid, or a grid
    of ``gsd_m`` metres over the same ground (a dense model answers at any GSD; windows are still read at the
    scene's finest GSD)."""
    if stride_m <= 0 or window_m <= 0:
        raise MapError(f"window ({window_m:g} m) and stride ({stride_m:g} m) must be positive")
    if stride_m > window_m:
        raise MapError(f"stride {stride_m:g} m exceeds the window {window_m:g} m: the map would have gaps")
    if gsd_m is not None and not gsd_m > 0:
        raise MapError(f"the output GSD must be positive, got {gsd_m:g} m")
    # the ground all bands cover (the frame of :func:`simulate`), on the finest grid
    left, top, width_m, height_m, g_in = common_frame(_frame_only(image))
    g = float(gsd_m) if gsd_m else g_in
    for what, grid_g in (("output", g), ("scene", g_in)):
        if abs(window_m / grid_g - round(window_m / grid_g)) > 1e-6:
            raise MapError(
                f"the window ({window_m:g} m) is not a whole number of {what} pixels ({grid_g:g} m); pass a --window-m "
                f"that is a multiple of {grid_g:g}"
            )
    width, height = int(math.floor(width_m / g + 1e-6)), int(math.floor(height_m / g + 1e-6))
    w = int(round(window_m / g))
    s = max(1, int(round(stride_m / g)))
    if w > width or w > height:
        raise MapError(
            f"the window ({window_m:g} m = {w} px at {g:g} m) is larger than the scene ({width} x {height} px); "
            "pass a smaller --window-m"
        )
    return WindowGrid(g, width, height, left, top, w, _offsets(width, w, s), _offsets(height, w, s), g_in)


def default_window_m(extra: dict[str, Any]) -> float:
    """The ground extent a checkpoint was trained on: the largest extent of its training modalities."""
    name = extra.get("train_modalities")
    if not name:
        raise MapError("the checkpoint records no training modalities; pass --window-m")
    if name == NATIVE:
        raise MapError("the checkpoint was trained on whole images as read (modalities 'native'); pass --window-m")
    return max(m.extent_m for m in load_modalities(name))


def _fingerprint(checkpoint: Path, scene: Path, grid: WindowGrid, bands: list[str]) -> str:
    h = hashlib.sha256()
    st = checkpoint.stat()
    h.update(f"{checkpoint.resolve()}|{st.st_size}|{st.st_mtime_ns}|{scene.resolve()}".encode())
    h.update(
        json.dumps(
            [grid.gsd_m, grid.input_gsd_m, grid.width, grid.height, grid.window_px, grid.xs, grid.ys, bands]
        ).encode()
    )
    return h.hexdigest()[:16]


def _scene_valid(image: xr.Dataset, grid: WindowGrid, row0: int = 0, row1: int | None = None) -> np.ndarray:
    """True where any band of the scene's finest grid holds a valid value under the centre of each output
    pixel of rows ``row0:row1`` (the map is nodata elsewhere); only those rows are read."""
    row1 = grid.height if row1 is None else row1
    g_in, g = grid.input_gsd_m, grid.gsd_m
    # the finest-grid rows and columns under the output pixel centres
    in_rows = np.floor(((np.arange(row0, row1) + 0.5) * g) / g_in).astype(np.int64)
    in_cols = np.floor(((np.arange(grid.width) + 0.5) * g) / g_in).astype(np.int64)
    a, b = int(in_rows.min()), int(in_rows.max()) + 1
    width_in = int(in_cols.max()) + 1
    ok = np.zeros((b - a, width_in), bool)
    for band in image_bands(image):
        da = image[band]
        if float(da.attrs["gsd_m"]) != g_in:
            continue
        ydim, xdim = (str(d) for d in da.dims)
        r0 = int(round((float(da[ydim][0]) + g_in / 2 - grid.top) / -g_in))
        c0 = int(round((float(da[xdim][0]) - g_in / 2 - grid.left) / g_in))
        part = da.isel({ydim: slice(max(0, a - r0), max(0, b - r0)), xdim: slice(max(0, -c0), None)})
        m = valid_mask(part)
        h, w = min(b - a, m.shape[0]), min(width_in, m.shape[1])
        ok[:h, :w] |= m[:h, :w]
    return ok[in_rows - a][:, in_cols]


def _open_output(path: Path, grid: WindowGrid, n_bands: int, crs: str | None, names: list[str]):
    import rasterio
    from rasterio.transform import Affine

    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": n_bands,
        "dtype": "float32",
        "nodata": MAP_NODATA,
        "transform": Affine(grid.gsd_m, 0.0, grid.left, 0.0, -grid.gsd_m, grid.top),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 3,
        "BIGTIFF": "IF_SAFER",
    }
    if crs:
        profile["crs"] = rasterio.crs.CRS.from_wkt(crs)
    dst = rasterio.open(path, "w", **profile)
    for i, n in enumerate(names, 1):
        dst.set_band_description(i, n)
    return dst


def _bounded_gdal_cache(fn):
    """Run ``fn`` with GDAL's block cache capped (by default it grows to 5 % of the machine's memory while
    a map's tiles are written and its overviews built) and its network off while the scene is read strip by
    strip (:data:`atomizer.data.readers.GDAL_LOCAL_ONLY`, what the readers open it under)."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        import rasterio

        with rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB, **GDAL_LOCAL_ONLY):
            return fn(*args, **kwargs)

    return wrapped


@_bounded_gdal_cache
def predict_map(
    checkpoint: str | Path,
    scene: str | Path,
    out: str | Path,
    window_m: float | None = None,
    stride_m: float | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    sensor: str | Path | Sensor | None = None,
    band_names: Sequence[str | None] | None = None,
    resume: bool = True,
    progress: bool = True,
    on_progress: Any = None,
    gsd_m: float | None = None,
) -> dict[str, Any]:
    """Classify every window of ``scene`` and write the map GeoTIFF ``out``; returns a summary.

    Args:
        checkpoint: Any model's checkpoint (Atomizer or a canvas baseline).
        scene: Anything :func:`atomizer.data.readers.open_image` reads (SAFE, Landsat, STAC, band folder...).
        out: The GeoTIFF to write: one float32 band per class (probabilities: sigmoid for multi-label
            models, softmax otherwise), then the argmax class index; :data:`MAP_NODATA` where the scene has
            no valid value or no window could be classified. Tiled, deflate-compressed, with overviews.
        window_m: Window side (m); default: the checkpoint's training extent (:func:`default_window_m`).
        stride_m: Distance between windows (m); default: the window (no overlap).
        batch_size: Windows per forward pass.
        sensor: The scene's sensor (a catalogued name or a sidecar), where its files do not say.
        band_names: The channel order of a multi-band scene that names none of its bands.
        resume: Continue an interrupted run of the same inputs; ``False`` starts over.
        on_progress: Called with ``(windows_done, windows_total)`` after each batch (dashboards).
        gsd_m: The output grid's GSD (m); default the scene's finest. A segmentation model answers every
            output pixel (its queries at this GSD: a per-pixel class map); a classifier's window answer covers
            its window's output pixels. Windows are always read at the scene's native resolution.

    Raises:
        MapError: the window does not fit the scene, or ``out`` exists.
    """
    checkpoint, scene, out = Path(checkpoint), Path(scene), Path(out)
    if out.exists():
        raise MapError(f"{out} exists; remove it or choose another --out")
    trained = load_trained(checkpoint)
    extra, classes, multilabel = trained.extra, trained.classes, trained.multilabel
    model = trained.model.to(device).eval()
    kind = input_type(model)
    canvas = CanvasSpec.of_training(extra)
    window_m = float(window_m) if window_m else default_window_m(extra)
    stride_m = float(stride_m) if stride_m else window_m
    image = open_image(scene, sensor=sensor, band_names=band_names, lazy=True)  # read one strip of windows at a time
    bands = image_bands(image)
    dense = is_dense(model)
    grid = scene_grid(image, window_m, stride_m, gsd_m)
    modality = grid.window_modality(bands)
    C, w = len(classes), grid.window_px

    partial = out.with_name(out.name + ".partial.tif")
    record = out.with_name(out.name + ".progress.json")
    fp = _fingerprint(checkpoint, scene, grid, bands)
    written, done, skipped = 0, 0, 0
    if resume and record.exists() and partial.exists():
        state = json.loads(record.read_text())
        if state.get("fingerprint") == fp:
            written, skipped = int(state["rows_written"]), int(state.get("windows_skipped", 0))
    elif partial.exists():
        partial.unlink()
    import rasterio

    if written:
        dst = rasterio.open(partial, "r+")
    else:
        dst = _open_output(partial, grid, C + 1, image.attrs.get("crs"), [*classes, "argmax"])
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    rows = [y for y in grid.ys if y + w > written]  # window rows that still touch unwritten output rows
    done = (len(grid.ys) - len(rows)) * len(grid.xs)
    bar = tqdm(total=grid.n_windows, initial=done, disable=not progress, desc="map", unit="window")
    base = written  # absolute output row of acc[:, 0]
    acc = np.zeros((C, w + max(1, (grid.ys[1] - grid.ys[0]) if len(grid.ys) > 1 else 1), grid.width), np.float32)
    cnt = np.zeros(acc.shape[1:], np.float32)
    try:
        for ri, y0 in enumerate(rows):
            probs, placed = _classify_row(
                image, modality, grid, y0, kind, canvas, model, batch_size, multilabel, device, dense
            )
            skipped += len(grid.xs) - len(placed)
            need = y0 + w - base
            if need > acc.shape[1]:  # grow (irregular last stride)
                acc = np.concatenate([acc, np.zeros((C, need - acc.shape[1], grid.width), np.float32)], 1)
                cnt = np.concatenate([cnt, np.zeros((need - cnt.shape[0], grid.width), np.float32)], 0)
            lo = max(y0, base)  # rows above `base` are on disk already (a resumed run)
            for x0, p in zip(placed, probs):  # (C,) per window, or (C, w, w) per pixel (a dense model)
                acc[:, lo - base : y0 + w - base, x0 : x0 + w] += p[:, lo - y0 :] if p.ndim == 3 else p[:, None, None]
                cnt[lo - base : y0 + w - base, x0 : x0 + w] += 1
            done += len(grid.xs)
            bar.update(len(grid.xs))
            if on_progress is not None:
                on_progress(done, grid.n_windows)
            final = rows[ri + 1] if ri + 1 < len(rows) else grid.height  # rows no later window touches
            # write whole 256-row tile strips (a compressed tile rewritten would grow the file), and the rest at the end
            if final - base >= _STRIP or (final == grid.height and final > base):
                _write_rows(
                    dst, acc[:, : final - base], cnt[: final - base], _scene_valid(image, grid, base, final), base
                )
                acc = np.concatenate([acc[:, final - base :], np.zeros((C, final - base, grid.width), np.float32)], 1)
                cnt = np.concatenate([cnt[final - base :], np.zeros((final - base, grid.width), np.float32)], 0)
                base = final
                dst.close()  # flush, so the record never runs ahead of the file
                atomic_write_json(
                    record, {"fingerprint": fp, "rows_written": base, "windows_skipped": skipped, "out": str(out)}
                )
                if base < grid.height:
                    dst = rasterio.open(partial, "r+")
    finally:
        bar.close()
        if not dst.closed:
            dst.close()
    with rasterio.open(partial, "r+") as ds:
        factors = [f for f in (2, 4, 8, 16, 32) if min(grid.width, grid.height) // f >= 64]
        if factors:
            ds.build_overviews(factors, rasterio.enums.Resampling.average)
            ds.update_tags(ns="rio_overview", resampling="average")
        ds.update_tags(
            checkpoint=str(checkpoint),
            scene=str(scene),
            window_m=f"{window_m:g}",
            stride_m=f"{stride_m:g}",
            classes=json.dumps(classes),
            multilabel=str(multilabel),
            gsd_m=f"{grid.gsd_m:g}",
            per_pixel=str(dense),
        )
    os.replace(partial, out)
    record.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    return {
        "out": str(out),
        "classes": classes,
        "window_m": window_m,
        "stride_m": stride_m,
        "windows": grid.n_windows,
        "windows_skipped": skipped,
        "seconds": seconds,
        "windows_per_s": grid.n_windows / seconds if seconds > 0 else math.inf,
        "shape": (grid.height, grid.width),
        "gsd_m": grid.gsd_m,
    }


def _windows(
    image: xr.Dataset, modality: Modality, grid: WindowGrid, y0: int, kind: type, canvas: CanvasSpec | None
) -> Iterator[tuple[int, Any]]:
    """The model inputs of one row of windows (a window with no valid value is left out)."""
    light, dy = strip(image, grid, y0)
    for x0 in grid.xs:
        try:
            win = simulate(light, modality, offset_m=(x0 * grid.gsd_m, dy))
            yield x0, model_input(win, kind, canvas)
        except (EmptyTokenSetError, EmptyCanvasError):  # nothing valid in this window: left as nodata
            continue


@torch.no_grad()
def _classify_row(image, modality, grid, y0, kind, canvas, model, batch_size, multilabel, device, dense=False):
    """One row of windows: a probability vector (C,) per window, or with a dense model a probability grid
    (C, w, w) per window on the output grid (its queries at the output GSD)."""
    placed: list[int] = []
    probs: list[np.ndarray] = []
    pending: list[tuple[int, Any]] = []

    def flush() -> None:
        batch = kind.collate([b for _, b in pending]).to(device)
        if dense:
            queries = DenseQueries.grids([grid.window_px] * len(pending), grid.gsd_m).to(device)
            p = model(batch, queries=queries).float().softmax(-1)  # (B, w*w, C)
            w = grid.window_px
            probs.extend(p.reshape(len(pending), w, w, -1).permute(0, 3, 1, 2).cpu().numpy())
        else:
            logits = model(batch).float()
            p = logits.sigmoid() if multilabel else logits.softmax(-1)
            probs.extend(p.cpu().numpy())
        placed.extend(x for x, _ in pending)
        pending.clear()

    for x0, item in _windows(image, modality, grid, y0, kind, canvas):
        pending.append((x0, item))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return probs, placed


def _write_rows(dst, acc: np.ndarray, cnt: np.ndarray, ok: np.ndarray, row0: int) -> None:
    """Write averaged probabilities and the argmax for output rows ``row0 ..`` (nodata where uncovered)."""
    from rasterio.windows import Window

    valid = (cnt > 0) & ok
    mean = np.where(valid[None], acc / np.maximum(cnt, 1)[None], MAP_NODATA).astype(np.float32)
    arg = np.where(valid, acc.argmax(0), MAP_NODATA).astype(np.float32)
    h = acc.shape[1]
    window = Window(0, row0, acc.shape[2], h)
    dst.write(mean, indexes=list(range(1, acc.shape[0] + 1)), window=window)
    dst.write(arg, indexes=acc.shape[0] + 1, window=window)
