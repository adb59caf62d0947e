"""A union of datasets (``dataset: "a.csv+b.csv"``, :mod:`atomizer.data.union`) on the two shipped dense sets:
TerraMesh (Sentinel-2 + Sentinel-1, 9 land-cover classes) and CaFFe (TerraSAR-X HH, 3 glacier-zone classes),
both with ignore value 0. Real data only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from atomizer.data.datasets import dataset_folds, open_dataset
from atomizer.data.manifest import ManifestDataset
from atomizer.data.union import UnionDataset, UnionError, is_union, part_label, union_parts
from tests.conftest import EMBEDDED, REPO_ROOT

DENSE = EMBEDDED / "dense"
TERRAMESH = (DENSE / "terramesh" / "manifest.csv").relative_to(REPO_ROOT).as_posix()
CAFFE = (DENSE / "caffe" / "manifest.csv").relative_to(REPO_ROOT).as_posix()
UNION = f"{TERRAMESH}+{CAFFE}"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the union string names relative paths, as a config does


def test_union_string_parts_and_labels():
    assert is_union(UNION) and not is_union(TERRAMESH)
    assert union_parts(UNION) == [TERRAMESH, CAFFE]
    assert [part_label(p) for p in union_parts(UNION)] == ["terramesh", "caffe"]
    assert part_label("some/where/labels.csv") == "labels" and part_label("eurosat") == "eurosat"
    with pytest.raises(UnionError, match="none of them empty"):
        open_dataset(f"{TERRAMESH}++{CAFFE}")


def test_classes_are_every_parts_prefixed_and_offset():
    tm, cf = ManifestDataset(TERRAMESH), ManifestDataset(CAFFE)
    u = open_dataset(UNION)
    assert isinstance(u, UnionDataset) and u.task == "segmentation"
    assert u.classes == [f"terramesh/{c}" for c in tm.classes] + [f"caffe/{c}" for c in cf.classes]
    assert u.num_classes == 12 and u.offsets == [0, 9]
    assert "terramesh/water" in u.classes and "caffe/glacier" in u.classes
    assert len(u) == len(tm) + len(cf) == 14
    assert u.part_of() == ["terramesh"] * 5 + ["caffe"] * 9
    assert all(r["meta"]["part"] == p for r, p in zip(u.records, u.part_of()))


@pytest.mark.parametrize("i_union,part,i_part", [(0, "terramesh", 0), (5, "caffe", 0), (13, "caffe", 8)])
def test_masks_and_targets_index_the_union_and_ignore_stays_ignored(i_union, part, i_part):
    u = open_dataset(UNION)
    own = ManifestDataset(TERRAMESH if part == "terramesh" else CAFFE)
    off = u.offsets[u.labels.index(part)]
    item, ref = u[i_union], own[i_part]
    assert item["part"] == part and item["id"] == f"{part}/{ref['id']}"
    m, r = item["mask"].values, ref["mask"].values
    assert m.shape == r.shape and (item["mask"].gsd, item["mask"].left) == (ref["mask"].gsd, ref["mask"].left)
    assert np.array_equal(m[r >= 0], r[r >= 0] + off)  # labelled pixels: the part's class + its offset
    assert np.array_equal(m < 0, r < 0)  # the part's ignore value (0 -> -1) stays unscored
    assert int(m[m >= 0].min()) >= off and int(m.max()) < off + own.num_classes
    t = item["target"]
    assert t.shape == (12,) and torch.equal(t[off : off + own.num_classes], ref["target"])
    assert float(t.sum()) == float(ref["target"].sum())  # nothing outside the part's block
    light = u.light_item(i_union)
    assert np.array_equal(light["mask"].values, m) and light["part"] == part


def test_caffe_padding_is_ignored_in_the_union():
    """CaFFe's class 0 (padding, 27.7 % of its pixels) must not become a union class (it is unscored)."""
    u = open_dataset(UNION)
    ignored = [int((u[i]["mask"].values < 0).sum()) for i in range(5, 14)]
    assert sum(ignored) > 0.2 * 9 * 512 * 512


@pytest.mark.parametrize("fold", range(5))
@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_a_fold_of_the_union_is_each_parts_own_fold(fold, split):
    u = open_dataset(UNION, split, fold=fold)
    for path, label in ((TERRAMESH, "terramesh"), (CAFFE, "caffe")):
        own = open_dataset(path, split, fold=fold)
        mine = [i.split("/", 1)[1] for i in u.ids() if i.startswith(label + "/")]
        assert mine == own.ids()
    assert u.fold == fold


def test_the_fixed_split_of_the_union_is_each_parts_split():
    u = open_dataset(UNION, "test")
    assert u.ids() == [f"terramesh/{i}" for i in ManifestDataset(TERRAMESH, "test").ids()] + [
        f"caffe/{i}" for i in ManifestDataset(CAFFE, "test").ids()
    ]


def test_union_folds_table_is_the_parts_tables():
    t = dataset_folds(UNION)
    assert list(t.columns) == ["id", "stratum", "fold", "part"] and len(t) == 14
    tm = ManifestDataset(TERRAMESH).folds_table()
    sub = t[t["part"] == "terramesh"]
    assert sub["id"].tolist() == [f"terramesh/{i}" for i in tm["id"]] and sub["fold"].tolist() == tm["fold"].tolist()


def test_parts_of_different_tasks_are_refused_in_one_line():
    with pytest.raises(UnionError) as e:
        open_dataset(f"{CAFFE}+eurosat")
    msg = str(e.value)
    assert "\n" not in msg and "caffe is segmentation" in msg and "eurosat is classification" in msg


def test_two_parts_with_one_label_are_refused():
    with pytest.raises(UnionError, match="label 'caffe'"):
        open_dataset(f"{CAFFE}+{CAFFE}")


def test_dataset_check_checks_every_part(capsys):
    from atomizer.cli import main

    assert main(["dataset", "check", UNION, "--no-folds", "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d["samples"] for d in docs] == [5, 9] and [len(d["classes"]) for d in docs] == [9, 3]
