"""Masked atoms are inert whatever value they hold: a NaN (or inf) under ``mask == False`` changes nothing."""

from __future__ import annotations

import math

import pytest
import torch

from atomizer.atoms.tokens import collate, tokenize
from atomizer.data.readers import open_image
from atomizer.models.atomizer import Atomizer, AtomizerConfig


@pytest.mark.parametrize("poison", [math.nan, math.inf, -1e30])
@pytest.mark.parametrize("chunk_size", [None, 5000])
def test_masked_atom_values_do_not_reach_the_logits(ben_patch_paths, poison, chunk_size):
    torch.manual_seed(0)
    model = Atomizer(AtomizerConfig.preset("tiny", num_classes=19)).eval()
    a = tokenize(open_image(ben_patch_paths[0]))
    b = tokenize(open_image(ben_patch_paths[1]))
    batch = collate([a, b])  # different sizes: padding in one set
    batch.mask[0, :100] = False  # and masked (nodata) atoms in the other
    with torch.no_grad():
        ref = model(batch, chunk_size=chunk_size)
        batch.value[~batch.mask] = poison
        out = model(batch, chunk_size=chunk_size)
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
