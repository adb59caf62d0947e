"""S2MAE pretraining through the project's loop (``PretrainConfig.model: s2mae``): progressive pretraining
over two real sources, the checkpoint, and fine-tuning from it with ``TrainConfig.init`` (the CLI's --init)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import atomizer.engine.loop as L
from atomizer.atoms.canvas import CanvasBatch
from atomizer.cli import main
from atomizer.engine.pretraining import PretrainConfig, build_pretrain_dataset, load_pretrained_encoder, pretrain
from atomizer.models.checkpoint import CheckpointError, read_checkpoint
from atomizer.models.registry import build_model


def s2mae_cfg(out, **kw) -> PretrainConfig:
    cfg = dict(
        model="s2mae",
        preset="tiny",
        decoder_depth=1,
        decoder_dim=32,
        decoder_heads=2,
        sources=[
            {"dataset": "eurosat", "split": "train", "limit": 6},
            {"dataset": "eurosat", "split": "validation", "limit": 4},
        ],
        source_epochs=[2, 1],
        batch_size=3,
        lr=3e-3,
        eval_every=0,
        ckpt_every=100,
        eval_images=4,
        device="cpu",
        seed=2,
        out_dir=str(out),
    )
    cfg.update(kw)
    return PretrainConfig.from_dict(cfg)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("s2mae") / "run"
    return out, pretrain(s2mae_cfg(out), progress=False)


def test_progressive_pretraining_runs_the_sources_in_order(pretrained):
    out, summary = pretrained
    # source 0: 6 images, batches of 3 -> 2 steps an epoch, 2 epochs; source 1: 4 images -> 1 step, 1 epoch
    assert summary["model"] == "s2mae" and summary["step"] == 5 and summary["images"] == 10
    assert [(s["source"], s["start_step"], s["steps"]) for s in summary["stages"]] == [(0, 0, 4), (1, 4, 1)]
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in log if r["kind"] == "train"]
    assert [r["source"] for r in train] == [0, 0, 0, 0, 1]
    assert [r["epoch"] for r in train] == [0, 0, 1, 1, 2]
    assert all(0.85 < r["hidden_fraction"] < 0.95 for r in train)  # 90 % of the kept cubes hidden
    assert summary["eval_loss_end"] < summary["eval_loss_start"]
    payload = read_checkpoint(out / "checkpoints" / "last.pt")
    assert payload["arch"] == "s2mae" and payload["extra"]["kind"] == "pretrain"
    assert payload["config"]["task"] == "pretraining" and payload["config"]["decoder_depth"] == 1
    assert any(k.startswith("mae.") for k in payload["state_dict"])


def test_fine_tuning_from_the_pretrained_checkpoint_loads_the_encoder(pretrained, tmp_path):
    out, _ = pretrained
    ckpt = out / "checkpoints" / "last.pt"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": "s2mae",
                "preset": "tiny",
                "dataset": "eurosat",
                "train_limit": 4,
                "val_limit": 4,
                "batch_size": 4,
                "max_steps": 1,  # at lr 0 the one step changes no weight
                "lr": 0.0,
                "device": "cpu",
                "out_dir": str(tmp_path / "ft"),
            }
        )
    )
    assert main(["train", str(cfg), "--init", str(ckpt)]) == 0
    pre = read_checkpoint(ckpt)["state_dict"]
    ft = read_checkpoint(tmp_path / "ft" / "checkpoints" / "last.pt")
    assert ft["arch"] == "s2mae" and ft["config"]["task"] == "classification"
    enc = [k for k in ft["state_dict"] if not k.startswith("fc.")]
    assert enc and all(torch.equal(ft["state_dict"][k], pre[k]) for k in enc)
    assert ft["state_dict"]["fc.weight"].shape[0] == 10 and not any(k.startswith("mae.") for k in ft["state_dict"])
    fresh = build_model("s2mae", "tiny", num_classes=10).state_dict()  # so the comparison above can fail
    assert not torch.equal(fresh["cube_proj.weight"], pre["cube_proj.weight"])


def test_a_segmenter_initialises_from_it_and_mismatches_are_refused(pretrained):
    out, _ = pretrained
    ckpt = out / "checkpoints" / "last.pt"
    seg = build_model("s2mae", "tiny", num_classes=5, task="segmentation")
    info = load_pretrained_encoder(seg, ckpt)
    assert info["head"] == "none" and info["loaded"] > 0
    assert torch.equal(
        seg.state_dict()["layers.0.attn.to_q.weight"], read_checkpoint(ckpt)["state_dict"]["layers.0.attn.to_q.weight"]
    )
    with pytest.raises(CheckpointError, match="dim"):
        load_pretrained_encoder(build_model("s2mae", "tiny", dim=32, decoder_dim=32), ckpt)
    with pytest.raises(CheckpointError, match="s2mae"):
        load_pretrained_encoder(build_model("atomizer", "tiny", num_classes=10), ckpt)


def test_pretraining_config_checks(tmp_path):
    with pytest.raises(ValueError, match="model"):
        PretrainConfig.from_dict({"model": "mae3d"})
    with pytest.raises(ValueError, match="random"):
        PretrainConfig.from_dict({"model": "s2mae", "masking": "band"})
    with pytest.raises(ValueError, match="source_epochs"):
        PretrainConfig.from_dict({"source_epochs": [1, 1]})  # one source by default
    with pytest.raises(ValueError, match="decoder_depth"):
        pretrain(s2mae_cfg(tmp_path / "x", model_overrides={"decoder_depth": 2}), progress=False)
    assert not (tmp_path / "x").exists()  # a failed start leaves no run folder


def test_resume_after_a_crash_matches_the_uninterrupted_run(tmp_path, monkeypatch):
    kw = dict(source_epochs=None, sources=[{"dataset": "eurosat", "split": "train", "limit": 6}], steps=4, ckpt_every=2)
    full = pretrain(s2mae_cfg(tmp_path / "full", **kw), progress=False)
    real_lr_at = L.lr_at

    def crash_at_step_3(step, *a):
        if step == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_lr_at(step, *a)

    cfg = s2mae_cfg(tmp_path / "crash", **kw)
    monkeypatch.setattr(L, "lr_at", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, progress=False)
    monkeypatch.setattr(L, "lr_at", real_lr_at)
    resumed = pretrain(cfg, resume=True, progress=False)
    a, b = read_checkpoint(full["checkpoint"])["state_dict"], read_checkpoint(resumed["checkpoint"])["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_images_as_read_are_laid_on_the_default_canvas():
    cfg = s2mae_cfg("unused", modalities=None, source_epochs=None)
    data = build_pretrain_dataset(cfg)
    item = data[0]["input"]
    assert isinstance(item, CanvasBatch) and item.pixels.shape == (1, 12, 64, 64) and bool(item.present.all())
