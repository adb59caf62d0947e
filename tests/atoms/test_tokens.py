"""Tokenizer: exact atom counts on native grids, masks, batching and the modality sampler."""

import pickle

import numpy as np
import pytest
import torch

from atomizer.atoms.tokens import EmptyTokenSetError, ModalityBatchSampler, bands_from_table, collate, tokenize
from atomizer.data.modalities import Modality, load_modalities, simulate
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


def _same_atoms(a, b) -> None:
    for k in ("value", "band", "xi", "yi", "mask", "band_table", "coord_x", "coord_y"):
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype and x.shape == y.shape, k
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=k)
    assert a.band_names == b.band_names and a.band_domains == b.band_domains


class _Compact(torch.utils.data.Dataset):
    """Real patches tokenized for the wire inside worker processes."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return tokenize(open_image(self.paths[i]), wire="compact")


def test_compact_wire_is_3_bytes_an_atom_and_rebuilds_exactly(ben_patch_paths):
    """Native BigEarthNet patches (uint16 DN on their own grids): runs + DN + mask on the wire, through
    worker processes (shared memory) and plain pickle, rebuilt to the atoms of the full layout."""
    paths = ben_patch_paths[:4]
    full = collate([tokenize(open_image(p)) for p in paths])
    loader = torch.utils.data.DataLoader(_Compact(paths), batch_size=4, num_workers=2, collate_fn=collate)
    (wire,) = list(loader)
    assert wire.value.dtype == torch.uint16 and wire.dn_scaling.shape == (48, 2) and wire.runs.shape == (4, 12, 6)
    runs_bytes = wire.runs.numel() * wire.runs.element_size()  # int64 runs: 48 bytes a band
    per_atom = (wire.value.element_size() + wire.mask.element_size(), runs_bytes / wire.value.numel())
    assert wire.runs.dtype == torch.int64 and per_atom[0] == 3 and per_atom[1] < 0.02
    _same_atoms(wire.to("cpu"), full)
    _same_atoms(pickle.loads(pickle.dumps(wire)).decoded(), full)
    # the gathers of training (token pruning, masking) read the same atoms
    idx = torch.randint(0, full.value.shape[1], (4, 100), generator=torch.Generator().manual_seed(0))
    _same_atoms(wire.select(idx), full.select(idx))


def test_compact_wire_with_nodata_padding_and_mixed_layouts(ben_patch_paths):
    img = open_image(ben_patch_paths[0])[["B02", "B05", "B01"]].copy(deep=True)
    img["B02"].values[:7, :] = 0  # nodata of Sentinel-2: masked, value 0 once decoded
    small = img[["B01"]]
    sets_full = [tokenize(img), tokenize(small), tokenize(img[["B05"]])]
    sets_wire = [tokenize(img, wire="compact"), tokenize(small, wire="compact"), tokenize(img[["B05"]])]
    ref = collate(sets_full, pad_to=40_000)
    _same_atoms(collate(sets_wire[:2] + sets_full[2:], pad_to=40_000).to("cpu"), ref)  # mixed: full layout
    both = collate(sets_wire[:2], pad_to=40_000)
    assert both.runs is not None and both.value.dtype == torch.uint16
    _same_atoms(both.to("cpu"), collate(sets_full[:2], pad_to=40_000))
    assert int((~both.to("cpu").mask[0, : 120 * 120]).sum()) == 7 * 120
    # physical values with runs kept: what a batch mixing integer and averaged modalities carries
    averaged = simulate(img, Modality("avg", 30, 40.0, ("B02", "B05")))  # 30 px of 40 m: float32 DN
    mixed = collate([tokenize(img, wire="compact"), tokenize(averaged, wire="compact")])
    assert mixed.runs is not None and mixed.value.dtype == torch.float32 and mixed.dn_scaling is None
    _same_atoms(mixed.to("cpu"), collate([tokenize(img), tokenize(averaged)]))


def test_compact_wire_refuses_what_it_cannot_carry(ben_patch_paths):
    img = open_image(ben_patch_paths[0])[["B02"]]
    with pytest.raises(ValueError, match="drop_invalid"):
        tokenize(img, wire="compact", drop_invalid=True)
    with pytest.raises(ValueError, match="wire must be one of"):
        tokenize(img, wire="uint8")


def test_device_rebuild_equals_host_rebuild(ben_patch_paths, monkeypatch):
    """The vectorised rebuild a GPU runs (searchsorted over the runs, gathered DN scaling), run here on
    CPU, gives the atoms of the host loop and of the full layout, padding included."""
    import atomizer.atoms.tokens as tokens

    img = open_image(ben_patch_paths[1])
    crops = [img, img[["B02", "B11"]], simulate(img, Modality("c", 20, 20.0, ("B05", "B8A", "B01")))]
    wire = collate([tokenize(c, wire="compact") for c in crops[:2]] + [tokenize(crops[2], wire="compact")])
    ref = collate([tokenize(c) for c in crops])
    assert wire.dn_scaling is not None  # every crop kept its integers
    host = wire.decoded()
    monkeypatch.setattr(tokens, "_on_host", lambda t: False)
    device = wire.decoded()
    _same_atoms(host, ref)
    _same_atoms(device, ref)


def test_run_offsets_past_2_31_atoms_are_exact():
    """Run metadata of a scene of 3 bands of 40,000 x 40,000 px (4.8 billion atoms; none materialised): the
    runs :func:`tokenize` would lay out hold every first atom and length exactly (int32 would wrap past 2^31)."""
    from atomizer.atoms.tokens import RUN_COLUMNS, band_runs

    side = 40_000
    runs = band_runs([(side, side)] * 3)
    assert runs.dtype == torch.int64 and runs.shape == (3, len(RUN_COLUMNS))
    starts = runs[:, RUN_COLUMNS.index("start")].tolist()
    assert starts == [0, side * side, 2 * side * side] and starts[2] > 2**31 > starts[1]
    assert runs[:, RUN_COLUMNS.index("length")].tolist() == [side * side] * 3
    assert runs[:, RUN_COLUMNS.index("x0")].tolist() == [0, side, 2 * side]
    # the same run layout, as tokenize builds it, for a small image
    img = _small_uint16_image()
    wire = tokenize(img, wire="compact")
    assert torch.equal(wire.runs[0], band_runs([img[b].shape for b in img.data_vars]))


def _small_uint16_image():
    from atomizer.data.bands import get_sensor
    from atomizer.data.readers import build_image

    rng = np.random.default_rng(0)
    return build_image(
        {
            "B02": rng.integers(1, 5000, (6, 6)).astype(np.uint16),
            "B05": rng.integers(1, 5000, (3, 3)).astype(np.uint16),
        },
        get_sensor("sentinel2"),
    )
