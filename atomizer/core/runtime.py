"""Process-level settings that make the CPU path fast: the allocator and the compute precision.

Why the allocator: a training step on a native BigEarthNet batch allocates and frees atoms-sized
buffers (4 sets x 40,000 kept atoms x 128 keys/values x 4 bytes = 82 MB) dozens of times. glibc serves
every block above its mmap threshold (32 MB at most) with a fresh ``mmap`` and returns it with
``munmap``, so each step page-faults all that memory in again: on the 2-core development VM that cost
about a quarter of the step (``docs/benchmarks.md``). :func:`tune_cpu_allocator` keeps large blocks
on the heap and freed memory in the process, the effect jemalloc or tcmalloc would have, without a
preloaded library. Peak memory is unchanged; resident memory no longer shrinks after a peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys

import torch

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_tuned: bool | None = None

PRECISIONS = ("auto", "fp32", "bf16")


def tune_cpu_allocator() -> bool:
    """Keep large freed blocks in the process (glibc only; idempotent).

    Opt out with ``ATOMIZER_MALLOC=default`` (for example to watch resident memory fall after a peak).

    Returns:
        True if the allocator is tuned (now or before), False where it cannot be (not glibc, opted out).
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("ATOMIZER_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _tuned


def release_memory() -> bool:
    """Collect garbage and hand the C heap's free pages back to the system (glibc ``malloc_trim``).

    A long-lived server (the dashboard) calls it when a session ends, so its resident memory falls back
    after many users leave instead of staying at its peak. Returns True where ``malloc_trim`` released
    something (False elsewhere: not glibc, or nothing to give back).
    """
    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


def check_precision(precision: str) -> None:
    """Raise ValueError naming the choices unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: full fp32).

    ``auto`` is bf16 on CUDA and fp32 on CPU; ``bf16`` asks for bf16 autocast on either (on a CPU with
    AVX512-BF16 or AMX it is faster; elsewhere it is emulated and slower).
    """
    check_precision(precision)
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """``torch.autocast`` context for ``precision`` on ``device`` (a disabled one for fp32)."""
    dtype = autocast_dtype(precision, device)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda`` (refused when there is no CUDA device).

    Under torchrun, ``cuda`` means this process's GPU (``cuda:LOCAL_RANK``).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    if name == "cuda" and dist_info()[1] > 1:
        return torch.device("cuda", dist_info()[2])
    return torch.device(name)


def ensure_process_group() -> tuple[int, int]:
    """(rank, world size); under torchrun (``WORLD_SIZE`` > 1) the default process group is initialised
    first if it is not yet (NCCL with CUDA, else gloo)."""
    rank, world, _ = dist_info()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank, world


def process_device(name: str = "auto") -> torch.device:
    """This process's device (:func:`pick_device`); under torchrun (``WORLD_SIZE`` > 1) a CUDA device is
    this rank's GPU, ``cuda:LOCAL_RANK``, made the current one (so NCCL and pinned memory use it)."""
    device = pick_device(name)
    _, world, local_rank = dist_info()
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def git_commit(path: str | os.PathLike | None = None) -> str:
    """The commit checked out at ``path`` (default: the checkout holding this package), with a note when the
    tracked files have uncommitted changes; ``unknown`` outside a git work tree."""
    import subprocess
    from pathlib import Path

    where = str(path or Path(__file__).resolve().parents[2])
    try:
        head = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def provenance() -> dict:
    """Where a run comes from: commit, library versions, host, start time (written once per run)."""
    import platform
    import time

    return {
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
