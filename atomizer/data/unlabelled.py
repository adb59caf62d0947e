"""Unlabelled images for pretraining: datasets and manifests without their labels, scene tiles, GeoTIFF folders.

A source is a dict with one of

* ``dataset: NAME`` (``split``, ``root``): anything :func:`atomizer.data.datasets.open_dataset` opens
  (``eurosat``, ``bigearthnet``, ``bigearthnet_lmdb``, a manifest path, a union), labels ignored. BigEarthNet
  patches keep their Sentinel-1 ``VV``/``VH`` where the patch has them (``s1: false`` drops them);
* ``manifest: PATH`` (``split``, ``root``): any manifest (:class:`atomizer.data.manifest.ManifestDataset`,
  the one reader): each row's images read with their card's sensors and bands and co-registered images
  merged, exactly as the labelled dataset reads them; labels and masks are never read into the items;
* ``path: FILE_OR_FOLDER`` (``pattern``, ``sensor``): a band folder (e.g. a Major-TOM product), a GeoTIFF /
  npz file, or a folder of such files,

A ``dataset`` or ``manifest`` source may also say ``exclude_fold: K``: every image but the test images of
cross-validation fold ``K`` of that dataset's fold table (:func:`atomizer.data.folds.fold_split`), so that
pretraining for fold ``K`` never sees the pixels that fold is tested on; or ``fold: K`` with ``split``
(default ``train``): that split of fold ``K`` (e.g. the images a fold-``K`` training run trains on).

plus optional ``tile_px`` (non-overlapping tiles of that many pixels of the image's finest grid) and
``limit`` (first N images or tiles). Every image is read at its native grid: each band keeps its own GSD
and pixel grid (no resampling); a tile is a window of the image, every band cut on its own grid. See
:class:`atomizer.engine.pretraining.PretrainConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from atomizer.data.base import ImageDataset
from atomizer.data.datasets import open_dataset
from atomizer.data.discovery import find_band_files
from atomizer.data.image import ImageReadError, image_bands
from atomizer.data.manifest import ManifestDataset
from atomizer.data.modalities import Modality, simulate
from atomizer.data.readers import open_image


def _band_folder(folder: Path, sensor: str | None) -> bool:
    """Whether ``folder`` holds band files of ``sensor`` (default Sentinel-2) by the one discovery rule."""
    try:
        return bool(find_band_files(folder, sensor or "sentinel2"))
    except ImageReadError:
        return False


#: A window of a tiled source: the modality it is simulated as, and its top-left offset (m) in the image.
Window = tuple[Modality, tuple[float, float]]


def tile_windows(image, tile_px: int) -> list[Window]:
    """Top-left offsets (m) of the non-overlapping ``tile_px`` tiles of ``image``'s finest grid."""
    names = image_bands(image)
    gsd = min(float(image[b].attrs["gsd_m"]) for b in names)
    exts = []
    for b in names:
        da = image[b]
        g = float(da.attrs["gsd_m"])
        exts.append((da.shape[1] * g, da.shape[0] * g))
    width, height = min(e[0] for e in exts), min(e[1] for e in exts)
    tile_m = tile_px * gsd
    nx, ny = int(width // tile_m), int(height // tile_m)
    mod = Modality("tile", tile_px, gsd, tuple(names))
    return [(mod, (i * tile_m, j * tile_m)) for j in range(ny) for i in range(nx)]


class UnlabelledImages(torch.utils.data.Dataset):
    """Images of several sources as dataset items ``{"image", "target": 0, "id"}`` (loaded lazily).

    Whole images come from their reader; a tile is :func:`atomizer.data.modalities.simulate` of its window
    (all bands at native resolution, so 20 m and 60 m bands keep their own grids).
    """

    multilabel = False
    classes = ["unlabelled"]

    def __init__(self, sources: Sequence[Mapping[str, Any]]):
        self.records: list[tuple[int, Any, Window | None, str]] = []  # (source index, loader key, window, id)
        self._loaders: list = []
        self._cache: dict[tuple[int, Any], Any] = {}
        #: the sources as given, and the index in :attr:`records` of each source's first item
        self.sources: list[dict] = [dict(s) for s in sources]
        self.first: list[int] = []
        for si, src in enumerate(sources):
            src = dict(src)
            self.first.append(len(self.records))
            keys, loader, names = self._source(src)
            self._loaders.append(loader)
            items: list[tuple[int, Any, Window | None, str]] = []
            for key, name in zip(keys, names):
                if src.get("tile_px"):
                    image = self._image(si, key)
                    items += [
                        (si, key, w, f"{name}_t{k}") for k, w in enumerate(tile_windows(image, int(src["tile_px"])))
                    ]
                else:
                    items.append((si, key, None, name))
                if src.get("limit") and len(items) >= int(src["limit"]):
                    break
            if src.get("limit"):
                items = items[: int(src["limit"])]
            if not items:
                raise ValueError(f"pretraining source #{si} {src} gives no image")
            self.records += items

    @staticmethod
    def _source(src: dict):
        known = {
            "dataset",
            "manifest",
            "split",
            "root",
            "s1",
            "exclude_fold",
            "fold",
            "path",
            "pattern",
            "sensor",
            "tile_px",
            "limit",
        }
        if set(src) - known:
            raise ValueError(
                f"unknown key(s) {sorted(set(src) - known)} in pretraining source {src}; known: {sorted(known)}"
            )
        kinds = [k for k in ("dataset", "manifest", "path") if k in src]
        if len(kinds) != 1:
            raise ValueError(f"a pretraining source needs exactly one of 'dataset', 'manifest' or 'path': {src}")
        for key in ("tile_px", "limit"):
            if src.get(key) is not None and (
                isinstance(src[key], bool) or not isinstance(src[key], int) or src[key] < 1
            ):
                raise ValueError(f"pretraining source {src}: {key} must be a positive integer, got {src[key]!r}")
        if "s1" in src and not isinstance(src["s1"], bool):
            raise ValueError(f"pretraining source {src}: s1 must be true or false, got {src['s1']!r}")
        for key in ("exclude_fold", "fold"):  # fold numbers of the dataset's fold table
            v = src.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"pretraining source {src}: {key} must be a fold number, got {v!r}")
            if v is not None and "path" in src:
                raise ValueError(f"pretraining source {src}: {key} needs a dataset or a manifest (a fold table)")
        held, fold = src.get("exclude_fold"), src.get("fold")
        if held is not None and src.get("split") is not None:
            raise ValueError(f"pretraining source {src}: give split or exclude_fold, not both")
        if held is not None and fold is not None:
            raise ValueError(f"pretraining source {src}: give fold or exclude_fold, not both")
        if "manifest" in src or "dataset" in src:
            ds: ImageDataset
            if fold is not None:  # one split of cross-validation fold K (its fold table)
                name = src.get("manifest", src.get("dataset"))
                ds = open_dataset(str(name), src.get("split") or "train", src.get("root"), fold=fold)
            elif "manifest" in src:
                ds = ManifestDataset(src["manifest"], src.get("split"), src.get("root"))
            else:
                ds = open_dataset(src["dataset"], src.get("split"), src.get("root"))
            if held is not None:  # every image but the test fold's (the fold table of that dataset)
                name = src.get("manifest", src.get("dataset"))
                tested = set(open_dataset(str(name), "test", src.get("root"), fold=held).ids())
                ds.records = [r for r, i in zip(ds.records, ds.ids()) if i not in tested]
            if hasattr(ds, "include_s1"):  # BigEarthNet (npz, LMDB): Sentinel-1 where the patch has it
                ds.include_s1 = bool(src.get("s1", True))
            return list(range(len(ds))), (lambda i: ds.load(ds.records[i])), ds.ids()
        path = Path(src["path"])
        sensor = src.get("sensor")
        if not path.exists():
            raise FileNotFoundError(f"pretraining source not found: {path}")
        if path.is_file():
            files = [path]
        elif src.get("pattern"):
            files = sorted(path.glob(src["pattern"]))
        else:  # band folders (e.g. Major-TOM products: the one finder's rule) anywhere below, else image files
            dirs = [path, *sorted(d for d in path.rglob("*") if d.is_dir())]
            files = [d for d in dirs if _band_folder(d, sensor)]
            files = files or sorted(f for f in path.iterdir() if f.suffix.lower() in (".tif", ".tiff", ".jp2", ".npz"))
        return files, (lambda f: open_image(f, sensor=sensor)), [Path(f).stem for f in files]

    def _image(self, si: int, key: Any):
        if (si, key) not in self._cache:
            self._cache[(si, key)] = self._loaders[si](key)
        return self._cache[(si, key)]

    def __len__(self) -> int:
        return len(self.records)

    def ids(self) -> list[str]:
        return [r[3] for r in self.records]

    def source_of(self, i: int) -> int:
        """The index (in :attr:`sources`) of the source item ``i`` comes from."""
        return self.records[i][0]

    def __getitem__(self, i: int) -> dict:
        si, key, window, name = self.records[i]
        image = self._image(si, key)
        if window is not None:
            mod, offset = window
            image = simulate(image, mod, offset_m=offset)
        return {"image": image, "target": torch.tensor(0), "id": name}
