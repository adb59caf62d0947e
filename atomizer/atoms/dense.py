"""Dense prediction: where the answers go, in metres.

A dense task asks for one answer per pixel of an *output grid* chosen in metres, independent of the grids of
the input bands: a window of ``extent`` metres answered at ``gsd`` metres is an ``n x n`` grid with
``n = round(extent / gsd)`` (at least 1), whose pixel centres lie at ``(j + 0.5) * gsd - n * gsd / 2`` metres
east of the window centre and ``n * gsd / 2 - (i + 0.5) * gsd`` north of it (row ``i``, column ``j``), the
frame the atoms' positions use (:mod:`atomizer.atoms.tokens`: metres east/north of the image centre).

:class:`DenseQueries` holds those centres for a batch of windows of different sizes (padded, with
``valid``); every model answers them: the Atomizer with one query per output pixel reading its latents
(:class:`atomizer.models.layers.DenseDecoder`), a canvas model by sampling its dense output over the canvas
(:func:`sample_canvas`). :func:`window_target` puts a label mask
(:class:`atomizer.data.manifest.MaskLabels`) on that grid (nearest class, never interpolated).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from atomizer.data.manifest import MaskLabels

#: What a model answers: one label (set) per image, or one per output pixel at a GSD chosen in metres.
TASKS: tuple[str, ...] = ("classification", "segmentation")

#: The target value of a pixel that is not scored (no label, outside the labelled area, padding).
IGNORE = -1


def grid_size(extent_m: float, gsd_m: float) -> int:
    """Pixels per side of the output grid of a window of ``extent_m`` metres at ``gsd_m``."""
    if not gsd_m > 0:
        raise ValueError(f"output GSD must be positive, got {gsd_m}")
    return max(1, int(round(extent_m / gsd_m)))


def grid_offsets(n: int, gsd_m: float) -> tuple[np.ndarray, np.ndarray]:
    """``(x east, y north)`` offsets (m) of the pixel centres of an ``n x n`` grid from its centre, row-major."""
    c = (np.arange(n) + 0.5) * gsd_m - n * gsd_m / 2
    xx, yy = np.meshgrid(c, -c)
    return xx.ravel().astype(np.float32), yy.ravel().astype(np.float32)


@dataclass
class DenseQueries:
    """The output pixels of a batch of windows: ``x``, ``y`` (S, Q) metres east/north of each window's
    centre, ``gsd`` (S,) the output GSD, ``valid`` (S, Q) (False for padding), ``shape`` (S, 2) each
    window's ``(rows, cols)``."""

    x: Tensor
    y: Tensor
    gsd: Tensor
    valid: Tensor
    shape: Tensor

    @classmethod
    def grids(cls, sizes: Sequence[int], gsd_m: float | Sequence[float]) -> DenseQueries:
        """The queries of square grids of ``sizes`` pixels per side at ``gsd_m`` (one or one per window)."""
        gsds = [float(gsd_m)] * len(sizes) if isinstance(gsd_m, (int, float)) else [float(g) for g in gsd_m]
        q = max(n * n for n in sizes)
        x = torch.zeros(len(sizes), q)
        y = torch.zeros(len(sizes), q)
        valid = torch.zeros(len(sizes), q, dtype=torch.bool)
        for s, (n, g) in enumerate(zip(sizes, gsds)):
            gx, gy = grid_offsets(n, g)
            x[s, : n * n], y[s, : n * n] = torch.from_numpy(gx), torch.from_numpy(gy)
            valid[s, : n * n] = True
        shape = torch.tensor([[n, n] for n in sizes], dtype=torch.long)
        return cls(x, y, torch.tensor(gsds, dtype=torch.float32), valid, shape)

    @property
    def num_sets(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DenseQueries:
        return DenseQueries(
            **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)}
        )

    def unflatten(self, values: Tensor, s: int) -> Tensor:
        """Set ``s``'s answers ``values[s]`` (Q, ...) as its grid (rows, cols, ...)."""
        h, w = (int(v) for v in self.shape[s])
        return values[s, : h * w].reshape(h, w, *values.shape[2:])


def sample_canvas(field: Tensor, canvas_extent_m: float, queries: DenseQueries) -> Tensor:
    """A canvas model's dense output ``field`` (S, C, H, W), covering ``canvas_extent_m`` metres centred on
    each window, read at the query centres: bilinear on the logits (never on labels), ``(S, Q, C)``."""
    half = canvas_extent_m / 2
    grid = torch.stack([queries.x / half, -queries.y / half], dim=-1)[:, :, None, :]  # (S, Q, 1, 2)
    out = torch.nn.functional.grid_sample(
        field, grid.to(field.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[..., 0].transpose(1, 2)  # (S, Q, C)


def window_target(mask: MaskLabels, window: Sequence[float], gsd_m: float) -> np.ndarray:
    """The mask on the output grid of a window ``(left, top, extent)`` (metres, the image's coordinates) at
    ``gsd_m``: each output pixel takes the class of the mask pixel under its centre (nearest, never
    interpolated); ``IGNORE`` outside the mask. ``(n, n)`` int64."""
    left, top, extent = (float(v) for v in window)
    n = grid_size(extent, gsd_m)
    centres = (np.arange(n) + 0.5) * gsd_m
    cols = np.floor((left + centres - mask.left) / mask.gsd + 1e-9).astype(np.int64)
    rows = np.floor((mask.top - (top - centres)) / mask.gsd + 1e-9).astype(np.int64)
    h, w = mask.values.shape
    ok_r, ok_c = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
    out = np.full((n, n), IGNORE, dtype=np.int64)
    sub = mask.values[np.clip(rows, 0, h - 1)][:, np.clip(cols, 0, w - 1)].astype(np.int64)
    keep = ok_r[:, None] & ok_c[None, :]
    out[keep] = sub[keep]
    return out
