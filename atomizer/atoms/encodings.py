"""Atom encodings: pure tensor builders first, one thin module that gathers them last.

An atom's feature vector is ``concat(phi_I(value), phi_pos(x), phi_pos(y), phi_band(band))``:

* :func:`fourier_features` -- ``gamma(x; L, f_max) = [sin(pi f_k x)]_k ++ [cos(pi f_k x)]_k (++ x)``
  with ``f_k`` linearly spaced in ``[1, f_max]``.
* :func:`normalize_values` -- physical values to a sensor-free scale (or per-band z-scores).
* :func:`positional_encoding` -- resolution-modulated position. The paper writes, for pixel column
  ``x`` of an image ``w`` pixels wide at GSD ``g``, ``x_d = (x - x_c) / (w / 2)`` and encodes
  ``gamma(x_d * g / G)``. Since ``(x - x_c) * g`` is the physical offset from the image centre in
  metres, this equals ``gamma(offset_m / R)`` with ``R = G * w / 2``; we encode the physical offset over
  a fixed reference ``R = ref_m`` (default 600 m, half a BigEarthNet patch), as the authors' code
  effectively did. A ground point keeps its code whatever the crop (around the same centre) and GSD;
  a coarse GSD moves further per pixel, so its code varies faster from pixel to pixel.
* :func:`rbf_spectral_encoding` -- non-uniform Gaussian anchors, max over points sampled across the
  band's support, L2-normalised; SAR and thermal bands get one-hot extra channels instead.
* :func:`gsd_encoding` -- ``gamma(log2(gsd / 10 m) / 4)``, part of the per-band features.
* :func:`time_encoding` -- optional acquisition date (day of year on the circle, year).

Because value, x, y and band features depend on few distinct inputs, the model projects them
separately and sums (see :class:`atomizer.models.atomizer.FactorizedTokenProjection`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from atomizer.atoms.tokens import EXTRA_CHANNELS
from atomizer.core.config import Config

#: The 16 anchors (mu, sigma) in nm of the method note: dense in 380-940 nm, few and wide in the SWIR.
DEFAULT_ANCHORS: tuple[tuple[float, float], ...] = (
    (380, 15),
    (424, 15),
    (468, 15),
    (513, 15),
    (557, 15),
    (602, 15),
    (646, 15),
    (691, 15),
    (735, 15),
    (780, 15),
    (850, 15),
    (940, 15),
    (1200, 80),
    (1400, 30),
    (1600, 40),
    (2100, 120),
)

#: Fixed, sensor-free affine maps of physical values to roughly [-1, 1]: (centre, half range), per domain.
PHYSICAL_SCALING = {"optical": (0.25, 0.25), "sar": (-15.0, 10.0), "thermal": (290.0, 30.0)}
VALUE_CLAMP = 4.0


def fourier_frequencies(num_bands: int, max_freq: float) -> Tensor:
    """``(L,)`` frequencies linearly spaced in ``[1, max_freq]``."""
    if num_bands < 1:
        raise ValueError("num_bands must be >= 1")
    return torch.linspace(1.0, float(max_freq), num_bands)


def fourier_features(x: Tensor, num_bands: int, max_freq: float, include_raw: bool = True) -> Tensor:
    """``gamma(x)``: ``(...,) -> (..., 2L [+1])`` = ``[sin(pi f x)], [cos(pi f x)] (, x)``."""
    f = fourier_frequencies(num_bands, max_freq).to(x.device, torch.float32)
    arg = math.pi * x.float()[..., None] * f  # (..., L)
    parts = [arg.sin(), arg.cos()]
    if include_raw:
        parts.append(x.float()[..., None])
    return torch.cat(parts, dim=-1)


def fourier_dim(num_bands: int, include_raw: bool = True) -> int:
    return 2 * num_bands + int(include_raw)


def normalize_values(
    value: Tensor, extra_channel: Tensor, mean: Tensor | None = None, std: Tensor | None = None
) -> Tensor:
    """Map physical values to the encoder's scale, clamped to ``[-4, 4]``.

    Args:
        value: (...,) physical values (reflectance for optical bands, dB for SAR, K for thermal).
        extra_channel: (...,) band-table extra-channel code of each value (-1 optical, 0-3 SAR, 4 thermal).
        mean, std: Optional (...,) per-value z-score statistics (from training data). Where given (finite),
            ``(v - mean) / std`` is used; elsewhere the fixed physical scaling, which works for any sensor.
    """
    c = torch.full_like(value, PHYSICAL_SCALING["optical"][0])
    h = torch.full_like(value, PHYSICAL_SCALING["optical"][1])
    sar = (extra_channel >= 0) & (extra_channel < EXTRA_CHANNELS.index("thermal"))
    th = extra_channel == EXTRA_CHANNELS.index("thermal")
    c = torch.where(sar, PHYSICAL_SCALING["sar"][0], c)
    h = torch.where(sar, PHYSICAL_SCALING["sar"][1], h)
    c = torch.where(th, PHYSICAL_SCALING["thermal"][0], c)
    h = torch.where(th, PHYSICAL_SCALING["thermal"][1], h)
    if mean is not None and std is not None:
        have = torch.isfinite(mean) & torch.isfinite(std) & (std > 0)
        c = torch.where(have, mean, c)
        h = torch.where(have, std, h)
    return ((value - c) / h).clamp(-VALUE_CLAMP, VALUE_CLAMP)


def positional_encoding(
    offset_m: Tensor, num_bands: int, max_freq: float, ref_m: float = 600.0, include_raw: bool = True
) -> Tensor:
    """Resolution-modulated positional code of one axis: ``gamma(offset_m / ref_m)``.

    Args:
        offset_m: (...,) physical offsets from the image centre, metres.
    Returns:
        (..., 2L [+1]).
    """
    return fourier_features(offset_m / ref_m, num_bands, max_freq, include_raw)


def positional_grid(
    size_px: int, gsd_m: float, num_bands: int, max_freq: float, ref_m: float = 600.0, include_raw: bool = True
) -> Tensor:
    """Codes of the pixel centres of a ``size_px`` x ``size_px`` image at ``gsd_m``: (H, W, 2, D).

    ``[..., 0, :]`` is the x (east) code and ``[..., 1, :]`` the y (north) code. For dashboards.
    """
    off = (torch.arange(size_px, dtype=torch.float32) + 0.5 - size_px / 2) * gsd_m
    px = positional_encoding(off, num_bands, max_freq, ref_m, include_raw)  # (W, D)
    py = positional_encoding(-off, num_bands, max_freq, ref_m, include_raw)  # (H, D), north up
    return torch.stack([px[None, :, :].expand(size_px, -1, -1), py[:, None, :].expand(-1, size_px, -1)], 2)


def anchors_tensor(anchors: Sequence[Sequence[float]] = DEFAULT_ANCHORS) -> tuple[Tensor, Tensor]:
    a = torch.tensor([list(x) for x in anchors], dtype=torch.float64)
    if a.ndim != 2 or a.shape[1] != 2 or (a[:, 1] <= 0).any():
        raise ValueError("anchors must be (mu_nm, sigma_nm) pairs with sigma > 0")
    return a[:, 0], a[:, 1]


def rbf_spectral_encoding(
    center_nm: Tensor,
    width_nm: Tensor,
    anchors: Sequence[Sequence[float]] = DEFAULT_ANCHORS,
    extra_channel: Tensor | None = None,
    num_samples: int = 33,
) -> Tensor:
    """Non-uniform RBF code of bands: ``(B,), (B,) -> (B, K + len(EXTRA_CHANNELS))``.

    For a band ``[c - w/2, c + w/2]``, ``num_samples`` wavelengths are taken uniformly in it; anchor
    ``i`` responds ``max_l exp(-(l - mu_i)^2 / (2 sigma_i^2))``; the K responses are L2-normalised. Bands
    with ``extra_channel >= 0`` (SAR polarisations, thermal) get zeros on the RBF axis and a one-hot
    in the extra channels.
    """
    mu, sigma = anchors_tensor(anchors)
    c = center_nm.to(torch.float64)
    w = width_nm.to(torch.float64).clamp_min(0)
    t = torch.linspace(-0.5, 0.5, num_samples, dtype=torch.float64)
    lam = c[:, None] + w[:, None] * t  # (B, S)
    act = torch.exp(-((lam[:, :, None] - mu) ** 2) / (2 * sigma**2)).amax(1)  # (B, K)
    act = act / act.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    extra = torch.zeros(c.shape[0], len(EXTRA_CHANNELS), dtype=torch.float64)
    if extra_channel is not None:
        ec = extra_channel.to(torch.long)
        special = ec >= 0
        act = torch.where(special[:, None], torch.zeros_like(act), act)
        extra[special, ec[special]] = 1.0
    return torch.cat([act, extra], -1).float()


#: Below this strongest raw anchor response a band is "not covered": its L2-normalised code would be a
#: confident-looking one-hot of an anchor more than ~2.1 sigma away (see :func:`anchor_coverage`).
MIN_ANCHOR_RESPONSE = 0.1
_WARNED: set[tuple[float, float]] = set()


def anchor_coverage(
    center_nm: Tensor, width_nm: Tensor, anchors: Sequence[Sequence[float]] = DEFAULT_ANCHORS, num_samples: int = 33
) -> Tensor:
    """(B,) strongest raw (un-normalised) anchor response of each band: 1 on an anchor's centre, about 0.1 at
    2.1 sigma. A band whose value is below :data:`MIN_ANCHOR_RESPONSE` lies outside what the anchors cover:
    give the encoding anchors there (``EncodingConfig.anchors``, e.g. ``model_overrides: {encoding:
    {anchors: [...]}}``) or, for a thermal band, declare ``domain: thermal`` (its own channel)."""
    mu, sigma = anchors_tensor(anchors)
    c = center_nm.to(torch.float64)
    w = width_nm.to(torch.float64).clamp_min(0)
    lam = c[:, None] + w[:, None] * torch.linspace(-0.5, 0.5, num_samples, dtype=torch.float64)
    return torch.exp(-((lam[:, :, None] - mu) ** 2) / (2 * sigma**2)).amax(1).amax(1)


def warn_uncovered(band_table: Tensor, anchors: Sequence[Sequence[float]], names: Sequence[str] = ()) -> list[str]:
    """Warn (once per band) about optical bands of ``band_table`` the anchors do not cover; returns the messages."""
    import warnings

    optical = band_table[:, 3] < 0
    if not bool(optical.any()):
        return []
    cov = anchor_coverage(band_table[:, 0].cpu(), band_table[:, 1].cpu(), anchors)
    out = []
    for i in torch.nonzero(optical.cpu() & (cov < MIN_ANCHOR_RESPONSE)).flatten().tolist():
        key = (float(band_table[i, 0]), float(band_table[i, 1]))
        name = names[i] if i < len(names) else f"#{i}"
        msg = (
            f"band {name} ({key[0]:g} nm, {key[1]:g} nm wide) is not covered by the spectral anchors (strongest "
            f"response {float(cov[i]):.3f} < {MIN_ANCHOR_RESPONSE}): add anchors there (EncodingConfig.anchors) or "
            "declare a thermal band with domain: thermal"
        )
        out.append(msg)
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(msg, stacklevel=3)
    return out


def gsd_encoding(gsd_m: Tensor, num_bands: int = 4, max_freq: float = 4.0) -> Tensor:
    """``gamma(log2(gsd / 10 m) / 4)``: (B,) -> (B, 2L+1)."""
    return fourier_features(torch.log2(gsd_m.float() / 10.0) / 4.0, num_bands, max_freq, include_raw=True)


def time_encoding(day_of_year: Tensor, year: Tensor, ref_year: float = 2015.0) -> Tensor:
    """Acquisition date: ``[sin, cos](2 pi doy / 365.25), (year - ref_year) / 10`` -> (..., 3)."""
    a = 2 * math.pi * day_of_year.float() / 365.25
    return torch.stack([a.sin(), a.cos(), (year.float() - ref_year) / 10.0], -1)


@dataclass(frozen=True)
class EncodingConfig(Config):
    """Sizes of the atom encodings (part of :class:`atomizer.models.atomizer.AtomizerConfig`)."""

    kind: ClassVar[str] = "encoding"

    value_bands: int = 16
    value_max_freq: float = 16.0
    pos_bands: int = 32
    pos_max_freq: float = 32.0
    pos_ref_m: float = 600.0
    gsd_bands: int = 4
    gsd_code: bool = True  # the per-band GSD code in the band features (beyond the paper; off: positions only)
    anchors: tuple[tuple[float, float], ...] = DEFAULT_ANCHORS
    spectral_samples: int = 33
    use_time: bool = False

    @property
    def value_dim(self) -> int:
        return fourier_dim(self.value_bands)

    @property
    def pos_dim(self) -> int:
        """Dimension of one axis' code (the token holds x and y)."""
        return fourier_dim(self.pos_bands)

    @property
    def band_dim(self) -> int:
        gsd = fourier_dim(self.gsd_bands) if self.gsd_code else 0
        return len(self.anchors) + len(EXTRA_CHANNELS) + gsd + 3 * int(self.use_time)

    @property
    def token_dim(self) -> int:
        return self.value_dim + 2 * self.pos_dim + self.band_dim


class AtomEncoder(nn.Module):
    """Builds the per-part feature tables of a batch (no parameters; buffers only).

    ``parts(batch)`` returns ``(value_f (S,N,Dv), x_f (X,Dp), y_f (Y,Dp), band_f (B,Db))``; the
    full token of atom ``n`` is ``concat(value_f[n], x_f[xi[n]], y_f[yi[n]], band_f[band[n]])``.
    """

    def __init__(self, cfg: EncodingConfig, band_stats: Mapping[str, tuple[float, float]] | None = None):
        super().__init__()
        self.cfg = cfg
        self.band_stats = dict(band_stats or {})

    def value_features(
        self, batch, value: Tensor | None = None, band: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """Fourier features of the normalised values of ``batch`` (or of ``value``/``band``/``mask``, a
        slice of it). Masked atoms (padding, nodata) read 0 whatever they hold, so a NaN there is inert."""
        if value is None:
            value, band, mask = batch.value, batch.band, batch.mask
        if band is None or mask is None:
            raise ValueError("value_features: a slice of values needs its band and mask slices too")
        value = torch.where(mask, value, torch.zeros((), dtype=value.dtype, device=value.device))
        extra = batch.band_table[:, 3][band]
        mean = std = None
        if self.band_stats:
            nan = float("nan")
            m = torch.tensor([self.band_stats.get(n, (nan, nan))[0] for n in batch.band_names], device=value.device)
            s = torch.tensor([self.band_stats.get(n, (nan, nan))[1] for n in batch.band_names], device=value.device)
            mean, std = m[band], s[band]
        x = normalize_values(value, extra, mean, std)
        return fourier_features(x, self.cfg.value_bands, self.cfg.value_max_freq)

    def coord_features(self, coords: Tensor) -> Tensor:
        return positional_encoding(coords, self.cfg.pos_bands, self.cfg.pos_max_freq, self.cfg.pos_ref_m)

    def band_features(self, band_table: Tensor, names: Sequence[str] = ()) -> Tensor:
        warn_uncovered(band_table, self.cfg.anchors, names)
        spec = rbf_spectral_encoding(
            band_table[:, 0].cpu(),
            band_table[:, 1].cpu(),
            self.cfg.anchors,
            band_table[:, 3].cpu(),
            self.cfg.spectral_samples,
        ).to(band_table.device)
        parts = [spec]
        if self.cfg.gsd_code:
            parts.append(gsd_encoding(band_table[:, 2], self.cfg.gsd_bands))
        if self.cfg.use_time:  # the acquisition date rides on the band rows (band tables are per image)
            parts.append(time_encoding(band_table[:, 4], band_table[:, 5]).nan_to_num(0.0))
        return torch.cat(parts, -1)

    def parts(self, batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (
            self.value_features(batch),
            self.coord_features(batch.coord_x),
            self.coord_features(batch.coord_y),
            self.band_features(batch.band_table, getattr(batch, "band_names", ())),
        )

    def materialize(self, batch) -> Tensor:
        """The full (S, N, token_dim) token features (reference path, tests and plots only)."""
        v, fx, fy, fb = self.parts(batch)
        return torch.cat([v, fx[batch.xi], fy[batch.yi], fb[batch.band]], -1)
