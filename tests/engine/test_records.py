"""Records are never duplicated or rewritten: resume after a kill before the first checkpoint, a failed
start, resuming with other settings, non-finite numbers in JSON (real tiny runs on the embedded EuroSAT)."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_TRAIN

import atomizer.engine.loop as L
from atomizer.core.config import ConfigError
from atomizer.engine.training import TrainConfig, train

BASE = {**TINY_TRAIN, "max_steps": 4, "ckpt_every": 50, "train_limit": 16, "seed": 1}


def steps(run) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x]


def test_resume_after_a_kill_before_the_first_checkpoint_logs_each_step_once(tmp_path, monkeypatch):
    cfg = TrainConfig.from_dict({**BASE, "out_dir": str(tmp_path / "r")})
    real = L.lr_at

    def crash(step, *a):
        if step == 3:
            raise KeyboardInterrupt("killed")
        return real(step, *a)

    monkeypatch.setattr(L, "lr_at", crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    assert steps(tmp_path / "r") == [1, 2, 3] and not (tmp_path / "r" / "checkpoints" / "last.pt").exists()
    monkeypatch.setattr(L, "lr_at", real)
    train(cfg, resume=True, progress=False)
    assert steps(tmp_path / "r") == [1, 2, 3, 4]


def test_failed_start_leaves_nothing_and_resume_refuses_other_settings(tmp_path):
    bad = TrainConfig.from_dict(
        {**BASE, "train_modalities": str(tmp_path / "missing.yaml"), "out_dir": str(tmp_path / "f")}
    )
    with pytest.raises(FileNotFoundError):
        train(bad, progress=False)
    assert not (tmp_path / "f").exists()  # the corrected command is not refused with "already holds a run"
    good = TrainConfig.from_dict({**BASE, "out_dir": str(tmp_path / "f")})
    train(good, progress=False)
    config_before = (tmp_path / "f" / "config.yaml").read_text()
    other = TrainConfig.from_dict({**BASE, "out_dir": str(tmp_path / "f"), "lr": 0.01, "max_steps": 8})
    with pytest.raises(ValueError, match=r"lr: run has 0.001, asked 0.01.*max_steps: run has 4, asked 8"):
        train(other, resume=True, progress=False)
    assert (tmp_path / "f" / "config.yaml").read_text() == config_before  # the record is not rewritten
    train(
        TrainConfig.from_dict({**BASE, "out_dir": str(tmp_path / "f"), "num_workers": 0}), resume=True, progress=False
    )  # a change that does not alter the result is allowed


def test_zero_steps_refused_and_summary_is_valid_json(tmp_path):
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        TrainConfig.from_dict({**BASE, "epochs": 0})
    with pytest.raises(ConfigError, match="max_steps must be >= 1"):
        TrainConfig.from_dict({**BASE, "max_steps": 0})
    s = train(
        TrainConfig.from_dict({**BASE, "val_every_epoch": False, "max_steps": 1, "out_dir": str(tmp_path / "v")}),
        progress=False,
    )
    text = (tmp_path / "v" / "summary.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["best_val_macro_map"] is None and s["step"] == 1
