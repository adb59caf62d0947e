"""The one config base: every config of the library is a dataclass deriving from :class:`Config`.

* ``from_dict`` / ``from_yaml`` / ``to_dict`` (YAML- and JSON-friendly: tuples become lists);
* unknown keys are refused by name (also inside nested configs);
* every field's type is validated by pydantic (lax mode), coerced where unambiguous (the YAML string
  ``"1e-3"`` becomes the float 0.001, ``"8"`` the int 8), else refused with one line that names the field,
  the value and the expected type: :class:`ConfigError` (a ``ValueError``; the CLI prints it without a
  traceback);
* ``__post_init__`` checks (ranges, choices) run after the types are validated, and their errors read the
  same way.

Configs built in code (``MyConfig(...)``, ``dataclasses.replace``) are not re-validated; everything read
from a file, a checkpoint or the command line goes through :meth:`Config.from_dict`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pydantic
import yaml

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config value of the wrong type, an unknown key, or a value its config refuses."""


@cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(cls)


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively (what YAML and JSON write)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _expected(cls: type, loc: tuple) -> str:
    """The declared type of the field at ``loc`` (through nested configs), e.g. ``int`` or ``str | None``."""
    t: Any = cls
    for key in loc:
        if not (isinstance(t, type) and dataclasses.is_dataclass(t)):
            break
        hints = typing.get_type_hints(t)
        if key not in hints:
            break
        t = hints[key]
    return t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")


def _one_line(cls: type, err: pydantic.ValidationError) -> str:
    e = err.errors(include_url=False)[0]
    loc = tuple(str(p) for p in e["loc"])
    msg = str(e["msg"]).removeprefix("Value error, ")
    kind = getattr(cls, "kind", cls.__name__)
    if not loc:  # a __post_init__ check: its message is written to stand alone
        return msg
    field = ".".join(loc)
    if e["type"] == "missing":
        return f"{kind} config: missing option {field!r}"
    if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"{kind} config: unknown option {field!r}"
    return (
        f"{kind} config: {field} = {e.get('input')!r} is not valid: {msg} (expected {_expected(cls, tuple(e['loc']))})"
    )


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two config dicts (``a``: the stored one, ``b``: the model's)."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: checkpoint has {va!r}, model has {vb!r}")
    return out


class Config:
    """Base of every config dataclass (see the module docstring). ``kind`` names it in errors."""

    kind: ClassVar[str] = "config"
    __pydantic_config__: ClassVar[pydantic.ConfigDict] = pydantic.ConfigDict(extra="forbid")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        """Validate and build; raises :class:`ConfigError` (one line) on any bad key or value."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{cls.kind} config must be a mapping of options, got {type(d).__name__}")
        names = cls.field_names()
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"unknown {cls.kind} option(s): {unknown}; known: {sorted(names)}")
        try:
            return _adapter(cls).validate_python(dict(d))  # type: ignore[arg-type]
        except pydantic.ValidationError as e:
            raise ConfigError(_one_line(cls, e)) from None

    @classmethod
    def from_yaml(cls: type[C], path: str | Path, **overrides: Any) -> C:
        """Read a YAML file of options (``overrides`` win), then :meth:`from_dict`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{cls.kind} config not found: {path}")
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{path}: a {cls.kind} config is a mapping of options, got {type(spec).__name__}")
        return cls.from_dict({**spec, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (nested configs as dicts, tuples as lists): what ``from_dict`` reads back."""
        return _plain(dataclasses.asdict(self))  # type: ignore[call-overload]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
