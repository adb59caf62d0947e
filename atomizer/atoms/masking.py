"""Masking of atom sets for masked-atom pretraining, and the reconstruction target.

* Masking kinds (each set masked on its own, always at least one visible and one hidden atom):
  ``random`` (atoms), ``band`` (whole bands), ``pixel`` (every band at a position: atoms whose centre
  falls in a hidden cell of the set's finest grid), ``block`` (square blocks of ``block_px`` x
  ``block_px`` finest-grid cells). Band masking hides whole bands, so the realised fraction is the
  attainable one nearest ``mask_ratio`` (3 of 4 bands hide 75%).
* Target: the hidden atoms' values on the fixed, sensor-free scale of
  :func:`atomizer.atoms.encodings.normalize_values` (reflectance 0-0.5 -> [-1, 1], clamped to [-4, 4]).
"""

from __future__ import annotations

import torch
from torch import Tensor

from atomizer.atoms.encodings import normalize_values
from atomizer.atoms.tokens import AtomBatch

MASKINGS = ("random", "band", "pixel", "block")


def _n_hide(n: Tensor, ratio: float) -> Tensor:
    """Hidden count for ``n`` units: round(ratio * n), at least one hidden and one visible unit."""
    return torch.clamp(torch.round(ratio * n.double()).long(), min=1, max=None).minimum((n - 1).clamp_min(1))


def _rank_hide(scores: Tensor, k: int) -> Tensor:
    """Boolean: the ``k`` lowest scores."""
    out = torch.zeros_like(scores, dtype=torch.bool)
    out[scores.argsort()[:k]] = True
    return out


def grid_cells(batch: AtomBatch, s: int, cell_px: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """For set ``s``: (cell index of each of its valid atoms, integer x, y of those cells, atom indices).

    Cells are ``cell_px`` x ``cell_px`` pixels of the set's finest grid, aligned on its first pixel; an
    atom of a coarser band belongs to the cell holding its centre.
    """
    atoms = batch.mask[s].nonzero().squeeze(1)
    x = batch.coord_x[batch.xi[s, atoms]].double()
    y = batch.coord_y[batch.yi[s, atoms]].double()
    gsd = batch.band_table[batch.band[s, atoms], 2].double()
    g = float(gsd.min())
    fine = gsd <= g + 1e-6
    ix = torch.floor((x - x[fine].min()) / g + 0.5 + 1e-6).long()
    iy = torch.floor((y[fine].max() - y) / g + 0.5 + 1e-6).long()  # rows from the top
    cx, cy = torch.div(ix, cell_px, rounding_mode="floor"), torch.div(iy, cell_px, rounding_mode="floor")
    key = (cx - cx.min()) * (int(cy.max() - cy.min()) + 1) + (cy - cy.min())
    _, cell = torch.unique(key, return_inverse=True)
    return cell, torch.stack([cx, cy], 1), atoms


def mask_atoms(
    batch: AtomBatch,
    ratio: float = 0.9,
    kind: str = "random",
    generator: torch.Generator | None = None,
    block_px: int = 4,
) -> Tensor:
    """Which valid atoms to hide: (S, N) bool (never padding; each set keeps >= 1 visible atom).

    ``random``: ``round(ratio * n)`` atoms. ``band``: whole bands, the prefix of a random band order whose
    atom fraction is nearest ``ratio`` (at least one band hidden and one visible; a one-band set falls
    back to random atoms). ``pixel``: ``round(ratio * cells)`` cells of the finest grid, every band at
    those positions. ``block``: the same with ``block_px`` x ``block_px`` cells.
    """
    if kind not in MASKINGS:
        raise ValueError(f"masking must be one of {MASKINGS}, got {kind!r}")
    S, N = batch.mask.shape
    hidden = torch.zeros(S, N, dtype=torch.bool)
    mask = batch.mask.cpu()
    cpu = batch.to("cpu") if batch.value.device.type != "cpu" else batch.decoded()  # indices of a compact batch
    for s in range(S):
        atoms = mask[s].nonzero().squeeze(1)
        n = atoms.numel()
        if n < 2:
            continue  # nothing can be hidden while keeping one visible atom
        k = kind
        if k == "band":
            bands, inverse, counts = torch.unique(cpu.band[s, atoms], return_inverse=True, return_counts=True)
            if bands.numel() < 2:
                k = "random"
            else:
                order = torch.randperm(bands.numel(), generator=generator)
                frac = counts[order].cumsum(0).double() / n
                j = int((frac[:-1] - ratio).abs().argmin())  # hide order[: j + 1], keep >= 1 band
                hide_band = torch.zeros(bands.numel(), dtype=torch.bool)
                hide_band[order[: j + 1]] = True
                hidden[s, atoms] = hide_band[inverse]
                continue
        if k == "random":
            hidden[s, atoms] = _rank_hide(torch.rand(n, generator=generator), int(_n_hide(torch.tensor(n), ratio)))
            continue
        cell, _, atoms = grid_cells(cpu, s, 1 if k == "pixel" else block_px)
        m = int(cell.max()) + 1
        if m < 2:  # one cell: fall back to random atoms
            hidden[s, atoms] = _rank_hide(torch.rand(n, generator=generator), int(_n_hide(torch.tensor(n), ratio)))
            continue
        hide_cell = _rank_hide(torch.rand(m, generator=generator), int(_n_hide(torch.tensor(m), ratio)))
        hidden[s, atoms] = hide_cell[cell]
    return hidden.to(batch.mask.device)


def _first(sel: Tensor, limit: int | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Index (S, K) of the True entries of each row (in random order when capped at ``limit``) and keep."""
    score = (
        torch.rand(sel.shape, generator=generator)
        if limit is not None
        else torch.arange(sel.shape[1]).double().expand(sel.shape)
    )
    score = score.masked_fill(~sel.cpu(), float("inf"))
    count = sel.sum(1).cpu()
    if limit is not None:
        count = count.clamp(max=limit)
    k = max(1, int(count.max()))
    index = score.argsort(dim=1, stable=True)[:, :k]
    keep = torch.arange(k)[None, :] < count[:, None]
    return index.to(sel.device), keep.to(sel.device)


def split_atoms(
    batch: AtomBatch, hidden: Tensor, max_targets: int | None = None, generator: torch.Generator | None = None
) -> tuple[AtomBatch, AtomBatch]:
    """(visible atoms, target atoms): the unhidden valid atoms, and the hidden ones (at most
    ``max_targets`` per set, drawn at random). Both share the batch's band and coordinate tables."""
    vis_idx, vis_keep = _first(batch.mask & ~hidden)
    tgt_idx, tgt_keep = _first(batch.mask & hidden, max_targets, generator)
    return batch.select(vis_idx, vis_keep), batch.select(tgt_idx, tgt_keep)


def reconstruction_target(atoms: AtomBatch) -> Tensor:
    """(S, K) values on the fixed, sensor-free scale of :func:`normalize_values` (no band statistics)."""
    return normalize_values(atoms.value, atoms.band_table[:, 3][atoms.band])
