"""Attention maps' grids: mass spread between band grids is conserved; the RGB composite lives in data.rgb."""

from __future__ import annotations

import numpy as np
import xarray as xr

from atomizer.data.rgb import RGB_BANDS, rgb_composite
from atomizer.engine.attention import BandGrid, spread_to_grid


def test_mass_spread_from_a_coarse_band_grid_to_a_fine_one_is_conserved():
    coarse = BandGrid(np.array([-10.0, 10.0]), np.array([10.0, -10.0]), 20.0)
    fine = BandGrid(np.arange(-15.0, 16.0, 10.0), np.arange(15.0, -16.0, -10.0), 10.0)
    mass = np.array([[1.0, 2.0], [3.0, 4.0]])
    out = spread_to_grid(mass, coarse, fine)
    assert out.shape == (4, 4)
    assert np.isclose(out.sum(), mass.sum())
    assert np.allclose(out[:2, :2], 0.25) and np.allclose(out[2:, 2:], 1.0)
    assert fine.bounds == (-20.0, -20.0, 20.0, 20.0)


def test_rgb_composite_stretches_each_band_and_skips_nodata():
    rng = np.random.default_rng(0)
    bands = {}
    for b in RGB_BANDS:
        v = rng.integers(1, 10_000, (8, 8)).astype(np.uint16)
        v[0, 0] = 0
        bands[b] = (("y", "x"), v, {"dn_scale": 1e-4, "nodata": 0})
    rgb = rgb_composite(xr.Dataset(bands))
    assert rgb is not None and rgb.shape == (8, 8, 3)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0 and np.all(rgb[0, 0] == 0.0)
    assert rgb_composite(xr.Dataset({"B04": bands["B04"]})) is None  # a band missing: no composite
