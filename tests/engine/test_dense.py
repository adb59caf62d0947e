"""Dense prediction on real per-pixel labels (TerraMesh Sentinel-2 + Sentinel-1 with land-cover masks, the
shipped manifest): output grids in metres, window targets, the Atomizer's dense decoder trained and evaluated
(mIoU), and one checkpoint answering at three output GSDs."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
import yaml
from torchmetrics.functional.classification import multiclass_jaccard_index

from atomizer.atoms.dense import IGNORE, DenseQueries, grid_size, sample_canvas, window_target
from atomizer.data.manifest import ManifestDataset
from atomizer.engine.evaluation import evaluate_checkpoint
from atomizer.engine.inference import predict_dense_image
from atomizer.engine.metrics import confusion_per_image, segmentation_loss, segmentation_scores
from atomizer.engine.training import TrainConfig, train
from atomizer.models.atomizer import Atomizer, AtomizerConfig
from atomizer.models.checkpoint import load_trained
from tests.conftest import EMBEDDED

TERRAMESH = EMBEDDED / "dense" / "terramesh"
MANIFEST = TERRAMESH / "manifest.csv"
S2_ORDER = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


@pytest.fixture(scope="module")
def sample():
    ds = ManifestDataset(MANIFEST)
    return ds, ds[0]


def test_window_targets_are_the_mask_at_the_asked_gsd(sample):
    ds, item = sample
    mask = item["mask"]
    with rasterio.open(TERRAMESH / "masks" / f"{ds.records[0]['id']}_lulc.tif") as src:
        stored = src.read(1)
    assert mask.values.shape == stored.shape and mask.gsd == 10.0
    ids = np.asarray(ds.class_ids)
    labelled = stored != 0
    np.testing.assert_array_equal(ids[mask.values[labelled]], stored[labelled])  # index -> the stored class id
    assert (mask.values[~labelled] == IGNORE).all()
    window = (mask.left + 300.0, mask.top - 200.0, 640.0)  # 64 px at 10 m, 30 px right and 20 px down
    at10 = window_target(mask, window, 10.0)
    np.testing.assert_array_equal(at10, mask.values[20:84, 30:94])
    at20 = window_target(mask, window, 20.0)  # nearest: the 10 m pixel under each 20 m centre, never a blend
    np.testing.assert_array_equal(at20, mask.values[20:84, 30:94][1::2, 1::2])
    outside = window_target(mask, (mask.left - 100.0, mask.top, 200.0), 10.0)
    assert (outside[:, :10] == IGNORE).all() and (outside[:, 10:] != IGNORE).any()


def test_queries_and_canvas_sampling_share_one_frame():
    q = DenseQueries.grids([4, 2], [10.0, 20.0])
    assert q.valid.sum(1).tolist() == [16, 4] and q.shape.tolist() == [[4, 4], [2, 2]]
    assert q.x[0, :4].tolist() == [-15.0, -5.0, 5.0, 15.0] and q.y[0, ::4].tolist() == [15.0, 5.0, -5.0, -15.0]
    field = torch.arange(16.0).reshape(1, 1, 4, 4).expand(2, 1, 4, 4)
    got = sample_canvas(field, 40.0, q)  # a 40 m canvas of 4 px read at its own pixel centres: itself
    np.testing.assert_allclose(q.unflatten(got, 0)[..., 0].numpy(), field[0, 0].numpy())
    assert grid_size(640.0, 30.0) == 21 and grid_size(5.0, 20.0) == 1


def test_segmentation_scores_equal_torchmetrics_on_real_masks():
    """Two real masks, one read as the 'prediction' of the other: IoU from per-image confusion matrices."""
    with (
        rasterio.open(TERRAMESH / "masks" / "282D_485L_3_3_lulc.tif") as a,
        rasterio.open(TERRAMESH / "masks" / "637U_59R_1_3_lulc.tif") as b,
    ):
        truth, pred = torch.from_numpy(a.read(1).astype(np.int64)), torch.from_numpy(b.read(1).astype(np.int64))
    c = 10
    target = torch.where(truth == 0, torch.tensor(IGNORE), truth).reshape(1, -1)
    logits = torch.nn.functional.one_hot(pred.reshape(1, -1), c).float()
    conf = confusion_per_image(logits, target)
    ref = multiclass_jaccard_index(
        pred.reshape(-1), target.reshape(-1), num_classes=c, ignore_index=IGNORE, average=None
    )
    scores = segmentation_scores(conf)
    union = conf[0].sum(0) + conf[0].sum(1) - conf[0].diagonal()
    assert np.isclose(scores["miou"], 100 * float(ref[union > 0].mean()))
    assert np.isclose(scores["overall_accuracy"], 100 * float((pred.reshape(-1) == target).float()[target >= 0].mean()))


def test_loss_leaves_ignored_pixels_out_and_takes_class_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 3, requires_grad=True)
    target = torch.tensor([[0, 1, 2, IGNORE, IGNORE, 1], [2, 2, IGNORE, 0, 1, 0]])
    loss = segmentation_loss(logits, target)
    kept = target != IGNORE
    ref = torch.nn.functional.cross_entropy(logits[kept], target[kept])
    assert torch.isclose(loss, ref)
    assert not torch.isclose(segmentation_loss(logits, target, torch.tensor([1.0, 5.0, 1.0])), loss)
    empty = segmentation_loss(logits, torch.full_like(target, IGNORE))
    empty.backward()
    assert float(empty.detach()) == 0.0 and logits.grad is not None


def test_a_classification_atomizer_has_no_dense_decoder():
    net = Atomizer(AtomizerConfig.preset("tiny", num_classes=3))
    with pytest.raises(ValueError, match="no dense decoder"):
        net.decode(torch.zeros(1, 4, net.cfg.latent_dim), DenseQueries.grids([2], 10.0))


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "run"
    cfg = TrainConfig.from_dict(
        {
            "model": "atomizer",
            "preset": "tiny",
            "dataset": str(MANIFEST),
            "fold": 0,
            "train_modalities": "terramesh_train",
            "test_modalities": "terramesh_test",
            "epochs": 3,
            "batch_size": 2,
            "device": "cpu",
            "out_dir": str(out),
        }
    )
    return out, train(cfg, progress=False)


def test_a_mask_manifest_trains_a_segmentation_atomizer(seg_run):
    out, summary = seg_run
    assert np.isfinite(summary["best_val_miou"]) and "best_val_macro_map" not in summary
    trained = load_trained(out / "checkpoints" / "best.pt")
    assert trained.extra["task"] == "segmentation" and trained.model.cfg.task == "segmentation"
    assert trained.classes == ManifestDataset(MANIFEST).classes
    assert all(not p.requires_grad for p in trained.model.head.parameters())  # the pooling head is not trained


def test_evaluate_reports_miou_on_unseen_modalities_on_a_grid_fixed_in_metres(seg_run):
    out, _ = seg_run
    res, preds = evaluate_checkpoint(out / "checkpoints" / "best.pt", "terramesh_test", predictions=True)
    assert list(res.metric.values) == ["miou", "overall_accuracy"] and res.sizes["modality"] == 6
    assert np.isfinite(res["score"].values).all() and (res["score"].values >= 0).all()
    conf = preds["confusion"]  # (modality, image, true, predicted): the test fold's one image
    assert conf.sizes["image"] == 1 and (conf.values >= 0).all()
    labelled = conf.sum(("true", "predicted")).values[:, 0]
    # the same metres for every modality: T1/T2 (the full 2240 m tile) score 224 x 224 grids at 10 m
    ds = ManifestDataset(MANIFEST)
    rid = str(conf.image.values[0])
    mask = ds[ds.ids().index(rid)]["mask"]
    assert labelled[0] == labelled[1] == int((mask.values >= 0).sum())


def test_one_checkpoint_answers_at_three_output_gsds(seg_run):
    out, _ = seg_run
    image = TERRAMESH / "images" / "282D_485L_3_3_s2l2a.tif"
    with rasterio.open(image) as src:
        bounds, crs = src.bounds, src.crs
    maps = {
        g: predict_dense_image(out / "checkpoints" / "best.pt", image, g, sensor="sentinel2", band_names=S2_ORDER)
        for g in (5.0, 10.0, 20.0)
    }
    for g, m in maps.items():
        n = int(round(2240 / g))
        assert m["probability"].shape == (9, n, n) and m["label"].shape == (n, n)
        assert np.isclose(float(m.x[0]), bounds.left + g / 2) and np.isclose(float(m.y[0]), bounds.top - g / 2)
        assert rasterio.crs.CRS.from_wkt(m.attrs["crs"]) == crs
        np.testing.assert_allclose(m["probability"].sum("class").values, 1.0, atol=1e-4)
    # classes agree between GSDs over uniform areas: 2 x 2 blocks of one class at 10 m vs the 20 m answer
    a10, a20 = maps[10.0]["label"].values, maps[20.0]["label"].values
    blocks = a10.reshape(112, 2, 112, 2).transpose(0, 2, 1, 3).reshape(112, 112, 4)
    uniform = (blocks == blocks[..., :1]).all(-1)
    assert uniform.mean() > 0.5
    assert (blocks[..., 0][uniform] == a20[uniform]).mean() > 0.75


def test_map_at_an_output_gsd_writes_per_pixel_classes(seg_run, tmp_path, majortom_product_dir):
    """``atomizer map --gsd``: a crop of the real Major-TOM scene (a band folder the test writes, pixels real)
    mapped by the segmentation checkpoint at 10 m and 20 m: the scene's CRS and bounds, one answer per pixel."""
    from atomizer.cli import main
    from tests.data import product_fixtures as fx

    scene = tmp_path / "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419"
    for band in fx.NATIVE:
        data, prof = fx.crop(majortom_product_dir, band, extent_m=1920)
        fx.write_raster(scene / f"{band}.tif", data, prof)
    out, _ = seg_run
    maps = {}
    for g in (10, 20):
        path = tmp_path / f"map{g}.tif"
        args = ["map", str(out / "checkpoints" / "best.pt"), str(scene), "--out", str(path), "--gsd", str(g)]
        assert main([*args, "--window-m", "960", "--quiet"]) == 0
        with rasterio.open(path) as src, rasterio.open(scene / "B02.tif") as ref:
            assert src.shape == (1920 // g, 1920 // g) and src.count == 10 and src.crs == ref.crs
            assert np.isclose(src.transform.a, g) and np.isclose(src.transform.c, ref.bounds.left)
            assert np.isclose(src.transform.f, ref.bounds.top) and src.tags()["per_pixel"] == "True"
            maps[g] = src.read()
    probs, label = maps[10][:9], maps[10][9]
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    assert len(np.unique(probs[:, :96, :96].reshape(9, -1), axis=1).T) > 1  # per pixel, not one answer per window
    blocks = label.reshape(96, 2, 96, 2).transpose(0, 2, 1, 3).reshape(96, 96, 4)
    uniform = (blocks == blocks[..., :1]).all(-1)
    assert (blocks[..., 0][uniform] == maps[20][9][uniform]).mean() > 0.75


def test_a_store_of_segmentation_runs_gives_miou_with_a_bootstrap_ci(seg_run, tmp_path):
    """The segmentation Atomizer cross-validated over the 5 folds of the TerraMesh manifest (one test image
    each; fold 0 is the module's run, folds 1-4 train one epoch) in a results store: per-image confusion
    matrices give each run's mIoU and, the folds pooled, a 95 % bootstrap CI over the 5 test images, as for
    classification (``atomizer results STORE --metric miou``)."""
    import shutil

    from atomizer.cli import main
    from atomizer.engine.evaluation import save_results
    from atomizer.experiments.steps import run_path
    from atomizer.results.stats import metric_values, summarize
    from atomizer.results.store import collect_predictions

    out, _ = seg_run
    store = tmp_path / "store"
    for fold in range(5):
        run = run_path(store, "atomizer", 0, fold)
        run.parent.mkdir(parents=True, exist_ok=True)
        if fold == 0:
            shutil.copytree(out, run)
        else:
            cfg = yaml.safe_load((out / "config.yaml").read_text()) | {"fold": fold, "out_dir": str(run), "epochs": 1}
            train(TrainConfig.from_dict(cfg), progress=False)
        res, preds = evaluate_checkpoint(run / "checkpoints" / "best.pt", "terramesh_test", predictions=True)
        save_results(preds, run / "predictions.nc", records=False)
        save_results(res, run / "results.nc")
    collected = collect_predictions(store)
    assert collected.attrs["task"] == "segmentation" and collected.sizes["class"] == 81  # 9 x 9 per image
    assert collected.sizes["image"] == 5 and collected.attrs["folds"] == 5
    conf = collected["score"].sel(model="atomizer", modality="T1").values[0]  # (5 images, 81)
    pooled = segmentation_scores(torch.from_numpy(conf.reshape(5, 9, 9)))["miou"]
    assert np.isclose(float(metric_values(conf, np.zeros_like(conf), "miou")), pooled)
    summary = summarize(collected, "miou", n_resamples=200)
    assert len(summary) == 6 and (summary["images"] == 5).all()
    t1 = summary[summary["modality"] == "T1"].iloc[0]
    assert np.isclose(t1["mean"], pooled) and t1["ci_low"] <= t1["mean"] <= t1["ci_high"]
    assert main(["results", str(store), "--metric", "miou", "--resamples", "200"]) == 0
    from atomizer.dashboard.results import ResultsView  # the Results tab: mIoU with its CIs

    view = ResultsView(root=str(store), resamples=200)
    view.__panel__()
    assert view.metric == "miou" and set(view.summary()["metric"]) == {"miou"}
    assert "best_val_miou" in view.runs_view().object.columns


def test_the_resnet_trains_as_a_segmentation_model_under_the_same_protocol(tmp_path):
    """The ResNet baseline with its U-Net decoder, on the same manifest, folds and modalities (its canvas:
    the modality set's source, 224 px at 10 m), scored on the same 10 m grid."""
    cfg = TrainConfig.from_dict(
        {
            "model": "resnet",
            "preset": "tiny",
            "dataset": str(MANIFEST),
            "fold": 0,
            "train_modalities": "terramesh_train",
            "test_modalities": "terramesh_test",
            "epochs": 1,
            "batch_size": 2,
            "device": "cpu",
            "out_dir": str(tmp_path / "resnet"),
        }
    )
    summary = train(cfg, progress=False)
    assert np.isfinite(summary["best_val_miou"])
    res, preds = evaluate_checkpoint(
        tmp_path / "resnet" / "checkpoints" / "best.pt", "terramesh_test", predictions=True
    )
    assert list(res.model.values) == ["resnet"] and np.isfinite(res["score"].values).all()
    labelled = preds["confusion"].sum(("true", "predicted")).values[:, 0]
    assert labelled[0] == labelled[1] > 0  # the same 10 m grid as the Atomizer's, whatever the modality


def test_the_shipped_dense_config_is_a_segmentation_run_on_the_shipped_manifest():
    from atomizer.data.datasets import open_dataset
    from atomizer.engine.training import resolve_task
    from tests.conftest import REPO_ROOT

    cfg = TrainConfig.from_yaml(REPO_ROOT / "configs" / "terramesh_atomizer.yaml")
    ds = open_dataset(str(REPO_ROOT / cfg.dataset), cfg.train_split, fold=cfg.fold)
    assert resolve_task(cfg, ds) == "segmentation" and len(ds) == 3  # 5 folds: 3 training tiles
    with pytest.raises(ValueError, match="needs a dataset with masks"):
        resolve_task(TrainConfig.from_dict({"task": "segmentation"}), open_dataset("eurosat", "train"))


def test_the_maps_tab_builds_a_per_pixel_map_at_the_chosen_gsd(seg_run, tmp_path, majortom_product_dir):
    """The dashboard's Maps tab with a segmentation checkpoint and an output GSD: a class per 20 m pixel over
    a real Major-TOM crop (a band folder the test writes), drawn over the RGB composite."""
    import holoviews as hv

    from atomizer.dashboard.maps import MapView
    from tests.data import product_fixtures as fx

    scene = tmp_path / "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419"
    for band in fx.NATIVE:
        data, prof = fx.crop(majortom_product_dir, band, extent_m=1920)
        fx.write_raster(scene / f"{band}.tif", data, prof)
    out, _ = seg_run
    view = MapView(
        checkpoint=str(out / "checkpoints" / "best.pt"),
        scene=str(scene),
        window_m=960.0,
        gsd_m=20.0,
        cache_dir=str(tmp_path / "maps"),
    )
    path = view.build(blocking=True)
    assert path is not None and path.exists(), view.status
    data = view._map[0]
    assert data.shape == (10, 96, 96)  # 9 classes + argmax, 1,920 m at 20 m
    assert len(np.unique(data[-1, :48, :48])) > 1 or len(np.unique(data[0, :48, :48])) > 1  # per pixel
    assert isinstance(view.plot(), hv.Overlay)
    view.gsd_m = 40.0  # another GSD is another cached map
    assert view.target() != path


def test_augmented_windows_keep_each_pixels_label():
    """Flips, rotations and crops of a training window move its segmentation target with its pixels: for a
    real TerraMesh window at 10 m (the mask's grid), the dihedral move that turns the plain window's B02 into
    the augmented one's, found from the pixels, turns the plain target into the augmented target."""
    from atomizer.atoms.tokens import AtomBatch
    from atomizer.data.augment import AugmentConfig
    from atomizer.data.modalities import Modality
    from atomizer.engine.loaders import ModalityDataset

    base = ManifestDataset(MANIFEST)
    m = Modality("w", 64, 10.0, ("B02", "B03", "B04", "B08"))
    plain = ModalityDataset(base, [m], input_type=AtomBatch, dense=True, seed=3)
    moved = ModalityDataset(base, [m], input_type=AtomBatch, dense=True, seed=3, augment=AugmentConfig())
    moves = [lambda a, k=k, f=f: np.rot90(a[:, ::-1] if f else a, k) for k in range(4) for f in (0, 1)]
    seen = set()
    for i in range(len(base)):
        item = moved.item(i)
        img_plain, img_moved = plain.simulated(i, item), moved.simulated(i, item)
        b_plain, b_moved = (
            im["B02"].values if hasattr(im, "data_vars") else im.bands["B02"].values for im in (img_plain, img_moved)
        )
        t_plain = plain[i]["target"].numpy()
        t_moved = moved[i]["target"].numpy()
        found = [j for j, f in enumerate(moves) if np.array_equal(f(b_plain), b_moved)]
        assert found, "the augmented window is a dihedral move of the plain one"
        assert any(np.array_equal(moves[j](t_plain), t_moved) for j in found)
        seen.update(found)
    assert len(seen) > 1  # some windows were really moved


def test_windows_per_image_draws_several_random_windows_of_each_tile_an_epoch():
    """A few large tiles give many training windows an epoch: item j is tile j // k, each with its own random
    window and modality; its target is the mask under that window."""
    from atomizer.atoms.tokens import AtomBatch
    from atomizer.data.modalities import Modality
    from atomizer.engine.loaders import ModalityDataset

    base = ManifestDataset(MANIFEST)
    mods = [Modality("a", 32, 10.0, ("B02", "B04")), Modality("b", 16, 20.0, ("B03", "VV"))]
    k = 4
    ds = ModalityDataset(
        base, mods, np.arange(len(base) * k) % 2, AtomBatch, random_window=True, dense=True, windows_per_image=k
    )
    assert len(ds) == len(base) * k
    items = [ds[j] for j in range(2 * k)]
    assert [it["id"] for it in items] == [base.ids()[0]] * k + [base.ids()[1]] * k
    assert [it["modality"] for it in items] == [0, 1] * k
    windows = {tuple(ds.simulated(j).attrs["window_m"]) for j in range(k)}
    assert len(windows) == k  # k different windows of one tile
    for j in range(k):
        window = ds.simulated(j).attrs["window_m"]
        np.testing.assert_array_equal(items[j]["target"].numpy(), window_target(base[0]["mask"], window, 10.0))
    with pytest.raises(ValueError, match="windows_per_image must be >= 1"):
        ModalityDataset(base, mods, windows_per_image=0)
    with pytest.raises(ValueError, match="windows_per_image must be >= 1"):
        TrainConfig.from_dict({"windows_per_image": 0})


def test_training_scores_a_random_subset_of_each_windows_pixels():
    """dense_train_queries: each training window scores at most N of its output pixels, drawn as a pure function
    of (seed, epoch, index); the collated queries sit exactly where those pixels are, with their own labels."""
    from atomizer.atoms.tokens import AtomBatch
    from atomizer.data.modalities import Modality
    from atomizer.engine.loaders import ModalityDataset, collate_items

    base = ManifestDataset(MANIFEST)
    mods = [Modality("a", 32, 10.0, ("B02", "B04")), Modality("b", 8, 20.0, ("B03", "VV"))]
    ds = ModalityDataset(
        base, mods, np.arange(len(base)) % 2, AtomBatch, random_window=True, dense=True, max_queries=300
    )
    items = [ds[0], ds[1]]
    assert len(items[0]["query_index"]) == 300 and "query_index" not in items[1]  # 32 x 32 > 300 >= 16 x 16
    np.testing.assert_array_equal(ds[0]["query_index"].numpy(), items[0]["query_index"].numpy())  # reproducible
    assert not np.array_equal(ds[(1, 0)]["query_index"].numpy(), items[0]["query_index"].numpy())  # another epoch
    batch = collate_items(items)
    full = DenseQueries.grids([32, 16], [10.0, 20.0])
    q, t = batch["queries"], batch["target"]
    assert q.x.shape == (2, 300) and q.valid.sum(1).tolist() == [300, 256]
    p = items[0]["query_index"]
    torch.testing.assert_close(q.x[0, :300], full.x[0, p])
    torch.testing.assert_close(q.y[0, :300], full.y[0, p])
    torch.testing.assert_close(t[0, :300], items[0]["target"].reshape(-1)[p])
    torch.testing.assert_close(t[1, :256], items[1]["target"].reshape(-1))
    assert (t[1, 256:] == IGNORE).all()
    with pytest.raises(ValueError, match="dense_train_queries must be >= 1"):
        TrainConfig.from_dict({"dense_train_queries": 0})
