"""From dataset items to model inputs: modality simulation, then atoms (Atomizer) or canvas (baselines).

Every input is a batch object with ``.to()``, ``pin_memory()`` and ``collate``:
:class:`~atomizer.atoms.tokens.AtomBatch` or :class:`~atomizer.atoms.canvas.CanvasBatch`, and every
model is called as ``model(batch)``.

One :class:`ModalityDataset` serves training (each image has its assigned training modality and, if
asked, a random window position), validation (assigned training modalities, centred windows) and
testing (one modality applied to every image). Randomness is a pure function of ``(seed, epoch,
index)``, so an interrupted run resumes on exactly the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
import xarray as xr

from atomizer.atoms.canvas import CanvasBatch, CanvasSpec
from atomizer.atoms.dense import IGNORE, DenseQueries, window_target
from atomizer.atoms.tokens import WIRE_FORMATS, AtomBatch
from atomizer.data.augment import AugmentConfig, augment, augment_grid
from atomizer.data.light import LightImage
from atomizer.data.modalities import NATIVE_MODALITY, Modality, native_modality, simulate

#: A dataset of at most this many images is kept in memory once read (per process: EuroSAT-sized sets read
#: from GeoTIFF); a larger one is read per item, which the LMDB makes cheap (0.1 ms a patch). The full
#: BigEarthNet holds 69,373 training patches, about 11 GB of DN: kept, in every loader worker.
IN_MEMORY_MAX_IMAGES = 20_000


def keep_in_memory(dataset) -> bool:
    """Whether ``dataset`` is small enough to keep in memory (:data:`IN_MEMORY_MAX_IMAGES`)."""
    return len(dataset) <= IN_MEMORY_MAX_IMAGES


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


def model_input(
    image: xr.Dataset | LightImage, input_type: type, canvas: CanvasSpec | None = None, wire: str = "full"
) -> Any:
    """One (simulated) image as a batch of one of ``input_type`` (:class:`AtomBatch` or :class:`CanvasBatch`);
    ``wire="compact"`` lays atoms out for the trip to the model (:mod:`atomizer.atoms.tokens`; a canvas has
    one form)."""
    kind = cast("type[AtomBatch] | type[CanvasBatch]", input_type)  # what models.registry.input_type returns
    return kind.from_image(image, canvas, wire=wire)


def wire_for(setting: str, device: torch.device, num_workers: int = 0) -> str:
    """The atoms' layout for a loader (``ModalityDataset(wire=...)``): ``"auto"`` is ``"compact"`` where
    batches cross a process (worker processes) or a device (GPU) boundary, else ``"full"``, which spares
    the CPU-only, in-process case the rebuild."""
    if setting == "auto":
        return "compact" if num_workers > 0 or device.type != "cpu" else "full"
    if setting not in WIRE_FORMATS:
        raise ValueError(f"wire must be auto, compact or full, got {setting!r}")
    return setting


class ModalityDataset(torch.utils.data.Dataset):
    """A dataset seen through modalities.

    Args:
        base: An :mod:`atomizer.data.datasets` dataset (items ``{"image", "target", "id"}``).
        modalities: The modalities to draw from.
        assignment: Index into ``modalities`` per item (one modality per item); default: all items
            get ``modalities[0]``.
        input_type: The batch class the model reads (:class:`AtomBatch`, :class:`CanvasBatch`:
            :func:`atomizer.models.registry.input_type`).
        canvas: Canvas grid of the canvas models.
        random_window: Random window position (training) instead of centred.
        seed: Base seed of the window positions.
        cache: Keep loaded source images in memory; default: when the dataset is small
            (:func:`keep_in_memory`).
        augment: Label-preserving augmentation after the simulation (:mod:`atomizer.data.augment`).
        dense: Segmentation: targets are the items' masks (``item["mask"]``) on each window's output grid.
        dense_gsd_m: The output grid's GSD (m) for ``dense``; default: the mask's own.
        max_queries: Training: score at most this many output pixels of each window, drawn at random (a pure
            function of seed, epoch and index) where its grid has more: the loss is unbiased and the dense
            decoder's cost per step no longer grows with the output resolution; ``None``: every pixel.
        windows_per_image: Items per image per epoch (``len = len(base) * windows_per_image``; item ``j`` is
            image ``j // windows_per_image``), each with its own modality and random window: a few large
            tiles (dense sets) give many windows an epoch, as a random geo-sampler does.
        fast: Read and simulate images as :class:`~atomizer.data.light.LightImage` (no xarray object per
            item; the same atoms, tested) where the base dataset offers ``light_item``.
        wire: ``"compact"``: atoms as index runs and, where the modality keeps the stored integers, uint16
            DN, rebuilt by ``batch.to(device)`` (3-5 bytes per atom instead of 17 from worker processes and
            to the GPU; the same atoms, tested); ``"full"``: every index materialised
            (:mod:`atomizer.atoms.tokens`).
    """

    def __init__(
        self,
        base,
        modalities: Sequence[Modality],
        assignment: np.ndarray | None = None,
        input_type: type = AtomBatch,
        canvas: CanvasSpec | None = None,
        random_window: bool = False,
        seed: int = 0,
        cache: bool | None = None,
        augment: AugmentConfig | None = None,
        fast: bool = True,
        wire: str = "full",
        dense: bool = False,
        dense_gsd_m: float | None = None,
        windows_per_image: int = 1,
        max_queries: int | None = None,
    ):
        if windows_per_image < 1:
            raise ValueError(f"windows_per_image must be >= 1, got {windows_per_image}")
        if max_queries is not None and max_queries < 1:
            raise ValueError(f"max_queries must be >= 1 (or None), got {max_queries}")
        self.max_queries = max_queries
        self.base = base
        self.windows_per_image = windows_per_image
        #: Segmentation: each item's target is its mask on the output grid of its window at ``dense_gsd_m``
        #: metres (default: the mask's own GSD), a grid fixed in metres whatever the modality.
        self.dense, self.dense_gsd_m = dense, dense_gsd_m

        self.wire = wire
        self.fast = fast and hasattr(base, "light_item")
        self.modalities = list(modalities)
        self.assignment = (
            np.zeros(len(self), dtype=np.int64) if assignment is None else np.asarray(assignment, dtype=np.int64)
        )
        if len(self.assignment) != len(self):
            raise ValueError(f"assignment has {len(self.assignment)} entries for {len(self)} items")
        self.input_type = input_type
        self.canvas = canvas
        self.random_window = random_window
        self.seed = seed
        self.augment = augment
        self.epoch = 0
        self._cache: dict[int, dict] | None = {} if (keep_in_memory(base) if cache is None else cache) else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base) * self.windows_per_image

    def item(self, i: int) -> dict:
        """The base dataset's item of item ``i``'s image."""
        i //= self.windows_per_image
        get = self.base.light_item if self.fast else self.base.__getitem__
        if self._cache is None:
            return get(i)
        if i not in self._cache:
            self._cache[i] = get(i)
        return self._cache[i]

    def simulated(self, i: int, item: dict | None = None, epoch: int | None = None) -> xr.Dataset | LightImage:
        """Item ``i``'s image under its modality (a :class:`LightImage` on the fast path), for ``epoch``
        (default: the dataset's, :meth:`set_epoch`)."""
        epoch = self.epoch if epoch is None else epoch
        m = self.modalities[self.assignment[i]]
        source = (item or self.item(i))["image"]
        if m == NATIVE_MODALITY:  # the image as read: its own native modality (one window: nothing random)
            m = native_modality(source)
        rng = np.random.default_rng([self.seed, epoch, i]) if self.random_window else None
        image = simulate(source, m, rng=rng)
        if self.augment is not None:  # training only: a pure function of (seed, epoch, index)
            if isinstance(image, LightImage):
                image = image.to_xarray()
            image = augment(image, self.augment, np.random.default_rng([self.seed, epoch, i, 1]), m)
        return image

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Item ``key``: an index (at the dataset's epoch) or ``(epoch, index)``, which lets one loader
        with long-lived workers serve every epoch (the workers' copies never need :meth:`set_epoch`)."""
        epoch, i = key if isinstance(key, tuple) else (None, key)
        it = self.item(i)  # read once (without a cache, simulated() would read it again)
        image = self.simulated(i, it, epoch)
        out = {
            "input": model_input(image, self.input_type, self.canvas, self.wire),
            "target": it["target"],
            "id": it["id"],
            "modality": int(self.assignment[i]),
        }
        if self.dense:
            mask = it["mask"]
            gsd = float(self.dense_gsd_m or mask.gsd)
            target = window_target(mask, image.attrs["window_m"], gsd)
            out["target"] = torch.from_numpy(augment_grid(target, image.attrs) if self.augment is not None else target)
            out["gsd"] = gsd
            if self.max_queries is not None and target.size > self.max_queries:
                rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch, i, 2])
                out["query_index"] = torch.from_numpy(np.sort(rng.choice(target.size, self.max_queries, replace=False)))
        return out


def collate_items(items: Sequence[dict]) -> dict:
    """Collate :class:`ModalityDataset` items: their inputs by their batch class's ``collate``; dense items'
    targets (grids of their own sizes) flattened and padded with :data:`~atomizer.atoms.dense.IGNORE`, with
    their output pixels as ``queries`` (:class:`~atomizer.atoms.dense.DenseQueries`)."""
    inputs = type(items[0]["input"]).collate([it["input"] for it in items])
    out = {
        "input": inputs,
        "id": [it["id"] for it in items],
        "modality": torch.tensor([it["modality"] for it in items]),
    }
    if "gsd" not in items[0]:
        return {**out, "target": torch.stack([it["target"] for it in items])}
    sizes = [int(it["target"].shape[0]) for it in items]
    queries = DenseQueries.grids(sizes, [it["gsd"] for it in items])
    if any("query_index" in it for it in items):  # training on a random subset of each window's pixels
        picks = [it.get("query_index", torch.arange(it["target"].numel())) for it in items]
        q = max(len(p) for p in picks)
        x, y = torch.zeros(len(items), q), torch.zeros(len(items), q)
        valid = torch.zeros(len(items), q, dtype=torch.bool)
        target = torch.full((len(items), q), IGNORE, dtype=torch.long)
        for s, (it, p) in enumerate(zip(items, picks)):
            n = len(p)
            x[s, :n], y[s, :n], valid[s, :n] = queries.x[s, p], queries.y[s, p], True
            target[s, :n] = it["target"].reshape(-1)[p]
        queries = DenseQueries(x, y, queries.gsd, valid, queries.shape)
        return {**out, "target": target, "queries": queries}
    target = torch.full(queries.valid.shape, IGNORE, dtype=torch.long)
    for s, it in enumerate(items):
        target[s, : it["target"].numel()] = it["target"].reshape(-1)
    return {**out, "target": target, "queries": queries}


class AsRead(torch.utils.data.Dataset):
    """Items of ``base`` as read (no modality simulation): atom sets, or, with ``input_type`` CanvasBatch,
    canvases on ``canvas`` (default :class:`CanvasSpec`'s, 64 px at 10 m)."""

    def __init__(self, base, input_type: type = AtomBatch, canvas: CanvasSpec | None = None):
        self.base = base
        self.input_type = input_type
        self.canvas = canvas or (CanvasSpec() if input_type is CanvasBatch else None)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        it = self.base[i]
        image = model_input(it["image"], self.input_type, self.canvas)
        return {"input": image, "target": it["target"], "id": it["id"], "modality": 0}
