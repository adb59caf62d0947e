"""GPU: the Atomizer's attention takes a fused kernel (flash / memory-efficient) in bf16, padded or not.

Under ``sdpa_kernel([FLASH_ATTENTION, EFFICIENT_ATTENTION])`` torch refuses to fall back to the math
kernel: a forward (and backward) that runs there ran on a fused kernel. A batch of one modality needs no
mask at all (flash); a padded batch of mixed modalities carries the padding mask, which the
memory-efficient kernel takes, so padding never forces the math path. The padded-vs-bucketed timing
(the figures of ``docs/benchmarks.md``) is printed and, where ``$OUT`` is set, written to
``$OUT/models_gpu_padding.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from gpu_support import GPU, ben_batch, test_device
from torch.nn.attention import SDPBackend, sdpa_kernel

from atomizer.atoms.tokens import AtomBatch
from atomizer.core.runtime import autocast
from atomizer.models.registry import build_model

pytestmark = GPU

FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


def _model(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("atomizer", "tiny").to(device)


def _forward_backward(model: torch.nn.Module, batch: AtomBatch, device: torch.device, train: bool) -> torch.Tensor:
    model.train(train)
    with sdpa_kernel(FUSED), autocast("bf16", device):
        out = model(batch)
    if train:
        out.float().sum().backward()
    return out


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_bf16_atomizer_runs_on_fused_kernels_without_padding(train):
    device = test_device()
    batch = ben_batch(AtomBatch, n=4, mods="native")["input"].to(device)
    assert bool(batch.decoded().mask.all())  # one modality: no mask reaches attention
    out = _forward_backward(_model(device), batch, device, train)
    assert out.shape == (4, 19) and bool(torch.isfinite(out.float()).all())


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_padded_batch_does_not_force_the_math_kernel(train):
    device = test_device()
    batch = ben_batch(AtomBatch, n=8, mods="bigearthnet_train")["input"].to(device)
    assert not bool(batch.decoded().mask.all())  # mixed modalities: padding, masked at attention
    out = _forward_backward(_model(device), batch, device, train)
    assert bool(torch.isfinite(out.float()).all())


def _seconds(fn) -> float:
    reps = 5 if torch.cuda.is_available() else 1  # the CPU dry run checks the plumbing, not the figures
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def test_padding_vs_bucketing_by_atom_count_measured():
    """The same 16 sets (4 modalities x 4): two padded mixed batches vs batches of one atom count each."""
    from atomizer.atoms.tokens import collate

    device = test_device()
    sets = ben_batch(AtomBatch, n=16, mods="bigearthnet_train")["input"].decoded()
    rows = [_row(sets, i) for i in range(16)]
    mixed = [collate(rows[:8]).to(device), collate(rows[8:]).to(device)]
    groups: dict[int, list[AtomBatch]] = {}
    for r in rows:
        groups.setdefault(r.value.shape[1], []).append(r)
    bucketed = [collate(g).to(device) for g in groups.values()]
    assert len(bucketed) < 16  # the modalities' sets share their atom counts
    model = _model(device)
    figures = {}
    for train in (False, True):

        def run(batches, train=train):
            return lambda: [_forward_backward(model, b, device, train) for b in batches]

        with torch.set_grad_enabled(train):
            padded_s, bucketed_s = _seconds(run(mixed)), _seconds(run(bucketed))
        mode = "train" if train else "eval"
        figures[mode] = {"padded_mask_s": padded_s, "bucketed_s": bucketed_s, "speedup": padded_s / bucketed_s}
    figures["padding_fraction"] = 1.0 - float(sum(b.mask.sum() for b in mixed)) / sum(b.mask.numel() for b in mixed)
    figures["device"] = torch.cuda.get_device_name() if device.type == "cuda" else str(device)
    print(json.dumps(figures))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "models_gpu_padding.json").write_text(json.dumps(figures, indent=1))
    assert all(v > 0 for m in ("eval", "train") for v in figures[m].values())


def _row(batch: AtomBatch, i: int) -> AtomBatch:
    """Set ``i`` of a collated batch alone, its padding trimmed (band and coordinate tables kept whole)."""
    n = int(batch.mask[i].nonzero().max()) + 1
    return AtomBatch(
        batch.value[i : i + 1, :n],
        batch.band[i : i + 1, :n],
        batch.xi[i : i + 1, :n],
        batch.yi[i : i + 1, :n],
        batch.mask[i : i + 1, :n],
        batch.band_table,
        batch.coord_x,
        batch.coord_y,
        batch.band_names,
        batch.band_domains,
    )
