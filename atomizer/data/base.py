"""The one dataset protocol every dataset of the toolkit follows (EuroSAT, BigEarthNet, manifests, TorchGeo).

An item is ``{"image": xarray.Dataset, "target": Tensor, "id": str}``: the image on its bands' native grids
(:mod:`atomizer.data.image`) and the target (a class index, or a multi-hot over :attr:`ImageDataset.classes`).
``records`` is a plain list of dicts (one per sample, with at least ``id`` and ``labels``) that the split,
fold and fraction helpers filter in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from atomizer.data.light import LightImage


def multi_hot(labels: Sequence[str], classes: Sequence[str]) -> torch.Tensor:
    index = {c: i for i, c in enumerate(classes)}
    y = torch.zeros(len(classes))
    for lab in labels:
        if lab not in index:
            raise KeyError(f"label {lab!r} is not one of the {len(classes)} classes")
        y[index[lab]] = 1.0
    return y


class ImageDataset(torch.utils.data.Dataset):
    multilabel: bool = True
    classes: list[str]
    fold: int | None = None  # the cross-validation fold its split was chosen by (fold_split)

    def __init__(self) -> None:
        self.records: list[dict] = []

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def ids(self) -> list[str]:
        return [r["id"] for r in self.records]

    def load(self, r: dict):  # pragma: no cover - abstract
        """The record's image (:mod:`atomizer.data.image`)."""
        raise NotImplementedError

    def target(self, r: dict) -> torch.Tensor:
        if self.multilabel:
            return multi_hot(r["labels"], self.classes)
        return torch.tensor(r["label_idx"], dtype=torch.long)

    def targets(self) -> torch.Tensor:
        """All targets stacked: (n, C) multi-hot or (n,) class indices."""
        return torch.stack([self.target(r) for r in self.records])

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        return {"image": self.load(r), "target": self.target(r), "id": r["id"]}

    def load_light(self, r: dict) -> LightImage:
        """The record's image as a :class:`~atomizer.data.light.LightImage` (the loaders' fast path)."""
        return LightImage.from_xarray(self.load(r))

    def light_item(self, i: int) -> dict:
        """Item ``i`` with its image as a :class:`~atomizer.data.light.LightImage` (no xarray object)."""
        r = self.records[i]
        return {"image": self.load_light(r), "target": self.target(r), "id": r["id"]}
