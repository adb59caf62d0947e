"""BigEarthNet in the community LMDB form: keys are patch names, values safetensors dicts of native bands.

This is the encoding the official BigEarthNet v2 encoder (rico-hdl) writes and that configilm trains from:
one LMDB entry per patch, key = the patch name as UTF-8 bytes (Sentinel-2 ``S2A_MSIL2A_..._T33UUP_26_57``,
Sentinel-1 twins ``S1A_IW_GRDH_...``), value = ``safetensors.numpy.save({band: array})`` with every band at
its native resolution (``B02 B03 B04 B08`` uint16 120 x 120, ``B05 B06 B07 B8A B11 B12`` 60 x 60,
``B01 B09`` 20 x 20; ``VV``, ``VH`` float32 120 x 120). :func:`encode_patch` reproduces those bytes
exactly (safetensors orders the header; tested against the real LMDB).

:func:`prepare_bigearthnet` converts the official v1/v2 GeoTIFF folder layouts into that form, in
worker processes, resumable: every committed transaction is durable, finished patches are skipped on a
rerun, so no patch is written twice or lost.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

#: Folder name of the LMDB database inside a prepared root (as in the official release).
LMDB_DIR = "BigEarthNet-V2-LMDB"
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
S1_BANDS = ("VH", "VV")
_BAND_SUFFIX = re.compile(r"_(B\d\dA?|B8A|VV|VH)$")


def encode_patch(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The LMDB value of one patch: safetensors bytes of ``{band: array}`` (byte-compatible with rico-hdl)."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()})


def decode_patch(value: bytes) -> dict[str, np.ndarray]:
    """``{band: array}`` of an LMDB value (:func:`encode_patch` inverted)."""
    from safetensors.numpy import load

    return load(bytes(value))


_READERS: dict[tuple[str, int], Any] = {}


def open_env(path: str | Path, readonly: bool = True, map_size: int = 1 << 40):
    """An LMDB environment (read-only: no lock file needed, safe in many reader processes)."""
    import lmdb

    path = Path(path)
    if readonly and not (path / "data.mdb").is_file():
        raise FileNotFoundError(f"no LMDB database at {path} (expected {path / 'data.mdb'})")
    if readonly:  # one environment per database and process (LMDB refuses a second one)
        key = (str(path.resolve()), os.getpid())
        for k in [k for k in _READERS if k[0] == key[0] and k[1] != key[1]]:
            # inherited through fork (a DataLoader worker): close this process's copy, open its own
            _READERS.pop(k).close()
        if key not in _READERS:
            _READERS[key] = lmdb.open(
                str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=512
            )
        return _READERS[key]
    for k in [k for k in _READERS if k[0] == str(path.resolve())]:  # a writer invalidates cached readers
        _READERS.pop(k).close()
    path.mkdir(parents=True, exist_ok=True)
    return lmdb.open(str(path), map_size=map_size, subdir=True, meminit=False, map_async=False)


class PatchReader:
    """Reads patches by name from an LMDB; the environment opens lazily in each process (fork-safe)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._env: Any = None  # an lmdb.Environment (lmdb is untyped), opened in the process that reads
        self._pid: int | None = None

    def _txn(self):
        if self._env is None or self._pid != os.getpid():
            self._env, self._pid = open_env(self.path), os.getpid()
        return self._env.begin(buffers=False)

    def get(self, key: str) -> dict[str, np.ndarray]:
        with self._txn() as txn:
            value = txn.get(key.encode())
        if value is None:
            raise KeyError(f"patch {key!r} is not in the LMDB at {self.path}")
        return decode_patch(value)

    def keys(self) -> list[str]:
        with self._txn() as txn:
            return [k.decode() for k in txn.cursor().iternext(keys=True, values=False)]

    def __getstate__(self) -> dict:  # a DataLoader worker reopens its own environment
        return {"path": self.path, "_env": None, "_pid": None}


# --------------------------------------------------------------------------------------------------
# Converting the official GeoTIFF layouts
# --------------------------------------------------------------------------------------------------


def patch_folders(root: str | Path) -> list[Path]:
    """Patch folders below ``root``: v2 ``<tile>/<patch>/<patch>_B01.tif`` or v1 ``<patch>/<patch>_B01.tif``
    (S2), or the Sentinel-1 equivalents with ``_VV.tif`` / ``_VH.tif``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    found = {f.parent for pattern in ("*_B02.tif", "*_VV.tif") for f in root.rglob(pattern)}
    return sorted(p for p in found if p.name and any(f.name.startswith(p.name + "_") for f in p.iterdir()))


def read_patch_folder(folder: str | Path) -> dict[str, np.ndarray]:
    """``{band: array}`` of a patch folder's GeoTIFFs (rasterio, stored dtype and native grid)."""
    from atomizer.data.raster import open_raster

    folder = Path(folder)
    out: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob(f"{folder.name}_*.tif")):
        m = _BAND_SUFFIX.search(f.stem)
        if not m:
            continue
        with open_raster(f) as src:  # GTiff only, GDAL's network off
            out[m.group(1)] = src.read(1)
    if not out:
        raise ValueError(f"{folder}: no band GeoTIFF named {folder.name}_<band>.tif")
    is_s1 = any(b in out for b in S1_BANDS)
    expected = S1_BANDS if is_s1 else S2_BANDS
    if missing := [b for b in expected if b not in out]:
        raise ValueError(f"{folder}: missing band(s) {missing}")
    return out


def write_patch_folder(root: str | Path, patch_id: str, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write a patch's bands in the official v2 GeoTIFF layout, ``root/<tile>/<patch>/<patch>_<band>.tif``
    (what :func:`read_patch_folder` reads; for benchmarks and tests of the converter). The georeferencing is
    nominal (UTM 33N, the patch's 1,200 m on each band's grid)."""
    import rasterio
    from rasterio.transform import from_origin

    folder = Path(root) / "_".join(patch_id.split("_")[:-2]) / patch_id
    folder.mkdir(parents=True, exist_ok=True)
    for band, arr in arrays.items():
        g = 1200 / arr.shape[0]
        with rasterio.open(
            folder / f"{patch_id}_{band}.tif", "w", driver="GTiff", height=arr.shape[0], width=arr.shape[1],
            count=1, dtype=arr.dtype, crs="EPSG:32633", transform=from_origin(500000, 5300000, g, g),
        ) as dst:  # fmt: skip
            dst.write(arr, 1)
    return folder


def _encode_folder(folder: str) -> tuple[str, bytes]:
    return Path(folder).name, encode_patch(read_patch_folder(folder))


def existing_keys(db: Path) -> set[str]:
    if not (db / "data.mdb").is_file():
        return set()
    return set(PatchReader(db).keys())


def prepare_bigearthnet(
    root: str | Path,
    out: str | Path,
    workers: int = 1,
    metadata: str | Path | None = None,
    commit_every: int = 256,
    progress: bool = True,
    limit: int | None = None,
) -> dict[str, Any]:
    """Convert official BigEarthNet GeoTIFF folders (v1 or v2, S2 and/or S1) into the LMDB form.

    Args:
        root: The official layout (e.g. ``BigEarthNet-S2/``), searched recursively for patch folders.
        out: Output root; the database goes to ``out/BigEarthNet-V2-LMDB`` (the official layout).
        workers: Reader/encoder processes (the single LMDB writer is this process).
        metadata: The official ``metadata.parquet``; the counts are checked against it at the end.
        commit_every: Patches per write transaction (a kill loses at most the uncommitted ones, which a
            rerun writes; committed ones are never written again).

    Returns:
        ``{"written", "skipped", "duplicates", "total", "seconds", "patches_per_s", "missing", "database"}``:
        ``written`` counts the patches this call stored; ``skipped`` those already in the database;
        ``duplicates`` lists the folders (relative to ``root``) not written because another folder of the
        same patch name came first in sorted order (or was stored meanwhile): a patch name is one key;
        ``missing`` lists metadata patches that are in neither the source nor the database.
    """
    from tqdm.auto import tqdm

    db = Path(out) / LMDB_DIR
    folders = patch_folders(root)
    if limit is not None:
        folders = folders[:limit]
    done = existing_keys(db)
    todo: list[Path] = []
    duplicates: list[str] = []
    seen: set[str] = set()
    for f in folders:
        if f.name in done:
            continue
        if f.name in seen:  # one key per patch name: the first folder of that name is written
            duplicates.append(_relative(f, root))
            continue
        seen.add(f.name)
        todo.append(f)
    skipped = len(folders) - len(todo) - len(duplicates)
    env = open_env(db, readonly=False)
    t0 = time.perf_counter()
    written = 0
    bar = tqdm(total=len(folders), initial=len(folders) - len(todo), disable=not progress, unit="patch")
    by_name = {f.name: f for f in todo}
    try:
        results: Iterator[tuple[str, bytes]]
        pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
        if pool is not None:
            results = pool.map(_encode_folder, [str(f) for f in todo], chunksize=16)
        else:
            results = map(_encode_folder, [str(f) for f in todo])
        batch: list[tuple[str, bytes]] = []
        for key, value in results:
            batch.append((key, value))
            if len(batch) >= commit_every:
                stored = _commit(env, batch)
                written += len(stored)
                duplicates += [_relative(by_name[k], root) for k, _ in batch if k not in stored]
                bar.update(len(batch))
                batch = []
        if batch:
            stored = _commit(env, batch)
            written += len(stored)
            duplicates += [_relative(by_name[k], root) for k, _ in batch if k not in stored]
            bar.update(len(batch))
        if pool is not None:
            pool.shutdown()
    finally:
        bar.close()
        env.close()
    seconds = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "written": written,
        "skipped": skipped,
        "duplicates": duplicates,
        "total": len(existing_keys(db)),
        "seconds": seconds,
        "patches_per_s": written / seconds if seconds > 0 and written else 0.0,
        "missing": [],
        "database": str(db),
    }
    if metadata is not None:
        import pandas as pd

        meta = pd.read_parquet(metadata, columns=["patch_id", "s1_name"])
        have = existing_keys(db)
        summary["missing"] = sorted(set(meta["patch_id"]) - have)
    return summary


def _commit(env, batch: Sequence[tuple[str, bytes]]) -> set[str]:
    """Store ``batch`` in one transaction; returns the keys actually stored (a key already present is not
    overwritten, and not counted)."""
    stored: set[str] = set()
    with env.begin(write=True) as txn:
        for key, value in batch:
            if txn.put(key.encode(), value, overwrite=False):
                stored.add(key)
    return stored


def _relative(folder: Path, root: str | Path) -> str:
    try:
        return folder.relative_to(root).as_posix()
    except ValueError:
        return folder.name


def verify_lmdb(db: str | Path, root: str | Path | None = None, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """Re-read every patch of the database: decodable, the expected bands and shapes; with ``root``, byte-equal
    to the encoding of its source GeoTIFF folder. Returns ``{"checked", "errors"}`` (errors as one line each)."""
    reader = PatchReader(db)
    sources = {f.name: f for f in patch_folders(root)} if root is not None else {}
    errors: list[str] = []
    names = list(keys) if keys is not None else reader.keys()
    with reader._txn() as txn:
        for key in names:
            value = txn.get(key.encode())
            if value is None:
                errors.append(f"{key}: not in the database")
                continue
            try:
                arrays = decode_patch(value)
            except Exception as e:  # noqa: BLE001  (reported per patch)
                errors.append(f"{key}: not decodable ({e})")
                continue
            expected = S1_BANDS if key.startswith("S1") else S2_BANDS
            if sorted(arrays) != sorted(expected):
                errors.append(f"{key}: bands {sorted(arrays)}, expected {sorted(expected)}")
            if key in sources and encode_patch(read_patch_folder(sources[key])) != bytes(value):
                errors.append(f"{key}: differs from its source folder {sources[key]}")
    return {"checked": len(names), "errors": errors}
