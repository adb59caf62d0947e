"""The results store keeps every repeat: per-image predictions of each (model, seed, fold) run, pooled over
folds per seed (:func:`atomizer.results.store.collect_predictions`). Real tiny runs on the embedded EuroSAT."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from atomizer.core.run_folder import RunFolder
from atomizer.data.datasets import open_dataset
from atomizer.experiments import run_path, train_and_evaluate
from atomizer.results import stats
from atomizer.results.store import ResultsStore, collect_predictions

TINY = dict(preset="tiny", dataset="eurosat", epochs=1, max_steps=1, batch_size=8, device="cpu", val_limit=8)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    for model in ("atomizer", "resnet"):
        for fold in (0, 1):
            train_and_evaluate(
                model, run_path(root, model, 0, fold), "eurosat_test", progress=False, seed=0, fold=fold, **TINY
            )
    return root


def test_predictions_are_pooled_over_folds(store):
    p = collect_predictions(store)
    assert p.attrs["folds"] == 2 and p.attrs["runs"] == 4
    assert list(p.model.values) == ["atomizer", "resnet"] and list(p.seed.values) == [0]
    tested = set(open_dataset("eurosat", "test", fold=0).ids()) | set(open_dataset("eurosat", "test", fold=1).ids())
    assert set(p.image.values) == tested
    assert not np.isnan(p["score"].values).any()  # every image of both folds has a prediction per model
    np.testing.assert_allclose(p["score"].values.sum(-1), 1.0, atol=1e-5)  # softmax probabilities
    # the stored scores are those the statistics recompute from the predictions (fold 0 alone)
    cfg = yaml.safe_load((run_path(store, "atomizer", 0, 0) / "config.yaml").read_text())
    assert cfg["fold"] == 0 and cfg["seed"] == 0
    s = stats.summarize(p, "top1", n_resamples=100)
    assert set(s.model) == {"atomizer", "resnet"} and (s.images == len(tested)).all()


def test_results_store_reads_a_state_and_signs_every_file_it_reads(store, tmp_path):
    """ResultsStore: one state of the store (runs, tables, pooled predictions) and a signature that changes
    when any file it reads does (a metrics line appended), which views key their caches on."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(store, root)
    rs = ResultsStore(root)
    state = rs.read()
    assert state.error is None and len(state.runs) == len(rs.run_dirs()) == 4
    assert state.models() == ["atomizer", "resnet"] and state.predictions is not None
    assert "top1" in state.metric_names() and state.table("top1") is not None
    assert state.scores("table", "no_such_metric").empty and state.results["gsd"] is None
    assert not state.has_landscape and state.run_metrics(state.run_labels()[0])["kind"].eq("train").any()
    assert state.differences("atomizer", "top1", 100) is not None
    first = rs.signature()
    assert rs.signature(max_age_s=3600) is first  # reused within the age
    with open(RunFolder(rs.run_dirs()[0]).metrics, "a") as fh:
        fh.write('{"kind": "train", "step": 99, "loss": 0.5}\n')
    assert rs.signature(max_age_s=3600) is first and rs.signature() != first
    broken = tmp_path / "broken"
    shutil.copytree(run_path(store, "atomizer", 0, 0), broken / "a")
    shutil.copytree(run_path(store, "atomizer", 0, 0), broken / "b")
    assert "both" in (ResultsStore(broken).read().error or "")  # an error in the state, not raised


def test_duplicate_repeats_are_refused(store, tmp_path):
    import shutil

    shutil.copytree(run_path(store, "atomizer", 0, 0), tmp_path / "a")
    shutil.copytree(run_path(store, "atomizer", 0, 0), tmp_path / "b")
    with pytest.raises(ValueError, match="both"):
        collect_predictions(tmp_path)


def test_scaling_curve_from_fraction_runs(store):
    from atomizer.results.scaling import scaling

    assert scaling(store) is None  # no fraction run yet
    for fold in (0, 1):
        train_and_evaluate(
            "atomizer",
            run_path(store, "atomizer@50%", 0, fold),
            "eurosat_test",
            progress=False,
            seed=0,
            fold=fold,
            label="atomizer@50%",
            train_fraction=0.5,
            **TINY,
        )
    df = scaling(store, "top1", n_resamples=100)
    rows = df[df.base_model == "atomizer"].set_index("percent")
    assert list(rows.index) == [50.0, 100.0]
    full = len(open_dataset("eurosat", "train", fold=0)) + len(open_dataset("eurosat", "train", fold=1))
    assert rows.loc[100.0, "train_images"] == full / 2
    assert abs(rows.loc[50.0, "train_images"] - full / 4) <= 5  # class-stratified half, rounded per class
    assert (df["ci_low"] <= df["mean"]).all() and (df["mean"] <= df["ci_high"]).all()


def test_a_store_of_predictions_only_offers_the_metric_its_statistics_compute():
    """Runs that wrote per-image predictions but no result table (e.g. scripts/dense_adapters_experiment.py):
    the dashboard's metric list comes from the predictions' task."""
    import numpy as np
    import xarray as xr

    from atomizer.results.store import StoreState

    preds = xr.Dataset({"score": (("model", "image"), np.zeros((1, 2)))}, attrs={"task": "segmentation"})
    assert StoreState(predictions=preds).metric_names() == ["miou"]
    assert StoreState(predictions=preds.assign_attrs(task="classification")).metric_names() == ["macro_map"]
    assert StoreState().metric_names() == []


def test_a_run_evaluated_into_predictions_only_is_done(tmp_path):
    """A run folder with its config, an empty metrics log (no training step: a frozen base evaluated as is) and
    per-image predictions counts as done, not running."""
    from atomizer.results.store import find_runs

    run = tmp_path / "none"
    run.mkdir()
    (run / "config.yaml").write_text("model: atomizer\nlabel: none\nseed: 0\nfold: 0\n")
    (run / "metrics.jsonl").write_text("")
    assert find_runs(tmp_path)["status"].tolist() == ["running"]
    (run / "predictions.nc").write_bytes(b"")
    assert find_runs(tmp_path)["status"].tolist() == ["done"]
