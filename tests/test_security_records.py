"""Safe to share (issue 23), part A: checkpoints that cannot run code, records that survive concurrent use,
one reader of ``metrics.jsonl``, a result and its twin as one unit, ``prepare`` counting honestly.

Several tests here WRITE HOSTILE FILES on purpose, into ``tmp_path`` only: a ``.pt`` whose pickle, if it
were ever unpickled, would create a marker file (and nothing else). Each attack test asserts that the
marker is NOT written and that the command refuses the file in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from atomizer.cli import main
from atomizer.core.storage import (
    LockedError,
    atomic_paths,
    atomic_write_text,
    check_safe_torch,
    clean_stale_temps,
    file_sha256,
    json_text,
    jsonl_lines,
    locked,
    read_jsonl,
)
from atomizer.engine.loop import MetricsLog
from atomizer.engine.training import TrainConfig, train
from atomizer.models.adapters import AdapterError, read_adapters
from atomizer.models.checkpoint import FORMAT, CheckpointError, load_model
from atomizer.results.store import read_metrics, read_results_twin

ROOT = Path(__file__).resolve().parents[1]

RECORDS_TRAIN = dict(
    model="atomizer",
    preset="tiny",
    dataset="eurosat",
    epochs=1,
    max_steps=1,
    batch_size=4,
    train_limit=4,
    val_limit=4,
    device="cpu",
    seed=2,
)


class _RecordsHostile:
    """HOSTILE on purpose: unpickling this object opens ``marker`` for writing (creates the file)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def records_hostile_checkpoint(folder: Path, name: str = "hostile.pt") -> tuple[Path, Path]:
    """Write a HOSTILE ``.pt`` (the right format key and keys, plus an object whose unpickling creates a
    marker file) into ``folder``; returns (file, marker). The marker does not exist on return."""
    marker = folder / f"{name}.MARKER"
    payload = {
        "format": FORMAT,
        "arch": "atomizer",
        "config": {},
        "state_dict": {},
        "extra": {"step": 1, "optimizer": _RecordsHostile(marker)},
    }
    path = folder / name
    torch.save(payload, path)
    assert not marker.exists()
    return path, marker


def records_one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atomizer: error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def records_run(tmp_path_factory) -> Path:
    """A real tiny training run (one step) with its config, checkpoints and metrics."""
    out = tmp_path_factory.mktemp("records") / "run"
    train(TrainConfig.from_dict({**RECORDS_TRAIN, "out_dir": str(out)}), progress=False)
    return out


def records_copy_run(run: Path, dest: Path) -> tuple[Path, Path]:
    """A copy of ``run`` at ``dest`` and a config YAML (outside it) whose ``out_dir`` is the copy."""
    shutil.copytree(run, dest)
    moved = TrainConfig.from_dict({**TrainConfig.from_yaml(run / "config.yaml").to_dict(), "out_dir": str(dest)})
    (dest / "config.yaml").write_text(moved.to_yaml())  # the copy's record names where it now lives
    cfg = dest.parent / f"{dest.name}.yaml"
    cfg.write_text(moved.to_yaml())
    return dest, cfg


def records_snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# Checkpoints are never unpickled
# --------------------------------------------------------------------------------------------------


def test_records_the_hostile_file_is_really_hostile(tmp_path):
    """Control: the file these tests use does run code when unpickled the old way (weights_only=False)."""
    path, marker = records_hostile_checkpoint(tmp_path)
    torch.load(path, weights_only=False)  # HOSTILE: runs the payload (it only creates the marker)
    assert marker.exists()


@pytest.mark.parametrize("command", ["predict", "evaluate", "map", "train --init", "train --resume"])
def test_records_hostile_checkpoint_is_refused_by_the_cli(command, tmp_path, records_run, eurosat_paths, capsys):
    """A checkpoint whose pickle would write a marker, given to each command that loads one: exit 2, one
    line, the marker not written."""
    evil, marker = records_hostile_checkpoint(tmp_path)
    image = str(eurosat_paths[0])
    if command == "predict":
        args = ["predict", str(evil), image]
    elif command == "evaluate":
        args = ["evaluate", str(evil), "--modalities", "eurosat_test", "--out", str(tmp_path / "r.nc")]
    elif command == "map":
        args = ["map", str(evil), image, "--out", str(tmp_path / "map.tif"), "--quiet"]
    elif command == "train --init":
        cfg = tmp_path / "init.yaml"
        cfg.write_text(yaml.safe_dump({**RECORDS_TRAIN, "out_dir": str(tmp_path / "fresh")}))
        args = ["train", str(cfg), "--init", str(evil)]
    else:
        run, cfg = records_copy_run(records_run, tmp_path / "run")
        shutil.copy(evil, run / "checkpoints" / "last.pt")
        args = ["train", str(cfg), "--resume"]
    assert main(args) == 2
    line = records_one_line_error(capsys.readouterr().err)
    assert "refused unread" in line and "io.open" in line
    assert not marker.exists()
    assert not (tmp_path / "fresh").exists()  # train --init: the failed start left nothing


def test_records_hostile_checkpoint_is_refused_by_the_library(tmp_path):
    """``load_model`` and ``read_adapters`` on the hostile file: one-line errors, the marker not written."""
    evil, marker = records_hostile_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="refused unread") as e:
        load_model(evil)
    assert "\n" not in str(e.value)
    with pytest.raises(AdapterError, match="refused unread"):
        read_adapters(evil)
    assert not marker.exists()


def test_records_old_torch_is_refused_before_loading():
    """weights_only is only safe from torch 2.6 (CVE-2025-32434): an older torch is refused in one line."""
    with pytest.raises(ValueError, match=r"torch 2\.5\.1 cannot load checkpoints safely \(CVE-2025-32434\)"):
        check_safe_torch("2.5.1")
    check_safe_torch("2.6.0")
    check_safe_torch(torch.__version__)


def test_records_real_checkpoints_load_weights_only(records_run, tmp_path, majortom_product_dir):
    """Everything training, pretraining and adapter training write loads with weights_only=True: optimizer
    state, configs, classes, validation metrics (NumPy numbers at the source), the decoder, the adapters."""
    from atomizer.engine.pretraining import PretrainConfig, pretrain
    from atomizer.models.adapters import load_adapters

    for name in ("best.pt", "last.pt"):
        payload = torch.load(records_run / "checkpoints" / name, weights_only=True)
        assert payload["extra"]["optimizer"]["state"] and payload["extra"]["classes"]
        assert load_model(records_run / "checkpoints" / name).cfg.num_classes == 10
    assert isinstance(torch.load(records_run / "checkpoints" / "best.pt", weights_only=True)["extra"]["best"], float)
    pre = pretrain(
        PretrainConfig.from_dict(
            {
                "preset": "tiny",
                "sources": [{"path": str(majortom_product_dir), "tile_px": 64, "limit": 2}],
                "steps": 1,
                "batch_size": 2,
                "eval_images": 2,
                "max_targets": 64,
                "device": "cpu",
                "out_dir": str(tmp_path / "pre"),
            }
        ),
        progress=False,
    )
    payload = torch.load(pre["checkpoint"], weights_only=True)
    assert payload["extra"]["kind"] == "pretrain" and payload["extra"]["decoder"]
    adapted = train(
        TrainConfig.from_dict(
            {
                **RECORDS_TRAIN,
                "init": str(records_run / "checkpoints" / "best.pt"),
                "adapters": {"rank": 2},
                "out_dir": str(tmp_path / "ad"),
            }
        ),
        progress=False,
    )
    assert torch.load(adapted["adapters"], weights_only=True)["state_dict"]
    base = load_model(records_run / "checkpoints" / "best.pt")
    assert load_adapters(base, adapted["adapters"], strict=False) is base


# --------------------------------------------------------------------------------------------------
# Records: mode, stale temporary files, locks
# --------------------------------------------------------------------------------------------------


def test_records_atomic_write_keeps_the_umask_mode(tmp_path):
    """mkstemp makes 0600; an atomic write gets what the umask gives, so the group can read it."""
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.json", "{}\n")
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        path = atomic_write_text(tmp_path / "b.json", "{}\n")
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_records_a_resumed_run_removes_stale_temporary_files(records_run, tmp_path, capsys):
    """A kill mid-write leaves ``.last.pt.XXXXXXXX.tmp``: the next writer of the folder removes it, and
    only files of that naming."""
    run, cfg = records_copy_run(records_run, tmp_path / "run")
    stale = [run / "checkpoints" / ".last.pt.k1ll3d_x.tmp", run / ".summary.json.abcd1234.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    kept = run / "notes.tmp"
    kept.write_text("mine")
    assert main(["train", str(cfg), "--resume"]) == 0, capsys.readouterr().err
    assert not any(p.exists() for p in stale) and kept.exists()
    assert clean_stale_temps(tmp_path / "nowhere") == []


def test_records_second_writer_of_a_run_folder_is_refused(records_run, tmp_path, capsys):
    """Two ``train --resume`` on one run: while the first holds the folder, the second is refused in one
    line naming the folder, and nothing in the folder changes."""
    run, cfg = records_copy_run(records_run, tmp_path / "run")
    before = records_snapshot(run)
    with locked(run):  # the first writer
        assert main(["train", str(cfg), "--resume"]) == 2
        line = records_one_line_error(capsys.readouterr().err)
        assert "'run'" in line and "being written by another process" in line
        assert records_snapshot(run) == before
        code = (  # another process too
            "import sys; from atomizer.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        r = subprocess.run(
            [sys.executable, "-c", code, "train", str(cfg), "--resume"], capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 2 and "being written by another process" in r.stderr, r.stderr
    assert records_snapshot(run) == before
    with locked(run):  # released by the refused commands
        pass


def test_records_pretraining_holds_its_run_folder(tmp_path, majortom_product_dir):
    from atomizer.engine.pretraining import PretrainConfig, pretrain

    cfg = PretrainConfig.from_dict(
        {
            "preset": "tiny",
            "sources": [{"path": str(majortom_product_dir), "tile_px": 64, "limit": 2}],
            "steps": 1,
            "device": "cpu",
            "out_dir": str(tmp_path / "pre"),
        }
    )
    with locked(tmp_path / "pre"):
        with pytest.raises(LockedError, match="'pre' is being written"):
            pretrain(cfg, progress=False)
        assert [p.name for p in (tmp_path / "pre").iterdir()] == [".lock"]


# --------------------------------------------------------------------------------------------------
# One reader of metrics.jsonl
# --------------------------------------------------------------------------------------------------


def test_records_one_metrics_reader_one_rule(tmp_path):
    """A corrupt line in the middle is skipped (with a warning) and the lines after it are read; a
    half-written last line is left out silently. The loop (resume) and the results store agree, and a
    resume drops only the steps after the checkpoint: the corrupt line is kept verbatim."""
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"kind": "train", "step": s, "loss": 1.0 / s}) for s in (1, 2)]
    lines += ["{not json", json.dumps({"kind": "train", "step": 3, "loss": 0.3}), "[1, 2]"]
    lines += [json.dumps({"kind": "val", "step": 4, "macro_map": 0.5})]
    path = run / "metrics.jsonl"
    path.write_text("\n".join(lines) + '\n{"kind": "train", "st')  # killed mid-write
    with pytest.warns(UserWarning, match=r"skipped 2 line\(s\) that are not JSON records \(line 3, 5\)"):
        records = read_jsonl(path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert read_metrics(run)["step"].tolist() == [1, 2, 3, 4]
        assert MetricsLog(path).read() == records
        log = MetricsLog(path)
        log.truncate_after(3)
        assert path.read_text().splitlines() == lines[:5]  # the corrupt lines kept, step 4 and the tail gone
        log.write(kind="train", step=4, loss=0.2)
        assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3, 4]
    assert len(jsonl_lines(tmp_path / "missing.jsonl")) == 0


def test_records_a_record_is_never_glued_to_a_half_written_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "tr')
    MetricsLog(path).write(kind="train", step=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [r["step"] for r in read_jsonl(path)] == [1, 2]


# --------------------------------------------------------------------------------------------------
# A result and its JSON twin
# --------------------------------------------------------------------------------------------------


def _records_result(value: float) -> xr.Dataset:
    return xr.Dataset(
        {"score": (("model", "modality", "metric"), np.full((1, 1, 1), value))},
        coords={"model": ["atomizer"], "modality": ["m"], "metric": ["macro_map"]},
    )


def test_records_result_and_twin_are_one_unit_and_a_mismatch_is_named(tmp_path):
    """Both files are written under the folder's lock, both temporary files before either rename; the twin
    names the .nc's hash, so a reader finds a twin of another version and says so in one line."""
    nc = tmp_path / "results.nc"
    with locked(tmp_path, "results store"), atomic_paths(nc, nc.with_suffix(".json")) as (tmp_nc, tmp_js):
        _records_result(0.5).to_netcdf(tmp_nc, engine="h5netcdf")
        tmp_js.write_text(json_text({"records": [], "netcdf_sha256": file_sha256(tmp_nc)}))
        assert not nc.exists()  # nothing renamed before both are written
    assert read_results_twin(nc)["records"] == []
    with atomic_paths(nc) as (tmp,):  # a writer that bypassed the unit: only the .nc replaced
        _records_result(0.9).to_netcdf(tmp, engine="h5netcdf")
    with pytest.raises(ValueError, match=r"results.json was made from another version of results.nc"):
        read_results_twin(nc)
    with pytest.raises(RuntimeError):  # a failure inside the unit renames nothing and leaves no temporary file
        with atomic_paths(tmp_path / "x.nc", tmp_path / "x.json") as (a, b):
            a.write_text("x")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "results.json", "results.nc"]


def test_records_save_results_writes_a_consistent_pair_under_the_store_lock(tmp_path):
    """``save_results`` (engine.evaluation) writes the .nc and its twin as one unit: the twin checks out,
    and a writer already holding the store is refused."""
    from atomizer.engine.evaluation import save_results

    out = save_results(_records_result(0.5), tmp_path / "results.nc")
    assert read_results_twin(out)["records"]
    with locked(tmp_path, "results store"):
        with pytest.raises(LockedError):
            save_results(_records_result(0.7), tmp_path / "results.nc", overwrite=True)
    assert read_results_twin(out)["records"][0]["score"] == 0.5


# --------------------------------------------------------------------------------------------------
# prepare counts honestly
# --------------------------------------------------------------------------------------------------


def test_records_prepare_counts_a_duplicate_patch_name_as_not_written(tmp_path, capsys):
    """Two folders of one patch name (a v2 tile folder and a v1 copy): one key, written once; the
    duplicate is counted and named, not counted as written."""
    import atomizer.data.lmdb_store as ls

    rng = np.random.default_rng(0)
    shapes = {b: 120 for b in ("B02", "B03", "B04", "B08")}
    shapes |= {b: 60 for b in ("B05", "B06", "B07", "B8A", "B11", "B12")} | {"B01": 20, "B09": 20}
    root = tmp_path / "BigEarthNet-S2"
    names = [f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{i}_57" for i in (26, 27)]
    for name in names:  # real GeoTIFFs (rasterio), values drawn by the test
        ls.write_patch_folder(
            root, name, {b: rng.integers(0, 4000, (n, n), dtype=np.uint16) for b, n in shapes.items()}
        )
    first = next(root.rglob(names[0]))
    shutil.copytree(first, root / "v1" / names[0])  # the same name again, elsewhere
    code = main(["prepare", "bigearthnet", str(root), "--out", str(tmp_path / "out"), "--workers", "1", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 patches written" in out and "1 duplicate name(s) not written" in out and "2 in total" in out
    s = ls.prepare_bigearthnet(root, tmp_path / "out", workers=1, progress=False)
    assert s["written"] == 0 and s["skipped"] == 3 and s["duplicates"] == [] and s["total"] == 2
    s = ls.prepare_bigearthnet(root, tmp_path / "again", workers=1, progress=False)
    assert s["written"] == 2 and s["duplicates"] == [f"v1/{names[0]}"]
