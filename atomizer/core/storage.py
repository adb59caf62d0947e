"""Atomic writes: every checkpoint and result file is written to a temporary file, then renamed.

A reader never sees a half-written file, and a run killed mid-write leaves the previous version intact.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, lambda p: p.write_text(text))


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by None: JSON has no such numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Valid JSON only: non-finite floats are written as null (never ``NaN`` or ``-Infinity``)."""
    text = json.dumps(finite_json(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    return atomic_write_text(path, text + "\n")


class LockedError(RuntimeError):
    """A run folder or results store is being written by another process."""


@contextmanager
def locked(folder: str | Path, what: str = "run folder", name: str = ".lock") -> Iterator[Path]:
    """Hold ``folder``'s write lock (``<folder>/<name>``, default ``.lock``; an OS file lock via :mod:`filelock`) while the block runs.

    A second writer, in this process or another, is refused at once with a one-line :class:`LockedError`
    naming the folder; the lock is released when the block ends or the process dies (no stale lock).
    """
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / name), timeout=0, is_singleton=False, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise LockedError(
            f"{what} {folder.name!r} is being written by another process (its {name} is held); "
            "wait for it to finish or use another folder"
        ) from None
    try:
        yield folder
    finally:
        lock.release()
