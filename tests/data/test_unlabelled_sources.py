"""Pretraining sources over every unlabelled real image: each kind (dataset, manifest, band folder) yields the
files' own bands on their own grids (names, GSDs, shapes and pixels as the files hold them), BigEarthNet keeps
its Sentinel-1, a manifest source never reads labels, bad sources are refused in one line, and short pooled
and progressive pretraining runs over mixed sources complete (atomizer: every source; s2mae: the Sentinel-2
sources, a source without Sentinel-2 bands refused in one line, Sentinel-1 dropped by the canvas)."""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from atomizer.atoms.canvas import CANVAS_BANDS
from atomizer.data.image import image_bands
from atomizer.data.manifest import ManifestDataset, ManifestError
from atomizer.data.unlabelled import UnlabelledImages
from atomizer.engine.pretraining import PretrainConfig, build_pretrain_dataset, check_canvas_sources, pretrain

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = ROOT / "data" / "embedded"
SHARED = ROOT.parent / "shared" / "data"
TERRAMESH = EMBEDDED / "dense" / "terramesh" / "manifest.csv"
CAFFE = EMBEDDED / "dense" / "caffe" / "manifest.csv"
MAJORTOM = EMBEDDED / "majortom"
BEN = EMBEDDED / "bigearthnet" / "patches"


def gsds(image) -> dict[str, float]:
    return {b: float(image[b].attrs["gsd_m"]) for b in image_bands(image)}


def file_res(path: Path) -> tuple[float, int, int, int]:
    """(pixel size in m, width, height, band count) as the GeoTIFF's own header says."""
    with rasterio.open(path) as f:
        return abs(f.transform.a), f.width, f.height, f.count


def test_eurosat_dataset_source_gives_each_tile_as_its_file_holds_it():
    u = UnlabelledImages([{"dataset": "eurosat", "split": "train", "limit": 3}])
    assert len(u) == 3
    item = u[1]
    path = next(EMBEDDED.glob(f"eurosat/*/{item['id']}.tif"))
    res, w, h, count = file_res(path)
    image = item["image"]
    assert len(image_bands(image)) == count == 13 and "B10" in image_bands(image)  # L1C: every band kept
    for b, g in gsds(image).items():
        assert g == pytest.approx(res, abs=0.1) and image[b].shape == (h, w)
    with rasterio.open(path) as f:
        assert np.array_equal(np.asarray(image["B02"].values), f.read(2))  # the file's pixels, unchanged
    assert int(item["target"]) == 0


def test_bigearthnet_source_keeps_sentinel1_and_native_grids():
    u = UnlabelledImages([{"dataset": "bigearthnet"}])
    with_s1 = 0
    for i in range(len(u)):
        item = u[i]
        with np.load(BEN / f"{item['id']}.npz") as z:
            arrays = {k: z[k] for k in z.files if k != "resampled_120"}
        assert set(image_bands(item["image"])) == set(arrays)  # every band of the file, S1 included
        for b, a in arrays.items():
            da = item["image"][b]
            assert da.shape == a.shape  # native grid: 120, 60 or 20 px
            assert float(da.attrs["gsd_m"]) == pytest.approx(1200.0 / a.shape[0])  # a patch covers 1200 m
        with_s1 += "VV" in arrays
    assert with_s1 > 0 and len(u) == 69  # every patch with a split; most carry Sentinel-1
    without = UnlabelledImages([{"dataset": "bigearthnet", "s1": False, "limit": 5}])
    assert not any({"VV", "VH"} & set(image_bands(without[i]["image"])) for i in range(5))


def majortom_check(folder: Path) -> None:
    u = UnlabelledImages([{"path": str(folder), "tile_px": 64, "limit": 3}])
    product = next(p for p in folder.rglob("B02.tif")).parent
    assert len(u) == 3
    image = u[2]["image"]
    assert set(image_bands(image)) == set(CANVAS_BANDS)
    for b, g in gsds(image).items():
        res, *_ = file_res(product / f"{b}.tif")
        assert g == pytest.approx(res)  # 10, 20 or 60 m: each band on its own grid
        assert image[b].shape[0] == pytest.approx(64 * 10 / res, abs=1)  # a 640 m tile of that grid
    with rasterio.open(product / "B02.tif") as f:  # tile 2 is the third 64 px window of the first row
        assert np.array_equal(np.asarray(image["B02"].values), f.read(1)[:64, 128:192])


def test_majortom_scene_source_tiles_each_band_on_its_own_grid():
    majortom_check(MAJORTOM)


def test_second_majortom_scene_from_the_shared_data():
    folder = SHARED / "majortom_s2l2a" / "199U_1099R"
    if not folder.is_dir():
        pytest.skip("../shared/data/majortom_s2l2a (the scene that is not shipped) is not here")
    majortom_check(folder)


def manifest_check(manifest: Path, expect_bands: list[str], tile_px: int | None = 64) -> UnlabelledImages:
    src = {"manifest": str(manifest)} | ({"tile_px": tile_px} if tile_px else {})
    u = UnlabelledImages([src])
    ds = ManifestDataset(manifest)
    first = ds.records[0]
    assert u[0]["id"].startswith(first["id"])
    image = u[0]["image"]
    assert image_bands(image) == expect_bands
    res = {round(file_res(Path(p))[0], 3) for p in first["images"].values()}
    assert {round(g, 3) for g in gsds(image).values()} == res  # the files' own pixel sizes
    return u


def test_manifest_sources_read_every_image_with_its_card(tmp_path):
    # TerraMesh: two co-registered images per row merged (12 S2 bands + S1 VV/VH), 224 px -> 3 x 3 tiles
    card = yaml.safe_load((TERRAMESH.parent / "manifest.yaml").read_text())
    tm = manifest_check(TERRAMESH, card["bands"]["s2l2a"] + card["bands"]["s1rtc"])
    assert len(tm) == 5 * 9
    with rasterio.open(TERRAMESH.parent / "images" / f"{ManifestDataset(TERRAMESH).records[0]['id']}_s1rtc.tif") as f:
        assert np.allclose(np.asarray(tm[1]["image"]["VH"].values), f.read(2)[:64, 64:128], equal_nan=True)
    # CaFFe: TerraSAR-X HH at each image's own 6-6.7 m
    caffe = manifest_check(CAFFE, ["HH"], tile_px=None)
    ds = ManifestDataset(CAFFE)
    for i, r in enumerate(ds.records):
        assert float(caffe[i]["image"]["HH"].attrs["gsd_m"]) == pytest.approx(
            file_res(r["images"][""])[0], abs=1e-3
        )  # mm


def test_a_manifest_source_never_reads_labels(tmp_path):
    """The images without their masks: the labelled dataset refuses the rows, the source reads them."""
    shutil.copytree(CAFFE.parent / "images", tmp_path / "images")
    for f in ("manifest.csv", "manifest.yaml"):
        shutil.copy(CAFFE.parent / f, tmp_path / f)
    with pytest.raises(ManifestError, match="no such file"):
        ManifestDataset(tmp_path / "manifest.csv")[0]
    u = UnlabelledImages([{"manifest": str(tmp_path / "manifest.csv")}])
    assert len(u) == 9 and u.classes == ["unlabelled"]
    item = u[3]
    assert set(item) == {"image", "target", "id"} and int(item["target"]) == 0  # no mask, no label
    assert image_bands(item["image"]) == ["HH"]
    train = UnlabelledImages([{"manifest": str(CAFFE), "split": "train"}])
    assert len(train) == 5  # a split is still a manifest's split


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """FLAIR #2 and SpaceNet 7 as ``scripts/make_manifests.py --generate`` writes them (from ../shared/data)."""
    if not (SHARED / "dense_real").is_dir():
        pytest.skip("../shared/data/dense_real is not here")
    spec = importlib.util.spec_from_file_location("make_manifests", ROOT / "scripts" / "make_manifests.py")
    mm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mm)
    out = tmp_path_factory.mktemp("dense")
    mm.generate(out, SHARED)
    return out


def test_generated_dense_sets_are_sources_at_native_gsd(generated):
    flair = manifest_check(generated / "flair2" / "manifest.csv", ["red", "green", "blue", "nir"])
    assert all(g == pytest.approx(0.2) for g in gsds(flair[0]["image"]).values())
    assert len(flair) == 5 * 8 * 8  # 512 px images, 64 px tiles
    sn7 = manifest_check(generated / "spacenet7" / "manifest.csv", ["red", "green", "blue"], tile_px=None)
    assert sn7[0]["image"]["red"].shape == (512, 512)  # whole image, its own 4.78 m grid


@pytest.mark.parametrize(
    "source, message",
    [
        ({"dataset": "eurosat", "manifest": str(CAFFE)}, "exactly one of"),
        ({"split": "train"}, "exactly one of"),
        ({"manifest": str(CAFFE), "tile_px": 0}, "tile_px must be a positive integer"),
        ({"dataset": "bigearthnet", "s1": "yes"}, "s1 must be true or false"),
        ({"manifest": str(CAFFE), "labels": True}, "unknown key"),
        ({"manifest": "nowhere/manifest.csv"}, "manifest not found"),
    ],
)
def test_bad_sources_are_refused_in_one_line(source, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
        UnlabelledImages([source])
    assert "\n" not in str(e.value)


MIXED = [
    {"dataset": "eurosat", "split": "train", "limit": 3},
    {"dataset": "bigearthnet", "limit": 3},
    {"path": str(MAJORTOM), "tile_px": 32, "limit": 3},
    {"manifest": str(TERRAMESH), "tile_px": 32, "limit": 3},
    {"manifest": str(CAFFE), "tile_px": 32, "limit": 3},
]


def run_cfg(out: Path, **kw) -> PretrainConfig:
    cfg = dict(
        preset="tiny",
        sources=MIXED,
        modalities=None,
        steps=3,
        batch_size=5,
        eval_every=0,
        ckpt_every=100,
        eval_images=5,
        device="cpu",
        seed=0,
        out_dir=str(out),
    )
    return PretrainConfig.from_dict({**cfg, **kw})


def test_atomizer_pretrains_on_every_source_kind_pooled_and_progressive(tmp_path):
    pooled = pretrain(run_cfg(tmp_path / "pooled"), progress=False)
    assert pooled["step"] == 3 and pooled["images"] == 15
    assert np.isfinite(pooled["eval_loss_end"])
    prog = pretrain(run_cfg(tmp_path / "prog", source_epochs=[1, 1, 1, 1, 1], batch_size=3), progress=False)
    assert [s["source"] for s in prog["stages"]] == [0, 1, 2, 3, 4] and prog["step"] == 5


def test_s2mae_reads_the_sentinel2_sources_and_refuses_the_others(tmp_path):
    s2 = MIXED[:4]
    data = build_pretrain_dataset(run_cfg(tmp_path / "x", model="s2mae", sources=s2))
    ben = data[3]["input"]  # a BigEarthNet patch with Sentinel-1: its VV/VH are no canvas band (dropped)
    assert {"VV", "VH"} <= set(image_bands(data.base[3]["image"]))
    assert ben.pixels.shape == (1, 12, 64, 64) and bool(ben.present.all())
    out = pretrain(run_cfg(tmp_path / "s2mae", model="s2mae", sources=s2, source_epochs=[1, 1, 1, 1]), progress=False)
    assert out["model"] == "s2mae" and out["step"] == 4 and np.isfinite(out["eval_loss_end"])
    with pytest.raises(ValueError, match=r"source #4 .*caffe.* has none \(its bands: HH\)") as e:
        pretrain(run_cfg(tmp_path / "refused", model="s2mae"), progress=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["atomizer", "s2mae", "atomizer_progressive", "s2mae_progressive"])
def test_shipped_configs_name_shipped_sources_only(name):
    cfg = PretrainConfig.from_yaml(ROOT / "configs" / f"pretrain_all_{name}.yaml")
    assert cfg.modalities is None and cfg.model == name.split("_")[0]
    kinds = {k for s in cfg.sources for k in s if k in ("dataset", "manifest", "path")}
    assert kinds == ({"dataset", "manifest", "path"})
    for s in cfg.sources:
        for key in ("manifest", "path"):
            if key in s:
                assert (ROOT / s[key]).exists() and not Path(s[key]).is_absolute()
    if cfg.model == "s2mae":  # every source has Sentinel-2 bands (else refused in one line)
        check_canvas_sources(UnlabelledImages(cfg.sources))
    else:
        assert any("caffe" in str(s) for s in cfg.sources)  # the atomizer reads the SAR too
