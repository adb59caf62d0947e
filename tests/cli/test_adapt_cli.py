"""``atomizer adapt CONFIG``: the shipped SpectralX config runs both stages end to end on a tiny base trained
like its comment says (a few steps each), the stages' options are set with ``--set pretrain.x=`` /
``train.x=``, and a bad config, a bad override or a missing base is refused in one line."""

import json
from pathlib import Path

import pytest
import yaml

from atomizer.cli import main
from atomizer.engine.adaptation import AdaptConfig
from atomizer.engine.training import TrainConfig, train
from atomizer.models.adapters import read_adapters
from atomizer.models.checkpoint import read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "adapt_spectralx.yaml"
FAST = [
    "pretrain.steps=2",
    "pretrain.batch_size=4",
    "pretrain.eval_images=4",
    "train.epochs=1",
    "train.max_steps=2",
    "train.batch_size=4",
    "train.train_limit=8",
    "train.val_limit=4",
    "train.device=cpu",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    """A tiny base as configs/eurosat_atomizer.yaml trains it (its preset and overrides), one step long."""
    spec = yaml.safe_load((ROOT / "configs" / "eurosat_atomizer.yaml").read_text())
    out = tmp_path_factory.mktemp("base") / "run"
    cfg = TrainConfig.from_dict(
        {**spec, "epochs": 1, "max_steps": 1, "batch_size": 4, "train_limit": 8, "val_limit": 4, "device": "cpu"}
        | {"out_dir": str(out)}
    )
    return train(cfg, progress=False)["best"]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("atomizer: error: ")
    return err[0]


def test_the_shipped_config_names_the_base_eurosat_atomizer_trains():
    cfg = AdaptConfig.from_yaml(CONFIG)
    trained = yaml.safe_load((ROOT / "configs" / "eurosat_atomizer.yaml").read_text())
    assert Path(cfg.base) == Path(trained["out_dir"]) / "checkpoints" / "best.pt"
    assert cfg.train["model_overrides"] == trained["model_overrides"] and cfg.train["preset"] == trained["preset"]
    assert cfg.stage1_config().sources == [{"dataset": "bigearthnet", "split": "train"}]


def test_adapt_runs_both_stages_end_to_end(base, tmp_path, capsys):
    out = tmp_path / "adapt"
    rc = main(["adapt", str(CONFIG), "--base", base, "--out", str(out), "--set", *FAST])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    first, second = summary["stage1"], summary["stage2"]
    assert first["step"] == 2 and first["eval_loss_end"] == first["eval_loss_end"]  # finite
    assert Path(first["adapters"]).is_file() and Path(summary["best"]).is_file()
    stage1 = read_adapters(first["adapters"])["state_dict"]
    best = read_checkpoint(summary["best"])
    assert best["extra"]["adapters"]["kinds"] == ["moa", "refine"]  # the config's stage 1 + stage 2 kinds
    assert best["extra"]["adapters"]["frozen_kinds"] == ["moa"]  # freeze_stage1
    assert all((best["state_dict"][k] == v).all() for k, v in stage1.items())  # stage 1's adapters kept
    assert second["step"] == 2 and len(best["extra"]["classes"]) == 19  # BigEarthNet's 19 classes
    record = yaml.safe_load((out / "adapt.yaml").read_text())
    assert record["base"] == base and record["pretrain"]["steps"] == 2 and record["pretrain"]["mask_ratio"] == 0.9
    # a second run into the same folder is refused in one line (resume is --resume)
    assert main(["adapt", str(CONFIG), "--base", base, "--out", str(out), "--set", *FAST]) == 2
    assert "already holds an adaptation" in error_line(capsys)


@pytest.mark.parametrize(
    "config, args, message",
    [
        ({"adapters": {"kinds": ["moa"]}}, [], "base (the frozen base checkpoint) is required"),
        ({"base": "b.pt", "pretrain": {"out_dir": "x"}}, [], "pretrain may not set ['out_dir']"),
        ({"base": "b.pt", "stage3": 1}, [], "stage3"),
        ({"base": "b.pt"}, ["--set", "base.x=1"], "'base' is not a group of options"),
        ({"base": "missing/base.pt"}, [], "missing/base.pt"),
        ("- not a mapping", [], "mapping"),
    ],
)
def test_adapt_refuses_a_bad_config_in_one_line(tmp_path, capsys, config, args, message):
    path = tmp_path / "adapt.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    assert main(["adapt", str(path), "--out", str(tmp_path / "out"), *args]) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "out").exists()  # nothing written


def test_adapt_refuses_a_missing_config_file(tmp_path, capsys):
    assert main(["adapt", str(tmp_path / "nope.yaml")]) == 2
    assert "config not found" in error_line(capsys)
