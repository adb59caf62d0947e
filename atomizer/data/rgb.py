"""A true-colour picture of an image: its red, green and blue bands as reflectance, each stretched between
percentiles (the dashboard's maps and attention views show it under their overlays)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

#: Sentinel-2's red, green and blue bands.
RGB_BANDS = ("B04", "B03", "B02")


def rgb_composite(
    image: xr.Dataset, bands: Sequence[str] = RGB_BANDS, percentiles: tuple[float, float] = (2, 98)
) -> np.ndarray | None:
    """(h, w, 3) in [0, 1] from physical reflectance of ``bands``, each stretched between percentiles.

    None when a band is missing or the three are on different grids.
    """
    if not all(b in image for b in bands) or len({image[b].shape for b in bands}) > 1:
        return None
    chans = []
    for b in bands:
        a = image[b].attrs
        v = (image[b].values.astype(np.float64) + a.get("dn_offset", 0.0)) * a.get("dn_scale", 1.0)
        nod = a.get("nodata")
        bad = ~np.isfinite(v)
        if nod is not None and not (isinstance(nod, float) and np.isnan(nod)):
            bad |= image[b].values == nod
        ok = v[~bad]
        lo, hi = np.percentile(ok, percentiles) if ok.size else (0.0, 1.0)
        chans.append(np.where(bad, 0.0, np.clip((v - lo) / max(hi - lo, 1e-9), 0, 1)))
    return np.dstack(chans)
