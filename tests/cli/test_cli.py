"""The command line: each command's output on real inputs, and one-line errors for bad arguments."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from atomizer.cli import main
from atomizer.data.bands import list_sensors
from atomizer.engine.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]


def run(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "atomizer", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def tiny_checkpoint(tiny_run):
    return tiny_run / "checkpoints" / "best.pt"


def test_sensors_table(capsys):
    assert main(["sensors"]) == 0
    out = capsys.readouterr().out
    for name in list_sensors():
        assert name in out
    assert "B8A" in out and "864.7" in out and "wavelength_nm" in out


def test_sensors_sidecar(tmp_path, capsys):
    side = tmp_path / "cam.yaml"
    side.write_text(
        yaml.safe_dump(
            {"name": "cam", "bands": [{"name": "blue", "wavelength_nm": 490, "bandwidth_nm": 60, "gsd_m": 3}]}
        )
    )
    assert main(["sensors", "--sidecar", str(side)]) == 0
    assert "blue" in capsys.readouterr().out


def test_inspect_native_patch_counts_80000(ben_patch_paths, capsys):
    assert main(["inspect", str(ben_patch_paths[0])]) == 0
    out = capsys.readouterr().out
    assert "total atom tokens: 80,000" in out
    assert "120x120" in out and "60x60" in out and "20x20" in out


def test_inspect_scene_and_errors(majortom_product_dir, tmp_path, capsys):
    assert main(["inspect", str(majortom_product_dir)]) == 0
    assert "total atom tokens: 6,336,800" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "missing.tif")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("atomizer: error:") and "missing.tif" in err and len(err.strip().splitlines()) == 1


def test_predict_any_sensor(tiny_checkpoint, eurosat_paths, ben_patch_paths, tmp_path):
    r = run("predict", tiny_checkpoint, eurosat_paths[0], "--top", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3
    probs = [float(x.split()[0]) for x in lines]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
    # a BigEarthNet patch (other product, native grids) through the same EuroSAT-trained model
    r = run("predict", tiny_checkpoint, ben_patch_paths[0], "--top", "10")
    assert r.returncode == 0, r.stderr
    assert abs(sum(float(x.split()[0]) for x in r.stdout.splitlines()) - 1.0) < 1e-3  # softmax over 10 classes
    # a 4-band GeoTIFF described by a sidecar
    import rasterio

    with rasterio.open(eurosat_paths[0]) as src:
        arr, profile = src.read([2, 3, 4, 8]), src.profile
    profile.update(count=4)
    tif = tmp_path / "four.tif"
    with rasterio.open(tif, "w", **profile) as dst:
        dst.write(arr)
    side = tmp_path / "four.yaml"
    side.write_text(
        yaml.safe_dump(
            {
                "name": "four",
                "bands": [
                    {"name": n, "wavelength_nm": w, "bandwidth_nm": bw, "gsd_m": 10}
                    for n, w, bw in [("b", 492, 66), ("g", 560, 36), ("r", 665, 31), ("n", 833, 106)]
                ],
            }
        )
    )
    r = run("predict", tiny_checkpoint, tif, "--sidecar", side)
    assert r.returncode == 0, r.stderr
    r = run("predict", tiny_checkpoint, tif)  # no sensor for a 4-band file: clear one-line error
    assert r.returncode == 2 and "sidecar" in r.stderr and "Traceback" not in r.stderr


def _every_command() -> list[list[str]]:
    """Every subcommand of the parser (and the actions of those that have some), found from the parser
    itself, so a command added later is covered too."""
    import argparse

    from atomizer.cli import build_parser

    def subparsers(parser):
        return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})

    out = []
    for name, sub in subparsers(build_parser()).items():
        out.append([name])
        out += [[name, action] for action in subparsers(sub)]
    return out


def test_top_level_help_lists_every_command():
    """``atomizer --help`` and ``python -m atomizer --help`` (argparse once read a ``%`` in a help as a format)."""
    r = run("--help", timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: atomizer") and "Traceback" not in r.stderr
    names = [c[0] for c in _every_command()]
    assert {"sensors", "train", "evaluate", "predict", "map", "prepare", "results", "report", "serve"} <= set(names)
    for name in names:
        assert f"    {name}" in r.stdout, name
    assert "95 % CI" in r.stdout
    installed = Path(sys.executable).with_name("atomizer")  # the console script
    if installed.exists():
        r = subprocess.run([str(installed), "--help"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "serve" in r.stdout, r.stderr


def test_help_of_every_command(capsys):
    commands = _every_command()
    assert ["experiment", "run"] in commands and ["experiment", "list"] in commands
    for cmd in commands:
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and out.startswith(f"usage: atomizer {' '.join(cmd)}"), cmd


def test_warnings_print_as_one_line(tiny_checkpoint, tmp_path):
    """A Python warning raised by a command is one line, without the source line Python adds by default
    (here the band-coverage warning of a sidecar band outside the encoder's anchors)."""
    import rasterio
    from rasterio.transform import from_origin

    tif = tmp_path / "two.tif"
    with rasterio.open(
        tif, "w", driver="GTiff", height=16, width=16, count=2, dtype="uint16", transform=from_origin(0, 160, 10, 10)
    ) as dst:
        dst.write(np.full((2, 16, 16), 1000, np.uint16))
    side = tmp_path / "s.yaml"
    bands = [
        {"name": "red", "wavelength_nm": 665, "bandwidth_nm": 30, "gsd_m": 10},
        {"name": "swir3", "wavelength_nm": 2480, "bandwidth_nm": 10, "gsd_m": 10},
    ]
    side.write_text(yaml.safe_dump({"name": "swirish", "bands": bands}))
    r = run("predict", tiny_checkpoint, tif, "--sidecar", side)
    assert r.returncode == 0, r.stderr
    warned = [ln for ln in r.stderr.splitlines() if "warning" in ln.lower()]
    assert warned and all(ln.startswith("atomizer: warning: ") for ln in warned), r.stderr
    assert "swir3" in warned[0]
    assert not [ln for ln in r.stderr.splitlines() if ln.startswith("  ")], r.stderr  # no source line


def test_serve_options_reach_the_dashboard(monkeypatch):
    """--root (repeatable), --map-cache, --max-map-windows and --address are passed to serve by keyword;
    the address defaults to localhost. (serve is replaced by a recorder: no server is started.)"""
    import atomizer.dashboard.app as app

    seen = {}
    monkeypatch.setattr(app, "serve", lambda **kw: seen.update(kw))
    argv = ["serve", "--no-show", "--root", "a", "--root", "b", "--map-cache", "c", "--max-map-windows", "5"]
    assert main(argv) == 0
    assert seen["roots"] == ["a", "b"] and seen["map_cache"] == "c" and seen["max_map_windows"] == 5
    assert seen["address"] == "localhost"
    assert main(["serve", "--no-show", "--address", "0.0.0.0"]) == 0 and seen["roots"] == []
    assert seen["address"] == "0.0.0.0" and seen["map_cache"] is None and seen["max_map_windows"] is None
    assert main(["serve", "--max-map-windows", "0"]) == 2


def test_max_atoms_sets_the_limit_for_the_command_only(ben_patch_paths, monkeypatch, capsys):
    """--max-atoms is ATOMIZER_MAX_ATOMS for the command's duration (atomizer.core.limits), then restored."""
    from atomizer.cli import _atom_limit
    from atomizer.core.limits import max_atoms

    monkeypatch.setenv("ATOMIZER_MAX_ATOMS", "123456")
    with _atom_limit(1000):
        assert max_atoms() == 1000
    assert max_atoms() == 123456
    assert main(["inspect", str(ben_patch_paths[0]), "--max-atoms", "0"]) == 2
    assert "--max-atoms must be positive" in capsys.readouterr().err
    assert os.environ["ATOMIZER_MAX_ATOMS"] == "123456"
    # a BigEarthNet patch holds 80,000 atoms: inspect refuses it from its headers, naming count and limit
    capsys.readouterr()
    assert main(["inspect", str(ben_patch_paths[0]), "--max-atoms", "100"]) == 2
    err = capsys.readouterr().err
    assert "holds 80,000 atoms, above the limit of 100" in err and err.count("\n") == 1
    assert main(["inspect", str(ben_patch_paths[0]), "--max-atoms", "80000"]) == 0


def test_wrong_arguments_one_line_errors(tmp_path, tiny_checkpoint):
    r = run("evaluate", tiny_checkpoint)  # missing --modalities
    assert r.returncode == 2 and "--modalities" in r.stderr
    r = run("evaluate", tmp_path / "nope.pt", "--modalities", "eurosat_test")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "checkpoint not found" in r.stderr
    r = run("evaluate", tiny_checkpoint, "--modalities", "no_such_set")
    assert r.returncode == 2 and "modality file not found" in r.stderr
    r = run("train", tmp_path / "missing.yaml")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_train_config_types_from_yaml(tmp_path):
    """``epochs: two`` is refused in one line naming the field; ``lr: 1e-3`` (a YAML string) trains at 0.001."""
    base = {
        "model": "atomizer",
        "preset": "tiny",
        "dataset": "eurosat",
        "batch_size": 4,
        "max_steps": 1,
        "train_limit": 8,
        "val_limit": 4,
        "device": "cpu",
        "val_every_epoch": False,
    }
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**base, "out_dir": str(tmp_path / "bad_run")}) + "epochs: two\n")
    r = run("train", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atomizer: error:") and "epochs" in lines[0] and "'two'" in lines[0]
    assert "Traceback" not in r.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({**base, "epochs": 1, "out_dir": str(tmp_path / "run")}) + "lr: 1e-3\n")
    assert yaml.safe_load(good.read_text())["lr"] == "1e-3"
    r = run("train", str(good))
    assert r.returncode == 0, r.stderr[-2000:]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["lr"] == 0.001 and isinstance(saved["lr"], float)


def test_every_model_refuses_an_input_with_no_valid_value(tiny_checkpoint, eurosat_paths, tmp_path):
    """A 13-band GeoTIFF that is all nodata: the Atomizer and a canvas baseline both refuse it in one line;
    on a real tile the canvas model says how many of its canvas bands the input fills."""
    import rasterio

    resnet = train(
        TrainConfig.from_dict(
            {
                "model": "resnet",
                "preset": "tiny",
                "dataset": "eurosat",
                "epochs": 1,
                "max_steps": 1,
                "batch_size": 4,
                "train_limit": 4,
                "val_limit": 4,
                "device": "cpu",
                "out_dir": str(tmp_path / "resnet"),
            }
        ),
        progress=False,
    )["best"]
    with rasterio.open(eurosat_paths[0]) as src:
        profile, shape = src.profile, (src.count, src.height, src.width)
    empty = tmp_path / "empty.tif"
    with rasterio.open(empty, "w", **profile) as dst:
        dst.write(np.zeros(shape, dtype=profile["dtype"]))  # DN 0: Sentinel-2 nodata everywhere
    for ckpt in (tiny_checkpoint, resnet):
        r = run("predict", ckpt, empty)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and ("no valid" in r.stderr or "fills 0" in r.stderr)
    r = run("predict", resnet, eurosat_paths[0], "--top", "1")
    assert r.returncode == 0, r.stderr
    assert "note: input fills 12 of the 12 canvas bands" in r.stdout


def test_inspect_warns_about_bands_outside_the_anchors(tmp_path, capsys):
    """A sidecar band at 2,480 nm: accepted (it is optical), but inspect says the anchors do not cover it.
    (The pixels of this 2-band file are written by the test: only the sidecar matters here.)"""
    import rasterio
    from rasterio.transform import from_origin

    tif = tmp_path / "two.tif"
    with rasterio.open(
        tif, "w", driver="GTiff", height=8, width=8, count=2, dtype="uint16", transform=from_origin(0, 80, 10, 10)
    ) as dst:
        dst.write(np.full((2, 8, 8), 1000, np.uint16))
    side = tmp_path / "s.yaml"
    side.write_text(
        yaml.safe_dump(
            {
                "name": "swirish",
                "bands": [
                    {"name": "red", "wavelength_nm": 665, "bandwidth_nm": 30, "gsd_m": 10},
                    {"name": "swir3", "wavelength_nm": 2480, "bandwidth_nm": 10, "gsd_m": 10},
                ],
            }
        )
    )
    assert main(["inspect", str(tif), "--sidecar", str(side)]) == 0
    out = capsys.readouterr().out
    warned = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "swir3" in warned[0] and "EncodingConfig.anchors" in warned[0]


def test_set_is_repeatable():
    """``--set a=1 --set b=2 c=3`` keeps every pair (the README's own-data example repeats it)."""
    from atomizer.cli import build_parser

    args = build_parser().parse_args(["train", "c.yaml", "--set", "dataset=labels.csv", "--set", "fold=0", "lr=1e-3"])
    assert args.set == ["dataset=labels.csv", "fold=0", "lr=1e-3"]


def test_inspect_takes_the_channel_order_of_an_undescribed_file(tmp_path):
    """A real EuroSAT tile (13 channels, no band names) with ``--sensor sentinel2``: refused without its channel
    order (the catalogue's order is not the file's: B8A is last in EuroSAT), read with ``--bands``."""
    tile = ROOT / "data" / "embedded" / "eurosat" / "Forest" / "Forest_1.tif"
    r = run("inspect", tile, "--sensor", "sentinel2")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--bands" in r.stderr
    order = "B01,B02,B03,B04,B05,B06,B07,B08,B09,B10,B11,B12,B8A"
    r = run("inspect", tile, "--sensor", "sentinel2", "--bands", order)
    assert r.returncode == 0, r.stderr
    assert "total atom tokens: 53,248" in r.stdout and r.stdout.strip().splitlines()[-2].split()[0] == "B8A"
