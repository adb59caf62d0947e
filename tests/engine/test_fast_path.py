"""The loaders' fast path (LightImage: no xarray object per item) gives exactly the atoms of the xarray path,
on real images under every shipped modality, for the Atomizer and for the canvas baselines."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from atomizer.atoms.canvas import CANVAS_BANDS, CanvasBatch, CanvasSpec
from atomizer.atoms.tokens import AtomBatch
from atomizer.core.paths import modality_sets_dir
from atomizer.data.datasets import BigEarthNetNpz, EuroSAT
from atomizer.data.light import LightImage, bigearthnet_light
from atomizer.data.manifest import ManifestDataset
from atomizer.data.modalities import load_modalities
from atomizer.data.readers import read_bigearthnet_npz
from atomizer.engine.loaders import ModalityDataset, collate_items
from tests.conftest import EMBEDDED

SETS = sorted(p.stem for p in modality_sets_dir().glob("*.yaml"))


def base_for(mods):
    """The shipped data a modality set is designed for (its ``source``): EuroSAT tiles, BigEarthNet patches,
    the TerraMesh Sentinel-2 + Sentinel-1 tiles or the CaFFe TerraSAR-X tiles (manifests). The sets of the
    dense sets that are not shipped (FLAIR #2, SpaceNet 7) are tested on their generated images instead
    (tests/data/test_dense_sets.py)."""
    if mods.name.startswith(("flair2", "spacenet7")):
        pytest.skip(f"{mods.name}: its dataset is not shipped (tested on generated images in test_dense_sets.py)")
    if mods.source_size_px == 64:
        return EuroSAT(split="test")
    if mods.source_size_px == 224:
        return ManifestDataset(EMBEDDED / "dense" / "terramesh" / "manifest.csv")
    if mods.source_size_px == 512:
        return ManifestDataset(EMBEDDED / "dense" / "caffe" / "manifest.csv")
    return BigEarthNetNpz(split="test")


def assert_same(a, b) -> None:
    assert type(a) is type(b)
    for name, x in vars(a).items():
        y = getattr(b, name)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape, name
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=name)  # NaN: unknown date
        else:
            assert x == y, name


@pytest.mark.parametrize("name", SETS)
def test_fast_path_equals_xarray_path_under_every_modality(name):
    mods = load_modalities(name)
    base = base_for(mods)
    n = min(len(base), 3 * len(mods))
    assignment = np.arange(len(base)) % len(mods)
    kinds = [(AtomBatch, None), (CanvasBatch, CanvasSpec(64, 10.0))]
    if not any(set(m.bands) & set(CANVAS_BANDS) for m in mods):  # e.g. X-band SAR: no canvas channel takes it
        kinds = kinds[:1]
    for kind, canvas in kinds:
        fast = ModalityDataset(base, mods, assignment, kind, canvas, random_window=True, seed=3, fast=True)
        slow = ModalityDataset(base, mods, assignment, kind, canvas, random_window=True, seed=3, fast=False)
        assert fast.fast and not slow.fast
        for i in range(n):
            a, b = fast[i], slow[i]
            assert_same(a["input"], b["input"])
            assert torch.equal(a["target"], b["target"]) and a["id"] == b["id"]
            assert isinstance(fast.simulated(i), LightImage)


def test_bigearthnet_light_matches_the_reader(ben_patch_paths):
    for path in ben_patch_paths[:5]:
        ref = read_bigearthnet_npz(path)
        with np.load(path) as z:
            light = bigearthnet_light({k: z[k] for k in z.files}, path.stem, str(path))
        back = light.to_xarray()
        assert list(back.data_vars) == list(ref.data_vars) and back.attrs == ref.attrs
        for b in ref.data_vars:
            assert back[b].attrs == ref[b].attrs and back[b].dims == ref[b].dims
            np.testing.assert_array_equal(back[b].values, ref[b].values)
            for d in ref[b].dims:
                np.testing.assert_array_equal(back[b][d].values, ref[b][d].values)


def _wire_bytes(batch: AtomBatch) -> int:
    """Bytes of the per-atom tensors and runs: what a loader worker sends per batch, tables aside."""
    names = ("value", "band", "xi", "yi", "mask", "runs")
    return sum(t.numel() * t.element_size() for t in (getattr(batch, n) for n in names) if t is not None)


@pytest.mark.parametrize("name", SETS)
def test_compact_wire_gives_the_full_atoms_under_every_modality(name):
    """Batches laid out for the wire (index runs, uint16 DN where the modality keeps integers), pickled
    as a worker sends them and moved to the device, hold exactly the atoms of the full layout: for
    batches of one modality and for batches mixing all of them."""
    mods = load_modalities(name)
    base = base_for(mods)
    n = min(len(base), 2 * len(mods))
    assignment = np.arange(len(base)) % len(mods)
    full = ModalityDataset(base, mods, assignment, AtomBatch, random_window=True, seed=5)
    compact = ModalityDataset(base, mods, assignment, AtomBatch, random_window=True, seed=5, wire="compact")
    groups = [[i for i in range(n) if assignment[i] == m] for m in range(len(mods))] + [list(range(n))]
    dn_batches = 0
    for idx in groups:
        if not idx:
            continue
        ref = collate_items([full[i] for i in idx])["input"]
        wire = collate_items([compact[i] for i in idx])["input"]
        assert wire.compact and wire.runs is not None and wire.band.numel() == 0
        rasters = [r for i in idx for r in compact.simulated(i).bands.values()]
        integers = all(r.values.dtype.kind == "u" and r.attrs.get("domain") != "sar" for r in rasters)
        assert (wire.dn_scaling is not None) == integers  # averaged bands and SAR dB travel as float32
        dn_batches += integers
        assert wire.value.dtype == (torch.uint16 if integers else torch.float32)
        runs = wire.runs.numel() * wire.runs.element_size()  # int64 runs: 48 bytes per band of a set
        assert wire.runs.dtype == torch.int64 and runs == 48 * wire.runs.shape[0] * wire.runs.shape[1]
        # 3 or 5 bytes an atom, not 17 (plus the runs: a few bands' worth, whatever the image size)
        assert _wire_bytes(wire) - runs < (0.2 if integers else 0.32) * _wire_bytes(ref)
        arrived = pickle.loads(pickle.dumps(wire)).to("cpu")
        assert not arrived.compact
        assert_same(arrived, ref)
    if name == "eurosat_test":  # T1 keeps the native 10 m grid of its bands: its DN travel as they are
        assert dn_batches >= 1
