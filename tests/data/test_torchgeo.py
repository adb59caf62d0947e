"""The TorchGeo bridge: TorchGeo datasets through our dataset protocol, the Atomizer as a TorchGeo backbone.

Two kinds of tests:

* without TorchGeo (every environment, CI included): the bridge imports without it and says how to install it;
  the adapter and the backbone on TorchGeo-style samples (``{"image": C x H x W float tensor, "label" |
  "mask"}``, what TorchGeo's datasets yield) read from our real tiles;
* with TorchGeo (``make test-torchgeo``; skipped where it is not installed): TorchGeo's OWN ``EuroSAT`` class
  reading our real EuroSAT tiles, laid out the way it expects BY THIS TEST (symlinks to the tiles and the split
  lists written from our split.csv: see :func:`torchgeo_eurosat_root`), then our training loop on
  ``dataset: torchgeo:EuroSAT`` and a Lightning Trainer on the TorchGeo task.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch

from atomizer.atoms.tokens import collate, tokenize
from atomizer.data.datasets import EuroSAT as OurEuroSAT
from atomizer.data.layouts import EUROSAT_BAND_ORDER, read_eurosat
from atomizer.data.light import LightImage
from atomizer.data.torchgeo import (
    INSTALL_HINT,
    TorchGeoBridgeError,
    TorchGeoDataset,
    TorchGeoMissingError,
    match_bands,
    open_torchgeo,
)
from atomizer.models.torchgeo import AtomizerBackbone
from tests.conftest import EMBEDDED, REPO_ROOT, SHARED, find_data

#: The canonical Sentinel-2 order, B8A after B08 (the EuroSAT files store it last), named as some TorchGeo
#: datasets name it: the adapter must match channels by name, never by position.
S2_CANONICAL = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B08A", "B09", "B10", "B11", "B12")


@pytest.fixture(scope="module")
def eurosat_root() -> Path:
    return find_data(EMBEDDED / "eurosat", SHARED / "eurosat_ms_real", pattern="split.csv")


class TilesAsTorchGeo(torch.utils.data.Dataset):
    """A map-style dataset yielding what TorchGeo's classification datasets yield, from real EuroSAT tiles:
    ``{"image": C x H x W float32, "label": int64 scalar}``, its channels reordered to :data:`S2_CANONICAL`
    (a dataset whose band order differs from the files'). No ``targets`` list: the adapter reads each label."""

    bands = S2_CANONICAL

    def __init__(self, paths: list[Path], classes: list[str]):
        self.paths, self.classes = paths, classes
        file_order = [b if b != "B8A" else "B08A" for b in EUROSAT_BAND_ORDER]
        self.order = [file_order.index(b) for b in self.bands]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        with rasterio.open(self.paths[i]) as f:
            a = f.read().astype(np.int32)  # as TorchGeo's rasterio_loader reads
        image = torch.from_numpy(a[self.order]).float()
        return {"image": image, "label": torch.tensor(self.classes.index(self.paths[i].parent.name))}


@pytest.fixture(scope="module")
def tiles(eurosat_root) -> TilesAsTorchGeo:
    paths = sorted(eurosat_root.glob("*/*_1.tif")) + sorted(eurosat_root.glob("*/*_2.tif"))  # 2 per class
    classes = sorted(p.name for p in eurosat_root.iterdir() if p.is_dir())
    return TilesAsTorchGeo(paths, classes)


# --------------------------------------------------------------------------------------------------
# Without TorchGeo
# --------------------------------------------------------------------------------------------------


def test_the_bridge_imports_without_torchgeo_and_never_imports_it():
    """``import atomizer`` and the bridge's modules leave TorchGeo unimported (here, with or without it)."""
    code = (
        "import sys, atomizer, atomizer.data.torchgeo, atomizer.models.torchgeo\n"
        "print(sorted(m for m in sys.modules if m == 'torchgeo' or m.startswith('torchgeo.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_without_torchgeo_using_the_bridge_gives_the_install_hint(monkeypatch, tmp_path):
    import atomizer.models.torchgeo as models_tg

    for name in ("torchgeo", "torchgeo.datasets", "torchgeo.trainers"):
        monkeypatch.setitem(sys.modules, name, None)  # `import torchgeo` now fails, as where it is absent
    monkeypatch.setattr(models_tg, "_TASK", None)
    with pytest.raises(TorchGeoMissingError) as e:
        open_torchgeo("torchgeo:EuroSAT", "train", tmp_path)
    msg = str(e.value)
    assert INSTALL_HINT in msg and "pip install atomizer[torchgeo]" in msg and "\n" not in msg
    assert isinstance(e.value, ImportError) and isinstance(e.value, ValueError)  # the CLI prints ValueErrors
    with pytest.raises(TorchGeoMissingError, match=r"pip install atomizer\[torchgeo\]"):
        models_tg.AtomizerClassificationTask  # noqa: B018 - the task class is made on first use


def test_a_malformed_spec_is_refused_in_one_line():
    for bad in ("EuroSAT", "torchgeo:", "torchgeo:../EuroSAT", "torchgeo:os.system"):
        with pytest.raises(TorchGeoBridgeError, match="expected 'torchgeo:<dataset class>'") as e:
            open_torchgeo(bad, "train", "anywhere")
        assert "\n" not in str(e.value)


def test_band_names_are_matched_by_name():
    assert match_bands(["B08A", "B1", "B02"], "sentinel2") == ["B8A", "B01", "B02"]
    assert match_bands(list(EUROSAT_BAND_ORDER), "sentinel2") == list(EUROSAT_BAND_ORDER)
    with pytest.raises(TorchGeoBridgeError, match=r"band 'B13' is not a band of sensor 'sentinel2'"):
        match_bands(["B02", "B13"], "sentinel2")
    with pytest.raises(TorchGeoBridgeError, match=r"\['B8A'\] twice"):
        match_bands(["B8A", "B08A"], "sentinel2")


def test_adapter_images_carry_band_names_and_the_files_values(tiles):
    """Channels in canonical order named ``B08A``: every band of every image equals our EuroSAT reader's, B8A
    included; the grids are the 10 m the tiles store; labels read from the samples."""
    ds = TorchGeoDataset(tiles, "sentinel2", gsd=10.0, name="tiles")
    assert ds.bands == [b if b != "B08A" else "B8A" for b in S2_CANONICAL]
    assert (ds.task, ds.multilabel, ds.classes, len(ds)) == ("classification", False, tiles.classes, 20)
    for i, r in enumerate(ds.records):
        path = tiles.paths[i]
        item = ds[i]
        assert item["target"].item() == tiles.classes.index(path.parent.name) and r["labels"] == [path.parent.name]
        ours = read_eurosat(path)
        assert set(item["image"].data_vars) == set(EUROSAT_BAND_ORDER)
        for b in EUROSAT_BAND_ORDER:
            da = item["image"][b]
            np.testing.assert_array_equal(da.values, ours[b].values)
            assert da.dtype == np.uint16 and da.attrs["gsd_m"] == 10.0 and da.attrs["band"] == b
            assert da.attrs["wavelength_nm"] == ours[b].attrs["wavelength_nm"]
        # the light path (the loaders') is the same image
        light, ref = ds.light_item(i)["image"], LightImage.from_xarray(item["image"])
        assert list(light.bands) == list(ref.bands) and light.attrs == ref.attrs
        for b in ref.bands:
            for field in ("values", "xs", "ys"):
                np.testing.assert_array_equal(getattr(light.bands[b], field), getattr(ref.bands[b], field))
            assert light.bands[b].dims == ref.bands[b].dims and light.bands[b].attrs == ref.bands[b].attrs
    # the same atoms as our reader gives (positions are relative to the image centre)
    a, b = tokenize(ds.load(ds.records[3])), tokenize(read_eurosat(tiles.paths[3]))
    order = [a.band_names.index(n) for n in b.band_names]
    assert sorted(a.band_names) == sorted(b.band_names)
    torch.testing.assert_close(a.band_table[order], b.band_table, equal_nan=True)  # NaN: no acquisition date
    va = a.value.view(len(order), -1)[order].reshape(1, -1)
    torch.testing.assert_close(va, b.value, rtol=0, atol=0)


def test_adapter_refuses_what_it_cannot_describe(tiles):
    with pytest.raises(TorchGeoBridgeError, match="is not a band of sensor 'landsat8'"):
        TorchGeoDataset(tiles, "landsat8")
    ds = TorchGeoDataset(tiles, "sentinel2", bands=S2_CANONICAL[:12], gsd=10.0)  # 12 names for 13 channels
    with pytest.raises(TorchGeoBridgeError, match=r"image has 13 channels but 12 band names"):
        ds.load(ds.records[0])


def test_adapter_reads_masks(tmp_path):
    """A segmentation dataset (TerraMesh's real Sentinel-2 L2A tiles and their land-cover masks, as TorchGeo
    samples): targets are the masks, the images carry the file's bands by name (12: no B10)."""
    root = find_data(EMBEDDED / "dense" / "terramesh", SHARED / "dense_real" / "terramesh", pattern="images/*.tif")
    rows = pd.read_csv(root / "manifest.csv")
    names = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    labels = ["nodata", "water", "trees", "flooded", "crops", "built", "bare", "snow", "clouds", "rangeland"]

    class Segmentation(torch.utils.data.Dataset):
        bands, classes = names, labels

        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict:
            with rasterio.open(root / rows["image_s2l2a"][i]) as f, rasterio.open(root / rows["mask"][i]) as m:
                return {"image": torch.from_numpy(f.read().astype(np.float32)), "mask": torch.from_numpy(m.read(1))}

    ds = TorchGeoDataset(Segmentation(), "sentinel2", gsd=10.0)
    assert (ds.task, ds.multilabel, ds.classes) == ("segmentation", False, labels)
    item = ds[1]
    with rasterio.open(root / rows["mask"][1]) as m, rasterio.open(root / rows["image_s2l2a"][1]) as f:
        mask, b8a = m.read(1), f.read(9)
    assert item["target"].dtype == torch.int64 and item["target"].shape == mask.shape
    np.testing.assert_array_equal(item["target"].numpy(), mask)
    np.testing.assert_array_equal(item["image"]["B8A"].values, b8a)
    assert "B10" not in item["image"] and item["image"]["B09"].attrs["gsd_m"] == 10.0


def test_backbone_atoms_equal_tokenize_and_logits_are_finite(tiles):
    """The backbone's atoms of a B x C x H x W batch are exactly :func:`collate` of :func:`tokenize` of each
    image; its logits come from the Atomizer reading them."""
    ds = TorchGeoDataset(tiles, "sentinel2", gsd=10.0)
    x = torch.stack([tiles[i]["image"] for i in (0, 5, 11)])
    net = AtomizerBackbone(S2_CANONICAL, "sentinel2", gsd=10.0, num_classes=10).eval()
    got = net.atoms(x)
    want = collate([tokenize(ds.load(ds.records[i])) for i in (0, 5, 11)])
    for field in ("value", "band", "xi", "yi", "mask", "band_table", "coord_x", "coord_y"):
        torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=0, atol=0, equal_nan=True, msg=field)
    assert got.band_names == want.band_names
    with torch.no_grad():
        logits = net(x)
        torch.testing.assert_close(logits, net.model(want))
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match=r"expected B x 13 x H x W images"):
        net(x[:, :12])


# --------------------------------------------------------------------------------------------------
# With TorchGeo: its own EuroSAT class reading our tiles
# --------------------------------------------------------------------------------------------------

#: Where TorchGeo's EuroSAT looks for the tiles under its root (``EuroSAT.base_dir``).
TORCHGEO_EUROSAT_DIR = Path("ds", "images", "remote_sensing", "otherDatasets", "sentinel_2", "tif")
TORCHGEO_SPLITS = {"train": "train", "validation": "val", "test": "test"}


@pytest.fixture(scope="module")
def tg_datasets():
    return pytest.importorskip("torchgeo.datasets")


@pytest.fixture(scope="module")
def torchgeo_eurosat_root(tmp_path_factory, eurosat_root, tg_datasets) -> Path:
    """Our real EuroSAT tiles laid out the way TorchGeo's EuroSAT expects them, WRITTEN BY THIS TEST: the tiles
    (symlinked) under ``ds/images/.../tif/<Class>/``, and the split lists ``eurosat-{train,val,test}.txt``
    from our split.csv, naming each tile as the official lists do (``<Class>_<n>.jpg``: TorchGeo reads the
    ``.tif``)."""
    root = tmp_path_factory.mktemp("torchgeo_eurosat")
    assert Path(*tg_datasets.EuroSAT.base_dir.split("/")) == TORCHGEO_EUROSAT_DIR
    split = pd.read_csv(eurosat_root / "split.csv")
    for rel in split["path"]:
        dst = root / TORCHGEO_EUROSAT_DIR / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to((eurosat_root / rel).resolve())
    for ours, theirs in TORCHGEO_SPLITS.items():
        names = [Path(p).stem + ".jpg" for p in split.loc[split["split"] == ours, "path"]]
        (root / tg_datasets.EuroSAT.split_filenames[theirs]).write_text("\n".join(names) + "\n")
    return root


def test_torchgeo_eurosat_reads_our_tiles_with_the_right_bands(torchgeo_eurosat_root, tg_datasets, eurosat_root):
    """TorchGeo's EuroSAT on our tiles: its channels are the files' (B8A last), and the adapter's images
    carry those names with values equal to our reader's; splits map (validation <-> val), labels agree."""
    theirs = tg_datasets.EuroSAT(torchgeo_eurosat_root, split="train", download=False, checksum=False)
    assert list(theirs.bands) == list(EUROSAT_BAND_ORDER)  # B8A last, as the files store it
    for split in ("train", "validation", "test"):
        ds = open_torchgeo("torchgeo:EuroSAT", split, torchgeo_eurosat_root)
        ref = OurEuroSAT(eurosat_root, split)
        assert sorted(ds.ids()) == sorted(ref.ids()) and ds.classes == ref.classes
        want = {r["id"]: r["label_idx"] for r in ref.records}
        assert all(ds.target(r).item() == want[r["id"]] for r in ds.records)
    ds = open_torchgeo("torchgeo:EuroSAT", "train", torchgeo_eurosat_root)
    paths = {r["id"]: r["path"] for r in OurEuroSAT(eurosat_root, "train").records}
    for r in ds.records[::10]:
        image, ours = ds.load(r), read_eurosat(paths[r["id"]])
        assert list(image.data_vars) == list(EUROSAT_BAND_ORDER)
        for b in EUROSAT_BAND_ORDER:
            np.testing.assert_array_equal(image[b].values, ours[b].values, err_msg=f"{r['id']} {b}")
            assert image[b].attrs["gsd_m"] == ours[b].attrs["gsd_m"] == 10.0
    # every split at once: each record knows its split
    every = open_torchgeo("torchgeo:EuroSAT", None, torchgeo_eurosat_root)
    split = pd.read_csv(eurosat_root / "split.csv")
    assert {r["id"]: r["split"] for r in every.records} == dict(
        zip(split["path"].map(lambda p: Path(p).stem), split["split"])
    )
    with pytest.raises(TorchGeoBridgeError, match=r"no 'train' split under .*never downloads"):
        open_torchgeo("torchgeo:EuroSAT", "train", torchgeo_eurosat_root / "missing")
    with pytest.raises(TorchGeoBridgeError, match="has no NonGeoDataset class 'NoSuchSet'"):
        open_torchgeo("torchgeo:NoSuchSet", "train", torchgeo_eurosat_root)
    with pytest.raises(TorchGeoBridgeError, match="needs data_root"):
        open_torchgeo("torchgeo:EuroSAT", "train", None)


def test_our_training_loop_trains_on_torchgeo_eurosat(torchgeo_eurosat_root, tmp_path):
    """``dataset: torchgeo:EuroSAT`` through :mod:`atomizer.engine.training`: a few steps, finite losses."""
    from atomizer.engine.training import TrainConfig, train

    cfg = TrainConfig(
        model="atomizer",
        preset="tiny",
        dataset="torchgeo:EuroSAT",
        data_root=str(torchgeo_eurosat_root),
        epochs=1,
        max_steps=3,
        batch_size=4,
        train_limit=12,
        val_limit=4,
        device="cpu",
        out_dir=str(tmp_path / "run"),
    )
    summary = train(cfg, progress=False)
    assert summary["step"] == 3
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("kind") == "train"]
    assert len(losses) == 3 and all(isinstance(v, float) and math.isfinite(v) for v in losses)
    assert any(r.get("kind") != "train" and math.isfinite(r.get("loss", math.nan)) for r in records)  # validated


def test_lightning_trainer_trains_the_torchgeo_task(torchgeo_eurosat_root, tg_datasets, tmp_path):
    """TorchGeo's ClassificationTask with the Atomizer as its model, one fast_dev_run through a Lightning
    Trainer on TorchGeo's EuroSAT (plain loaders: the DN the backbone expects); the loss is finite."""
    pl = pytest.importorskip("lightning.pytorch")  # comes with torchgeo
    from atomizer.models.torchgeo import AtomizerClassificationTask

    bands = tg_datasets.EuroSAT.all_band_names
    task = AtomizerClassificationTask(band_names=bands, sensor="sentinel2", gsd=10.0, num_classes=10, lr=1e-3)
    assert isinstance(task.model, AtomizerBackbone) and task.hparams["band_names"] == bands
    loader = lambda split: torch.utils.data.DataLoader(  # noqa: E731
        tg_datasets.EuroSAT(torchgeo_eurosat_root, split=split), batch_size=4, shuffle=split == "train"
    )
    trainer = pl.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    before = [p.detach().clone() for p in task.model.parameters()]
    trainer.fit(task, train_dataloaders=loader("train"), val_dataloaders=loader("val"))
    loss = trainer.callback_metrics["train_loss"]
    assert torch.isfinite(loss) and loss > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, task.model.parameters()))  # one optimiser step ran
