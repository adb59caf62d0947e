"""Evaluation: a checkpoint on each test modality, GSD and size sweeps, tidy result files.

Results are an :class:`xarray.Dataset` with one variable ``score`` over dims ``(model, modality,
metric)`` plus per-modality coordinates (size, GSD, bands), saved as netCDF next to a JSON copy.
Nothing is overwritten silently: :func:`save_results` refuses an existing file unless asked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from atomizer.atoms.canvas import CanvasSpec
from atomizer.atoms.dense import IGNORE
from atomizer.core.runtime import autocast, pick_device
from atomizer.core.storage import atomic_paths, clean_stale_temps, file_sha256, json_text, locked
from atomizer.data.datasets import open_dataset
from atomizer.data.modalities import NATIVE_MODALITY, Modality, ModalitySet, check_dataset_fit, modality_set
from atomizer.engine.loaders import InMemory, ModalityDataset, collate_items, keep_in_memory, wire_for
from atomizer.engine.metrics import (
    SEGMENTATION_METRICS,
    classification_metrics,
    confusion_per_image,
    metric_names,
    part_miou,
    segmentation_scores,
)
from atomizer.models.checkpoint import load_trained
from atomizer.models.registry import input_type, is_dense


def modality_coords(modalities: Sequence[Modality]) -> dict:
    """The per-modality coordinates of results (size, GSD, bands); the native placeholder
    (:data:`~atomizer.data.modalities.NATIVE_MODALITY`: each image as read) has size 0, GSD NaN and bands
    ``native``, its images' own varying."""
    native = [m == NATIVE_MODALITY for m in modalities]
    return {
        "size_px": ("modality", [0 if n else m.size_px for m, n in zip(modalities, native)]),
        "gsd_m": ("modality", [float("nan") if n else m.gsd_m for m, n in zip(modalities, native)]),
        "bands": ("modality", ["native" if n else " ".join(m.bands) for m, n in zip(modalities, native)]),
    }


@torch.no_grad()
def predict_dataset(
    model: torch.nn.Module,
    ds: ModalityDataset,
    batch_size: int,
    device: torch.device,
    desc: str = "eval",
    precision: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) of every item, in order, with the model in eval mode; ``num_workers`` loader
    processes read and tokenize (batches pinned for a GPU); ``progress``: a tqdm bar (on a terminal).

    A dense dataset (segmentation) gives, per item, its confusion matrix (C, C) and its summed pixel loss
    instead (:func:`~atomizer.engine.metrics.confusion_per_image`): ``(confusions (N, C, C), losses (N, 2))``
    with ``losses[:, 0]`` the loss summed over the item's labelled pixels and ``losses[:, 1]`` their count.

    Under ``torch.distributed`` (world size > 1) every rank scores its shard (items ``rank, rank + world,
    ...``: none padded, none twice) and the predictions are gathered, so every rank returns all of them
    in dataset order and the metrics computed on them equal a single process's.
    """
    model.eval()
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if distributed else 1
    index = list(range(len(ds)))
    if world > 1:
        index = index[torch.distributed.get_rank() :: world]
    part = ds if world == 1 else torch.utils.data.Subset(ds, index)
    loader = torch.utils.data.DataLoader(
        part,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_items,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    outs, targets = [], []
    for b in tqdm(loader, desc=desc, leave=False, disable=None if progress else True):
        with autocast(precision, device):
            if "queries" in b:
                lg = model(b["input"].to(device, non_blocking=True), queries=b["queries"].to(device)).float().cpu()
                t = b["target"]
                per_pixel = torch.nn.functional.cross_entropy(lg.transpose(1, 2), t.clamp_min(0), reduction="none") * (
                    t != IGNORE
                )
                outs.append(confusion_per_image(lg, t, IGNORE))
                targets.append(torch.stack([per_pixel.sum(1), (t != IGNORE).sum(1).float()], dim=1))
            else:
                outs.append(model(b["input"].to(device, non_blocking=True)).float().cpu())
                targets.append(b["target"])
    if world == 1:
        return torch.cat(outs), torch.cat(targets)
    mine = (index, torch.cat(outs) if outs else None, torch.cat(targets) if targets else None)
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, mine)
    order = torch.tensor([i for idx, _, _ in parts for i in idx])
    all_outs = torch.cat([lg for _, lg, _ in parts if lg is not None])
    all_targets = torch.cat([t for _, _, t in parts if t is not None])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return all_outs[inverse], all_targets[inverse]


def predict_modalities(
    model: torch.nn.Module,
    dataset,
    modalities: Sequence[Modality],
    canvas: CanvasSpec,
    batch_size: int = 16,
    device: str = "auto",
    model_name: str = "model",
    num_workers: int = 0,
    dense_gsd_m: float | None = None,
) -> xr.Dataset:
    """Per-image class probabilities of ``model`` on ``dataset`` under each modality; for a segmentation
    model, per-image confusion matrices of its per-pixel answers on each window's output grid at
    ``dense_gsd_m`` metres (default: the masks' own GSD): ``confusion`` (modality, image, true, predicted),
    masks compared on a grid fixed in metres whatever the modality.

    A small dataset (:func:`~atomizer.engine.loaders.keep_in_memory`) is read once and kept for every modality;
    a larger one (the full BigEarthNet test split: 125,188 patches, about 20 GB of DN) is read again per
    modality, by ``num_workers`` loader processes.

    Returns a Dataset with ``probability`` (modality, image, class) (sigmoid for multi-label, softmax
    otherwise), ``target`` (image, class) 0/1, and ``logit`` (modality, image, class); coordinates: image
    ids, class names, modality names with their size, GSD and bands.
    """
    dev = pick_device(device)
    model = model.to(dev).eval()
    source = InMemory(dataset) if keep_in_memory(dataset) else dataset
    wire = wire_for("auto", dev, num_workers)
    dense = is_dense(model)
    logits, targets = [], None
    for m in modalities:
        ds = ModalityDataset(
            source, [m], None, input_type(model), canvas, cache=False, wire=wire, dense=dense, dense_gsd_m=dense_gsd_m
        )
        lg, targets = predict_dataset(
            model, ds, batch_size, dev, desc=f"{model_name} {m.name}", num_workers=num_workers
        )
        logits.append(lg)
    if targets is None:
        raise ValueError("no modalities to predict")
    coords = {"modality": [m.name for m in modalities], "image": list(dataset.ids()), **modality_coords(modalities)}
    if hasattr(dataset, "part_of"):  # a union of datasets: each image's part (per-part scores)
        coords["part"] = ("image", list(dataset.part_of()))
    if dense:
        return xr.Dataset(
            {"confusion": (("modality", "image", "true", "predicted"), torch.stack(logits).numpy().astype(np.int64))},
            coords={**coords, "true": list(dataset.classes), "predicted": list(dataset.classes)},
            attrs={"model": model_name, "multilabel": 0, "task": "segmentation", "dense_gsd_m": dense_gsd_m or 0.0},
        )
    lg = torch.stack(logits)  # (M, n, C)
    probs = lg.sigmoid() if dataset.multilabel else lg.softmax(-1)
    t = targets.float() if dataset.multilabel else torch.nn.functional.one_hot(targets, lg.shape[-1]).float()
    return xr.Dataset(
        {
            "probability": (("modality", "image", "class"), probs.numpy().astype(np.float32)),
            "logit": (("modality", "image", "class"), lg.numpy().astype(np.float32)),
            "target": (("image", "class"), t.numpy().astype(np.uint8)),
        },
        coords={**coords, "class": list(dataset.classes)},
        attrs={"model": model_name, "multilabel": int(dataset.multilabel)},
    )


def scores_of(predictions: xr.Dataset, modalities: Sequence[Modality]) -> xr.Dataset:
    """The results Dataset (:func:`results_dataset`) of :func:`predict_modalities`' output (segmentation:
    the scores of the images' summed confusion matrices, :func:`~atomizer.engine.metrics.segmentation_scores`)."""
    if "confusion" in predictions:
        confusion = torch.from_numpy(predictions["confusion"].values)
        names = SEGMENTATION_METRICS + (("f1",) if confusion.shape[-1] == 2 else ())
        parts: tuple[list[str], list[str]] | None = None
        if "part" in predictions.coords:  # a union: mIoU per part (its images, its classes), miou_<part>
            classes = [str(c) for c in predictions["true"].values]
            parts = ([str(p) for p in predictions["part"].values], [c.split("/", 1)[0] for c in classes])
            names += tuple(f"miou_{p}" for p in dict.fromkeys(parts[1]))
        scores = np.full((1, len(modalities), len(names)), np.nan)
        for j in range(len(modalities)):
            met = segmentation_scores(confusion[j])
            if parts is not None:
                met.update({f"miou_{p}": v for p, v in part_miou(confusion[j], *parts).items()})
            scores[0, j] = [met[k] for k in names]
        return results_dataset(scores, [predictions.attrs["model"]], modalities, names)
    multilabel = bool(predictions.attrs["multilabel"])
    names = metric_names(multilabel)
    target = torch.from_numpy(predictions["target"].values.astype(np.int64))
    if not multilabel:
        target = target.argmax(-1)
    scores = np.full((1, len(modalities), len(names)), np.nan)
    for j in range(len(modalities)):
        met = classification_metrics(torch.from_numpy(predictions["logit"].values[j]), target)
        scores[0, j] = [met[k] for k in names]
    return results_dataset(scores, [predictions.attrs["model"]], modalities, names)


def evaluate_model(
    model: torch.nn.Module,
    dataset,
    modalities: Sequence[Modality],
    canvas: CanvasSpec,
    batch_size: int = 16,
    device: str = "auto",
    model_name: str = "model",
    num_workers: int = 0,
) -> xr.Dataset:
    """Scores of ``model`` on ``dataset`` under each modality (every image gets that modality)."""
    preds = predict_modalities(model, dataset, modalities, canvas, batch_size, device, model_name, num_workers)
    return scores_of(preds, modalities)


def results_dataset(
    scores: np.ndarray, models: Sequence[str], modalities: Sequence[Modality], metrics: Sequence[str], **attrs: object
) -> xr.Dataset:
    return xr.Dataset(
        {"score": (("model", "modality", "metric"), scores)},
        coords={
            "model": list(models),
            "modality": [m.name for m in modalities],
            "metric": list(metrics),
            **modality_coords(modalities),
        },
        attrs={"units": "percent", **{k: str(v) for k, v in attrs.items()}},
    )


def evaluate_checkpoint(
    checkpoint: str | Path,
    modalities: str | Path | ModalitySet,
    dataset: str | None = None,
    split: str = "test",
    data_root: str | None = None,
    batch_size: int = 16,
    device: str = "auto",
    model_name: str | None = None,
    predictions: bool = False,
    num_workers: int = 0,
):
    """Evaluate a training checkpoint on every modality of a modality file (or ``native``: every image as read,
    :data:`~atomizer.data.modalities.NATIVE`). On a union of datasets (:mod:`atomizer.data.union`) a segmentation
    model's results add ``miou_<part>``: each part's mIoU over its own images and classes.

    A run trained on a cross-validation fold (``fold`` in its training config) is evaluated on that
    fold's test images. Returns the results Dataset, or ``(results, per-image predictions)`` with
    ``predictions=True`` (:func:`predict_modalities`); both carry the run's ``seed`` and ``fold``.
    ``num_workers`` loader processes read and tokenize.
    """
    trained = load_trained(checkpoint)
    tc = trained.extra.get("train_config", {})
    mods = modality_set(modalities)
    name_ds = dataset or tc.get("dataset", "eurosat")
    fold = tc.get("fold")
    ds = open_dataset(name_ds, split, data_root or tc.get("data_root"), fold=fold)
    if len(ds) == 0:
        raise ValueError(f"no {split!r} images in dataset {name_ds!r}")
    check_dataset_fit(ds, mods.modalities, f"dataset {name_ds}")
    model = trained.model
    canvas = CanvasSpec.of(mods)
    name = model_name or trained.arch
    preds = predict_modalities(
        model, ds, mods.modalities, canvas, batch_size, device, name, num_workers, tc.get("dense_gsd_m")
    )
    res = scores_of(preds, mods.modalities)
    attrs = {
        "checkpoint": str(checkpoint),
        "modality_set": mods.name,
        "split": split,
        "dataset": str(name_ds),
        "seed": int(tc.get("seed", 0)),
        "fold": -1 if fold is None else int(fold),
    }
    res.attrs.update(attrs)
    preds.attrs.update(attrs)
    return (res, preds) if predictions else res


def sweep_modalities(
    kind: str, source_size_px: int, source_gsd_m: float, bands: Sequence[str], values: Sequence[float]
) -> list[Modality]:
    """Modalities of a GSD sweep (``kind="gsd"``: same ground extent, coarser pixels) or a size sweep
    (``kind="size"``: centred crops at the source GSD)."""
    extent = source_size_px * source_gsd_m
    if kind == "gsd":
        # the largest whole number of pixels inside the source extent (rounding up would ask for a window
        # larger than the image: 64 px at 10 m is 640 m, 11 px at 60 m would be 660 m)
        return [Modality(f"gsd{g:g}", max(1, int(extent / g + 1e-9)), float(g), tuple(bands)) for g in values]
    if kind == "size":
        return [Modality(f"size{int(s)}", int(s), float(source_gsd_m), tuple(bands)) for s in values]
    raise ValueError(f"sweep kind must be 'gsd' or 'size', got {kind!r}")


def save_results(results: xr.Dataset, path: str | Path, overwrite: bool = False, records: bool = True) -> Path:
    """Write ``results`` as netCDF and, with ``records``, its JSON twin, as one unit under the store's lock.

    Both temporary files are written before either is renamed; the twin records the SHA-256 of the ``.nc``
    it was made from (:func:`atomizer.results.store.read_results_twin` names a mismatch). Refuses to replace an
    existing file unless ``overwrite``.
    """
    path = Path(path)
    twin = path.with_suffix(".json")
    with locked(path.parent, "results store"):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) or choose another path")
        clean_stale_temps(path.parent, depth=0, names=[path.name, twin.name])
        with atomic_paths(path, *([twin] if records else [])) as temps:
            results.to_netcdf(temps[0], engine="h5netcdf")
            if records:
                record = {**results_to_records(results), "netcdf_sha256": file_sha256(temps[0])}
                temps[1].write_text(json_text(record))
    return path


def results_to_records(results: xr.Dataset) -> dict:
    """A JSON-friendly form: attrs plus one record per (model, modality, metric)."""
    df = results["score"].to_dataframe().reset_index()
    return {"attrs": dict(results.attrs), "records": json.loads(df.to_json(orient="records"))}


def load_results(path: str | Path) -> xr.Dataset:
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()
