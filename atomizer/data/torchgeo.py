"""TorchGeo datasets read as datasets of the toolkit (the optional extra: ``pip install atomizer[torchgeo]``).

A TorchGeo ``NonGeoDataset`` yields samples ``{"image": C x H x W tensor, "label" | "mask": tensor}`` and
knows its band names (``bands``, or ``all_band_names``) but not what the bands are. :class:`TorchGeoDataset`
adds the sensor (a catalogued name or a sidecar: wavelengths, bandwidths, the DN convention) and the ground
sampling distance, and serves the samples through the one dataset protocol
(:class:`atomizer.data.base.ImageDataset`): ``load(r)`` is the image model of :mod:`atomizer.data.image`,
so training, evaluation and modality simulation read a TorchGeo dataset as they read EuroSAT.

:func:`open_torchgeo` opens one by name, ``dataset: torchgeo:EuroSAT`` in a config: the class of
``torchgeo.datasets`` read from ``data_root`` (never downloaded), its ``val`` split being our
``validation``.

Channels are matched to the sensor's bands by name, never by position (TorchGeo's EuroSAT lists ``B8A``
last, as its files store it; ``B08A`` or ``B1`` name the same bands as ``B8A`` and ``B01``). Values are
the dataset's stored digital numbers, scaled by the sensor's ``dn_scale``/``dn_offset``: give the dataset no
normalising transform (or describe the normalised values with a sidecar).

TorchGeo is imported only when a TorchGeo dataset is opened (:func:`require_torchgeo`), so ``import
atomizer`` never needs it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import xarray as xr

from atomizer.data.bands import Sensor, get_sensor
from atomizer.data.base import ImageDataset
from atomizer.data.image import band_attrs, build_image, grid_dims
from atomizer.data.light import LightImage, Raster

INSTALL_HINT = "pip install atomizer[torchgeo]"

#: TorchGeo datasets :func:`open_torchgeo` knows the sensor of: class name -> (sensor, GSD of every band in m).
#: EuroSAT's authors resampled all 13 bands to the 10 m grid.
KNOWN_DATASETS: dict[str, tuple[str, float]] = {
    "EuroSAT": ("sentinel2", 10.0),
    "EuroSATSpatial": ("sentinel2", 10.0),
    "EuroSAT100": ("sentinel2", 10.0),
}

#: Our split names -> TorchGeo's candidates, in order of preference.
SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("val", "validation"),
    "val": ("val", "validation"),
    "test": ("test",),
}


class TorchGeoMissingError(ImportError, ValueError):
    """TorchGeo is not installed; the message is the one-line install hint (a ValueError too, so the CLI
    prints it as one line)."""


class TorchGeoBridgeError(ValueError):
    """A TorchGeo dataset, its name or one of its samples cannot be read; the message names what is wrong."""


def require_torchgeo() -> ModuleType:
    """The ``torchgeo.datasets`` module, or a :class:`TorchGeoMissingError` with the install hint."""
    try:
        import torchgeo.datasets
    except ImportError:
        raise TorchGeoMissingError(f"TorchGeo is not installed: {INSTALL_HINT}") from None
    return torchgeo.datasets


# --------------------------------------------------------------------------------------------------
# Bands, grids, images
# --------------------------------------------------------------------------------------------------

_S2_STYLE = re.compile(r"^B0*(\d{1,2})(A?)$", re.IGNORECASE)


def match_bands(names: Sequence[str], sensor: str | Path | Sensor) -> list[str]:
    """The sensor's band name for each of ``names``, matched by name (``B08A`` and ``B8A``, ``B1`` and ``B01``
    are the same band), never by position.

    Raises:
        TorchGeoBridgeError: a name the sensor has no band for, or two names for one band.
    """
    s = get_sensor(sensor)
    have = set(s.band_names) | set(s.aliases)
    out: list[str] = []
    for name in names:
        text = str(name)
        found = text if text in have else None
        if found is None and (m := _S2_STYLE.match(text)):
            number, a = int(m.group(1)), m.group(2).upper()
            found = next((c for c in (f"B{number:02d}{a}", f"B{number}{a}") if c in have), None)
        if found is None:
            raise TorchGeoBridgeError(f"band {text!r} is not a band of sensor {s.name!r} ({', '.join(s.band_names)})")
        out.append(s.band(found).name)
    if len(set(out)) != len(out):
        twice = sorted({b for b in out if out.count(b) > 1})
        raise TorchGeoBridgeError(f"band names {list(names)} name sensor {s.name!r}'s band(s) {twice} twice")
    return out


def band_gsds(
    bands: Sequence[str], sensor: str | Path | Sensor, gsd: float | Mapping[str, float] | None
) -> dict[str, float]:
    """Pixel size (m) of each band's stored grid: ``gsd`` (one for all bands, or per band) or the band's native
    GSD in the sensor's table."""
    s = get_sensor(sensor)
    out = {}
    for b in bands:
        g = gsd.get(b) if isinstance(gsd, Mapping) else gsd
        g = s.band(b).gsd_m if g is None else float(g)
        if not g > 0:
            raise TorchGeoBridgeError(f"band {b!r}: GSD must be a positive number of metres, got {g!r}")
        out[b] = g
    return out


def stored_values(image: Any) -> np.ndarray:
    """A sample's C x H x W image as numpy: TorchGeo hands DN over as float32; where every value is a whole
    number in 0..65535 they are kept as uint16 (lossless: the integers the file stored), else as given."""
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.dtype.kind == "f" and a.size and np.isfinite(a).all():
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 65535 and np.array_equal(a, np.floor(a)):
            return a.astype(np.uint16)
    return a


def check_image(array: np.ndarray, bands: Sequence[str], what: str) -> None:
    """Refuse an image that is not C x H x W with one channel per band."""
    if array.ndim != 3:
        raise TorchGeoBridgeError(f"{what}: image must be C x H x W, got shape {tuple(array.shape)}")
    if array.shape[0] != len(bands):
        raise TorchGeoBridgeError(
            f"{what}: image has {array.shape[0]} channels but {len(bands)} band names ({', '.join(bands)})"
        )
    if 0 in array.shape:
        raise TorchGeoBridgeError(f"{what}: image is empty (shape {tuple(array.shape)})")


def tensor_image(
    array: np.ndarray, bands: Sequence[str], sensor: Sensor, gsds: Mapping[str, float], attrs: Mapping[str, Any]
) -> xr.Dataset:
    """The image model (:func:`atomizer.data.image.build_image`) of a C x H x W array whose channels are
    ``bands``, every grid's top-left corner at (0, 0)."""
    return build_image({b: array[i] for i, b in enumerate(bands)}, sensor, gsd=gsds, attrs=dict(attrs))


def tensor_light(
    array: np.ndarray, bands: Sequence[str], sensor: Sensor, gsds: Mapping[str, float], attrs: Mapping[str, Any]
) -> LightImage:
    """:func:`tensor_image` as a :class:`~atomizer.data.light.LightImage`, without xarray (the same bands,
    grids, coordinates and attributes; tested equal)."""
    h, w = array.shape[1:]
    rasters = {}
    extents = set()
    for i, b in enumerate(bands):
        g = float(gsds[b])
        band = sensor.band(b)
        xs = (np.arange(w) + 0.5) * g
        ys = 0.0 - (np.arange(h) + 0.5) * g
        rasters[band.name] = Raster(array[i], xs, ys, grid_dims(g), band_attrs(band, sensor, gsd_m=g))
        extents.add((round(h * g, 3), round(w * g, 3)))
    out = {"sensor": sensor.name, **attrs}
    if len(extents) > 1:
        out["extent_warning"] = f"bands cover different ground extents (m): {sorted(extents)}"
    return LightImage(rasters, out)


# --------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------


def _dataset_bands(dataset: Any) -> list[str] | None:
    for attr in ("bands", "all_band_names"):
        names = getattr(dataset, attr, None)
        if (
            isinstance(names, Sequence)
            and not isinstance(names, str)
            and names
            and all(isinstance(n, str) for n in names)
        ):
            return list(names)
    return None


def _scalar_label(label: Any) -> int | None:
    t = torch.as_tensor(label)
    return int(t.item()) if t.numel() == 1 and t.ndim <= 1 and not t.is_floating_point() else None


class TorchGeoDataset(ImageDataset):
    """A TorchGeo dataset (any map-style dataset of TorchGeo samples) through our dataset protocol.

    Each sample ``{"image": C x H x W, "label" | "mask"}`` becomes an item ``{"image": the image model,
    "target", "id"}``: a class index (a scalar ``label``), a multi-hot (a ``label`` vector over the classes:
    :attr:`multilabel`), or the mask itself (H x W class indices; :attr:`task` is ``"segmentation"``).

    Args:
        dataset: The TorchGeo dataset, or split name -> dataset (the records then carry their ``split``).
        sensor: Catalogued sensor name or sidecar path (or a :class:`~atomizer.data.bands.Sensor`) that
            describes the bands.
        bands: The channels' band names, in channel order; default: the dataset's ``bands`` (or
            ``all_band_names``).
        gsd: Pixel size in metres of the stored grids, one for all bands or per band; default: each band's
            native GSD in the sensor's table.
        classes: Class names; default: the dataset's ``classes``.
        name: The dataset's name in the images' ``source`` attribute and the errors.

    Labels come from the dataset's ``targets`` list where it has one (TorchGeo's folder datasets), else from
    reading each sample once here; masks are read with their sample.

    Raises:
        TorchGeoBridgeError: no band names, a band the sensor lacks, a sample that is not a TorchGeo sample.
    """

    def __init__(
        self,
        dataset: Any,
        sensor: str | Path | Sensor,
        bands: Sequence[str] | None = None,
        gsd: float | Mapping[str, float] | None = None,
        classes: Sequence[str] | None = None,
        name: str = "torchgeo",
    ):
        super().__init__()
        self.name = name
        self.parts: dict[str | None, Any] = (
            {str(k): v for k, v in dataset.items()} if isinstance(dataset, Mapping) else {None: dataset}
        )
        if not self.parts:
            raise TorchGeoBridgeError(f"{name}: no dataset given")
        first_part = next(iter(self.parts.values()))
        self.sensor = get_sensor(sensor)
        names = list(bands) if bands is not None else _dataset_bands(first_part)
        if not names:
            raise TorchGeoBridgeError(f"{name}: the dataset names no bands (no 'bands' attribute): give bands=[...]")
        #: The sensor's names of the channels, in channel order.
        self.bands = match_bands(names, self.sensor)
        self.gsds = band_gsds(self.bands, self.sensor, gsd)
        self._last: tuple[tuple[str | None, int], dict] | None = None

        key = next(((k, 0) for k, p in self.parts.items() if len(p) > 0), None)
        if key is None:
            raise TorchGeoBridgeError(f"{name}: the dataset has no samples")
        probe = self.sample(key)
        if "mask" in probe:
            self.task, self.multilabel = "segmentation", False
        elif "label" in probe:
            self.task = "classification"
            hot = torch.as_tensor(probe["label"])
            self.multilabel = _scalar_label(hot) is None
            if self.multilabel and not (hot.ndim == 1 and hot.numel() > 1 and bool(((hot == 0) | (hot == 1)).all())):
                raise TorchGeoBridgeError(
                    f"{name}: sample 0's label (shape {tuple(hot.shape)}, {hot.dtype}) is neither a class index "
                    "nor a multi-hot over the classes"
                )
        else:
            raise TorchGeoBridgeError(f"{name}: sample 0 has neither 'label' nor 'mask' (keys {sorted(probe)})")
        listed = classes if classes is not None else getattr(first_part, "classes", None)
        self.classes = [str(c) for c in listed] if listed is not None else []
        if not self.classes and self.multilabel:  # a multi-hot's length is the number of classes
            self.classes = [str(j) for j in range(torch.as_tensor(probe["label"]).numel())]
        self._build_records()
        if not self.classes:
            if self.task == "segmentation":
                raise TorchGeoBridgeError(f"{name}: the dataset lists no classes: give classes=[...]")
            self.classes = [str(i) for i in range(1 + max((r["label_idx"] for r in self.records), default=0))]
            for r in self.records:
                r["labels"] = [self.classes[r["label_idx"]]]

    # ---- records

    def _labels_of(self, part: Any, split: str | None) -> list[Any]:
        targets = getattr(part, "targets", None)
        if self.task == "classification" and not self.multilabel and isinstance(targets, Sequence):
            if len(targets) == len(part):
                return [int(t) for t in targets]
        if self.task == "segmentation":
            return [None] * len(part)
        return [self.sample((split, i))["label"] for i in range(len(part))]

    def _build_records(self) -> None:
        ids: list[str] = []
        for split, part in self.parts.items():
            samples = getattr(part, "samples", None)
            stems = (
                [Path(str(s[0])).stem for s in samples]
                if isinstance(samples, Sequence) and len(samples) == len(part)
                else None
            )
            for i, label in enumerate(self._labels_of(part, split)):
                r: dict[str, Any] = {"part": split, "index": i}
                if split is not None:
                    r["split"] = split
                if self.task == "segmentation":
                    r["labels"] = []
                elif self.multilabel:
                    hot = torch.as_tensor(label).reshape(-1)
                    if hot.numel() != len(self.classes):
                        raise TorchGeoBridgeError(
                            f"{self.name}: sample {i} has a {hot.numel()}-long label for {len(self.classes)} classes"
                        )
                    r["labels"] = [self.classes[j] for j in hot.nonzero().flatten().tolist()]
                else:
                    idx = _scalar_label(label)
                    if idx is None:
                        raise TorchGeoBridgeError(f"{self.name}: sample {i}'s label is not one class index")
                    if self.classes and not 0 <= idx < len(self.classes):
                        raise TorchGeoBridgeError(
                            f"{self.name}: sample {i}'s label {idx} is outside its {len(self.classes)} classes"
                        )
                    r["label_idx"] = idx
                    r["labels"] = [self.classes[idx]] if self.classes else []
                self.records.append(r)
                ids.append(stems[i] if stems is not None else (f"{split}-{i}" if split is not None else str(i)))
        if len(set(ids)) != len(ids):  # file names repeat across splits: number the samples instead
            ids = [f"{r['part']}-{r['index']}" if r["part"] is not None else str(r["index"]) for r in self.records]
        for r, sid in zip(self.records, ids):
            r["id"] = sid

    # ---- samples

    def sample(self, key: tuple[str | None, int]) -> dict:
        """The TorchGeo sample ``index`` of part ``split`` (the last one read is kept: an item's image and mask
        come from one read)."""
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        split, index = key
        s = self.parts[split][index]
        if not isinstance(s, Mapping) or "image" not in s:
            raise TorchGeoBridgeError(f"{self.name}: sample {index} is not a TorchGeo sample (a dict with 'image')")
        self._last = (key, dict(s))
        return self._last[1]

    def _array(self, r: dict) -> np.ndarray:
        a = stored_values(self.sample((r["part"], r["index"]))["image"])
        check_image(a, self.bands, f"{self.name} sample {r['id']}")
        return a

    def _attrs(self, r: dict) -> dict[str, Any]:
        return {"source": f"{self.name}:{r['id']}"}

    def load(self, r: dict) -> xr.Dataset:
        """The record's image (:mod:`atomizer.data.image`): the sample's channels as the sensor's bands."""
        return tensor_image(self._array(r), self.bands, self.sensor, self.gsds, self._attrs(r))

    def load_light(self, r: dict) -> LightImage:
        return tensor_light(self._array(r), self.bands, self.sensor, self.gsds, self._attrs(r))

    def target(self, r: dict) -> torch.Tensor:
        """A class index, a multi-hot over :attr:`classes`, or the sample's mask (H x W, int64)."""
        if self.task == "segmentation":
            mask = torch.as_tensor(self.sample((r["part"], r["index"]))["mask"])
            return mask.reshape(mask.shape[-2:]).long()
        return super().target(r)


# --------------------------------------------------------------------------------------------------
# By name: ``dataset: torchgeo:EuroSAT``
# --------------------------------------------------------------------------------------------------


def _split_for(cls: type, split: str) -> str:
    """TorchGeo's name of our ``split`` for dataset class ``cls`` (``validation`` is TorchGeo's ``val``)."""
    offered = getattr(cls, "splits", None)
    candidates = SPLIT_NAMES.get(split, (split,))
    if isinstance(offered, (Sequence, Mapping)) and not isinstance(offered, str):
        for c in candidates:
            if c in offered:
                return c
        raise TorchGeoBridgeError(f"torchgeo:{cls.__name__} has no split {split!r}; it has {list(offered)}")
    return candidates[0]


def _ours(split: str) -> str:
    return "validation" if split == "val" else split


def _construct(cls: type, root: Path, split: str | None) -> Any:
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {"root": str(root)}
    if "download" in params:
        kwargs["download"] = False  # the bridge never reaches out: the data is where root says
    if "checksum" in params:
        kwargs["checksum"] = False
    if split is not None:
        if "split" not in params:
            raise TorchGeoBridgeError(f"torchgeo:{cls.__name__} has no splits; use split: null")
        kwargs["split"] = split
    try:
        return cls(**kwargs)
    except FileNotFoundError:
        what = f"{split!r} split" if split is not None else "dataset"
        raise TorchGeoBridgeError(
            f"torchgeo:{cls.__name__}: no {what} under {root} "
            "(the bridge never downloads: lay the dataset out there as TorchGeo expects)"
        ) from None
    except (AssertionError, ValueError, OSError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TorchGeoBridgeError(f"torchgeo:{cls.__name__} under {root}: {first}") from None


def open_torchgeo(spec: str, split: str | None = None, root: str | Path | None = None) -> TorchGeoDataset:
    """The TorchGeo dataset ``spec`` (``"torchgeo:EuroSAT"``: a class of ``torchgeo.datasets``) read from
    ``root`` and served through our dataset protocol.

    Args:
        spec: ``torchgeo:<class name>``; the classes of :data:`KNOWN_DATASETS` (their sensor and GSD known).
            Any other TorchGeo dataset: wrap an instance in :class:`TorchGeoDataset` with its sensor.
        split: ``train``, ``validation`` (TorchGeo's ``val``) or ``test``; None: every split of the class,
            each record carrying its ``split``.
        root: The folder TorchGeo reads the dataset from (``data_root`` in a config). Nothing is downloaded.

    Raises:
        TorchGeoMissingError: TorchGeo is not installed (the message says ``pip install atomizer[torchgeo]``).
        TorchGeoBridgeError: a malformed spec, an unknown class, no root, no dataset under root.
    """
    prefix, _, cls_name = str(spec).partition(":")
    if prefix != "torchgeo" or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", cls_name):
        raise TorchGeoBridgeError(f"dataset {spec!r}: expected 'torchgeo:<dataset class>', e.g. 'torchgeo:EuroSAT'")
    datasets = require_torchgeo()
    cls = getattr(datasets, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, datasets.NonGeoDataset)):
        raise TorchGeoBridgeError(f"dataset {spec!r}: torchgeo.datasets has no NonGeoDataset class {cls_name!r}")
    if cls_name not in KNOWN_DATASETS:
        raise TorchGeoBridgeError(
            f"dataset {spec!r}: its sensor is not known here ({', '.join(KNOWN_DATASETS)} are); "
            "wrap an instance in atomizer.data.torchgeo.TorchGeoDataset(ds, sensor=..., gsd=...)"
        )
    if root is None:
        raise TorchGeoBridgeError(f"dataset {spec!r} needs data_root: the folder TorchGeo reads it from")
    root = Path(root)
    sensor, gsd = KNOWN_DATASETS[cls_name]
    if split is not None:
        parts: Any = _construct(cls, root, _split_for(cls, split))
    else:
        offered = getattr(cls, "splits", None)
        names = list(offered) if isinstance(offered, (Sequence, Mapping)) and not isinstance(offered, str) else []
        parts = {_ours(s): _construct(cls, root, s) for s in names} if names else _construct(cls, root, None)
    return TorchGeoDataset(parts, sensor, gsd=gsd, name=f"torchgeo:{cls_name}")
