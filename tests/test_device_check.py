"""`scripts/device_check.sh --dry-run`: the device check's every step on the CPU, small (CI runs it).

Checks the files it writes to $OUT and their fields, not their values (on a CPU they mean nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_dry_run_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    r = subprocess.run(
        ["bash", "scripts/device_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    from atomizer.bench import DEVICE_CHECK_FILES, DEVICE_CHECK_OUTPUTS

    assert sorted(p.name for p in out.iterdir()) == sorted(DEVICE_CHECK_FILES[k] for k in DEVICE_CHECK_OUTPUTS)
    assert len(DEVICE_CHECK_OUTPUTS) <= 4  # at most 8 files come back from the device machine's $OUT: room for tests
    summary = json.loads((out / "device_check.json").read_text())

    env_rec = summary["env"]
    for key in ("date", "dry_run", "python", "torch", "cuda_available", "device_name", "missing", "commit"):
        assert key in env_rec, key
    assert env_rec["dry_run"] is True

    names = {case.split("::")[-1].split("[")[0] for case in summary["gpu_tests"]["cases"]}
    assert {
        "test_bf16_training_steps_are_finite_and_move_the_weights",
        "test_ddp_with_one_process_runs_a_step",
    } <= names
    assert {"test_compact_wire_rebuilt_on_the_device_equals_the_host_full_layout"} <= names
    assert {"test_streaming_inference_equals_one_pass", "test_map_strip_on_the_device_equals_the_cpu_strip"} <= names

    records = json.loads((out / "bench.json").read_text())["records"]
    step = next(r for r in records if r["case"] == "encoder_train_step")
    for key in ("batch", "precision", "images_per_second", "flops_per_image", "achieved_tflops", "seconds_per_image"):
        assert key in step, key
    assert any("data_wait_fraction" in r for r in records if r["case"] == "loader")

    assert summary["bench_records"] == records
    demo = summary["demo"]
    assert [d["model"] for d in demo] == ["atomizer", "resnet"]  # experiments/embedded_demo.yaml's models
    for d in demo:
        for key in ("preset", "dataset", "device", "steps", "seconds", "images_per_second", "best_val_macro_map"):
            assert key in d, key

    assert summary["steps"] == {"gpu_tests": 0, "bench": 0, "demo": 0}
    assert summary["gpu_tests"]["failed"] == 0 and summary["gpu_tests"]["passed"] >= 8
    head = summary["headline"]
    for key in (
        "device",
        "dry_run",
        "train_step_batch",
        "train_step_precision",
        "train_step_images_per_second",
        "flops_per_image",
        "fraction_of_bf16_peak",
        "loader_wait_fraction",
    ):
        assert key in head, key
    assert head["dry_run"] is True and head["fraction_of_bf16_peak"] is None  # no bf16 peak off CUDA
    assert isinstance(head["loader_wait_fraction"], dict) and head["loader_wait_fraction"]
    md = (out / "device_check.md").read_text()
    assert "CPU dry run" in md and "fraction of the bf16 peak" in md and "loader wait fraction" in md
    assert "device check: every step ran" in (out / "device_check.log").read_text()
