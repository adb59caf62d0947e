"""Masked-atom pretraining: masking kinds, the loss going down on real images, resume, loading the
pretrained encoder into classification training, refusing a mismatched config, the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import atomizer.engine.loop as L
from atomizer.atoms.masking import MASKINGS, mask_atoms, reconstruction_target, split_atoms
from atomizer.atoms.tokens import collate, tokenize
from atomizer.cli import main
from atomizer.data.datasets import open_dataset
from atomizer.data.modalities import Modality, simulate
from atomizer.data.unlabelled import UnlabelledImages
from atomizer.engine.pretraining import PretrainConfig, pretrain
from atomizer.models.atomizer import Atomizer, AtomizerConfig
from atomizer.models.checkpoint import CheckpointError, load_encoder_weights, read_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def images():
    ds = open_dataset("eurosat", "train")
    return [ds[i]["image"] for i in (0, 15, 40)]


@pytest.fixture(scope="module")
def same_grid(images):
    """Two sets whose bands share one grid (4 bands at 20 m, 32 x 32) and a smaller one (padding)."""
    a = tokenize(simulate(images[0], Modality("a", 32, 20, ("B02", "B03", "B04", "B08"))))
    b = tokenize(simulate(images[1], Modality("b", 32, 20, ("B02", "B03", "B04", "B08"))))
    c = tokenize(simulate(images[2], Modality("c", 20, 30, ("B01", "B02", "B03", "B04", "B08", "B09"))))
    return collate([a, b, c])


@pytest.fixture(scope="module")
def mixed_grids(majortom_product_dir):
    """A Major-TOM tile at native resolution: 10, 20 and 60 m bands on their own grids."""
    tiles = UnlabelledImages([{"path": str(majortom_product_dir), "tile_px": 24, "limit": 2}])
    return collate([tokenize(tiles[0]["image"]), tokenize(tiles[1]["image"])])


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def positions(batch, s):
    x, y = batch.positions()
    return x[s], y[s]


@pytest.mark.parametrize("kind", MASKINGS)
def test_every_kind_hides_only_valid_atoms_and_keeps_some_visible(same_grid, kind):
    hidden = mask_atoms(same_grid, 0.9, kind, gen())
    assert not (hidden & ~same_grid.mask).any()  # never padding
    for s in range(same_grid.num_sets):
        n = int(same_grid.mask[s].sum())
        h = int(hidden[s].sum())
        assert 0 < h < n
        if kind in ("random", "pixel"):
            assert abs(h / n - 0.9) < 0.01
        elif kind == "block":
            assert abs(h / n - 0.9) < 0.08  # whole blocks (the last ones clipped by the image edge)


def test_random_masking_hides_round_ratio_of_atoms(same_grid):
    hidden = mask_atoms(same_grid, 0.75, "random", gen(3))
    for s in range(same_grid.num_sets):
        assert int(hidden[s].sum()) == round(0.75 * int(same_grid.mask[s].sum()))
    assert not torch.equal(hidden, mask_atoms(same_grid, 0.75, "random", gen(4)))


@pytest.mark.parametrize("batch_name", ["same_grid", "mixed_grids"])
def test_band_masking_hides_whole_bands(request, batch_name):
    batch = request.getfixturevalue(batch_name)
    for seed in range(3):
        hidden = mask_atoms(batch, 0.9, "band", gen(seed))
        for s in range(batch.num_sets):
            valid = batch.mask[s]
            bands = batch.band[s][valid].unique()
            status = {int(b): hidden[s][valid & (batch.band[s] == b)] for b in bands}
            assert all(v.all() or not v.any() for v in status.values())  # a band is hidden entirely or not at all
            n_hidden = sum(bool(v.all()) for v in status.values())
            assert 1 <= n_hidden <= len(bands) - 1


@pytest.mark.parametrize("batch_name", ["same_grid", "mixed_grids"])
def test_pixel_masking_hides_all_bands_at_a_position(request, batch_name):
    batch = request.getfixturevalue(batch_name)
    hidden = mask_atoms(batch, 0.9, "pixel", gen(1))
    for s in range(batch.num_sets):
        valid = batch.mask[s]
        x, y = positions(batch, s)
        gsd = batch.band_table[batch.band[s], 2]
        fine = valid & (gsd == gsd[valid].min())
        by_pos: dict = {}
        for xx, yy, h in zip(x[fine].tolist(), y[fine].tolist(), hidden[s][fine].tolist()):
            by_pos.setdefault((round(xx, 3), round(yy, 3)), set()).add(h)
        assert all(len(v) == 1 for v in by_pos.values())  # every band at a position shares its status
        n_bands = len(batch.band[s][fine].unique())
        assert n_bands > 1 and len(by_pos) * n_bands == int(fine.sum())
        frac = sum(v == {True} for v in by_pos.values()) / len(by_pos)
        assert abs(frac - 0.9) < 0.01


def test_block_masking_hides_contiguous_square_blocks(same_grid):
    block = 4
    hidden = mask_atoms(same_grid, 0.5, "block", gen(2), block_px=block)
    s = 0  # 32 x 32 px at 20 m: 8 x 8 blocks of 4 x 4 px
    x, y = positions(same_grid, s)
    col = torch.round((x - x.min()) / 20).long()
    row = torch.round((y.max() - y) / 20).long()
    grid = torch.zeros(32, 32, dtype=torch.long)
    cnt = torch.zeros(32, 32, dtype=torch.long)
    grid.index_put_((row, col), hidden[s].long(), accumulate=True)
    cnt.index_put_((row, col), torch.ones_like(col), accumulate=True)
    assert (cnt == 4).all()
    pix = grid / cnt
    assert ((pix == 0) | (pix == 1)).all()  # all four bands of a pixel together
    blocks = pix.reshape(8, block, 8, block).permute(0, 2, 1, 3).reshape(64, block * block)
    assert ((blocks.sum(1) == 0) | (blocks.sum(1) == block * block)).all()  # every block all-or-nothing
    assert int((blocks.sum(1) > 0).sum()) == 32  # round(0.5 * 64) blocks hidden

    # contiguous areas: unlike pixel masking at the same ratio, almost every hidden pixel has hidden neighbours
    def hidden_neighbours(p):
        pad = torch.nn.functional.pad(p[None, None], (1, 1, 1, 1))[0, 0]
        return (pad[:-2, 1:-1] + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:])[p == 1].float().mean()

    px = mask_atoms(same_grid, 0.5, "pixel", gen(2))[s]
    pix_grid = torch.zeros(32, 32).index_put_((row, col), px.float(), accumulate=True) / 4
    assert hidden_neighbours(pix) > 3.0 > hidden_neighbours(pix_grid) + 0.5


def test_split_atoms_partitions_the_valid_atoms(same_grid):
    hidden = mask_atoms(same_grid, 0.9, "random", gen())
    vis, tgt = split_atoms(same_grid, hidden, max_targets=500, generator=gen())
    for s in range(same_grid.num_sets):
        assert int(vis.mask[s].sum()) == int((same_grid.mask[s] & ~hidden[s]).sum())
        assert int(tgt.mask[s].sum()) == min(500, int(hidden[s].sum()))
    key = lambda b, s: {(int(b.band[s, i]), int(b.xi[s, i]), int(b.yi[s, i])) for i in b.mask[s].nonzero().squeeze(1)}  # noqa: E731
    for s in range(same_grid.num_sets):
        assert not key(vis, s) & key(tgt, s)
    # the targets are the hidden atoms' values on the fixed normalised scale
    t = reconstruction_target(tgt)
    assert t.abs().max() <= 4.0 and t[tgt.mask].std() > 0


def smoke_cfg(out, majortom, **kw):
    cfg = dict(
        preset="tiny",
        sources=[
            {"dataset": "eurosat", "split": "train", "limit": 6},
            {"path": str(majortom), "tile_px": 64, "limit": 2},
        ],
        steps=12,
        batch_size=4,
        lr=3e-3,
        eval_every=6,
        ckpt_every=4,
        eval_images=4,
        max_targets=256,
        device="cpu",
        seed=3,
        out_dir=str(out),
    )
    cfg.update(kw)
    return PretrainConfig.from_dict(cfg)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, majortom_product_dir):
    out = tmp_path_factory.mktemp("pre") / "run"
    summary = pretrain(smoke_cfg(out, majortom_product_dir, masking="block"), progress=False)
    return out, summary


def test_pretraining_loss_decreases_on_real_images(pretrained):
    out, summary = pretrained
    assert summary["images"] == 8 and summary["step"] == 12
    assert summary["eval_loss_end"] < 0.8 * summary["eval_loss_start"]
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == list(range(1, 13))
    assert [r["step"] for r in log if r["kind"] == "eval"] == [0, 6, 12]
    assert all(0.8 < r["hidden_fraction"] < 1.0 for r in log if r["kind"] == "train")
    payload = read_checkpoint(out / "checkpoints" / "last.pt")
    assert payload["arch"] == "atomizer" and payload["extra"]["kind"] == "pretrain" and payload["extra"]["decoder"]
    assert yaml.safe_load((out / "config.yaml").read_text())["masking"] == "block"
    with pytest.raises(FileExistsError):
        pretrain(smoke_cfg(out, ROOT), progress=False)


def test_resume_after_a_crash_matches_the_uninterrupted_run(tmp_path, majortom_product_dir, monkeypatch):
    full = pretrain(
        smoke_cfg(tmp_path / "full", majortom_product_dir, steps=6, ckpt_every=3, eval_every=0), progress=False
    )
    real_lr_at = L.lr_at

    def crash_at_step_4(step, *a):
        if step == 4:
            raise KeyboardInterrupt("simulated crash")
        return real_lr_at(step, *a)

    cfg = smoke_cfg(tmp_path / "crash", majortom_product_dir, steps=6, ckpt_every=3, eval_every=0)
    monkeypatch.setattr(L, "lr_at", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, progress=False)
    assert read_checkpoint(tmp_path / "crash" / "checkpoints" / "last.pt")["extra"]["step"] == 3
    monkeypatch.setattr(L, "lr_at", real_lr_at)
    resumed = pretrain(cfg, resume=True, progress=False)
    a = read_checkpoint(full["checkpoint"])
    b = read_checkpoint(resumed["checkpoint"])
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert all(torch.equal(a["extra"]["decoder"][k], b["extra"]["decoder"][k]) for k in a["extra"]["decoder"])
    steps = [
        json.loads(x)["step"]
        for x in (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "train"
    ]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_pretrained_encoder_initialises_classification_training(pretrained, tmp_path):
    out, _ = pretrained
    ckpt = out / "checkpoints" / "last.pt"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": "atomizer",
                "preset": "tiny",
                "dataset": "eurosat",
                "train_limit": 8,
                "val_limit": 4,
                "batch_size": 4,
                "max_steps": 1,  # a run of zero steps is refused; at lr 0 the one step changes no weight
                "lr": 0.0,
                "device": "cpu",
                "out_dir": str(tmp_path / "ft"),
            }
        )
    )
    assert main(["train", str(cfg), "--init", str(ckpt)]) == 0  # the CLI path: --init -> TrainConfig.init
    pre = read_checkpoint(ckpt)["state_dict"]
    ft = read_checkpoint(tmp_path / "ft" / "checkpoints" / "last.pt")
    assert ft["extra"]["train_config"]["init"] == str(ckpt)
    enc = [k for k in ft["state_dict"] if not k.startswith("head.")]
    assert enc and all(torch.equal(ft["state_dict"][k], pre[k]) for k in enc)
    assert ft["state_dict"]["head.fc.weight"].shape[0] == 10  # the classifier's own head (10 EuroSAT classes)
    # a fresh model differs, so the comparison above can fail
    fresh = Atomizer(AtomizerConfig.preset("tiny", num_classes=10)).state_dict()
    assert not torch.equal(fresh["latents"], pre["latents"])


def test_mismatched_config_is_refused_with_the_field_named(pretrained):
    out, _ = pretrained
    ckpt = out / "checkpoints" / "last.pt"
    model = Atomizer(AtomizerConfig.preset("tiny", num_classes=10, latent_dim=32))
    with pytest.raises(CheckpointError, match="latent_dim"):
        load_encoder_weights(model, ckpt)
    small = Atomizer(AtomizerConfig.preset("small", num_classes=10))
    with pytest.raises(CheckpointError, match="num_latents"):
        load_encoder_weights(small, ckpt)
    # runtime-only fields (class count, pruning) do not block loading; the head is never taken from pretraining
    ok = Atomizer(AtomizerConfig.preset("tiny", num_classes=3, prune_p=0.2))
    info = load_encoder_weights(ok, ckpt)
    assert info["head"] == "none" and info["loaded"] > 0


def test_config_and_sources_refuse_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match="bogus"):
        PretrainConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="masking"):
        PretrainConfig(masking="stripes")
    with pytest.raises(ValueError, match="tile_size"):
        UnlabelledImages([{"dataset": "eurosat", "tile_size": 3}])


def test_unlabelled_sources_geotiff_folder_and_scene_tiles(eurosat_paths, majortom_product_dir):
    folder = eurosat_paths[0].parent
    imgs = UnlabelledImages(
        [{"path": str(folder), "limit": 2}, {"path": str(majortom_product_dir.parent), "tile_px": 32, "limit": 3}]
    )
    assert len(imgs) == 5
    assert imgs[0]["image"]["B02"].shape == (64, 64)
    tile = imgs[2]["image"]
    assert tile["B02"].shape == (32, 32) and tile["B05"].shape == (16, 16) and tile["B01"].shape == (5, 5)
    assert imgs.ids()[2].endswith("_t0") and imgs.ids()[3].endswith("_t1")


def test_pretrain_cli_help():
    r = subprocess.run(
        [sys.executable, "-m", "atomizer", "pretrain", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "CONFIG" in r.stdout.upper() and "--resume" in r.stdout


def test_shipped_pretraining_config_parses():
    cfg = PretrainConfig.from_yaml(ROOT / "configs" / "pretrain.yaml")
    assert cfg.masking in MASKINGS and cfg.mask_ratio == 0.9 and len(cfg.sources) == 3
