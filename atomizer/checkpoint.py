"""Checkpoints: weights plus everything needed to rebuild the model (architecture, config, classes,
band tables seen in training), written atomically with ``torch.save``.

``load_model(path)`` rebuilds any registered model; ``load_into(model, path)`` refuses a checkpoint
whose configuration differs from the model's and names every differing field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from atomizer.registry import arch_of, build_from_config, config_to_dict
from atomizer.storage import atomic_write_bytes

FORMAT = "atomizer-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint is unreadable, of another format, or does not match the model."""


def save_checkpoint(path: str | Path, model: nn.Module, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (unwrapped from DDP if needed) with its config and ``extra`` metadata."""
    model = getattr(model, "module", model)
    payload = {
        "format": FORMAT,
        "arch": arch_of(model),
        "config": config_to_dict(model.cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    return atomic_write_bytes(path, lambda p: torch.save(payload, p))


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many kinds for a corrupt file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an {FORMAT} checkpoint")
    return payload


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored in a checkpoint, weights loaded, in eval mode."""
    payload = read_checkpoint(path, map_location)
    model = build_from_config(payload["arch"], payload["config"])
    if payload["extra"].get("adapters"):  # a run that trained adapters on a frozen base
        from atomizer.adapters import apply_adapters

        apply_adapters(model, payload["extra"]["adapters"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two config dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: checkpoint has {va!r}, model has {vb!r}")
    return out


def load_into(model: nn.Module, path: str | Path, strict_config: bool = True) -> dict:
    """Load a checkpoint's weights into ``model``; refuse a different architecture or config.

    Returns the checkpoint's ``extra`` metadata.
    """
    payload = read_checkpoint(path)
    target = getattr(model, "module", model)
    if payload["arch"] != arch_of(target):
        raise CheckpointError(f"{path} holds a {payload['arch']!r} model, not {arch_of(target)!r}")
    if strict_config:
        diff = config_diff(payload["config"], config_to_dict(target.cfg))
        if diff:
            raise CheckpointError(f"{path} was saved from another configuration: " + "; ".join(diff))
    target.load_state_dict(payload["state_dict"])
    return payload["extra"]
