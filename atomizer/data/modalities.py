"""Modalities and their simulation from a finer image.

A *modality* is ``(size in pixels at its GSD, GSD in m/px, band subset)``. Simulating it from a finer
image crops a ground window of ``size * gsd`` metres and brings each band to
``max(native GSD, modality GSD)`` by exact area averaging: the result is a genuinely coarser image with
fewer pixels, never upsampled back. Bands already coarser than the target keep their own grid (the
``floor(window / GSD)`` pixels centred on the window are kept untouched, so a modality gives the same
shapes wherever its window falls); finer bands averaged to the GSD of such a band share its cells.

Modality sets live in ``atomizer/data/modality_sets/*.yaml``::

    source: {size_px: 64, gsd_m: 10}        # the input the set is designed for
    modalities:
      - {name: tr1, size_px: 32, gsd_m: 20, bands: [B02, B03, B04, B08]}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, overload

import numpy as np
import xarray as xr
import yaml

from atomizer.core.paths import modality_sets_dir
from atomizer.data.image import grid_dims
from atomizer.data.light import LightImage, Raster, common_frame


class ModalityError(ValueError):
    """A modality cannot be applied to an image (missing band, crop outside the image...)."""


@dataclass(frozen=True)
class Modality:
    """Image size in pixels at ``gsd_m``, the GSD, and the bands kept (by name)."""

    name: str
    size_px: int
    gsd_m: float
    bands: tuple[str, ...]

    def __post_init__(self) -> None:
        if int(self.size_px) < 1:
            raise ModalityError(f"modality {self.name!r}: size_px must be >= 1, got {self.size_px}")
        if not float(self.gsd_m) > 0:
            raise ModalityError(f"modality {self.name!r}: gsd_m must be positive, got {self.gsd_m}")
        if not self.bands:
            raise ModalityError(f"modality {self.name!r}: no bands")
        object.__setattr__(self, "size_px", int(self.size_px))
        object.__setattr__(self, "gsd_m", float(self.gsd_m))
        object.__setattr__(self, "bands", tuple(self.bands))

    @property
    def extent_m(self) -> float:
        """Side of the ground window in metres."""
        return self.size_px * self.gsd_m

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size_px": self.size_px, "gsd_m": self.gsd_m, "bands": list(self.bands)}

    def __str__(self) -> str:
        return f"{self.name}: {self.size_px}px @ {self.gsd_m:g} m, {len(self.bands)} bands ({' '.join(self.bands)})"


@dataclass(frozen=True)
class ModalitySet:
    """A named list of modalities with the source format they were designed for."""

    name: str
    modalities: tuple[Modality, ...]
    source_size_px: int | None = None
    source_gsd_m: float | None = None
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.modalities)

    def __len__(self) -> int:
        return len(self.modalities)

    def __getitem__(self, key: int | str) -> Modality:
        if isinstance(key, str):
            for m in self.modalities:
                if m.name == key:
                    return m
            raise KeyError(f"modality set {self.name!r} has no modality {key!r}")
        return self.modalities[key]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.modalities]


def load_modalities(path_or_name: str | Path) -> ModalitySet:
    """Load a modality set from a YAML file, or by name from the shipped sets (``atomizer/data/modality_sets/<name>.yaml``)."""
    path = Path(path_or_name)
    if not path.suffix:
        name = str(path_or_name)
        if not name or name != Path(name).name or name.startswith("."):  # a shipped set's name, never a path
            raise ModalityError(f"not a modality set name: {name!r} (a name of a shipped set, or a .yaml file)")
        path = modality_sets_dir() / f"{name}.yaml"
    if not path.is_file():
        avail = sorted(p.stem for p in (modality_sets_dir()).glob("*.yaml"))
        raise FileNotFoundError(f"modality file not found: {path_or_name} (shipped: {', '.join(avail)})")
    spec = yaml.safe_load(path.read_text()) or {}
    mods = []
    for i, m in enumerate(spec.get("modalities") or []):
        try:
            mods.append(
                Modality(
                    name=str(m.get("name", f"m{i}")), size_px=m["size_px"], gsd_m=m["gsd_m"], bands=tuple(m["bands"])
                )
            )
        except KeyError as e:
            raise ModalityError(f"{path}: modality #{i} lacks {e}") from None
    if not mods:
        raise ModalityError(f"{path}: no modalities")
    src = spec.get("source") or {}
    return ModalitySet(
        name=path.stem,
        modalities=tuple(mods),
        source_size_px=src.get("size_px"),
        source_gsd_m=src.get("gsd_m"),
        description=str(spec.get("description", "")),
    )


def overlap_matrix(src_edges: np.ndarray, dst_edges: np.ndarray) -> np.ndarray:
    """Area-averaging weights: ``W[j, i]`` = fraction of target cell j covered by source cell i.

    Both inputs are increasing 1-D arrays of cell edges (length cells + 1). Rows sum to 1 where the
    target cell lies inside the source extent.
    """
    lo = np.maximum(dst_edges[:-1, None], src_edges[None, :-1])
    hi = np.minimum(dst_edges[1:, None], src_edges[None, 1:])
    return np.clip(hi - lo, 0, None) / np.diff(dst_edges)[:, None]


@lru_cache(maxsize=4096)
def _overlap(src0: float, g: float, n_src: int, dst0: float, target: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`overlap_matrix` of ``n_src`` cells of ``g`` from ``src0`` onto ``n`` cells of ``target`` from
    ``dst0``, in banded form ``(index (n, K), weight (n, K))``: each target cell overlaps at most K source
    cells, so averaging is K multiply-adds per cell instead of a dense product (cached: the windows of a
    dataset repeat a few grids; read-only)."""
    w = overlap_matrix(src0 + np.arange(n_src + 1) * g, dst0 + np.arange(n + 1) * target)
    nz = w > 0
    k = max(1, int(nz.sum(1).max()))
    first = np.where(nz.any(1), nz.argmax(1), 0)
    index = np.clip(first[:, None] + np.arange(k)[None, :], 0, n_src - 1)
    weight = np.take_along_axis(w, index, 1) * (first[:, None] + np.arange(k)[None, :] < n_src)
    index.setflags(write=False)
    weight.setflags(write=False)
    return index, weight


def _den(wy: np.ndarray, wx: np.ndarray) -> np.ndarray:
    """Covered fraction of each target cell when every source pixel is valid, ``outer(wy.sum(1), wx.sum(1))``
    (cached per pair of banded grids, which the windows of a dataset repeat; read-only)."""
    key = (id(wy), id(wx))
    hit = _DEN.get(key)
    if hit is None or hit[0] is not wy or hit[1] is not wx:
        den = np.einsum("jk->j", wy)[:, None] * np.einsum("wk->w", wx)[None, :]
        den.setflags(write=False)
        if len(_DEN) > 4096:
            _DEN.clear()
        hit = _DEN[key] = (wy, wx, den)
    return hit[2]


_DEN: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _banded_average(
    values: np.ndarray, by: tuple[np.ndarray, np.ndarray], bx: tuple[np.ndarray, np.ndarray], valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`area_average` with banded overlap matrices (see :func:`_overlap`); the same result up to
    rounding (sums in a different order)."""
    iy, wy = by
    ix, wx = bx
    if valid.all():  # the usual case: the denominator is the same sums over a field of ones, per axis
        t = np.einsum("jk,jkw->jw", wy, values[iy, :].astype(np.float64))  # (h, W): the window's rows only
        num = np.einsum("hwk,wk->hw", t[:, ix], wx)  # (h, w)
        den = _den(wy, wx)  # the same two steps over a field of ones: an outer product of the weight sums
    else:
        v = values.astype(np.float64)
        m = valid.astype(np.float64)
        x = np.stack([np.where(valid, v, 0.0) * m, m])  # (2, H, W)
        x = np.einsum("jk,cjkw->cjw", wy, x[:, iy, :])  # (2, h, W)
        num, den = np.einsum("chwk,wk->chw", x[:, :, ix], wx)  # (2, h, w)
    ok = den >= 0.5
    out = np.where(ok, num / np.where(ok, den, 1.0), 0.0)
    return out.astype(np.float32), ok


def area_average(
    values: np.ndarray, wy: np.ndarray, wx: np.ndarray, valid: np.ndarray | None = None, min_valid: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """``Wy @ values @ Wx.T`` ignoring invalid pixels; returns (averaged, valid) at the target grid.

    A target pixel is valid when at least ``min_valid`` of its area is covered by valid pixels.
    """
    v = values.astype(np.float64)
    if valid is None:
        valid = np.isfinite(v)
    m = valid.astype(np.float64)
    v = np.where(valid, v, 0.0)
    num, den = wy @ np.stack([v * m, m]) @ wx.T  # one batched product for numerator and denominator
    ok = den >= min_valid
    out = np.where(ok, num / np.where(ok, den, 1.0), 0.0)
    return out.astype(np.float32), ok


@overload
def simulate(
    image: xr.Dataset,
    modality: Modality,
    offset_m: tuple[float, float] | None = None,
    rng: np.random.Generator | None = None,
) -> xr.Dataset: ...
@overload
def simulate(
    image: LightImage,
    modality: Modality,
    offset_m: tuple[float, float] | None = None,
    rng: np.random.Generator | None = None,
) -> LightImage: ...
def simulate(
    image: xr.Dataset | LightImage,
    modality: Modality,
    offset_m: tuple[float, float] | None = None,
    rng: np.random.Generator | None = None,
) -> xr.Dataset | LightImage:
    """Simulate ``modality`` from a finer ``image`` (the image representation of the readers).

    Args:
        image: Source image, bands on their native grids: an ``xarray.Dataset`` of the readers, or its
            :class:`~atomizer.data.light.LightImage` (the loaders' fast path; the result is then light too,
            with the same values, grids and attributes).
        modality: Target size, GSD and band subset.
        offset_m: ``(dx, dy)`` of the window's top-left corner from the image's top-left corner, in
            metres. Default: centred, or uniformly random (snapped to the finest grid) if ``rng``.
        rng: Random generator for a random window position (training-time augmentation).

    Returns:
        A new image: the modality's bands only; bands finer than the modality GSD area-averaged to it
        (float32 DN, invalid pixels set to the band's nodata, or NaN without one); coarser bands
        cropped on their own grid.

    Raises:
        ModalityError: a band is missing from the image, the window does not fit in the image, or a
            band has no pixel in the window.
    """
    if isinstance(image, LightImage):
        return _simulate(image, modality, offset_m, rng)
    return _simulate(LightImage.from_xarray(image), modality, offset_m, rng).to_xarray()


def _simulate(
    image: LightImage,
    modality: Modality,
    offset_m: tuple[float, float] | None,
    rng: np.random.Generator | None,
) -> LightImage:
    have = set(image.bands)
    missing = [b for b in modality.bands if b not in have]
    if missing:
        raise ModalityError(
            f"modality {modality.name!r} needs band(s) {missing} that the image lacks (image bands: {sorted(have)})"
        )
    # Common frame: x east, y south, origin at the top-left corner of the ground all the bands cover.
    left, top, width, height, finest = common_frame(image, modality.bands)
    ext = modality.extent_m
    if ext > width + 1e-6 or ext > height + 1e-6:
        raise ModalityError(
            f"modality {modality.name!r} needs a {ext:g} m window but the image covers only {width:g} x {height:g} m"
        )
    if offset_m is None:
        if rng is not None:
            nx = int(math.floor((width - ext) / finest + 1e-6))
            ny = int(math.floor((height - ext) / finest + 1e-6))
            offset_m = (rng.integers(0, nx + 1) * finest, rng.integers(0, ny + 1) * finest)
        else:
            offset_m = ((width - ext) / 2, (height - ext) / 2)
    dx, dy = offset_m
    if dx < -1e-6 or dy < -1e-6 or dx + ext > width + 1e-6 or dy + ext > height + 1e-6:
        raise ModalityError(f"window offset {offset_m} puts the {ext:g} m window outside the image")
    x0, y0 = left + dx, top - dy  # window top-left in image coordinates
    out: dict[str, Raster] = {}
    # Bands at (or coarser than) the modality GSD first: a band averaged to the modality GSD then lands
    # on the grid of a native band of that GSD instead of a shifted grid sharing its dimension names.
    on_target_grid = None
    order = sorted(modality.bands, key=lambda b: image.bands[b].gsd < modality.gsd_m - 1e-9)
    for b in order:
        r = image.bands[b]
        g = r.gsd
        ydim, xdim = r.dims
        xs, ys = r.xs, r.ys
        attrs = dict(r.attrs)
        nodata = attrs.get("nodata")
        target = max(g, modality.gsd_m)
        if target <= g + 1e-9:  # coarser (or equal) band: keep its grid, crop by pixel centres
            # floor(ext / g) pixels centred on the window, whatever its position: the same shape for every
            # window (centres on an edge of the window neither drop nor add a pixel).
            n = int(math.floor(ext / g + 1e-6))
            if n < 1:
                raise ModalityError(
                    f"modality {modality.name!r}: band {b} ({g:g} m) has no pixel in the {ext:g} m window"
                )
            i0x = int(math.floor((x0 + ext / 2 - xs[0]) / g - (n - 1) / 2 + 0.5 + 1e-6))
            i0y = int(math.floor((ys[0] - (y0 - ext / 2)) / g - (n - 1) / 2 + 0.5 + 1e-6))
            sx = min(max(i0x, 0), len(xs) - n)
            sy = min(max(i0y, 0), len(ys) - n)
            sub_x, sub_y = xs[sx : sx + n], ys[sy : sy + n]
            if math.isclose(g, modality.gsd_m):
                on_target_grid = (float(sub_x[0]) - g / 2, float(sub_y[0]) + g / 2)
            out[b] = Raster(r.values[sy : sy + n, sx : sx + n], sub_x, sub_y, (ydim, xdim), attrs)
            continue
        n = int(math.floor(ext / target + 1e-6))
        if n < 1:
            raise ModalityError(f"modality {modality.name!r}: window of {ext:g} m holds no {target:g} m pixel")
        span = n * target
        ox, oy = x0 + (ext - span) / 2, y0 - (ext - span) / 2
        if on_target_grid is not None:  # share the cells of the native band of this GSD
            ox, oy = on_target_grid
        # src edges from the first pixel centre; y flipped to increasing
        wx = _overlap(float(xs[0] - g / 2), g, len(xs), float(ox), target, n)
        wy = _overlap(float(-(ys[0] + g / 2)), g, len(ys), float(-oy), target, n)
        avg, ok = _banded_average(r.values, wy, wx, r.valid())
        fill = np.nan if nodata is None or (isinstance(nodata, float) and math.isnan(nodata)) else nodata
        avg[~ok] = fill
        attrs["gsd_m"] = float(target)
        out[b] = Raster(
            avg,
            ox + (np.arange(n) + 0.5) * target,
            oy - (np.arange(n) + 0.5) * target,
            grid_dims(target),
            attrs,
        )
    attrs = dict(image.attrs)
    attrs.update({"modality": modality.name, "window_m": [x0, y0, ext]})
    return LightImage({b: out[b] for b in modality.bands}, attrs)


def check_fit(image: xr.Dataset | LightImage, modalities: Sequence[Modality], what: str) -> None:
    """Refuse, before any training or evaluation, modalities that ``image`` (a sample of the dataset
    ``what``) cannot give: a band it lacks, a window larger than it (one line naming the modality)."""
    for m in modalities:
        try:
            simulate(image, m)
        except ModalityError as e:
            raise ModalityError(f"{what}: {e}") from None


@dataclass(frozen=True)
class Assignment:
    """Which training modality each training image gets (one per image, as in the paper)."""

    modality_index: np.ndarray

    @classmethod
    def random(cls, n_images: int, n_modalities: int, seed: int = 0) -> "Assignment":
        """Balanced random assignment: each modality gets n/M images (+-1), shuffled with ``seed``."""
        idx = np.arange(n_images) % n_modalities
        np.random.default_rng(seed).shuffle(idx)
        return cls(idx)


def check_disjoint(train: Sequence[Modality], test: Sequence[Modality]) -> list[str]:
    """Problems that break the modality-disjoint protocol (empty list when it holds).

    Every test modality must differ from every training modality in size, GSD and band set; across the
    test set at least one GSD and one size must lie outside the training range, and at least one test
    modality must contain a band that no training modality contains.
    """
    problems = []
    for te in test:
        for tr in train:
            if te.size_px == tr.size_px:
                problems.append(f"{te.name} shares size {te.size_px} px with {tr.name}")
            if math.isclose(te.gsd_m, tr.gsd_m):
                problems.append(f"{te.name} shares GSD {te.gsd_m:g} m with {tr.name}")
            if set(te.bands) == set(tr.bands):
                problems.append(f"{te.name} has the same band set as {tr.name}")
    gsds = [m.gsd_m for m in train]
    sizes = [m.size_px for m in train]
    if not any(m.gsd_m < min(gsds) or m.gsd_m > max(gsds) for m in test):
        problems.append("no test GSD lies outside the training GSD range")
    if not any(m.size_px < min(sizes) or m.size_px > max(sizes) for m in test):
        problems.append("no test size lies outside the training size range")
    seen = {b for m in train for b in m.bands}
    if not any(set(m.bands) - seen for m in test):
        problems.append("no test modality contains a band unseen in training")
    return problems


def modality_distance(m: Modality, train: Sequence[Modality]) -> dict[str, float]:
    """How far ``m`` lies from the training modalities ``train``.

    * ``geometry``: ``min_t sqrt(log2(gsd / gsd_t)^2 + log2(size / size_t)^2)`` (one octave of GSD or of
      size is a distance of 1);
    * ``bands``: ``1 - max_t Jaccard(bands, bands_t)`` (0: a training band set; 1: no band in common);
    * ``unseen_bands``: the fraction of ``m``'s bands that no training modality has;
    * ``total``: ``min_t sqrt(geometry_t^2 + (1 - Jaccard_t)^2)``, one number per modality, 0 exactly on
      a training modality.
    """
    if not train:
        raise ValueError("modality_distance needs at least one training modality")
    geo, jac, tot = [], [], []
    for t in train:
        g = math.hypot(math.log2(m.gsd_m / t.gsd_m), math.log2(m.size_px / t.size_px))
        j = len(set(m.bands) & set(t.bands)) / len(set(m.bands) | set(t.bands))
        geo.append(g)
        jac.append(j)
        tot.append(math.hypot(g, 1.0 - j))
    seen = {b for t in train for b in t.bands}
    return {
        "geometry": min(geo),
        "bands": 1.0 - max(jac),
        "unseen_bands": len(set(m.bands) - seen) / len(m.bands),
        "total": min(tot),
    }


def landscape_modalities(
    train: ModalitySet,
    gsds: Sequence[float],
    size_fractions: Sequence[float],
    band_sets: Mapping[str, Sequence[str]],
    geometry_bands: Sequence[str],
    band_geometry: tuple[int, float],
) -> ModalitySet:
    """A grid of modalities around the training set, for the generalisation landscape.

    * Geometry: every GSD of ``gsds`` x every fraction of the largest window the source allows at that
      GSD (``size = floor(fraction * source extent / gsd)``, at least 2 px), all with ``geometry_bands``;
      named ``g<gsd>_s<size>``.
    * Bands: every set of ``band_sets`` at the geometry ``band_geometry`` (size px, GSD m); named
      ``b_<key>``.

    The training modalities themselves are included (named as in ``train``), so the landscape holds its
    points at distance 0. Windows never exceed the source image (no modality is refused at evaluation).
    """
    if not train.source_size_px or not train.source_gsd_m:
        raise ValueError(f"modality set {train.name!r} has no source format (source: {{size_px, gsd_m}})")
    extent = train.source_size_px * train.source_gsd_m
    mods: list[Modality] = list(train.modalities)
    for g in gsds:
        for f in size_fractions:
            size = max(2, int(math.floor(f * extent / g + 1e-9)))
            mods.append(Modality(f"g{g:g}_s{size}", size, float(g), tuple(geometry_bands)))
    size, g = band_geometry
    for key, bands in band_sets.items():
        mods.append(Modality(f"b_{key}", int(size), float(g), tuple(bands)))
    unique = list({(m.size_px, m.gsd_m, frozenset(m.bands)): m for m in reversed(mods)}.values())[::-1]
    return ModalitySet(
        f"{train.name}_landscape",
        tuple(unique),
        train.source_size_px,
        train.source_gsd_m,
        f"generalisation landscape around {train.name}",
    )


#: The modality-set name meaning "every image as read" (``train_modalities: native``, ``--modalities native``):
#: each image keeps all its bands on their native grids, over its largest centred square; no simulation. What a
#: union of different sensors' datasets (:mod:`atomizer.data.union`) trains on, no one modality fitting them all.
NATIVE = "native"
#: The placeholder of :data:`NATIVE` in a modality list; each image's own is :func:`native_modality`.
NATIVE_MODALITY = Modality(NATIVE, 1, 1.0, ("*",))


def native_modality(image: xr.Dataset | LightImage) -> Modality:
    """The modality that keeps ``image`` as read: all its bands at its finest GSD over the largest centred square
    window (every band keeps its native grid: :func:`~atomizer.data.modalities.simulate` averages no band)."""
    light = image if isinstance(image, LightImage) else LightImage.from_xarray(image)
    _, _, width, height, finest = common_frame(light)
    size = int(np.floor(min(width, height) / finest + 1e-6))
    return Modality(NATIVE, max(1, size), finest, tuple(light.bands))


def modality_set(name: str | Path | ModalitySet) -> ModalitySet:
    """A modality set by name or path (:func:`~atomizer.data.modalities.load_modalities`), or :data:`NATIVE`: the
    one placeholder modality that leaves every image as read."""
    if isinstance(name, ModalitySet):
        return name
    if str(name) == NATIVE:
        return ModalitySet(NATIVE, (NATIVE_MODALITY,), description="every image as read, all bands native")
    return load_modalities(name)


def check_dataset_fit(dataset, modalities: Sequence[Modality], what: str) -> None:
    """Refuse, before training or evaluation, modalities that the dataset's images cannot give (a band they
    lack, a window larger than them; one line naming the modality). One image is tried per part of a union
    (:mod:`atomizer.data.union`: a modality must fit every sensor's images) and the message names the part;
    :data:`NATIVE` fits every image."""
    if len(dataset) == 0:
        return
    mods = [m for m in modalities if m != NATIVE_MODALITY]
    if not mods:
        return
    firsts: dict[str, dict] = {}
    labels = getattr(dataset, "labels", None)
    for r in dataset.records:
        key = labels[r["part"]] if labels is not None and "part" in r else ""
        firsts.setdefault(key, r)
    for key, r in firsts.items():
        image = dataset.load(r)
        where = f"{what}, part {key!r}" if key else what
        for m in mods:
            try:
                simulate(image, m)
            except ModalityError as e:
                hint = f" (use the modality set {NATIVE!r} to read every image as it is)" if key else ""
                raise ModalityError(f"{where}: {e}{hint}") from None
