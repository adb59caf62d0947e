"""Benchmarks: ``atomizer bench [--quick] [--device cpu|cuda] [--json FILE]``.

Cases (each measured in its own subprocess, so one case's memory never pollutes another's):

1. ``encoder_train_step`` -- forward + backward of the ``paper`` preset on real native BigEarthNet
   patches (80,000 atoms each, pruning on), factorised token projection.
2. ``reference_train_step`` -- the same computation done the authors' way: every band resampled
   (nearest) to 120 x 120 (172,800 atoms), the full (atoms x token_dim) features materialised,
   LayerNorm, projected. Same weights, same function (``tests/test_bench.py`` checks it).
3. ``scaling`` -- inference time per atom for 10^4 .. 10^6 atoms (crops of the Major-TOM scene).
4. ``scene_inference`` -- the whole Major-TOM scene (6.3 M atoms) at native resolution, atoms
   streamed through each cross-attention in chunks (exact online softmax).
5. ``loader`` -- the input pipeline on real BigEarthNet patches (the embedded v2 patches, written as
   the official GeoTIFF folder layout, as npz and as the community LMDB): patches/s on one core from
   each source including modality simulation (``bigearthnet_train``, random windows) and tokenization,
   by the xarray path and the fast path (:class:`atomizer.data.light.LightImage`); the atoms' two
   layouts for a batch of 64 (``wire full``: every index, float32 values, 17 bytes an atom; ``wire
   compact``: index runs and uint16 DN where the modality keeps integers, :mod:`atomizer.atoms.tokens`):
   bytes, collate time, the handoff between processes (shared memory), pinning and the copy to the
   device with the rebuild; then a DataLoader with 0,
   1, 2 and all cores' worker processes feeding a ``tiny`` train step on the device, with the fraction
   of the step time spent waiting for data.

Peak memory: on CUDA, ``max_memory_allocated`` after a reset; on CPU, the rise of the process's peak
RSS (VmHWM, reset through ``/proc/self/clear_refs``) above its RSS once the model, its gradient buffers
and the input are built (glibc is told to return large freed blocks to the OS, so RSS is live memory);
the absolute peak is reported too. Times are medians over repetitions after a warm-up, in processes
whose allocator is tuned as ``atomizer train`` tunes it (:func:`atomizer.core.runtime.tune_cpu_allocator`).

The train-step records also carry:

* ``latent_floor_seconds_per_image``: the same step on 16 atoms per image, i.e. the latent network's
  cost, shared by both paths; ``speedup_bound_vs_reference`` = reference time / that floor is the most
  any token path could gain, and ``token_side_speedup_vs_reference`` compares the time above the floor.
* ``flops_per_image`` (``torch.utils.flop_counter``, recomputation included) and ``achieved_tflops``;
  on CUDA in bf16, ``fraction_of_bf16_peak`` against the device's dense bf16 peak (:data:`BF16_PEAK_TFLOPS`).

``--quick`` (CPU): batch 1, one repetition, one process per case that reports both time and memory with
glibc's default allocator (indicative numbers, under a minute on 2 cores).

With :data:`SMOKE_ENV` set (``scripts/device_check.sh --dry-run`` sets it), every case runs small: the
train steps on the ``tiny`` preset at batch 2, the loader on the LMDB source alone with in-process reading.
The records keep their fields; their figures mean nothing. The device check's other pieces live here too:
:func:`demo_train` (the demo experiment's models trained on the device) and :func:`device_summary` (every
figure of a device check in one JSON record and a markdown page).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CASES = ("encoder_train_step", "reference_train_step", "scaling", "scene_inference", "loader", "dense_decoder")
#: Set (to anything but ``""`` or ``0``) to run every case small (module docstring): the device check's dry run.
SMOKE_ENV = "ATOMIZER_BENCH_SMOKE"


def smoke() -> bool:
    """True when :data:`SMOKE_ENV` asks for small cases."""
    return os.environ.get(SMOKE_ENV, "") not in ("", "0")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or the rise of peak RSS above the current RSS."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            except OSError:
                pass
            self.base = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_abs = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak_abs = _status_kb("VmHWM") * 1024
        self.rise = max(0, self.peak_abs - self.base)


# --------------------------------------------------------------------------------------------------
# FLOPs and the GPU's peak
# --------------------------------------------------------------------------------------------------

#: Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets), matched in order against the CUDA device
#: name; ``--peak-tflops`` overrides.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a CUDA device from its name (None if unknown)."""
    return next((tf for key, tf in BF16_PEAK_TFLOPS if key in device_name), None)


def _register_cpu_attention_flops() -> None:
    """Teach ``FlopCounterMode`` the CPU flash-attention kernels (it knows only the CUDA ones)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    if (
        not hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu")
        or aten._scaled_dot_product_flash_attention_for_cpu in fc.flop_registry
    ):
        return

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
    def _fwd(query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query.shape, key.shape, value.shape)

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
    def _bwd(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def count_flops(fn) -> int:
    """Floating-point operations of one call of ``fn`` (matmuls and attention, recomputation included)."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def _ben_patches(n: int):
    """``n`` native BigEarthNet patches (the embedded slice holds 60: past that they repeat, so a batch of 64
    is a batch of 64)."""
    from atomizer.data.datasets import BigEarthNetNpz

    ds = BigEarthNetNpz()
    out = []
    for r in ds.records:
        img = ds.load(r)
        if not img.attrs.get("resampled_120"):
            out.append(img)
        if len(out) == n:
            break
    return [out[i % len(out)] for i in range(n)] if out else out


def resample_to_120(image):
    """The authors' input: every band resampled (nearest) to the 120 x 120 grid of the 10 m bands."""
    from atomizer.data.bands import get_sensor
    from atomizer.data.readers import build_image, image_bands

    arrays = {}
    for b in image_bands(image):
        a = image[b].values
        rep = 120 // a.shape[0]
        arrays[b] = np.repeat(np.repeat(a, rep, 0), rep, 1)
    return build_image(arrays, get_sensor("sentinel2"), gsd={b: 10.0 for b in arrays})


def _scene():
    from atomizer.core.paths import embedded_dir
    from atomizer.data.readers import read_band_folder

    product = next((embedded_dir() / "majortom").glob("*/*/B02.tif")).parent
    return read_band_folder(product)


def _model(preset: str, device: torch.device, train: bool, **overrides: Any):
    from atomizer.models.atomizer import Atomizer, AtomizerConfig

    torch.manual_seed(0)
    m = Atomizer(AtomizerConfig.preset(preset, **overrides)).to(device)
    return m.train(train)


def _time(fn, reps: int, device: torch.device, warmup: bool = True) -> float:
    if warmup:
        fn()
    ts = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------


def case_train_step(
    device: torch.device, preset: str, batch: int, reps: int, reference: bool, precision: str = "fp32"
) -> list[dict]:
    from atomizer.atoms.tokens import collate, tokenize
    from atomizer.core.runtime import autocast
    from atomizer.data.modalities import Modality, simulate

    images = _ben_patches(batch)
    if reference:
        images = [resample_to_120(im) for im in images]
    atoms = collate([tokenize(im) for im in images]).to(device)
    # The latent floor: the same step on 2 x 2 pixels of 4 bands (16 atoms per image), i.e. what the
    # latent self-attention, feed-forwards and head cost whatever the atoms; no token path beats it.
    tiny = Modality("floor", 2, 10.0, ("B02", "B03", "B04", "B08"))
    floor_atoms = collate([tokenize(simulate(im, tiny)) for im in images]).to(device)
    # the reference is the authors' implementation: materialised tokens, all activations kept
    model = _model(preset, device, train=True, **({"checkpoint_tokens": False} if reference else {}))
    model.reference_embedding = reference
    target = torch.zeros(len(images), model.cfg.num_classes, device=device)

    def step(x=atoms):
        with autocast(precision, device):
            logits = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
        loss.backward()
        model.zero_grad(set_to_none=False)  # gradient buffers belong to the built model, like the weights

    step()  # warm-up: allocates the gradient buffers (large freed blocks go back to the OS, see run_all)
    with PeakMemory(device) as mem:
        sec = _time(step, reps, device)
    floor = _time(lambda: step(floor_atoms), reps, device)
    flops = count_flops(step) / len(images)
    n = int(atoms.mask.sum()) // len(images)
    rec = {"flops_per_image": flops, "achieved_tflops": flops * len(images) / sec / 1e12}
    if device.type == "cuda":
        peak = float(os.environ.get("ATOMIZER_PEAK_TFLOPS", 0)) or bf16_peak_tflops(torch.cuda.get_device_name(device))
        if peak and precision == "bf16":
            rec.update(bf16_peak_tflops=peak, fraction_of_bf16_peak=rec["achieved_tflops"] / peak)
    return [
        {
            **rec,
            "case": "reference_train_step" if reference else "encoder_train_step",
            "preset": preset,
            "batch": len(images),
            "tokens": n,
            "precision": precision,
            "seconds_per_image": sec / len(images),
            "tokens_per_second": n * len(images) / sec,
            "images_per_second": len(images) / sec,
            "latent_floor_seconds_per_image": floor / len(images),
            "peak_memory_bytes": mem.rise,
            "peak_memory_abs_bytes": mem.peak_abs,
        }
    ]


def case_scaling(device: torch.device, preset: str, reps: int, sizes: list[int]) -> list[dict]:
    from atomizer.atoms.tokens import tokenize
    from atomizer.data.modalities import Modality, simulate

    scene = _scene()
    model = _model(preset, device, train=False)
    out = []
    for target in sizes:
        # B02, B03, B04, B08 at 10 m: 4 atoms per pixel; a square window of side sqrt(target / 4)
        side = int(round((target / 4) ** 0.5))
        side = min(side, 1068)
        atoms = tokenize(simulate(scene, Modality("crop", side, 10.0, ("B02", "B03", "B04", "B08")))).to(device)
        n = int(atoms.mask.sum())

        def fwd(atoms=atoms):
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                model(atoms, chunk_size=262_144)

        with PeakMemory(device) as mem:
            sec = _time(fwd, reps, device)
        out.append(
            {
                "case": "scaling",
                "preset": preset,
                "batch": 1,
                "tokens": n,
                "seconds_per_image": sec,
                "tokens_per_second": n / sec,
                "seconds_per_million_tokens": sec / n * 1e6,
                "peak_memory_bytes": mem.rise,
                "peak_memory_abs_bytes": mem.peak_abs,
            }
        )
    return out


def _dense_window(window_px: int | None = None):
    """The bench's dense input: the first shipped TerraMesh tile (224 px, 12 Sentinel-2 + 2 Sentinel-1 bands), or
    its top-left ``window_px`` square."""
    from atomizer.core.paths import embedded_dir
    from atomizer.data.manifest import ManifestDataset

    ds = ManifestDataset(embedded_dir() / "dense" / "terramesh" / "manifest.csv")
    image = ds.load(ds.records[0])
    return image if window_px is None else image.isel(y_10m=slice(0, window_px), x_10m=slice(0, window_px))


def case_dense_decoder(
    device: torch.device, preset: str, reps: int, sizes: list[int], window_px: int | None = None
) -> list[dict]:
    """The dense decoders' cost per output pixel, global against local: a segmentation Atomizer decoding one
    real window (a 2,240 m TerraMesh tile, 702,464 atoms, or its top-left ``window_px`` square) onto square
    output grids of ``sizes`` pixels a side.

    ``fixed_seconds`` is the decode of a 1 x 1 grid (for the local decoder: its spatial latents reading the
    latents and every atom once); ``seconds_per_million_pixels`` is the rest per output pixel, the cost that
    grows with the output grid. The encoder is not timed (it is the same for both)."""
    from atomizer.atoms.dense import DenseQueries
    from atomizer.atoms.tokens import AtomBatch

    atoms = AtomBatch.from_image(_dense_window(window_px)).to(device)
    extent = 10.0 * (window_px or 224)
    out = []
    for decoder in ("global", "local"):
        model = _model(preset, device, train=False, num_classes=10, task="segmentation", decoder=decoder)
        with torch.no_grad():
            z = model.encode(atoms, chunk_size=262_144)

        def fwd(n: int, model=model, z=z) -> None:
            queries = DenseQueries.grids([n], extent / n).to(device)
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                model.decode(z, queries, batch=atoms, atom_chunk=262_144)

        fixed = _time(lambda fwd=fwd: fwd(1), reps, device)
        for n in sizes:
            with PeakMemory(device) as mem:
                sec = _time(lambda fwd=fwd, n=n: fwd(n), reps, device)
            out.append(
                {
                    "case": "dense_decoder",
                    "preset": preset,
                    "decoder": decoder,
                    "batch": 1,
                    "tokens": int(atoms.mask.sum()),
                    "output_pixels": n * n,
                    "seconds_per_image": sec,
                    "fixed_seconds": fixed,
                    "seconds_per_million_pixels": max(sec - fixed, 0.0) / (n * n) * 1e6,
                    "peak_memory_bytes": mem.rise,
                    "peak_memory_abs_bytes": mem.peak_abs,
                }
            )
    return out


def case_scene(device: torch.device, preset: str, reps: int, chunk: int, warmup: bool = True) -> list[dict]:
    from atomizer.atoms.tokens import tokenize

    atoms = tokenize(_scene()).to(device)
    model = _model(preset, device, train=False)
    n = int(atoms.mask.sum())

    def fwd():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            model(atoms, chunk_size=chunk)

    with PeakMemory(device) as mem:
        sec = _time(fwd, reps, device, warmup)
    return [
        {
            "case": "scene_inference",
            "preset": preset,
            "batch": 1,
            "tokens": n,
            "seconds_per_image": sec,
            "tokens_per_second": n / sec,
            "chunk_size": chunk,
            "peak_memory_bytes": mem.rise,
            "peak_memory_abs_bytes": mem.peak_abs,
        }
    ]


def _loader_sources(tmp: Path, geotiff: bool = True) -> dict[str, Any]:
    """The embedded v2 patches as official GeoTIFF folders (with ``geotiff``), npz and LMDB (real arrays,
    written under ``tmp``)."""
    import pandas as pd

    from atomizer.data.datasets import BigEarthNetLMDB, BigEarthNetNpz, BigEarthNetOfficial
    from atomizer.data.lmdb_store import LMDB_DIR, S2_BANDS, encode_patch, open_env, write_patch_folder

    npz = BigEarthNetNpz(split=None)
    npz.records = [r for r in npz.records if "N9999" in r["id"]]  # the v2 patches (native grids)
    arrays = {}
    for r in npz.records:
        with np.load(r["path"]) as z:
            arrays[r["id"]] = {b: z[b] for b in S2_BANDS}
    meta = pd.DataFrame(
        {"patch_id": list(arrays), "labels": [r["labels"] for r in npz.records], "split": "train", "s1_name": ""}
    )
    meta.to_parquet(tmp / "metadata.parquet")
    env = open_env(tmp / LMDB_DIR, readonly=False, map_size=1 << 28)
    with env.begin(write=True) as txn:
        for pid, a in arrays.items():
            txn.put(pid.encode(), encode_patch(a))
    env.close()
    sources: dict[str, Any] = {}
    if geotiff:
        tif_root = tmp / "BigEarthNet-S2"
        for pid, a in arrays.items():
            write_patch_folder(tif_root, pid, a)
        sources["geotiff"] = BigEarthNetOfficial(tif_root, "v2", tmp / "metadata.parquet")
    sources["npz"] = npz
    sources["lmdb"] = BigEarthNetLMDB(tmp, lmdb_path=tmp / LMDB_DIR, metadata=tmp / "metadata.parquet")
    return sources


def _tensor_bytes(batch: Any) -> int:
    """Bytes of a batch's tensors: what a worker puts in shared memory and ``.to(device)`` copies."""
    return sum(v.numel() * v.element_size() for v in vars(batch).values() if isinstance(v, torch.Tensor))


def _wire_records(base: Any, mods: list, device: torch.device, quick: bool, batch: int = 64) -> list[dict]:
    """The atoms' two layouts (:mod:`atomizer.atoms.tokens`) for a batch of ``batch`` patches: bytes on
    the wire, collate time and the handoff to the training process (worker side: tensors to shared memory,
    pickled and unpickled), pinning and the copy to ``device`` with the rebuild (training process side),
    for the native grids (uint16 DN kept) and for the training modalities (averaged)."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers torch's shared-memory reductions, as workers use)

    from atomizer.atoms.tokens import AtomBatch
    from atomizer.data.lmdb_store import S2_BANDS
    from atomizer.data.modalities import Modality
    from atomizer.engine.loaders import ModalityDataset, collate_items

    n = len(base)
    native = [Modality("native", 120, 10.0, tuple(S2_BANDS))]  # 1,200 m: every band on its own grid
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = []
    for label, ms in (("native", native), ("bigearthnet_train", mods)):
        for wire in ("full", "compact"):
            ds = ModalityDataset(base, ms, np.arange(n) % len(ms), AtomBatch, random_window=True, wire=wire)
            items = [ds[i % n] for i in range(batch)]
            times: dict[str, list[float]] = {"collate": [], "handoff": [], "pin": [], "to_device": []}
            for _ in range(2 if quick else 6):  # the first is a warm-up
                t = time.perf_counter()
                b = collate_items(items)["input"]
                t0 = time.perf_counter()
                # a worker's handoff: its tensors moved to shared memory, pickled, unpickled by the trainer
                b = ForkingPickler.loads(ForkingPickler.dumps(b))
                t1 = time.perf_counter()
                if device.type == "cuda":
                    b = b.pin_memory()
                t2 = time.perf_counter()
                sync()
                on = b.to(device, non_blocking=True)
                sync()
                t3 = time.perf_counter()
                for k, dt in zip(times, (t0 - t, t1 - t0, t2 - t1, t3 - t2)):
                    times[k].append(dt)
                del on
            atoms = b.value.numel()
            rec: dict[str, Any] = {
                "case": "loader",
                "source": "lmdb",
                "path": f"wire {wire}",
                "modalities": label,
                "batch": batch,
                "atoms": atoms,
                "wire_bytes": _tensor_bytes(b),
                "bytes_per_atom": _tensor_bytes(b) / atoms,
                "values": str(b.value.dtype).removeprefix("torch."),
            }
            rec.update({f"{k}_seconds": float(np.median(v[1:])) for k, v in times.items()})
            rec["seconds_per_image"] = sum(rec[f"{k}_seconds"] for k in times) / batch  # the whole trip
            out.append(rec)
    return out


def case_loader(quick: bool, device: torch.device | None = None, small: bool = False) -> list[dict]:
    """Patches/s per core of each source and path, the atoms' wire layouts, and a DataLoader feeding a
    train step (see the module doc). ``small`` (the smoke run): the LMDB source alone, no wire records, the
    DataLoader with in-process reading only. The GeoTIFF source needs rasterio; without it, it is left out."""
    import tempfile

    from atomizer.data.modalities import load_modalities
    from atomizer.engine.loaders import ModalityDataset, collate_items, wire_for

    torch.set_num_threads(1)
    mods = load_modalities("bigearthnet_train")
    device = device or torch.device("cpu")
    out: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        sources = _loader_sources(Path(d), geotiff=not small and _has("rasterio"))
        n = len(sources["lmdb"])
        passes = 1 if quick or small else 5
        for name, base in sources.items():
            if small and name != "lmdb":
                continue
            for fast, wire in ((False, "full"), (True, "full"), (True, "compact")):
                if (name == "geotiff" and fast and quick) or (wire == "compact" and name != "lmdb"):
                    continue
                ds = ModalityDataset(
                    base, list(mods), np.arange(n) % len(mods), random_window=True, cache=False, fast=fast, wire=wire
                )
                ds[0]  # warm-up (imports, caches)
                t = time.perf_counter()
                for p in range(passes):
                    ds.set_epoch(p)
                    for i in range(n):
                        ds[i]
                sec = (time.perf_counter() - t) / (passes * n)
                out.append(
                    {
                        "case": "loader",
                        "source": name,
                        "path": ("fast" if ds.fast else "xarray") + (", wire compact" if wire == "compact" else ""),
                        "batch": 1,
                        "seconds_per_image": sec,
                        "patches_per_second": 1.0 / sec,
                    }
                )
        base = sources["lmdb"]
        if not small:
            out += _wire_records(base, list(mods), device, quick)
        # a DataLoader feeding a tiny train step on ``device``: how long the step waits for its batch.
        # Worker processes send compact atoms (what training's wire "auto" does), in-process reading full ones.
        model = _model("tiny", device, train=True)
        target = torch.zeros(8, model.cfg.num_classes, device=device)
        cores = os.cpu_count() or 1
        for workers in (0,) if small else (0, 1) if quick else sorted({0, 1, 2, cores}):
            wire = wire_for("auto", device, workers)
            ds = ModalityDataset(base, list(mods), np.arange(n) % len(mods), random_window=True, cache=False, wire=wire)
            loader = torch.utils.data.DataLoader(
                ds, batch_size=8, shuffle=True, collate_fn=collate_items, num_workers=workers, drop_last=True,
                persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                pin_memory=device.type == "cuda",
            )  # fmt: skip
            wait = compute = 0.0
            steps = 0
            for _ in range(1 if quick or small else 3):
                t = time.perf_counter()
                for batch in loader:
                    t1 = time.perf_counter()
                    wait += t1 - t
                    logits = model(batch["input"].to(device, non_blocking=True))
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
                    loss.backward()
                    model.zero_grad()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t = time.perf_counter()
                    compute += t - t1
                    steps += 1
            out.append(
                {
                    "case": "loader",
                    "source": "lmdb",
                    "path": f"fast, wire {wire}",
                    "workers": workers,
                    "batch": 8,
                    "seconds_per_image": (wait + compute) / (steps * 8),
                    "data_wait_fraction": wait / (wait + compute),
                }
            )
    return out


def run_case(
    case: str,
    device: str,
    quick: bool,
    batch: int | None = None,
    reps: int | None = None,
    precision: str = "auto",
    memory: bool = False,
) -> list[dict]:
    from atomizer.core.runtime import autocast_dtype, tune_cpu_allocator

    dev = torch.device(device)
    if dev.type == "cpu" and not memory:
        tune_cpu_allocator()  # what ``atomizer train`` does; the memory runs keep glibc's defaults (see above)
    small = smoke()
    reps = reps or (1 if quick or small else 5)
    if case in ("encoder_train_step", "reference_train_step"):
        b = batch or (2 if small else 1 if quick else (64 if dev.type == "cuda" else 4))
        prec = "bf16" if autocast_dtype(precision, dev) is not None else "fp32"
        preset = "tiny" if small else "paper"
        return case_train_step(dev, preset, b, reps, reference=case == "reference_train_step", precision=prec)
    if case == "scaling":
        sizes = [10_000, 100_000, 1_000_000] if quick else [10_000, 30_000, 100_000, 300_000, 1_000_000]
        return case_scaling(dev, "tiny" if quick else "paper", 1 if quick else reps, sizes)
    if case == "scene_inference":
        return case_scene(dev, "tiny" if quick else "paper", 1, 262_144, warmup=not quick)
    if case == "loader":
        return case_loader(quick, dev, small=small)
    if case == "dense_decoder":
        sizes = [32, 64] if small else [64, 224] if quick else [64, 224, 448]
        return case_dense_decoder(dev, "tiny" if quick or small else "paper", reps, sizes)
    raise KeyError(f"unknown case {case!r}; cases: {', '.join(CASES)}")


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------

MEMORY_FIELDS = ("peak_memory_bytes", "peak_memory_abs_bytes")


def _subprocess_case(
    case: str, device: str, quick: bool, batch: int | None, mode: str, precision: str = "auto"
) -> list[dict]:
    """Run one case in a fresh process. ``mode``: ``time`` (tuned allocator), ``memory`` (one step,
    every large block returned to the OS at once) or ``single`` (--quick on CPU: one run with glibc's
    default allocator gives both, indicative only)."""
    cmd = [
        sys.executable,
        "-m",
        "atomizer",
        "bench",
        "--case",
        case,
        "--device",
        device,
        "--emit-json",
        "--precision",
        precision,
    ]
    if quick:
        cmd.append("--quick")
    if batch:
        cmd += ["--batch", str(batch)]
    env = dict(os.environ)
    if mode == "single":
        cmd += ["--memory-run"]
    if mode == "memory":
        # One step after the warm-up, with glibc returning every large freed block to the OS at once,
        # so RSS is live memory and the peak rise is the case's own working set. (Timing runs without
        # this setting: it turns every large allocation into an mmap and costs system time.)
        cmd += ["--reps", "1", "--memory-run"]
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["failed"])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(
    device: str = "cpu",
    quick: bool = False,
    cases: list[str] | None = None,
    batch: int | None = None,
    precision: str = "auto",
) -> list[dict]:
    """Run each case in fresh subprocesses (one timed, one for memory) and return all records, with
    ratios against the reference where there is one."""
    records: list[dict] = []
    for case in cases or CASES:
        t0 = time.time()
        try:
            # --quick on CPU: one run per case gives time and memory (glibc defaults; indicative only)
            single = quick and device == "cpu"
            timed = _subprocess_case(case, device, quick, batch, "single" if single else "time", precision)
            if device == "cpu" and not quick and case != "loader":
                mem = _subprocess_case(case, device, quick, batch, "memory", precision)
                for rec, m in zip(timed, mem):
                    rec.update({k: m[k] for k in MEMORY_FIELDS if k in m})
        except RuntimeError as e:
            records.append({"case": case, "device": device, "error": str(e)})
            continue
        for rec in timed:
            rec.update(device=device, wall_seconds=time.time() - t0)
            records.append(rec)
    ref = next((r for r in records if r.get("case") == "reference_train_step"), None)
    enc = next((r for r in records if r.get("case") == "encoder_train_step"), None)
    if ref and enc and "error" not in ref and "error" not in enc:
        enc["speedup_vs_reference"] = ref["seconds_per_image"] / enc["seconds_per_image"]
        enc["memory_ratio_vs_reference"] = ref["peak_memory_bytes"] / max(1, enc["peak_memory_bytes"])
        # Amdahl: both paths share the latent network; what the token path can change is the rest.
        enc["token_side_speedup_vs_reference"] = (
            ref["seconds_per_image"] - ref["latent_floor_seconds_per_image"]
        ) / max(1e-9, enc["seconds_per_image"] - enc["latent_floor_seconds_per_image"])
        enc["speedup_bound_vs_reference"] = ref["seconds_per_image"] / enc["latent_floor_seconds_per_image"]
    return records


def format_table(records: list[dict]) -> str:
    import pandas as pd

    cols = [
        "case",
        "device",
        "source",
        "path",
        "workers",
        "modalities",
        "values",
        "bytes_per_atom",
        "wire_bytes",
        "collate_seconds",
        "handoff_seconds",
        "pin_seconds",
        "to_device_seconds",
        "patches_per_second",
        "data_wait_fraction",
        "preset",
        "precision",
        "batch",
        "tokens",
        "seconds_per_image",
        "tokens_per_second",
        "decoder",
        "output_pixels",
        "seconds_per_million_pixels",
        "latent_floor_seconds_per_image",
        "achieved_tflops",
        "fraction_of_bf16_peak",
        "peak_memory_bytes",
        "peak_memory_abs_bytes",
        "speedup_vs_reference",
        "token_side_speedup_vs_reference",
        "speedup_bound_vs_reference",
        "memory_ratio_vs_reference",
        "error",
    ]
    df = pd.DataFrame(records)
    df = df[[c for c in cols if c in df.columns]]
    for c in ("peak_memory_bytes", "peak_memory_abs_bytes"):
        if c in df:
            df[c] = (df[c] / 2**20).round(1)
    df = df.rename(
        columns={
            "peak_memory_bytes": "peak_rise_MiB",
            "peak_memory_abs_bytes": "peak_abs_MiB",
            "latent_floor_seconds_per_image": "floor_s_per_image",
            "speedup_vs_reference": "speedup",
            "token_side_speedup_vs_reference": "token_side_speedup",
            "speedup_bound_vs_reference": "speedup_bound",
            "memory_ratio_vs_reference": "memory_ratio",
        }
    )
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.float_format", "{:.4g}".format):
        return df.to_string(index=False)


# --------------------------------------------------------------------------------------------------
# The device check (scripts/device_check.sh)
# --------------------------------------------------------------------------------------------------

#: The device check's files. Those of :data:`DEVICE_CHECK_OUTPUTS` are written to its output folder ($OUT: at
#: most 8 files come back from the device machine, other tests write there too); the rest, the steps' own
#: records, go to a scratch folder and into ``device_check.json``.
DEVICE_CHECK_FILES = {
    "env": "env.json",
    "tests": "gpu_tests.xml",
    "bench": "bench.json",
    "demo": "demo.json",
    "summary": "device_check.json",
    "markdown": "device_check.md",
    "log": "device_check.log",
}
DEVICE_CHECK_OUTPUTS = ("bench", "summary", "markdown", "log")


def demo_train(params: dict[str, Any], device: str, workdir: str | Path, small: bool = False) -> list[dict]:
    """The demo experiment's models (``params``: its spec's ``parameters``: ``models``, ``preset`` and the
    per-model ``presets`` and ``model_overrides`` of the recipe of record, ``batch_size``, ``lr``) trained on
    ``device`` on fold 0, one epoch each: one record per model (seconds, steps, images/s, best validation
    macro mAP).

    EuroSAT is read from GeoTIFFs; where rasterio is missing (the device machine carries no wheel that large),
    the embedded BigEarthNet patches (npz) stand in, and the records say so. ``small`` (the dry run): the
    ``tiny`` preset, two steps on 8 images.
    """
    from atomizer.engine.training import TrainConfig, train

    dataset = str(params.get("dataset", "eurosat"))
    note = None
    if dataset == "eurosat" and not _has("rasterio"):
        dataset, note = "bigearthnet", "rasterio missing: the embedded BigEarthNet npz patches instead of EuroSAT"
    sets = (f"{dataset}_train", f"{dataset}_test") if note else (None, None)
    out = []
    for arch in params.get("models", ["atomizer", "resnet"]):
        cfg: dict[str, Any] = {
            "model": arch,
            "preset": "tiny" if small else dict(params.get("presets") or {}).get(arch, params.get("preset", "small")),
            "model_overrides": dict(dict(params.get("model_overrides") or {}).get(arch) or {}),
            "dataset": dataset,
            "train_modalities": sets[0] or params.get("train_modalities", f"{dataset}_train"),
            "test_modalities": sets[1] or params.get("test_modalities", f"{dataset}_test"),
            "epochs": 1,
            "batch_size": 4 if small else int(params.get("batch_size", 16)),
            "lr": float(params.get("lr", 1e-3)),
            "fold": 0,
            "seed": 0,
            "device": device,
            "out_dir": str(Path(workdir) / arch),
        }
        if small:
            cfg.update(max_steps=2, train_limit=8, val_limit=8)
        t = time.perf_counter()
        summary = train(TrainConfig.from_dict(cfg), progress=False)
        sec = time.perf_counter() - t
        rec = {
            "model": arch,
            "preset": cfg["preset"],
            "model_overrides": cfg["model_overrides"],
            "dataset": dataset,
            "device": device,
            "precision": "bf16" if device == "cuda" else "fp32",
            "batch_size": cfg["batch_size"],
            "steps": int(summary["step"]),
            "seconds": sec,
            "images_per_second": int(summary["step"]) * cfg["batch_size"] / sec,
            "best_val_macro_map": float(summary["best_val_macro_map"]),
        }
        if note:
            rec["note"] = note
        out.append(rec)
    return out


def _junit_counts(path: Path) -> dict[str, Any]:
    """Counts of a pytest JUnit XML file: tests, passed, failed, errors, skipped, and each test's outcome."""
    import xml.etree.ElementTree as ET

    counts: dict[str, Any] = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "cases": {}}
    if not path.exists():
        return {**counts, "missing": True}
    for case in ET.parse(path).getroot().iter("testcase"):
        kids = {c.tag for c in case}
        outcome = (
            "failed"
            if "failure" in kids
            else "errors"
            if "error" in kids
            else "skipped"
            if "skipped" in kids
            else "passed"
        )
        counts["tests"] += 1
        counts[outcome] += 1
        counts["cases"][f"{case.get('classname', '')}::{case.get('name', '')}"] = outcome
    return counts


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def device_summary(
    out: str | Path, parts: str | Path | None = None, steps: dict[str, int] | None = None
) -> dict[str, Any]:
    """Every figure of a device check in one record, written to ``out`` as JSON and as a markdown page
    (:data:`DEVICE_CHECK_FILES`); returns the record. The benchmark's records are read from ``out``, the
    environment, the test report and the demo's records from ``parts`` (default ``out``). ``steps``: each
    step's exit status.

    Headline figures: images/s of the encoder train step (batch and precision as measured: 64 in bf16 on
    CUDA), its FLOPs per image, achieved TFLOP/s and fraction of the device's bf16 peak (None off CUDA), and
    the loader's wait fraction (the share of a train step spent waiting for its batch) per worker count.
    """
    out = Path(out)
    where = {k: out if k in DEVICE_CHECK_OUTPUTS else Path(parts or out) for k in DEVICE_CHECK_FILES}
    f = {k: where[k] / v for k, v in DEVICE_CHECK_FILES.items()}
    env = _read_json(f["env"]) or {}
    bench = _read_json(f["bench"]) or {}
    records = bench.get("records", []) if isinstance(bench, dict) else []
    step: dict[str, Any] = next((r for r in records if r.get("case") == "encoder_train_step" and "error" not in r), {})
    ref: dict[str, Any] = next((r for r in records if r.get("case") == "reference_train_step" and "error" not in r), {})
    waits = [r for r in records if r.get("case") == "loader" and "data_wait_fraction" in r]
    headline = {
        "device": env.get("device_name"),
        "dry_run": bool(env.get("dry_run")),
        "train_step_batch": step.get("batch"),
        "train_step_precision": step.get("precision"),
        "train_step_preset": step.get("preset"),
        "train_step_images_per_second": step.get("images_per_second"),
        "flops_per_image": step.get("flops_per_image"),
        "achieved_tflops": step.get("achieved_tflops"),
        "bf16_peak_tflops": step.get("bf16_peak_tflops"),
        "fraction_of_bf16_peak": step.get("fraction_of_bf16_peak"),
        "reference_images_per_second": ref.get("images_per_second"),
        "speedup_vs_reference": step.get("speedup_vs_reference"),
        "loader_wait_fraction": {str(r["workers"]): r["data_wait_fraction"] for r in waits},
    }
    summary = {
        "headline": headline,
        "steps": dict(steps or {}),
        "env": env,
        "gpu_tests": _junit_counts(f["tests"]),
        "bench_errors": [r for r in records if "error" in r],
        "bench_records": records,
        "demo": _read_json(f["demo"]) or [],
    }
    from atomizer.core.storage import atomic_write_json, atomic_write_text

    atomic_write_json(f["summary"], summary)
    atomic_write_text(f["markdown"], summary_markdown(summary))
    return summary


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The device check's markdown page (:func:`device_summary`)."""
    h, env, t = summary["headline"], summary["env"], summary["gpu_tests"]
    kind = "CPU dry run (figures mean nothing; the format only)" if h["dry_run"] else "device run"
    lines = [
        f"# Device check: {h['device'] or 'no CUDA device'}",
        "",
        f"{kind}; {env.get('date', '?')}; torch {env.get('torch', '?')}, CUDA {env.get('cuda', 'n/a')}, "
        f"Python {env.get('python', '?')}; commit {env.get('commit', '?')}.",
        f"Missing packages (what needs them is skipped): {', '.join(env.get('missing', [])) or 'none'}.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| train step images/s (encoder, {h['train_step_preset']} preset, batch {h['train_step_batch']}, "
        f"{h['train_step_precision']}) | {_fmt(h['train_step_images_per_second'])} |",
        f"| FLOPs per image (forward + backward) | {_fmt(h['flops_per_image'])} |",
        f"| achieved TFLOP/s | {_fmt(h['achieved_tflops'])} |",
        f"| fraction of the bf16 peak ({_fmt(h['bf16_peak_tflops'])} TFLOP/s) | {_fmt(h['fraction_of_bf16_peak'])} |",
        f"| reference (authors') train step images/s | {_fmt(h['reference_images_per_second'])} |",
        f"| speed-up vs the reference | {_fmt(h['speedup_vs_reference'])} |",
    ]
    for w, frac in h["loader_wait_fraction"].items():
        lines.append(f"| loader wait fraction, {w} workers | {_fmt(frac)} |")
    failed = [k for k, rc in summary["steps"].items() if rc != 0]
    lines += [
        "",
        f"Steps: {', '.join(f'{k} (exit {rc})' for k, rc in summary['steps'].items()) or 'none recorded'}"
        + (f"; FAILED: {', '.join(failed)}." if failed else "."),
        f"GPU tests (`pytest -m gpu`): {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, "
        f"{t['skipped']} skipped of {t['tests']}.",
    ]
    if summary["bench_errors"]:
        lines.append("Bench errors: " + "; ".join(f"{r['case']}: {r['error']}" for r in summary["bench_errors"]))
    if summary["demo"]:
        lines += [
            "",
            "| demo model | preset | dataset | steps | seconds | images/s | best val macro mAP |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in summary["demo"]:
            lines.append(
                f"| {r['model']} | {r['preset']} | {r['dataset']} | {r['steps']} | {_fmt(r['seconds'])} | "
                f"{_fmt(r['images_per_second'])} | {_fmt(r['best_val_macro_map'])} |"
            )
        notes = {r["note"] for r in summary["demo"] if r.get("note")}
        lines += [f"Note: {n}." for n in sorted(notes)]
    return "\n".join(lines) + "\n"
