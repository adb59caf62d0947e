"""Band and sensor catalogue.

Every band the library handles is a :class:`Band`: a name, a central wavelength and a bandwidth in
nanometres, a native ground sampling distance in metres and the *domain* of the measurement. A
:class:`Sensor` is an ordered tuple of bands plus the convention that turns its stored digital numbers
(DN) into physical values: ``value = (DN + dn_offset) * dn_scale``.

Catalogued sensors live in ``atomizer/data/sensors/<name>.yaml``. Any other sensor is described by a small
YAML or JSON *sidecar* with the same schema and is usable everywhere a catalogued one is::

    name: my_camera
    dn_scale: 0.0001          # optional, default 1e-4 (reflectance x 10000)
    dn_offset: 0              # optional
    nodata: 0                 # optional
    bands:
      - {name: blue,  wavelength_nm: 490, bandwidth_nm: 60, gsd_m: 3}
      - {name: nir,   wavelength_nm: 860, bandwidth_nm: 40, gsd_m: 3}

Hyperspectral sensors may list ``generate:`` segments instead of (or as well as) explicit bands, each
``{prefix, start_nm, stop_nm, count, fwhm_nm, gsd_m}``; bands are spaced evenly from start to stop.

SAR convention. Radar bands have no optical wavelength. They are catalogued with ``domain: sar``,
``wavelength_nm`` set to the radar's carrier wavelength (Sentinel-1 C-band, 5.405 GHz: 55.46 mm =
5.546e7 nm), ``bandwidth_nm: 0`` and a ``polarisation`` (VV, VH, HH or HV). The spectral encoding
does not put them on the optical RBF axis: it gives them a one-hot code in extra polarisation channels
(see :mod:`atomizer.atoms.encodings`), so optical and radar atoms can share one set without colliding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import yaml

from atomizer.core.config import Config, ConfigError
from atomizer.core.paths import sensors_dir

DOMAINS = ("optical", "thermal", "sar")
#: Plausible centre wavelengths per domain (nm): reflective optical (VNIR to SWIR) and thermal infrared.
#: The Atomizer's spectral anchors cover the optical range (``EncodingConfig.anchors``, 380-2220 nm by
#: default); a thermal band gets its own channel, not an anchor code.
PLAUSIBLE_NM = {"optical": (300.0, 2600.0), "thermal": (3000.0, 15000.0)}
POLARISATIONS = ("VV", "VH", "HH", "HV")


class SensorSpecError(ValueError):
    """A sensor or band description is invalid; the message names the offending band."""


@dataclass(frozen=True)
class Band(Config):
    """One spectral (or radar) band: the one declaration of a band's fields, built in code (``Band(...)``) or
    read from a sidecar's ``bands`` entry through the config base (:meth:`Band.from_dict`: types checked and
    coerced, unknown keys refused; the checks below run either way).

    Attributes:
        name: Band name as the sensor calls it (``"B8A"``, ``"SR_B5"``, ``"VV"``).
        wavelength_nm: Central wavelength in nm (radar: carrier wavelength).
        bandwidth_nm: Full width of the band in nm (FWHM where published; radar: 0).
        gsd_m: Native ground sampling distance in metres.
        domain: ``"optical"`` (reflective, 350-2500 nm), ``"thermal"`` or ``"sar"``.
        polarisation: Radar polarisation (``"VV"``...) for SAR bands, else ``None``.
        source: Where the values come from.
        dn_scale: This band's DN multiplier, where it differs from the sensor's (e.g. a thermal band in
            kelvin beside reflective bands); ``None``: the sensor's.
        dn_offset: This band's DN offset; ``None``: the sensor's.
        nodata: This band's fill DN; ``None``: the sensor's (NaN: no fill value).
    """

    kind: ClassVar[str] = "band"

    name: str
    wavelength_nm: float
    bandwidth_nm: float
    gsd_m: float
    domain: str = "optical"
    polarisation: str | None = None
    source: str = ""
    dn_scale: float | None = None
    dn_offset: float | None = None
    nodata: float | None = None

    def __post_init__(self) -> None:
        who = f"band {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise SensorSpecError(f"band name must be a non-empty string, got {self.name!r}")
        for attr in ("wavelength_nm", "bandwidth_nm", "gsd_m"):
            value = getattr(self, attr)
            if value is None:
                raise SensorSpecError(f"{who}: missing {attr}")
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise SensorSpecError(f"{who}: {attr} must be a number, got {value!r}") from None
            if not math.isfinite(value):
                raise SensorSpecError(f"{who}: {attr} is not finite ({value})")
            object.__setattr__(self, attr, value)
        if self.domain not in DOMAINS:
            raise SensorSpecError(f"{who}: domain must be one of {DOMAINS}, got {self.domain!r}")
        if self.wavelength_nm <= 0:
            raise SensorSpecError(f"{who}: wavelength_nm must be positive, got {self.wavelength_nm}")
        lo, hi = PLAUSIBLE_NM.get(self.domain, (0.0, math.inf))
        if not lo <= self.wavelength_nm <= hi:
            w = self.wavelength_nm
            hint = ""
            if w * 1000 >= lo and w * 1000 <= hi:
                hint = f" (it looks like micrometres: {w:g} um = {w * 1000:g} nm)"
            elif self.domain == "optical" and PLAUSIBLE_NM["thermal"][0] <= w <= PLAUSIBLE_NM["thermal"][1]:
                hint = " (a thermal-infrared band: declare it with domain: thermal)"
            raise SensorSpecError(
                f"{who}: wavelength_nm {w:g} cannot be a {self.domain} band's centre: {self.domain} "
                f"bands lie within {lo:g}-{hi:g} nm{hint}"
            )
        if self.gsd_m <= 0:
            raise SensorSpecError(f"{who}: gsd_m must be positive, got {self.gsd_m}")
        for attr in ("dn_scale", "dn_offset", "nodata"):
            value = getattr(self, attr)
            if value is None:
                continue
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise SensorSpecError(f"{who}: {attr} must be a number, got {value!r}") from None
            if attr != "nodata" and not math.isfinite(value):
                raise SensorSpecError(f"{who}: {attr} is not finite ({value})")
            object.__setattr__(self, attr, value)
        if self.dn_scale is not None and self.dn_scale == 0:
            raise SensorSpecError(f"{who}: dn_scale must not be 0")
        if self.domain == "sar":
            if self.polarisation not in POLARISATIONS:
                raise SensorSpecError(
                    f"{who}: SAR bands need a polarisation in {POLARISATIONS}, got {self.polarisation!r}"
                )
            if self.bandwidth_nm < 0:
                raise SensorSpecError(f"{who}: bandwidth_nm must not be negative")
        elif self.bandwidth_nm <= 0:
            raise SensorSpecError(
                f"{who}: bandwidth_nm must be positive for a {self.domain} band, got {self.bandwidth_nm}"
            )

    @property
    def interval_nm(self) -> tuple[float, float]:
        """The band's support ``[centre - width/2, centre + width/2]``."""
        return (self.wavelength_nm - self.bandwidth_nm / 2, self.wavelength_nm + self.bandwidth_nm / 2)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("polarisation", "dn_scale", "dn_offset", "nodata"):
            if d[key] is None:
                d.pop(key)
        return d


@dataclass(frozen=True)
class SidecarSpec(Config):
    """The top level of a sensor sidecar (YAML/JSON): anything else is refused by name."""

    kind: ClassVar[str] = "sidecar"

    name: str | None = None
    bands: list[dict[str, Any]] = field(default_factory=list)  # each read as a Band (source: default the sidecar's)
    generate: list[dict[str, Any]] = field(default_factory=list)
    dn_scale: float = 1e-4
    dn_offset: float = 0.0
    nodata: float | None = 0.0
    description: str = ""
    source: str = ""
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Sensor:
    """An ordered set of bands and the DN-to-physical-value convention of a sensor.

    Attributes:
        name: Sensor identifier (``"sentinel2"``).
        bands: Bands in the sensor's canonical order.
        dn_scale: Multiplier from stored DN to physical value (reflectance for optical bands).
        dn_offset: Added to DN before scaling (Sentinel-2 baseline N0400+: -1000).
        nodata: DN that marks a missing pixel, or ``None``.
        description: Free text.
        source: Where the table comes from.
    """

    name: str
    bands: tuple[Band, ...]
    dn_scale: float = 1e-4
    dn_offset: float = 0.0
    nodata: float | None = 0
    description: str = ""
    source: str = ""
    aliases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bands:
            raise SensorSpecError(f"sensor {self.name!r} has no bands")
        seen: set[str] = set()
        for b in self.bands:
            if b.name in seen:
                raise SensorSpecError(f"sensor {self.name!r}: band {b.name!r} is listed twice")
            seen.add(b.name)

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    def band(self, name: str) -> Band:
        """The band called ``name`` (or one of its aliases)."""
        name = self.aliases.get(name, name)
        for b in self.bands:
            if b.name == name:
                return b
        raise KeyError(f"sensor {self.name!r} has no band {name!r}; it has {self.band_names}")

    def find_band(self, name: str) -> Band | None:
        """The band a file or channel called ``name`` holds: a band name or alias of this sensor, exactly, else
        ignoring case where that names one band only (``vv`` -> ``VV``); ``None`` when it names none.
        ``B08`` never stands for ``B8A``: names are compared whole."""
        key = self.aliases.get(name, name)
        for b in self.bands:
            if b.name == key:
                return b
        folded = {b.name for n, b in self._names_folded() if n == name.casefold()}
        return self.band(folded.pop()) if len(folded) == 1 else None

    def _names_folded(self) -> list[tuple[str, Band]]:
        """``(casefolded name or alias, band)`` for every name and alias of the sensor."""
        out = [(b.name.casefold(), b) for b in self.bands]
        for alias, target in self.aliases.items():
            if any(b.name == target for b in self.bands):
                out.append((alias.casefold(), self.band(target)))
        return out

    @property
    def names_and_aliases(self) -> list[str]:
        """Every name a band of this sensor goes by: band names, then aliases."""
        return [*self.band_names, *(a for a in self.aliases if a not in self.band_names)]

    def calibration(self, band: str | Band) -> tuple[float, float, float | None]:
        """``(dn_scale, dn_offset, nodata)`` of a band: its own where it has them, else the sensor's."""
        b = band if isinstance(band, Band) else self.band(band)
        scale = self.dn_scale if b.dn_scale is None else b.dn_scale
        offset = self.dn_offset if b.dn_offset is None else b.dn_offset
        nodata = self.nodata if b.nodata is None else (None if math.isnan(b.nodata) else b.nodata)
        return float(scale), float(offset), nodata

    def select(self, names: Iterable[str]) -> "Sensor":
        """A sensor restricted to ``names``, in that order."""
        return replace(self, bands=tuple(self.band(n) for n in names))

    def check_channels(self, n_channels: int, what: str = "image") -> None:
        """Raise if an image with ``n_channels`` channels cannot be described by this sensor's bands."""
        if n_channels != len(self.bands):
            raise SensorSpecError(
                f"{what} has {n_channels} channels but sensor {self.name!r} describes "
                f"{len(self.bands)} bands ({', '.join(self.band_names)})"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dn_scale": self.dn_scale,
            "dn_offset": self.dn_offset,
            "nodata": self.nodata,
            "description": self.description,
            "source": self.source,
            "bands": [b.to_dict() for b in self.bands],
        }

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], default_name: str = "custom") -> "Sensor":
        """Build and validate a sensor from a parsed sidecar."""
        if not isinstance(spec, Mapping):
            raise SensorSpecError(f"sensor spec must be a mapping, got {type(spec).__name__}")
        name = str(spec.get("name", default_name))
        try:  # types and unknown keys (a typo such as 'dn_scal' must not fall back to the default scale)
            side = SidecarSpec.from_dict(spec)
        except ConfigError as e:
            raise SensorSpecError(f"sensor {name!r}: {e}") from None
        bands: list[Band] = []
        for i, raw in enumerate(side.bands):
            if not isinstance(raw, Mapping):
                raise SensorSpecError(f"sensor {name!r}: band #{i} must be a mapping, got {raw!r}")
            bname = raw.get("name", f"#{i}")
            entry = {**raw, "source": raw["source"] if raw.get("source") is not None else side.source}
            try:
                bands.append(Band.from_dict(entry))
            except ConfigError as e:  # a wrong type or key (the config base's message), or one of Band's checks
                typed = str(e).startswith(("band config", "unknown band option"))  # Band's own messages name it
                where = f"sensor {name!r}, band {bname!r}" if typed else f"sensor {name!r}"
                raise SensorSpecError(f"{where}: {e}") from None
        for seg in side.generate:
            bands.extend(_generate_bands(name, seg, side.source))
        if not bands:
            raise SensorSpecError(f"sensor {name!r}: no bands (give 'bands' or 'generate')")
        return cls(
            name=name,
            bands=tuple(bands),
            dn_scale=side.dn_scale,
            dn_offset=side.dn_offset,
            nodata=side.nodata,
            description=side.description,
            source=side.source,
            aliases=dict(side.aliases),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "Sensor":
        """Read a YAML or JSON sidecar."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sensor sidecar not found: {path}")
        text = path.read_text()
        try:
            spec = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except json.JSONDecodeError as e:  # the position only: the file's text is never echoed (it may hold secrets)
            raise SensorSpecError(f"cannot parse sensor sidecar {path}: not valid JSON at line {e.lineno}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise SensorSpecError(f"cannot parse sensor sidecar {path}: not valid YAML{where}") from None
        return cls.from_dict(spec, default_name=path.stem)


def _generate_bands(sensor: str, seg: Mapping[str, Any], source: str) -> list[Band]:
    try:
        start, stop = float(seg["start_nm"]), float(seg["stop_nm"])
        count, fwhm, gsd = int(seg["count"]), float(seg["fwhm_nm"]), float(seg["gsd_m"])
    except KeyError as e:
        raise SensorSpecError(f"sensor {sensor!r}: generate segment {dict(seg)} lacks {e}") from None
    if count < 1 or stop < start:
        raise SensorSpecError(f"sensor {sensor!r}: bad generate segment {dict(seg)}")
    prefix = str(seg.get("prefix", "b"))
    first = int(seg.get("first_index", 1))
    step = (stop - start) / (count - 1) if count > 1 else 0.0
    return [
        Band(
            f"{prefix}{first + i:03d}",
            round(start + i * step, 3),
            fwhm,
            gsd,
            domain=seg.get("domain", "optical"),
            source=seg.get("source", source),
        )
        for i in range(count)
    ]


def list_sensors() -> list[str]:
    """Names of the catalogued sensors."""
    return list(_catalogue_names())


@cache
def _catalogue_names() -> tuple[str, ...]:  # the package's tables do not change while it runs
    return tuple(sorted(p.stem for p in sensors_dir().glob("*.yaml")))


@cache
def _load_catalogued(name: str) -> Sensor:
    return Sensor.from_file(sensors_dir() / f"{name}.yaml")


def get_sensor(name_or_path: str | Path | Sensor) -> Sensor:
    """A catalogued sensor by name, or a sidecar file by path.

    Raises:
        KeyError: ``name_or_path`` is neither a catalogued sensor nor an existing file.
    """
    if isinstance(name_or_path, Sensor):
        return name_or_path
    text = str(name_or_path)
    if text in list_sensors():
        return _load_catalogued(text)
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        return Sensor.from_file(path)
    raise KeyError(
        f"unknown sensor {text!r}; catalogued sensors: {', '.join(list_sensors())} (or pass a .yaml/.json sidecar)"
    )


def is_catalogued(sensor: Sensor) -> bool:
    """True when ``sensor`` is a catalogued sensor as the catalogue describes it (not a sidecar, even one that
    takes a catalogued sensor's name)."""
    return sensor.name in list_sensors() and sensor == _load_catalogued(sensor.name)


def sensors_naming(names: Iterable[str]) -> list[str]:
    """The catalogued sensors that have a band (by name or alias, see :meth:`Sensor.find_band`) for every one of
    ``names``, e.g. a file's band descriptions ``B01 ... B8A, B09, B11, B12`` -> ``["sentinel2"]``."""
    names = list(names)
    return [s for s in list_sensors() if all(_load_catalogued(s).find_band(n) is not None for n in names)]


def catalogue_table(names: Sequence[str] | None = None) -> "Any":
    """The catalogue as a pandas DataFrame, one row per (sensor, band)."""
    import pandas as pd

    rows = []
    for sname in names or list_sensors():
        s = get_sensor(sname)
        for b in s.bands:
            rows.append(
                {
                    "sensor": s.name,
                    "band": b.name,
                    "wavelength_nm": b.wavelength_nm,
                    "bandwidth_nm": b.bandwidth_nm,
                    "gsd_m": b.gsd_m,
                    "domain": b.domain,
                    "source": b.source,
                }
            )
    return pd.DataFrame(rows)
