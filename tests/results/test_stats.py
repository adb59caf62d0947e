"""Statistics of repeats (:mod:`atomizer.results.stats`) and the batched average precision they rest on.

The prediction arrays here are synthetic on purpose (statistics, not imagery): a model whose scores
follow the labels, one that guesses, and exact copies, so each property has a known answer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torchmetrics.functional.classification import binary_average_precision

from atomizer.engine.metrics import batched_average_precision, singlelabel_metrics
from atomizer.results import stats


def test_batched_average_precision_equals_torchmetrics_ties_included():
    rng = np.random.default_rng(0)
    for levels in (None, 4):  # continuous scores, then heavily tied ones
        s = rng.random((3, 40, 5))
        if levels:
            s = np.round(s * levels) / levels
        y = (rng.random((3, 40, 5)) < 0.3).astype(float)
        y[0, :, 0] = 0  # a column without a positive
        ours = batched_average_precision(s, y)
        assert np.isnan(ours[0, 0])
        for b in range(3):
            for c in range(5):
                if y[b, :, c].sum():
                    ref = float(binary_average_precision(torch.tensor(s[b, :, c]), torch.tensor(y[b, :, c]).long()))
                    assert ours[b, c] == pytest.approx(ref, abs=1e-6)


def test_metric_values_match_the_training_metrics():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(60, 10)), dtype=torch.float32)
    labels = torch.tensor(np.r_[np.arange(10).repeat(6)])
    ref = singlelabel_metrics(logits, labels)
    probs = logits.softmax(-1).numpy()
    onehot = np.eye(10)[labels.numpy()]
    assert stats.metric_values(probs, onehot, "top1") == pytest.approx(ref["top1"])
    assert stats.metric_values(probs, onehot, "macro_map") == pytest.approx(ref["macro_map"], abs=1e-4)


def store(seeds: int = 2, n: int = 80, classes: int = 4) -> xr.Dataset:
    rng = np.random.default_rng(2)
    labels = np.arange(n) % classes
    target = np.eye(classes)[labels]
    good = np.clip(target * 0.6 + rng.random((seeds, 2, n, classes)) * 0.5, 0, None)  # follows the labels
    guess = rng.random((seeds, 2, n, classes))
    score = np.stack([good, guess, good])  # model, seed, modality, image, class
    return xr.Dataset(
        {
            "score": (("model", "seed", "modality", "image", "class"), score.astype(np.float32)),
            "target": (("image", "class"), target.astype(np.uint8)),
        },
        coords={
            "model": ["good", "guess", "copy"],
            "seed": list(range(seeds)),
            "modality": ["A", "B"],
            "image": [f"i{i}" for i in range(n)],
            "class": [f"c{c}" for c in range(classes)],
        },
        attrs={"folds": 5},
    )


def test_summary_mean_sd_and_ci():
    s = stats.summarize(store(), "top1", n_resamples=300)
    good = s[(s.model == "good") & (s.modality == "A")].iloc[0]
    assert good.seeds == 2 and good.folds == 5 and good.images == 80
    assert good["mean"] == pytest.approx(np.mean(good.per_seed))
    assert good.sd == pytest.approx(np.std(good.per_seed, ddof=1))
    assert good.ci_low <= good["mean"] <= good.ci_high
    guess = s[(s.model == "guess") & (s.modality == "A")].iloc[0]
    assert guess.ci_high < good.ci_low  # a guessing model is clearly below one that follows the labels


def test_paired_differences_significance_and_holm():
    d = stats.paired_differences(store(), "good", n_resamples=300)
    vs_guess = d[d.other == "guess"]
    assert (vs_guess.difference > 20).all() and (vs_guess.ci_low > 0).all() and vs_guess.significant.all()
    assert (vs_guess.p_holm >= vs_guess.p_value).all()
    vs_copy = d[d.other == "copy"]  # identical predictions: no difference, nothing significant
    assert (vs_copy.difference == 0).all() and not vs_copy.significant.any()
    assert (vs_copy.ci_low <= 0).all() and (vs_copy.ci_high >= 0).all()
    table, words = stats.verdict(d)
    assert table.loc["guess", "A"].endswith("*") and not table.loc["copy", "A"].endswith("*")
    assert "against guess, good is significantly ahead on A, B" in words
    assert "not distinguishable on A, B" in words
    with pytest.raises(KeyError, match="nope"):
        stats.paired_differences(store(), "nope")


def test_unfinished_seed_is_left_out():
    p = store()
    p["score"][1, 1, 0, 5] = np.nan  # model 'guess', seed 1 lacks an image on modality A
    s = stats.summarize(p, "top1", n_resamples=100)
    assert s[(s.model == "guess") & (s.modality == "A")].seeds.item() == 1
    assert s[(s.model == "guess") & (s.modality == "B")].seeds.item() == 2


def test_summary_over_modalities_and_incomplete_models():
    p = store()
    s = stats.summarize_over_modalities(p, "top1", n_resamples=200)
    good, guess = (s[s.model == m].iloc[0] for m in ("good", "guess"))
    assert good.seeds == 2 and good.ci_low <= good["mean"] <= good.ci_high and guess.ci_high < good.ci_low
    p["score"][1, :, 0, 3] = np.nan  # 'guess' covers image 3 in no seed: it is left out, not answered from nothing
    assert "guess" not in set(stats.summarize_over_modalities(p, "top1", n_resamples=100).model)
    assert "guess" not in set(stats.summarize(p, "top1", n_resamples=100).query("modality == 'A'").model)


def test_scaling_labels():
    from atomizer.results.scaling import split_label

    assert split_label("atomizer@25%") == ("atomizer", 25.0)
    assert split_label("resnet") == ("resnet", 100.0)
    assert split_label("my@model@50%") == ("my@model", 50.0)
