"""Process-level speed settings: the allocator keeps large freed blocks; precision choices."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from atomizer.atoms.tokens import tokenize
from atomizer.core.runtime import autocast, autocast_dtype
from atomizer.data.readers import open_image
from atomizer.engine.pretraining import PretrainConfig
from atomizer.engine.training import TrainConfig
from atomizer.models.atomizer import Atomizer, AtomizerConfig

# Allocate and free 256 MiB (touched), then report how much of it is still resident.
PROBE = textwrap.dedent("""
    import json
    from pathlib import Path
    import torch
    from atomizer.core.runtime import tune_cpu_allocator

    def rss():
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    tuned = tune_cpu_allocator()
    base = rss()
    x = torch.ones(256 * 2**20 // 4)
    del x
    print(json.dumps({"tuned": tuned, "again": tune_cpu_allocator(), "kept": rss() - base}))
""")


def _probe(env_extra: dict) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra)
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_allocator_keeps_large_freed_blocks_and_opt_out_returns_them():
    tuned = _probe({})
    assert tuned["tuned"] and tuned["again"]
    assert tuned["kept"] > 200 * 2**20  # the freed 256 MiB stays in the process, ready for the next step
    default = _probe({"ATOMIZER_MALLOC": "default"})
    assert default["tuned"] is False
    assert default["kept"] < 64 * 2**20  # glibc's default: a block this large goes back to the OS


def test_precision_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cuda) is None
    assert autocast_dtype("auto", cuda) is torch.bfloat16 and autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="half")
    with pytest.raises(ValueError, match="precision must be one of"):
        PretrainConfig(sources=[{"dataset": "eurosat"}], precision="half")
    with pytest.raises(ValueError, match=r"unknown pretraining option\(s\): \['precison'\]"):
        PretrainConfig.from_dict({"sources": [{"dataset": "eurosat"}], "precison": "bf16"})
    with pytest.raises(ValueError, match=r"unknown training option\(s\): \['precison'\]"):
        TrainConfig.from_dict({"precison": "bf16"})


def test_bf16_autocast_on_cpu_runs_the_model_in_bf16_close_to_fp32(ben_patch_paths):
    atoms = tokenize(open_image(ben_patch_paths[0]))
    torch.manual_seed(0)
    model = Atomizer(AtomizerConfig.preset("tiny")).eval()
    with torch.no_grad():
        ref = model(atoms)
        with autocast("bf16", torch.device("cpu")):
            low = model(atoms)
        with autocast("fp32", torch.device("cpu")):
            same = model(atoms)
    assert ref.dtype == torch.float32 and same.dtype == torch.float32 and low.dtype == torch.bfloat16
    torch.testing.assert_close(same, ref)
    assert not torch.equal(low.float(), ref)  # really computed in lower precision
    torch.testing.assert_close(low.float(), ref, atol=0.1, rtol=0.05)


def test_process_group_and_device_of_a_single_process(monkeypatch):
    """Without torchrun there is no process group to set up, and the device is the one asked for."""
    from atomizer.core.runtime import ensure_process_group, process_device

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert ensure_process_group() == (0, 1)
    assert not torch.distributed.is_initialized()
    assert process_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            process_device("cuda")
