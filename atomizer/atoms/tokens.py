"""Tokenizer: the xarray image of the readers in, an atom set out.

One atom per (pixel, band) on the band's native grid. An atom carries its physical value, the index
of its band in a band table (wavelength, bandwidth, GSD, polarisation), and indices of its x and y
coordinates in per-image coordinate tables (metres east/north of the image centre). Storing indices
rather than per-token features is what lets the model embed tokens from small tables (positions per
pixel and GSD, spectra per band) without ever materialising a tokens x features tensor.

Shapes (S images in a batch, N tokens after padding, B bands, X/Y coordinate-table rows)::

    value  (S, N) float32   physical value: reflectance, or dB for SAR
    band   (S, N) int32     row of band_table
    xi, yi (S, N) int32     rows of coord_x / coord_y
    mask   (S, N) bool      True for a real, valid atom; False for nodata or padding
    band_table (B, 6) float32   wavelength_nm, bandwidth_nm, gsd_m, extra channel (-1 optical),
                                day of year and year of acquisition (NaN when unknown)
    coord_x, coord_y (X,), (Y,) float32   metres from the image centre (x east, y north)
    runs   (S, R, 6) int64 or None   on the wire only (below): atom offsets past 2^31 fit
    dn_scaling (B, 2) float32 or None   on the wire only (below)

**On the wire.** Batches that cross a process or device boundary (loader workers to the training
process, host to GPU) are built with ``wire="compact"`` (:func:`tokenize`, :meth:`AtomBatch.from_image`).
The per-atom indices are then not sent: every band is a row-major grid, so ``runs`` lists, per band of
each set, ``(first atom, atoms, band row, first coord_x row, first coord_y row, width)`` and ``band``,
``xi``, ``yi`` are empty (S, 0) until rebuilt. Where every band still holds its stored unsigned integers
(the modality kept the native grid, cropping only; not SAR), ``value`` carries those uint16 DN and
``dn_scaling`` each band's ``(dn_offset, dn_scale)``. An atom then costs 3 bytes (uint16 value, mask),
or 5 with float32 values, instead of 17. :meth:`AtomBatch.to` rebuilds on arrival
(:meth:`AtomBatch.decoded`) with the arithmetic of :meth:`~atomizer.data.light.Raster.physical`, so the
model reads bit-identical atoms (tested).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache

import numpy as np
import torch
import xarray as xr

from atomizer.data.bands import POLARISATIONS, Band
from atomizer.data.light import LightImage, union_bounds

#: Atom indices are int32 (embedding lookups and gathers take them as they are): an atom is 17 bytes on
#: the wire (value, three indices, mask) instead of 29 with int64, from DataLoader workers and to the GPU.
INDEX_DTYPE = torch.int32
BAND_TABLE_COLUMNS = ("wavelength_nm", "bandwidth_nm", "gsd_m", "extra_channel", "day_of_year", "year")
#: How :func:`tokenize` lays atoms out: every index materialised, or runs and DN (module docstring).
WIRE_FORMATS = ("full", "compact")
#: ``runs`` columns.
RUN_COLUMNS = ("start", "length", "band", "x0", "y0", "width")
#: ``runs`` are int64: a run's first atom and length (and a batch's cumulative atom offsets) can pass 2^31 on
#: a large scene, where int32 would wrap; a run row is 48 bytes whatever the image size.
RUN_DTYPE = torch.int64
#: Bands off the optical RBF axis get a one-hot code in these extra spectral channels.
EXTRA_CHANNELS = (*POLARISATIONS, "thermal")


class EmptyTokenSetError(ValueError):
    """An image produced no valid atom (every pixel is nodata, or no band was given)."""


def extra_channel(domain: str, polarisation: str | None) -> float:
    """Band-table code of a band's extra spectral channel: -1 for optical, else its index."""
    if domain == "sar":
        return float(EXTRA_CHANNELS.index(polarisation))
    if domain == "thermal":
        return float(EXTRA_CHANNELS.index("thermal"))
    return -1.0


def acquisition_date(image: xr.Dataset | LightImage) -> tuple[float, float]:
    """(day of year, year) from ``image.attrs["acquisition_date"]`` (ISO date), or NaNs."""
    text = str(image.attrs.get("acquisition_date", ""))
    try:
        d = np.datetime64(text[:10], "D")
    except ValueError:
        return (math.nan, math.nan)
    if np.isnat(d):
        return (math.nan, math.nan)
    year = d.astype("datetime64[Y]")
    return (float((d - year.astype("datetime64[D]")).astype(int) + 1), float(year.astype(int) + 1970))


@dataclass
class AtomBatch:
    """A padded batch of atom sets (a single image is a batch of one). See the module docstring."""

    value: torch.Tensor
    band: torch.Tensor
    xi: torch.Tensor
    yi: torch.Tensor
    mask: torch.Tensor
    band_table: torch.Tensor
    coord_x: torch.Tensor
    coord_y: torch.Tensor
    band_names: list[str] = field(default_factory=list)
    band_domains: list[str] = field(default_factory=list)
    runs: torch.Tensor | None = None
    dn_scaling: torch.Tensor | None = None

    @property
    def num_sets(self) -> int:
        return self.value.shape[0]

    @property
    def compact(self) -> bool:
        """True while indices travel as runs or values as DN (the wire form; see the module docstring)."""
        return self.runs is not None or self.dn_scaling is not None

    def decoded(self) -> "AtomBatch":
        """The batch with every index and physical float32 values (itself when not :attr:`compact`): the
        atoms :func:`tokenize` gives with ``wire="full"``, computed where the batch is."""
        if not self.compact:
            return self
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.runs is not None:
            kw["band"], kw["xi"], kw["yi"] = expand_runs(self.runs, self.value.shape[1])
            if _on_host(self.runs):  # values run by run, then the runs can go
                kw["value"] = self.physical().value
                kw["dn_scaling"] = None
            kw["runs"] = None
        return AtomBatch(**kw).physical()  # elsewhere: DN scaled through the rebuilt band index

    def physical(self) -> "AtomBatch":
        """The batch with float32 physical values, indices left as they are (runs stay runs)."""
        if self.dn_scaling is None:
            return self
        if self.runs is not None and _on_host(self.runs):  # run by run: no per-atom band index needed
            value = _host_values(self.runs, self.value, self.mask, self.dn_scaling)
        else:
            band = (expand_runs(self.runs, self.value.shape[1])[0] if self.runs is not None else self.band).reshape(-1)
            offset, scale = (c.index_select(0, band).view_as(self.value) for c in self.dn_scaling.T.contiguous())
            v = (self.value.to(torch.float32) + offset) * scale  # per-band constants gathered per atom
            value = torch.where(self.mask, v, torch.zeros((), dtype=v.dtype, device=v.device))
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw.update(value=value, dn_scaling=None)
        return AtomBatch(**kw)

    def __getstate__(self) -> dict:
        # torch pickles uint16 tensors for worker processes (shared memory) but not through plain pickle:
        # an int16 view of the same bits travels both ways.
        state = dict(self.__dict__)
        if state["value"].dtype == torch.uint16:
            state["value"] = state["value"].view(torch.int16)
        return state

    def __setstate__(self, state: dict) -> None:
        if state.get("dn_scaling") is not None and state["value"].dtype == torch.int16:
            state["value"] = state["value"].view(torch.uint16)
        self.__dict__.update(state)

    @property
    def num_tokens(self) -> torch.Tensor:
        """(S,) number of valid atoms per set."""
        return self.mask.sum(1)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "AtomBatch":
        """The batch on ``device``, rebuilt there if it travelled compact (:meth:`decoded`)."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in kw.items():
            if isinstance(v, torch.Tensor):
                kw[k] = v.to(device, non_blocking=non_blocking)
        return AtomBatch(**kw).decoded()

    def pin_memory(self) -> "AtomBatch":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in kw.items():
            if isinstance(v, torch.Tensor):
                kw[k] = v.pin_memory()
        return AtomBatch(**kw)

    def positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, N) x and y of every atom in metres (gathered, for plotting and tests)."""
        return self.coord_x[self.xi], self.coord_y[self.yi]

    def select(self, index: torch.Tensor, mask: torch.Tensor | None = None) -> "AtomBatch":
        """The atoms at ``index`` (S, K) of each set, with ``mask`` (S, K) (default: gathered mask)."""
        if self.compact:
            return self.decoded().select(index, mask)
        g = lambda t: torch.gather(t, 1, index)  # noqa: E731
        return AtomBatch(
            g(self.value),
            g(self.band),
            g(self.xi),
            g(self.yi),
            g(self.mask) if mask is None else mask & g(self.mask),
            self.band_table,
            self.coord_x,
            self.coord_y,
            self.band_names,
            self.band_domains,
        )

    @classmethod
    def collate(cls, items: Sequence["AtomBatch"]) -> "AtomBatch":
        """Batch atom sets with a padding mask (:func:`collate`)."""
        return collate(items)

    @classmethod
    def from_image(cls, image: xr.Dataset | LightImage, canvas: object = None, wire: str = "full") -> "AtomBatch":
        """One image as a batch of one (:func:`tokenize`, ``wire`` as there); ``canvas`` is ignored: atoms
        need no grid."""
        return tokenize(image, wire=wire)


@lru_cache(maxsize=1024)
def _grid_index(nx: int, ny: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-major x and y indices of an (h, w) grid whose coordinates start at ``nx``, ``ny`` in the coordinate
    tables (cached: a dataset's modalities repeat a few grids; read-only, concatenated into the batch)."""
    gx = np.tile(np.arange(nx, nx + w, dtype=np.int32), h)
    gy = np.repeat(np.arange(ny, ny + h, dtype=np.int32), w)
    gx.setflags(write=False)
    gy.setflags(write=False)
    return gx, gy


def tokenize(
    image: xr.Dataset | LightImage,
    bands: Sequence[str] | None = None,
    drop_invalid: bool = False,
    wire: str = "full",
) -> AtomBatch:
    """Turn one image into an atom set (a batch of one).

    Args:
        image: The image representation of :mod:`atomizer.data.readers` (any bands, any grids), or its
            :class:`~atomizer.data.light.LightImage` (the loaders' fast path: the same atoms).
        bands: Bands to keep (default: all band variables).
        drop_invalid: Drop nodata/NaN atoms instead of keeping them masked.
        wire: ``"full"`` (every index, physical values) or ``"compact"`` (index runs, and uint16 DN where
            every band keeps its stored integers; rebuilt by :meth:`AtomBatch.to`, see the module docstring).

    Raises:
        EmptyTokenSetError: no band, or no valid atom.
        ValueError: an unknown ``wire``, or ``"compact"`` with ``drop_invalid`` (runs need every atom).
    """
    if wire not in WIRE_FORMATS:
        raise ValueError(f"wire must be one of {WIRE_FORMATS}, got {wire!r}")
    if wire == "compact" and drop_invalid:
        raise ValueError("wire='compact' keeps every atom (its indices are runs): it cannot drop_invalid")
    if not isinstance(image, LightImage):
        image = LightImage.from_xarray(image)
    names = list(bands) if bands is not None else list(image.bands)
    if not names:
        raise EmptyTokenSetError("the image has no band to tokenize")
    as_dn = wire == "compact" and all(
        image.bands[n].values.dtype in (np.uint8, np.uint16) and image.bands[n].attrs.get("domain", "optical") != "sar"
        for n in names
    )
    left, right, bottom, top = union_bounds(image, names)  # the image centre: the union of the band extents
    cx, cy = (left + right) / 2, (bottom + top) / 2

    doy, year = acquisition_date(image)
    values: list[np.ndarray] = []
    band_idx: list[np.ndarray] = []
    xi: list[np.ndarray] = []
    yi: list[np.ndarray] = []
    valid: list[np.ndarray] = []
    coord_x: list[np.ndarray] = []
    coord_y: list[np.ndarray] = []
    table: list[list[float]] = []
    domains: list[str] = []
    nx = ny = 0
    for b, n in enumerate(names):
        r = image.bands[n]
        a = r.attrs
        h, w = r.shape
        if as_dn:
            v, ok = r.values.astype(np.uint16, copy=False), r.valid()
        else:
            v, ok = r.physical()
        values.append(v.ravel())
        valid.append(ok.ravel())
        if wire != "compact":
            band_idx.append(np.full(h * w, b, np.int32))
            gx, gy = _grid_index(nx, ny, h, w)
            xi.append(gx)
            yi.append(gy)
        nx, ny = nx + w, ny + h
        coord_x.append((r.xs - cx).astype(np.float32))
        coord_y.append((r.ys - cy).astype(np.float32))
        table.append(band_row(a, doy, year))
        domains.append(a.get("domain", "optical"))
    value = np.concatenate(values)
    mask = np.concatenate(valid)
    if not mask.any():
        raise EmptyTokenSetError(
            f"image {image.attrs.get('source', '')!s} has no valid atom: every pixel of bands {names} is nodata or NaN"
        )
    if wire == "compact":
        none = np.zeros(0, np.int32)
        cols = [value, none, none, none, mask]
    else:
        cols = [value, np.concatenate(band_idx), np.concatenate(xi), np.concatenate(yi), mask]
    if drop_invalid:
        cols = [c[mask] for c in cols]
    t = [torch.from_numpy(np.ascontiguousarray(c))[None] for c in cols]
    scaling = None
    if as_dn:
        rows = [(image.bands[n].attrs.get("dn_offset", 0.0), image.bands[n].attrs.get("dn_scale", 1.0)) for n in names]
        scaling = torch.tensor(rows, dtype=torch.float32)
    return AtomBatch(
        value=t[0],
        band=t[1],
        xi=t[2],
        yi=t[3],
        mask=t[4],
        band_table=torch.tensor(table, dtype=torch.float32),
        coord_x=torch.from_numpy(np.concatenate(coord_x)),
        coord_y=torch.from_numpy(np.concatenate(coord_y)),
        band_names=list(names),
        band_domains=domains,
        runs=band_runs([image.bands[n].shape for n in names])[None] if wire == "compact" else None,
        dn_scaling=scaling,
    )


def band_runs(shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
    """(R, 6) ``runs`` (:data:`RUN_COLUMNS`, int64) of bands of grid ``shapes`` (h, w) laid out one after the
    other, as :func:`tokenize` lays their atoms: each run starts where the previous ended, its coordinate rows
    after the previous band's."""
    rows, start, nx, ny = [], 0, 0, 0
    for b, (h, w) in enumerate(shapes):
        rows.append((start, h * w, b, nx, ny, w))
        start, nx, ny = start + h * w, nx + w, ny + h
    return torch.tensor(rows, dtype=RUN_DTYPE).reshape(len(rows), len(RUN_COLUMNS))


def _on_host(t: torch.Tensor) -> bool:
    """Rebuild compact atoms by a host loop over the runs (CPU) rather than in vectorised tensor ops."""
    return t.device.type == "cpu"


def expand_runs(runs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(band, xi, yi)`` (S, n) int32 of the atoms that ``runs`` (S, R, 6) describe (module docstring), on
    the device of ``runs``; atoms past a set's last run (padding) get 0. On CPU the runs are filled from the
    cached grids of :func:`tokenize`; elsewhere one vectorised pass (the same indices, tested)."""
    return _host_indices(runs, n) if _on_host(runs) else _expand_runs_vectorised(runs, n)


def _host_indices(runs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`expand_runs` on CPU: each run's index slices copied from the cached grids of :func:`tokenize`."""
    band, xi, yi = (np.zeros((runs.shape[0], n), np.int32) for _ in range(3))
    for s, rows in enumerate(runs.tolist()):
        for start, length, b, x0, y0, w in rows:
            if length:
                gx, gy = _grid_index(0, 0, length // w, w)
                sl = slice(start, start + length)
                band[s, sl] = b
                np.add(gx, x0, out=xi[s, sl])
                np.add(gy, y0, out=yi[s, sl])
    return torch.from_numpy(band), torch.from_numpy(xi), torch.from_numpy(yi)


def _host_values(runs: torch.Tensor, dn: torch.Tensor, mask: torch.Tensor, dn_scaling: torch.Tensor) -> torch.Tensor:
    """Physical values of a CPU batch of DN, run by run (one band's constants per run) with the arithmetic of
    :meth:`~atomizer.data.light.Raster.physical`: float32 ``(DN + offset) * scale``; masked atoms 0."""
    raw, scaling = dn.numpy(), dn_scaling.numpy()
    out = np.zeros(raw.shape, np.float32)
    for s, rows in enumerate(runs.tolist()):
        for start, length, b, *_ in rows:
            v = out[s, start : start + length]
            v[:] = raw[s, start : start + length]  # uint16 -> float32, exact
            v += scaling[b, 0]
            v *= scaling[b, 1]
    out[~mask.numpy()] = 0.0
    return torch.from_numpy(out)


def _expand_runs_vectorised(runs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`expand_runs` in one pass of tensor ops (no host loop: the device's way)."""
    r = runs.to(torch.int64)
    start, length, band, x0, y0, width = r.unbind(-1)  # (S, R) each
    pos = torch.arange(n, device=runs.device).expand(runs.shape[0], n)
    k = (torch.searchsorted(start.contiguous(), pos.contiguous(), right=True) - 1).clamp_min(0)  # run of each atom
    g = lambda t: torch.gather(t, 1, k)  # noqa: E731
    off = pos - g(start)
    inside = off < g(length)
    w = g(width).clamp_min(1)
    zero = torch.zeros((), dtype=torch.int64, device=runs.device)
    out = (g(band), g(x0) + off % w, g(y0) + off // w)
    return tuple(torch.where(inside, t, zero).to(INDEX_DTYPE) for t in out)  # type: ignore[return-value]


def band_row(attrs: dict, doy: float, year: float) -> list[float]:
    """One band-table row (:data:`BAND_TABLE_COLUMNS`) from a band's attributes and the acquisition date."""
    domain = attrs.get("domain", "optical")
    extra = extra_channel(domain, attrs.get("polarisation") or None)
    return [attrs["wavelength_nm"], attrs["bandwidth_nm"], attrs["gsd_m"], extra, doy, year]


def band_table_of(image: xr.Dataset | LightImage) -> tuple[list[str], torch.Tensor]:
    """(band names, band table (B, 6)) of an image, as :func:`tokenize` builds them (no atoms: from the bands'
    attributes only, so a lazily opened image is not read)."""
    doy, year = acquisition_date(image)
    if isinstance(image, LightImage):
        attrs = {n: r.attrs for n, r in image.bands.items()}
    else:
        attrs = {str(n): da.attrs for n, da in image.data_vars.items() if "wavelength_nm" in da.attrs}
    rows = [band_row(a, doy, year) for a in attrs.values()]
    return list(attrs), torch.tensor(rows, dtype=torch.float32)


def collate(sets: Sequence[AtomBatch], pad_to: int | None = None) -> AtomBatch:
    """Batch atom sets of different sizes (and different band tables) with a padding mask.

    Band tables and coordinate tables are concatenated; indices are shifted accordingly. Padding atoms
    have ``mask == False`` and indices 0, so they can be gathered safely and are ignored by attention.
    Compact sets (module docstring) stay compact: runs when every set has runs, DN values when every set
    has DN (a mix of DN and physical values is batched as physical values).
    """
    if not sets:
        raise EmptyTokenSetError("cannot collate an empty list of atom sets")
    as_runs = all(s.runs is not None for s in sets)
    as_dn = as_runs and all(s.dn_scaling is not None for s in sets)
    sets = [s if as_dn else s.physical() if as_runs else s.decoded() for s in sets]
    rows = [(s, i) for s in sets for i in range(s.num_sets)]
    n = max(s.value.shape[1] for s in sets)
    if pad_to is not None:
        if pad_to < n:
            raise ValueError(f"pad_to={pad_to} is smaller than the largest set ({n} atoms)")
        n = pad_to
    S = len(rows)
    value = torch.zeros(S, n, dtype=torch.uint16 if as_dn else torch.float32)
    ni = 0 if as_runs else n
    band = torch.zeros(S, ni, dtype=INDEX_DTYPE)
    xi = torch.zeros(S, ni, dtype=INDEX_DTYPE)
    yi = torch.zeros(S, ni, dtype=INDEX_DTYPE)
    mask = torch.zeros(S, n, dtype=torch.bool)
    runs = None
    if as_runs:  # padding runs: empty, after every atom of the set, width 1
        nr = max(s.runs.shape[1] for s in sets)  # type: ignore[union-attr]
        runs = torch.zeros(S, nr, len(RUN_COLUMNS), dtype=RUN_DTYPE)
        runs[:, :, RUN_COLUMNS.index("width")] = 1
    tables, cxs, cys, names, domains, scalings = [], [], [], [], [], []
    ob = ox = oy = 0
    row = 0
    shift = torch.zeros(len(RUN_COLUMNS), dtype=RUN_DTYPE)
    for s in sets:
        m = s.value.shape[1]
        if runs is not None:
            shift[2:5] = torch.tensor([ob, ox, oy], dtype=RUN_DTYPE)
        for i in range(s.num_sets):
            value[row, :m] = s.value[i]
            mask[row, :m] = s.mask[i]
            if runs is not None:
                r = s.runs[i]  # type: ignore[index]
                runs[row, : r.shape[0]] = r + shift
                runs[row, r.shape[0] :, 0] = m
            else:
                band[row, :m] = s.band[i] + ob
                xi[row, :m] = s.xi[i] + ox
                yi[row, :m] = s.yi[i] + oy
            row += 1
        tables.append(s.band_table)
        if s.dn_scaling is not None:
            scalings.append(s.dn_scaling)
        cxs.append(s.coord_x)
        cys.append(s.coord_y)
        names += s.band_names
        domains += s.band_domains
        ob += s.band_table.shape[0]
        ox += s.coord_x.shape[0]
        oy += s.coord_y.shape[0]
    scaling = torch.cat(scalings) if as_dn else None
    return AtomBatch(
        value, band, xi, yi, mask, torch.cat(tables), torch.cat(cxs), torch.cat(cys), names, domains, runs, scaling
    )


def bands_from_table(batch: AtomBatch) -> list[Band]:
    """The band table of a batch as :class:`Band` objects (names from ``band_names``)."""
    out = []
    for name, dom, row in zip(batch.band_names, batch.band_domains, batch.band_table.tolist()):
        pol = EXTRA_CHANNELS[int(row[3])] if dom == "sar" else None
        out.append(Band(name, row[0], row[1], row[2], dom, pol))
    return out


class ModalityBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields batches of indices that share a modality, so a batch needs no padding.

    Args:
        groups: Group (modality) id of every dataset item.
        batch_size: Items per batch (the last batch of a group may be smaller unless ``drop_last``).
        shuffle: Shuffle items within groups and the order of batches, reseeded by :meth:`set_epoch`.
        seed: Base seed.
        drop_last: Drop incomplete batches.
    """

    def __init__(
        self, groups: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False
    ) -> None:
        self.groups = np.asarray(groups)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        batches = []
        for g in np.unique(self.groups):
            idx = np.nonzero(self.groups == g)[0]
            if self.shuffle:
                idx = rng.permutation(idx)
            for i in range(0, len(idx), self.batch_size):
                chunk = idx[i : i + self.batch_size].tolist()
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk)
        if self.shuffle:
            order = rng.permutation(len(batches))
            batches = [batches[i] for i in order]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
