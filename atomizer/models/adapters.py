"""Parameter-efficient adaptation of a trained Atomizer (the SpectralX idea): freeze it, train small adapters.

* **LoRA** (:class:`LoRALinear`) wraps an ``nn.Linear`` of the encoder's attention: ``W x + (alpha / r)
  B A x`` with ``A`` (r, in) random and ``B`` (out, r) zero, so an adapted model starts exactly as the
  base. Targets: ``to_q``, ``to_out`` (cross and latent attention), ``token_proj`` (the factorised atom
  projection that makes the cross-attention keys/values; it reads ``.weight``, which LoRA exposes merged),
  and optionally ``to_kv`` (latent self-attention keys/values). Tied blocks share their adapters.
* **Spectral adapter** (:class:`SpectralAdapterEncoder`): a residual MLP on the band feature table
  (wavelength/bandwidth RBF code + GSD code), last layer zero-initialised, so a new sensor's bands can be
  re-mapped into what the frozen encoder understands.
* **Head**: ``freeze`` (same label set), ``fc`` (a new or retrained final Linear and its LayerNorm: a new
  label set), ``full`` (the whole pooling head; usually above the 5% budget), ``auto`` (``freeze`` when
  the head came with the base weights, else ``fc``).

Trainable parameters are checked against ``max_fraction`` (default 5%) of the encoder's parameters
(everything but the head and the adapters). :func:`save_adapters` stores only the trainable weights, with
the adapter config, the base config and a fingerprint of the frozen base weights, atomically;
:func:`load_adapters` refuses a different base. Training: ``TrainConfig(init=BASE, adapters={...})`` runs
the ordinary loop (:func:`atomizer.engine.training.train`) with only the adapters trainable.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atomizer.atoms.encodings import AtomEncoder
from atomizer.core.config import Config, ConfigError, config_diff
from atomizer.core.storage import UnsafeFileError, atomic_write_bytes, load_torch_file, plain_data
from atomizer.models.atomizer import Atomizer
from atomizer.models.layers import Attention, AttentionPool, FactorizedTokenProjection

FORMAT = "atomizer-adapters/1"
TARGETS = ("to_q", "to_kv", "to_out", "token_proj")
HEAD_MODES = ("auto", "freeze", "fc", "full")
#: Config fields that do not change the base weights.
RUNTIME_FIELDS = ("prune_p", "attn_dropout", "ff_dropout", "checkpoint_tokens")


class AdapterError(ValueError):
    """Adapters that do not fit the model, exceed the budget, or come from another base."""


@dataclass(frozen=True)
class AdapterConfig(Config):
    kind: ClassVar[str] = "adapter"

    rank: int = 4
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("to_q", "to_out", "token_proj")
    spectral: bool = True  # residual MLP on the band feature table
    spectral_hidden: int = 32
    head: str = "auto"  # auto | freeze | fc | full
    num_classes: int | None = None  # a new label set of this size (fc / full head)
    max_fraction: float = 0.05  # trainable parameters / encoder parameters

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        bad = set(self.targets) - set(TARGETS)
        if bad:
            raise AdapterError(f"unknown LoRA target(s) {sorted(bad)}; choose from {TARGETS}")
        if self.head not in HEAD_MODES:
            raise AdapterError(f"head must be one of {HEAD_MODES}, got {self.head!r}")
        if self.rank < 1:
            raise AdapterError(f"rank must be >= 1, got {self.rank}")

    @classmethod
    def from_any(cls, spec: "AdapterConfig | Mapping[str, Any] | None") -> "AdapterConfig":
        """``spec`` itself, or validated from a mapping (:meth:`Config.from_dict`); errors are AdapterErrors."""
        if isinstance(spec, AdapterConfig):
            return spec
        try:
            return cls.from_dict(dict(spec or {}))
        except ConfigError as e:
            raise AdapterError(str(e)) from None


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * B(A(dropout(x)))``; ``weight`` is the merged matrix (for callers that
    read it, like :class:`FactorizedTokenProjection`)."""

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 8.0, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.scale = rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> Tensor:
        return self.base.weight + self.scale * (self.lora_B @ self.lora_A)

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(self.drop(x), self.lora_A), self.lora_B)


class SpectralAdapterEncoder(AtomEncoder):
    """The atom encoder with a residual MLP on its band feature table (zero-initialised output)."""

    def __init__(self, base: AtomEncoder, hidden: int = 32):
        super().__init__(base.cfg, base.band_stats)
        d = base.cfg.band_dim
        first, out = nn.Linear(d, hidden), nn.Linear(hidden, d)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.mlp = nn.Sequential(first, nn.GELU(), out)

    def band_features(self, band_table: Tensor, names: Sequence[str] = ()) -> Tensor:
        f = super().band_features(band_table, names)
        return f + self.mlp(f.to(next(self.mlp.parameters()).dtype))


# --------------------------------------------------------------------------------------------------
# Applying, counting, fingerprinting
# --------------------------------------------------------------------------------------------------


def has_adapters(model: nn.Module) -> bool:
    return getattr(model, "adapter_config", None) is not None


def _is_adapter(name: str) -> bool:
    return ".lora_" in name or name.startswith("encoder.mlp.")


def apply_adapters(
    model: nn.Module, spec: AdapterConfig | Mapping[str, Any] | None = None, head_loaded: str = "full"
) -> AdapterConfig:
    """Freeze ``model`` and add adapters in place; returns the resolved config (``head`` never ``auto``).

    Args:
        model: A (trained) Atomizer.
        spec: An :class:`AdapterConfig` or its fields.
        head_loaded: What of the head came with the base weights ("full", "pool" or "none"), to resolve
            ``head="auto"``: ``freeze`` when "full" and the label set is unchanged, else ``fc``.

    Raises:
        AdapterError: adapters already applied, ``freeze`` with a new label set, or trainable
            parameters above ``max_fraction`` of the encoder.
    """
    model = getattr(model, "module", model)
    if not isinstance(model, Atomizer):
        raise AdapterError(f"adapters apply to an Atomizer, not {type(model).__name__}")
    if has_adapters(model):
        raise AdapterError("this model already has adapters")
    cfg = AdapterConfig.from_any(spec)
    new_classes = cfg.num_classes if cfg.num_classes not in (None, model.head.fc.out_features) else None
    head = cfg.head
    if head == "auto":
        head = "freeze" if head_loaded == "full" and new_classes is None else "fc"
    if head == "freeze" and new_classes is not None:
        raise AdapterError(f"a new label set ({cfg.num_classes} classes) needs head='fc' or 'full'")
    cfg = replace(cfg, head=head)
    model.adapter_base_config = model.cfg.to_dict()
    for p in model.parameters():
        p.requires_grad_(False)
    # LoRA: collect first (tied blocks are one module), then wrap.
    attns = {id(m): m for m in model.blocks.modules() if isinstance(m, Attention)}
    projs = {id(m): m for m in model.blocks.modules() if isinstance(m, FactorizedTokenProjection)}
    wrap = lambda lin: LoRALinear(lin, cfg.rank, cfg.alpha, cfg.dropout)  # noqa: E731
    for m in attns.values():
        for name in ("to_q", "to_kv", "to_out"):
            if name in cfg.targets and isinstance(getattr(m, name), nn.Linear):
                setattr(m, name, wrap(getattr(m, name)))
    if "token_proj" in cfg.targets:
        for proj in projs.values():
            proj.register_module("proj", wrap(proj.proj))
    if cfg.spectral:
        model.encoder = SpectralAdapterEncoder(model.encoder, cfg.spectral_hidden).to(model.latents.device)
    dim = model.cfg.latent_dim
    if head == "fc":
        if new_classes is not None:
            model.head.fc = nn.Linear(dim, new_classes).to(model.latents.device)
        for p in [*model.head.fc.parameters(), *model.head.out_norm.parameters()]:
            p.requires_grad_(True)
    elif head == "full":
        if new_classes is not None:
            model.head = AttentionPool(dim, model.cfg.latent_heads, model.cfg.latent_dim_head, new_classes).to(
                model.latents.device
            )
        for p in model.head.parameters():
            p.requires_grad_(True)
    if new_classes is not None:
        model.cfg = replace(model.cfg, num_classes=new_classes)
    model.adapter_config = cfg
    rep = adapter_report(model)
    if rep["fraction"] > cfg.max_fraction:
        raise AdapterError(
            f"{rep['trainable']:,} trainable parameters are {100 * rep['fraction']:.1f}% of the "
            f"encoder's {rep['encoder']:,} (limit {100 * cfg.max_fraction:g}%): lora {rep['lora']:,}, "
            f"spectral {rep['spectral']:,}, head {rep['head']:,}; lower the rank, drop targets or "
            f"use head='fc'"
        )
    return cfg


def adapter_report(model: nn.Module) -> dict:
    """Parameter counts: trainable (lora + spectral + head), encoder (frozen base minus head), fraction."""
    model = getattr(model, "module", model)
    n = {"lora": 0, "spectral": 0, "head": 0, "encoder": 0, "total": 0}
    trainable = 0
    for name, p in model.named_parameters():
        n["total"] += p.numel()
        if p.requires_grad:
            trainable += p.numel()
        if ".lora_" in name:
            n["lora"] += p.numel()
        elif name.startswith("encoder.mlp."):
            n["spectral"] += p.numel()
        elif name.startswith("head."):
            n["head"] += p.numel() if p.requires_grad else 0
        else:
            n["encoder"] += p.numel()
    return {**n, "trainable": trainable, "fraction": trainable / max(1, n["encoder"])}


def base_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the frozen weights (names and bytes): which base the adapters belong to."""
    model = getattr(model, "module", model)
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if not p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """The trainable (adapter and head) weights only."""
    model = getattr(model, "module", model)
    return {k: p.detach().cpu().clone() for k, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------------


def save_adapters(model: nn.Module, path: str | Path, base_checkpoint: str | Path | None = None) -> Path:
    """Write only the adapter (and trainable head) weights, their config, the base config and the base
    fingerprint to ``path`` (atomically); the base checkpoint is not copied."""
    core = getattr(model, "module", model)
    adapter_config = getattr(core, "adapter_config", None)
    if not isinstance(core, Atomizer) or adapter_config is None:
        raise AdapterError("the model has no adapters to save")
    payload = plain_data(
        {
            "format": FORMAT,
            "adapter_config": adapter_config.to_dict(),
            "base_config": core.adapter_base_config,
            "base_fingerprint": base_fingerprint(core),
            "base_checkpoint": None if base_checkpoint is None else str(base_checkpoint),
            "report": adapter_report(core),
            "state_dict": adapter_state(core),
        },
        where="adapters",
    )
    return atomic_write_bytes(path, lambda p: torch.save(payload, p))


def read_adapters(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"adapter file not found: {path}")
    try:  # weights_only: nothing in the file is run
        payload = load_torch_file(path, map_location="cpu")
    except UnsafeFileError as e:
        raise AdapterError(f"{path}: not a readable adapter file: {e}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise AdapterError(f"{path}: not an {FORMAT} file")
    return payload


def load_adapters(model: Atomizer, path: str | Path, strict: bool = True) -> Atomizer:
    """Add the adapters stored at ``path`` to a base ``model`` (in place) and return it.

    Raises:
        AdapterError: the base configuration differs (fields named), or, with ``strict``, the base
            weights are not the ones the adapters were trained on (fingerprint).
    """
    payload = read_adapters(path)
    model = getattr(model, "module", model)
    drop = lambda d: {k: v for k, v in d.items() if k not in RUNTIME_FIELDS}  # noqa: E731
    base = type(model.cfg).from_dict(payload["base_config"]).to_dict()  # fields added since: their defaults
    diff = config_diff(drop(base), drop(model.cfg.to_dict()))
    if diff:
        raise AdapterError(f"{path}: adapters were trained on another configuration: " + "; ".join(diff))
    apply_adapters(model, payload["adapter_config"])
    fp = base_fingerprint(model)
    if strict and fp != payload["base_fingerprint"]:
        raise AdapterError(
            f"{path}: adapters were trained on other base weights (fingerprint "
            f"{payload['base_fingerprint'][:12]}..., this model {fp[:12]}...; base checkpoint "
            f"{payload.get('base_checkpoint')}); pass strict=False to load anyway"
        )
    state = payload["state_dict"]
    expected = set(adapter_state(model))
    if set(state) != expected:
        raise AdapterError(f"{path}: adapter weights {sorted(set(state) ^ expected)[:5]} do not match the model")
    model.load_state_dict(state, strict=False)
    return model
