"""Several datasets as one: ``dataset: "a/manifest.csv+b/manifest.csv"`` wherever a ``dataset:`` is accepted.

The case only atoms allow: one model with one set of weights reads images of different sensors, band counts
and GSDs (e.g. Sentinel-2 + Sentinel-1 land cover and TerraSAR-X glacier zones), so their datasets can be
trained on at once. The union (:class:`UnionDataset`) follows the :class:`~atomizer.data.base.ImageDataset`
protocol:

* its classes are every part's classes, each named ``<part label>/<class>`` (``terramesh/water``,
  ``caffe/glacier``), in part order; a part's targets (class indices, multi-hot vectors, mask class indices)
  are offset by the classes of the parts before it, so they index the union's list; pixels a part does not
  score (its ``ignore_index``, unlabelled) stay unscored;
* the part label is a manifest's folder name when its stem is ``manifest`` (``data/x/manifest.csv`` -> ``x``),
  else its stem (``labels.csv`` -> ``labels``), or the built-in dataset's name (``eurosat``);
* item and record ids are ``<part label>/<id>`` and every item says its part (``item["part"]``,
  ``record["meta"]["part"]``);
* a split or a cross-validation fold is taken in each part, by its own fold table, and the results are
  joined (:func:`atomizer.data.datasets.open_dataset`);
* parts of different tasks (a mask set and a label set, single- and multi-label) are refused, in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from atomizer.data.base import ImageDataset
from atomizer.data.manifest import MaskLabels, is_manifest

#: What joins the parts of a union in a ``dataset:`` string.
UNION_SEP = "+"


class UnionError(ValueError):
    """A union of datasets that cannot be formed (one line naming the parts)."""


def is_union(name: str | Path) -> bool:
    """Whether a ``dataset:`` value names a union of datasets (parts joined with ``+``); an existing file whose
    name holds a ``+`` is one dataset."""
    text = str(name)
    return UNION_SEP in text and not Path(text).is_file()


def union_parts(name: str) -> list[str]:
    """The parts of a union string, stripped; refuses an empty part (``a.csv++b.csv``, a trailing ``+``)."""
    parts = [p.strip() for p in str(name).split(UNION_SEP)]
    if len(parts) < 2 or not all(parts):
        raise UnionError(f"dataset {name!r}: a union joins two or more datasets with '+', none of them empty")
    return parts


def part_label(name: str) -> str:
    """The label of one part: a manifest's folder name when its stem is ``manifest``, else its stem; a built-in
    dataset's own name (``torchgeo:X`` -> ``X``)."""
    if is_manifest(name):
        p = Path(name)
        return p.parent.name if p.stem == "manifest" and p.parent.name else p.stem
    return name.split(":", 1)[-1]


def task_of(ds: ImageDataset) -> str:
    """``segmentation`` (a mask set), ``multilabel`` or ``classification``: what a dataset's targets are."""
    task = getattr(ds, "task", None)
    if task in ("segmentation", "multilabel", "classification"):
        return str(task)
    return "multilabel" if ds.multilabel else "classification"


class UnionDataset(ImageDataset):
    """Datasets as one (see the module docstring).

    Args:
        parts: The datasets, in order (their classes are laid out in this order).
        labels: One label per part (:func:`part_label`); they must differ.
        name: The ``dataset:`` string, for messages.

    Raises:
        UnionError: fewer than two parts, repeated labels, or parts of different tasks.
    """

    def __init__(self, parts: Sequence[ImageDataset], labels: Sequence[str], name: str = "union"):
        super().__init__()
        if len(parts) < 2 or len(parts) != len(labels):
            raise UnionError(f"dataset {name!r}: a union needs two or more parts, one label each")
        if len(set(labels)) != len(labels):
            dup = sorted({lab for lab in labels if list(labels).count(lab) > 1})
            raise UnionError(
                f"dataset {name!r}: two parts have the label {dup[0]!r} (a manifest's folder name, or its stem); "
                "rename one manifest"
            )
        tasks = [task_of(p) for p in parts]
        if len(set(tasks)) > 1:
            desc = ", ".join(f"{lab} is {t}" for lab, t in zip(labels, tasks))
            raise UnionError(f"dataset {name!r}: its parts have different tasks ({desc}); a union joins one task")
        self.name = name
        self.parts = list(parts)
        self.labels = list(labels)
        self.task = tasks[0]
        self.multilabel = parts[0].multilabel
        #: the union's class index of each part's class 0
        self.offsets: list[int] = []
        self.classes = []
        #: the part label of each union class
        self.class_parts: list[str] = []
        for lab, p in zip(labels, parts):
            self.offsets.append(len(self.classes))
            self.classes += [f"{lab}/{c}" for c in p.classes]
            self.class_parts += [lab] * len(p.classes)
        for k, (lab, p) in enumerate(zip(labels, parts)):
            for j, r in enumerate(p.records):
                meta = {**(r.get("meta") or {}), "part": lab}
                rec: dict[str, Any] = {
                    "id": f"{lab}/{r['id']}",
                    "part": k,
                    "index": j,
                    "labels": [f"{lab}/{c}" for c in r.get("labels", [])],
                    "split": r.get("split"),
                    "meta": meta,
                }
                if "label_idx" in r:
                    rec["label_idx"] = int(r["label_idx"]) + self.offsets[k]
                self.records.append(rec)
        folds = {getattr(p, "fold", None) for p in parts}
        self.fold = folds.pop() if len(folds) == 1 else None

    # ---- what the parts hold

    def part_of(self) -> list[str]:
        """The part label of every record, in order."""
        return [self.labels[r["part"]] for r in self.records]

    def _part(self, r: dict) -> tuple[ImageDataset, dict, int]:
        p = self.parts[r["part"]]
        return p, p.records[r["index"]], self.offsets[r["part"]]

    # ---- the protocol

    def load(self, r: dict):
        p, pr, _ = self._part(r)
        return p.load(pr)

    def load_light(self, r: dict):
        p, pr, _ = self._part(r)
        return p.load_light(pr)

    def _offset_target(self, t: torch.Tensor, off: int) -> torch.Tensor:
        if self.multilabel:
            out = torch.zeros(len(self.classes), dtype=t.dtype)
            out[off : off + len(t)] = t
            return out
        return t + off

    def target(self, r: dict) -> torch.Tensor:
        p, pr, off = self._part(r)
        return self._offset_target(p.target(pr), off)

    def _remap(self, item: dict, r: dict) -> dict:
        _, _, off = self._part(r)
        out = {
            **item,
            "id": r["id"],
            "target": self._offset_target(item["target"], off),
            "part": self.labels[r["part"]],
        }
        mask = item.get("mask")
        if isinstance(mask, MaskLabels):
            values = np.where(mask.values >= 0, mask.values + off, mask.values)
            out["mask"] = replace(mask, values=values)
        return out

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        p, _, _ = self._part(r)
        return self._remap(p[r["index"]], r)

    def light_item(self, i: int) -> dict:
        r = self.records[i]
        p, _, _ = self._part(r)
        return self._remap(p.light_item(r["index"]), r)

    # ---- folds

    def folds_table(self) -> pd.DataFrame:
        """``id, stratum, fold, part``: every part's own fold table (a manifest's; ids prefixed with the part
        label), as :func:`union_folds` joins them."""
        tables = []
        for lab, p in zip(self.labels, self.parts):
            get = getattr(p, "folds_table", None)
            if get is None:
                raise UnionError(f"dataset {self.name!r}: part {lab!r} has no fold table of its own")
            tables.append(get())
        return union_folds(tables, self.labels)


def union_folds(tables: Sequence[pd.DataFrame], labels: Sequence[str]) -> pd.DataFrame:
    """The parts' fold tables (``id, stratum, fold``) as one, ids prefixed ``<label>/`` and a ``part`` column."""
    out = []
    for lab, t in zip(labels, tables):
        t = t.copy()
        t["id"] = [f"{lab}/{i}" for i in t["id"].astype(str)]
        t["part"] = lab
        out.append(t)
    return pd.concat(out, ignore_index=True)


__all__ = [
    "UNION_SEP",
    "UnionDataset",
    "UnionError",
    "is_union",
    "part_label",
    "task_of",
    "union_folds",
    "union_parts",
]
