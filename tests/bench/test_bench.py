"""Benchmark harness: the reference path computes the same function; memory probe; CLI records."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from atomizer.atoms.tokens import tokenize
from atomizer.bench import bf16_peak_tflops, count_flops, format_table, resample_to_120
from atomizer.data.readers import count_tokens, open_image
from atomizer.models.atomizer import Atomizer, AtomizerConfig

ROOT = Path(__file__).resolve().parents[2]


def test_reference_and_factorised_paths_compute_the_same_function(ben_patch_paths):
    img = open_image(ben_patch_paths[0])
    atoms = tokenize(img)
    torch.manual_seed(0)
    model = Atomizer(AtomizerConfig.preset("tiny")).eval()
    with torch.no_grad():
        fast = model(atoms)
        model.reference_embedding = True
        ref = model(atoms)
    assert torch.allclose(fast, ref, atol=1e-4)
    # and in training mode with the same pruning draws, gradients agree too
    model.train()
    grads = []
    for reference in (False, True):
        model.reference_embedding = reference
        model.zero_grad()
        model(atoms, generator=torch.Generator().manual_seed(3)).sum().backward()
        grads.append(model.blocks[0]["cross"].to_kv.proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-3 * float(grads[1].abs().max()))


def test_authors_input_is_172800_atoms_by_nearest_resampling(ben_patch_paths):
    img = open_image(ben_patch_paths[0])
    ref = resample_to_120(img)
    assert count_tokens(img) == 80_000 and count_tokens(ref) == 172_800
    assert ref["B01"].shape == (120, 120)
    np.testing.assert_array_equal(ref["B01"].values[::6, ::6], img["B01"].values)
    np.testing.assert_array_equal(ref["B02"].values, img["B02"].values)


def test_peak_memory_sees_an_allocation():
    # in a fresh process with glibc's defaults, as the bench's memory runs (this one may have tuned its allocator)
    code = (
        "import json, torch\n"
        "from atomizer.bench import PeakMemory\n"
        "with PeakMemory(torch.device('cpu')) as mem:\n"
        "    x = torch.ones(64 * 2**20 // 4)\n"  # 64 MiB, touched
        "    del x\n"
        "print(json.dumps([mem.rise, mem.peak_abs]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    rise, peak_abs = json.loads(r.stdout.strip().splitlines()[-1])
    assert rise >= 48 * 2**20 and peak_abs >= rise


def test_bench_cli_writes_records(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [sys.executable, "-m", "atomizer", "bench", "--quick", "--case", "scaling", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    recs = data["records"]
    assert [rec["case"] for rec in recs] == ["scaling"] * 3
    for rec in recs:
        for key in (
            "device",
            "preset",
            "tokens",
            "seconds_per_image",
            "tokens_per_second",
            "peak_memory_bytes",
            "peak_memory_abs_bytes",
        ):
            assert key in rec
        assert rec["tokens"] > 0 and rec["seconds_per_image"] > 0
    assert recs[0]["tokens"] < recs[1]["tokens"] < recs[2]["tokens"]
    assert "scaling" in r.stdout and "tokens_per_second" in format_table(recs)


def test_train_step_records_carry_the_latent_floor_and_the_amdahl_bound(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "atomizer",
            "bench",
            "--quick",
            "--case",
            "encoder_train_step",
            "--case",
            "reference_train_step",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    enc, ref = json.loads(out.read_text())["records"]
    assert (enc["case"], ref["case"]) == ("encoder_train_step", "reference_train_step")
    assert (enc["tokens"], ref["tokens"]) == (80_000, 172_800) and enc["precision"] == "fp32"
    # fields and units only: which timing is larger belongs to the benchmark, not to a test
    for rec in (enc, ref):
        for key in ("latent_floor_seconds_per_image", "seconds_per_image"):
            assert isinstance(rec[key], float) and 0 < rec[key] < 600, (key, rec[key])
    assert enc["speedup_vs_reference"] == ref["seconds_per_image"] / enc["seconds_per_image"]
    assert enc["speedup_bound_vs_reference"] == ref["seconds_per_image"] / enc["latent_floor_seconds_per_image"]
    above = enc["seconds_per_image"] - enc["latent_floor_seconds_per_image"]
    assert enc["token_side_speedup_vs_reference"] == pytest.approx(
        (ref["seconds_per_image"] - ref["latent_floor_seconds_per_image"]) / max(1e-9, above)
    )
    assert "token_side_speedup" in r.stdout and "speedup_bound" in r.stdout
    # FLOPs counted (CPU attention kernels included): the reference does more work for the same function
    assert 0 < enc["flops_per_image"] < ref["flops_per_image"]
    assert enc["achieved_tflops"] * 1e12 == pytest.approx(enc["flops_per_image"] / enc["seconds_per_image"])
    assert "fraction_of_bf16_peak" not in enc  # a CPU has no bf16 tensor-core peak to compare against


def test_gpu_peaks_are_looked_up_by_device_name():
    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA H200") == 989.4
    assert bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bf16_peak_tflops("Some Future GPU") is None


def test_flop_count_includes_cpu_attention():
    q = torch.randn(2, 1, 8, 16)
    k = torch.randn(2, 1, 100, 16)
    flops = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k))
    assert flops == 2 * (2 * 1 * 8 * 100 * 16) * 2  # QK^T and PV, 2 FLOPs per multiply-add


def test_loader_case_records_every_source_and_path():
    """`bench --case loader --quick` in-process: one record per (source, path) with consistent timing
    arithmetic, and the DataLoader records with a wait fraction in [0, 1]."""
    from atomizer.bench import case_loader

    recs = case_loader(quick=True)
    pairs = {(r["source"], r["path"]) for r in recs if "patches_per_second" in r}
    assert pairs == {
        ("geotiff", "xarray"),
        ("npz", "xarray"),
        ("npz", "fast"),
        ("lmdb", "xarray"),
        ("lmdb", "fast"),
        ("lmdb", "fast, wire compact"),
    }
    for r in recs:
        assert r["seconds_per_image"] > 0
        if "patches_per_second" in r:
            assert r["patches_per_second"] == pytest.approx(1 / r["seconds_per_image"])
    wire = {(r["modalities"], r["path"]): r for r in recs if "wire_bytes" in r}
    assert set(wire) == {(m, f"wire {w}") for m in ("native", "bigearthnet_train") for w in ("full", "compact")}
    for m in ("native", "bigearthnet_train"):
        full, compact = wire[m, "wire full"], wire[m, "wire compact"]
        assert full["bytes_per_atom"] > 17 and full["values"] == "float32"  # 17 an atom, plus the tables
        assert compact["atoms"] == full["atoms"] and compact["wire_bytes"] < full["wire_bytes"] / 3
        assert all(r["collate_seconds"] > 0 and r["handoff_seconds"] > 0 for r in (full, compact))
    assert wire["native", "wire compact"]["values"] == "uint16"  # every band kept its DN
    assert wire["bigearthnet_train", "wire compact"]["values"] == "float32"  # averaged bands are not integers
    waits = [r for r in recs if "workers" in r]
    assert [r["workers"] for r in waits] == [0, 1]
    assert all(0.0 <= r["data_wait_fraction"] <= 1.0 for r in waits)


def test_dense_decoder_case_times_every_output_grid():
    """`bench --case dense_decoder` in-process: global and local decoders on the real TerraMesh window, one record
    per output grid, the fixed cost per window apart from the cost per output pixel."""
    from atomizer.bench import case_dense_decoder

    recs = case_dense_decoder(torch.device("cpu"), "tiny", 1, [8, 16], window_px=64)
    assert [(r["decoder"], r["output_pixels"]) for r in recs] == [
        ("global", 64),
        ("global", 256),
        ("local", 64),
        ("local", 256),
    ]
    assert {r["tokens"] for r in recs} == {64 * 64 * 14}
    for r in recs:
        assert r["seconds_per_image"] > 0 and r["fixed_seconds"] > 0
        expected = max(r["seconds_per_image"] - r["fixed_seconds"], 0) / r["output_pixels"] * 1e6
        assert np.isclose(r["seconds_per_million_pixels"], expected)
