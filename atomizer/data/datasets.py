"""PyTorch datasets over the readers: BigEarthNet (npz, official v1 and v2 layouts) and EuroSAT-MS.

Each item is a dict ``{"image": xarray.Dataset, "target": Tensor, "id": str}``: the image on its
native grids (see :mod:`atomizer.data.image`) and a 19-class multi-hot (BigEarthNet) or a class index
(EuroSAT). Modalities and tokenisation are applied downstream (:mod:`atomizer.engine.training`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from atomizer.core.paths import data_dir, embedded_dir
from atomizer.data.base import ImageDataset
from atomizer.data.folds import fold_split
from atomizer.data.layouts import bigearthnet_image, read_band_folder, read_bigearthnet_npz, read_eurosat
from atomizer.data.light import LightImage, bigearthnet_light
from atomizer.data.manifest import ManifestDataset, is_manifest
from atomizer.data.union import UnionDataset, is_union, part_label, union_folds, union_parts

EMBEDDED = {"bigearthnet": "bigearthnet", "eurosat": "eurosat"}


def embedded_path(name: str) -> Path:
    """Folder of an embedded dataset shipped in ``data/embedded`` (see :func:`atomizer.core.paths.data_dir`) ("bigearthnet" or "eurosat")."""
    if name not in EMBEDDED:
        raise KeyError(f"unknown embedded dataset {name!r}; choose from {sorted(EMBEDDED)}")
    return embedded_dir() / EMBEDDED[name]


def ben19_classes(nomenclature: str | Path | None = None) -> list[str]:
    """The official 19-class BigEarthNet order."""
    path = Path(nomenclature) if nomenclature else embedded_path("bigearthnet") / "label_nomenclature.json"
    return list(json.loads(path.read_text())["labels_19_order"])


def ben43_to_19(nomenclature: str | Path | None = None) -> dict[str, str | None]:
    path = Path(nomenclature) if nomenclature else embedded_path("bigearthnet") / "label_nomenclature.json"
    return dict(json.loads(path.read_text())["old43_to_new19"])


def balanced_subset(label_sets: Sequence[Sequence[str]], max_per_class: int, seed: int = 0) -> np.ndarray:
    """The paper's class-balanced subset: indices such that no class has more than ``max_per_class``.

    Images are visited in a seeded random order and kept when every one of their classes is still below
    the cap, so the cap holds exactly for all classes (multi-label images count for each of their
    classes) and rare classes keep all their images.
    """
    counts: dict[str, int] = {}
    keep = []
    for i in np.random.default_rng(seed).permutation(len(label_sets)):
        labs = list(label_sets[i])
        if labs and all(counts.get(c, 0) < max_per_class for c in labs):
            keep.append(i)
            for c in labs:
                counts[c] = counts.get(c, 0) + 1
    return np.sort(np.asarray(keep, dtype=np.int64))


class BigEarthNetNpz(ImageDataset):
    """BigEarthNet patches stored as npz (the embedded slice, ``ben_real_mini``) with metadata.json.

    Args:
        root: Folder with ``patches/*.npz``, ``metadata.json`` and ``label_nomenclature.json``
            (default: the embedded slice).
        split: "train", "validation", "test", or None for all patches with a split.
        include_s1: Add Sentinel-1 VV/VH where the patch has them.
    """

    def __init__(self, root: str | Path | None = None, split: str | None = None, include_s1: bool = False):
        super().__init__()
        self.root = Path(root) if root else embedded_path("bigearthnet")
        self.classes = ben19_classes(self.root / "label_nomenclature.json")
        self.include_s1 = include_s1
        meta = json.loads((self.root / "metadata.json").read_text())
        for m in meta:
            if split is not None and m.get("split") != split:
                continue
            if split is None and not m.get("split"):
                continue
            self.records.append(
                {"id": m["patch_id"], "labels": m["labels_19"], "path": self.root / "patches" / f"{m['patch_id']}.npz"}
            )

    def load(self, r: dict):
        return read_bigearthnet_npz(r["path"], include_s1=self.include_s1)

    def load_light(self, r: dict) -> LightImage:
        if self.include_s1:
            return super().load_light(r)
        with np.load(r["path"]) as z:
            return bigearthnet_light({k: z[k] for k in z.files}, r["id"], str(r["path"]))


class BigEarthNetOfficial(ImageDataset):
    """The full BigEarthNet in its official layouts.

    * v2 (reBEN): ``root/<tile>/<patch_id>/<patch_id>_B01.tif ...`` with labels and splits from the
      official ``metadata.parquet`` (columns ``patch_id, labels, split``); ``<tile>`` is the patch id
      without its last two ``_row_col`` fields.
    * v1: ``root/<patch>/<patch>_B01.tif ...`` and ``<patch>_labels_metadata.json`` holding the 43-class
      ``labels``, mapped to the 19-class nomenclature; splits from a CSV of patch names per split
      (``split_csv`` with columns ``patch_id, split``) if given.

    Args:
        root: Dataset root.
        version: "v1" or "v2".
        metadata: v2: path to ``metadata.parquet``. v1: optional split CSV.
        split: Keep only this split.
        max_per_class: Apply the paper's class-balanced subset rule (:func:`balanced_subset`).
        check_files: Drop records whose folder is missing (useful for partial downloads).
    """

    def __init__(
        self,
        root: str | Path,
        version: str = "v2",
        metadata: str | Path | None = None,
        split: str | None = None,
        max_per_class: int | None = None,
        seed: int = 0,
        check_files: bool = True,
        nomenclature: str | Path | None = None,
    ):
        super().__init__()
        self.root = Path(root)
        self.version = version
        self.classes = ben19_classes(nomenclature)
        if version == "v2":
            if metadata is None:
                raise ValueError("BigEarthNet v2 needs the official metadata.parquet (labels and splits)")
            df = pd.read_parquet(metadata, columns=["patch_id", "labels", "split"])
            if split is not None:
                df = df[df["split"] == split]
            for pid, labels in zip(df["patch_id"], df["labels"]):
                tile = "_".join(pid.split("_")[:-2])
                self.records.append({"id": pid, "labels": list(labels), "path": self.root / tile / pid})
        elif version == "v1":
            mapping = ben43_to_19(nomenclature)
            splits = None
            if metadata is not None:
                s = pd.read_csv(metadata)
                splits = dict(zip(s["patch_id"], s["split"]))
            for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
                if splits is not None and splits.get(folder.name) != split and split is not None:
                    continue
                meta = folder / f"{folder.name}_labels_metadata.json"
                if not meta.is_file():
                    continue
                labels43 = json.loads(meta.read_text())["labels"]
                labels = sorted({mapping[lab] for lab in labels43 if mapping.get(lab)})
                self.records.append({"id": folder.name, "labels": labels, "path": folder})
        else:
            raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
        if check_files:
            self.records = [r for r in self.records if r["path"].is_dir()]
        if max_per_class is not None:
            keep = balanced_subset([r["labels"] for r in self.records], max_per_class, seed)
            self.records = [self.records[i] for i in keep]

    def load(self, r: dict):
        return read_band_folder(r["path"], "sentinel2", dn_offset=0.0)


class BigEarthNetLMDB(ImageDataset):
    """BigEarthNet v2 from the community LMDB (:mod:`atomizer.data.lmdb_store`) and the official metadata.

    Labels, splits and Sentinel-1 twins (``s1_name``) come from ``metadata.parquet``; patches listed in
    ``metadata_for_patches_with_snow_cloud_or_shadow.parquet`` (next to it, or ``exclude``) are dropped, as
    in the official splits. Reading a patch costs one LMDB lookup and a safetensors decode.

    Args:
        root: Folder holding ``BigEarthNet-V2-LMDB/`` and ``metadata.parquet`` (what ``atomizer prepare``
            writes, and the layout of the official release).
        split: "train", "validation", "test" or None (all).
        lmdb_path: The database folder, if not ``root/BigEarthNet-V2-LMDB``.
        metadata: ``metadata.parquet``, if not in ``root``.
        exclude: The snow/cloud/shadow list; default: the official file next to the metadata, if present.
        include_s1: Add the Sentinel-1 twin's VV/VH.
        max_per_class: The paper's class-balanced subset (:func:`balanced_subset`).
        check_keys: Drop metadata patches that the database lacks (counted in :attr:`missing`).
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        lmdb_path: str | Path | None = None,
        metadata: str | Path | None = None,
        exclude: str | Path | None = None,
        include_s1: bool = False,
        max_per_class: int | None = None,
        seed: int = 0,
        nomenclature: str | Path | None = None,
        check_keys: bool = True,
    ):
        from atomizer.data.lmdb_store import LMDB_DIR, PatchReader

        super().__init__()
        self.root = Path(root)
        self.classes = ben19_classes(nomenclature)
        self.include_s1 = include_s1
        meta_path = Path(metadata) if metadata else self.root / "metadata.parquet"
        if not meta_path.is_file():
            raise FileNotFoundError(f"BigEarthNet LMDB: no metadata.parquet at {meta_path}")
        self.reader = PatchReader(Path(lmdb_path) if lmdb_path else self.root / LMDB_DIR)
        df = pd.read_parquet(meta_path)
        if split is not None:
            if split not in set(df["split"]):
                raise ValueError(f"unknown split {split!r}; {meta_path} has {sorted(set(df['split']))}")
            df = df[df["split"] == split]
        ex = Path(exclude) if exclude else meta_path.parent / "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
        if ex.is_file():
            df = df[~df["patch_id"].isin(set(pd.read_parquet(ex, columns=["patch_id"])["patch_id"]))]
        for row in df.itertuples(index=False):
            self.records.append({"id": row.patch_id, "labels": list(row.labels), "s1": getattr(row, "s1_name", None)})
        #: metadata patches absent from the database (a partial conversion); dropped with ``check_keys``
        self.missing = 0
        if check_keys:
            have = set(self.reader.keys())
            kept = [r for r in self.records if r["id"] in have]
            self.missing, self.records = len(self.records) - len(kept), kept
        if max_per_class is not None:
            keep = balanced_subset([r["labels"] for r in self.records], max_per_class, seed)
            self.records = [self.records[i] for i in keep]

    def arrays(self, r: dict) -> dict[str, np.ndarray]:
        """The patch's band arrays as stored (native grids), without building an image."""
        return self.reader.get(r["id"])

    def load_light(self, r: dict) -> LightImage:
        if self.include_s1:
            return super().load_light(r)
        return bigearthnet_light(self.arrays(r), r["id"], f"lmdb:{r['id']}")

    def load(self, r: dict):
        s1 = self.reader.get(r["s1"]) if self.include_s1 and r.get("s1") else None
        return bigearthnet_image(self.arrays(r), f"lmdb:{r['id']}", r["id"], include_s1=self.include_s1, s1=s1)


class EuroSAT(ImageDataset):
    """EuroSAT-MS GeoTIFFs (``<Class>/<Class>_<n>.tif``), single label, 10 classes.

    Args:
        root: Dataset folder (default: the embedded slice).
        split: "train", "validation" or "test" from ``split.csv`` (the fixed split shipped in
            ``data/``); None for every tile listed in ``index.csv``.
    """

    multilabel = False

    def __init__(self, root: str | Path | None = None, split: str | None = None):
        super().__init__()
        self.root = Path(root) if root else embedded_path("eurosat")
        table = self.root / ("split.csv" if split is not None else "index.csv")
        if not table.is_file():
            raise FileNotFoundError(f"{table} not found (EuroSAT root {self.root})")
        df = pd.read_csv(table)
        if split is not None:
            if split not in set(df["split"]):
                raise ValueError(f"unknown split {split!r}; {table} has {sorted(set(df['split']))}")
            df = df[df["split"] == split]
        self.classes = sorted(pd.read_csv(self.root / "index.csv")["label"].unique())
        for path, label in zip(df["path"], df["label"]):
            self.records.append(
                {
                    "id": Path(path).stem,
                    "label_idx": self.classes.index(label),
                    "labels": [label],
                    "path": self.root / path,
                }
            )

    def load(self, r: dict):
        return read_eurosat(r["path"])


def folds_table(name: str) -> pd.DataFrame:
    """The shipped k-fold assignment of an embedded dataset (``data/folds/<name>.csv``: id, stratum, fold)."""
    path = data_dir() / "folds" / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no fold assignment for dataset {name!r} ({path}); see scripts/make_folds.py")
    return pd.read_csv(path)


def stratified_fraction(ds: ImageDataset, fraction: float, seed: int = 0) -> list[int]:
    """Indices of a class-stratified ``fraction`` of ``ds`` (per class ``round(fraction * n_c)``, at least
    one; multi-label: by each image's first label), drawn with ``seed``, in the dataset's order."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(ds.records):
        groups.setdefault(r["labels"][0] if r["labels"] else "", []).append(i)
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for key in sorted(groups):
        idx = groups[key]
        keep += rng.choice(idx, size=max(1, round(fraction * len(idx))), replace=False).tolist()
    return sorted(keep)


def dataset_folds(name: str, root: str | Path | None = None) -> pd.DataFrame:
    """The k-fold assignment (``id, stratum, fold``) of a dataset by name or manifest path: the shipped
    ``data/folds`` table of an embedded dataset; a manifest's fold column or the folds file beside it; for a
    union (``a.csv+b.csv``) every part's own table, ids prefixed ``<part>/`` as the union's are, with a
    ``part`` column (:func:`atomizer.data.union.union_folds`)."""
    if is_union(name):
        names = union_parts(name)
        return union_folds([dataset_folds(n, root) for n in names], [part_label(n) for n in names])
    if is_manifest(name):
        return ManifestDataset(name, None, root).folds_table()
    return folds_table("bigearthnet" if name == "ben" else name)


def open_dataset(
    name: str, split: str | None = None, root: str | Path | None = None, fold: int | None = None
) -> ImageDataset:
    """A dataset by name or path, every kind behind the one protocol (:class:`~atomizer.data.base.ImageDataset`):

    * ``"eurosat"``, ``"bigearthnet"`` (npz), ``"bigearthnet_lmdb"`` (the community LMDB under ``root``): the
      embedded slices or the official layouts, with an optional root;
    * a manifest (``path/to/labels.csv``, ``.parquet``, ``.geojson``, a STAC ItemCollection ``.json``: any
      labelled collection, :mod:`atomizer.data.manifest`); ``root`` is a second folder its paths may use;
    * ``"torchgeo:<Dataset>"``: a TorchGeo dataset class reading ``root`` (:mod:`atomizer.data.torchgeo`,
      ``pip install atomizer[torchgeo]``).

    With ``fold``, the split comes from the k-fold assignment (the shipped ``data/folds`` table, a manifest's
    fold column or the folds file ``atomizer dataset check`` wrote beside it; :func:`fold_split`) instead
    of the dataset's fixed split.

    A union of datasets (:mod:`atomizer.data.union`) joins parts with ``+``
    (``"data/embedded/dense/terramesh/manifest.csv+data/embedded/dense/caffe/manifest.csv"``), each part anything
    this function opens: one dataset whose classes are every part's, named ``<part>/<class>`` (the part is a
    manifest's folder name when its stem is ``manifest``, else its stem), targets and mask values offset to
    index them, each part's ignored pixels still ignored, and every item saying its ``part``. The split, or
    fold ``fold``, is taken in each part by its own fold table and the results joined; ``root`` is passed to
    every part. Parts of different tasks (a mask set and a label set) are refused.
    """
    if is_union(name):
        names = union_parts(name)
        parts = [open_dataset(n, split, root, fold=fold) for n in names]
        return UnionDataset(parts, [part_label(n) for n in names], name)
    if is_manifest(name):
        if fold is not None:
            manifest = ManifestDataset(name, None, root)
            return fold_split(manifest, manifest.folds_table(), int(fold), split or "test")
        return ManifestDataset(name, split, root)
    if name.startswith("torchgeo:"):
        from atomizer.data.torchgeo import open_torchgeo

        if fold is not None:
            raise ValueError(f"dataset {name!r}: TorchGeo datasets have their own splits; fold is not supported")
        return open_torchgeo(name, split, root)
    if fold is not None:
        ds = open_dataset(name, None, root)
        return fold_split(ds, folds_table("bigearthnet" if name == "ben" else name), int(fold), split or "test")
    if name == "eurosat":
        return EuroSAT(root, split)
    if name in ("bigearthnet", "ben"):
        return BigEarthNetNpz(root, split)
    if name == "bigearthnet_lmdb":
        if root is None:
            raise ValueError("dataset 'bigearthnet_lmdb' needs data_root: the folder with BigEarthNet-V2-LMDB/")
        return BigEarthNetLMDB(root, split)
    raise KeyError(
        f"unknown dataset {name!r}; choose 'eurosat', 'bigearthnet', 'bigearthnet_lmdb', a manifest "
        "(.csv, .parquet, .geojson, STAC .json) or 'torchgeo:<Dataset>'"
    )


@lru_cache(maxsize=1)
def embedded_items() -> dict[str, str]:
    """Label -> path of the embedded inputs: EuroSAT-MS tiles and BigEarthNet patches (test split first)."""
    items: dict[str, str] = {}
    order = {"test": 0, "validation": 1, "train": 2}
    try:
        root = embedded_path("eurosat")
        df = pd.read_csv(root / "split.csv")
        df = df.assign(o=df["split"].map(order).fillna(3)).sort_values(["o", "path"], kind="stable")
        for p, s in zip(df["path"], df["split"]):
            items[f"EuroSAT ({s}) {Path(p).stem}"] = str(root / p)
    except (OSError, KeyError, ValueError):
        pass
    try:
        root = embedded_path("bigearthnet")
        meta = json.loads((root / "metadata.json").read_text())
        meta = sorted(meta, key=lambda m: (order.get(m.get("split"), 3), m["patch_id"]))
        for m in meta:
            p = root / "patches" / f"{m['patch_id']}.npz"
            if p.is_file():
                items[f"BigEarthNet ({m.get('split') or '-'}) {m['patch_id']}"] = str(p)
    except (OSError, KeyError, ValueError):
        pass
    return items
