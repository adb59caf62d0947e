"""Every attack of issue 23 ("Safe to share"), each asserting that it fails.

Checkpoints and records: files that cannot run code, folders locked while written:
Safe to share (issue 23), part A: checkpoints that cannot run code, records that survive concurrent use,
one reader of ``metrics.jsonl``, a result and its twin as one unit, ``prepare`` counting honestly.

Several tests here WRITE HOSTILE FILES on purpose, into ``tmp_path`` only: a ``.pt`` whose pickle, if it
were ever unpickled, would create a marker file (and nothing else). Each attack test asserts that the
marker is NOT written and that the command refuses the file in one line.

Experiment specs are data:
Attacks through experiment specs, Dask schedulers and the notebooks that evaluate every checkpoint of a
store: each test writes a HOSTILE file (a spec, a notebook path, a checkpoint whose pickle would write a
marker file) into tmp_path and asserts that the attack fails: the marker is not written, nothing runs (no
run folder is made), and the one-line message names the offending key.

Readers stay local, inputs are bounded before they are read:
Attacks on the readers (issue 23), each asserting that it FAILS: a raster that is really a VRT pointing at a
URL or at a file elsewhere, STAC hrefs leaving the item's folder or pointing at a URL, URL and /vsi input paths,
and an input above the atom limit (refused from its header, before any pixel is read).

These tests write hostile files on purpose (under tmp_path only): VRT XML named ``B04.tif``, STAC items whose
hrefs point at a local HTTP listener or outside their folder. The listener is bound to 127.0.0.1 in a thread
and records every request it receives; the attacks must send none.

The served dashboard: confined to its roots, escaped, origin-checked:
Attacks on the served dashboard (issue 23), each asserting that it fails: a URL parameter naming a hostile
checkpoint, paths outside the served roots, a sidecar whose broken YAML holds a secret, absolute server paths in
error texts, HTML in a store's run names, model labels and modality names, websocket handshakes from a foreign
or missing Origin (DNS rebinding), and a server started on a busy port.

Several tests write hostile files on purpose (a pickle that creates a marker folder when unpickled, a store
whose names hold HTML, a YAML file with a secret line); everything lives under ``tmp_path``. Servers run in
this process on a free local port, each in its own thread and event loop, and are stopped at the end.

The Maps and Attention tabs: confined, escaped, bounded:
Attacks on the dashboard's Attention and Maps tabs (issue 23), each asserting that the attack fails.

Real files throughout: a checkpoint of a real tiny Atomizer (built, not trained: the weights do not matter
here), a real scene crop of the embedded Major-TOM product written as GeoTIFFs, real maps written by the
real ``predict_map``. Several tests WRITE HOSTILE FILES on purpose, all under ``tmp_path``: a checkpoint
whose pickle would write a marker file when unpickled, a checkpoint whose class names are HTML, a modality
set whose modality name is HTML, a scene folder named with HTML.
"""

from __future__ import annotations

import asyncio
import html
import http.server
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import nbformat
import numpy as np
import panel as pn
import pytest
import rasterio
import torch
import xarray as xr
import yaml
from bokeh.document import Document
from conftest import TINY_TRAIN
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from atomizer.cli import main
from atomizer.core.limits import InputTooLargeError
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
from atomizer.dashboard._common import Roots, escape_text
from atomizer.dashboard.attention import AttentionMaps
from atomizer.dashboard.maps import _POOL, MAP_WORKERS, MapBuildCancelled, MapView, builds_started, evict
from atomizer.dashboard.results import ResultsView
from atomizer.dashboard.spectral import SpectralCoverage
from atomizer.data.bands import get_sensor
from atomizer.data.readers import ImageReadError, open_image, read_stac_item
from atomizer.engine.loop import MetricsLog
from atomizer.engine.training import TrainConfig, train
from atomizer.experiments import ExperimentSpec, run_experiment, run_landscape, run_sweep, store_runs
from atomizer.models.adapters import AdapterError, read_adapters
from atomizer.models.checkpoint import FORMAT, CheckpointError, load_model, save_checkpoint
from atomizer.models.registry import build_model
from atomizer.results.store import read_metrics, read_results_twin
from tests.dashboard.dashboard_support import (
    DASH_HOSTILE_LABEL,
    DASH_HOSTILE_MODALITY,
    DASH_HOSTILE_RUN,
    dash_hostile_store,
)

# --------------------------------------------------------------------------------------------------
# Checkpoints and records: files that cannot run code, folders locked while written
# --------------------------------------------------------------------------------------------------


ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.filterwarnings("ignore:No positive samples:UserWarning")

RECORDS_TRAIN = TINY_TRAIN


class _Hostile:
    """HOSTILE on purpose: unpickling this object opens ``marker`` for writing (creates the file, nothing else)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    """Write a HOSTILE ``.pt`` at ``path``: the right format key and keys, plus an object whose unpickling
    creates ``marker``. The one hostile checkpoint of this module (CLI, library, notebooks, dashboard)."""
    payload = {
        "format": FORMAT,
        "arch": "atomizer",
        "config": {},
        "state_dict": {},
        "extra": {"step": 1, "optimizer": _Hostile(marker)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    assert not marker.exists()
    return path


def records_hostile_checkpoint(folder: Path, name: str = "hostile.pt") -> tuple[Path, Path]:
    """:func:`hostile_checkpoint` as ``folder/name``; returns (file, marker)."""
    marker = folder / f"{name}.MARKER"
    return hostile_checkpoint(folder / name, marker), marker


def records_one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atomizer: error:"), err
    assert "Traceback" not in err
    return lines[0]


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
def test_records_hostile_checkpoint_is_refused_by_the_cli(command, tmp_path, tiny_run, eurosat_paths, capsys):
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
        run, cfg = records_copy_run(tiny_run, tmp_path / "run")
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


def test_records_real_checkpoints_load_weights_only(tiny_run, tmp_path, majortom_product_dir):
    """Everything training, pretraining and adapter training write loads with weights_only=True: optimizer
    state, configs, classes, validation metrics (NumPy numbers at the source), the decoder, the adapters."""
    from atomizer.engine.pretraining import PretrainConfig, pretrain
    from atomizer.models.adapters import load_adapters

    for name in ("best.pt", "last.pt"):
        payload = torch.load(tiny_run / "checkpoints" / name, weights_only=True)
        assert payload["extra"]["optimizer"]["state"] and payload["extra"]["classes"]
        assert load_model(tiny_run / "checkpoints" / name).cfg.num_classes == 10
    assert isinstance(torch.load(tiny_run / "checkpoints" / "best.pt", weights_only=True)["extra"]["best"], float)
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
                "init": str(tiny_run / "checkpoints" / "best.pt"),
                "adapters": {"rank": 2},
                "out_dir": str(tmp_path / "ad"),
            }
        ),
        progress=False,
    )
    assert torch.load(adapted["adapters"], weights_only=True)["state_dict"]
    base = load_model(tiny_run / "checkpoints" / "best.pt")
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


def test_records_a_resumed_run_removes_stale_temporary_files(tiny_run, tmp_path, capsys):
    """A kill mid-write leaves ``.last.pt.XXXXXXXX.tmp``: the next writer of the folder removes it, and
    only files of that naming."""
    run, cfg = records_copy_run(tiny_run, tmp_path / "run")
    stale = [run / "checkpoints" / ".last.pt.k1ll3d_x.tmp", run / ".summary.json.abcd1234.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    kept = run / "notes.tmp"
    kept.write_text("mine")
    assert main(["train", str(cfg), "--resume"]) == 0, capsys.readouterr().err
    assert not any(p.exists() for p in stale) and kept.exists()
    assert clean_stale_temps(tmp_path / "nowhere") == []


def test_records_second_writer_of_a_run_folder_is_refused(tiny_run, tmp_path, capsys):
    """Two ``train --resume`` on one run: while the first holds the folder, the second is refused in one
    line naming the folder, and nothing in the folder changes."""
    run, cfg = records_copy_run(tiny_run, tmp_path / "run")
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


# --------------------------------------------------------------------------------------------------
# Experiment specs are data
# --------------------------------------------------------------------------------------------------


DISJOINT = str(ROOT / "notebooks" / "disjoint_modalities.ipynb")


def _specs_write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def _specs_base(tmp_path: Path) -> dict:
    return {"name": "attack", "notebook": DISJOINT, "output_dir": str(tmp_path / "store")}


def _specs_run_cli(spec: Path, capsys) -> str:
    """``atomizer experiment run SPEC``: must be refused (exit 2) in one line; returns that line."""
    assert main(["experiment", "run", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("atomizer: error: ") and "\n" not in err, err
    return err


def test_spec_key_injection_runs_no_code(tmp_path, capsys):
    """A parameter name holding a newline and code (papermill writes names raw into the kernel)."""
    marker = tmp_path / "pwned"
    key = f"epochs\nopen({str(marker)!r}, 'w').write('pwned')\nx"
    for where in ("parameters", "grid"):
        spec = {**_specs_base(tmp_path), where: {key: [1] if where == "grid" else 1}}
        err = _specs_run_cli(_specs_write(tmp_path, yaml.safe_dump(spec)), capsys)
        assert f"{where} key " in err and "epochs\\nopen(" in err and "not a Python identifier" in err
    assert not marker.exists() and not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("value", "words"),
    [
        # bytes whose repr breaks out of papermill's quoting: '"; open(MARKER).write(...) #'
        ("!!binary {b64}", "bytes (a !!binary value?)"),
        ("2024-01-01", "is a date"),
        (".nan", "not a finite number"),
        ("!!set {{a: null}}", "is a set"),
        ("!!python/object/apply:builtins.exec [\"open({marker!r}, 'w').write('pwned')\"]", "not valid YAML"),
    ],
    ids=["binary", "date", "nan", "set", "python-object"],
)
def test_spec_value_injection_runs_no_code(tmp_path, capsys, value, words):
    import base64

    marker = tmp_path / "pwned"
    payload = f"\"; open({str(marker)!r}, 'w').write('pwned') #".encode()
    text = value.format(b64=base64.b64encode(payload).decode(), marker=str(marker))
    spec = _specs_write(
        tmp_path,
        f"name: attack\nnotebook: {DISJOINT}\noutput_dir: {tmp_path / 'store'}\nparameters:\n  dataset: {text}\n",
    )
    err = _specs_run_cli(spec, capsys)
    assert words in err and ("parameters.dataset" in err or "YAML" in err), err
    assert not marker.exists() and not (tmp_path / "store").exists()


def _specs_tiny_notebook(path: Path) -> Path:
    """A real notebook: a parameters cell (dataset, output_dir), then a cell writing into output_dir."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('dataset = ""\noutput_dir = ""')
    params.metadata["tags"] = ["parameters"]
    body = "from pathlib import Path\nPath(output_dir).mkdir(parents=True, exist_ok=True)\n"
    body += "(Path(output_dir) / 'ran.txt').write_text(dataset)"
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, path)
    return path


def test_grid_path_traversal_stays_under_output_dir(tmp_path, capsys):
    """A grid KEY ``../../x`` is refused; a grid VALUE ``../../x`` names a slugged folder inside the store."""
    base = tmp_path / "a" / "b"
    base.mkdir(parents=True)
    store = base / "store"
    spec = {"name": "attack", "notebook": str(_specs_tiny_notebook(base / "tiny.ipynb")), "output_dir": str(store)}
    err = _specs_run_cli(_specs_write(base, yaml.safe_dump({**spec, "grid": {"../../x": [1]}})), capsys)
    assert "grid key '../../x'" in err and not store.exists()

    hostile = ["../../x", "../../../y/..", "/tmp/z"]
    summary = run_experiment(ExperimentSpec.from_dict({**spec, "grid": {"dataset": hostile}}))
    assert len(summary["done"]) == 3 and not summary["failed"], summary
    runs = sorted(p for p in store.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["dataset-.x", "dataset-.y.", "dataset-tmpz"]
    assert sorted((p / "ran.txt").read_text() for p in runs) == sorted(hostile)  # the value itself is passed as is
    assert not (tmp_path / "x").exists() and not (tmp_path / "a" / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize(
    "notebook",
    ["http://127.0.0.1:9/x.ipynb", "s3://bucket/x.ipynb", "file:///etc/x.ipynb", "gs://b/x.ipynb", "abs://c/x.ipynb"],
)
def test_url_notebook_is_refused(tmp_path, capsys, notebook):
    spec = _specs_write(tmp_path, yaml.safe_dump({**_specs_base(tmp_path), "notebook": notebook}))
    err = _specs_run_cli(spec, capsys)
    assert repr(notebook) in err and "local .ipynb" in err and not (tmp_path / "store").exists()


def test_undeclared_grid_key_is_refused_before_any_run(tmp_path, capsys):
    """``seed`` on disjoint_modalities (which takes ``seeds``) used to run two identical seed-0 runs."""
    spec = {**_specs_base(tmp_path), "parameters": {"epochs": 1}, "grid": {"seed": [0, 1]}}
    err = _specs_run_cli(_specs_write(tmp_path, yaml.safe_dump(spec)), capsys)
    assert "grid key 'seed' is not a parameter of disjoint_modalities.ipynb" in err and "seeds" in err
    assert not (tmp_path / "store").exists()  # nothing ran, no run folder


@pytest.mark.parametrize("address", ["tcp://10.1.2.3:8786", "192.168.0.7:8786", "tcp://sched.example.org:8786"])
def test_plain_tcp_scheduler_off_loopback_is_refused(tmp_path, capsys, address):
    spec = {**_specs_base(tmp_path), "scheduler": address}
    err = _specs_run_cli(_specs_write(tmp_path, yaml.safe_dump(spec)), capsys)
    assert repr(address) in err and "trust_scheduler: true" in err and "tls://" in err
    assert not (tmp_path / "store").exists()
    trusted = ExperimentSpec.from_dict({**spec, "trust_scheduler": True})  # the user's explicit opt-in
    assert trusted.check()[0][0] == "run"


def test_hostile_checkpoint_in_a_store_is_not_executed_by_the_notebooks(tmp_path):
    """A shared store whose run's best.pt is a hostile pickle, handed to what the sweep and landscape
    notebooks call for every run of a store (store_runs -> run_sweep / run_landscape)."""
    marker = tmp_path / "pwned"
    run = tmp_path / "store" / "atomizer" / "seed-0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(
        yaml.safe_dump(TrainConfig.from_dict({"model": "atomizer", "out_dir": str(run)}).to_dict())
    )
    (run / "metrics.jsonl").write_text("")
    hostile_checkpoint(run / "checkpoints" / "best.pt", marker)
    assert store_runs(tmp_path / "store") == [run]
    for evaluate in (lambda: run_landscape(run, device="cpu"), lambda: run_sweep(run, "gsd", [20.0], device="cpu")):
        with pytest.raises(ValueError) as e:
            evaluate()
        assert "\n" not in str(e.value) and "best.pt" in str(e.value), str(e.value)
        assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# Readers stay local, inputs are bounded before they are read
# --------------------------------------------------------------------------------------------------


class _ReadersListener:
    """An HTTP server on 127.0.0.1 (ephemeral port) in a daemon thread, recording each request's path."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        seen = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                seen.append(f"GET {self.path}")
                self.send_response(404)
                self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802
                seen.append(f"HEAD {self.path}")
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def readers_listener():
    listener = _ReadersListener()
    yield listener
    listener.close()


def _readers_geotiff(path: Path, size: int = 16, count: int = 1) -> Path:
    """A real single- or multi-band GeoTIFF (UTM 33N, 10 m) of distinct uint16 values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (np.arange(count * size * size, dtype=np.uint16) % 5000 + 1).reshape(count, size, size)
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=count, dtype="uint16", crs="EPSG:32633",
        transform=from_origin(500000, 5300000, 10, 10),
    ) as dst:  # fmt: skip
        dst.write(data)
    return path


def _readers_vrt(source: str, size: int = 16) -> str:
    """A VRT whose one band reads ``source`` (a /vsicurl/ URL or a local file): hostile when named ``.tif``."""
    return (
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><VRTRasterBand dataType="UInt16" band="1">'
        f'<SimpleSource><SourceFilename relativeToVRT="0">{source}</SourceFilename><SourceBand>1</SourceBand>'
        "</SimpleSource></VRTRasterBand></VRTDataset>"
    )


def _readers_one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("atomizer: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def _readers_stac_item(folder: Path, href: str) -> Path:
    """A STAC item (eo:bands given, no sidecar needed) whose one data asset ``B04`` points at ``href``."""
    folder.mkdir(parents=True, exist_ok=True)
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
        "id": "hostile_item",
        "geometry": None,
        "properties": {"datetime": "2022-07-06T08:56:11Z"},
        "links": [],
        "assets": {
            "B04": {
                "href": href,
                "type": "image/tiff; application=geotiff",
                "roles": ["data"],
                "eo:bands": [{"name": "B04", "center_wavelength": 0.665, "full_width_half_max": 0.031}],
            }
        },
    }
    path = folder / "item.json"
    path.write_text(json.dumps(item))
    return path


# --------------------------------------------------------------------------------------------------
# GDAL drivers: a file is read as what its name says, and GDAL's network is off
# --------------------------------------------------------------------------------------------------


def test_vrt_named_tif_pointing_at_a_url_sends_no_request(tmp_path, readers_listener, capsys):
    """Hostile file: ``B04.tif`` holding a VRT whose source is ``/vsicurl/`` on the local listener."""
    folder = tmp_path / "scene"
    folder.mkdir()
    (folder / "B04.tif").write_text(_readers_vrt(f"/vsicurl/{readers_listener.url('x.tif')}"))
    assert main(["inspect", str(folder)]) == 2
    err = _readers_one_line_error(capsys)
    assert "B04.tif" in err and "not a readable GeoTIFF" in err
    assert readers_listener.requests == []


def test_vrt_named_tif_pointing_at_a_local_file_elsewhere_is_refused(tmp_path, capsys):
    """Hostile file: ``B04.tif`` holding a VRT that reads a (real) GeoTIFF outside the folder."""
    outside = _readers_geotiff(tmp_path / "elsewhere" / "secret.tif")
    folder = tmp_path / "scene"
    folder.mkdir()
    (folder / "B04.tif").write_text(_readers_vrt(str(outside.resolve())))
    assert main(["inspect", str(folder)]) == 2
    assert "not a readable GeoTIFF" in _readers_one_line_error(capsys)
    with pytest.raises(ImageReadError, match="B04.tif: not a readable GeoTIFF"):
        open_image(folder)
    # the real GeoTIFF itself still reads, in the same layout
    shutil.copy(outside, folder / "B04.tif")
    assert open_image(folder)["B04"].shape == (16, 16)


def test_url_and_vsi_input_paths_are_refused_and_send_no_request(tmp_path, readers_listener, capsys):
    for path in (readers_listener.url("x.tif"), f"/vsicurl/{readers_listener.url('y.tif')}"):
        assert main(["inspect", path, "--sensor", "sentinel2"]) == 2
        assert "allow_remote=True" in _readers_one_line_error(capsys)
        with pytest.raises(ImageReadError, match="URL or GDAL virtual path"):
            open_image(path, sensor="sentinel2")
    assert readers_listener.requests == []


def test_vsi_input_path_reads_when_allowed_explicitly(tmp_path):
    """The opt-in works: a GDAL virtual path (an in-memory GeoTIFF) reads with ``allow_remote=True``."""
    src = _readers_geotiff(tmp_path / "img.tif", count=13)
    with MemoryFile(src.read_bytes(), filename="img.tif") as mem:
        with pytest.raises(ImageReadError, match="allow_remote"):
            open_image(mem.name, sensor="sentinel2")
        order = get_sensor("sentinel2").band_names  # the file names no bands: its channel order, given
        ds = open_image(mem.name, sensor="sentinel2", band_names=order, allow_remote=True)
        assert ds["B04"].shape == (16, 16) and int(ds["B01"].values[0, 0]) == 1


# --------------------------------------------------------------------------------------------------
# STAC hrefs stay inside the item's folder
# --------------------------------------------------------------------------------------------------


def test_stac_href_to_a_url_sends_no_request(tmp_path, readers_listener, capsys):
    """Hostile file: a STAC item whose asset href is the local listener's URL."""
    item = _readers_stac_item(tmp_path / "stac", readers_listener.url("B04.tif"))
    assert main(["inspect", str(item)]) == 2
    err = _readers_one_line_error(capsys)
    assert "asset 'B04'" in err and "allow_remote=True" in err
    with pytest.raises(ImageReadError, match="asset 'B04'"):
        read_stac_item(item)
    assert readers_listener.requests == []


@pytest.mark.parametrize("escape", ["../outside/B04.tif", "absolute", "/vsicurl/"])
def test_stac_href_outside_the_item_folder_is_refused(tmp_path, readers_listener, capsys, escape):
    """Hostile file: a STAC item whose asset href leaves its folder (``../``, an absolute path, a /vsi path)
    to a real GeoTIFF; refused unless the caller opts out explicitly."""
    outside = _readers_geotiff(tmp_path / "outside" / "B04.tif")
    href = {
        "../outside/B04.tif": "../outside/B04.tif",
        "absolute": str(outside.resolve()),
        "/vsicurl/": f"/vsicurl/{readers_listener.url('B04.tif')}",
    }[escape]
    item = _readers_stac_item(tmp_path / "stac", href)
    assert main(["inspect", str(item)]) == 2
    err = _readers_one_line_error(capsys)
    assert "asset 'B04'" in err and ("outside the item's folder" in err or "GDAL virtual path" in err)
    assert readers_listener.requests == []
    if escape != "/vsicurl/":  # explicit opt-out: the file outside is read
        ds = read_stac_item(item, allow_outside=True)
        assert ds["B04"].shape == (16, 16)
        assert open_image(item, allow_outside=True)["B04"].shape == (16, 16)


def test_stac_href_through_a_link_leading_out_is_refused(tmp_path):
    """Hostile layout: the asset is a symbolic link in the item's folder to a GeoTIFF elsewhere."""
    outside = _readers_geotiff(tmp_path / "outside" / "B04.tif")
    item = _readers_stac_item(tmp_path / "stac", "./B04.tif")
    (item.parent / "B04.tif").symlink_to(outside)
    with pytest.raises(ImageReadError, match="outside the item's folder"):
        read_stac_item(item)


def test_landsat_mtl_file_name_leading_out_of_the_product_is_refused(tmp_path, majortom_product_dir):
    """Hostile file: a Landsat MTL whose band file name is a ``../`` path to a (real) GeoTIFF elsewhere."""
    from tests.data import product_fixtures as fx

    folder = fx.build_landsat(majortom_product_dir, tmp_path, fmt="txt")
    mtl = next(folder.glob("*_MTL.txt"))
    name = next(f.name for f in folder.glob("*_SR_B4.TIF"))
    _readers_geotiff(tmp_path / "elsewhere" / name)
    mtl.write_text(mtl.read_text().replace(f'"{name}"', f'"../elsewhere/{name}"'))
    with pytest.raises(ImageReadError, match="outside the product folder"):
        open_image(folder)


# --------------------------------------------------------------------------------------------------
# Inputs above the atom limit are refused from their header, before any pixel is read
# --------------------------------------------------------------------------------------------------


def _readers_truncated_after_header(src: Path, dst: Path) -> Path:
    """A copy of the real GeoTIFF ``src`` cut where its first pixel block begins: the header (size, bands,
    georeferencing) is whole, every pixel is gone, so reading any pixel fails."""
    with rasterio.open(src) as s:
        first = min(int(s.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=b)) for b in range(1, s.count + 1))
    dst.write_bytes(src.read_bytes()[:first])
    return dst


def test_predict_above_the_atom_limit_is_refused_before_reading(tmp_path, eurosat_paths, tiny_run, monkeypatch, capsys):
    real = tmp_path / "eurosat.tif"
    with rasterio.open(eurosat_paths[0]) as s:  # a real EuroSAT image, rewritten uncompressed in strips
        profile = {**s.profile, "compress": None, "tiled": False}
        data = s.read()
    with rasterio.open(real, "w", **profile) as d:
        d.write(data)
    n_atoms = data.size  # 13 bands x 64 x 64
    cut = _readers_truncated_after_header(real, tmp_path / "cut.tif")
    # without a limit in the way, the cut file fails when its pixels are read
    with pytest.raises(ImageReadError):
        open_image(cut).load()
    monkeypatch.setenv("ATOMIZER_MAX_ATOMS", str(n_atoms - 1))
    from atomizer.engine.inference import predict_image

    for path in (real, cut):  # the cut file gets the limit's error: no pixel was read to reach it
        with pytest.raises(InputTooLargeError, match=f"holds {n_atoms:,} atoms, above the limit of {n_atoms - 1:,}"):
            predict_image(tiny_run / "checkpoints" / "best.pt", path)
    assert main(["predict", str(tiny_run / "checkpoints" / "best.pt"), str(cut)]) == 2
    err = _readers_one_line_error(capsys)
    assert f"{n_atoms:,} atoms" in err and f"limit of {n_atoms - 1:,}" in err
    monkeypatch.setenv("ATOMIZER_MAX_ATOMS", str(n_atoms))  # at the limit: read and predicted
    probs = predict_image(tiny_run / "checkpoints" / "best.pt", real)
    assert len(probs) == 10 and all(0.0 <= p <= 1.0 for p in probs.values())


def test_npz_above_the_atom_limit_is_refused_from_its_headers(tmp_path, ben_patch_paths, tiny_run, monkeypatch):
    """Hostile file: an npz whose arrays' headers are whole but whose data is cut (reading it would fail)."""
    import zipfile

    with np.load(ben_patch_paths[0]) as z:
        arrays = {k: z[k] for k in z.files}
    n_atoms = sum(int(v.size) for k, v in arrays.items() if v.ndim == 2 and k.startswith("B"))
    cut = tmp_path / "cut.npz"
    with zipfile.ZipFile(cut, "w") as out:  # stored members: each .npy header, then no data
        for k, v in arrays.items():
            full = tmp_path / f"{k}.npy"
            np.save(full, v)
            raw = full.read_bytes()
            header = raw[: len(raw) - v.nbytes] if v.ndim == 2 else raw
            out.writestr(f"{k}.npy", header)
    with pytest.raises(ImageReadError):
        open_image(cut)
    monkeypatch.setenv("ATOMIZER_MAX_ATOMS", str(n_atoms - 1))
    from atomizer.engine.inference import predict_image

    with pytest.raises(InputTooLargeError, match=f"holds {n_atoms:,} atoms"):
        predict_image(tiny_run / "checkpoints" / "best.pt", cut)


# --------------------------------------------------------------------------------------------------
# The served dashboard: confined to its roots, escaped, origin-checked
# --------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------ helpers


def dash_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dash_serve_in_thread(make):
    """Run the server ``make()`` builds (not started) in a thread of its own event loop; returns (server, stop)."""
    box: queue.Queue = queue.Queue()

    def run() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            server = make()
            server.start()
        except BaseException as e:  # noqa: BLE001  (handed to the test)
            box.put(e)
            return
        box.put(server)
        server.io_loop.start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    server = box.get(timeout=120)
    if isinstance(server, BaseException):
        raise server

    def stop() -> None:
        def _stop() -> None:
            try:
                server.stop()
            finally:
                server.io_loop.stop()

        server.io_loop.add_callback(_stop)
        thread.join(timeout=30)

    return server, stop


def dash_get(url: str, host: str | None = None) -> tuple[int, str]:
    """GET ``url`` (optionally with another Host header); (status, body), redirects not followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=60) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def dash_handshake(port: int, headers: dict[str, str]) -> int:
    """A real websocket handshake on the app's ``/ws`` with a valid session token; 101 when accepted, else the
    HTTP status the server refused it with."""
    from bokeh.util.token import generate_jwt_token, generate_session_id
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    token = generate_jwt_token(generate_session_id(), signed=False)

    async def go() -> int:
        req = HTTPRequest(f"ws://127.0.0.1:{port}/ws", headers=headers, request_timeout=60)
        try:
            conn = await websocket_connect(req, subprotocols=["bokeh", token])
        except HTTPClientError as e:
            return e.code
        conn.close()
        return 101

    # in a thread of its own: an earlier test (a browser or a notebook kernel) may leave this thread's loop running
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(go())))
    thread.start()
    thread.join(120)
    assert result, "the websocket handshake did not finish"
    return result[0]


def dash_new_documents(server, path: str, seen: set[int]) -> list:
    """The documents of the sessions ``server`` holds for ``path`` whose id is not in ``seen``."""
    return [s.document for s in server.get_sessions(path) if id(s.document) not in seen]


def dash_has_tabs(doc) -> bool:
    """Whether a Bokeh document holds the dashboard (its Results tab)."""
    return any(getattr(m, "title", None) == "Results" for m in doc.models)


def dash_document_text(doc) -> str:
    """The text of every Markdown/HTML model of a Bokeh document (what its panes render)."""
    return "\n".join(str(getattr(m, "text", "")) for m in doc.models if getattr(m, "text", None))


def dash_panes(obj) -> list:
    """Every pane inside a layout (or the object itself)."""
    if isinstance(obj, pn.layout.ListLike) or isinstance(obj, pn.layout.base.ListPanel):
        return [p for o in obj.objects for p in dash_panes(o)]
    return [obj]


def dash_inner_html(pane) -> str:
    """The HTML a Markdown/HTML/Alert/DataFrame pane puts into the page (what the browser sets as innerHTML)."""
    model = pane.get_root(Document())
    return html.unescape(model.text)


# ------------------------------------------------------------------------------------------ URL parameters


def test_dash_url_parameter_checkpoint_is_ignored(tmp_path):
    """``panel serve dashboards/app.py``: a GET naming a hostile checkpoint in ``?checkpoint=`` loads nothing."""
    from panel.io.application import build_single_handler_application

    marker = tmp_path / "pwned"
    evil = hostile_checkpoint(tmp_path / "evil.pt", marker)
    store = tmp_path / "store"
    store.mkdir()
    port = dash_free_port()
    app = build_single_handler_application(str(ROOT / "dashboards" / "app.py"), argv=["--results", str(store)])
    server, stop = dash_serve_in_thread(
        lambda: pn.serve({"app": app}, port=port, address="127.0.0.1", show=False, start=False, verbose=False)
    )
    try:
        status, body = dash_get(
            f"http://127.0.0.1:{port}/app?checkpoint={evil}&results={tmp_path}", host=f"localhost:{port}"
        )
        assert status == 200  # the session ran the app script
        assert not marker.exists()  # the hostile checkpoint was never unpickled
        assert str(evil) not in body
        (doc,) = dash_new_documents(server, "/app", set())
        assert dash_has_tabs(doc)  # the dashboard, built from --args only
        seen = {id(d) for d in dash_new_documents(server, "/app", set())}
        # a request that names another host (DNS rebinding) gets the one-line refusal, not the dashboard
        dash_get(f"http://127.0.0.1:{port}/app", host=f"evil.example:{port}")
        (refused,) = dash_new_documents(server, "/app", seen)
        assert not dash_has_tabs(refused)
        assert "answers only on the machine" in dash_document_text(refused)
    finally:
        stop()
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ roots


def test_dash_results_root_outside_roots_refused(tmp_path):
    """The Results tab's store box: a store outside the roots (or ``/``) is refused before anything is listed."""
    inside = dash_hostile_store(tmp_path / "served" / "store")
    outside = tmp_path / "elsewhere"
    (outside / "secret_run").mkdir(parents=True)  # a real run directory outside the roots
    (outside / "secret_run" / "config.yaml").write_text("model: atomizer\n")
    (outside / "secret_run" / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 1.0}\n')
    view = ResultsView(root="store", roots=Roots([inside]), resamples=100)
    assert len(view.runs()) == 2
    messages = {}
    for typed in (str(outside), "/", str(tmp_path / "does_not_exist"), "../../elsewhere"):
        view.root = typed
        assert view.runs().empty and view.store_path is not None
        assert view._store is None  # nothing was resolved, so nothing under it was scanned
        msg = view.runs_view().object
        assert "not under the folders this dashboard serves" in msg
        assert "secret_run" not in msg
        messages[typed] = msg.replace(escape_text(repr(typed)), "TYPED")
    # the message is the same whether the outside path exists or not
    assert len(set(messages.values())) == 1
    view.root = "store"  # back inside: served again
    assert len(view.runs()) == 2


def test_dash_spectral_sidecar_outside_roots_refused(tmp_path):
    """A valid sidecar outside the roots is not opened; the Select offers only files under the roots."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "cam.yaml").write_text(
        "name: cam\nbands:\n  - {name: nir, wavelength_nm: 860, bandwidth_nm: 40, gsd_m: 3}\n"
    )
    outside = tmp_path / "outside.yaml"
    outside.write_text("name: spy\nbands:\n  - {name: nir, wavelength_nm: 860, bandwidth_nm: 40, gsd_m: 3}\n")
    app = SpectralCoverage(roots=Roots([served]))
    assert app.sidecar_choices() == ["served/cam.yaml"]
    app.sidecar = str(outside)
    assert "not under the folders this dashboard serves" in app.sidecar_error
    assert "spy" not in set(app.band_table()["sensor"])
    app.sidecar = "../outside.yaml"
    assert "not under the folders" in app.sidecar_error and "spy" not in set(app.band_table()["sensor"])
    app.sidecar = "served/cam.yaml"
    assert app.sidecar_error is None and "cam" in set(app.band_table()["sensor"])


def test_dash_spectral_broken_yaml_is_not_echoed(tmp_path):
    """A sidecar that does not parse is named by line only: a secret on the offending line never reaches the page."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "creds.yaml").write_text("name: cam\npassword: hunter2-SECRET: [unclosed\nbands: []\n")
    app = SpectralCoverage(roots=Roots([served]))
    app.sidecar = "served/creds.yaml"
    assert app.sidecar_error is not None and "not valid YAML" in app.sidecar_error
    assert "line 2" in app.sidecar_error
    assert "SECRET" not in app.sidecar_error and "hunter2" not in app.sidecar_error
    assert "SECRET" not in app._messages().object


def test_dash_error_texts_carry_no_absolute_path(tmp_path):
    """Errors from a store and a sidecar show paths relative to their root, never the server's absolute paths."""
    store = tmp_path / "served" / "store"
    run = store / "broken"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: atomizer\n")
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 1.0}\n')
    (run / "results.nc").write_bytes(b"not a netcdf file")  # a foreign file: the store cannot be read
    roots = Roots([store])
    view = ResultsView(root="store", roots=roots)
    msg = view.table_view().object
    assert "Cannot read the store" in msg
    assert str(tmp_path) not in msg and "/tmp" not in msg
    app = SpectralCoverage(roots=roots)
    app.sidecar = "store/missing.yaml"
    assert "missing.yaml" in app.sidecar_error and str(tmp_path) not in app.sidecar_error
    # the scrubbing itself: a root's path becomes its label, another absolute path its last component
    scrubbed = roots.scrub(f"[Errno 2] No such file: '{store}/broken/x.nc' (see /usr/lib/python3/thing.py)")
    assert scrubbed == "[Errno 2] No such file: 'store/broken/x.nc' (see thing.py)"


# ------------------------------------------------------------------------------------------ stored XSS


def test_dash_hostile_names_escaped_in_every_results_pane(tmp_path):
    """A store whose run folder, model label and modality name hold HTML: every HTML-rendering pane of the
    Results tab shows them as text (no element can be injected)."""
    store = dash_hostile_store(tmp_path / "store")
    view = ResultsView(root="store", roots=Roots([store]), resamples=100)
    assert view.run == DASH_HOSTILE_RUN and view.reference == DASH_HOSTILE_LABEL  # the hostile ones are shown
    panes = []
    for method in (
        view.runs_view,
        view.repeats_view,
        view.landscape_view,
        view.table_view,
        view.sweeps_view,
        view.curves_view,
    ):
        panes += dash_panes(method())
    view.run = "resnet"
    panes += dash_panes(view.curves_view())
    view.root = "nowhere"  # the empty states name the store the user typed
    panes += dash_panes(view.runs_view()) + dash_panes(view.table_view())
    html_panes = [p for p in panes if isinstance(p, (pn.pane.Markdown, pn.pane.HTML, pn.pane.DataFrame))]
    assert len(html_panes) >= 8
    shown = "\n".join(dash_inner_html(p) for p in html_panes)
    for hostile in (DASH_HOSTILE_RUN, DASH_HOSTILE_LABEL, DASH_HOSTILE_MODALITY):
        assert hostile not in shown  # never as markup
    lowered = shown.lower()
    assert "<img" not in lowered and "<script" not in lowered
    # ... but as text: each hostile name appears escaped
    for hostile in (DASH_HOSTILE_RUN, DASH_HOSTILE_LABEL, DASH_HOSTILE_MODALITY):
        assert html.escape(hostile, quote=False) in shown or escape_text(hostile) in shown, hostile


# ------------------------------------------------------------------------------------------ serving


def test_dash_websocket_origin_and_host_checks(tmp_path):
    """``atomizer serve``: a websocket handshake without an Origin, or from a page whose Origin equals its Host
    (DNS rebinding), is refused; one from the page at localhost is accepted."""
    from atomizer.dashboard.app import make_server

    store = tmp_path / "store"
    store.mkdir()
    port = dash_free_port()
    threads = pn.config.nthreads
    server, stop = dash_serve_in_thread(lambda: make_server(port, store, None, threads=0, address="localhost"))
    try:
        local = {"Host": f"localhost:{port}"}
        assert dash_handshake(port, {**local, "Origin": f"http://localhost:{port}"}) == 101
        assert dash_handshake(port, local) == 403  # no Origin
        evil = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        assert dash_handshake(port, evil) == 403  # Origin equal to Host, neither ours
        assert dash_handshake(port, {**evil, "Sec-Fetch-Site": "same-origin"}) == 403
        assert dash_handshake(port, {**local, "Origin": "http://evil.example"}) == 403
        # the page itself is not served to a request naming another host
        assert dash_get(f"http://127.0.0.1:{port}/", host=f"localhost:{port}")[0] == 200
        status, body = dash_get(f"http://127.0.0.1:{port}/", host=f"evil.example:{port}")
        assert status in (302, 403) and "atomizer-dashboard" not in body
    finally:
        stop()
        pn.config.nthreads = threads


def test_dash_serve_on_busy_port_fails_before_announcing(tmp_path, capsys):
    """``serve`` on a port another server holds raises one line and prints no 'serving ...' announcement."""
    from atomizer.dashboard.app import serve

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(OSError, match=f"port {port} is in use"):
            serve(port=port, results_root=tmp_path, show=False, warm=False, address="127.0.0.1")
    out = capsys.readouterr()
    assert "serving the dashboard" not in out.out + out.err


# --------------------------------------------------------------------------------------------------
# The Maps and Attention tabs: confined, escaped, bounded
# --------------------------------------------------------------------------------------------------


HOSTILE = '<img src=x onerror="alert(1)">'
EUROSAT_CLASSES = [
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
]  # fmt: skip


def maps_checkpoint(path: Path, classes: list[str] | None = None, **extra) -> Path:
    """A real tiny Atomizer checkpoint (untrained) with EuroSAT's training modalities."""
    torch.manual_seed(0)
    model = build_model("atomizer", "tiny", num_classes=10)
    meta = {"classes": classes or EUROSAT_CLASSES, "multilabel": False, "train_modalities": "eurosat_train"}
    return save_checkpoint(path, model, {**meta, **extra})


def maps_scene(folder: Path, product: Path, extent_m: int = 1280) -> Path:
    """A real 1,280 m crop of the embedded Major-TOM product, one GeoTIFF per band."""
    from tests.data import product_fixtures as fx

    for band in fx.NATIVE:
        data, prof = fx.crop(product, band, extent_m=extent_m)
        fx.write_raster(folder / f"{band}.tif", data, prof)
    return folder


def maps_html_texts(obj) -> list[str]:
    """The HTML/Markdown text of every pane under ``obj`` (Alert, Markdown, HTML; a DataFrame as rendered)."""
    out = []
    if isinstance(obj, pn.pane.DataFrame):
        out.append(obj.object.to_html(escape=obj.escape, index=obj.index))
    elif isinstance(obj, pn.pane.Markdown | pn.pane.HTML | pn.pane.Alert) and isinstance(obj.object, str):
        out.append(obj.object)
    for child in getattr(obj, "objects", []) or []:
        out.extend(maps_html_texts(child))
    return out


@pytest.fixture
def maps_served(tmp_path, majortom_product_dir):
    """What a served dashboard was started with: one root holding a checkpoint and a scene; the map cache
    elsewhere under tmp_path (never the checkout)."""
    root = tmp_path / "served"
    ckpt = maps_checkpoint(root / "runs" / "ckpt.pt")
    scene = maps_scene(root / "scenes" / "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419",
                       majortom_product_dir)  # fmt: skip
    return {
        "root": root,
        "roots": Roots({"served": root}),
        "checkpoint": ckpt,
        "scene": scene,
        "cache": tmp_path / "map_cache",
        "outside": tmp_path / "outside",
    }


def maps_view(s: dict, **params) -> MapView:
    params = {"checkpoint": "served/runs/ckpt.pt", "scene": f"served/scenes/{s['scene'].name}", **params}
    return MapView(roots=s["roots"], cache_dir=s["cache"], **params)


# ------------------------------------------------------------------------------------ code from checkpoints


def test_hostile_checkpoint_in_attention_tab_runs_nothing(maps_served):
    marker = maps_served["root"] / "attention_marker.txt"
    hostile_checkpoint(maps_served["root"] / "evil.pt", marker)
    app = AttentionMaps(checkpoint="served/evil.pt", roots=maps_served["roots"])
    view = app.main_view()
    assert not marker.exists()  # the pickle did not run
    assert isinstance(view, pn.pane.Alert) and view.alert_type == "danger"
    assert "\n" not in view.object and str(maps_served["root"]) not in view.object
    assert "<" not in view.object.replace("&lt;", "")  # one escaped line


def test_hostile_checkpoint_in_maps_tab_runs_nothing(maps_served):
    marker = maps_served["root"] / "maps_marker.txt"
    hostile_checkpoint(maps_served["root"] / "evil.pt", marker)
    view = maps_view(maps_served, checkpoint="served/evil.pt")
    assert view.build(blocking=True) is None
    assert not marker.exists()  # the pickle did not run
    assert "checkpoint" in view.status and "\n" not in view.status
    assert str(maps_served["root"]) not in view.status and "<" not in view.status


# ------------------------------------------------------------------------------------ paths outside the roots


def test_attention_tab_refuses_paths_outside_its_roots(maps_served, eurosat_paths):
    outside = maps_served["outside"]
    outside.mkdir()
    ckpt = maps_checkpoint(outside / "elsewhere.pt")
    app = AttentionMaps(checkpoint=str(ckpt), roots=maps_served["roots"])
    view = app.main_view()
    assert isinstance(view, pn.pane.Alert) and "not under the folders this dashboard serves" in view.object
    assert str(outside) not in view.object and "/" + outside.name not in view.object
    # the input and the sidecar boxes too, relative escapes included
    inside = AttentionMaps(checkpoint="served/runs/ckpt.pt", roots=maps_served["roots"])
    for field, value in (("path", str(eurosat_paths[0])), ("path", "../outside"), ("sensor", "/etc/passwd.yaml")):
        inside.param.update({"path": "", "sensor": "", field: value})
        shown = inside.main_view()
        assert isinstance(shown, pn.pane.Alert) and "not under the folders" in shown.object, (field, value)
        assert str(eurosat_paths[0].parent) not in shown.object and "/etc" not in shown.object


def test_maps_tab_refuses_paths_outside_its_roots(maps_served):
    outside = maps_served["outside"]
    outside.mkdir()
    before = builds_started()
    for params in ({"checkpoint": str(maps_checkpoint(outside / "elsewhere.pt"))}, {"scene": str(outside)},
                   {"scene": "served/../outside"}):  # fmt: skip
        view = maps_view(maps_served, **params)
        assert view.build(blocking=True) is None
        assert "not under the folders this dashboard serves" in view.status, params
        assert str(outside) not in view.status and str(maps_served["root"]) not in view.status
    assert builds_started() == before  # nothing was built: no file in the cache either
    assert not maps_served["cache"].exists() or not any(maps_served["cache"].iterdir())


# ------------------------------------------------------------------------------------ stored XSS


def test_hostile_class_and_modality_names_are_escaped_in_attention_panes(maps_served, eurosat_paths):
    root = maps_served["root"]
    mods = root / "mods.yaml"  # HOSTILE: a modality set whose modality name is HTML
    mods.write_text(
        "modalities:\n"
        f"  - name: '{HOSTILE}'\n    size_px: 32\n    gsd_m: 20\n    bands: [B02, B03, B04, B08]\n"
        "source: {size_px: 64, gsd_m: 10}\n"
    )
    classes = [HOSTILE, *EUROSAT_CLASSES[1:]]  # HOSTILE: a class name that is HTML
    maps_checkpoint(root / "xss.pt", classes=classes, train_modalities="served/mods.yaml")
    shutil.copy(eurosat_paths[0], root / "tile.tif")
    app = AttentionMaps(checkpoint="served/xss.pt", roots=maps_served["roots"], path="served/tile.tif")
    hostile = [m for m in app.param.modality.objects if HOSTILE in m]
    assert hostile, app.param.modality.objects  # offered (a Select shows it as text)
    app.modality = hostile[0]
    panes = maps_html_texts(app.main_view())
    text = "\n".join(panes)
    assert "&lt;img src=x onerror=" in text  # the modality name, escaped, in the info line
    assert "<img" not in text
    # the class name reaches the top-classes table escaped (the untrained model may rank it anywhere)
    app.param.update(modality="native")
    probs = app.result().probabilities()
    assert HOSTILE in probs.index
    table = maps_html_texts(app.main_view())
    assert all("<img" not in t for t in table)


def test_hostile_scene_name_is_escaped_in_maps_status(maps_served):
    bad = maps_served["root"] / "scenes" / HOSTILE.replace("/", "")  # HOSTILE: a scene folder named with HTML
    bad.mkdir(parents=True)
    view = maps_view(maps_served, scene=f"served/scenes/{bad.name}")
    view.build(blocking=True)
    assert view.status and "<img" not in view.status and "&lt;" in view.status
    panes = maps_html_texts(view.plot())
    assert panes and all("<img" not in t for t in panes)


# ------------------------------------------------------------------------------------ bounded work


def test_stride_of_one_pixel_is_refused_with_the_count_and_the_cap(maps_served):
    before = builds_started()
    view = maps_view(maps_served, stride_m=10.0)  # 1 px of the 10 m grid
    assert view.build(blocking=True) is None
    assert "3,969 windows" in view.status and "cap of 81" in view.status, view.status
    assert "\n" not in view.status and builds_started() == before
    assert not list(maps_served["cache"].glob("map_*.tif"))
    # and the absolute cap: 4 windows allowed by the scene, 3 by max_windows
    view = maps_view(maps_served, max_windows=3)
    assert view.build(blocking=True) is None and "4 windows" in view.status and "cap of 3" in view.status


def _maps_fill_pool() -> threading.Event:
    """Occupy every worker of the map pool until the returned event is set (so what is submitted next waits)."""
    release, started = threading.Event(), threading.Barrier(MAP_WORKERS + 1)

    def hold() -> None:
        started.wait()
        release.wait()

    for _ in range(MAP_WORKERS):
        _POOL.submit(hold)
    started.wait()
    return release


def test_two_sessions_asking_for_one_map_share_one_build(maps_served):
    a, b = maps_view(maps_served), maps_view(maps_served)
    before = builds_started()
    release = _maps_fill_pool()
    try:
        a.build()
        b.build()
        assert a._build is b._build and len(a._build.views) == 2  # one build followed by both sessions
    finally:
        release.set()
    a._build.future.result(timeout=120)
    a._poll(), b._poll()
    assert builds_started() == before + 1
    assert a.map_path == b.map_path and a.map_path.exists()
    assert a.map_path.parent == maps_served["cache"].resolve()
    assert not list(maps_served["cache"].glob("*.partial.tif"))


def test_closing_the_session_cancels_its_build(maps_served):
    # before it starts: queued behind a full pool, it never runs
    before = builds_started()
    release = _maps_fill_pool()
    try:
        queued = maps_view(maps_served)
        queued.build()
        queued.close()
    finally:
        release.set()
    assert queued._build.future.cancelled() and builds_started() == before

    # while it runs: the session closes after the first row of windows; the build stops there
    class ClosingView(MapView):
        def _on_build_progress(self, done: int, total: int) -> None:
            super()._on_build_progress(done, total)
            self.close()

    view = ClosingView(roots=maps_served["roots"], cache_dir=maps_served["cache"], checkpoint="served/runs/ckpt.pt",
                       scene=f"served/scenes/{maps_served['scene'].name}")  # fmt: skip
    assert view.build(blocking=True) is None
    assert isinstance(view._build.future.exception(), MapBuildCancelled)
    done, total = view._done
    assert 0 < done < total == 4  # 2 x 2 windows, stopped after the first row
    assert not view.target().exists()  # no finished map (the partial one stays for a later resume)
    assert "cancelled" in view.status


def test_map_cache_is_evicted_down_to_its_bound(maps_served):
    cache = maps_served["cache"]
    cache.mkdir()
    old = []
    for i in range(3):  # earlier maps (real files of the size of a map), least recently used first
        f = cache / f"map_old{i}.tif"
        f.write_bytes(os.urandom(200_000))
        os.utime(f, (1_000_000 + i, 1_000_000 + i))
        old.append(f)
    view = maps_view(maps_served, cache_max_bytes=450_000)
    path = view.build(blocking=True)
    assert path is not None and path.exists(), view.status
    size = path.stat().st_size
    kept = sorted(p.name for p in cache.glob("map_*") if p.is_file() and not p.name.endswith(".lock"))
    total = sum((cache / n).stat().st_size for n in kept)
    assert total <= max(450_000, size), kept  # down to the bound (or the new map alone, if larger)
    assert not old[0].exists()  # the least recently used went first
    assert path.name in kept  # the map just built stays
    # the bound alone, on a folder: down to it, what is kept stays
    remaining = [p for p in old if p.exists()]
    assert sorted(evict(cache, 0, keep=(path,))) == sorted(remaining)
    assert [p.name for p in cache.glob("map_*.tif")] == [path.name]
