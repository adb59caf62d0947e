"""Checkpoints: weights plus everything needed to rebuild the model (architecture, config, classes,
band tables seen in training), written atomically with ``torch.save``.

A checkpoint holds tensors and plain data only (what :func:`save_checkpoint` writes is converted by
:func:`atomizer.core.storage.plain_data`), and is read with ``weights_only=True`` on torch >= 2.6
(:func:`atomizer.core.storage.load_torch_file`): a foreign or hostile file is refused in one line
without anything in it being run.

``load_model(path)`` rebuilds any registered model; ``load_into(model, path)`` refuses a checkpoint
whose configuration differs from the model's and names every differing field;
``load_encoder_weights(model, path)`` initialises an Atomizer classifier from a (pretraining or
classification) checkpoint's encoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atomizer.core.config import config_diff
from atomizer.core.storage import UnsafeFileError, atomic_write_bytes, load_torch_file, plain_data
from atomizer.models.adapters import apply_adapters, head_prefixes
from atomizer.models.registry import arch_of, build_from_config, config_class, config_of

FORMAT = "atomizer-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint is unreadable, of another format, or does not match the model."""


def save_checkpoint(path: str | Path, model: nn.Module, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (unwrapped from DDP if needed) with its config and ``extra`` metadata.

    Everything is stored as tensors and plain data (NumPy scalars as numbers, paths as strings, ...), so
    the file loads with ``weights_only=True``; anything else in ``extra`` is refused (TypeError) before
    writing.
    """
    model = getattr(model, "module", model)
    payload = plain_data(
        {
            "format": FORMAT,
            "arch": arch_of(model),
            "config": config_of(model).to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "extra": dict(extra or {}),
        },
        where="checkpoint",
    )
    return atomic_write_bytes(path, lambda p: torch.save(payload, p))


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint's payload, loaded with ``weights_only=True`` (nothing in the file is run).

    Raises:
        CheckpointError: no such file; a file that holds anything but tensors and plain data (refused
            unread), or is not a torch file; a torch older than 2.6; another format. One line each.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = load_torch_file(path, map_location=map_location)
    except UnsafeFileError as e:
        raise CheckpointError(f"{path}: not a readable checkpoint: {e}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an {FORMAT} checkpoint")
    for key, kind in (("arch", str), ("config", dict), ("state_dict", dict), ("extra", dict)):
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"{path}: not an {FORMAT} checkpoint (its {key!r} is missing or malformed)")
    return payload


def stored_config(payload: Mapping[str, Any]) -> dict:
    """A checkpoint's model config as the current code reads it (fields added since it was written take
    their defaults), so comparisons see only real differences."""
    return config_class(payload["arch"]).from_dict(payload["config"]).to_dict()


@dataclass
class Trained:
    """A trained model as a checkpoint holds it: the model (weights loaded, eval mode) and what describes it."""

    model: nn.Module
    arch: str
    extra: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """The class names (``class_<i>`` where the checkpoint names none)."""
        named = self.extra.get("classes")
        return list(named) if named else [f"class_{i}" for i in range(config_of(self.model).num_classes)]

    @property
    def multilabel(self) -> bool:
        return bool(self.extra.get("multilabel", True))


def load_trained(path: str | Path, map_location: str | torch.device = "cpu") -> Trained:
    """The one checkpoint-to-model loader: the file read once, the model rebuilt with its adapters, in eval mode."""
    payload = read_checkpoint(path, map_location)
    model = build_from_config(payload["arch"], payload["config"])
    if payload["extra"].get("adapters"):  # a run that trained adapters on a frozen base
        apply_adapters(model, payload["extra"]["adapters"])
    model.load_state_dict(payload["state_dict"])
    return Trained(model.eval(), payload["arch"], dict(payload["extra"]))


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored in a checkpoint, weights loaded, in eval mode (:func:`load_trained`'s model)."""
    return load_trained(path, map_location).model


def load_into(model: nn.Module, path: str | Path, strict_config: bool = True) -> dict:
    """Load a checkpoint's weights into ``model``; refuse a different architecture or config.

    Returns the checkpoint's ``extra`` metadata.
    """
    payload = read_checkpoint(path)
    target = getattr(model, "module", model)
    if payload["arch"] != arch_of(target):
        raise CheckpointError(f"{path} holds a {payload['arch']!r} model, not {arch_of(target)!r}")
    if strict_config:
        diff = config_diff(stored_config(payload), config_of(target).to_dict())
        if diff:
            raise CheckpointError(f"{path} was saved from another configuration: " + "; ".join(diff))
    target.load_state_dict(payload["state_dict"])
    return payload["extra"]


#: Config fields that do not change the encoder's weights (training-time behaviour, head size).
RUNTIME_FIELDS = ("num_classes", "prune_p", "attn_dropout", "ff_dropout", "checkpoint_tokens")


def _check_same_encoder(target: nn.Module, payload: Mapping[str, Any], path: str | Path, skip: Sequence[str]) -> None:
    """Refuse (one line, every differing field named) a checkpoint whose configuration differs from the
    model's in anything but ``skip`` (fields that leave the encoder's weights as they are)."""
    ours = {k: v for k, v in config_of(target).to_dict().items() if k not in skip}
    theirs = {k: v for k, v in stored_config(payload).items() if k not in skip}
    diff = config_diff(theirs, ours)
    if diff:
        raise CheckpointError(
            f"{path}: its encoder configuration does not match the model's (use the same preset "
            f"and model_overrides as the checkpoint): " + "; ".join(diff)
        )


def load_encoder_weights(
    model: nn.Module, path: str | Path, classes: Sequence[str] | None = None, head: str | bool | None = None
) -> dict:
    """Initialise an Atomizer classifier from a checkpoint's encoder (every weight but the head).

    Args:
        model: The Atomizer to initialise (may be wrapped in DDP).
        path: A pretraining checkpoint (:func:`atomizer.engine.pretraining.pretrain`) or any Atomizer checkpoint.
        classes: The model's class names, to decide ``head=None``.
        head: What of the task head (the pooling head, a segmentation model's dense decoder) to load:
            "none" (False), "full" (True), "pool" (all but the final Linear),
            or None: "none" from a pretraining checkpoint, "full" from a classifier trained on the same
            class list (fine-tuning), "pool" from a classifier of another label set.

    Returns:
        ``{"loaded": number of tensors, "head": "full" | "pool" | "none", "source": path}``.

    Raises:
        CheckpointError: not an Atomizer checkpoint, or an encoder configuration that differs from the
            model's (every differing field is named).
    """
    payload = read_checkpoint(path)
    target = getattr(model, "module", model)
    if payload["arch"] != "atomizer" or arch_of(target) != "atomizer":
        raise CheckpointError(
            f"{path}: encoder weights need an Atomizer checkpoint and model "
            f"(checkpoint holds {payload['arch']!r}, model is {type(target).__name__})"
        )
    _check_same_encoder(target, payload, path, RUNTIME_FIELDS)
    state = payload["state_dict"]
    extra = payload.get("extra", {})
    if head is None:
        if extra.get("kind") == "pretrain" or not extra.get("classes"):
            head = "none"
        else:
            head = "full" if classes is not None and list(extra["classes"]) == list(classes) else "pool"
    if isinstance(head, bool):
        head = "full" if head else "none"
    if head not in ("none", "pool", "full"):
        raise ValueError(f"head must be 'none', 'pool' or 'full', got {head!r}")

    def wanted(k: str) -> bool:  # the task head: the pooling head, or a segmentation model's dense decoder
        part = next((p for p in ("head.", "dense.") if k.startswith(p)), None)
        if part is None:
            return True
        return head == "full" or (head == "pool" and not k.startswith(part + "fc."))

    own = target.state_dict()
    keys = [k for k in own if wanted(k)]
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} lacks encoder weight(s) {missing[:5]}{'...' if len(missing) > 5 else ''} "
            "(a checkpoint with adapters? load it with atomizer.models.checkpoint.load_model)"
        )
    bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in keys if state[k].shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{path}: weight shapes differ from the model's: " + "; ".join(bad[:5]))
    target.load_state_dict({k: state[k] for k in keys}, strict=False)
    return {"loaded": len(keys), "head": head, "source": str(path)}


def load_canvas_weights(model: nn.Module, path: str | Path, classes: Sequence[str] | None = None) -> dict:
    """Initialise a canvas model (ResNet, ViT, ScaleMAE, Perceiver, U-Net) from a checkpoint of the same
    architecture and encoder configuration: every weight but the task head (``fc``, a dense decoder), and the
    head too when the checkpoint is a classifier of the same class list (fine-tuning, or a frozen base for
    adapters).

    Returns:
        ``{"loaded": number of tensors, "head": "full" | "none", "source": path}``.

    Raises:
        CheckpointError: another architecture, or an encoder configured differently (fields named).
    """
    payload = read_checkpoint(path)
    target = getattr(model, "module", model)
    arch = arch_of(target)
    if payload["arch"] != arch:
        raise CheckpointError(
            f"{path} holds a {payload['arch']!r} model; a {arch} initialises from a {arch} checkpoint"
        )
    _check_same_encoder(target, payload, path, (*RUNTIME_FIELDS, "task", "decoder_width", "dense_width"))
    heads = head_prefixes(target)
    state = {k: v for k, v in payload["state_dict"].items() if not k.startswith(heads)}
    extra = payload.get("extra", {})
    head = "none"
    same_task = payload["config"].get("task", "classification") == getattr(target.cfg, "task", "classification")
    if same_task and classes is not None and list(extra.get("classes") or []) == list(classes):
        state = dict(payload["state_dict"])
        head = "full"
    own = target.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if not k.startswith(heads) and k not in state]
    if bad or missing:
        raise CheckpointError(f"{path}: weights {(bad or missing)[:3]} do not fit the model")
    target.load_state_dict(state, strict=False)
    return {"loaded": len(state), "head": head, "source": str(path)}
