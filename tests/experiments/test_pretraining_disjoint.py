"""Pretraining per fold in the modality-disjoint notebook: never on the fold's test images, resumed, compared."""

from pathlib import Path

import pandas as pd
import papermill as pm
import pytest
import yaml

from atomizer.data.datasets import open_dataset
from atomizer.data.unlabelled import UnlabelledImages
from atomizer.experiments import ParameterError, check_parameters, pretrain_for_fold, run_path

ROOT = Path(__file__).resolve().parents[2]
SMOKE = dict(preset="tiny", epochs=1, max_steps=2, batch_size=4, train_limit=8, val_limit=4, device="cpu")
# the recipe's Atomizer (tiny, no GSD code), pretrained for two steps on EuroSAT and a Major-TOM tile
PRETRAIN = {
    "model": "atomizer",
    "preset": "tiny",
    "model_overrides": {"encoding": {"gsd_code": False}},
    "sources": [{"dataset": "eurosat"}, {"path": "data/embedded/majortom", "tile_px": 64, "limit": 2}],
    "modalities": None,
    "steps": 2,
    "batch_size": 4,
    "eval_every": 0,
    "ckpt_every": 1,
    "device": "cpu",
}


@pytest.mark.parametrize("fold", [0, 3])
def test_a_source_without_a_folds_test_images(fold):
    tested = set(open_dataset("eurosat", "test", fold=fold).ids())
    images = UnlabelledImages([{"dataset": "eurosat", "exclude_fold": fold}])
    ids = {r[3] for r in images.records}
    assert ids and not ids & tested
    assert len(ids) + len(tested) == len(open_dataset("eurosat", None))


@pytest.mark.parametrize("split", [None, "validation"])
def test_a_source_of_one_split_of_a_fold(split):
    want = set(open_dataset("eurosat", split or "train", fold=2).ids())
    images = UnlabelledImages([{"dataset": "eurosat", "fold": 2, **({"split": split} if split else {})}])
    assert {r[3] for r in images.records} == want and len(want) < len(open_dataset("eurosat", None))


def test_spectralx_stage1_reads_the_training_images_of_stage2s_fold():
    from atomizer.engine.adaptation import AdaptConfig

    cfg = AdaptConfig.from_dict({"base": "b.pt", "train": {"dataset": "eurosat", "fold": 3}})
    assert cfg.stage1_config().sources == [{"dataset": "eurosat", "split": "train", "fold": 3}]
    assert AdaptConfig.from_dict({"base": "b.pt", "train": {"dataset": "eurosat"}}).stage1_config().sources == [
        {"dataset": "eurosat", "split": "train"}
    ]


@pytest.mark.parametrize(
    "source,words",
    [
        ({"dataset": "eurosat", "fold": 0, "exclude_fold": 1}, "fold or exclude_fold, not both"),
        ({"path": "data/embedded/majortom", "fold": 0}, "needs a dataset or a manifest"),
        ({"dataset": "eurosat", "fold": -1}, "must be a fold number"),
        ({"path": "data/embedded/majortom", "exclude_fold": 0}, "needs a dataset or a manifest"),
        ({"dataset": "eurosat", "split": "train", "exclude_fold": 0}, "not both"),
        ({"dataset": "eurosat", "exclude_fold": "0"}, "must be a fold number"),
        ({"dataset": "eurosat", "exclude_fold": 7}, "fold must be in 0..4"),
    ],
)
def test_bad_exclude_fold_is_refused_in_one_line(source, words):
    with pytest.raises(ValueError, match=words) as e:
        UnlabelledImages([source])
    assert "\n" not in str(e.value)


def test_pretraining_refuses_a_downstream_source_with_its_own_split(tmp_path):
    spec = {**PRETRAIN, "sources": [{"dataset": "eurosat", "split": "validation"}]}
    with pytest.raises(ValueError, match="leave its split out"):
        pretrain_for_fold(spec, tmp_path / "p", "eurosat", 0)
    with pytest.raises(ValueError, match="should pretrain 's2mae'"):
        pretrain_for_fold(PRETRAIN, tmp_path / "p", "eurosat", 0, model="s2mae")
    assert not (tmp_path / "p").exists()


def test_a_pretraining_that_reads_none_of_the_dataset_runs_once_for_every_fold(tmp_path):
    spec = {**PRETRAIN, "sources": [{"path": "data/embedded/majortom", "tile_px": 64, "limit": 2}]}
    first = pretrain_for_fold(spec, tmp_path, "eurosat", 0)
    stamp = first.stat().st_mtime_ns
    assert (
        pretrain_for_fold(spec, tmp_path, "eurosat", 3)
        == first
        == tmp_path / "atomizer_any-fold" / "checkpoints" / "last.pt"
    )
    assert first.stat().st_mtime_ns == stamp  # the second fold reused it, nothing rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomizer_any-fold"]


@pytest.mark.parametrize(
    "params,words",
    [
        ({"pretrain": {"atomizer": "configs/no_such.yaml"}}, "no pretraining config"),
        ({"pretrain": {"atomizer": "configs/pretrain_disjoint_s2mae.yaml"}}, "the config pretrains 's2mae'"),
        ({"pretrain": {"atomizer": PRETRAIN}, "pretrain_overrides": {"mask_ratio": 1.5}}, "mask_ratio"),
        ({"pretrain": {"atomizer": PRETRAIN}, "pretrain_overrides": {"sources": []}}, "unknown pretraining field"),
        ({"pretrain": {"atomizer": 3}}, "expected a config path"),
    ],
)
def test_bad_pretraining_parameters_are_refused_before_any_work(params, words, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ParameterError, match=words) as e:
        check_parameters({"models": ["atomizer"], **params})
    assert "\n" not in str(e.value)


def test_the_shipped_pretraining_configs_pass_the_check(monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = yaml.safe_load((ROOT / "experiments" / "pretraining_disjoint.yaml").read_text())
    p = check_parameters(spec["parameters"])
    assert set(p.pretrain) == {"atomizer", "s2mae"} and p.reference == "atomizer+pretrained"


def test_disjoint_notebook_pretrains_once_per_fold_and_compares(tmp_path):
    out = tmp_path / "store"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "disjoint_modalities.ipynb"),
        str(tmp_path / "nb.ipynb"),
        kernel_name="python3",
        parameters={
            **SMOKE,
            "models": ["atomizer"],
            "pretrain": {"atomizer": PRETRAIN},
            "seeds": [0],
            "folds": [0, 1],
            "reference": "atomizer+pretrained",
            "n_resamples": 100,
            "output_dir": str(out),
        },
        cwd=str(ROOT),
        progress_bar=False,
    )
    for fold in (0, 1):
        pre = out / "pretrain" / f"atomizer_fold-{fold}"
        cfg = yaml.safe_load((pre / "config.yaml").read_text())
        assert cfg["sources"][0] == {"dataset": "eurosat", "exclude_fold": fold}  # the fold's test images left out
        assert cfg["sources"][1]["path"] == "data/embedded/majortom"  # other sources as given
        assert (pre / "checkpoints" / "last.pt").is_file()
        tuned = yaml.safe_load((run_path(out, "atomizer+pretrained", 0, fold) / "config.yaml").read_text())
        assert Path(tuned["init"]) == pre / "checkpoints" / "last.pt"  # the fold's own pretraining
        scratch = yaml.safe_load((run_path(out, "atomizer", 0, fold) / "config.yaml").read_text())
        assert scratch["init"] is None
    assert sorted(p.name for p in (out / "pretrain").iterdir()) == ["atomizer_fold-0", "atomizer_fold-1"]
    summary = pd.read_csv(out / "statistics.csv")
    assert set(summary["model"]) == {"atomizer", "atomizer+pretrained"} and (summary["seeds"] == 1).all()
    diffs = pd.read_csv(out / "differences.csv")
    assert set(diffs["other"]) == {"atomizer"} and len(diffs) == 6
