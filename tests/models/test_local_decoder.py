"""The local dense decoder (``decoder: local``): spatial latents on a grid over each window read the atoms in
their cell, and each output pixel reads only its 3 x 3 nearest spatial latents. On a real window (a crop of
the shipped TerraMesh tile: Sentinel-2 + Sentinel-1 atoms)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from atomizer.atoms.dense import DenseQueries
from atomizer.atoms.tokens import AtomBatch
from atomizer.core.config import ConfigError
from atomizer.data.manifest import ManifestDataset
from atomizer.models.atomizer import Atomizer, AtomizerConfig, window_half_extent
from atomizer.models.checkpoint import load_trained, save_checkpoint
from tests.conftest import EMBEDDED

MANIFEST = EMBEDDED / "dense" / "terramesh" / "manifest.csv"


@pytest.fixture(scope="module")
def window():
    """A 48 x 48 px (480 m) crop of the first tile and a 32 x 32 crop of the second, one padded batch."""
    ds = ManifestDataset(MANIFEST)
    crops = [ds.load(ds.records[0]).isel(y_10m=slice(0, 48), x_10m=slice(0, 48))]
    crops.append(ds.load(ds.records[1]).isel(y_10m=slice(100, 132), x_10m=slice(50, 82)))
    return AtomBatch.collate([AtomBatch.from_image(c) for c in crops])


def _model(**kw) -> Atomizer:
    torch.manual_seed(0)
    cfg = AtomizerConfig.preset("tiny", num_classes=9, task="segmentation", decoder="local", decoder_grid=4, **kw)
    return Atomizer(cfg).eval()


def test_the_window_half_extent_is_read_from_the_atoms(window):
    half = window_half_extent(window)
    torch.testing.assert_close(half, torch.tensor([240.0, 160.0]))


def test_each_cell_attends_exactly_to_the_atoms_inside_it(window):
    """The online per-cell softmax equals a brute-force softmax over each cell's atoms, whole or in chunks."""
    model = _model()
    dec = model.dense
    half = window_half_extent(window)
    torch.manual_seed(1)
    cells = torch.randn(window.num_sets, 16, model.cfg.latent_dim)
    whole = dec.read_atoms(cells, half, model._atom_chunks(window, None))
    chunked = dec.read_atoms(cells, half, model._atom_chunks(window, 1000))
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-4)

    kv, x, y, valid = next(model._atom_chunks(window, None))
    h, d = dec.atom_heads, dec.atom_dim_head
    q = dec.to_q_atoms(dec.norm_a(cells)).view(window.num_sets, 16, h, d)
    k, v = kv.view(window.num_sets, -1, 2, h, d).unbind(2)
    row, col = dec.cell_of(x, y, half)
    for s in range(window.num_sets):
        for c in range(16):
            inside = valid[s] & (row[s] * 4 + col[s] == c)
            if s == 1:  # the 320 m window has 80 m cells: 8 x 8 px of 14 bands each
                assert int(inside.sum()) == 8 * 8 * 14
            w = ((k[s, inside] * q[s, c]).sum(-1) / math.sqrt(d)).softmax(0)  # (n, H)
            expected = dec.out_atoms((w[..., None] * v[s, inside]).sum(0).reshape(-1))
            torch.testing.assert_close(whole[s, c], expected, atol=1e-5, rtol=1e-4)


def test_an_output_pixel_reads_only_its_neighbouring_cells(window):
    """Change the atoms of one corner cell: pixels two cells or more away keep their answer, pixels in and
    next to that cell change (the latents ``z`` held fixed)."""
    model = _model()
    z = torch.randn(window.num_sets, model.cfg.num_latents, model.cfg.latent_dim)
    q = DenseQueries.grids([48, 32], 10.0)
    with torch.no_grad():
        before = model.decode(z, q, batch=window)
        changed = AtomBatch(**{**window.__dict__, "value": window.value.clone()})
        x, y = window.coord_x[window.xi], window.coord_y[window.yi]
        corner = (x[0] < -120) & (y[0] > 120)  # the first window's top-left 120 m cell
        changed.value[0, corner] += 500.0
        after = model.decode(z, q, batch=changed)
    grid_b, grid_a = q.unflatten(before, 0), q.unflatten(after, 0)  # (48, 48, C); cells are 12 px
    delta = (grid_a - grid_b).abs().amax(-1)
    assert delta[:12, :12].min() > 0  # in the cell
    assert delta[12:24, 12:24].min() > 0  # the diagonal neighbour
    assert delta[24:, :].max() == 0 and delta[:, 24:].max() == 0  # two cells away or more
    torch.testing.assert_close(after[1], before[1])  # the other window


def test_the_local_decoder_trains_and_round_trips_a_checkpoint(window, tmp_path):
    model = _model().train()
    q = DenseQueries.grids([24, 16], 20.0)
    logits = model(window, queries=q)
    assert logits.shape == (2, 24 * 24, 9) and torch.isfinite(logits).all()
    logits[q.valid].logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.dense.parameters())
    assert all(p.grad is None for p in model.head.parameters())  # the pooling head is not trained
    path = tmp_path / "local.pt"
    save_checkpoint(path, model, extra={"task": "segmentation", "classes": [str(i) for i in range(9)]})
    back = load_trained(path).model.eval()
    assert back.cfg.decoder == "local" and back.cfg.decoder_grid == 4
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(back(window, queries=q).numpy(), model(window, queries=q).numpy(), atol=1e-5)


def test_bad_decoder_settings_are_refused_in_one_line(window):
    with pytest.raises((ValueError, ConfigError), match="decoder must be one of global, local"):
        AtomizerConfig.preset("tiny", task="segmentation", decoder="nearest")
    with pytest.raises((ValueError, ConfigError), match="decoder_grid must be at least 1"):
        AtomizerConfig.preset("tiny", task="segmentation", decoder="local", decoder_grid=0)
    model = _model()
    with pytest.raises(ValueError, match="pass the batch"):
        model.decode(torch.zeros(2, 16, model.cfg.latent_dim), DenseQueries.grids([2, 2], 10.0))
