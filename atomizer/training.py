"""One training loop for Atomizer and every baseline.

Read top to bottom: the typed config, the learning-rate schedule, the run directory, the data, the loop.

* Optimiser: AdamW (or plain Adam, as in the authors' run); linear warm-up then cosine decay to zero;
  gradient accumulation; gradient clipping; bf16 autocast on CUDA, fp32 on CPU (``precision`` overrides).
* Protocol: every training image gets one training modality; validation images are seen under the
  training modalities only (model selection never sees a test modality).
* Reproducible and resumable: all randomness derives from ``(seed, step)`` or ``(seed, epoch, index)``;
  checkpoints (model, optimiser, schedule, step) are written atomically every ``ckpt_every`` steps and
  at the end; ``resume=True`` continues to the same final weights as an uninterrupted run.
* Scale out: under ``torchrun`` the loop wraps the model in DDP and shards data with a
  ``DistributedSampler``; only rank 0 writes.
* Logs: ``metrics.jsonl`` (one JSON object per step and per validation) that dashboards can tail.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from tqdm.auto import tqdm

from atomizer.checkpoint import load_into, save_checkpoint
from atomizer.datasets import open_dataset
from atomizer.metrics import classification_metrics
from atomizer.modalities import Assignment, load_modalities
from atomizer.pipeline import CanvasSpec, ModalityDataset, collate_items, forward, move_input
from atomizer.registry import build_model, input_kind
from atomizer.runtime import autocast, check_precision, tune_cpu_allocator
from atomizer.storage import atomic_write_json, atomic_write_text
from atomizer.tokens import ModalityBatchSampler

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


class RunConfig:
    """YAML round trip of a run's config dataclass; unknown options are refused by name."""

    kind = "run"  # named in the error for an unknown option

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any):
        spec = yaml.safe_load(Path(path).read_text()) or {}
        return cls.from_dict({**spec, **overrides})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown {cls.kind} option(s): {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainConfig(RunConfig):
    """Everything a run needs; saved as ``config.yaml`` in the run directory."""

    kind = "training"

    model: str = "atomizer"  # atomizer | resnet | vit | scalemae | perceiver
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    dataset: str = "eurosat"  # eurosat | bigearthnet (embedded), see data_root
    data_root: str | None = None
    train_split: str = "train"
    val_split: str = "validation"
    train_limit: int | None = None  # use only the first N training images (smoke runs)
    val_limit: int | None = None
    train_modalities: str = "eurosat_train"  # name in data/modalities or a YAML path
    test_modalities: str = "eurosat_test"
    epochs: int = 2
    max_steps: int | None = None  # stop after this many optimiser steps (smoke runs)
    batch_size: int = 16
    grad_accum: int = 1
    optimizer: str = "adamw"  # adamw | adam
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.1  # fraction of the steps spent warming up
    grad_clip: float = 1.0
    random_window: bool = True
    group_by_modality: bool = False  # batches of one training modality (no padding; single process only)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    num_workers: int = 0
    ckpt_every: int = 50  # steps
    val_every_epoch: bool = True
    init: str | None = None  # checkpoint whose encoder weights initialise the model
    adapters: dict | None = None  # freeze the model, train only these adapters (atomizer.adapters.AdapterConfig)
    out_dir: str = "runs/default"

    def __post_init__(self) -> None:
        check_precision(self.precision)


# --------------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------------


def lr_at(step: int, total: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def start_run(out_dir: str | Path, config: RunConfig, resume: bool, write: bool = True) -> Path:
    """The run directory ``out_dir`` with ``checkpoints/`` and the run's ``config.yaml`` (written atomically).

    Raises:
        FileExistsError: ``out_dir`` already holds a run and ``resume`` is False.
    """
    out = Path(out_dir)
    if write:
        if (out / "config.yaml").exists() and not resume:
            raise FileExistsError(f"{out} already holds a run; pass resume=True (--resume) or another out_dir")
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    return out


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.ndim == 2:
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), target.float())
    return nn.functional.cross_entropy(logits.float(), target)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    raise ValueError(f"optimizer must be 'adamw' or 'adam', got {cfg.optimizer!r}")


def canvas_for(modality_file) -> CanvasSpec:
    return CanvasSpec(int(modality_file.source_size_px or 64), float(modality_file.source_gsd_m or 10.0))


def build_datasets(cfg: TrainConfig, kind: str):
    """(train, validation) :class:`ModalityDataset` under the training modalities, and the base train set."""
    train_mods = load_modalities(cfg.train_modalities)
    canvas = canvas_for(train_mods)
    base_tr = open_dataset(cfg.dataset, cfg.train_split, cfg.data_root)
    base_va = open_dataset(cfg.dataset, cfg.val_split, cfg.data_root)
    if cfg.train_limit is not None:
        base_tr.records = base_tr.records[: cfg.train_limit]
    if cfg.val_limit is not None:
        base_va.records = base_va.records[: cfg.val_limit]
    if len(base_tr) == 0:
        raise ValueError(f"dataset {cfg.dataset!r} has no {cfg.train_split!r} images")
    tr = ModalityDataset(base_tr, train_mods.modalities,
                         Assignment.random(len(base_tr), len(train_mods), cfg.seed).modality_index,
                         kind, canvas, random_window=cfg.random_window, seed=cfg.seed)
    va = ModalityDataset(base_va, train_mods.modalities,
                         Assignment.random(len(base_va), len(train_mods), cfg.seed + 1).modality_index,
                         kind, canvas, random_window=False, seed=cfg.seed)
    return tr, va, base_tr


@torch.no_grad()
def predict_dataset(model: nn.Module, ds: ModalityDataset, batch_size: int, device: torch.device,
                    desc: str = "eval", precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) of every item, in order, with the model in eval mode."""
    model.eval()
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate_items)
    logits, targets = [], []
    for b in tqdm(loader, desc=desc, leave=False, disable=None):
        with autocast(precision, device):
            logits.append(forward(model, move_input(b["input"], device)).float().cpu())
        targets.append(b["target"])
    return torch.cat(logits), torch.cat(targets)


class MetricsLog:
    """Append-only JSON-lines log; on resume, entries after the resumed step are dropped."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))

    def write(self, **record: Any) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def state_hash(model: nn.Module) -> float:
    """A cheap fingerprint of the weights (sum of |w|), to compare runs and ranks."""
    return float(sum(p.detach().double().abs().sum() for p in getattr(model, "module", model).parameters()))


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train ``cfg.model`` and return a summary (paths, best validation metric, final step).

    Raises:
        FileExistsError: ``out_dir`` already holds a run and ``resume`` is False.
    """
    rank, world, local_rank = dist_info()
    distributed = world > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = pick_device(cfg.device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if device.type == "cpu":
        tune_cpu_allocator()  # atoms-sized buffers stay in the process instead of being page-faulted each step
    is_main = rank == 0
    out = start_run(cfg.out_dir, cfg, resume, write=is_main)
    last_ckpt = out / "checkpoints" / "last.pt"

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    # ---- model
    probe = open_dataset(cfg.dataset, cfg.train_split, cfg.data_root)
    num_classes = probe.num_classes
    model = build_model(cfg.model, cfg.preset, num_classes=num_classes, **cfg.model_overrides).to(device)
    kind = input_kind(model)
    head_loaded = "none"
    if cfg.init:
        from atomizer.pretrain import load_encoder_weights

        head_loaded = load_encoder_weights(model, cfg.init, classes=probe.classes)["head"]
    adapters = None
    if cfg.adapters is not None:  # frozen base, only the adapters train (saved apart: adapters.pt)
        from atomizer.adapters import apply_adapters

        adapters = apply_adapters(model, cfg.adapters, head_loaded=head_loaded).to_dict()
    # ---- data
    train_ds, val_ds, _ = build_datasets(cfg, kind)
    if distributed:
        sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True,
                                                      seed=cfg.seed, drop_last=True)
    else:
        sampler = torch.utils.data.RandomSampler(train_ds, generator=torch.Generator().manual_seed(cfg.seed))
    batch_size = min(cfg.batch_size, len(sampler))  # a tiny training set still gives one full batch
    if batch_size < 1:
        raise ValueError("no training images for this rank")
    batch_sampler = None
    if cfg.group_by_modality and not distributed:  # same-modality batches: no padding between sets
        batch_sampler = ModalityBatchSampler(train_ds.assignment, batch_size, shuffle=True, seed=cfg.seed,
                                             drop_last=True)
    n_batches = len(batch_sampler) if batch_sampler is not None else len(sampler) // batch_size
    per_epoch = max(1, n_batches // cfg.grad_accum)
    total_steps = cfg.epochs * per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = max(1, int(cfg.warmup_frac * total_steps))
    opt = make_optimizer(model, cfg)
    step = 0
    best = -math.inf
    log = MetricsLog(out / "metrics.jsonl", enabled=is_main)
    if resume and last_ckpt.exists():
        extra = load_into(model, last_ckpt)
        opt.load_state_dict(extra["optimizer"])
        step, best = int(extra["step"]), float(extra["best"])
        log.truncate_after(step)
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    core = getattr(model, "module", model)

    def checkpoint(path: Path, **extra: Any) -> None:
        if is_main:
            save_checkpoint(path, core, {"step": step, "best": best, "optimizer": opt.state_dict(),
                                         "train_config": cfg.to_dict(), "classes": probe.classes,
                                         "multilabel": probe.multilabel,
                                         "train_modalities": cfg.train_modalities, "adapters": adapters, **extra})

    bar = tqdm(total=total_steps, initial=step, disable=not (progress and is_main), desc=f"train {cfg.model}")
    t_last, seen = time.perf_counter(), 0
    while step < total_steps:
        epoch = step // per_epoch
        skip = step - epoch * per_epoch  # optimiser steps already done in this epoch
        train_ds.set_epoch(epoch)
        if distributed:
            sampler.set_epoch(epoch)
        else:
            sampler.generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        if batch_sampler is not None:
            batch_sampler.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(train_ds, batch_sampler=batch_sampler, collate_fn=collate_items,
                                                 num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
        else:
            loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size, sampler=sampler,
                                                 collate_fn=collate_items, num_workers=cfg.num_workers,
                                                 drop_last=True, pin_memory=device.type == "cuda")
        model.train()
        it = iter(loader)
        for _ in range(skip * cfg.grad_accum):  # fast-forward to where the interrupted run stopped
            next(it)
        for _ in range(skip, per_epoch):
            if step >= total_steps:
                break
            lr = lr_at(step, total_steps, cfg.lr, warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout and pruning of this step
            opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for _micro in range(cfg.grad_accum):
                b = next(it)
                with autocast(cfg.precision, device):
                    logits = forward(model, move_input(b["input"], device))
                loss = loss_fn(logits, b["target"].to(device)) / cfg.grad_accum
                loss.backward()
                loss_sum += float(loss.detach())
                seen += len(b["id"])
            gnorm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            opt.step()
            step += 1
            now = time.perf_counter()
            ips = seen * world / max(1e-9, now - t_last)
            t_last, seen = now, 0
            log.write(kind="train", step=step, epoch=epoch, loss=loss_sum, lr=lr, grad_norm=gnorm,
                      images_per_s=ips, time=time.time())
            bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}")
            bar.update(1)
            if step % cfg.ckpt_every == 0 and step < total_steps:
                checkpoint(last_ckpt)
        end_of_epoch = step % per_epoch == 0 or step >= total_steps
        if end_of_epoch and cfg.val_every_epoch and is_main and len(val_ds):
            logits, targets = predict_dataset(core, val_ds, cfg.batch_size, device, desc="validate",
                                              precision=cfg.precision)
            val = classification_metrics(logits, targets)
            val["loss"] = float(loss_fn(logits, targets))
            key = "macro_map"
            log.write(kind="val", step=step, epoch=epoch, time=time.time(), **val)
            if val[key] > best:
                best = val[key]
                checkpoint(out / "checkpoints" / "best.pt", val=val)
            model.train()
        if end_of_epoch:
            checkpoint(last_ckpt)
    bar.close()
    checkpoint(last_ckpt)
    if is_main and not (out / "checkpoints" / "best.pt").exists():
        checkpoint(out / "checkpoints" / "best.pt")
    summary = {"out_dir": str(out), "step": step, "best_val_macro_map": best, "weights_fingerprint": state_hash(core),
               "last": str(last_ckpt), "best": str(out / "checkpoints" / "best.pt"), "rank": rank}
    if adapters is not None and is_main:  # the best adapters alone, apart from the base checkpoint
        from atomizer.adapters import adapter_report, save_adapters
        from atomizer.checkpoint import load_model

        summary["adapters"] = str(save_adapters(load_model(out / "checkpoints" / "best.pt"), out / "adapters.pt",
                                                base_checkpoint=cfg.init))
        summary["trainable_parameters"] = adapter_report(core)
    if is_main:
        atomic_write_json(out / "summary.json", summary)
    if distributed:
        dist.barrier()
    return summary
