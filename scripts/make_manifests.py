#!/usr/bin/env python
"""Ship the per-pixel labelled (dense) data and write the manifests of everything shipped in ``data/embedded``.

Usage (from the repository root)::

    .venv/bin/python scripts/make_manifests.py [SRC]            # build, then verify everything
    .venv/bin/python scripts/make_manifests.py [SRC] --verify   # only verify what is shipped
    .venv/bin/python scripts/make_manifests.py --generate OUT [SRC]  # the sets not shipped, under OUT

``SRC`` is the shared real-data folder (default ``../shared/data`` relative to the repository root).
``--generate OUT`` (:func:`generate`) writes ``OUT/spacenet7`` and ``OUT/flair2`` (the dense sets that do not
fit the data budget): the source files copied as they are, with a manifest and card written by the same code
as the shipped sets', then checked with :func:`atomizer.data.manifest.check_manifest`; it refuses an ``OUT``
inside ``data/``. Without it, the script writes:

* ``data/embedded/dense/<set>/``: the dense sets of ``SRC/dense_real`` that fit the data budget
  (:data:`DENSE_SHIPPED`, in the priority terramesh, caffe, spacenet7, flair2): ``images/``, ``masks/``
  (every GeoTIFF re-encoded losslessly with the smallest of :func:`candidates`, read back and compared with
  its source: values, dtype, shape, CRS, geotransform, nodata, band descriptions, scales/offsets, tags and
  colour interpretation), ``README.md`` (the source's README, then what this project changed),
  ``manifest.csv`` and its card ``manifest.yaml`` (the manifest format of :mod:`atomizer.data.manifest`);
* ``data/embedded/eurosat/eurosat.csv`` + ``eurosat.yaml`` and ``data/embedded/bigearthnet/bigearthnet.csv`` +
  ``bigearthnet.yaml``: manifests over the embedded classification data, with the shipped splits and folds
  (``data/folds/<dataset>.csv``), so a manifest run and ``dataset: eurosat`` see the same samples;
* rows for every file above in the inventory ``data/embedded/manifest.csv`` (the other rows, written by
  ``scripts/build_embedded_data.py``, are kept; run this script again after that one rebuilds).

Re-running it gives the same bytes (same libraries). Pixel values are never resampled or changed; no channel
is dropped. ``--verify`` (exit status 1 on any problem) compares every shipped dense file with its source,
checks each mask shares its image's grid, opens every image with :func:`atomizer.data.readers.open_image`
and the card's sensor and bands, reads every manifest row through
:class:`atomizer.data.manifest.ManifestDataset`, checks the inventory's hashes and the size of ``data/``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
DEFAULT_SRC = (REPO_ROOT / ".." / "shared" / "data").resolve()
DATA = REPO_ROOT / "data"
EMBEDDED = DATA / "embedded"

#: ``du -sb data`` must stay at or below this (the project's budget for ``data/`` is 40 MB).
BUDGET_BYTES = 39_500_000
#: Dense sets shipped, in priority order; what does not fit stays readable from ``../shared/data/dense_real``.
DENSE_SHIPPED = ("terramesh", "caffe")
DENSE_NOT_SHIPPED = ("spacenet7", "flair2")
N_FOLDS = 5
SEED = 0
GENERATOR = "scripts/make_manifests.py"

S2_L2A_12 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
EUROSAT_FILE_ORDER = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]

#: Per dense set: the source columns renamed (``sensor`` is a manifest column: the platform is not a
#: catalogued sensor name), the card, and the README addendum.
DENSE: dict[str, dict[str, Any]] = {
    "terramesh": {
        "rename": {"sample_id": "id"},
        "card": {
            "description": (
                "TerraMesh validation samples (IBM/terramind examples): Sentinel-2 L2A (12 bands, reflectance x "
                "10000) + Sentinel-1 RTC (VV, VH in dB) on one 10 m UTM grid, 224 x 224 px; masks: the ESRI / "
                "Impact Observatory 10 m land-cover map (a model's prediction, not human annotation: weak "
                "labels). See README.md."
            ),
            "sensor": {"s2l2a": "sentinel2", "s1rtc": "sentinel1"},
            "bands": {"s2l2a": S2_L2A_12, "s1rtc": ["VV", "VH"]},
            "classes": {
                1: "water",
                2: "trees",
                3: "flooded vegetation",
                4: "crops",
                5: "built area",
                6: "bare ground",
                7: "snow / ice",
                8: "clouds",
                9: "rangeland",
            },
            "ignore_index": 0,
            "task": "segmentation",
        },
    },
    "caffe": {
        "rename": {"sample_id": "id", "sensor": "platform", "glacier_name": "glacier"},
        "card": {
            "description": (
                "CaFFe glacier zones (via GEO-Bench-2 unit-test samples): TerraSAR-X / TanDEM-X X-band amplitude "
                "(8-bit, uncalibrated), 512 x 512 px at 6-6.67 m; masks: human-drawn zones. Georeferencing "
                "reconstructed by GEO-Bench-2 (approximate). See README.md."
            ),
            "sensor": "terrasarx",
            "bands": ["HH"],
            "classes": {1: "rock", 2: "glacier", 3: "ocean / ice mélange"},
            "ignore_index": 0,
            "task": "segmentation",
        },
    },
    # Not shipped (``--generate OUT``): each file's last channel is no band, so the card skips it (``~``).
    "spacenet7": {
        "rename": {"sample_id": "id"},
        "card": {
            "description": (
                "SpaceNet 7 building footprints (via GEO-Bench-2 unit-test samples): PlanetScope visual mosaic, "
                "8-bit R, G, B + an alpha channel (constant 255, not read: `~` in bands), 512 x 512 px, EPSG:3857 "
                "4.777 m cells; masks: human-drawn building polygons rasterised (0 background, 1 building; every "
                "pixel labelled). Generated by scripts/make_manifests.py --generate (not shipped). See README.md."
            ),
            "sensor": "planetscope",
            "bands": ["red", "green", "blue", None],
            "classes": {0: "background", 1: "building"},
            "task": "segmentation",
        },
    },
    "flair2": {
        "rename": {"sample_id": "id"},
        "card": {
            "description": (
                "FLAIR #2 land cover (via GEO-Bench-2 unit-test samples): IGN aerial 8-bit R, G, B, NIR + an "
                "8-bit elevation channel (no band: not read, `~` in bands), 512 x 512 px at 0.2 m, EPSG:2154; "
                "masks: FLAIR's original class codes 1-19, every pixel labelled. Generated by "
                "scripts/make_manifests.py --generate (not shipped). See README.md."
            ),
            "sensor": "ign_aerial",
            "bands": ["red", "green", "blue", "nir", None],
            "classes": {
                1: "building",
                2: "pervious surface",
                3: "impervious surface",
                4: "bare soil",
                5: "water",
                6: "coniferous",
                7: "deciduous",
                8: "brushwood",
                9: "vineyard",
                10: "herbaceous vegetation",
                11: "agricultural land",
                12: "plowed land",
                13: "swimming pool",
                14: "snow",
                15: "clear cut",
                16: "mixed",
                17: "ligneous",
                18: "greenhouse",
                19: "other",
            },
            "task": "segmentation",
        },
    },
}

EUROSAT_CARD = {
    "description": (
        "EuroSAT-MS (202 real tiles): Sentinel-2 L1C, 13 bands, every band resampled to 10 m by the dataset's "
        "authors, 64 x 64 px. The file's band order ends with B8A (given below). Split: split.csv (seed 0); "
        "fold: data/folds/eurosat.csv (the folds of dataset: eurosat)."
    ),
    "sensor": "sentinel2",
    "bands": EUROSAT_FILE_ORDER,
    "task": "classification",
}
BEN_CARD = {
    "description": (
        "BigEarthNet-S2 (69 of the 70 embedded patches: the one without an official split is left out, as "
        "dataset: bigearthnet does): Sentinel-2 L2A bands on their native grids (npz), and Sentinel-1 VV/VH "
        "for 63 patches; labels: the 19-class nomenclature. Split: the official one of each patch's "
        "BigEarthNet version; fold: data/folds/bigearthnet.csv."
    ),
    "task": "multilabel",
}


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _load_build_helpers() -> Any:
    """``scripts/build_embedded_data.py`` as a module: the same hashing and GeoTIFF comparison."""
    spec = importlib.util.spec_from_file_location(
        "build_embedded_data", REPO_ROOT / "scripts" / "build_embedded_data.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bed = _load_build_helpers()


def rel(path: Path) -> str:
    return path.relative_to(EMBEDDED).as_posix()


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_csv(path: Path, fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


class CardDumper(yaml.SafeDumper):
    """``yaml.safe_dump`` that writes None as ``~`` (a card's skipped channel: ``bands: [red, green, blue, ~]``)."""


CardDumper.add_representer(type(None), lambda d, _: d.represent_scalar("tag:yaml.org,2002:null", "~"))


def card_header(path: Path) -> str:
    """The first line of every card this script writes (how ``--generate`` recognises its own output)."""
    return f"# Card of {path.with_suffix('.csv').name} (the manifest format of atomizer.data.manifest); written by {GENERATOR}\n"


def write_yaml(path: Path, card: dict[str, Any]) -> None:
    body = yaml.dump(card, Dumper=CardDumper, sort_keys=False, allow_unicode=True, width=110)
    write_text(path, card_header(path) + body)


def du_bytes(path: Path) -> int:
    """What ``du -sb`` prints: apparent sizes of every file, folder and link under ``path`` (``path`` included)."""
    total = os.lstat(path).st_size
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            total += os.lstat(os.path.join(root, n)).st_size
    return total


# --------------------------------------------------------------------------------------------------
# lossless GeoTIFF re-encoding
# --------------------------------------------------------------------------------------------------


def candidates(dtype: str, count: int, height: int) -> list[dict[str, Any]]:
    """Lossless creation options tried for a file: ZSTD (level 22), DEFLATE (level 12) and LZMA (preset 9),
    each with and without the horizontal (integers) or floating-point (floats) predictor, pixel and band
    interleave (multi-band files), one strip or square tiles."""
    codecs: list[dict[str, Any]] = [
        {"compress": "zstd", "zstd_level": 22},
        {"compress": "deflate", "zlevel": 12},
        {"compress": "lzma", "lzma_preset": 9},
    ]
    predictor = 3 if np.dtype(dtype).kind == "f" else 2
    layouts: list[dict[str, Any]] = [{"tiled": False, "blockysize": height}]
    layouts += [{"tiled": True, "blockxsize": t, "blockysize": t} for t in (128, 256) if t <= height]
    interleaves = ["pixel", "band"] if count > 1 else ["band"]
    out = []
    for codec in codecs:
        for pred in (1, predictor):
            for inter in interleaves:
                for lay in layouts:
                    out.append({"driver": "GTiff", **codec, "predictor": pred, "interleave": inter, **lay})
    return out


def tif_differences(src: Path, dst: Path) -> list[str]:
    """What differs between two GeoTIFFs beyond their encoding (empty: the same file for every reader)."""
    import rasterio

    errs = list(bed.compare_tif(src, dst))
    with rasterio.open(src) as a, rasterio.open(dst) as b:
        if a.tags() != b.tags():
            errs.append(f"tags {a.tags()} != {b.tags()}")
        if a.colorinterp != b.colorinterp:
            errs.append(f"colour interpretation {a.colorinterp} != {b.colorinterp}")
        if a.nodata != b.nodata:
            errs.append(f"nodata {a.nodata} != {b.nodata}")
    return errs


def encode_smallest(src: Path, dst: Path) -> str:
    """Write ``src`` to ``dst`` with the smallest lossless encoding of :func:`candidates` (or copy it when none is
    smaller); every candidate is read back and compared with the source first (:func:`tif_differences`).
    Returns the encoding kept. The re-encoder is ``scripts/build_embedded_data.py``'s."""
    import rasterio

    with rasterio.open(src) as s:
        dtype, count, height = s.dtypes[0], s.count, s.height
    dst.parent.mkdir(parents=True, exist_ok=True)
    return str(bed.reencode_tif(src, dst, candidates(dtype, count, height), compare=tif_differences))


# --------------------------------------------------------------------------------------------------
# dense sets
# --------------------------------------------------------------------------------------------------


def read_source_manifest(src: Path, name: str) -> list[dict[str, str]]:
    with open(src / "dense_real" / name / "manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def path_columns(row: dict[str, str]) -> list[str]:
    return [c for c in row if c == "image" or c.startswith("image_") or c == "mask"]


def mask_classes(mask: Path, ignore: int | None, names: dict[int, str]) -> list[str]:
    import rasterio

    with rasterio.open(mask) as m:
        values = np.unique(m.read(1)).tolist()
    return [names[v] for v in values if v != ignore and v in names]


class GenerateError(ValueError):
    """``--generate`` cannot write what was asked (one line, naming the file or folder)."""


def readme_classes(text: str) -> dict[int, str]:
    """The class table of a dense set's README, ``{id: name}``: the markdown table whose header reads
    ``| id | class |`` (or ``code``, repeated for two-column layouts), else the prose form of the masks bullet
    (``masks/...: 0 = background, 1 = building``). Empty when the README has neither."""
    found: dict[int, str] = {}
    lines = text.splitlines()
    for k, line in enumerate(lines):
        cells = [c.strip().lower() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) < 2 or len(cells) % 2 or any(c != "class" for c in cells[1::2]):
            continue
        for row in lines[k + 2 :]:
            if not row.startswith("|"):
                break
            cells = [c.strip() for c in row.strip().strip("|").split("|")]
            found |= {int(a): b.replace("**", "").strip() for a, b in zip(cells[0::2], cells[1::2]) if a.isdigit()}
        return found
    for line in lines:
        if "masks/" in line:
            for m in re.finditer(r"(?<![\w.])(\d+) = ([A-Za-z][\w /-]*?)\s*(?=[,;.]|$)", line):
                found[int(m.group(1))] = m.group(2)
    return found


def check_card_classes(name: str, card: dict[str, Any], readme: str) -> None:
    """Refuse a card whose classes (and ignore index) are not those of the set's README class table."""
    table = readme_classes(readme)
    ignore = card.get("ignore_index")
    if not table:
        raise GenerateError(f"dense_real/{name}/README.md: no class table found (| id | class | or 'N = name')")
    if ignore is not None and "ignore" not in table.get(ignore, "").lower():
        raise GenerateError(
            f"dense_real/{name}/README.md: class {ignore} is not marked ignored, the card's ignore_index"
        )
    want = {i: n for i, n in table.items() if i != ignore}
    if want != card["classes"]:
        raise GenerateError(f"{name}: card classes {card['classes']} differ from the README class table {want}")


def manifest_rows(name: str, rows: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
    """The source manifest's rows under our column names: the set's renames, ``val`` written as ``validation``;
    a metadata column that would still read as a manifest keyword (``sensor``, ``label``, ``group``, ...) is
    refused, naming it (add it to the set's ``rename``)."""
    from atomizer.data.manifest import KNOWN

    rename = DENSE[name]["rename"]
    out_rows = []
    for row in rows:
        r = {rename.get(k, k): v for k, v in row.items()}
        if r.get("split"):
            r["split"] = {"val": "validation", "valid": "validation"}.get(r["split"], r["split"])
        out_rows.append(r)
    if "id" not in out_rows[0] or "mask" not in out_rows[0]:
        raise GenerateError(f"dense_real/{name}/manifest.csv: no id (after renames) or no mask column")
    used = {"id", "mask", "split", *path_columns(out_rows[0])}
    clash = [c for c in out_rows[0] if c not in used and (c in KNOWN or c.startswith(("image", "sensor_", "sidecar_")))]
    if clash:
        raise GenerateError(
            f"dense_real/{name}/manifest.csv: column(s) {clash} clash with manifest keywords; rename them"
        )
    return out_rows


def write_dense_manifest(name: str, rows: Sequence[dict[str, str]], o: Path, readme: str) -> list[dict[str, Any]]:
    """Write ``o/manifest.csv`` and its card ``o/manifest.yaml`` for the dense set ``name`` (shipped or
    generated: one code path): ``id``, image column(s), ``mask``, ``split``, ``fold`` (5 folds, seed 0,
    stratified by each sample's rarest class present, read from the masks under ``o``), then the source's
    metadata columns. The card's classes are checked against the README's class table first. Returns the rows."""
    from atomizer.data.folds import assign_folds

    card = DENSE[name]["card"]
    check_card_classes(name, card, readme)
    out_rows = manifest_rows(name, rows)
    present = [mask_classes(o / r["mask"], card.get("ignore_index"), card["classes"]) for r in out_rows]
    folds = assign_folds([r["id"] for r in out_rows], present, k=N_FOLDS, seed=SEED)
    fold_of = dict(zip(folds["id"], folds["fold"].astype(int)))
    first = ["id", *[c for c in out_rows[0] if c.startswith("image")], "mask", "split", "fold"]
    for r in out_rows:
        r["fold"] = fold_of[r["id"]]
    fields = first + [c for c in out_rows[0] if c not in first]
    write_csv(o / "manifest.csv", fields, out_rows)
    write_yaml(o / "manifest.yaml", card)
    return out_rows


def generate(out: Path, src: Path = DEFAULT_SRC, names: Sequence[str] = DENSE_NOT_SHIPPED) -> dict[str, Any]:
    """Write the dense sets that are not shipped (SpaceNet 7, FLAIR #2) as manifest datasets under ``out``:
    ``out/<name>/`` gets the source's ``images/``, ``masks/`` and ``README.md`` copied byte for byte (no
    re-encoding), and ``manifest.csv`` + card ``manifest.yaml`` written as for the shipped sets (the card skips
    the channel that is no band: ``~``). Each manifest is then read whole by
    :func:`atomizer.data.manifest.check_manifest` (no folds file written: the manifest has a fold column) and
    the first line of its summary printed. Returns ``{name: ManifestSummary}``.

    Raises:
        GenerateError: ``out`` lies inside ``data/`` (the shipped data's budget) or inside the source;
            ``out/<name>`` exists and was not written by this script; a source path leaves its set's folder.
    """
    from atomizer.data.manifest import check_manifest

    out, src = Path(out).resolve(), Path(src).resolve()
    if out.is_relative_to(DATA.resolve()):
        raise GenerateError(f"{out}: inside data/, whose size is budgeted; generate elsewhere (e.g. build/dense)")
    if out.is_relative_to(src / "dense_real"):
        raise GenerateError(f"{out}: inside the source {src / 'dense_real'}; generate elsewhere")
    summaries: dict[str, Any] = {}
    for name in names:
        s, o = src / "dense_real" / name, out / name
        if not (s / "manifest.csv").is_file():
            raise GenerateError(f"{s}: no manifest.csv (not the shared real-data folder?)")
        if o.exists():
            card = o / "manifest.yaml"
            if not card.is_file() or not card.read_text(encoding="utf-8").startswith(card_header(card)):
                raise GenerateError(f"{o}: exists and was not written by {GENERATOR}; remove it or choose another OUT")
            shutil.rmtree(o)
        rows = read_source_manifest(src, name)
        readme = (s / "README.md").read_text(encoding="utf-8")
        check_card_classes(name, DENSE[name]["card"], readme)  # refused before anything is written
        manifest_rows(name, rows)
        for row in rows:
            for col in path_columns(row):
                sf = s / row[col]
                if not sf.resolve().is_relative_to(s.resolve()) or not sf.is_file():
                    raise GenerateError(f"dense_real/{name}/manifest.csv: {col} {row[col]!r} is no file inside {s}")
                (o / row[col]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(sf, o / row[col])
        shutil.copyfile(s / "README.md", o / "README.md")
        write_dense_manifest(name, rows, o, readme)
        summaries[name] = check_manifest(o / "manifest.csv", write_folds=False)
        print(summaries[name].lines()[0])
    return summaries


def build_dense(src: Path, name: str, inventory: dict[str, dict[str, Any]]) -> None:
    """Ship one dense set: images and masks re-encoded, README, manifest and card."""
    s, o = src / "dense_real" / name, EMBEDDED / "dense" / name
    if o.exists():
        shutil.rmtree(o)
    rows = read_source_manifest(src, name)
    tally: dict[str, int] = {}
    before = after = 0
    for row in rows:
        for col in path_columns(row):
            sf, df = s / row[col], o / row[col]
            enc = encode_smallest(sf, df)
            key = enc.split(",")[1] if enc != "copied" else enc
            tally[key] = tally.get(key, 0) + 1
            before += sf.stat().st_size
            after += df.stat().st_size
            inventory[rel(df)] = {
                "path": rel(df),
                "bytes": df.stat().st_size,
                "sha256": bed.sha256_file(df),
                "sha256_pixels": bed.sha256_pixels(bed.read_tif(df)["array"]),
                "source": f"dense_real/{name}/{row[col]}",
                "encoding": enc,
            }
    out_rows = write_dense_manifest(name, rows, o, (s / "README.md").read_text(encoding="utf-8"))
    notes = dense_facts(name, o, out_rows)
    readme = (
        (s / "README.md").read_text(encoding="utf-8").rstrip("\n")
        + "\n\n"
        + readme_addendum(name, before, after, notes)
    )
    write_text(o / "README.md", readme)
    for f, what in (
        (o / "manifest.csv", f"generated from dense_real/{name}/manifest.csv by {GENERATOR}"),
        (o / "manifest.yaml", f"written by {GENERATOR}"),
        (o / "README.md", f"dense_real/{name}/README.md + section 'In this project' ({GENERATOR})"),
    ):
        inventory[rel(f)] = {
            "path": rel(f),
            "bytes": f.stat().st_size,
            "sha256": bed.sha256_file(f),
            "sha256_pixels": "",
            "source": f"dense_real/{name}/{f.name}" if f.name != "manifest.yaml" else "",
            "encoding": what,
        }
    print(f"dense/{name}: {len(rows)} samples, {before} -> {after} bytes; encodings (codec: files) {tally}")


def dense_facts(name: str, o: Path, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Measured facts about a shipped dense set that its readers need (README bullets)."""
    import rasterio

    if name == "caffe":
        zero_labelled = zero_ignored = nonzero_ignored = total = 0
        for r in rows:
            with rasterio.open(o / r["image"]) as im, rasterio.open(o / r["mask"]) as m:
                a, k = im.read(1), m.read(1)
            zero_labelled += int(((a == 0) & (k != 0)).sum())
            zero_ignored += int(((a == 0) & (k == 0)).sum())
            nonzero_ignored += int(((a != 0) & (k == 0)).sum())
            total += a.size
        return [
            f"**DN 0 and the ignore label** (measured over the {total:,} pixels): of the pixels labelled 0 (N/A), "
            f"{zero_ignored:,} have DN 0 and {nonzero_ignored:,} another DN; but DN 0 also occurs in "
            f"{zero_labelled:,} labelled pixels (e.g. dark open water), so DN 0 is no fill value: the sensor "
            "`terrasarx` declares no nodata and the mask's `ignore_index: 0` marks the padding.",
            "**Values**: uncalibrated 8-bit amplitude; the `terrasarx` sensor maps DN linearly so that CaFFe's own "
            "grey-value mean/std land on the Atomizer's fixed SAR scaling (dB-like in range only, not sigma0). "
            "Polarisation HH is assumed (not recorded in these files).",
            "**Spatial correlation**: 6 of the 9 samples are Jakobshavn (patches of different acquisitions of one "
            "glacier front); the split keeps the test glacier (Columbia, TanDEM-X) apart, the folds do not.",
        ]
    if name == "terramesh":
        p1 = []
        for r in rows:
            with rasterio.open(o / r["image_s2l2a"]) as im:
                p1.append(int(np.percentile(im.read(2), 1)))
        return [
            "**Split**: all 5 samples are from TerraMesh's validation split (`split` = validation); train and test "
            "on them through the `fold` column (5 folds: one sample per fold, each a different location).",
            "**Sentinel-2 DN**: reflectance x 10000 with no +1000 offset, also for the 2023 sample (processing "
            f"baseline >= N0400): the 1st percentile of B02 per sample is {p1} (an unremoved offset would keep "
            "every DN above 1000), so the catalogue's `sentinel2` (dn_offset 0) applies. Only B02, B03, B04, B08 "
            "are at native 10 m (the others were nearest-upsampled by the producer, see above).",
            "**Sentinel-1**: the files describe their channels `VV_dB`, `VH_dB`, which name no catalogued band: the "
            "card's `bands` says they are `sentinel1` `VV`, `VH` (sigma0 in dB, as the catalogue's convention).",
        ]
    return []


def _plain(value: Any) -> str:
    """A card value for a README: ``{a: [x, y]}`` -> ``a: x y``."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_plain(v)}" for k, v in value.items())
    if isinstance(value, list):
        return " ".join(f"`{v}`" for v in value)
    return f"`{value}`"


def readme_addendum(name: str, before: int, after: int, notes: Sequence[str] = ()) -> str:
    card = DENSE[name]["card"]
    renamed = {k: v for k, v in DENSE[name]["rename"].items() if k != "sample_id"}
    lines = [
        "## In this project (`data/embedded/dense/" + name + "/`)",
        "",
        f"* **Files**: the same `images/` and `masks/` as the source above, every GeoTIFF re-encoded losslessly "
        f"({before:,} -> {after:,} bytes): for each file the smallest of ZSTD (level 22), DEFLATE (level 12) and "
        "LZMA (preset 9), with or without the horizontal (integer) / floating-point predictor, pixel or band "
        "interleave, one strip or 128/256 px tiles; each candidate was read back and compared with the source "
        "(pixel values, dtype, shape, CRS, geotransform, nodata, band descriptions, scales/offsets, tags, colour "
        "interpretation). The encoding kept for each file and the sha256 of its pixels are in "
        "`data/embedded/manifest.csv`. ZSTD and LZMA GeoTIFFs need a GDAL built with those codecs (the rasterio "
        "wheels and conda's GDAL are).",
        "* **Manifest** (`manifest.csv`, card `manifest.yaml`; the format of `atomizer.data.manifest`): `id`, the "
        "image column(s), `mask`, `split` (`val` written as `validation`), `fold` (5 folds, seed 0, stratified by "
        "each sample's rarest class present: `atomizer.data.folds.assign_folds`, what `atomizer dataset check` "
        "would write), then the source's metadata columns"
        + (" (renamed: " + ", ".join(f"`{k}` -> `{v}`" for k, v in renamed.items()) + ")" if renamed else "")
        + ".",
        f"* **Card**: sensor(s) {_plain(card['sensor'])}; bands {_plain(card['bands'])} (in channel order, given explicitly so that "
        "reading never depends on how the files describe their channels), classes from the class table above, `ignore_index: "
        f"{card['ignore_index']}`.",
        *(f"* {n}" for n in notes),
        f"* Rebuild and check: `.venv/bin/python {GENERATOR}` (`--verify` to check only).",
    ]
    wrapped = [textwrap.fill(x, width=115, subsequent_indent="  ") if x.startswith("* ") else x for x in lines]
    return "\n".join(wrapped) + "\n"


# --------------------------------------------------------------------------------------------------
# classification manifests
# --------------------------------------------------------------------------------------------------


def build_eurosat(inventory: dict[str, dict[str, Any]]) -> None:
    o = EMBEDDED / "eurosat"
    with open(o / "split.csv", newline="", encoding="utf-8") as f:
        split = list(csv.DictReader(f))
    with open(DATA / "folds" / "eurosat.csv", newline="", encoding="utf-8") as f:
        fold_of = {r["id"]: int(r["fold"]) for r in csv.DictReader(f)}
    classes = [lab for _, lab in sorted({(int(r["label_idx"]), r["label"]) for r in split})]
    rows = [
        {"id": Path(r["path"]).stem, "image": r["path"], "label": r["label"], "split": r["split"]}
        | {"fold": fold_of[Path(r["path"]).stem]}
        for r in split
    ]
    write_csv(o / "eurosat.csv", ["id", "image", "label", "split", "fold"], rows)
    write_yaml(o / "eurosat.yaml", {**EUROSAT_CARD, "classes": classes})
    add_generated(inventory, o / "eurosat.csv", "eurosat/split.csv + data/folds/eurosat.csv")
    add_generated(inventory, o / "eurosat.yaml", "")
    print(f"eurosat: eurosat.csv {len(rows)} tiles, {len(classes)} classes")


def build_bigearthnet(inventory: dict[str, dict[str, Any]]) -> None:
    o = EMBEDDED / "bigearthnet"
    meta = json.loads((o / "metadata.json").read_text(encoding="utf-8"))
    classes = list(json.loads((o / "label_nomenclature.json").read_text(encoding="utf-8"))["labels_19_order"])
    with open(DATA / "folds" / "bigearthnet.csv", newline="", encoding="utf-8") as f:
        fold_of = {r["id"]: int(r["fold"]) for r in csv.DictReader(f)}
    rows = []
    for m in meta:
        if not m.get("split"):  # no official split: dataset: bigearthnet leaves it out too
            continue
        labels = m["labels_19"]
        if any(lab not in classes or ";" in lab for lab in labels):
            raise RuntimeError(f"{m['patch_id']}: labels {labels} are not names of the 19-class nomenclature")
        rows.append(
            {
                "id": m["patch_id"],
                "image": f"patches/{m['patch_id']}.npz",
                "labels": ";".join(labels),
                "split": m["split"],
                "fold": fold_of[m["patch_id"]],
                "ben_version": m["ben_version"],
                "country": m.get("country") or "",
                "snow": m.get("snow"),
                "cloud_or_shadow": m.get("cloud_or_shadow"),
            }
        )
    write_csv(o / "bigearthnet.csv", list(rows[0]), rows)
    write_yaml(o / "bigearthnet.yaml", {**BEN_CARD, "classes": classes})
    add_generated(inventory, o / "bigearthnet.csv", "bigearthnet/metadata.json + data/folds/bigearthnet.csv")
    add_generated(inventory, o / "bigearthnet.yaml", "bigearthnet/label_nomenclature.json")
    print(f"bigearthnet: bigearthnet.csv {len(rows)} patches (of {len(meta)}), {len(classes)} classes")


def add_generated(inventory: dict[str, dict[str, Any]], path: Path, source: str) -> None:
    inventory[rel(path)] = {
        "path": rel(path),
        "bytes": path.stat().st_size,
        "sha256": bed.sha256_file(path),
        "sha256_pixels": "",
        "source": "",
        "encoding": f"generated by {GENERATOR}" + (f" from {source}" if source else ""),
    }


# --------------------------------------------------------------------------------------------------
# inventory
# --------------------------------------------------------------------------------------------------

OWN_FILES = (
    "eurosat/eurosat.csv",
    "eurosat/eurosat.yaml",
    "bigearthnet/bigearthnet.csv",
    "bigearthnet/bigearthnet.yaml",
)


def owned(path: str) -> bool:
    """Inventory rows this script writes (the rest belong to ``scripts/build_embedded_data.py``)."""
    return path.startswith("dense/") or path in OWN_FILES


def write_inventory(new: dict[str, dict[str, Any]]) -> None:
    man = EMBEDDED / "manifest.csv"
    with open(man, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if not owned(r["path"])]
    rows += [{k: str(v) for k, v in r.items()} for r in new.values()]
    rows.sort(key=lambda r: bed.natural_key(r["path"]))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\r\n")  # as scripts/build_embedded_data.py writes
    w.writeheader()
    w.writerows(rows)
    with open(man, "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())


# --------------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------------


def verify(src: Path) -> int:
    """Check what is shipped (see the module docstring). Returns the number of problems."""
    import rasterio

    from atomizer.data.image import image_bands
    from atomizer.data.manifest import ManifestDataset
    from atomizer.data.readers import open_image

    errors: list[str] = []
    for name in DENSE_SHIPPED:
        s, o = src / "dense_real" / name, EMBEDDED / "dense" / name
        card = DENSE[name]["card"]
        ds = ManifestDataset(o / "manifest.csv")
        if len(ds) != len(read_source_manifest(src, name)):
            errors.append(f"dense/{name}: {len(ds)} manifest rows, source has {len(read_source_manifest(src, name))}")
        for r in ds.records:
            files = [*r["images"].values(), r["mask"]]
            for f in files:
                d = tif_differences(s / f.relative_to(o), f)
                errors += [f"{rel(f)}: {e}" for e in d]
            with rasterio.open(r["mask"]) as m:
                mgrid = (m.crs, m.transform, m.shape)
            for key, img in r["images"].items():
                with rasterio.open(img) as im:
                    if (im.crs, im.transform, im.shape) != mgrid:
                        errors.append(f"{rel(r['mask'])}: not on the grid of {rel(img)}")
                sensor = card["sensor"][key] if isinstance(card["sensor"], dict) else card["sensor"]
                bands = card["bands"][key] if isinstance(card["bands"], dict) else card["bands"]
                try:
                    got = image_bands(open_image(img, sensor=sensor, band_names=bands))
                    if got != list(bands):
                        errors.append(f"{rel(img)}: open_image gave bands {got}, the card says {bands}")
                except ValueError as e:
                    errors.append(f"{rel(img)}: open_image(sensor={sensor!r}) failed: {e}")
            img = ds.load(r)
            mask = ds.mask(r, img)
            with rasterio.open(r["mask"]) as m:
                if not np.array_equal(mask, m.read(1)):
                    errors.append(f"{rel(r['mask'])}: the manifest's mask differs from the file on the image grid")
            bad = sorted(set(np.unique(mask).tolist()) - set(ds.class_ids) - {card["ignore_index"]})
            if bad:
                errors.append(f"{rel(r['mask'])}: values {bad} are no class of the card")
    for manifest, n_expected in (
        (EMBEDDED / "eurosat" / "eurosat.csv", 202),
        (EMBEDDED / "bigearthnet" / "bigearthnet.csv", 69),
    ):
        ds = ManifestDataset(manifest)
        if len(ds) != n_expected:
            errors.append(f"{rel(manifest)}: {len(ds)} rows, expected {n_expected}")
        for r in ds.records[:: max(1, len(ds) // 10)]:  # a sample of rows through the reader
            ds.load(r)
    man = EMBEDDED / "manifest.csv"
    with open(man, newline="", encoding="utf-8") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    present = {p.relative_to(EMBEDDED).as_posix() for p in EMBEDDED.rglob("*") if p.is_file()} - {"manifest.csv"}
    mine = {p for p in present if owned(p)}
    if missing := sorted(mine - set(rows)):
        errors.append(f"manifest.csv does not list {missing[:5]}")
    for p in sorted(mine & set(rows)):
        if bed.sha256_file(EMBEDDED / p) != rows[p]["sha256"]:
            errors.append(f"{p}: sha256 differs from manifest.csv")
    if stale := sorted(p for p in rows if owned(p) and p not in present):
        errors.append(f"manifest.csv lists missing files {stale[:5]}")
    size = du_bytes(DATA)
    if size > BUDGET_BYTES:
        errors.append(f"data/ is {size:,} bytes (du -sb), over the budget of {BUDGET_BYTES:,}")
    for problem in errors:
        print("VERIFY FAIL:", problem)
    print(
        f"verify: dense {list(DENSE_SHIPPED)}, eurosat, bigearthnet; data/ {size:,} bytes; "
        f"{'OK' if not errors else f'{len(errors)} problem(s)'}"
    )
    return len(errors)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "src", nargs="?", type=Path, default=DEFAULT_SRC, help=f"shared real-data folder (default {DEFAULT_SRC})"
    )
    ap.add_argument("--verify", action="store_true", help="only verify what is shipped; exit 1 on any problem")
    ap.add_argument(
        "--generate",
        metavar="OUT",
        type=Path,
        help=f"write the dense sets that are not shipped ({', '.join(DENSE_NOT_SHIPPED)}) with their manifests "
        "under OUT (not inside data/) and check them; nothing under data/ is touched",
    )
    args = ap.parse_args(argv)
    src = args.src.resolve()
    if not (src / "dense_real").is_dir():
        ap.error(f"{src}: not the shared real-data folder (no dense_real/)")
    if args.generate is not None:
        if args.verify:
            ap.error("--generate and --verify: give one")
        try:
            generate(args.generate, src)
        except ValueError as e:  # GenerateError, or a ManifestError of the check
            print(f"make_manifests.py --generate: {e}", file=sys.stderr)
            return 1
        return 0
    if not (EMBEDDED / "manifest.csv").is_file():
        ap.error(f"{EMBEDDED}: no manifest.csv; run scripts/build_embedded_data.py first")
    if not args.verify:
        inventory: dict[str, dict[str, Any]] = {}
        (EMBEDDED / "dense").mkdir(exist_ok=True)
        for name in DENSE_SHIPPED:
            build_dense(src, name, inventory)
        build_eurosat(inventory)
        build_bigearthnet(inventory)
        write_inventory(inventory)
        print(f"size: data/ {du_bytes(DATA):,} bytes (du -sb), budget {BUDGET_BYTES:,}")
    return 1 if verify(src) else 0


if __name__ == "__main__":
    sys.exit(main())
