"""On the GPU: the compact wire (index runs, uint16 DN) rebuilt on the device in vectorised tensor ops gives
exactly the atoms of the full layout built on the host (:mod:`atomizer.atoms.tokens`)."""

from __future__ import annotations

import pickle

import pytest
from gpu_support import GPU, assert_same_atoms, ben_batch, test_device

from atomizer.atoms.tokens import AtomBatch

pytestmark = GPU


@pytest.mark.parametrize("mods", ["native", "bigearthnet_train", "bigearthnet_test"])
def test_compact_wire_rebuilt_on_the_device_equals_the_host_full_layout(mods):
    device = test_device()
    full = ben_batch(AtomBatch, n=12, mods=mods, wire="full", seed=5)["input"]
    wire = ben_batch(AtomBatch, n=12, mods=mods, wire="compact", seed=5)["input"]
    assert wire.compact and wire.runs is not None and wire.band.numel() == 0
    if mods == "native":  # every band kept its stored integers: uint16 DN scaled on the device
        assert wire.dn_scaling is not None
    wire = pickle.loads(pickle.dumps(wire))  # as a loader worker sends it
    if device.type == "cuda":
        wire = wire.pin_memory()
    on_device = wire.to(device, non_blocking=True)
    assert not on_device.compact and on_device.value.device.type == device.type
    assert_same_atoms(on_device.to("cpu"), full)
