"""One recipe of record (atomizer.experiments.RECORD): the configs, the notebooks' literal defaults, the
shipped specs and `make demo` all use it; the demo prints one progress line per epoch."""

import ast
import json
import re
from pathlib import Path

import papermill as pm
import pytest
import yaml

from atomizer.engine.training import TrainConfig
from atomizer.experiments import RECORD, EpochLines, check_parameters, run_label, run_tag

ROOT = Path(__file__).resolve().parents[2]
TRAINING_NOTEBOOKS = ("disjoint_modalities.ipynb", "sweep.ipynb")
SPECS = ("embedded_demo.yaml", "eurosat_cv.yaml")


def defaults(name: str) -> dict:
    return {k: ast.literal_eval(v["default"]) for k, v in pm.inspect_notebook(str(ROOT / "notebooks" / name)).items()}


def test_the_record_says_where_it_was_selected():
    assert "docs/results.md" in RECORD.selected_in
    assert RECORD.preset_of("atomizer") == "tiny" and RECORD.preset_of("resnet") == "small"
    assert RECORD.overrides_of("atomizer") == {"encoding": {"gsd_code": False}} and RECORD.overrides_of("vit") == {}
    TrainConfig.from_dict({**RECORD.train_options("atomizer"), "out_dir": "x"})  # a valid training config


@pytest.mark.parametrize("name", TRAINING_NOTEBOOKS)
def test_training_notebook_defaults_are_the_record(name):
    d = defaults(name)
    for key, value in RECORD.notebook_parameters().items():
        assert d[key] == value, f"{name}: {key} = {d[key]!r}, the recipe of record has {value!r}"
    check_parameters(d)


def test_beyond_the_paper_defaults_are_the_record():
    d = defaults("beyond_the_paper.ipynb")
    assert d["preset"] == RECORD.preset_of("atomizer")
    assert d["model_overrides"] == {"atomizer": RECORD.overrides_of("atomizer")}
    assert (d["finetune_epochs"], d["batch_size"], d["lr"]) == (RECORD.epochs, RECORD.batch_size, RECORD.lr)


@pytest.mark.parametrize("model", ["atomizer", "resnet"])
def test_configs_are_the_record(model):
    cfg = TrainConfig.from_yaml(ROOT / "configs" / f"eurosat_{model}.yaml").to_dict()
    for key, value in RECORD.train_options(model).items():
        assert cfg[key] == value, f"configs/eurosat_{model}.yaml: {key} = {cfg[key]!r}, the record has {value!r}"
    pre = yaml.safe_load((ROOT / "configs" / "pretrain.yaml").read_text())
    assert pre["preset"] == RECORD.preset_of("atomizer") and pre["model_overrides"] == RECORD.overrides_of("atomizer")


@pytest.mark.parametrize("name", SPECS)
def test_specs_and_make_demo_use_the_record(name):
    params = yaml.safe_load((ROOT / "experiments" / name).read_text())["parameters"]
    for key, value in RECORD.notebook_parameters().items():
        assert params[key] == value, f"experiments/{name}: {key} = {params[key]!r}, the record has {value!r}"
    demo = re.search(r"^demo:.*?(?=^\S)", (ROOT / "Makefile").read_text(), re.S | re.M)
    assert demo and "experiments/embedded_demo.yaml" in demo.group(0)


def test_run_labels():
    assert run_label("atomizer") == "atomizer"
    assert run_label("resnet", ["resnet"], train_fraction=0.25) == "resnet@25%"
    assert run_label("atomizer", ["atomizer", "resnet"], "+aug") == "atomizer+aug"
    assert run_label("atomizer", ["atomizer"], "atomizer-tiny") == "atomizer-tiny"


def test_epoch_lines_follow_the_metrics_log(tmp_path, capsys):
    """One line per epoch from what the training loop writes (train records, then a val record)."""
    cfg = TrainConfig.from_dict({"model": "atomizer", "epochs": 2, "out_dir": str(tmp_path), "fold": 3})
    log = tmp_path / "metrics.jsonl"
    records = [
        {"kind": "train", "step": 1, "epoch": 0, "loss": 2.0},
        {"kind": "train", "step": 2, "epoch": 0, "loss": 1.0},
        {"kind": "val", "step": 2, "epoch": 0, "macro_map": 41.25},
        {"kind": "train", "step": 3, "epoch": 1, "loss": 0.5},
        {"kind": "train", "step": 4, "epoch": 1, "loss": 0.5},
    ]
    with EpochLines(cfg, run_tag("atomizer", 1, 3), interval=0.01):
        log.write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("[atomizer seed 1 fold 3] epoch 1/2 loss 1.5000 val macro mAP 41.2 | ")
    assert "left" in lines[0]
    assert lines[1].startswith("[atomizer seed 1 fold 3] epoch 2/2 loss 0.5000")
