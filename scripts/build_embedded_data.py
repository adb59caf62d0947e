#!/usr/bin/env python
"""Build ``data/embedded/``: the slice of real data that ships with the project.

Usage (from the repository root)::

    .venv/bin/python scripts/build_embedded_data.py [SRC]            # build, then verify everything
    .venv/bin/python scripts/build_embedded_data.py [SRC] --verify   # only verify an existing build
    .venv/bin/python scripts/build_embedded_data.py --verify --sample 20

``SRC`` is the shared real-data folder (default ``../shared/data`` relative to the repository root,
see its README). Outputs go to ``data/embedded/`` (``--out`` to change):

* ``bigearthnet/``: the 70 BigEarthNet-S2 patches of ``ben_real_mini`` (npz), their metadata, the label
  nomenclature, the band table and a row sample of the official BigEarthNet v2.0 metadata parquet;
* ``eurosat/``: the 202 EuroSAT-MS "allBands" GeoTIFFs, ``index.csv`` (+ pixel hashes), ``split.csv``;
* ``majortom/``: the Major-TOM Sentinel-2 L2A scene ``0U_199R`` (2022, processing baseline N0400);
* ``manifest.csv``: every shipped file with its size, sha256, source file and encoding.

Pixel values are never resampled or otherwise changed: GeoTIFFs are re-encoded losslessly (DEFLATE +
horizontal predictor, tiled) only where that makes them smaller, npz patches are re-saved with
``numpy.savez_compressed`` only where that makes them smaller, else copied byte for byte. Every
written file is read back and compared with its source (values, dtype, shape, CRS, geotransform,
band count and order) before it is kept; ``--verify`` repeats that comparison for an existing build.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SRC = (REPO_ROOT / ".." / "shared" / "data").resolve()
DEFAULT_OUT = REPO_ROOT / "data" / "embedded"

SEED = 0
BEN_SAMPLE_ROWS = 2000  # random rows of benv2_metadata.parquet (besides the shipped patches)
BEN_SAMPLE_SNOW_ROWS = 300  # random rows of benv2_metadata_snow_cloud_shadow.parquet
BEN_MIN_PER_CLASS_SPLIT = 20  # top-up: at least this many rows per (class, split) in the sample
EUROSAT_SPLIT = {"test": 4, "validation": 4}  # per class; every remaining tile goes to train (>= 12)
MAJORTOM_CELL = "0U_199R"
MAJORTOM_PRODUCT = "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419"

GTIFF_CODECS = {
    "deflate": {"compress": "deflate", "zlevel": 9},
    "zstd": {"compress": "zstd", "zstd_level": 22},
}


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_pixels(arr: np.ndarray) -> str:
    """sha256 of a pixel array: C order, little-endian, as ``rasterio`` ``read()`` returns it
    (shape ``(bands, rows, cols)``)."""
    a = np.ascontiguousarray(arr)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(a.tobytes()).hexdigest()


def natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


class Manifest:
    """Rows of ``manifest.csv``: what was shipped and how."""

    def __init__(self, out: Path):
        self.out = out
        self.rows: list[dict] = []

    def add(self, path: Path, source: str, encoding: str, pixels: str = "") -> None:
        self.rows.append(
            {
                "path": path.relative_to(self.out).as_posix(),
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "sha256_pixels": pixels,
                "source": source,
                "encoding": encoding,
            }
        )

    def write(self) -> None:
        rows = sorted(self.rows, key=lambda r: natural_key(r["path"]))
        with open(self.out / "manifest.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


# --------------------------------------------------------------------------------------------------
# GeoTIFF: lossless re-encoding and comparison
# --------------------------------------------------------------------------------------------------


def read_tif(path: Path):
    import rasterio

    with rasterio.open(path) as ds:
        return {
            "array": ds.read(),
            "profile": ds.profile,
            "crs": ds.crs,
            "transform": ds.transform,
            "count": ds.count,
            "dtypes": ds.dtypes,
            "nodata": ds.nodata,
            "tags": ds.tags(),
            "band_tags": [ds.tags(i) for i in range(1, ds.count + 1)],
            "descriptions": ds.descriptions,
            "scales": ds.scales,
            "offsets": ds.offsets,
        }


def compare_tif(src: Path, dst: Path) -> list[str]:
    """Differences between two GeoTIFFs that matter (empty list: identical pixels and georeferencing)."""
    a, b = read_tif(src), read_tif(dst)
    errs = []
    if a["array"].dtype != b["array"].dtype:
        errs.append(f"dtype {a['array'].dtype} != {b['array'].dtype}")
    if a["array"].shape != b["array"].shape:
        errs.append(f"shape {a['array'].shape} != {b['array'].shape}")
    elif not np.array_equal(a["array"], b["array"]):
        errs.append("pixel values differ")
    for k in ("crs", "transform", "count", "dtypes", "nodata", "descriptions", "scales", "offsets", "band_tags"):
        if a[k] != b[k]:
            errs.append(f"{k}: {a[k]!r} != {b[k]!r}")
    if a["tags"].get("AREA_OR_POINT") != b["tags"].get("AREA_OR_POINT"):
        errs.append("AREA_OR_POINT differs")
    return errs


def reencode_tif(src: Path, dst: Path, creation: list[dict], compare=None) -> str:
    """Write ``src`` to ``dst`` losslessly with the smallest of the ``creation`` option sets, or copy it
    when none is smaller; every candidate is read back and checked with ``compare(src, candidate)`` (default
    :func:`compare_tif`: a list of differences, empty when none). Tags, band tags, descriptions and colour
    interpretation are kept. Returns a description of the encoding kept."""
    import rasterio

    compare = compare or compare_tif
    info = read_tif(src)
    arr = info["array"]
    with rasterio.open(src) as s:
        colorinterp = s.colorinterp
    best: tuple[int, Path, str] | None = None
    tmpdir = Path(tempfile.mkdtemp(prefix="embed_", dir=dst.parent))
    try:
        for i, opts in enumerate(creation):
            prof = dict(info["profile"])
            for k in (
                "blockxsize",
                "blockysize",
                "tiled",
                "compress",
                "interleave",
                "predictor",
                "zlevel",
                "zstd_level",
                "lzma_preset",
            ):
                prof.pop(k, None)
            prof.update(opts)
            tmp = tmpdir / f"{i}.tif"
            with rasterio.open(tmp, "w", **prof) as out:
                out.write(arr)
                out.update_tags(**info["tags"])
                for bi in range(1, info["count"] + 1):
                    if info["band_tags"][bi - 1]:
                        out.update_tags(bi, **info["band_tags"][bi - 1])
                    if info["descriptions"][bi - 1]:
                        out.set_band_description(bi, info["descriptions"][bi - 1])
                out.colorinterp = colorinterp
            errs = compare(src, tmp)
            if errs:
                raise RuntimeError(f"{src}: lossless re-encoding failed: {errs}")
            size = tmp.stat().st_size
            desc = ",".join(f"{k}={v}" for k, v in opts.items())
            if best is None or size < best[0]:
                best = (size, tmp, desc)
        if best is not None and best[0] < src.stat().st_size:
            os.replace(best[1], dst)
            return best[2]
        shutil.copyfile(src, dst)
        return "copied"
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# BigEarthNet
# --------------------------------------------------------------------------------------------------


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def compare_npz(src: Path, dst: Path) -> list[str]:
    a, b = load_npz(src), load_npz(dst)
    errs = []
    if list(a) != list(b):
        errs.append(f"keys {list(a)} != {list(b)}")
    for k in a:
        if k not in b:
            continue
        if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape:
            errs.append(f"{k}: {a[k].dtype}{a[k].shape} != {b[k].dtype}{b[k].shape}")
        elif a[k].tobytes() != b[k].tobytes():  # bitwise (also right for NaN in float32 VV/VH)
            errs.append(f"{k}: values differ")
    return errs


def sample_parquet(
    src: Path, dst: Path, keep_ids: set[str], n_random: int, min_per_class_split: int, rng: np.random.Generator
) -> dict:
    """Write a row sample of an official BigEarthNet v2.0 metadata parquet, same schema, original order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(src)
    ids = table.column("patch_id").to_pylist()
    n = len(ids)
    chosen = {i for i, p in enumerate(ids) if p in keep_ids}
    n_shipped = len(chosen)
    rest = np.setdiff1d(np.arange(n), np.fromiter(chosen, int, len(chosen)))
    chosen |= set(rng.choice(rest, size=min(n_random, len(rest)), replace=False).tolist())
    n_topup = 0
    if min_per_class_split:
        labels = table.column("labels").to_pylist()
        splits = table.column("split").to_pylist()
        by_key: dict[tuple[str, str], list[int]] = {}
        for i, (ls, s) in enumerate(zip(labels, splits)):
            for lab in ls:
                by_key.setdefault((lab, s), []).append(i)
        for key in sorted(by_key):
            rows = np.asarray(by_key[key])
            have = sum(1 for i in rows if i in chosen)
            if have >= min_per_class_split:
                continue
            pool = np.asarray([i for i in rows if i not in chosen])
            take = rng.choice(pool, size=min(min_per_class_split - have, len(pool)), replace=False)
            chosen |= set(take.tolist())
            n_topup += len(take)
    idx = pa.array(sorted(chosen), type=pa.int64())
    sub = table.take(idx)
    pq.write_table(sub, dst, compression="zstd")
    return {
        "rows": sub.num_rows,
        "of": n,
        "shipped_patches": n_shipped,
        "random": n_random,
        "class_split_topup": n_topup,
    }


def build_bigearthnet(src: Path, out: Path, man: Manifest) -> None:
    s, o = src / "ben_real_mini", out / "bigearthnet"
    (o / "patches").mkdir(parents=True, exist_ok=True)
    (o / "reference").mkdir(parents=True, exist_ok=True)
    resaved = 0
    for f in sorted((s / "patches").glob("*.npz")):
        dst = o / "patches" / f.name
        buf = io.BytesIO()
        np.savez_compressed(buf, **load_npz(f))
        if buf.getbuffer().nbytes < f.stat().st_size:
            dst.write_bytes(buf.getvalue())
            enc = "numpy.savez_compressed"
            resaved += 1
        else:
            shutil.copyfile(f, dst)
            enc = "copied"
        errs = compare_npz(f, dst)
        if errs:
            raise RuntimeError(f"{dst}: {errs}")
        man.add(dst, f"ben_real_mini/patches/{f.name}", enc)
    n = len(list((o / "patches").glob("*.npz")))
    print(f"bigearthnet: {n} patches ({resaved} re-saved smaller, {n - resaved} copied unchanged)")
    for name in ("metadata.json", "metadata.csv", "label_nomenclature.json", "reference/sentinel2_bands.json"):
        shutil.copyfile(s / name, o / name)
        man.add(o / name, f"ben_real_mini/{name}", "copied")

    meta = json.loads((s / "metadata.json").read_text())
    keep = {r["patch_id"] for r in meta} | {r.get("v2_patch_id") for r in meta if r.get("v2_patch_id")}
    rng = np.random.default_rng(SEED)
    for src_name, dst_name, n_random, topup in (
        ("benv2_metadata.parquet", "benv2_metadata_sample.parquet", BEN_SAMPLE_ROWS, BEN_MIN_PER_CLASS_SPLIT),
        (
            "benv2_metadata_snow_cloud_shadow.parquet",
            "benv2_metadata_snow_cloud_shadow_sample.parquet",
            BEN_SAMPLE_SNOW_ROWS,
            0,
        ),
    ):
        dst = o / "reference" / dst_name
        stats = sample_parquet(s / "reference" / src_name, dst, keep, n_random, topup, rng)
        man.add(dst, f"ben_real_mini/reference/{src_name}", f"row sample (seed {SEED}): {stats}")
        print(f"bigearthnet: {dst_name}: {stats}")


# --------------------------------------------------------------------------------------------------
# EuroSAT
# --------------------------------------------------------------------------------------------------


def build_eurosat(src: Path, out: Path, man: Manifest, codec: str) -> None:
    s, o = src / "eurosat_ms_real", out / "eurosat"
    o.mkdir(parents=True, exist_ok=True)
    with open(s / "index.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    creation = [
        # one 64x64 tile per band (band interleave) compresses best for these 13-band tiles
        {
            "driver": "GTiff",
            **GTIFF_CODECS[codec],
            "predictor": 2,
            "interleave": "band",
            "tiled": True,
            "blockxsize": 64,
            "blockysize": 64,
        },
        {
            "driver": "GTiff",
            **GTIFF_CODECS[codec],
            "predictor": 2,
            "interleave": "pixel",
            "tiled": True,
            "blockxsize": 64,
            "blockysize": 64,
        },
    ]
    counts: dict[str, int] = {}
    for r in rows:
        rel = r["path"]
        sf, df = s / rel, o / rel
        df.parent.mkdir(parents=True, exist_ok=True)
        if r.get("sha256") and sha256_file(sf) != r["sha256"]:
            raise RuntimeError(f"{sf}: sha256 does not match the source index.csv")
        enc = reencode_tif(sf, df, creation)
        counts[enc] = counts.get(enc, 0) + 1
        r["sha256_pixels"] = sha256_pixels(read_tif(df)["array"])
        man.add(df, f"eurosat_ms_real/{rel}", enc, r["sha256_pixels"])
    with open(o / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields + ["sha256_pixels"])
        w.writeheader()
        w.writerows(rows)
    man.add(o / "index.csv", "eurosat_ms_real/index.csv", "copied + column sha256_pixels")
    print(f"eurosat: {len(rows)} tiles; encodings: {counts}")

    # fixed stratified split: per class (label_idx order), 4 test + 4 validation, the rest train
    rng = np.random.default_rng(SEED)
    split: dict[str, str] = {}
    by_class: dict[int, list[dict]] = {}
    for r in rows:
        by_class.setdefault(int(r["label_idx"]), []).append(r)
    for c in sorted(by_class):
        members = sorted(by_class[c], key=lambda r: natural_key(r["path"]))
        perm = rng.permutation(len(members))
        k = 0
        for name, m in EUROSAT_SPLIT.items():
            for j in perm[k : k + m]:
                split[members[j]["path"]] = name
            k += m
        for j in perm[k:]:
            split[members[j]["path"]] = "train"
    with open(o / "split.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "label_idx", "split"])
        for r in sorted(rows, key=lambda r: (int(r["label_idx"]), natural_key(r["path"]))):
            w.writerow([r["path"], r["label"], r["label_idx"], split[r["path"]]])
    man.add(
        o / "split.csv",
        "",
        f"generated: stratified, seed {SEED}, per class "
        f"{EUROSAT_SPLIT['test']} test / {EUROSAT_SPLIT['validation']} validation / rest train",
    )
    tally: dict[str, int] = {}
    for v in split.values():
        tally[v] = tally.get(v, 0) + 1
    print(f"eurosat: split.csv {tally}")


# --------------------------------------------------------------------------------------------------
# Major-TOM
# --------------------------------------------------------------------------------------------------


def build_majortom(src: Path, out: Path, man: Manifest, codec: str) -> None:
    s = src / "majortom_s2l2a" / MAJORTOM_CELL / MAJORTOM_PRODUCT
    o = out / "majortom" / MAJORTOM_CELL / MAJORTOM_PRODUCT
    o.mkdir(parents=True, exist_ok=True)
    creation = [
        {"driver": "GTiff", **GTIFF_CODECS[codec], "predictor": p, "tiled": True, "blockxsize": 256, "blockysize": 256}
        for p in (2, 1)
    ]
    tot_src = tot_dst = 0
    for f in sorted(s.glob("*.tif")):
        dst = o / f.name
        enc = reencode_tif(f, dst, creation)
        tot_src += f.stat().st_size
        tot_dst += dst.stat().st_size
        man.add(
            dst,
            f"majortom_s2l2a/{MAJORTOM_CELL}/{MAJORTOM_PRODUCT}/{f.name}",
            enc,
            sha256_pixels(read_tif(dst)["array"]),
        )
    print(f"majortom: {MAJORTOM_CELL}/{MAJORTOM_PRODUCT}: full scene, {tot_src} -> {tot_dst} bytes")


# --------------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------------


def _pick(items: list, sample: int | None, rng: np.random.Generator) -> list:
    if sample is None or sample >= len(items):
        return items
    return [items[i] for i in sorted(rng.choice(len(items), size=sample, replace=False))]


def verify(src: Path, out: Path, sample: int | None) -> int:
    """Compare the shipped files with the source: pixel arrays, metadata, hashes. Returns #errors."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(SEED)
    errors: list[str] = []
    checked = {"bigearthnet": 0, "eurosat": 0, "majortom": 0}

    # BigEarthNet patches + copied metadata + parquet samples
    s, o = src / "ben_real_mini", out / "bigearthnet"
    srcs = sorted((s / "patches").glob("*.npz"))
    if len(list((o / "patches").glob("*.npz"))) != len(srcs):
        errors.append("bigearthnet: patch count differs from the source")
    for f in _pick(srcs, sample, rng):
        d = o / "patches" / f.name
        errs = compare_npz(f, d) if d.is_file() else ["missing"]
        errors += [f"{d}: {e}" for e in errs]
        checked["bigearthnet"] += 1
    for name in ("metadata.json", "metadata.csv", "label_nomenclature.json", "reference/sentinel2_bands.json"):
        if sha256_file(s / name) != sha256_file(o / name):
            errors.append(f"bigearthnet/{name}: differs from the source")
    for src_name, dst_name in (
        ("benv2_metadata.parquet", "benv2_metadata_sample.parquet"),
        ("benv2_metadata_snow_cloud_shadow.parquet", "benv2_metadata_snow_cloud_shadow_sample.parquet"),
    ):
        full = pq.read_table(s / "reference" / src_name)
        part = pq.read_table(o / "reference" / dst_name)
        if full.schema != part.schema:
            errors.append(f"{dst_name}: schema differs from {src_name}")
        mask = pc.is_in(full.column("patch_id"), value_set=part.column("patch_id"))
        if not full.filter(mask).equals(part):
            errors.append(f"{dst_name}: rows differ from those of {src_name}")

    # EuroSAT
    s, o = src / "eurosat_ms_real", out / "eurosat"
    index = list(csv.DictReader(open(o / "index.csv", newline="")))
    src_index = list(csv.DictReader(open(s / "index.csv", newline="")))
    if [r["path"] for r in index] != [r["path"] for r in src_index]:
        errors.append("eurosat/index.csv: paths differ from the source index")
    for r in _pick(index, sample, rng):
        sf, df = s / r["path"], o / r["path"]
        if sha256_file(sf) != r["sha256"]:
            errors.append(f"{sf}: sha256 of the original differs from index.csv")
        errs = compare_tif(sf, df) if df.is_file() else ["missing"]
        errors += [f"{df}: {e}" for e in errs]
        if not errs and sha256_pixels(read_tif(df)["array"]) != r["sha256_pixels"]:
            errors.append(f"{df}: sha256_pixels differs from index.csv")
        checked["eurosat"] += 1
    split = list(csv.DictReader(open(o / "split.csv", newline="")))
    if sorted(r["path"] for r in split) != sorted(r["path"] for r in index):
        errors.append("eurosat/split.csv: does not cover index.csv exactly")

    # Major-TOM
    s = src / "majortom_s2l2a" / MAJORTOM_CELL / MAJORTOM_PRODUCT
    o = out / "majortom" / MAJORTOM_CELL / MAJORTOM_PRODUCT
    tifs = sorted(s.glob("*.tif"))
    if sorted(p.name for p in o.glob("*.tif")) != [p.name for p in tifs]:
        errors.append("majortom: band files differ from the source")
    for f in tifs:  # always all 13 files: the scene is one unit
        d = o / f.name
        errs = compare_tif(f, d) if d.is_file() else ["missing"]
        errors += [f"{d}: {e}" for e in errs]
        checked["majortom"] += 1

    # manifest: every shipped file listed with its current hash
    man = out / "manifest.csv"
    if man.is_file():
        rows = list(csv.DictReader(open(man, newline="")))
        listed = {r["path"] for r in rows}
        present = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.csv"}
        if listed != present:
            errors.append(
                f"manifest.csv: lists {len(listed)} files, {len(present)} present "
                f"(extra: {sorted(present - listed)[:5]}, missing: {sorted(listed - present)[:5]})"
            )
        for r in rows:
            p = out / r["path"]
            if p.is_file() and sha256_file(p) != r["sha256"]:
                errors.append(f"{r['path']}: sha256 differs from manifest.csv")
    else:
        errors.append("manifest.csv missing")

    for e in errors:
        print("VERIFY FAIL:", e)
    print(
        f"verify: compared with {src}: {checked} files pixel-checked; "
        f"{'OK' if not errors else f'{len(errors)} error(s)'}"
    )
    return len(errors)


# --------------------------------------------------------------------------------------------------


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "src", nargs="?", type=Path, default=DEFAULT_SRC, help=f"shared real-data folder (default: {DEFAULT_SRC})"
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    ap.add_argument(
        "--verify",
        action="store_true",
        help="only verify an existing build against SRC (no rebuild); exit 1 on any mismatch",
    )
    ap.add_argument(
        "--sample", type=int, default=None, help="verify only this many random files per dataset (default: all)"
    )
    ap.add_argument(
        "--codec",
        choices=sorted(GTIFF_CODECS),
        default="deflate",
        help="GeoTIFF compression (default deflate: readable by every GDAL/libtiff build)",
    )
    args = ap.parse_args(argv)
    src, out = args.src.resolve(), args.out.resolve()
    if not (src / "ben_real_mini").is_dir():
        ap.error(f"{src}: not the shared real-data folder (no ben_real_mini/)")

    if not args.verify:
        if out.exists():
            if any(out.iterdir()) and not (out / "manifest.csv").is_file():
                ap.error(f"{out}: not empty and not a previous build (no manifest.csv); refusing to delete it")
            shutil.rmtree(out)
        out.mkdir(parents=True)
        man = Manifest(out)
        build_bigearthnet(src, out, man)
        build_eurosat(src, out, man, args.codec)
        build_majortom(src, out, man, args.codec)
        man.write()
        for sub in sorted(p for p in out.iterdir() if p.is_dir()):
            print(f"size: {sub.name}: {du(sub) / 1e6:.2f} MB")
        print(f"size: {out}: {du(out) / 1e6:.2f} MB ({du(out) / 2**20:.2f} MiB)")
    return 1 if verify(src, out, args.sample) else 0


if __name__ == "__main__":
    sys.exit(main())
