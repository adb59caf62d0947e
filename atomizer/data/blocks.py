"""Spatial blocks: a segmentation manifest's images cut into ``n x n`` blocks, each block a sample, with folds
that rotate over the blocks of every image (spatial block cross-validation).

Why: a dense set of a handful of images cannot be split by image when its images share few classes (a
held-out image's classes were never seen in training). Cutting every image into blocks and testing one block
of each image per fold keeps each image's classes in training while no test pixel is trained on. Blocks
touch, so spatial autocorrelation across a block's edge makes such scores optimistic: they compare methods
on one footing; they are not a generalisation-to-new-places score.

:func:`write_blocks` reads the manifest through :class:`~atomizer.data.manifest.ManifestDataset` (its paths
confined to its folder), cuts every file of a sample (each image and the mask) on one grid in map
coordinates (the mask's: a block is the same ground in every file, at each file's own resolution, never
resampled), and writes GeoTIFFs (the source pixels and band descriptions, the block's geotransform), a
``manifest.csv`` and its card:

* ids ``<id>_r<row>c<col>``; the column ``source`` keeps the image's id;
* ``fold = (row * n + col + i) % n**2`` for the i-th image (in id order): fold k tests one block of every
  image, at a position that changes from image to image; validation is fold k + 1
  (:func:`atomizer.data.folds.fold_split`), so each image gives ``n**2 - 2`` blocks to training.

Pixels beyond the last whole block (``size % n``) are left out. Only single-file rasters (GeoTIFF) are cut.
Nothing is overwritten: a folder that holds a manifest already is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from atomizer.core.storage import atomic_write_bytes, atomic_write_text
from atomizer.data.manifest import ManifestDataset, ManifestError
from atomizer.data.raster import open_raster

#: Suffixes of files :func:`write_blocks` cuts.
CUTTABLE = (".tif", ".tiff")


def _window(src: Any, bounds: tuple[float, float, float, float], where: str) -> Any:
    """The pixel window of ``src`` that covers ``bounds`` exactly (refused when it falls between pixels)."""
    from rasterio.windows import Window, from_bounds

    w = from_bounds(*bounds, transform=src.transform)
    vals = (w.col_off, w.row_off, w.width, w.height)
    whole = tuple(round(v) for v in vals)
    if any(abs(v - r) > 1e-6 for v, r in zip(vals, whole)):
        raise ManifestError(f"{where}: a block does not fall on whole pixels of this file (grids not aligned)")
    col, row, width, height = whole
    if col < 0 or row < 0 or col + width > src.width or row + height > src.height or width < 1 or height < 1:
        raise ManifestError(f"{where}: does not cover the mask's extent")
    return Window(col, row, width, height)


def _cut(path: Path, bounds: tuple[float, float, float, float], target: Path, where: str) -> None:
    with open_raster(path) as src:
        win = _window(src, bounds, where)
        data = src.read(window=win)
        profile = {
            "driver": "GTiff",
            "width": int(win.width),
            "height": int(win.height),
            "count": src.count,
            "dtype": src.dtypes[0],
            "crs": src.crs,
            "transform": src.window_transform(win),
            "nodata": src.nodata,
            "compress": "deflate",
        }
        descriptions = src.descriptions

    def write(tmp: Path) -> None:
        import rasterio

        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            for i, d in enumerate(descriptions, start=1):
                if d:
                    dst.set_band_description(i, d)

    atomic_write_bytes(target, write)


def write_blocks(manifest: str | Path, out_dir: str | Path, n: int = 2, data_root: str | Path | None = None) -> Path:
    """Cut every sample of a segmentation manifest into ``n x n`` blocks under ``out_dir`` (module docstring);
    returns the new manifest's path.

    Raises:
        ManifestError: not a segmentation manifest, a file that is not a GeoTIFF, grids that do not align,
            an image smaller than ``n`` pixels a side, or ``out_dir`` holds a manifest already.
    """
    if int(n) < 2:
        raise ManifestError(f"blocks: n must be at least 2 (n x n blocks, one tested per fold), got {n}")
    n = int(n)
    ds = ManifestDataset(manifest, data_root=data_root)
    if ds.task != "segmentation":
        raise ManifestError(f"{ds.path}: blocks cut segmentation manifests (a mask column), not {ds.task}")
    out = Path(out_dir)
    target = out / "manifest.csv"
    if target.exists():
        raise ManifestError(f"{out}: holds a manifest already; choose an empty folder")
    rows: list[dict[str, Any]] = []
    for i, rec in enumerate(sorted(ds.records, key=lambda r: r["id"])):
        where = f"{ds.path}: {rec['id']}"
        files = {f"image_{k}" if k else "image": Path(p) for k, p in rec["images"].items()}
        files["mask"] = Path(rec["mask"])
        for col, p in files.items():
            if p.suffix.lower() not in CUTTABLE:
                raise ManifestError(f"{where}: {col} {p.name} is not a GeoTIFF; blocks cut single-file rasters only")
        with open_raster(files["mask"]) as m:
            bh, bw = m.height // n, m.width // n
            if bh < 1 or bw < 1:
                raise ManifestError(f"{where}: mask of {m.width} x {m.height} px cannot hold {n} x {n} blocks")
            grid = [(r, c, m.window_bounds(((r * bh, (r + 1) * bh), (c * bw, (c + 1) * bw)))) for r in range(n) for c in range(n)]  # fmt: skip
        for r, c, bounds in grid:
            bid = f"{rec['id']}_r{r}c{c}"
            row: dict[str, Any] = {"id": bid, "source": rec["id"]}
            for col, p in files.items():
                rel = Path("images" if col != "mask" else "masks") / f"{bid}_{col}.tif"
                _cut(p, bounds, out / rel, f"{where}: {col}")
                row[col] = rel.as_posix()
            for name, sensor in rec["sensors"].items():
                given = ds.card.sensor.get(name) if isinstance(ds.card.sensor, dict) else ds.card.sensor
                if sensor == given:
                    continue  # the card says it
                if isinstance(sensor, str) and sensor:
                    row[f"sensor_{name}" if name else "sensor"] = sensor
                elif sensor is not None:
                    raise ManifestError(f"{where}: a sensor sidecar file; blocks take catalogued sensors only")
            row["fold"] = (r * n + c + i) % (n * n)
            rows.append(row)
    card = ds.card.to_dict()
    card.pop("columns", None)  # the blocks' columns have the default names
    for key in ("sidecar", "classes_file"):
        if card.get(key):
            raise ManifestError(f"{ds.path}: the card's {key} is a file; blocks take cards without one")
        card.pop(key, None)
    card["classes"] = dict(zip(ds.class_ids, ds.classes))
    card["task"] = "segmentation"
    card["description"] = (
        f"{ds.path.name} cut into {n} x {n} spatial blocks (atomizer.data.blocks; pixels copied, never resampled); "
        f"fold k tests one block of every image. {card.get('description') or ''}"
    ).strip()
    card = {k: v for k, v in card.items() if v not in (None, "", [], {})}
    atomic_write_text(out / "manifest.yaml", yaml.safe_dump(card, sort_keys=False, allow_unicode=True))
    atomic_write_text(target, pd.DataFrame(rows).to_csv(index=False))
    return target
