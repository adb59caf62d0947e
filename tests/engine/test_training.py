"""Training engine: schedule, reproducibility, resume after SIGKILL, DDP on gloo, CLI train/evaluate."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from atomizer.core.run_folder import RunFolder
from atomizer.engine.evaluation import load_results
from atomizer.engine.loop import lr_at
from atomizer.engine.training import TrainConfig, train
from atomizer.models.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def smoke_config(out: Path, **kw) -> dict:
    cfg = dict(
        model="atomizer",
        preset="tiny",
        dataset="eurosat",
        epochs=1,
        batch_size=4,
        max_steps=6,
        ckpt_every=2,
        train_limit=24,
        val_limit=8,
        lr=2e-3,
        seed=7,
        device="cpu",
        out_dir=str(out),
    )
    cfg.update(kw)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def state(path: Path) -> dict:
    return read_checkpoint(path)["state_dict"]


def test_lr_schedule_warmup_then_cosine_to_zero():
    lrs = [lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # monotone decay after warm-up
    assert lr_at(55, 100, 1.0, 10) == pytest.approx(0.5)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.0, abs=1e-12)


def test_config_from_yaml_refuses_unknown_keys(tmp_path):
    p = write_config(tmp_path / "c.yaml", {"model": "atomizer", "epochs": 1, "bogus": 3})
    with pytest.raises(ValueError, match="bogus"):
        TrainConfig.from_yaml(p)


def test_same_seed_same_weights_and_run_dir_contents(tmp_path):
    a = train(TrainConfig.from_dict(smoke_config(tmp_path / "a")), progress=False)
    b = train(TrainConfig.from_dict(smoke_config(tmp_path / "b")), progress=False)
    sa, sb = state(Path(a["last"])), state(Path(b["last"]))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert saved["seed"] == 7 and saved["max_steps"] == 6
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines if r["kind"] == "train"]
    assert steps == list(range(1, 7))
    assert any(r["kind"] == "val" and math.isfinite(r["macro_map"]) for r in lines)
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in lines if r["kind"] == "train")
    with pytest.raises(FileExistsError):  # nothing is overwritten silently
        train(TrainConfig.from_dict(smoke_config(tmp_path / "a")), progress=False)
    c = train(TrainConfig.from_dict(smoke_config(tmp_path / "c", seed=8)), progress=False)
    sc = state(Path(c["last"]))
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    """A real subprocess is killed mid-run; --resume finishes with the uninterrupted run's weights.

    Like is compared with like: the uninterrupted run is a CLI subprocess too, with the same environment
    (one thread each), so the weights must be bit-identical.
    """
    steps = 12
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    full_cfg = write_config(tmp_path / "f.yaml", smoke_config(tmp_path / "full", max_steps=steps, epochs=2))
    ref = subprocess.run(
        [sys.executable, "-m", "atomizer", "train", str(full_cfg)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    cfg = write_config(tmp_path / "k.yaml", smoke_config(tmp_path / "killed", max_steps=steps, epochs=2))
    proc = subprocess.Popen(
        [sys.executable, "-m", "atomizer", "train", str(cfg)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists():
            done = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if x.strip()]
            if done and max(done) >= 5:  # past the step-4 checkpoint, before the end
                proc.send_signal(signal.SIGKILL)
                killed_at = max(done)
                break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_at is not None and killed_at < steps, "the run was not killed mid-way"
    assert proc.returncode == -signal.SIGKILL
    ck = read_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert 2 <= ck["extra"]["step"] < steps
    out = subprocess.run(
        [sys.executable, "-m", "atomizer", "train", str(cfg), "--resume"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    sa, sb = (
        state(tmp_path / "full" / "checkpoints" / "last.pt"),
        state(tmp_path / "killed" / "checkpoints" / "last.pt"),
    )
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    logged = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if json.loads(x)["kind"] == "train"]
    assert logged == list(range(1, steps + 1))  # no duplicated or missing steps in the log


def test_ddp_two_processes_gloo_identical_weights(tmp_path):
    cfg = write_config(tmp_path / "d.yaml", smoke_config(tmp_path / "ddp", max_steps=3, train_limit=16, epochs=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "atomizer",
            "train",
            str(cfg),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # ranks print concurrently, so their lines may interleave with other output: match the numbers only
    prints = dict(re.findall(r"rank (\d+) weights_fingerprint ([-+0-9.eE]+\d)", out.stdout))
    assert set(prints) == {"0", "1"}, out.stdout
    assert prints["0"] == prints["1"]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["step"] == 3 and summary["rank"] == 0


def test_cli_train_then_evaluate_writes_tidy_results(tmp_path):
    cfg = write_config(tmp_path / "r.yaml", smoke_config(tmp_path / "run", model="resnet", max_steps=3))
    env = dict(os.environ)
    r = subprocess.run(
        [sys.executable, "-m", "atomizer", "train", str(cfg)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    res_path = tmp_path / "run" / "results.nc"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "atomizer",
            "evaluate",
            str(ckpt),
            "--modalities",
            "eurosat_test",
            "--out",
            str(res_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "T6" in r.stdout and "top1" in r.stdout
    res = load_results(res_path)
    assert res["score"].dims == ("model", "modality", "metric")
    assert list(res.modality.values) == ["T1", "T2", "T3", "T4", "T5", "T6"]
    assert set(res.metric.values) == {"top1", "macro_map"}
    assert bool(((res["score"] >= 0) & (res["score"] <= 100)).all())
    assert json.loads(res_path.with_suffix(".json").read_text())["records"]
    # refuses to overwrite, one-line error
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "atomizer",
            "evaluate",
            str(ckpt),
            "--modalities",
            "eurosat_test",
            "--out",
            str(res_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and r.stderr.startswith("atomizer: error:") and "exists" in r.stderr
    assert "Traceback" not in r.stderr


def test_group_by_modality_batches_share_a_modality_and_resume_exactly(tmp_path, monkeypatch):
    import atomizer.engine.training as tr

    seen = []
    real = tr.collate_items

    def spy(items):  # the training loader's collation (validation collates elsewhere)
        out = real(items)
        seen.append(out["input"])
        return out

    monkeypatch.setattr(tr, "collate_items", spy)
    cfg = smoke_config(tmp_path / "g", group_by_modality=True, max_steps=4, epochs=2)
    a = train(TrainConfig.from_dict(cfg), progress=False)
    # a batch of one modality has one band count per set and no padding
    assert seen
    for b in seen:
        assert bool(b.mask.all())
        assert len({int(n) for n in b.mask.sum(1)}) == 1
    b = train(TrainConfig.from_dict({**cfg, "out_dir": str(tmp_path / "g2")}), progress=False)
    sa, sb = state(Path(a["last"])), state(Path(b["last"]))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_early_stopping_stops_and_records_it(tmp_path):
    """patience=1 with lr 0: validation never improves after the first epoch, so training stops after the
    second validation instead of running all epochs; the summary says so."""
    cfg = TrainConfig(
        model="atomizer",
        preset="tiny",
        dataset="eurosat",
        epochs=5,
        batch_size=4,
        train_limit=8,
        val_limit=4,
        lr=0.0,
        patience=1,
        device="cpu",
        out_dir=str(tmp_path / "run"),
    )
    s = train(cfg, progress=False)
    assert s["stopped_early"] is True
    assert s["step"] == 4  # 2 steps per epoch, stopped after epoch 2 of 5
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=0)


def test_distributed_evaluation_equals_single_process(tmp_path, tiny_run):
    """`atomizer evaluate` under torchrun with 2 gloo processes: each rank scores its shard, the gathered
    predictions give exactly the single-process scores (and only rank 0 writes the results)."""
    import xarray as xr

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ckpt = RunFolder(tiny_run).best  # the session's tiny run, only read
    common = [
        "-m",
        "atomizer",
        "evaluate",
        str(ckpt),
        "--modalities",
        "eurosat_test",
        "--batch-size",
        "3",
        "--device",
        "cpu",
    ]
    single = subprocess.run(
        [sys.executable, *common, "--out", str(tmp_path / "single.nc")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    dist = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *common,
         "--out", str(tmp_path / "dist.nc")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert dist.returncode == 0, dist.stderr[-3000:]
    a, b = xr.open_dataset(tmp_path / "single.nc"), xr.open_dataset(tmp_path / "dist.nc")
    np.testing.assert_allclose(a["score"].values, b["score"].values, rtol=0, atol=1e-9)
    assert a["score"].size > 0


def test_one_loader_with_worker_processes_serves_every_epoch_exactly(tmp_path):
    """Two worker processes, alive across the epochs (each item carries its epoch, so the workers' copies of
    the dataset never need set_epoch): the same random windows, so the same weights as reading in-process.
    With workers the atoms travel compact (wire "auto": index runs, uint16 DN), in-process in full: the
    rebuilt atoms are the same, so are the weights; and so with the compact wire forced in-process."""
    kw = dict(epochs=3, max_steps=None, train_limit=8, batch_size=4, ckpt_every=100)
    train(TrainConfig.from_dict(smoke_config(tmp_path / "w0", num_workers=0, **kw)), progress=False)
    train(TrainConfig.from_dict(smoke_config(tmp_path / "w2", num_workers=2, **kw)), progress=False)
    train(TrainConfig.from_dict(smoke_config(tmp_path / "c0", num_workers=0, wire="compact", **kw)), progress=False)
    a, b = state(tmp_path / "w0" / "checkpoints" / "last.pt"), state(tmp_path / "w2" / "checkpoints" / "last.pt")
    c = state(tmp_path / "c0" / "checkpoints" / "last.pt")
    assert read_checkpoint(tmp_path / "w2" / "checkpoints" / "last.pt")["extra"]["step"] == 6  # 3 epochs x 2 steps
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="wire must be auto, compact or full"):
        TrainConfig.from_dict(smoke_config(tmp_path / "x", wire="uint16"))
