"""Cross-validation folds: assigning them (stratified, or grouped for spatially correlated samples) and
splitting a dataset by them.

A fold table has the columns ``id, stratum, fold`` (``data/folds/<dataset>.csv`` for the embedded data,
``<manifest>.folds.csv`` beside a manifest). :func:`fold_split` turns fold ``f`` of ``k`` into the three
splits: ``test`` is fold ``f``, ``validation`` fold ``(f + 1) % k`` and ``train`` the other ``k - 2``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import pandas as pd

from atomizer.data.base import ImageDataset

D = TypeVar("D", bound=ImageDataset)

#: Folds written when none are given (the embedded data's count).
DEFAULT_FOLDS = 5


def strata_of(label_sets: Sequence[Sequence[str]]) -> list[str]:
    """One stratum per sample: its rarest label (multi-label samples: rare classes spread over the folds);
    ``"none"`` for a sample without labels."""
    freq = Counter(lab for labs in label_sets for lab in labs)
    return [min(labs, key=lambda lab: (freq[lab], lab)) if labs else "none" for labs in label_sets]


def assign_folds(
    ids: Sequence[str],
    label_sets: Sequence[Sequence[str]],
    groups: Sequence[str] | None = None,
    k: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> pd.DataFrame:
    """A ``k``-fold assignment (``id, stratum, fold``), sorted by id.

    Stratified by :func:`strata_of` (strata with fewer than ``k`` members are merged into ``"rare"``), with
    scikit-learn's ``StratifiedKFold``; with ``groups``, ``StratifiedGroupKFold``: every sample of a group
    (a tile, a scene, a field) falls in the same fold, so spatially correlated samples never straddle
    training and test.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    n = len(ids)
    if k < 3:
        raise ValueError(f"folds: need at least 3 (test, validation and training folds), got {k}")
    units = len(set(groups)) if groups is not None else n
    if units < k:
        what = "groups" if groups is not None else "samples"
        raise ValueError(f"folds: {units} {what} cannot fill {k} folds; ask for at most {units} (and at least 3)")
    strata = strata_of(label_sets)
    size = Counter(strata)
    strata = [s if size[s] >= k else "rare" for s in strata]
    folds = np.zeros(n, dtype=np.int64)
    index = np.arange(n)
    if groups is not None:
        splits = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(index, strata, list(groups))
    elif min(Counter(strata).values()) >= k:
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(index, strata)
    else:  # even the merged "rare" stratum is smaller than k: plain shuffled folds
        from sklearn.model_selection import KFold

        splits = KFold(n_splits=k, shuffle=True, random_state=seed).split(index)
    for f, (_, test) in enumerate(splits):
        folds[test] = f
    return pd.DataFrame({"id": list(ids), "stratum": strata, "fold": folds}).sort_values("id", kind="stable")


def fold_split(ds: D, folds: pd.DataFrame, fold: int, split: str) -> D:
    """Keep the records of ``split`` for cross-validation fold ``fold`` of ``k``: ``test`` is fold ``fold``,
    ``validation`` fold ``(fold + 1) % k`` (inside the training folds: model selection never sees the test
    fold), ``train`` the other ``k - 2`` folds. Every image is tested exactly once over the k folds."""
    k = int(folds["fold"].max()) + 1
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1} for a {k}-fold assignment, got {fold}")
    of = dict(zip(folds["id"].astype(str), folds["fold"].astype(int)))
    missing = [i for i in ds.ids() if i not in of]
    if missing:
        raise ValueError(f"{len(missing)} images have no fold (e.g. {missing[:3]}); regenerate the fold table")
    wanted = {"test": {fold}, "validation": {(fold + 1) % k}}.get(split)
    if wanted is None and split != "train":
        raise ValueError(f"unknown split {split!r} for cross-validation; choose train, validation or test")
    if wanted is None:
        wanted = set(range(k)) - {fold, (fold + 1) % k}
    ds.records = [r for r in ds.records if of[r["id"]] in wanted]
    ds.fold = fold
    return ds
