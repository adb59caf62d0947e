"""Bring your own data: any labelled collection of images is a dataset, described by a manifest.

A manifest is a table with one row per sample: CSV, Parquet, GeoJSON or GeoParquet (the geometry is not
used), or a STAC ItemCollection (each item is a sample, its assets the image). Default column names, so a
manifest written by hand needs no options:

* ``id`` (or ``sample_id``): unique sample id (default: the image file's stem);
* ``image``, or ``image_<name>`` for several co-registered images of one sample (``image_s2``,
  ``image_s1``): anything :func:`atomizer.data.readers.open_image` reads (a GeoTIFF, a band folder, a SAFE,
  a Landsat product, a STAC item, a BigEarthNet ``.npz``);
* ``sensor`` (a catalogued name) or ``sidecar`` (a ``.yaml``/``.json`` sensor sidecar); with several images
  ``sensor_<name>`` / ``sidecar_<name>``;
* the target: ``label`` (one class), ``labels`` (classes separated by ``;``) or ``mask`` (a raster of class
  ids on the image's grid, or georeferenced anywhere: read onto the image's finest grid by nearest
  neighbour, never interpolated);
* optional ``split`` (train / validation / test; ``val`` and ``valid`` are read as validation), ``fold``
  and ``group`` (samples of one group never straddle folds).

Paths are relative to the manifest's folder and must stay inside it (symbolic links followed), or inside
the extra root the user names (``data_root``): a manifest someone sends cannot make the toolkit read
elsewhere. The optional *card* beside the manifest (same stem, ``.yaml``) holds what applies to every
row: ``sensor``, ``sidecar``, ``bands`` (channel order of files that do not name their bands), ``classes``
(a list, or ``{id: name}`` for masks), ``classes_file``, ``ignore_index``, ``task`` and ``columns`` (our
name -> the manifest's, e.g. ``{label: class}``).

A mask manifest's items carry ``mask`` (:class:`MaskLabels`: class indices on the image's finest grid), the
per-pixel target a segmentation model learns (``task: auto`` in training); its ``target`` is the multi-hot
of the classes present (pixels equal to ``ignore_index`` do not count), what ``task: classification`` learns.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import xarray as xr
import yaml

from atomizer.core.config import Config, ConfigError
from atomizer.core.storage import atomic_write_text, locked
from atomizer.data.base import ImageDataset, multi_hot
from atomizer.data.folds import DEFAULT_FOLDS, assign_folds
from atomizer.data.image import count_tokens, grid_dims, image_bands
from atomizer.data.light import LightImage
from atomizer.data.raster import one_line, open_raster
from atomizer.data.readers import open_image

#: Suffixes read as manifests (``dataset: path/to/labels.csv`` wherever ``dataset: eurosat`` is accepted).
MANIFEST_SUFFIXES = (".csv", ".parquet", ".geoparquet", ".geojson", ".json")
TASKS = ("classification", "multilabel", "segmentation")
SPLITS = {"train": "train", "training": "train", "val": "validation", "valid": "validation"}
SPLITS.update({"validation": "validation", "test": "test"})
#: Columns with a meaning; any other column is kept as the sample's metadata.
KNOWN = ("id", "image", "sensor", "sidecar", "label", "labels", "mask", "split", "fold", "group")


class ManifestError(ValueError):
    """A manifest, its card or one of its rows is wrong (one line, naming the row)."""


def is_manifest(name: str | Path) -> bool:
    """Whether a ``dataset:`` value names a manifest file (by suffix) rather than a built-in dataset."""
    return Path(str(name)).suffix.lower() in MANIFEST_SUFFIXES


@dataclass(frozen=True)
class ManifestCard(Config):
    """The card beside a manifest (``<stem>.yaml``): what applies to every row. Unknown keys are refused."""

    kind: ClassVar[str] = "manifest card"

    sensor: str | dict[str, str] | None = None  # a catalogued sensor, or {image name: sensor}
    sidecar: str | dict[str, str] | None = None  # a sidecar path (relative to the manifest), or per image name
    bands: list[str | None] | dict[str, list[str | None]] | None = None  # channel order; ~ skips a channel (alpha)
    classes: list[str] | dict[int, str] | None = None  # label order; {id: name} for masks
    classes_file: str | None = None  # one name per line, or a CSV with columns id,name
    ignore_index: int | None = None  # a mask value (or nothing) that is not a class
    task: str | None = None  # classification | multilabel | segmentation (default: from the columns)
    columns: dict[str, str] = field(default_factory=dict)  # our column name -> the manifest's
    description: str = ""


# --------------------------------------------------------------------------------------------------
# Reading the table
# --------------------------------------------------------------------------------------------------


def _read_table(path: Path) -> tuple[pd.DataFrame, list[dict | None]]:
    """The manifest's rows as strings (missing: ""), and per row the STAC item it came from (or None)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
            return df, [None] * len(df)
        if suffix in (".parquet", ".geoparquet"):
            df = pd.read_parquet(path)
            df = df.drop(columns=[c for c in df.columns if c in ("geometry", "bbox")])
            return _as_strings(df), [None] * len(df)
        doc = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not a readable {suffix[1:]} manifest ({one_line(e)})") from None
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" or not isinstance(doc.get("features"), list):
        raise ManifestError(f"{path}: a JSON manifest must be a GeoJSON FeatureCollection or a STAC ItemCollection")
    rows: list[dict] = []
    items: list[dict | None] = []
    for i, feat in enumerate(doc["features"]):
        if not isinstance(feat, dict) or not isinstance(feat.get("properties") or {}, dict):
            raise ManifestError(f"{path}: feature {i} is not a GeoJSON feature")
        props = {k: v for k, v in (feat.get("properties") or {}).items() if not isinstance(v, (dict, list))}
        for k, v in (feat.get("properties") or {}).items():
            if k == "labels" and isinstance(v, list):
                props[k] = ";".join(str(x) for x in v)
        if "stac_version" in feat and "assets" in feat:
            props.setdefault("id", feat.get("id"))
            assets = feat.get("assets") or {}
            if "mask" in assets and isinstance(assets["mask"], dict):
                props.setdefault("mask", assets["mask"].get("href", ""))
            item = {**feat, "assets": {k: a for k, a in assets.items() if k != "mask"}}
            items.append(item)
        else:
            items.append(None)
        rows.append(props)
    return _as_strings(pd.DataFrame(rows)), items


def _as_strings(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        col = out[c]
        out[c] = [
            ""
            if v is None or (isinstance(v, float) and math.isnan(v))
            else ";".join(map(str, v))
            if isinstance(v, (list, tuple, np.ndarray))
            else str(int(v))
            if isinstance(v, float) and v.is_integer()
            else str(v)
            for v in col
        ]
    return out


def read_card(path: Path) -> ManifestCard:
    """The card beside the manifest ``path`` (``<stem>.yaml``), or the defaults when there is none."""
    card = path.with_suffix(".yaml")
    if not card.is_file() or card == path:
        return ManifestCard()
    try:
        spec = yaml.safe_load(card.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ManifestError(
            f"{card}: not valid YAML{f' at line {mark.line + 1}' if mark is not None else ''}"
        ) from None
    if not isinstance(spec, dict):
        raise ManifestError(f"{card}: a card is a mapping of options")
    try:
        return ManifestCard.from_dict(spec)
    except ConfigError as e:
        raise ManifestError(f"{card}: {e}") from None


# --------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------


class ManifestDataset(ImageDataset):
    """A labelled dataset described by a manifest (see the module docstring).

    Args:
        path: The manifest file.
        split: Keep the rows of this split (``train``, ``validation``, ``test``); None: every row.
        data_root: A second folder the manifest's paths may point into (the manifest's own folder always
            may); nothing else on this machine is read.
    """

    def __init__(self, path: str | Path, split: str | None = None, data_root: str | Path | None = None):
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise ManifestError(f"manifest not found: {self.path}")
        self.folder = self.path.parent
        self.roots = [self.folder] + ([Path(data_root)] if data_root else [])
        self.card = read_card(self.path)
        table, items = _read_table(self.path)
        self.columns = self._columns(table)
        stac = bool(items) and all(it is not None for it in items)
        self.image_names = {"": ""} if stac and not self._has_image_column(table) else self._image_columns(table)
        self.task = self._task(table)
        self.multilabel = self.task != "classification"
        self.ignore_index = self.card.ignore_index
        self.class_ids: list[int] = []
        self.classes = self._classes(table)
        self.has_split = bool(self.columns.get("split"))
        self.has_fold = bool(self.columns.get("fold"))
        self.has_group = bool(self.columns.get("group"))
        want = _split_name(split, self.path, "split") if split is not None else None
        if want is not None and not self.has_split:
            raise ManifestError(
                f"{self.path}: no split column, so no {want!r} split; use a fold (fold: N; "
                "`atomizer dataset check` writes folds beside the manifest)"
            )
        seen: dict[str, int] = {}
        for i, row in enumerate(table.to_dict("records")):
            rec = self._record(i, row, items[i])
            if rec["id"] in seen:
                raise ManifestError(f"{self.where(i, rec['id'])}: id repeats row {seen[rec['id']] + 2}")
            seen[rec["id"]] = i
            if want is None or rec["split"] == want:
                self.records.append(rec)

    # ---- columns, task and classes

    def _col(self, name: str) -> str:
        return self.card.columns.get(name, name)

    def _columns(self, table: pd.DataFrame) -> dict[str, str | None]:
        for ours, theirs in self.card.columns.items():
            if ours not in KNOWN:
                raise ManifestError(f"{self.path}: card columns: {ours!r} is not one of {', '.join(KNOWN)}")
            if theirs not in table.columns:
                raise ManifestError(f"{self.path}: card maps {ours!r} to column {theirs!r}, which it does not have")
        cols: dict[str, str | None] = {k: (self._col(k) if self._col(k) in table.columns else None) for k in KNOWN}
        if cols["id"] is None and "sample_id" in table.columns:
            cols["id"] = "sample_id"
        return cols

    def _has_image_column(self, table: pd.DataFrame) -> bool:
        base = self._col("image")
        return any(c == base or c.startswith(base + "_") for c in table.columns)

    def _image_columns(self, table: pd.DataFrame) -> dict[str, str]:
        """Image name -> column (``""`` for the single ``image`` column)."""
        base = self._col("image")
        names = {c[len(base) + 1 :]: c for c in table.columns if c.startswith(base + "_") and len(c) > len(base) + 1}
        if base in table.columns:
            if names:
                raise ManifestError(f"{self.path}: has both {base!r} and {', '.join(names.values())}; use one form")
            return {"": base}
        if not names:
            raise ManifestError(f"{self.path}: no image column ({base!r}, or {base}_<name> for several images)")
        return names

    def _task(self, table: pd.DataFrame) -> str:
        columns = {"mask": "segmentation", "labels": "multilabel", "label": "classification"}
        have = [c for c in columns if self._col(c) in table.columns]
        if self.card.task is not None:
            if self.card.task not in TASKS:
                raise ManifestError(f"{self.path}: task {self.card.task!r} is not one of {', '.join(TASKS)}")
            need = {t: c for c, t in columns.items()}[self.card.task]
            if self._col(need) not in table.columns:
                raise ManifestError(f"{self.path}: task {self.card.task} needs a {need!r} column")
            return self.card.task
        if len(have) > 1:
            raise ManifestError(
                f"{self.path}: several target columns ({', '.join(have)}); say which in the card (task)"
            )
        if not have:
            raise ManifestError(f"{self.path}: no target column: label (one class), labels (a;b) or mask (a raster)")
        return columns[have[0]]

    def _classes(self, table: pd.DataFrame) -> list[str]:
        card = self.card
        given: list[str] | dict[int, str] | None = card.classes
        if card.classes_file is not None:
            if given is not None:
                raise ManifestError(f"{self.path}: the card gives both classes and classes_file; keep one")
            given = _read_classes_file(self.resolve(card.classes_file, "classes_file"), self.path)
        if self.task == "segmentation":
            if given is None:
                masks = [str(self.resolve(m, "mask", i)) for i, m in enumerate(table[self._col("mask")]) if m]
                ids = _mask_values(tuple(masks))
                given = {i: str(i) for i in ids if i != card.ignore_index}
            if isinstance(given, list):
                given = dict(enumerate(given))
            if card.ignore_index is not None:
                given = {i: n for i, n in given.items() if i != card.ignore_index}
            self.class_ids = sorted(int(i) for i in given)
            return [str(given[i]) for i in self.class_ids]
        if isinstance(given, dict):
            return [str(given[i]) for i in sorted(given)]
        if given is not None:
            if len(set(given)) != len(given):
                raise ManifestError(f"{self.path}: the class list repeats a name")
            return [str(c) for c in given]
        col = self._col("label" if self.task == "classification" else "labels")
        found = {lab for v in table[col] for lab in _labels_of(v, self.task)}
        return sorted(found)

    # ---- rows

    def where(self, i: int, sample_id: str | None = None) -> str:
        """``manifest.csv: row 7 (id x)``: how an error names a row (row 1 is the header)."""
        return f"{self.path.name}: row {i + 2}" + (f" (id {sample_id})" if sample_id else "")

    def resolve(self, value: str, what: str, row: int | None = None) -> Path:
        """A path of the manifest, relative to its folder, confined to the manifest's folder or ``data_root``."""
        where = self.where(row) if row is not None else str(self.path)
        if "://" in value or value.startswith("/vsi"):
            raise ManifestError(f"{where}: {what} {value!r} is a URL or GDAL virtual path; manifests read local files")
        p = self.folder / value
        if not any(p.resolve().is_relative_to(r.resolve()) for r in self.roots):
            extra = " or the data root" if len(self.roots) > 1 else ""
            raise ManifestError(
                f"{where}: {what} {value!r} lies outside the manifest's folder{extra}; name its folder as the data "
                "root (data_root, --data-root) to allow it"
            )
        return p

    def _per_image(self, value: Any, name: str) -> Any:
        if isinstance(value, dict):
            return value.get(name)
        return value

    def _record(self, i: int, row: Mapping[str, str], item: dict | None) -> dict[str, Any]:
        c = self.columns
        images: dict[str, Path] = {}
        for name, col in self.image_names.items():
            v = str(row.get(col, "")).strip()
            if not v and item is None:
                raise ManifestError(f"{self.where(i)}: no {col}")
            if v:
                images[name] = self.resolve(v, col, i)
        sid = str(row.get(c["id"] or "", "")).strip() if c["id"] else ""
        if not sid:
            sid = str(item["id"]) if item is not None and item.get("id") else ""
        if not sid:
            first = next(iter(images.values()), None)
            sid = first.stem if first is not None else f"row{i + 2}"
        sensors: dict[str, Any] = {}
        for name in self.image_names:
            suffix = f"_{name}" if name else ""
            sensor = str(row.get(self._col("sensor") + suffix, "")).strip()
            sidecar = str(row.get(self._col("sidecar") + suffix, "")).strip()
            if sensor and sidecar:
                raise ManifestError(f"{self.where(i, sid)}: both a sensor and a sidecar; give one")
            if sidecar:
                sensors[name] = self.resolve(sidecar, "sidecar", i)
            elif sensor:
                sensors[name] = sensor
            elif (side := self._per_image(self.card.sidecar, name)) is not None:
                sensors[name] = self.resolve(str(side), "card sidecar")
            else:
                sensors[name] = self._per_image(self.card.sensor, name)
        rec: dict[str, Any] = {"id": sid, "row": i, "images": images, "sensors": sensors, "stac": item}
        split = str(row.get(c["split"] or "", "")).strip() if c["split"] else ""
        rec["split"] = _split_name(split, self.path, self.where(i, sid)) if split else None
        if c["fold"]:
            f = str(row.get(c["fold"], "")).strip()
            try:
                rec["fold"] = int(f)
            except ValueError:
                raise ManifestError(f"{self.where(i, sid)}: fold {f!r} is not a whole number") from None
        rec["group"] = str(row.get(c["group"], "")) if c["group"] else None
        if self.task == "segmentation":
            m = str(row.get(self._col("mask"), "")).strip()
            if not m:
                raise ManifestError(f"{self.where(i, sid)}: no mask")
            rec["mask"] = self.resolve(m, "mask", i)
            rec["labels"] = []  # the classes present: read from the mask (target)
        else:
            col = self._col("label" if self.task == "classification" else "labels")
            labels = _labels_of(row.get(col, ""), self.task)
            unknown = [lab for lab in labels if lab not in self.classes]
            if unknown:
                raise ManifestError(
                    f"{self.where(i, sid)}: unknown class {unknown[0]!r} (classes: {', '.join(self.classes[:12])}"
                    f"{', ...' if len(self.classes) > 12 else ''})"
                )
            if self.task == "classification" and len(labels) != 1:
                raise ManifestError(f"{self.where(i, sid)}: no label")
            rec["labels"] = labels
            if self.task == "classification":
                rec["label_idx"] = self.classes.index(labels[0])
        rec["meta"] = {k: v for k, v in row.items() if k not in c.values() and not k.startswith(self._col("image"))}
        return rec

    # ---- the protocol

    def load(self, r: dict) -> xr.Dataset:
        """The sample's image: its images read by :func:`open_image` and merged (co-registered grids)."""
        parts = []
        for name in self.image_names:
            sensor = r["sensors"].get(name)
            bands = self._per_image(self.card.bands, name)
            try:
                if r["stac"] is not None and name not in r["images"]:
                    from atomizer.data.products import read_stac_item

                    parts.append(read_stac_item(self.path, sensor=sensor, item=r["stac"]))
                    continue
                parts.append(open_image(r["images"][name], sensor=sensor, band_names=bands))
            except (ValueError, OSError) as e:
                raise ManifestError(f"{self.where(r['row'], r['id'])}: {one_line(e)}") from None
        return merge_images(parts, self.where(r["row"], r["id"]))

    def __getitem__(self, i: int) -> dict:
        """The item; a mask manifest's also carries ``mask``, the labels on their grid
        (:class:`~atomizer.atoms.dense.MaskGrid`-like: class indices, ``-1`` where unlabelled)."""
        r = self.records[i]
        image = self.load(r)
        extra = {"mask": self.mask_grid(r, image)} if self.task == "segmentation" else {}
        return {"image": image, "target": self.target(r), "id": r["id"], **extra}

    def light_item(self, i: int) -> dict:
        item = self[i]
        return {**item, "image": LightImage.from_xarray(item["image"])}

    def mask_grid(self, r: dict, image: xr.Dataset) -> MaskLabels:
        """The sample's mask as class indices (0..C-1; ``-1`` for ``ignore_index`` and unlabelled pixels) on the
        image's finest grid, with that grid's top-left corner and pixel size; notes the classes present."""
        ids = self.mask(r, image)
        lut_ids = np.asarray(self.class_ids, dtype=np.int64)
        index = np.full(ids.shape, -1, dtype=np.int64)
        if len(lut_ids):
            pos = np.searchsorted(lut_ids, ids)
            hit = (pos < len(lut_ids)) & (lut_ids[np.minimum(pos, len(lut_ids) - 1)] == ids)
            index[hit] = pos[hit]
        r["present"] = [self.classes[k] for k in np.unique(index[index >= 0]).tolist()]
        g, ydim, xdim = finest_grid(image)
        return MaskLabels(index, float(image[xdim].values[0]) - g / 2, float(image[ydim].values[0]) + g / 2, g)

    def target(self, r: dict) -> torch.Tensor:
        if self.task == "segmentation":
            present = self.classes_present(r)
            return multi_hot(present, self.classes)
        return super().target(r)

    def classes_present(self, r: dict) -> list[str]:
        """The classes with at least one pixel in the sample's mask (read once per sample)."""
        if "present" not in r:
            values = set(np.unique(self.mask(r)).tolist())
            r["present"] = [n for i, n in zip(self.class_ids, self.classes) if i in values]
        return list(r["present"])

    def mask(self, r: dict, image: xr.Dataset | None = None) -> np.ndarray:
        """The sample's mask on its image's finest grid (class ids; ``ignore_index`` where nothing is known)."""
        img = image if image is not None else self.load(r)
        try:
            return read_mask(r["mask"], img, fill=self.ignore_index)
        except ValueError as e:
            raise ManifestError(f"{self.where(r['row'], r['id'])}: {one_line(e)}") from None

    # ---- folds

    def folds_file(self) -> Path:
        """Where :func:`check_manifest` writes folds when the manifest has none: ``<stem>.folds.csv``."""
        return self.path.with_name(self.path.stem + ".folds.csv")

    def folds_table(self) -> pd.DataFrame:
        """``id, stratum, fold``: from the manifest's fold column, else the folds file beside it."""
        if self.has_fold:
            return pd.DataFrame({"id": self.ids(), "stratum": "", "fold": [r["fold"] for r in self.records]})
        f = self.folds_file()
        if not f.is_file():
            raise ManifestError(
                f"{self.path}: no fold column and no {f.name}; `atomizer dataset check {self.path}` writes one"
            )
        return pd.read_csv(f, dtype={"id": str})


def _split_name(value: str, path: Path, where: str) -> str:
    name = SPLITS.get(value.strip().lower())
    if name is None:
        raise ManifestError(f"{where}: split {value!r} is not train, validation or test")
    return name


def _labels_of(value: Any, task: str) -> list[str]:
    text = str(value or "").strip()
    if not text:
        return []
    if task == "classification":
        return [text]
    return [t.strip() for t in text.split(";") if t.strip()]


def _read_classes_file(path: Path, manifest: Path) -> list[str] | dict[int, str]:
    if not path.is_file():
        raise ManifestError(f"{manifest}: classes_file {path.name} not found")
    if path.suffix.lower() == ".csv":
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        if {"id", "name"} <= set(df.columns):
            try:
                return {int(i): str(n) for i, n in zip(df["id"], df["name"])}
            except ValueError:
                raise ManifestError(f"{path}: the id column must hold whole numbers") from None
        return [str(v) for v in df.iloc[:, 0]]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@lru_cache(maxsize=16)
def _mask_values(paths: tuple[str, ...]) -> list[int]:
    """The class ids found in the masks (a mask manifest whose card lists no classes)."""
    found: set[int] = set()
    for p in paths:
        with open_raster(p) as src:
            found |= set(np.unique(src.read(1)).astype(int).tolist())
    return sorted(found)


# --------------------------------------------------------------------------------------------------
# Co-registered images and masks
# --------------------------------------------------------------------------------------------------


def merge_images(parts: Sequence[xr.Dataset], where: str) -> xr.Dataset:
    """Several images of one sample as one (e.g. Sentinel-2 and Sentinel-1): grids that share a name must
    be the same grid, and no band may appear twice."""
    if len(parts) == 1:
        return parts[0]
    seen: dict[str, int] = {}
    for k, ds in enumerate(parts):
        for b in image_bands(ds):
            if b in seen:
                raise ManifestError(f"{where}: band {b!r} is in two of its images (one band, one image)")
            seen[b] = k
    crs = {ds.attrs.get("crs") for ds in parts if ds.attrs.get("crs")}
    if len(crs) > 1:
        raise ManifestError(f"{where}: its images are in different CRS; co-registered images share one grid")
    first = parts[0]
    for ds in parts[1:]:
        for dim in set(ds.dims) & set(first.dims):
            xa, xb = first[dim].values, ds[dim].values
            if xa.shape != xb.shape or not np.allclose(xa, xb, rtol=0.0, atol=1e-3):
                raise ManifestError(f"{where}: its images are not on the same {str(dim).split('_', 1)[1]} grid")
    sensors = "+".join(dict.fromkeys(str(ds.attrs.get("sensor", "?")) for ds in parts))
    out = xr.merge(parts, join="exact", combine_attrs="override")
    out.attrs["sensor"] = sensors
    out.attrs["source"] = "; ".join(str(ds.attrs.get("source", "")) for ds in parts)
    return out


def finest_grid(image: xr.Dataset) -> tuple[float, str, str]:
    """``(gsd, y dim, x dim)`` of the image's finest grid."""
    g = min(float(image[b].attrs["gsd_m"]) for b in image_bands(image))
    y, x = grid_dims(g)
    return g, y, x


def read_mask(path: Path | str, image: xr.Dataset, fill: int | None = None) -> np.ndarray:
    """A one-band raster of class ids on ``image``'s finest grid.

    A mask with the image's grid (same CRS, transform and shape) is read as stored; a georeferenced mask on
    another grid (another CRS, pixel size or extent) is reprojected onto it with nearest neighbour, never
    interpolated, pixels it does not cover set to ``fill``. A mask without georeferencing must have the
    grid's shape.

    Raises:
        ValueError: more than one band; not on the image's grid and not georeferenced (misaligned); no
            overlap with the image.
    """
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.warp import Resampling, reproject, transform_bounds

    g, ydim, xdim = finest_grid(image)
    ys, xs = image[ydim].values, image[xdim].values
    h, w = len(ys), len(xs)
    dst_transform = from_origin(float(xs[0]) - g / 2, float(ys[0]) + g / 2, g, g)
    img_crs = image.attrs.get("crs")
    with open_raster(path) as src:
        if src.count != 1:
            raise ValueError(f"mask {Path(str(path)).name} has {src.count} bands; a mask has one")
        georef = src.crs is not None and not src.transform.is_identity
        same = (src.height, src.width) == (h, w)
        if not georef or not img_crs:
            if not same:
                raise ValueError(
                    f"mask {Path(str(path)).name} is misaligned: {src.height}x{src.width} px without a common "
                    f"georeference, the image's {g:g} m grid is {h}x{w}"
                )
            return src.read(1)
        dst_crs = CRS.from_wkt(img_crs)
        if same and src.crs == dst_crs and src.transform.almost_equals(dst_transform, precision=1e-6 * max(g, 1.0)):
            return src.read(1)
        left, bottom, right, top = transform_bounds(src.crs, dst_crs, *src.bounds)
        il, it = dst_transform.c, dst_transform.f
        ir, ib = il + w * g, it - h * g
        if right <= il or left >= ir or top <= ib or bottom >= it:
            raise ValueError(f"mask {Path(str(path)).name} does not overlap its image")
        nodata = fill if fill is not None else (src.nodata if src.nodata is not None else 0)
        dst = np.full((h, w), nodata, dtype=src.dtypes[0])
        reproject(
            source=rasterio.band(src, 1),
            destination=dst,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=dst_transform,
            dst_crs=dst_crs,
            resampling=Resampling.nearest,
            src_nodata=src.nodata,
            dst_nodata=nodata,
        )
        return dst


# --------------------------------------------------------------------------------------------------
# dataset check
# --------------------------------------------------------------------------------------------------


@dataclass
class MaskLabels:
    """Class indices on a grid: ``values`` (H, W) int64 (``-1``: not scored), the grid's top-left corner
    ``left``, ``top`` (metres, the image's coordinates) and pixel size ``gsd`` (what
    :func:`atomizer.atoms.dense.window_target` reads)."""

    values: np.ndarray
    left: float
    top: float
    gsd: float


@dataclass
class ManifestSummary:
    """What :func:`check_manifest` found over every row."""

    path: str
    task: str
    samples: int
    classes: list[str]
    per_class_split: dict[str, dict[str, int]]  # class -> split -> samples (masks: samples where present)
    sensors: dict[str, int]
    bands: dict[str, int]  # band -> samples having it
    gsds: dict[str, int]  # "10 m" -> samples
    sizes: dict[str, int]  # "64x64 px @ 10 m" -> samples
    atoms: dict[str, float]  # min, median, max per sample
    mask_coverage: dict[str, float] = field(default_factory=dict)  # min, mean, max fraction of labelled pixels
    class_pixels: dict[str, float] = field(default_factory=dict)  # class -> share of labelled pixels
    folds: str = ""  # where the folds come from

    def lines(self) -> list[str]:
        """The summary as printed by ``atomizer dataset check``."""
        out = [f"{self.path}: {self.samples} samples, task {self.task}, {len(self.classes)} classes"]
        splits = sorted({s for d in self.per_class_split.values() for s in d})
        out.append(
            "samples per class and split"
            + (" (masks: samples where the class is present)" if self.task == "segmentation" else "")
            + ":"
        )
        width = max([len(c) for c in self.classes] + [5])
        out.append("  " + "class".ljust(width) + "".join(f"{s:>12}" for s in splits))
        for c in self.classes:
            d = self.per_class_split.get(c, {})
            out.append("  " + c.ljust(width) + "".join(f"{d.get(s, 0):>12}" for s in splits))
        out.append("sensors: " + ", ".join(f"{k} ({v})" for k, v in self.sensors.items()))
        out.append("bands: " + ", ".join(f"{k} ({v})" for k, v in self.bands.items()))
        out.append("GSDs: " + ", ".join(f"{k} ({v})" for k, v in self.gsds.items()))
        out.append("sizes: " + ", ".join(f"{k} ({v})" for k, v in self.sizes.items()))
        a = self.atoms
        out.append(f"atoms per sample: min {a['min']:,.0f}, median {a['median']:,.0f}, max {a['max']:,.0f}")
        if self.mask_coverage:
            m = self.mask_coverage
            out.append(
                f"mask coverage (labelled share of pixels): min {m['min']:.3f}, mean {m['mean']:.3f}, max {m['max']:.3f}"
            )
            out.append("pixels per class: " + ", ".join(f"{k} {v:.3f}" for k, v in self.class_pixels.items()))
        if self.folds:
            out.append(f"folds: {self.folds}")
        return out


def check_manifest(
    path: str | Path,
    data_root: str | Path | None = None,
    folds: int = DEFAULT_FOLDS,
    write_folds: bool = True,
    seed: int = 0,
) -> ManifestSummary:
    """Read every row of a manifest and summarise it; the first broken row raises :class:`ManifestError`
    naming it (a missing file, an undescribed band, an unknown class, a misaligned or non-overlapping
    mask, an unknown mask value).

    When the manifest has neither a fold column nor a folds file, ``folds`` stratified folds (grouped by
    the ``group`` column when it has one) are written beside it (``<stem>.folds.csv``, atomically, under
    the folder's lock); an existing folds file is never rewritten.
    """
    ds = ManifestDataset(path, data_root=data_root)
    if len(ds) == 0:
        raise ManifestError(f"{ds.path}: no rows")
    per_class: dict[str, Counter[str]] = {c: Counter() for c in ds.classes}
    sensors: Counter[str] = Counter()
    bands: Counter[str] = Counter()
    gsds: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    atoms: list[int] = []
    coverage: list[float] = []
    pixels: Counter[str] = Counter()
    for r in ds.records:
        img = ds.load(r)
        sensors[str(img.attrs.get("sensor", "?"))] += 1
        names = image_bands(img)
        for b in names:
            bands[b] += 1
        grids = {}
        for b in names:
            g = float(img[b].attrs["gsd_m"])
            grids[g] = img[b].shape
        for g, shape in sorted(grids.items()):
            gsds[f"{g:g} m"] += 1
            sizes[f"{shape[0]}x{shape[1]} px @ {g:g} m"] += 1
        atoms.append(count_tokens(img))
        split = r["split"] or "all"
        if ds.task == "segmentation":
            m = ds.mask(r, img)
            values, counts = np.unique(m, return_counts=True)
            known = dict(zip(values.tolist(), counts.tolist()))
            unknown = [v for v in known if v not in ds.class_ids and v != ds.ignore_index]
            if unknown:
                raise ManifestError(
                    f"{ds.where(r['row'], r['id'])}: mask value(s) {', '.join(map(str, sorted(unknown)[:5]))} are no "
                    f"class (classes: {', '.join(f'{i}={n}' for i, n in zip(ds.class_ids, ds.classes))})"
                )
            labelled = sum(n for v, n in known.items() if v != ds.ignore_index)
            coverage.append(labelled / m.size)
            r["present"] = [n for i, n in zip(ds.class_ids, ds.classes) if i in known]
            for i, n in zip(ds.class_ids, ds.classes):
                pixels[n] += known.get(i, 0)
            labels = r["present"]
        else:
            labels = r["labels"]
        for lab in labels:
            per_class[lab][split] += 1
    total_px = sum(pixels.values())
    summary = ManifestSummary(
        path=str(ds.path),
        task=ds.task,
        samples=len(ds),
        classes=list(ds.classes),
        per_class_split={c: dict(v) for c, v in per_class.items()},
        sensors=dict(sensors),
        bands=dict(sorted(bands.items())),
        gsds=dict(sorted(gsds.items(), key=lambda kv: float(kv[0].split()[0]))),
        sizes=dict(sizes.most_common()),
        atoms={"min": float(min(atoms)), "median": float(np.median(atoms)), "max": float(max(atoms))},
    )
    if coverage:
        summary.mask_coverage = {"min": min(coverage), "mean": float(np.mean(coverage)), "max": max(coverage)}
        summary.class_pixels = {n: (pixels[n] / total_px if total_px else 0.0) for n in ds.classes}
    if ds.has_fold:
        summary.folds = "from the manifest's fold column"
    elif ds.folds_file().is_file():
        summary.folds = f"{ds.folds_file().name} (kept as it is)"
    elif write_folds:
        label_sets = [r.get("present", r["labels"]) for r in ds.records]
        groups = [r["group"] or r["id"] for r in ds.records] if ds.has_group else None
        table = assign_folds(ds.ids(), label_sets, groups=groups, k=folds, seed=seed)
        target = ds.folds_file()
        with locked(target.parent, "manifest folder", name=f".{target.name}.lock"):
            if not target.exists():
                atomic_write_text(target, table.to_csv(index=False))
        kind = "grouped by the group column" if groups else "stratified by class"
        summary.folds = f"wrote {target.name}: {folds} folds, {kind}, seed {seed}"
    return summary
