"""Inference on any readable image of any sensor, at native resolution.

Atomizer reads the image's atoms directly (streamed through the cross-attention in chunks, so a whole
Major-TOM scene of 6.3 million atoms fits in bounded memory); a baseline gets the paper's canvas.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from atomizer.atoms.canvas import CANVAS_BANDS, CanvasBatch, CanvasSpec
from atomizer.atoms.dense import DenseQueries, grid_size
from atomizer.atoms.tokens import AtomBatch
from atomizer.core.limits import check_atoms
from atomizer.data.bands import Sensor
from atomizer.data.light import LightImage, union_bounds
from atomizer.data.readers import count_tokens, open_image
from atomizer.engine.loaders import model_input
from atomizer.models.atomizer import Atomizer
from atomizer.models.checkpoint import load_trained
from atomizer.models.registry import input_type


@torch.no_grad()
def predict_image(
    checkpoint: str | Path,
    path: str | Path,
    sensor: str | Path | Sensor | None = None,
    chunk_size: int = 262144,
    device: str = "cpu",
    notes: list[str] | None = None,
    band_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Class probabilities (sigmoid for multi-label models, softmax otherwise) for one image.

    ``band_names`` is the channel order of a multi-band file that names none of its bands. ``notes``, when given, receives what the user should know about the input: for a canvas model, how
    many of its canvas bands the image fills. An image with no valid value is refused by every model
    (:class:`~atomizer.atoms.tokens.EmptyTokenSetError`, :class:`~atomizer.atoms.canvas.EmptyCanvasError`).

    The image is opened lazily and its atom count (every band's pixels on its native grid: what is read and
    tokenized) checked against :func:`atomizer.core.limits.max_atoms` (``ATOMIZER_MAX_ATOMS``) from the
    headers, before any pixel is read or the model loaded: above the limit,
    :class:`~atomizer.core.limits.InputTooLargeError` names the count and the limit.
    """
    image = open_image(path, sensor=sensor, band_names=band_names, lazy=True)  # headers only, so far
    check_atoms(count_tokens(image), what=str(path))
    trained = load_trained(checkpoint)
    classes, model = trained.classes, trained.model.to(device)
    image = image.load()  # within the limit: read it
    kind = input_type(model)
    canvas = CanvasSpec.of_training(trained.extra)
    batch = model_input(image, kind, canvas).to(device)
    if notes is not None and isinstance(batch, CanvasBatch):
        filled = [b for b, ok in zip(CANVAS_BANDS, batch.present[0].tolist()) if ok]
        notes.append(f"input fills {len(filled)} of the {len(CANVAS_BANDS)} canvas bands: {' '.join(filled)}")
    # atoms stream through the cross-attention in chunks: bounded memory whatever the image size
    logits = model(batch, chunk_size=chunk_size) if kind is AtomBatch else model(batch)
    probs = logits[0].float().sigmoid() if trained.multilabel else logits[0].float().softmax(-1)
    return dict(zip(classes, probs.tolist()))


@torch.no_grad()
def predict_dense_image(
    checkpoint: str | Path,
    path: str | Path,
    gsd_m: float,
    sensor: str | Path | Sensor | None = None,
    band_names: Sequence[str | None] | None = None,
    chunk_size: int = 262144,
    device: str = "cpu",
) -> xr.Dataset:
    """Per-pixel class probabilities of a segmentation Atomizer for one image, on an output grid of ``gsd_m``
    metres chosen here (5, 10, 20, 30 m... whatever the grids of the input bands and of the training
    masks): ``probability`` (class, y, x) with ``y``/``x`` the pixel centres in the image's coordinates
    (attrs ``crs``, ``gsd_m``), and ``label`` (y, x) the most probable class index.

    The grid covers the image's extent (the window all its bands share), ``round(extent / gsd_m)`` pixels a
    side; atoms stream through the encoder in chunks, queries through the decoder in chunks.
    """
    image = open_image(path, sensor=sensor, band_names=band_names, lazy=True)
    check_atoms(count_tokens(image), what=str(path))
    trained = load_trained(checkpoint)
    model = trained.model.to(device).eval()
    if not isinstance(model, Atomizer) or model.dense is None:
        raise ValueError(f"{checkpoint}: not a segmentation Atomizer (train with task: segmentation)")
    image = image.load()
    batch = AtomBatch.from_image(image).to(device)
    left, right, bottom, top = union_bounds(LightImage.from_xarray(image))
    extent_x, extent_y = right - left, top - bottom
    n = grid_size(min(extent_x, extent_y), gsd_m)
    queries = DenseQueries.grids([n], gsd_m).to(device)
    z = model.encode(batch, chunk_size=chunk_size)
    probs = model.decode(z, queries, batch=batch, atom_chunk=chunk_size).float().softmax(-1)  # (1, Q, C)
    grid = queries.unflatten(probs, 0).permute(2, 0, 1).cpu().numpy()  # (C, n, n)
    cx, cy = (left + right) / 2, (bottom + top) / 2
    offsets = (np.arange(n) + 0.5) * gsd_m - n * gsd_m / 2
    out = xr.Dataset(
        {
            "probability": (("class", "y", "x"), grid.astype(np.float32)),
            "label": (("y", "x"), grid.argmax(0).astype(np.int16)),
        },
        coords={"class": list(trained.classes), "y": cy - offsets, "x": cx + offsets},
        attrs={"gsd_m": float(gsd_m), "source": str(path)},
    )
    if image.attrs.get("crs"):
        out.attrs["crs"] = image.attrs["crs"]
    return out
