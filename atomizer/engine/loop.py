"""The one training-loop skeleton: supervised training, masked-atom pretraining and adapter training
(:mod:`atomizer.engine.training`, :mod:`atomizer.engine.pretraining`) all run through :class:`Loop`.

What the skeleton owns, so that each fix is made once:

* the device (and, on CPU, the allocator setting of :func:`atomizer.core.runtime.tune_cpu_allocator`);
* the run directory (its files named in :mod:`atomizer.core.run_folder`: ``config.yaml``, ``checkpoints/``,
  ``metrics.jsonl``, ``summary.json``; only rank 0 writes) and the refusal to overwrite a run unless resuming; rank 0 holds the folder's lock
  (:func:`atomizer.core.storage.locked`) from the start of the run to :meth:`Loop.close`, so a second
  ``train``/``pretrain`` (``--resume`` or not) on the same folder is refused in one line instead of
  overwriting its checkpoints and log; temporary files a killed run left there are removed then;
* seeding: global seeds at the start, and a per-step seed ``seed * 1_000_003 + step`` for dropout and
  token pruning, so a resumed run draws exactly what the uninterrupted run drew;
* the optimiser (AdamW with decay on matrices only, or Adam), the learning rate of every step (linear
  warm-up, then cosine decay to zero: :func:`lr_at`), gradient accumulation, autocast, clipping;
* the step log (loss, lr, gradient norm, images/s) and the progress bar;
* checkpoints: ``last.pt`` every ``ckpt_every`` steps, the resume point, and the summary.

The task (a :class:`Task`: supervised training, pretraining) gives the loop named hooks, called by
:meth:`Loop.fit` in this order: ``on_start`` (model, data, ``loop.attach``, ``loop.resume_from``), ``steps``
(the micro-batches of each optimiser step, from the resumed step on), ``training_step`` (the loss of one
micro-batch), ``on_step_end`` (validation, checkpoints, extra logs) and ``on_end`` (the last checkpoint, the
summary).

A config driving the loop has the fields ``seed, device, precision, optimizer, lr, weight_decay,
warmup_frac, grad_clip, ckpt_every, out_dir`` (see :class:`atomizer.engine.training.TrainConfig`).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from atomizer.core.config import Config
from atomizer.core.run_folder import RunFolder
from atomizer.core.runtime import autocast, pick_device, provenance, tune_cpu_allocator
from atomizer.core.storage import (
    atomic_write_json,
    atomic_write_text,
    clean_stale_temps,
    finite_json,
    jsonl_lines,
    locked,
    read_jsonl,
)


def lr_at(step: int, total: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """AdamW (weight decay on parameters of 2 or more dimensions only) or Adam, over trainable parameters."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    raise ValueError(f"optimizer must be 'adamw' or 'adam', got {cfg.optimizer!r}")


def state_hash(model: nn.Module) -> float:
    """A cheap fingerprint of the weights (sum of |w|), to compare runs and ranks."""
    return float(sum(p.detach().double().abs().sum() for p in getattr(model, "module", model).parameters()))


#: Options a resumed run may change: they do not change what the run computes.
RESUMABLE_CHANGES = ("num_workers",)


def start_run(out_dir: str | Path, config: Config, resume: bool, write: bool = True) -> Path:
    """The run directory ``out_dir`` with ``checkpoints/`` and the run's ``config.yaml`` (written atomically).

    A resumed run keeps the record of how its weights were trained: any option that changes the result
    (all but :data:`RESUMABLE_CHANGES`; the device does: fp32 on CPU, bf16 autocast on CUDA) must be the
    one in ``config.yaml``, else the resume is refused; ``config.yaml`` is never rewritten.

    Raises:
        FileExistsError: ``out_dir`` already holds a run and ``resume`` is False.
        ValueError: ``resume`` with settings that differ from the run's.
    """
    out = Path(out_dir)
    if write:
        folder = RunFolder(out)
        stored = folder.config
        if stored.exists() and not resume:
            raise FileExistsError(f"{out} already holds a run; pass resume=True (--resume) or another out_dir")
        if stored.exists():
            old = type(config).from_yaml(stored).to_dict()
            new = config.to_dict()
            diff = [
                f"{k}: run has {old.get(k)!r}, asked {new.get(k)!r}"
                for k in sorted(set(old) | set(new))
                if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k)
            ]
            if diff:
                raise ValueError(
                    f"cannot resume {out} with other settings than it was trained with ("
                    + "; ".join(diff)
                    + "); start a new run (another out_dir) instead"
                )
        folder.checkpoints.mkdir(parents=True, exist_ok=True)
        if not stored.exists():  # the record of how the weights were trained is written once
            atomic_write_text(stored, config.to_yaml())
        if not folder.provenance.exists():  # and where they come from (commit, versions)
            atomic_write_json(folder.provenance, provenance())
    return out


class MetricsLog:
    """Append-only JSON-lines log; on resume, entries after the resumed step are dropped.

    Read by :func:`atomizer.core.storage.jsonl_lines` (the one reader, also behind
    :func:`atomizer.results.store.read_metrics`): a half-written last line is left out, any other line that
    is not a record is skipped by readers but kept in the file. Only the holder of the run folder's lock
    writes it, so a truncation on resume never races another writer's appends.
    """

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self._tail_checked = False

    def truncate_after(self, step: int) -> None:
        """Drop the records of steps after ``step`` (and a half-written last line); every other line is
        kept verbatim. The file is rewritten atomically, and only when something is dropped."""
        if not self.enabled or not self.path.exists():
            return
        keep = [ln for ln, r in jsonl_lines(self.path) if not _after(r, step)]
        text = "".join(ln + "\n" for ln in keep)
        if text != self.path.read_text(errors="replace"):
            atomic_write_text(self.path, text)
        self._tail_checked = True

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        line = json.dumps(finite_json(record), allow_nan=False) + "\n"  # valid JSON: a diverged loss is null
        if not self._tail_checked:  # never glue a record onto a line a killed writer left unfinished
            self._tail_checked = True
            if self.path.exists() and self.path.stat().st_size:
                with open(self.path, "rb") as f:
                    f.seek(-1, 2)
                    if f.read(1) != b"\n":
                        line = "\n" + line
        with open(self.path, "a") as f:
            f.write(line)

    def read(self) -> list[dict]:
        return read_jsonl(self.path)


def _after(record: dict | None, step: int) -> bool:
    """A record logged after optimiser step ``step`` (a line without a numeric step is never after)."""
    value = record.get("step") if record is not None else None
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > step


#: One optimiser step's input: the epoch it belongs to and its micro-batches (gradient accumulation).
Step = tuple[int, Iterable[Any]]
#: The loss of one micro-batch, the number of images it holds, and extra fields for the step's log record.
LossFn = Callable[[Any], tuple[torch.Tensor, int, dict]]


class Loop:
    """Run directory, device, seeds, optimiser, schedule, logging and checkpoints of one run.

    Usage (what :func:`atomizer.engine.training.train` and :func:`atomizer.engine.pretraining.pretrain`
    do): ``loop = Loop(cfg, resume)``; ``summary = loop.fit(task)`` with a :class:`Task` whose hooks build
    the model on ``loop.device``, ``loop.attach(model, total)``, ``loop.resume_from(load)``, and give the
    steps, the loss and what follows each step. :meth:`fit` releases the lock at the end, whatever happened
    (without it: ``loop.run(...)``, ``loop.finish(summary)``, then :meth:`close`, or ``with Loop(...) as
    loop:``): rank 0 holds the run folder's lock from the constructor to :meth:`close`.

    Raises:
        LockedError: (rank 0) another process holds the run folder (one line naming it; nothing written).

    Args:
        cfg: The run's config (fields listed in the module docstring).
        resume: Continue the run in ``cfg.out_dir`` from ``checkpoints/last.pt``.
        rank, world: Distributed rank and world size (only rank 0 writes).
        progress: Show a progress bar (rank 0).
        desc: The progress bar's label.
    """

    def __init__(
        self,
        cfg: Any,
        resume: bool = False,
        rank: int = 0,
        world: int = 1,
        progress: bool = True,
        desc: str = "train",
        device: torch.device | None = None,
    ):
        self.cfg, self.resume, self.rank, self.world = cfg, resume, rank, world
        self.is_main = rank == 0
        self.progress, self.desc = progress, desc
        self.device = device or pick_device(cfg.device)
        if self.device.type == "cpu":
            tune_cpu_allocator()  # atoms-sized buffers stay in the process instead of being page-faulted each step
        self.created = not Path(cfg.out_dir).exists()  # only a folder this run made is ever removed
        self._hold = ExitStack()
        if self.is_main:  # the one writer of the folder until close()
            self._hold.enter_context(locked(cfg.out_dir, "run folder"))
        try:
            if self.is_main:
                clean_stale_temps(cfg.out_dir)  # what a kill mid-write left (.last.pt.XXXXXXXX.tmp, ...)
            self.out = start_run(cfg.out_dir, cfg, resume, write=self.is_main)
        except BaseException:
            self.close()
            raise
        self.folder = RunFolder(self.out)
        self.last = self.folder.last
        self.log = MetricsLog(self.folder.metrics, enabled=self.is_main)
        self.step = 0
        self._t_last = time.perf_counter()
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)

    def close(self) -> None:
        """Release the run folder's lock (idempotent)."""
        self._hold.close()

    def __enter__(self) -> Loop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def attach(self, model: nn.Module, total_steps: int, params_model: nn.Module | None = None) -> None:
        """The model to optimise (``params_model``: whose parameters, default ``model``) and the step count."""
        self.model = model
        self.total_steps = int(total_steps)
        self.warmup = max(1, int(self.cfg.warmup_frac * self.total_steps))
        self.optimizer = make_optimizer(params_model or model, self.cfg)

    def resume_from(self, load: Callable[[Path], dict]) -> dict | None:
        """When resuming and ``last.pt`` exists: ``load(path)`` restores the model and returns the
        checkpoint's extra (holding ``optimizer`` and ``step``); the optimiser, the step and the log
        follow. Returns that extra, else None. The log keeps exactly the records up to the resumed step:
        a run killed before its first checkpoint starts its log anew (no step is ever logged twice)."""
        if not self.resume:
            return None
        extra = None
        if self.last.exists():
            extra = load(self.last)
            self.optimizer.load_state_dict(extra["optimizer"])
            self.step = int(extra["step"])
        self.log.truncate_after(self.step if extra is not None else -1)
        return extra

    def discard_if_untrained(self) -> None:
        """Remove the run directory this loop created when nothing was trained in it (a failed start), so
        the corrected command is not refused with "already holds a run"."""
        if self.created and self.is_main and not self.log.path.exists() and not self.last.exists():
            shutil.rmtree(self.out, ignore_errors=True)

    def state(self) -> dict:
        """What every checkpoint of the loop holds: the step and the optimiser."""
        return {"step": self.step, "optimizer": self.optimizer.state_dict()}

    def checkpoint_due(self) -> bool:
        """``last.pt`` is due every ``ckpt_every`` steps (the final one is written by the task)."""
        return self.step % self.cfg.ckpt_every == 0 and self.step < self.total_steps

    def train_step(self, micro_batches: Iterable[Any], loss_of: LossFn, epoch: int, **log: Any) -> dict:
        """One optimiser step over ``micro_batches``: lr, per-step seed, autocast, backward, clipping."""
        cfg, model = self.cfg, self.model
        lr = lr_at(self.step, self.total_steps, cfg.lr, self.warmup)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        torch.manual_seed(cfg.seed * 1_000_003 + self.step)  # dropout and pruning of this step
        self.optimizer.zero_grad(set_to_none=True)
        accum = int(getattr(cfg, "grad_accum", 1))
        loss_sum, images, fields = 0.0, 0, {}
        for mb in micro_batches:  # fetched one at a time: one micro-batch in memory
            with autocast(cfg.precision, self.device):
                loss, n, more = loss_of(mb)
            loss = loss / accum
            loss.backward()
            loss_sum += float(loss.detach())
            images += n
            fields.update(more)
        gnorm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        self.optimizer.step()
        self.step += 1
        now = time.perf_counter()
        ips = images * self.world / max(1e-9, now - self._t_last)
        self._t_last = now
        record = {
            "kind": "train",
            "step": self.step,
            "epoch": epoch,
            "loss": loss_sum,
            "lr": lr,
            "grad_norm": gnorm,
            **fields,
            **log,
            "images_per_s": ips,
            "time": time.time(),
        }
        self.log.write(**record)
        self._bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}")
        self._bar.update(1)
        return record

    def run(self, steps: Iterator[Step], loss_of: LossFn, after_step: Callable[[int], None] | None = None) -> None:
        """Take optimiser steps from ``steps`` until ``total_steps``; ``after_step(epoch)`` after each
        (checkpoints, validation). ``steps`` yields ``(epoch, micro-batches)`` from the current step on
        (it may read :attr:`step`); the micro-batches may be a generator (``grad_accum`` of them)."""
        self._bar = tqdm(
            total=self.total_steps, initial=self.step, disable=not (self.progress and self.is_main), desc=self.desc
        )
        self._t_last = time.perf_counter()
        self.model.train()
        for epoch, micro in steps:
            if self.step >= self.total_steps:
                break
            self.train_step(micro, loss_of, epoch)
            if after_step is not None:
                after_step(epoch)
        self._bar.close()

    def finish(self, summary: dict) -> dict:
        """Write ``summary.json`` (rank 0) and return the summary."""
        if self.is_main:
            atomic_write_json(self.folder.summary, summary)
        return summary

    def fit(self, task: Task) -> dict:
        """Run ``task`` through its hooks (see :class:`Task`) and return its summary (written by rank 0).

        Whatever happens, the run folder's lock is released at the end; a run that fails before training
        anything leaves no folder behind (:meth:`discard_if_untrained`). Under DDP every rank waits for the
        others before returning.
        """
        try:
            task.on_start()
            self.run(task.steps(), task.training_step, task.on_step_end)
            summary = self.finish(task.on_end())
            if self.world > 1 and torch.distributed.is_initialized():
                torch.distributed.barrier()
            return summary
        except BaseException:
            self.discard_if_untrained()  # a failed start leaves nothing behind
            raise
        finally:
            self.close()  # the run folder's lock


class Task(ABC):
    """One kind of run, as the named hooks :meth:`Loop.fit` calls, in this order:

    1. :meth:`on_start`: build the model and the data on ``loop.device``, ``loop.attach(model, total)``,
       ``loop.resume_from(load)``;
    2. per optimiser step: the micro-batches :meth:`steps` yields, :meth:`training_step` on each (under
       autocast; the loop does the backward, clipping and the optimiser step), then :meth:`on_step_end`;
    3. :meth:`on_end`: the final checkpoint; returns the run's summary (``summary.json``).
    """

    loop: Loop

    @abstractmethod
    def on_start(self) -> None:
        """Model, data, ``loop.attach`` and ``loop.resume_from``."""

    @abstractmethod
    def steps(self) -> Iterator[Step]:
        """``(epoch, micro-batches)`` per optimiser step from ``loop.step`` on (see :meth:`Loop.run`)."""

    @abstractmethod
    def training_step(self, batch: Any) -> tuple[torch.Tensor, int, dict]:
        """The loss of one micro-batch, the number of images it holds, extra fields for the step's log."""

    @abstractmethod
    def on_step_end(self, epoch: int) -> None:
        """After each optimiser step (validation, checkpoints, extra logs)."""

    @abstractmethod
    def on_end(self) -> dict:
        """After the last step: the final checkpoint; returns the summary."""
