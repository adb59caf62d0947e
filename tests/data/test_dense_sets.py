"""The manifests of the real data: the shipped ones (``data/embedded``) and those ``scripts/make_manifests.py
--generate`` writes for the dense sets that are not shipped (SpaceNet 7, FLAIR #2, from ``../shared/data``).

Every image and mask below is real (the shipped files, or the shared ones copied by the script). Where a test
writes its own manifest or card around real files (a wrong ``bands:`` list), it says so.
"""

from __future__ import annotations

import filecmp
import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio
import torch
import yaml

from atomizer.data.datasets import folds_table, open_dataset
from atomizer.data.image import image_bands
from atomizer.data.manifest import ManifestDataset, ManifestError, ManifestSummary, check_manifest
from tests.conftest import EMBEDDED, REPO_ROOT, SHARED

DENSE = EMBEDDED / "dense"
#: Shipped dense sets and their sample counts (the source manifests' rows).
SHIPPED = {"caffe": 9, "terramesh": 5}
#: Generated sets: the bands read (the file's last channel, alpha / elevation, is skipped) and that channel.
GENERATED = {"spacenet7": (["blue", "green", "red"], 4), "flair2": (["blue", "green", "nir", "red"], 5)}


def load_script() -> ModuleType:
    """``scripts/make_manifests.py`` as a module (its functions, not a subprocess)."""
    spec = importlib.util.spec_from_file_location("make_manifests", REPO_ROOT / "scripts" / "make_manifests.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def card_classes(manifest: Path) -> list[str]:
    """The class names of a mask manifest's card, in id order, without the ignore index."""
    card = yaml.safe_load(manifest.with_suffix(".yaml").read_text(encoding="utf-8"))
    return [n for i, n in sorted(card["classes"].items()) if i != card.get("ignore_index")]


# --------------------------------------------------------------------------------------------------
# (a) the shipped dense manifests
# --------------------------------------------------------------------------------------------------


def test_the_shipped_dense_sets_are_those_expected():
    assert sorted(p.parent.name for p in DENSE.glob("*/manifest.csv")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_dense_manifest_passes_the_check(name):
    manifest = DENSE / name / "manifest.csv"
    summary = check_manifest(manifest, write_folds=False)
    assert summary.samples == SHIPPED[name] and summary.task == "segmentation"
    assert summary.classes == card_classes(manifest)
    assert 0 < summary.mask_coverage["min"] <= summary.mask_coverage["max"] <= 1
    assert abs(sum(summary.class_pixels.values()) - 1) < 1e-9
    assert summary.folds == "from the manifest's fold column"
    assert not (manifest.parent / "manifest.folds.csv").exists()


# --------------------------------------------------------------------------------------------------
# (b) the shipped classification manifests read what the built-in datasets read
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "manifest", "n"), [("eurosat", "eurosat.csv", 202), ("bigearthnet", "bigearthnet.csv", 69)]
)
def test_a_shipped_classification_manifest_reads_what_the_dataset_reads(name, manifest, n):
    path = EMBEDDED / name / manifest
    assert len(ManifestDataset(path)) == n
    for split in ("train", "validation", "test"):
        ours, ref = ManifestDataset(path, split), open_dataset(name, split)
        assert ours.classes == ref.classes and ours.multilabel == ref.multilabel
        assert ours.ids() == ref.ids(), split
        torch.testing.assert_close(ours.targets(), ref.targets())
    ours = ManifestDataset(path)
    shipped = folds_table(name).set_index("id")["fold"]
    assert [int(shipped[i]) for i in ours.ids()] == [r["fold"] for r in ours.records]
    ref = open_dataset(name)
    by_id = {r["id"]: r for r in ref.records}
    r = ours.records[0]
    got, want = ours.load(r), ref.load(by_id[r["id"]])
    assert set(image_bands(want)) <= set(image_bands(got))  # the npz reader adds Sentinel-1 where present
    for b in image_bands(want):
        np.testing.assert_array_equal(got[b].values, want[b].values)


# --------------------------------------------------------------------------------------------------
# (c) the generated manifests of the sets that are not shipped
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict[str, ManifestSummary]]:
    if not (SHARED / "dense_real").is_dir():
        pytest.skip(f"no shared dense data at {SHARED / 'dense_real'}")
    out = tmp_path_factory.mktemp("dense")
    return out, load_script().generate(out, SHARED)


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_manifest_passes_the_check_without_the_channel_that_is_no_band(generated, name):
    out, summaries = generated
    manifest = out / name / "manifest.csv"
    summary = summaries[name]
    assert summary.samples == 5 and summary.task == "segmentation"
    assert summary.classes == card_classes(manifest)
    assert summary.mask_coverage == {"min": 1.0, "mean": 1.0, "max": 1.0}  # every pixel labelled, no ignore index
    bands, skipped = GENERATED[name]
    assert list(summary.bands) == bands and all(v == 5 for v in summary.bands.values())
    again = check_manifest(manifest, write_folds=False)
    assert again.lines() == summary.lines() and not (out / name / "manifest.folds.csv").exists()
    ds = ManifestDataset(manifest)
    r = ds.records[0]
    img = ds.load(r)
    assert img.attrs["channels_skipped"] == str(skipped)
    with rasterio.open(r["images"][""]) as src:
        assert src.count == skipped
        np.testing.assert_array_equal(img["red"].values, src.read(1))
        np.testing.assert_array_equal(img["blue"].values, src.read(3))


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_set_copies_the_source_files_as_they_are(generated, name):
    out, _ = generated
    src = SHARED / "dense_real" / name
    files = sorted(p.relative_to(src) for p in src.rglob("*.tif")) + [Path("README.md")]
    assert len(files) == 11
    for f in files:
        assert filecmp.cmp(src / f, out / name / f, shallow=False), f
    assert sorted(p.relative_to(out / name) for p in (out / name).rglob("*.tif")) == files[:-1]


def test_generate_refuses_data_and_a_folder_it_did_not_write(generated, tmp_path, capsys):
    mm = load_script()
    target = REPO_ROOT / "data" / "generated_dense"
    with pytest.raises(mm.GenerateError, match="inside data/"):
        mm.generate(target, SHARED)
    assert not target.exists()
    (tmp_path / "flair2").mkdir()
    (tmp_path / "flair2" / "notes.txt").write_text("someone else's\n")
    with pytest.raises(mm.GenerateError, match="not written by"):
        mm.generate(tmp_path, SHARED, names=["flair2"])
    assert (tmp_path / "flair2" / "notes.txt").is_file()
    out, _ = generated
    summaries = mm.generate(out, SHARED, names=["spacenet7"])  # its own output is rewritten
    assert summaries["spacenet7"].samples == 5
    assert capsys.readouterr().out.splitlines()[-1].endswith("manifest.csv: 5 samples, task segmentation, 2 classes")


# --------------------------------------------------------------------------------------------------
# (d) a card's band list must match the file's channels
# --------------------------------------------------------------------------------------------------


def one_sample_manifest(folder: Path, name: str, sid: str, image: str, mask: str, card: str) -> Path:
    """A hand-written one-row manifest over a real shipped sample, with the card text ``card``."""
    for rel in (image, mask):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DENSE / name / rel, folder / rel)
    manifest = folder / "one.csv"
    manifest.write_text(f"id,image,mask\n{sid},{image},{mask}\n")
    (folder / "one.yaml").write_text(card)
    return manifest


@pytest.mark.parametrize(
    ("name", "sid", "bands", "words"),
    [
        ("caffe", "sample_1632", "[HH, ~]", "has 1 channels but its band_names name 1 bands"),
        (
            "terramesh",
            "282D_485L_3_3",
            "[B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B11]",
            "has 12 channels but its band_names name 11 bands",
        ),
    ],
)
def test_a_card_band_list_of_the_wrong_length_is_refused_naming_the_row(tmp_path, name, sid, bands, words):
    image, mask = (
        (f"images/{sid}.tif", f"masks/{sid}.tif")
        if name == "caffe"
        else (f"images/{sid}_s2l2a.tif", f"masks/{sid}_lulc.tif")
    )
    sensor = "terrasarx" if name == "caffe" else "sentinel2"
    manifest = one_sample_manifest(tmp_path, name, sid, image, mask, f"sensor: {sensor}\nbands: {bands}\n")
    with pytest.raises(ManifestError) as e:
        check_manifest(manifest, write_folds=False)
    msg = str(e.value)
    assert "\n" not in msg and f"row 2 (id {sid})" in msg and words in msg, msg


def test_a_skipped_channel_of_a_shipped_file_is_not_read(tmp_path):
    """The card (written here) reads the real Sentinel-1 file's VV and skips its VH channel (``-``)."""
    sid = "282D_485L_3_3"
    manifest = one_sample_manifest(
        tmp_path,
        "terramesh",
        sid,
        f"images/{sid}_s1rtc.tif",
        f"masks/{sid}_lulc.tif",
        "sensor: sentinel1\nbands: [VV, '-']\n",
    )
    ds = ManifestDataset(manifest)
    img = ds.load(ds.records[0])
    assert image_bands(img) == ["VV"] and img.attrs["channels_skipped"] == "2"
    with rasterio.open(tmp_path / "images" / f"{sid}_s1rtc.tif") as src:
        np.testing.assert_array_equal(img["VV"].values, src.read(1))


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_the_generated_sets_modality_sets_fit_every_image_and_keep_the_protocol(generated, name):
    """``flair2_*`` / ``spacenet7_*``: every modality fits every generated image (real pixels), and the
    modality-disjoint protocol holds, except the band rule a three-band sensor cannot meet."""
    from atomizer.data.modalities import check_disjoint, check_fit, load_modalities, simulate

    out, _ = generated
    train, test = load_modalities(f"{name}_train"), load_modalities(f"{name}_test")
    problems = check_disjoint(train.modalities, test.modalities)
    assert problems == ([] if name == "flair2" else ["no test modality contains a band unseen in training"])
    ds = ManifestDataset(out / name / "manifest.csv")
    for r in ds.records:
        image = ds.load(r)
        check_fit(image, [*train, *test], name)
        for m in [*train, *test]:
            sim = simulate(image, m)
            assert all(sim[b].shape == (m.size_px, m.size_px) for b in m.bands)
    if name == "flair2":  # NIR: the band no training modality has
        assert "nir" not in {b for m in train for b in m.bands} and any("nir" in m.bands for m in test)
