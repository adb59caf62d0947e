"""One training loop for Atomizer and every baseline.

Read top to bottom: the typed config, the data, the task (:class:`TrainTask`: the named hooks the loop
calls; the skeleton shared with pretraining is :class:`atomizer.engine.loop.Loop`).

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

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
import torch.distributed as dist
from torch import nn

from atomizer.atoms.canvas import CanvasSpec
from atomizer.atoms.dense import IGNORE, TASKS
from atomizer.atoms.tokens import WIRE_FORMATS, ModalityBatchSampler
from atomizer.core.config import Config
from atomizer.core.runtime import check_precision, ensure_process_group, process_device
from atomizer.data.augment import AugmentConfig
from atomizer.data.datasets import open_dataset, stratified_fraction
from atomizer.data.modalities import Assignment, check_dataset_fit, modality_set
from atomizer.engine.evaluation import predict_dataset
from atomizer.engine.loaders import ModalityDataset, collate_items, wire_for
from atomizer.engine.loop import Loop, Step, Task, state_hash
from atomizer.engine.metrics import classification_metrics, segmentation_loss, segmentation_scores
from atomizer.engine.pretraining import load_pretrained_encoder
from atomizer.models.adapters import adapter_report, apply_adapters, init_adapters, save_adapters
from atomizer.models.atomizer import Atomizer
from atomizer.models.checkpoint import load_into, load_model, save_checkpoint
from atomizer.models.registry import build_model, input_type

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig(Config):
    """Everything a run needs; saved as ``config.yaml`` in the run directory."""

    kind: ClassVar[str] = "training"

    model: str = "atomizer"  # atomizer | resnet | vit | scalemae | perceiver
    label: str | None = None  # name of this variant in the results (default: the model), e.g. "atomizer-noaug"
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    task: str = "auto"  # auto (segmentation for a mask dataset, else classification) | classification | segmentation
    dense_gsd_m: float | None = None  # segmentation: the output grid's GSD (m) of the targets; default the mask's
    class_weights: list[float] | None = None  # segmentation: per-class loss weights
    dense_train_queries: int | None = None  # segmentation: output pixels scored per training window (random); None: all
    dataset: str = "eurosat"  # eurosat | bigearthnet (embedded) | a manifest path (your own data) | torchgeo:<Dataset>
    data_root: str | None = None
    train_split: str = "train"
    val_split: str = "validation"
    fold: int | None = None  # cross-validation fold of the shipped k-fold assignment (data/folds); None: fixed split
    train_limit: int | None = None  # use only the first N training images (smoke runs)
    train_fraction: float = 1.0  # a class-stratified fraction of the training images (data-scaling curves)
    val_limit: int | None = None
    train_modalities: str = "eurosat_train"  # name of a shipped modality set, a YAML path, or native (images as read)
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
    windows_per_image: int = 1  # training items per image per epoch (random windows; for a few large tiles)
    augment: AugmentConfig | None = None  # flips, rot90, crops, band dropout of training images (data.augment)
    group_by_modality: bool = False  # batches of one training modality (no padding; single process only)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    num_workers: int = 0
    prefetch_factor: int | None = None  # batches each loader worker prepares ahead (default: torch's, 2)
    wire: str = "auto"  # atoms to the model: compact (index runs, uint16 DN; exact) | full | auto (compact with workers or a GPU)
    ckpt_every: int = 50  # steps
    val_every_epoch: bool = True
    patience: int | None = None  # early stopping: stop after this many validations without a better macro mAP
    init: str | None = None  # checkpoint whose encoder weights initialise the model
    adapters: dict | None = None  # freeze the model, train only these adapters (atomizer.models.adapters.AdapterConfig)
    adapters_init: str | None = None  # an adapters.pt whose adapter weights start this run's (SpectralX stage 2)
    out_dir: str = "runs/default"

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.task not in ("auto", *TASKS):
            raise ValueError(f"training config: task must be one of auto, {', '.join(TASKS)}, got {self.task!r}")
        if self.dense_gsd_m is not None and not self.dense_gsd_m > 0:
            raise ValueError(f"training config: dense_gsd_m must be positive (or null), got {self.dense_gsd_m}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"training config: train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.dense_train_queries is not None and self.dense_train_queries < 1:
            raise ValueError(
                f"training config: dense_train_queries must be >= 1 (or null), got {self.dense_train_queries}"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"training config: max_steps must be >= 1 (or null), got {self.max_steps}")
        if self.adapters_init is not None and self.adapters is None:
            raise ValueError("training config: adapters_init starts adapters; give adapters too")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"training config: patience must be >= 1 (or null), got {self.patience}")
        if self.wire not in ("auto", *WIRE_FORMATS):
            raise ValueError(f"training config: wire must be auto, compact or full, got {self.wire!r}")
        for name in ("epochs", "batch_size", "grad_accum", "ckpt_every", "windows_per_image"):
            if getattr(self, name) < 1:
                raise ValueError(f"training config: {name} must be >= 1, got {getattr(self, name)}")


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def resolve_task(cfg: TrainConfig, dataset: Any) -> str:
    """The task a run learns: ``segmentation`` for a dataset with masks unless the config asks for
    classification (of the classes present); a segmentation config needs masks."""
    has_masks = getattr(dataset, "task", None) == "segmentation"
    if cfg.task == "segmentation" and not has_masks:
        raise ValueError(f"task segmentation needs a dataset with masks; {cfg.dataset!r} has none")
    if cfg.task == "auto":
        return "segmentation" if has_masks else "classification"
    return cfg.task


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.ndim == 2:
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), target.float())
    return nn.functional.cross_entropy(logits.float(), target)


def build_datasets(cfg: TrainConfig, batch_type: type, wire: str = "full", task: str = "classification"):
    """(train, validation) :class:`ModalityDataset` under the training modalities, and the base train set;
    ``wire`` as :class:`ModalityDataset`'s; ``task`` segmentation: targets on each window's output grid."""
    train_mods = modality_set(cfg.train_modalities)
    canvas = CanvasSpec.of(train_mods)
    base_tr = open_dataset(cfg.dataset, cfg.train_split, cfg.data_root, fold=cfg.fold)
    base_va = open_dataset(cfg.dataset, cfg.val_split, cfg.data_root, fold=cfg.fold)
    if cfg.train_fraction < 1.0:
        base_tr.records = [base_tr.records[i] for i in stratified_fraction(base_tr, cfg.train_fraction, cfg.seed)]
    if cfg.train_limit is not None:
        base_tr.records = base_tr.records[: cfg.train_limit]
    if cfg.val_limit is not None:
        base_va.records = base_va.records[: cfg.val_limit]
    if len(base_tr) == 0:
        raise ValueError(f"dataset {cfg.dataset!r} has no {cfg.train_split!r} images")
    check_dataset_fit(base_tr, train_mods.modalities, f"dataset {cfg.dataset}")
    tr = ModalityDataset(
        base_tr,
        train_mods.modalities,
        Assignment.random(len(base_tr) * cfg.windows_per_image, len(train_mods), cfg.seed).modality_index,
        batch_type,
        canvas,
        random_window=cfg.random_window,
        windows_per_image=cfg.windows_per_image,
        max_queries=cfg.dense_train_queries,
        seed=cfg.seed,
        augment=cfg.augment,
        wire=wire,
        dense=task == "segmentation",
        dense_gsd_m=cfg.dense_gsd_m,
    )
    va = ModalityDataset(
        base_va,
        train_mods.modalities,
        Assignment.random(len(base_va), len(train_mods), cfg.seed + 1).modality_index,
        batch_type,
        canvas,
        random_window=False,
        seed=cfg.seed,
        wire=wire,
        dense=task == "segmentation",
        dense_gsd_m=cfg.dense_gsd_m,
    )
    return tr, va, base_tr


# --------------------------------------------------------------------------------------------------
# The task: the loop's hooks
# --------------------------------------------------------------------------------------------------


class TrainTask(Task):
    """Supervised training (and adapter training) as the :class:`~atomizer.engine.loop.Loop`'s hooks.

    :meth:`on_start` builds the model (``init`` weights, adapters), the data and its sampling, and resumes;
    :meth:`steps` plans every batch from the resumed step on; :meth:`training_step` is the loss of one
    micro-batch; :meth:`on_step_end` writes the periodic checkpoint and, at an epoch's end,
    :meth:`on_validation` then ``last.pt``; :meth:`on_end` the final checkpoints and the summary.
    """

    def __init__(self, cfg: TrainConfig, loop: Loop):
        self.cfg, self.loop = cfg, loop
        self.device = loop.device
        self.distributed = loop.world > 1
        self.best = -math.inf
        self.stale = 0  # validations since the best one (early stopping)
        self.adapters: dict | None = None

    # ---- set-up

    def on_start(self) -> None:
        cfg, loop, device = self.cfg, self.loop, self.device
        self.probe = probe = open_dataset(cfg.dataset, cfg.train_split, cfg.data_root, fold=cfg.fold)
        self.task = resolve_task(cfg, probe)
        overrides = {**cfg.model_overrides, **({"task": "segmentation"} if self.task == "segmentation" else {})}
        model = build_model(cfg.model, cfg.preset, num_classes=probe.num_classes, **overrides).to(device)
        self.class_weights = None if cfg.class_weights is None else torch.tensor(cfg.class_weights, dtype=torch.float32)
        if self.class_weights is not None and len(self.class_weights) != probe.num_classes:
            raise ValueError(f"class_weights has {len(self.class_weights)} values for {probe.num_classes} classes")
        #: the validation metric that selects best.pt
        self.metric = "miou" if self.task == "segmentation" else "macro_map"
        head_loaded = "none"
        if cfg.init:
            head_loaded = load_pretrained_encoder(model, cfg.init, classes=probe.classes)["head"]
        if cfg.adapters is not None:  # frozen base, only the adapters train (saved apart: adapters.pt)
            # apply_adapters takes an Atomizer or a canvas transformer; any other model is refused in one line
            self.adapters = apply_adapters(cast(Atomizer, model), cfg.adapters, head_loaded=head_loaded).to_dict()
            if cfg.adapters_init:  # adapters trained before on the same encoder (adaptation's stage 1)
                init_adapters(model, cfg.adapters_init)
        self.train_ds, self.val_ds, _ = build_datasets(
            cfg, input_type(model), wire_for(cfg.wire, device, cfg.num_workers), self.task
        )
        self._sampling()
        loop.attach(model, self.total_steps)
        extra = loop.resume_from(lambda path: load_into(model, path))
        if extra is not None:
            self.best = float(extra["best"])
            self.stale = int(extra.get("stale", 0))
        self.core = model  # the model itself (checkpoints, validation), DDP-wrapped or not
        if self.distributed:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        loop.model = self.model = model

    def _sampling(self) -> None:
        """The sampler (sharded under DDP), the batch size, the batches of an epoch and the step count."""
        cfg, ds = self.cfg, self.train_ds
        self.sampler: torch.utils.data.DistributedSampler | torch.utils.data.RandomSampler
        if self.distributed:
            self.sampler = torch.utils.data.DistributedSampler(
                ds, num_replicas=self.loop.world, rank=self.loop.rank, shuffle=True, seed=cfg.seed, drop_last=True
            )
        else:
            self.sampler = torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(cfg.seed))
        self.batch_size = min(cfg.batch_size, len(self.sampler))  # a tiny training set still gives one full batch
        if self.batch_size < 1:
            raise ValueError("no training images for this rank")
        self.batch_sampler: ModalityBatchSampler | None = None
        if cfg.group_by_modality and not self.distributed:  # same-modality batches: no padding between sets
            self.batch_sampler = ModalityBatchSampler(
                ds.assignment, self.batch_size, shuffle=True, seed=cfg.seed, drop_last=True
            )
        n_batches = len(self.batch_sampler) if self.batch_sampler is not None else len(self.sampler) // self.batch_size
        if n_batches < cfg.grad_accum:
            raise ValueError(
                f"grad_accum {cfg.grad_accum} exceeds the {n_batches} batches of an epoch "
                f"(batch_size {self.batch_size}): lower grad_accum or batch_size"
            )
        self.per_epoch = max(1, n_batches // cfg.grad_accum)
        self.total_steps = cfg.epochs * self.per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)

    # ---- data

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch``, a pure function of the seed and the epoch."""
        if self.batch_sampler is not None:
            self.batch_sampler.set_epoch(epoch)
            return list(self.batch_sampler)
        if isinstance(self.sampler, torch.utils.data.DistributedSampler):
            self.sampler.set_epoch(epoch)
        else:
            self.sampler.generator = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        order, bs = list(self.sampler), self.batch_size
        return [order[k : k + bs] for k in range(0, len(order) - bs + 1, bs)]

    def plan(self, start: int) -> Iterator[list[tuple[int, int]]]:
        """Every batch from optimiser step ``start`` to the end, as lists of ``(epoch, index)``: resuming
        mid-epoch restores the position (nothing already trained on is read), and each item carries its
        epoch, so ONE loader (its workers alive for the whole run) serves every epoch."""
        accum, per_epoch = self.cfg.grad_accum, self.per_epoch
        step = start
        while step < self.total_steps:
            epoch = step // per_epoch
            skip = step - epoch * per_epoch
            for b in self.epoch_batches(epoch)[skip * accum : per_epoch * accum]:
                yield [(epoch, i) for i in b]
            step = (epoch + 1) * per_epoch

    def steps(self) -> Iterator[Step]:
        cfg, loop = self.cfg, self.loop
        loader = torch.utils.data.DataLoader(
            self.train_ds,
            batch_sampler=self.plan(loop.step),
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=collate_items,
            prefetch_factor=cfg.prefetch_factor if cfg.num_workers else None,  # None: torch's default (2)
        )
        it = iter(loader)
        while loop.step < self.total_steps and not self.stopped:
            epoch = loop.step // self.per_epoch
            self.train_ds.set_epoch(epoch)  # what the dataset reports; each item carries its own epoch
            yield epoch, (next(it) for _ in range(cfg.grad_accum))

    # ---- the step

    def training_step(self, batch: dict) -> tuple[torch.Tensor, int, dict]:
        inputs = batch["input"].to(self.device, non_blocking=True)
        if "queries" in batch:  # segmentation: one answer per output pixel
            logits = self.model(inputs, queries=batch["queries"].to(self.device))
            loss = segmentation_loss(logits, batch["target"].to(self.device), self.class_weights, IGNORE)
            return loss, len(batch["id"]), {}
        return loss_fn(self.model(inputs), batch["target"].to(self.device)), len(batch["id"]), {}

    @property
    def stopped(self) -> bool:
        """Early stopping: ``patience`` validations without a better macro mAP."""
        return self.cfg.patience is not None and self.stale >= self.cfg.patience

    def on_step_end(self, epoch: int) -> None:
        loop, cfg = self.loop, self.cfg
        end_of_epoch = loop.step % self.per_epoch == 0 or loop.step >= self.total_steps
        if loop.checkpoint_due() and not end_of_epoch:  # at an epoch's end, last.pt follows validation
            self.on_checkpoint(loop.last)
        if not end_of_epoch:
            return
        if cfg.val_every_epoch and len(self.val_ds):
            self.on_validation(epoch)
        if self.distributed and cfg.patience is not None:  # every rank stops together
            flag = [self.stale]
            dist.broadcast_object_list(flag, src=0)
            self.stale = int(flag[0])
        self.on_checkpoint(loop.last)

    def on_validation(self, epoch: int) -> None:
        """Score the validation set; a better macro mAP writes ``best.pt``, else counts towards patience.
        Every rank scores its shard; all get the gathered predictions, hence the same metrics."""
        loop, cfg = self.loop, self.cfg
        logits, targets = predict_dataset(
            self.core,
            self.val_ds,
            cfg.batch_size,
            self.device,
            desc="validate",
            precision=cfg.precision,
            num_workers=cfg.num_workers,
            progress=loop.progress,
        )
        if self.task == "segmentation":  # per-image confusion matrices and (loss sum, labelled pixels)
            val = {k: v for k, v in segmentation_scores(logits).items() if not k.startswith("iou_")}
            val["loss"] = float(targets[:, 0].sum() / targets[:, 1].sum().clamp_min(1))
        else:
            val = classification_metrics(logits, targets)
            val["loss"] = float(loss_fn(logits, targets))
        if loop.is_main:
            loop.log.write(kind="val", step=loop.step, epoch=epoch, time=time.time(), **val)
        score = val[self.metric]
        if math.isfinite(score) and score > self.best:
            self.best, self.stale = score, 0
            self.on_checkpoint(loop.folder.best, val=val)
        else:
            self.stale += 1
        self.model.train()

    def on_checkpoint(self, path: Path, **more: Any) -> None:
        """Write a checkpoint (rank 0): the weights, the loop's state, the selection state and the run's
        record (config, classes, training modalities, adapters)."""
        loop, cfg = self.loop, self.cfg
        if loop.is_main:
            save_checkpoint(
                path,
                self.core,
                {
                    **loop.state(),
                    "best": self.best,
                    "stale": self.stale,
                    "train_config": cfg.to_dict(),
                    "classes": self.probe.classes,
                    "multilabel": self.probe.multilabel and self.task == "classification",
                    "task": self.task,
                    "class_ids": list(getattr(self.probe, "class_ids", [])),
                    "train_modalities": cfg.train_modalities,
                    "adapters": self.adapters,
                    **more,
                },
            )

    # ---- the end

    def on_end(self) -> dict:
        loop, cfg, folder = self.loop, self.cfg, self.loop.folder
        self.on_checkpoint(loop.last)
        if loop.is_main and not folder.best.exists():
            self.on_checkpoint(folder.best)
        summary: dict[str, Any] = {
            "out_dir": str(loop.out),
            "step": loop.step,
            f"best_val_{self.metric}": self.best,
            "stopped_early": self.stopped and loop.step < self.total_steps,
            "weights_fingerprint": state_hash(self.core),
            "last": str(loop.last),
            "best": str(folder.best),
            "rank": loop.rank,
        }
        if self.adapters is not None and loop.is_main:  # the best adapters alone, apart from the base checkpoint
            summary["adapters"] = str(save_adapters(load_model(folder.best), folder.adapters, base_checkpoint=cfg.init))
            summary["trainable_parameters"] = adapter_report(self.core)
        return summary


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train ``cfg.model`` and return a summary (paths, best validation metric, final step).

    Under ``torchrun`` the process group comes from :func:`atomizer.core.runtime.ensure_process_group` and
    each rank's device from :func:`atomizer.core.runtime.process_device`.

    Raises:
        FileExistsError: ``out_dir`` already holds a run and ``resume`` is False.
        LockedError: another process is writing ``out_dir`` (its lock is held for the whole run).
    """
    rank, world = ensure_process_group()
    device = process_device(cfg.device)
    loop = Loop(cfg, resume, rank=rank, world=world, progress=progress, desc=f"train {cfg.model}", device=device)
    return loop.fit(TrainTask(cfg, loop))
