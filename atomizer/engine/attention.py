"""Attention maps: where the latents of a trained Atomizer look, mapped back onto each band's grid.

The model (:func:`atomizer.models.checkpoint.load_model`) reads the image's atoms (:func:`atomizer.atoms.tokens.tokenize`,
after :func:`atomizer.data.modalities.simulate` for a chosen modality) and returns, per cross-attention
block, the weights ``(S, heads, L, N)`` over every atom (``forward(batch, return_attention=True)``).
Here they are averaged over heads and scattered back through the atoms' indices (``band``, ``xi``,
``yi``) onto each band's native pixel grid, then aggregated per band (attention mass per band and
wavelength, and a latent x band heat map) and per pixel (every band's mass spread onto the finest grid
by exact area overlap, :func:`atomizer.data.modalities.overlap_matrix`). For each latent, the mass over all
atoms sums to 1.

Use::

    from atomizer.engine.attention import compute_attention
    res = compute_attention(load_model("runs/x/checkpoints/best.pt"), image)
    res.band_maps(block=0)         # band -> (L, h, w) attention weights of that block
    res.latent_band_mass(block=0)  # DataFrame: attention mass of each latent per band

The dashboard's view (:class:`atomizer.dashboard.attention.AttentionMaps`) only arranges and plots these.

The result holds every atom's weight in every block, so its memory grows with the atom count: a caller
facing inputs it does not control counts their atoms first (:func:`input_atoms`, from headers only) and
refuses what is above its bound (:func:`atomizer.core.limits.check_atoms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from atomizer.atoms.tokens import AtomBatch, tokenize
from atomizer.data.bands import Sensor
from atomizer.data.modalities import overlap_matrix
from atomizer.data.readers import count_tokens, open_image
from atomizer.models.atomizer import Atomizer

# --------------------------------------------------------------------------------------------------
# How large an input is, before reading it
# --------------------------------------------------------------------------------------------------


def input_atoms(path: str | Path, sensor: str | Path | Sensor | None = None) -> int:
    """The number of atoms (pixels x bands, every band on its native grid) of the input at ``path``, read from
    headers: no pixel is read (a GeoTIFF, band folder or product is opened lazily, a ``.npz`` patch's array
    headers are read), so a caller can refuse an input too large for it before reading it whole."""
    return count_tokens(open_image(path, sensor=sensor, lazy=True))


# --------------------------------------------------------------------------------------------------
# Attention back onto the grids
# --------------------------------------------------------------------------------------------------


def atom_maps(batch: AtomBatch, values: np.ndarray, shapes: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """Scatter per-atom ``values`` (L, N) of set 0 of ``batch`` onto each band's grid: band -> (L, h, w).

    The atom's band is ``batch.band``; its column and row are ``xi``/``yi`` relative to the first row of
    that band's coordinate table (tokenize keeps every pixel of a band, nodata included, masked).
    """
    band = batch.band[0].numpy()
    xi, yi = batch.xi[0].numpy(), batch.yi[0].numpy()
    L = values.shape[0]
    out = {}
    for k, name in enumerate(batch.band_names):
        sel = np.nonzero(band == k)[0]
        h, w = shapes[name]
        m = np.zeros((L, h, w), dtype=values.dtype)
        if sel.size:
            cx, cy = xi[sel] - xi[sel].min(), yi[sel] - yi[sel].min()
            if cx.max() >= w or cy.max() >= h:
                raise ValueError(f"band {name}: atom indices exceed its {h}x{w} grid")
            m[:, cy, cx] = values[:, sel]
        out[name] = m
    return out


def _edges(centres: np.ndarray, g: float) -> np.ndarray:
    """Increasing cell edges of a grid with pixel ``g`` and increasing ``centres``."""
    return np.r_[centres - g / 2, centres[-1] + g / 2]


@dataclass
class BandGrid:
    """A band's grid in metres from the image centre: column centres ``x`` (east), row centres ``y``
    (north, decreasing: row 0 is the top), pixel size ``gsd``."""

    x: np.ndarray
    y: np.ndarray
    gsd: float

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        g = self.gsd
        return (self.x.min() - g / 2, self.y.min() - g / 2, self.x.max() + g / 2, self.y.max() + g / 2)


#: The dashboard's name for :class:`BandGrid` (``atomizer.dashboard.attention`` imports it) until it uses the new one.


def spread_to_grid(mass: np.ndarray, src: BandGrid, dst: BandGrid) -> np.ndarray:
    """Redistribute per-pixel ``mass`` (..., h, w) on ``src`` onto ``dst`` by exact area overlap.

    Mass is conserved where ``dst`` covers ``src`` (a coarse pixel's mass is shared among the fine
    pixels it covers, in proportion to the area they share).
    """
    wx = overlap_matrix(_edges(src.x, src.gsd), _edges(dst.x, dst.gsd)) * (dst.gsd / src.gsd)
    wy = overlap_matrix(_edges(-src.y, src.gsd), _edges(-dst.y, dst.gsd)) * (dst.gsd / src.gsd)
    return wy @ mass @ wx.T


@dataclass
class AttentionResult:
    """One image through one model: the image, its atoms, the logits and per-block weights (L, N)."""

    image: xr.Dataset
    batch: AtomBatch
    logits: np.ndarray
    weights: list[np.ndarray]
    classes: list[str]
    multilabel: bool

    @property
    def bands(self) -> list[str]:
        return list(self.batch.band_names)

    def grids(self) -> dict[str, BandGrid]:
        """Each band's grid in the atoms' frame (metres from the image centre)."""
        b = self.batch
        band, xi, yi = b.band[0].numpy(), b.xi[0].numpy(), b.yi[0].numpy()
        cx, cy = b.coord_x.numpy(), b.coord_y.numpy()
        out = {}
        for k, name in enumerate(b.band_names):
            sel = band == k
            h, w = self.image[name].shape
            x0, y0 = xi[sel].min(), yi[sel].min()
            out[name] = BandGrid(
                cx[x0 : x0 + w].astype(float), cy[y0 : y0 + h].astype(float), float(b.band_table[k, 2])
            )
        return out

    def band_maps(self, block: int) -> dict[str, np.ndarray]:
        """Band -> (L, h, w) attention weights of ``block`` on the band's native grid."""
        shapes = {n: (int(self.image[n].shape[0]), int(self.image[n].shape[1])) for n in self.bands}
        return atom_maps(self.batch, self.weights[block], shapes)

    def band_table(self) -> pd.DataFrame:
        rows = [
            {
                "band": n,
                "wavelength_nm": float(t[0]),
                "bandwidth_nm": float(t[1]),
                "gsd_m": float(t[2]),
                "atoms": int((self.batch.band[0] == k).sum()),
            }
            for k, (n, t) in enumerate(zip(self.bands, self.batch.band_table.tolist()))
        ]
        return pd.DataFrame(rows)

    def latent_band_mass(self, block: int) -> pd.DataFrame:
        """Attention mass of every latent on every band: index latent, columns bands (by wavelength)."""
        w = self.weights[block]
        band = self.batch.band[0].numpy()
        mass = np.stack([w[:, band == k].sum(1) for k in range(len(self.bands))], 1)
        df = pd.DataFrame(mass, index=pd.Index(range(w.shape[0]), name="latent"), columns=self.bands)
        order = self.band_table().sort_values("wavelength_nm")["band"]
        return df[list(order)]

    def pixel_map(self, block: int, latent: int) -> tuple[np.ndarray, BandGrid]:
        """The latent's attention summed over bands on the finest grid: ((h, w) mass, that grid)."""
        grids = self.grids()
        finest = min(self.bands, key=lambda n: (grids[n].gsd, -self.image[n].size))
        maps = self.band_maps(block)
        total = np.zeros(self.image[finest].shape)
        for n in self.bands:
            total += spread_to_grid(maps[n][latent].astype(np.float64), grids[n], grids[finest])
        return total, grids[finest]

    def probabilities(self) -> pd.Series:
        x = torch.from_numpy(self.logits)
        p = x.sigmoid() if self.multilabel else x.softmax(-1)
        return pd.Series(p.numpy(), index=self.classes).sort_values(ascending=False)


@torch.no_grad()
def compute_attention(
    model: Atomizer, image: xr.Dataset, classes: list[str] | None = None, multilabel: bool = True
) -> AttentionResult:
    """Tokenize ``image``, run ``model`` with ``return_attention=True``; weights averaged over heads."""
    batch = tokenize(image)
    logits, weights = model(batch, return_attention=True)
    w = [blk[0].float().mean(0).numpy() for blk in weights]  # (L, N) per block
    lg = logits[0].float().numpy()
    classes = list(classes or [f"class_{i}" for i in range(lg.shape[0])])
    return AttentionResult(image, batch, lg, w, classes, multilabel)
