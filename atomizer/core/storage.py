"""Records: atomic writes, the JSON-lines reader, folder locks and the safe load of torch files.

* Atomic writes: every checkpoint and result file is written to a temporary file (``.<name>.XXXXXXXX.tmp``
  beside it), then renamed; a reader never sees a half-written file, and a run killed mid-write leaves the
  previous version intact. The file gets the mode the umask gives (as ``open`` would), not ``mkstemp``'s
  0600, so a shared project folder stays readable by the group. Temporary files a kill left behind are
  removed by :func:`clean_stale_temps` when a writer takes the folder's lock (:func:`locked`).
* Several files written as one unit (a result and its JSON twin): :func:`atomic_paths`.
* JSON-lines logs (``metrics.jsonl``) have one reader, :func:`jsonl_lines` / :func:`read_jsonl`, with one
  rule for a bad line.
* Torch files (checkpoints, adapters) are loaded with ``weights_only=True`` only (:func:`load_torch_file`):
  nothing in them is unpickled into code; :func:`plain_data` makes what is saved loadable that way.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: The temporary files of :func:`atomic_path`: ``.<target name>.<8 random characters>.tmp``.
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def current_umask() -> int:
    """The process's umask, read without changing it (``/proc/self/status`` on Linux), else by setting and
    restoring it (``os.umask`` has no read-only form)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[list[Path]]:
    """Yield one temporary path per target (each in its target's folder); when the block succeeds, every
    file is flushed to disk, given the umask's mode, then all are renamed onto their targets in the order
    given. On an error nothing is renamed and the temporary files are removed."""
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            temps.append(Path(name))
        yield list(temps)
        mode = 0o666 & ~current_umask()  # what open() would have given; mkstemp gives 0600
        for temp in temps:
            with open(temp, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(temp, mode)
        for temp, path in zip(temps, targets):
            os.replace(temp, path)
    finally:
        for temp in temps:
            if temp.exists():
                temp.unlink()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``path``."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def clean_stale_temps(folder: str | Path, depth: int = 1, names: Iterable[str] | None = None) -> list[Path]:
    """Remove the temporary files of :func:`atomic_path` (``.<name>.XXXXXXXX.tmp``) that a killed writer
    left in ``folder`` and its subfolders down to ``depth`` levels (only those of the targets ``names``,
    if given); returns what was removed.

    Call it only while holding the folder's lock (:func:`locked`), for files only lock holders write: a
    temporary file of a live writer that does not hold the lock would be removed too.
    """
    folder = Path(folder)
    wanted = None if names is None else set(names)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            if depth > 0:
                removed += clean_stale_temps(entry, depth - 1, wanted)
        elif TEMP_NAME.match(entry.name) and entry.is_file():
            if wanted is not None and entry.name[1:-13] not in wanted:  # ".<name>." + 8 chars + ".tmp"
                continue
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex (read in 1 MiB blocks)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def json_text(obj: Any) -> str:
    """Valid, stable JSON text: non-finite floats as null, sorted keys, a final newline."""
    return json.dumps(finite_json(obj), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Valid JSON only: non-finite floats are written as null (never ``NaN`` or ``-Infinity``)."""
    return atomic_write_text(path, json_text(obj))


def jsonl_lines(path: str | Path) -> list[tuple[str, dict | None]]:
    """Every line of a JSON-lines log with its record: the one reader of ``metrics.jsonl``.

    The rule for a bad line: a last line without its newline that does not parse is a line being written
    (or cut by a kill) and is left out, silently. Any other line that is not a JSON object is returned with
    ``None`` as its record (readers skip it; a resumed run keeps it verbatim, so no line is lost) and
    reported once in a warning naming the line numbers; the lines after it are read as usual.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    complete = text.endswith("\n") or text == ""
    if complete:
        lines = lines[:-1]  # the empty string after the final newline
    out: list[tuple[str, dict | None]] = []
    bad: list[int] = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if i == len(lines) - 1 and not complete:
                break  # a half-written last line
            bad.append(i + 1)
            record = None
        out.append((line, record))
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        warnings.warn(f"{path.name}: skipped {len(bad)} line(s) that are not JSON records (line {shown})", stacklevel=2)
    return out


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines log, by the rule of :func:`jsonl_lines`."""
    return [r for _, r in jsonl_lines(path) if r is not None]


# --------------------------------------------------------------------------------------------------
# Torch files: loaded with weights_only=True only
# --------------------------------------------------------------------------------------------------

#: The first torch whose ``weights_only=True`` load is safe (CVE-2025-32434 in earlier releases).
SAFE_TORCH = (2, 6)


class UnsafeFileError(ValueError):
    """A torch file holds something other than tensors and plain data, or cannot be loaded safely."""


def check_safe_torch(version: str | None = None) -> None:
    """Refuse, in one line, a torch older than :data:`SAFE_TORCH` (its ``weights_only`` load can run code)."""
    if version is None:
        import torch

        version = torch.__version__
    m = re.match(r"(\d+)\.(\d+)", version)
    if m is None or (int(m.group(1)), int(m.group(2))) < SAFE_TORCH:
        raise UnsafeFileError(
            f"torch {version} cannot load checkpoints safely (CVE-2025-32434): install torch>=2.6 "
            "(pip install -U 'torch>=2.6')"
        )


def load_torch_file(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` after :func:`check_safe_torch`: tensors and plain data only
    (dicts, lists, tuples, str, numbers, bools, None), nothing unpickled into code.

    Raises:
        UnsafeFileError: the file holds anything else (a foreign or hostile file: refused unread), or is not
            a readable torch file; one line, the object torch refused named where it says.
    """
    import pickle

    import torch

    check_safe_torch()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" (it holds {found.group(1)})" if found else ""
        raise UnsafeFileError(f"holds objects other than weights and plain data{what}; refused unread") from None
    except Exception as e:  # torch raises many kinds for a corrupt file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UnsafeFileError(f"not a readable torch file ({type(e).__name__}: {first})") from None


def plain_data(obj: Any, where: str = "payload") -> Any:
    """``obj`` as what :func:`load_torch_file` reads back: tensors (and torch's dtypes, sizes, devices),
    dicts, lists, tuples, str, int, float, bool, None. NumPy scalars become numbers, NumPy arrays tensors,
    paths strings, mappings dicts, sets sorted lists.

    Raises:
        TypeError: anything else, naming where in ``obj`` it is (a bug to fix where the payload is made).
    """
    import numpy as np

    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if type(obj).__module__.split(".")[0] == "torch":
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {plain_data(k, where): plain_data(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(plain_data(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, list):
        return [plain_data(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return sorted(plain_data(v, where) for v in obj)
    raise TypeError(f"{where}: a {type(obj).__name__} cannot be stored in a checkpoint (plain data and tensors only)")


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
