"""Layers below the models: stochastic depth."""

import pytest
import torch

from atomizer.models.atomizer import AtomizerConfig
from atomizer.models.layers import drop_path


def test_drop_path_drops_whole_sets_and_keeps_the_mean():
    x = torch.ones(4000, 3, 5)
    g = torch.Generator().manual_seed(0)
    y = drop_path(x, 0.25, training=True, generator=g)
    per_set = y[:, 0, 0]
    assert per_set.unique().tolist() == pytest.approx([0.0, 1.0 / 0.75])  # a set is dropped whole or rescaled
    assert (y == y[:, :1, :1]).all()
    assert per_set.mean().item() == pytest.approx(1.0, abs=0.05)
    assert torch.equal(drop_path(x, 0.25, training=False), x)  # identity at evaluation
    with pytest.raises(ValueError, match="drop_path"):
        AtomizerConfig(drop_path=1.0)
