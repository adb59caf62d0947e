"""Shared bits of the dashboards: the HoloViews backend, messages, small formatting helpers."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

import holoviews as hv
import holoviews.plotting.bokeh  # registers the bokeh backend and makes it current
import panel as pn
import param

from atomizer.core.runtime import release_memory

hv.Store.set_current_backend("bokeh")

#: Width of the plots of the dashboards (px); layouts stretch around them.
PLOT_WIDTH = 620
PLOT_HEIGHT = 320


def alert(message: str, kind: str = "danger") -> pn.pane.Alert:
    """A message shown in the page instead of an exception (``kind``: danger, warning, info...).

    ``message`` is Markdown and reaches the page as HTML: every string in it that comes from a file, a store, a
    user or an error must already have gone through :func:`escape_text` (callers escape; this does not)."""
    return pn.pane.Alert(message, alert_type=kind, sizing_mode="stretch_width")


def error_text(exc: BaseException) -> str:
    """One line describing ``exc`` (the message of the library's errors already names the input)."""
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return f"{type(exc).__name__}: {msg}"


# --------------------------------------------------------------------------------------------------
# What every session of a served dashboard shares
# --------------------------------------------------------------------------------------------------


class SharedCache:
    """A process-wide, bounded (least recently used out), thread-safe cache for what sessions share.

    Models, checkpoints, a results store's tables and their statistics are the same for every browser
    session: computed once (other sessions asking for the same key meanwhile wait for that computation
    instead of repeating it) and kept while among the ``maxsize`` most recently used of their kind. Keys
    carry what makes a value stale (a file's modification time, a store's signature), so a changed file
    is read again.
    """

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict = {}

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value of ``key``, computed by ``compute()`` if absent (exceptions propagate, nothing cached)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:  # computed by another session while this one waited
                    self._items.move_to_end(key)
                    return self._items[key]
            try:
                value = compute()
            finally:
                with self._lock:
                    self._key_locks.pop(key, None)
            with self._lock:
                self._items[key] = value
                while len(self._items) > self.maxsize:
                    self._items.popitem(last=False)
            return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


#: Loaded models by (checkpoint path, modification time).
MODELS = SharedCache(maxsize=4)
#: Results stores read from disk by (root, signature of its files).
STORES = SharedCache(maxsize=4)
#: Derived tables (statistics, attention results) by what they were computed from.
TABLES = SharedCache(maxsize=32)
#: Attention results (every atom's weight in every block: up to about 0.7 GB each at the tab's atom bound).
ATTENTION = SharedCache(maxsize=2)


def file_key(path: str | Path) -> tuple[str, float | None]:
    """(resolved path, modification time or None): a cache key that changes when the file does."""
    p = Path(path).expanduser()
    try:
        return str(p.resolve()), p.stat().st_mtime
    except OSError:
        return str(p), None


def on_session_end(cleanup: Callable[[], None]) -> None:
    """Run ``cleanup`` (stop periodic callbacks, drop per-session state) when the served session of the
    current document is destroyed, then give freed memory back to the system; nothing outside a server."""
    doc = pn.state.curdoc
    if doc is None or doc.session_context is None:
        return

    def _destroyed(_ctx: Any) -> None:
        try:
            cleanup()
        finally:
            release_memory()

    pn.state.on_session_destroyed(_destroyed)


# --------------------------------------------------------------------------------------------------
# What a served dashboard may read, and how it shows strings
# --------------------------------------------------------------------------------------------------


def escape_text(value: Any) -> str:
    """``str(value)`` with HTML's special characters escaped: every string from a file, a store, an error or a
    user goes through this before it reaches a Markdown, HTML or Alert pane.

    Brackets become character references too, so a name cannot form a Markdown link or image (``[x](url)``,
    ``![x](url)``) either; a Markdown or HTML pane shows every character as typed.
    """
    import html

    return html.escape(str(value), quote=True).replace("[", "&#91;").replace("]", "&#93;")


#: Absolute POSIX paths inside a message (``/a/b``, also quoted); see :meth:`Roots.scrub`.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(?:[^\s'\"/:,;()\[\]]+/)*[^\s'\"/:,;()\[\]]*")


class OutsideRootsError(ValueError):
    """A path the dashboard was asked to read lies outside the roots it was started with."""


class Roots:
    """The folders a served dashboard may read, fixed when it starts; every path a view touches goes through it.

    ``resolve(text)`` takes a path as a user typed or chose it (relative to the first root, or absolute) and
    returns the resolved path if it lies under one of the roots (symbolic links resolved first), else raises
    :class:`OutsideRootsError` with a message that names neither the resolved path nor whether it exists.
    ``display(path)`` is how a path is shown: relative to its root, prefixed with the root's label; never an
    absolute server path. ``files(patterns)`` lists what lies under the roots, for selection widgets.
    """

    def __init__(self, roots: dict[str, str | Path] | Iterable[str | Path | tuple[str, str | Path]]):
        """``roots``: {label: folder}, or folders (labelled by their names), or (label, folder) pairs; a label
        already taken gets a suffix (``-2``...), a folder given twice is kept once."""
        items = (
            roots.items()
            if isinstance(roots, dict)
            else (r if isinstance(r, tuple) else (Path(r).name or str(r), r) for r in roots)
        )
        self._roots: list[tuple[str, Path]] = []
        for label, r in items:
            p = Path(r).expanduser().resolve()
            if all(p != q for _, q in self._roots):
                taken = {lb for lb, _ in self._roots}
                label, base, n = str(label) or "root", str(label) or "root", 1
                while label in taken:  # labels name the roots in messages and selections: one root each
                    n += 1
                    label = f"{base}-{n}"
                self._roots.append((label, p))

    def __iter__(self):
        return iter(p for _, p in self._roots)

    def __len__(self) -> int:
        return len(self._roots)

    def __repr__(self) -> str:
        return f"Roots({[label for label, _ in self._roots]})"

    def contains(self, path: str | Path) -> bool:
        p = Path(path).resolve()
        return any(p == r or p.is_relative_to(r) for _, r in self._roots)

    @property
    def labels(self) -> list[str]:
        """The roots' labels, in order (what messages and :meth:`display` show instead of server paths)."""
        return [label for label, _ in self._roots]

    def resolve(self, text: str | Path, what: str = "path") -> Path:
        """The real path of ``text`` if it lies under a root; :class:`OutsideRootsError` otherwise.

        ``text`` may be what :meth:`display` shows (``label/relative``), a path relative to a root, or an
        absolute path under a root. An existing file wins; a path that exists nowhere resolves under the roots
        (label form first) so that the caller can say it is missing without saying where.
        """
        raw = str(text).strip()
        if not raw:
            raise OutsideRootsError(f"no {what} given")
        if "\x00" in raw or "://" in raw or raw.startswith("/vsi"):
            raise OutsideRootsError(f"the {what} is not a file under the dashboard's folders")
        p = Path(raw).expanduser()
        if ".." in p.parts:  # a path that climbs is never needed to name something under a root
            raise OutsideRootsError(
                f"the {what} is not under the folders this dashboard serves ({', '.join(self.labels)})"
            )
        if p.is_absolute():
            candidates = [p]
        else:
            labelled = [r / Path(*p.parts[1:]) for label, r in self._roots if p.parts and p.parts[0] == label]
            candidates = [r / p for _, r in self._roots] + labelled
            candidates = labelled[:1] + [c for c in candidates if c not in labelled[:1]]
        inside = [real for real in (c.resolve() for c in candidates) if self.contains(real)]
        for real in inside:
            if real.exists():
                return real
        if inside:
            return inside[0]
        raise OutsideRootsError(f"the {what} is not under the folders this dashboard serves ({', '.join(self.labels)})")

    def scrub(self, text: Any) -> str:
        """``str(text)`` with every absolute path shown as :meth:`display` shows it (a root's path becomes its
        label, any other absolute path its last component): error texts reach the page without server paths."""
        return _ABSOLUTE_PATH.sub(lambda m: self.display(m.group(0)) if m.group(0) != "/" else "/", str(text))

    def display(self, path: str | Path) -> str:
        """``label/relative/path`` for a path under a root; the bare file name otherwise (never an absolute path)."""
        p = Path(path).resolve()
        for label, r in self._roots:
            if p == r:
                return label
            if p.is_relative_to(r):
                return f"{label}/{p.relative_to(r).as_posix()}"
        return p.name

    def files(self, *patterns: str, limit: int = 500) -> list[Path]:
        """Files (or folders) under the roots matching any glob ``pattern`` (recursive ``**`` allowed), sorted,
        at most ``limit``; links that leave the roots are skipped."""
        out: list[Path] = []
        seen: set[Path] = set()
        for _, r in self._roots:
            for pat in patterns:
                for f in sorted(r.glob(pat)):
                    real = f.resolve()
                    if real in seen or not self.contains(real):
                        continue
                    seen.add(real)
                    out.append(real)
                    if len(out) >= limit:
                        return out
        return out


def default_roots(*given: str | Path | None) -> Roots:
    """The roots of a view made without ``roots`` (a notebook): the embedded data, ``./runs``, and the folders
    of the paths the program itself passed (``given``). A served dashboard passes its own roots instead."""
    from atomizer.core.paths import data_dir

    roots: list[tuple[str, Path]] = []
    try:
        roots.append(("data", data_dir()))
    except OSError:  # no embedded data on this machine
        pass
    roots.append(("runs", Path.cwd() / "runs"))
    for g in given:
        if g is not None and str(g).strip():
            parent = Path(str(g).strip()).expanduser().resolve().parent
            roots.append((parent.name or "root", parent))
    return Roots(roots)


def safe_error(exc: BaseException, roots: Roots) -> str:
    """One escaped line describing ``exc`` for an HTML pane: its first line only (a parser's echo of the file's
    contents is left out), absolute paths scrubbed (:meth:`Roots.scrub`), at most 300 characters."""
    lines = error_text(exc).strip().splitlines()
    line = roots.scrub(lines[0] if lines else type(exc).__name__)
    if len(line) > 300:
        line = line[:299] + "\u2026"
    return escape_text(line)


def path_choices(roots: Roots, *patterns: str, parent: bool = False, limit: int = 200) -> list[str]:
    """What lies under ``roots`` matching the globs, as :meth:`Roots.display` shows it (the folder holding each
    match with ``parent``): the options of a selection widget, which :meth:`Roots.resolve` reads back."""
    out: dict[str, None] = {}
    for f in roots.files(*patterns, limit=limit):
        p = f.parent if parent else f
        if roots.contains(p):
            out[roots.display(p)] = None
    return list(out)


def choice_select(view: param.Parameterized, name: str, choices: list[str], label: str) -> pn.widgets.Select:
    """A Select of ``choices`` that sets ``view.<name>`` (a text parameter a text box also edits)."""
    current = getattr(view, name)
    select = pn.widgets.Select(name=label, options=["", *choices], value=current if current in choices else "")

    def chosen(event: param.parameterized.Event) -> None:
        if event.new:
            setattr(view, name, event.new)

    select.param.watch(chosen, "value")
    return select
