"""Tokenizer: exact atom counts on native grids, masks, batching and the modality sampler."""

import numpy as np
import pytest
import torch

from atomizer.atoms.tokens import EmptyTokenSetError, ModalityBatchSampler, bands_from_table, collate, tokenize
from atomizer.data.modalities import load_modalities, simulate
from atomizer.data.readers import open_image


def test_native_bigearthnet_patch_gives_80000_atoms(ben_patch_paths):
    img = open_image(ben_patch_paths[0])
    t = tokenize(img)
    assert t.value.shape == (1, 80_000) and int(t.mask.sum()) == 80_000
    assert t.band_table.shape == (12, 6)
    # the band table carries each band's own grid GSD
    gsd = {b.name: b.gsd_m for b in bands_from_table(t)}
    assert gsd["B02"] == 10 and gsd["B05"] == 20 and gsd["B01"] == 60
    # per-band atom counts follow the native grids
    counts = torch.bincount(t.band[0], minlength=12)
    names = t.band_names
    assert counts[names.index("B04")] == 14_400 and counts[names.index("B11")] == 3_600
    assert counts[names.index("B09")] == 400


def test_values_are_physical_reflectance_and_positions_centred(ben_patch_paths):
    img = open_image(ben_patch_paths[0])
    t = tokenize(img)
    b04 = t.band_names.index("B04")
    sel = t.band[0] == b04
    expected = img["B04"].values.astype(np.float32).ravel() * np.float32(1e-4)
    assert np.allclose(t.value[0, sel].numpy(), expected)
    x, y = t.positions()
    xs, ys = x[0, sel], y[0, sel]
    assert float(xs.min()) == -595.0 and float(xs.max()) == 595.0  # 10 m pixel centres of a 1200 m patch
    assert float(ys.max()) == 595.0  # north up: first row is north of the centre
    assert float(x[0].mean()) == pytest.approx(0.0, abs=1e-3)


def test_dn_offset_applied(majortom_product_dir):
    img = open_image(majortom_product_dir)
    sub = img[["B09"]]
    t = tokenize(sub)
    raw = img["B09"].values.astype(np.float32).ravel()
    assert np.allclose(t.value[0].numpy(), (raw - 1000) * 1e-4, atol=1e-6)


def test_nodata_is_masked_and_all_nodata_refused(ben_patch_paths):
    img = open_image(ben_patch_paths[0])[["B02", "B03"]].copy(deep=True)
    img["B02"].values[:10, :] = 0  # nodata of Sentinel-2
    t = tokenize(img)
    assert int((~t.mask).sum()) == 10 * 120
    assert float(t.value[~t.mask].abs().sum()) == 0.0
    dropped = tokenize(img, drop_invalid=True)
    assert dropped.value.shape[1] == 2 * 14_400 - 1200 and bool(dropped.mask.all())
    img["B02"].values[:] = 0
    img["B03"].values[:] = 0
    with pytest.raises(EmptyTokenSetError, match="no valid atom"):
        tokenize(img)
    with pytest.raises(EmptyTokenSetError):
        tokenize(img, bands=[])


def test_nan_values_masked(ben_patch_paths):
    img = open_image(ben_patch_paths[0])[["B04"]].astype("float32")
    img["B04"].values[0, :5] = np.nan
    t = tokenize(img)
    assert int((~t.mask).sum()) == 5 and torch.isfinite(t.value).all()


def test_collate_different_modalities_pads_and_shifts_tables(ben_patch_paths):
    img = open_image(ben_patch_paths[0])
    mods = load_modalities("bigearthnet_test")
    a, b = tokenize(simulate(img, mods["T1"])), tokenize(simulate(img, mods["T5"]))
    batch = collate([a, b])
    n_a, n_b = a.value.shape[1], b.value.shape[1]
    assert batch.value.shape == (2, max(n_a, n_b))
    assert batch.mask.sum(1).tolist() == [n_a, n_b]
    assert not batch.mask[1, n_b:].any()
    # gathered positions and band rows of the second set are unchanged by the shifts
    x, _ = batch.positions()
    xb, _ = b.positions()
    assert torch.equal(x[1, :n_b], xb[0])
    assert torch.equal(batch.band_table[batch.band[1, :n_b]], b.band_table[b.band[0]])
    with pytest.raises(ValueError):
        collate([a, b], pad_to=10)


def test_modality_batch_sampler_groups_and_covers():
    groups = [0, 1, 0, 2, 1, 0, 2, 2, 1, 0]
    s = ModalityBatchSampler(groups, batch_size=2, seed=3)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert all(len({groups[i] for i in b}) == 1 for b in batches)
    s.set_epoch(1)
    assert list(s) != batches  # reshuffled per epoch


def test_modality_batch_sampler_drop_last_counts():
    groups = [0] * 4 + [1] * 3 + [2] * 3
    assert len(ModalityBatchSampler(groups, 3, drop_last=True)) == 3
    assert len(ModalityBatchSampler(groups, 3, drop_last=False)) == 4


def test_atoms_travel_as_17_bytes_with_int32_indices(ben_patch_paths):
    sets = [tokenize(open_image(p)) for p in ben_patch_paths[:2]]
    batch = collate(sets)
    for a in (*sets, batch):
        assert a.band.dtype == a.xi.dtype == a.yi.dtype == torch.int32
    per_atom = sum(getattr(batch, k).element_size() for k in ("value", "band", "xi", "yi", "mask"))
    assert per_atom == 17
    # int32 indices address the tables exactly as int64 ones would
    x64 = batch.coord_x[batch.xi.long()]
    assert torch.equal(batch.coord_x[batch.xi], x64)
