"""From dataset items to model inputs: modality simulation, then atoms (Atomizer) or canvas (baselines).

One :class:`ModalityDataset` serves training (each image has its assigned training modality and, if
asked, a random window position), validation (assigned training modalities, centred windows) and
testing (one modality applied to every image). Randomness is a pure function of ``(seed, epoch,
index)``, so an interrupted run resumes on exactly the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from atomizer.modalities import Modality, simulate
from atomizer.tokens import AtomBatch, collate, tokenize


@dataclass(frozen=True)
class CanvasSpec:
    """The baselines' fixed input grid (the source format of the modality set)."""

    size_px: int = 64
    gsd_m: float = 10.0


class InMemory(torch.utils.data.Dataset):
    """Every item of ``base`` loaded once and kept (small datasets evaluated under many modalities)."""

    def __init__(self, base):
        self.items = [base[i] for i in range(len(base))]
        self.multilabel = base.multilabel
        self.classes = base.classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def model_input(image: xr.Dataset, kind: str, canvas: CanvasSpec | None = None) -> Any:
    """One simulated image as the model's input: an :class:`AtomBatch` of one, or ``(canvas, gsd)``."""
    if kind == "atoms":
        return tokenize(image)
    if kind == "canvas":
        from atomizer.baselines import image_gsd, to_canvas

        spec = canvas or CanvasSpec()
        x, _present = to_canvas(image, size_px=spec.size_px, gsd_m=spec.gsd_m)
        return x, torch.tensor(image_gsd(image), dtype=torch.float32)
    raise ValueError(f"unknown input kind {kind!r} (expected 'atoms' or 'canvas')")


class ModalityDataset(torch.utils.data.Dataset):
    """A dataset seen through modalities.

    Args:
        base: An :mod:`atomizer.datasets` dataset (items ``{"image", "target", "id"}``).
        modalities: The modalities to draw from.
        assignment: Index into ``modalities`` per item (one modality per image); default: all items
            get ``modalities[0]``.
        kind: "atoms" or "canvas".
        canvas: Baseline input grid.
        random_window: Random window position (training) instead of centred.
        seed: Base seed of the window positions.
        cache: Keep loaded source images in memory (small datasets).
    """

    def __init__(self, base, modalities: Sequence[Modality], assignment: np.ndarray | None = None,
                 kind: str = "atoms", canvas: CanvasSpec | None = None, random_window: bool = False,
                 seed: int = 0, cache: bool = True):
        self.base = base
        self.modalities = list(modalities)
        self.assignment = (np.zeros(len(base), dtype=np.int64) if assignment is None
                           else np.asarray(assignment, dtype=np.int64))
        if len(self.assignment) != len(base):
            raise ValueError(f"assignment has {len(self.assignment)} entries for {len(base)} images")
        self.kind = kind
        self.canvas = canvas
        self.random_window = random_window
        self.seed = seed
        self.epoch = 0
        self._cache: dict[int, dict] | None = {} if cache else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def item(self, i: int) -> dict:
        if self._cache is None:
            return self.base[i]
        if i not in self._cache:
            self._cache[i] = self.base[i]
        return self._cache[i]

    def simulated(self, i: int) -> xr.Dataset:
        """Item ``i``'s image under its modality."""
        m = self.modalities[self.assignment[i]]
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.random_window else None
        return simulate(self.item(i)["image"], m, rng=rng)

    def __getitem__(self, i: int) -> dict:
        it = self.item(i)
        return {"input": model_input(self.simulated(i), self.kind, self.canvas), "target": it["target"],
                "id": it["id"], "modality": int(self.assignment[i])}


def collate_items(items: Sequence[dict]) -> dict:
    """Collate :class:`ModalityDataset` items: padded atoms, or stacked canvases and GSDs."""
    first = items[0]["input"]
    if isinstance(first, AtomBatch):
        inputs: Any = collate([it["input"] for it in items])
    else:
        inputs = (torch.stack([it["input"][0] for it in items]), torch.stack([it["input"][1] for it in items]))
    return {"input": inputs, "target": torch.stack([it["target"] for it in items]),
            "id": [it["id"] for it in items], "modality": torch.tensor([it["modality"] for it in items])}


def move_input(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, AtomBatch):
        return inputs.to(device, non_blocking=True)
    return tuple(t.to(device, non_blocking=True) for t in inputs)


def forward(model: torch.nn.Module, inputs: Any, **kw: Any) -> torch.Tensor:
    """Call any registered model on its collated input."""
    if isinstance(inputs, AtomBatch):
        return model(inputs, **kw)
    x, gsd = inputs
    return model(x, gsd)
