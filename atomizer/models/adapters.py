"""Parameter-efficient adaptation of a trained Atomizer (the SpectralX idea): freeze it, train small adapters.

One ``adapters:`` config (:class:`AdapterConfig`) covers every kind; ``kinds`` lists those to add
(default ``[lora, spectral]``, the original two; ``spectral: false`` without ``kinds`` means ``[lora]``):

* ``lora`` (:class:`LoRALinear`) wraps an ``nn.Linear`` of the encoder's attention: ``W x + (alpha / r)
  B A x`` with ``A`` (r, in) random and ``B`` (out, r) zero, so an adapted model starts exactly as the
  base. Targets: ``to_q``, ``to_out`` (cross and latent attention), ``token_proj`` (the factorised atom
  projection that makes the cross-attention keys/values; it reads ``.weight``, which LoRA exposes merged),
  and optionally ``to_kv`` (latent self-attention keys/values). Tied blocks share their adapters.
* ``slr`` (:class:`ScaledLowRankLinear`): scaled low-rank adaptation (the "low-rank scaling" kind of
  SpectralX, from Scheibenreif et al., CVPR 2024): ``(W (s_in * x) + (alpha / r) B A (s_in * x)) * s_out``
  with ``s_in``, ``s_out`` per-channel scales initialised to 1 and ``B`` zero, on the same ``targets`` as
  LoRA (with both kinds, the SLR wraps the LoRA-adapted layer).
* ``spectral`` (:class:`AdaptedEncoder`): a residual MLP on the band feature table (wavelength/bandwidth
  RBF code + GSD code), last layer zero-initialised, so a new sensor's bands can be re-mapped into what
  the frozen encoder understands.
* ``ia3`` (:class:`IA3Linear`, :class:`IA3Hidden`): learned per-channel scales, initialised to 1, of the
  keys and values (the cross-attention's factorised atom projection and the latent self-attention's
  ``to_kv``) and of the feed-forward hidden units (the GEGLU output, before the last Linear) of every
  block.
* ``moa`` (:class:`MixtureOfAdapters`): SpectralX's attribute-oriented mixture of adapters. The
  **attribute token** of each atom set comes from the :class:`HyperTokenizer` (kept in the encoder,
  computed when the encoder reads a batch): the set's bands are those of its valid atoms; with ``w``,
  ``bw``, ``g`` the band-table wavelength, bandwidth and GSD and ``log_`` the natural log, the attribute
  vector is ``[mean, min, max over the set's bands of (log(w / 1000 nm), log(bw / 100 nm), log(g / 10 m)),
  log(number of bands), log(window half-extent / 320 m), mean over the set's bands of the encoder's base
  band feature rows]`` (11 + ``band_dim`` numbers; the extent is
  :func:`atomizer.models.atomizer.window_half_extent` of the atoms the model sees), mapped by a two-layer
  MLP (GELU) to ``attr_dim`` numbers. Every latent self-attention block (tied blocks share one) gets
  ``experts`` low-rank adapters ``B_e GELU(A_e LN(z))`` (LN without affine, ``A_e`` (rank, D) random,
  ``B_e`` (D, rank) zero) added to its output, mixed by ``softmax(router(attribute token))`` (a dense soft
  mixture, one router per block), so two sensors get different mixtures (:func:`attribute_mixtures`).
* ``refine`` (:class:`RefinementAdapter`): SpectralX's attribute-refined adapter: the final latents (high
  level), as queries, cross-attend (``refine_heads`` x ``refine_dim_head``) to the latents after the first
  block (low level); the output projection is zero-initialised, so the model starts as the base.

**Other backbones.** The canvas transformers (``vit``, ``scalemae``, ``s2mae``: a frozen ViT for
comparison) take ``lora``, ``slr`` and ``ia3`` on their self-attention and feed-forward layers, the same
way. Their spectral entry point is the patch projection (``patch_proj``; ``cube_proj`` for S2MAE): the
``patch_proj`` target puts the LoRA / SLR adapter there (SLR's patch-embedding adapter), so that a band
that only ever held zeros in training can be read. ``spectral``, ``moa`` and ``refine`` read the atoms'
band table and the Atomizer's latents: on a canvas model they are refused in one line.

``moa`` and ``refine`` are forward hooks on the latent self-attention blocks (the Atomizer's code is not
changed): they need ``self_per_cross >= 1``. ``frozen_kinds`` keeps some kinds in the model without
training them (SpectralX's stage 2 on stage 1's adapters; see :mod:`atomizer.engine.adaptation`).

* **Head** (the pooling head; a segmentation model's dense decoder): ``freeze`` (same label set), ``fc`` (a new or retrained final Linear and its LayerNorm: a new
  label set), ``full`` (the whole pooling head; usually above the 5% budget), ``auto`` (``freeze`` when
  the head came with the base weights, else ``fc``).

Trainable parameters are checked against ``max_fraction`` (default 5%) of the encoder's parameters
(everything but the head and the adapters). :func:`save_adapters` stores only the adapter (and trainable
head) weights, with the adapter config, the base config and fingerprints of the frozen base weights,
atomically; :func:`load_adapters` refuses a different base; :func:`init_adapters` starts a model's
adapters from another run's (stage 1 -> stage 2). Training: ``TrainConfig(init=BASE, adapters={...})``
runs the ordinary loop (:func:`atomizer.engine.training.train`) with only the adapters trainable.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atomizer.atoms.encodings import AtomEncoder
from atomizer.core.config import Config, ConfigError, config_diff
from atomizer.core.storage import UnsafeFileError, atomic_write_bytes, load_torch_file, plain_data
from atomizer.models.atomizer import Atomizer, window_half_extent
from atomizer.models.baselines import ViTBaseline
from atomizer.models.layers import (
    Attention,
    AttentionPool,
    FactorizedTokenProjection,
    FeedForward,
    LatentBlock,
    SelfBlock,
)

FORMAT = "atomizer-adapters/1"
TARGETS = ("to_q", "to_kv", "to_out", "token_proj", "patch_proj")
HEAD_MODES = ("auto", "freeze", "fc", "full")
#: The adapter kinds one ``adapters:`` config can add (module docstring).
KINDS = ("lora", "slr", "spectral", "ia3", "moa", "refine")
#: The kinds a canvas transformer (ViT, ScaleMAE, S2MAE) takes: those that wrap its Linear layers.
CANVAS_KINDS = ("lora", "slr", "ia3")
#: Config fields that do not change the base weights.
RUNTIME_FIELDS = ("prune_p", "attn_dropout", "ff_dropout", "checkpoint_tokens")


class AdapterError(ValueError):
    """Adapters that do not fit the model, exceed the budget, or come from another base."""


@dataclass(frozen=True)
class AdapterConfig(Config):
    kind: ClassVar[str] = "adapter"

    kinds: tuple[str, ...] | None = None  # lora | slr | spectral | ia3 | moa | refine; None: lora (+ spectral)
    frozen_kinds: tuple[str, ...] = ()  # kinds added but not trained (weights from init_adapters)
    rank: int = 4  # LoRA rank, and the rank of each mixture expert
    alpha: float = 8.0  # LoRA and experts scale their output by alpha / rank
    dropout: float = 0.0
    targets: tuple[str, ...] = ("to_q", "to_out", "token_proj")
    spectral: bool = True  # residual MLP on the band feature table (read when kinds is not given)
    spectral_hidden: int = 32
    experts: int = 4  # moa: adapters per latent self-attention block
    attr_dim: int = 16  # moa: width of the attribute token
    refine_heads: int = 1  # refine: heads of its cross-attention
    refine_dim_head: int = 16
    head: str = "auto"  # auto | freeze | fc | full
    num_classes: int | None = None  # a new label set of this size (fc / full head)
    max_fraction: float = 0.05  # trainable parameters / encoder parameters

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        bad = set(self.targets) - set(TARGETS)
        if bad:
            raise AdapterError(f"unknown LoRA target(s) {sorted(bad)}; choose from {TARGETS}")
        kinds = (("lora", "spectral") if self.spectral else ("lora",)) if self.kinds is None else self.kinds
        kinds = tuple(dict.fromkeys(kinds))
        bad = set(kinds) - set(KINDS)
        if bad:
            raise AdapterError(f"unknown adapter kind(s) {sorted(bad)}; choose from {KINDS}")
        frozen = tuple(dict.fromkeys(self.frozen_kinds))
        if set(frozen) - set(kinds):
            raise AdapterError(f"frozen_kinds {sorted(set(frozen) - set(kinds))} are not in kinds {list(kinds)}")
        object.__setattr__(self, "kinds", kinds)
        object.__setattr__(self, "frozen_kinds", frozen)
        object.__setattr__(self, "spectral", "spectral" in kinds)
        if self.head not in HEAD_MODES:
            raise AdapterError(f"head must be one of {HEAD_MODES}, got {self.head!r}")
        for name in ("rank", "experts", "attr_dim", "refine_heads", "refine_dim_head", "spectral_hidden"):
            if getattr(self, name) < 1:
                raise AdapterError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def active(self) -> tuple[str, ...]:
        """The kinds this config adds (``kinds`` resolved)."""
        return tuple(self.kinds or ())

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


class ScaledLowRankLinear(nn.Module):
    """Scaled low-rank adaptation: ``(base(s_in * x) + (alpha / rank) * B(A(s_in * x))) * s_out``, with
    ``slr_in`` and ``slr_out`` initialised to 1 and ``B`` to zero (an adapted model starts as the base);
    ``weight`` and ``bias`` are the merged ones (for callers that read them)."""

    def __init__(self, base: nn.Linear | LoRALinear, rank: int = 4, alpha: float = 8.0, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.scale = rank, alpha / rank
        dev = base.weight.device
        self.slr_in = nn.Parameter(torch.ones(base.in_features, device=dev))
        self.slr_out = nn.Parameter(torch.ones(base.out_features, device=dev))
        self.slr_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev))
        self.slr_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev))
        nn.init.kaiming_uniform_(self.slr_A, a=math.sqrt(5))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> Tensor:
        merged = self.base.weight + self.scale * (self.slr_B @ self.slr_A)
        return self.slr_out[:, None] * merged * self.slr_in[None, :]

    @property
    def bias(self) -> Tensor | None:
        return None if self.base.bias is None else self.base.bias * self.slr_out

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.slr_in.to(x.dtype)
        low = F.linear(F.linear(self.drop(x), self.slr_A.to(x.dtype)), self.slr_B.to(x.dtype))
        return (self.base(x) + self.scale * low) * self.slr_out.to(x.dtype)


class IA3Linear(nn.Module):
    """``base(x) * scale`` per output channel (``ia3_scale``, initialised to 1); ``weight`` and ``bias``
    are the scaled ones (for callers that read them, like :class:`FactorizedTokenProjection`)."""

    def __init__(self, base: nn.Linear | LoRALinear | ScaledLowRankLinear):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.ia3_scale = nn.Parameter(torch.ones(base.out_features, device=base.weight.device))

    @property
    def weight(self) -> Tensor:
        return self.base.weight * self.ia3_scale[:, None]

    @property
    def bias(self) -> Tensor | None:
        return None if self.base.bias is None else self.base.bias * self.ia3_scale

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) * self.ia3_scale


class IA3Hidden(nn.Module):
    """``base(x * scale)``: a per-channel scale (``ia3_scale``, initialised to 1) of a Linear's input, the
    feed-forward's hidden units."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.ia3_scale = nn.Parameter(torch.ones(base.in_features, device=base.weight.device))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x * self.ia3_scale.to(x.dtype))


class AttributeContext:
    """What the hooks of one adapted model share during a forward (not a module, not saved): the batch's
    attribute tokens, the latents after the first block, and how often the last block has run."""

    def __init__(self) -> None:
        self.token: Tensor | None = None
        self.low: Tensor | None = None
        self.calls = 0


#: log references of the attribute vector: wavelength 1000 nm, bandwidth 100 nm, GSD 10 m; extent 320 m.
_REF = (1000.0, 100.0, 10.0)
_REF_EXTENT_M = 320.0


def set_attributes(batch: Any, band_features: Tensor) -> Tensor:
    """The attribute vectors ``(S, 11 + band_dim)`` of the atom sets of a (decoded) ``batch`` (see the
    module docstring): band statistics of each set's bands, its spatial extent, its mean band features."""
    table = batch.band_table
    s, b = batch.num_sets, table.shape[0]
    idx = torch.where(batch.mask, batch.band.long(), torch.full_like(batch.band.long(), b))
    present = torch.zeros(s, b + 1, device=table.device).scatter_(1, idx, 1.0)[:, :b]  # (S, B) 0/1
    n = present.sum(1, keepdim=True).clamp_min(1.0)
    ref = torch.tensor(_REF, device=table.device)
    logs = torch.log(table[:, :3].float().clamp_min(1e-3) / ref).nan_to_num(0.0)  # (B, 3)
    absent = (1.0 - present)[..., None] * 1e4
    mean = present @ logs / n
    lo = (logs[None] + absent).amin(1)
    hi = (logs[None] - absent).amax(1)
    extent = torch.log(window_half_extent(batch) / _REF_EXTENT_M)[:, None]
    pooled = present @ band_features.float() / n
    return torch.cat([mean, lo, hi, torch.log(n), extent, pooled], dim=1)


class HyperTokenizer(nn.Module):
    """SpectralX's Hyper Tokenizer: one attribute token per atom set, from its spectral attributes
    (wavelength, bandwidth, GSD of its bands) and spatial ones (extent, GSD): :func:`set_attributes`, then
    ``Linear -> GELU -> Linear``. :meth:`observe` stores the token in the shared :class:`AttributeContext`."""

    def __init__(self, band_dim: int, dim: int, context: AttributeContext):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(11 + band_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.context = context

    def forward(self, attributes: Tensor) -> Tensor:
        return self.mlp(attributes.to(next(self.mlp.parameters()).dtype))

    def observe(self, batch: Any, band_features: Tensor) -> Tensor:
        self.context.token = token = self(set_attributes(batch, band_features))
        return token


class AdaptedEncoder(AtomEncoder):
    """The atom encoder with the adapters that read the band table: the spectral adapter (``mlp``, a
    residual MLP on the band feature table, zero-initialised output) and the :class:`HyperTokenizer`
    (``tokenizer``: the attribute tokens of every batch the encoder reads)."""

    def __init__(
        self, base: AtomEncoder, hidden: int = 32, spectral: bool = True, tokenizer: HyperTokenizer | None = None
    ):
        super().__init__(base.cfg, base.band_stats)
        self.mlp: nn.Sequential | None = None
        if spectral:
            d = base.cfg.band_dim
            first, out = nn.Linear(d, hidden), nn.Linear(hidden, d)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.mlp = nn.Sequential(first, nn.GELU(), out)
        self.tokenizer = tokenizer

    def band_features(self, band_table: Tensor, names: Sequence[str] = ()) -> Tensor:
        f = super().band_features(band_table, names)
        if self.mlp is None:
            return f
        return f + self.mlp(f.to(next(self.mlp.parameters()).dtype))

    def value_features(
        self, batch, value: Tensor | None = None, band: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        # the encoder reads a batch whole, or (streaming) in slices: the attribute tokens are made once,
        # at the whole batch or its first slice (which starts where the batch's values start)
        if self.tokenizer is not None and (value is None or value.data_ptr() == batch.value.data_ptr()):
            base = AtomEncoder.band_features(self, batch.band_table, getattr(batch, "band_names", ()))
            self.tokenizer.observe(batch, base)
        return super().value_features(batch, value, band, mask)


#: The original name of the spectral adapter's encoder.
SpectralAdapterEncoder = AdaptedEncoder


class MixtureOfAdapters(nn.Module):
    """``z + (alpha / rank) * sum_e w_e B_e GELU(A_e LN(z))`` with ``w = softmax(router(attribute token))``;
    ``B`` starts at zero (the block's output unchanged). ``last_mixture`` holds the latest ``w`` (S, E)."""

    def __init__(self, dim: int, rank: int, experts: int, attr_dim: int, scale: float, context: AttributeContext):
        super().__init__()
        self.router = nn.Linear(attr_dim, experts)
        self.moa_A = nn.Parameter(torch.randn(experts, rank, dim) / math.sqrt(dim))
        self.moa_B = nn.Parameter(torch.zeros(experts, dim, rank))
        self.scale = scale
        self.context = context
        self.last_mixture: Tensor | None = None

    def forward(self, z: Tensor) -> Tensor:
        token = self.context.token
        if token is None or token.shape[0] != z.shape[0]:
            raise AdapterError("mixture of adapters: no attribute token for this batch (run the model's encode)")
        w = self.router(token.to(self.router.weight.dtype)).softmax(-1)  # (S, E)
        self.last_mixture = w.detach()
        h = F.layer_norm(z, z.shape[-1:])
        u = F.gelu(torch.einsum("sld,erd->sler", h, self.moa_A.to(h.dtype))) * w[:, None, :, None].to(h.dtype)
        return z + self.scale * torch.einsum("sler,edr->sld", u, self.moa_B.to(h.dtype))


class RefinementAdapter(nn.Module):
    """``z + Attention(LN(z), context=LN(low))``: the final latents query the first block's latents; the
    attention's output projection starts at zero (the model starts as the base)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head)
        nn.init.zeros_(self.attn.to_out.weight)
        nn.init.zeros_(self.attn.to_out.bias)

    def forward(self, z: Tensor, low: Tensor) -> Tensor:
        return z + self.attn(self.norm_q(z), context=self.norm_kv(low))[0]


def _moa_hook(module: nn.Module, args: Any, output: Tensor) -> Tensor:
    moa = module.get_submodule("moa")
    return moa(output)


def _capture_low(ctx: AttributeContext, module: nn.Module, args: Any, output: Tensor) -> None:
    ctx.low, ctx.calls = output, 0


def _refine_hook(
    refine: RefinementAdapter, ctx: AttributeContext, n_last: int, module: nn.Module, args: Any, output: Tensor
) -> Tensor | None:
    ctx.calls += 1
    if ctx.calls != n_last or ctx.low is None:
        return None
    low, ctx.low = ctx.low, None
    return refine(output, low)


# --------------------------------------------------------------------------------------------------
# Applying, counting, fingerprinting
# --------------------------------------------------------------------------------------------------


def has_adapters(model: nn.Module) -> bool:
    return getattr(model, "adapter_config", None) is not None


def adapter_kind(name: str) -> str | None:
    """The adapter kind a parameter ``name`` belongs to (``moa`` includes the hyper tokenizer), or None."""
    if ".lora_" in name:
        return "lora"
    if ".slr_" in name:
        return "slr"
    if ".ia3_" in name:
        return "ia3"
    if name.startswith("encoder.mlp."):
        return "spectral"
    if ".moa." in name or name.startswith("encoder.tokenizer."):
        return "moa"
    if name.startswith("refine."):
        return "refine"
    return None


def _is_adapter(name: str) -> bool:
    return adapter_kind(name) is not None


def _last_self_block(block: LatentBlock) -> SelfBlock:
    return block["self"][-1]  # type: ignore[index]


def _canvas_transformer(model: nn.Module) -> bool:
    """Whether ``model`` is a canvas transformer adapters fit (ViT, ScaleMAE, S2MAE: ``layers`` of blocks)."""
    from atomizer.models.s2mae import S2MAE

    return isinstance(model, (ViTBaseline, S2MAE))


def _body(model: nn.Module) -> nn.Module:
    """The module holding a model's transformer blocks (the Atomizer's ``blocks``, a ViT's ``layers``)."""
    return model.blocks if isinstance(model, Atomizer) else cast(nn.Module, model.layers)


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Name prefixes of a model's task head (the Atomizer's pooling head; a canvas model's ``fc`` or dense
    decoder), which the encoder fingerprint and the encoder's parameter count leave out."""
    model = getattr(model, "module", model)
    return ("head.", "dense.") if isinstance(model, Atomizer) else ("fc.", "decoder.", "dense_head.")


def _wrappers(cfg: AdapterConfig, kinds: Sequence[str]) -> list[Any]:
    """The Linear wrappers ``kinds`` asks for, innermost first: LoRA, then SLR around it."""
    out: list[Any] = []
    if "lora" in kinds:
        out.append(lambda lin: LoRALinear(lin, cfg.rank, cfg.alpha, cfg.dropout))
    if "slr" in kinds:
        out.append(lambda lin: ScaledLowRankLinear(lin, cfg.rank, cfg.alpha, cfg.dropout))
    return out


def apply_adapters(
    model: nn.Module, spec: AdapterConfig | Mapping[str, Any] | None = None, head_loaded: str = "full"
) -> AdapterConfig:
    """Freeze ``model`` and add adapters in place; returns the resolved config (``head`` never ``auto``).

    Args:
        model: A (trained) Atomizer, or a canvas transformer (ViT, ScaleMAE, S2MAE: ``lora``, ``slr``,
            ``ia3`` only).
        spec: An :class:`AdapterConfig` or its fields.
        head_loaded: What of the head came with the base weights ("full", "pool" or "none"), to resolve
            ``head="auto"``: ``freeze`` when "full" and the label set is unchanged, else ``fc``.

    Raises:
        AdapterError: adapters already applied, a model or kind adapters do not fit, ``freeze`` with a
            new label set, ``moa``/``refine`` on a model without latent self-attention, or trainable
            parameters above ``max_fraction`` of the encoder.
    """
    return _apply(getattr(model, "module", model), spec, head_loaded)


def _apply(model: Any, spec: AdapterConfig | Mapping[str, Any] | None, head_loaded: str) -> AdapterConfig:
    """:func:`apply_adapters` on the model itself (not a DDP wrapper)."""
    canvas = _canvas_transformer(model)
    if not (isinstance(model, Atomizer) or canvas):
        raise AdapterError(f"adapters apply to an Atomizer or a canvas transformer (vit, scalemae, s2mae), "
                           f"not {type(model).__name__}")  # fmt: skip
    if has_adapters(model):
        raise AdapterError("this model already has adapters")
    cfg = AdapterConfig.from_any(spec)
    kinds = cfg.active
    if canvas:
        other = [k for k in kinds if k not in CANVAS_KINDS]
        if other:
            raise AdapterError(
                f"adapter kind(s) {other} read the atoms' band table or the Atomizer's latents; a "
                f"{type(model).__name__} takes {', '.join(CANVAS_KINDS)} (target patch_proj for its bands)"
            )
        if getattr(model.cfg, "task", "classification") != "classification":
            raise AdapterError(f"adapters on a {type(model).__name__} need a classification model")
    elif "patch_proj" in cfg.targets:
        raise AdapterError("target patch_proj is a canvas model's; the Atomizer's band entry is kinds: spectral")
    hooked = [k for k in ("moa", "refine") if k in kinds]
    if hooked and isinstance(model, Atomizer) and model.cfg.self_per_cross < 1:
        raise AdapterError(f"adapter kind(s) {hooked} hook the latent self-attention blocks; this model has none")
    if isinstance(model, Atomizer):  # the task head: the pooling head, or the dense decoder of a segmentation model
        fc = cast(nn.Linear, (model.dense if model.dense is not None else model.head).fc)
    else:
        fc = cast(nn.Linear, model.fc)
    new_classes = cfg.num_classes if cfg.num_classes not in (None, fc.out_features) else None
    head = cfg.head
    if head == "auto":
        head = "freeze" if head_loaded == "full" and new_classes is None else "fc"
    if head == "freeze" and new_classes is not None:
        raise AdapterError(f"a new label set ({cfg.num_classes} classes) needs head='fc' or 'full'")
    cfg = replace(cfg, head=head)
    model.adapter_base_config = model.cfg.to_dict()
    for p in model.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device
    body = _body(model)
    # LoRA (or SLR), then IA3 over it: collect first (tied blocks are one module), then wrap.
    attns = {id(m): m for m in body.modules() if isinstance(m, Attention)}
    projs = {id(m): m for m in body.modules() if isinstance(m, FactorizedTokenProjection)}
    ffs = {id(m): m for m in body.modules() if isinstance(m, FeedForward)}
    for wrap in _wrappers(cfg, kinds):
        for m in attns.values():
            for name in ("to_q", "to_kv", "to_out"):
                if name in cfg.targets and isinstance(getattr(m, name), (nn.Linear, LoRALinear)):
                    setattr(m, name, wrap(getattr(m, name)))
        if "token_proj" in cfg.targets:
            for proj in projs.values():
                proj.register_module("proj", wrap(proj.proj))
        if canvas and "patch_proj" in cfg.targets:  # the canvas's band entry (S2MAE: its cube projection)
            name = "patch_proj" if hasattr(model, "patch_proj") else "cube_proj"
            setattr(model, name, wrap(getattr(model, name)))
    if "ia3" in kinds:
        for m in attns.values():
            if m.to_kv is not None:
                m.to_kv = IA3Linear(cast(nn.Linear | LoRALinear | ScaledLowRankLinear, m.to_kv))
        for proj in projs.values():
            proj.register_module("proj", IA3Linear(proj.proj))
        for ff in ffs.values():
            ff.net[4] = IA3Hidden(cast(nn.Linear, ff.net[4]))
    if isinstance(model, Atomizer):
        _atomizer_hooks(model, cfg, kinds, device)
    for name, p in model.named_parameters():
        kind = adapter_kind(name)
        p.requires_grad_(kind is not None and kind not in cfg.frozen_kinds)
    if isinstance(model, Atomizer):
        _atomizer_head(model, head, new_classes, device)
    else:
        dim = fc.in_features
        if new_classes is not None:
            model.fc = nn.Linear(dim, new_classes).to(device)
        for p in [*model.fc.parameters(), *(model.norm.parameters() if head == "full" else [])]:
            p.requires_grad_(head in ("fc", "full"))
    if new_classes is not None:
        model.cfg = replace(model.cfg, num_classes=new_classes)
    model.adapter_config = cfg
    rep = adapter_report(model)
    if rep["fraction"] > cfg.max_fraction:
        parts = ", ".join(f"{k} {rep[k]:,}" for k in (*KINDS, "head") if rep[k])
        raise AdapterError(
            f"{rep['trainable']:,} trainable parameters are {100 * rep['fraction']:.1f}% of the "
            f"encoder's {rep['encoder']:,} (limit {100 * cfg.max_fraction:g}%): {parts}; lower the rank, "
            f"drop targets or kinds, or use head='fc'"
        )
    return cfg


def _atomizer_hooks(model: Atomizer, cfg: AdapterConfig, kinds: Sequence[str], device: torch.device) -> None:
    """The Atomizer's own adapters: the adapted encoder (spectral, hyper tokenizer), mixtures, refinement."""
    ctx = AttributeContext()
    tokenizer = None
    if "moa" in kinds:
        tokenizer = HyperTokenizer(model.cfg.encoding.band_dim, cfg.attr_dim, ctx).to(device)
    if "spectral" in kinds or tokenizer is not None:
        model.encoder = AdaptedEncoder(model.encoder, cfg.spectral_hidden, "spectral" in kinds, tokenizer).to(device)
    blocks = list(model.blocks)
    if "moa" in kinds:  # every distinct latent self-attention block: one mixture (tied blocks share it)
        selfs = {id(m): m for m in model.blocks.modules() if isinstance(m, SelfBlock)}
        dim = model.cfg.latent_dim
        for blk in selfs.values():
            blk.add_module(
                "moa", MixtureOfAdapters(dim, cfg.rank, cfg.experts, cfg.attr_dim, cfg.alpha / cfg.rank, ctx).to(device)
            )
            blk.register_forward_hook(_moa_hook)
    if "refine" in kinds:  # after any mixture of the same block (hooks run in the order registered)
        refine = RefinementAdapter(model.cfg.latent_dim, cfg.refine_heads, cfg.refine_dim_head).to(device)
        model.add_module("refine", refine)
        _last_self_block(blocks[0]).register_forward_hook(partial(_capture_low, ctx))
        n_last = sum(b is blocks[-1] for b in blocks)
        _last_self_block(blocks[-1]).register_forward_hook(partial(_refine_hook, refine, ctx, n_last))


def _atomizer_head(model: Atomizer, head: str, new_classes: int | None, device: torch.device) -> None:
    """The Atomizer's task head as ``head`` says: frozen, its final Linear (and norm) trained, or all of it.
    The task head is the pooling head, or a segmentation model's dense decoder (its per-pixel classifier
    ``fc`` and ``out_norm``; ``full``: the whole decoder)."""
    dim = model.cfg.latent_dim
    task_head: Any = model.dense if model.dense is not None else model.head
    if head == "fc" or (head == "full" and model.dense is not None):
        if new_classes is not None:
            task_head.fc = nn.Linear(dim, new_classes).to(device)
        trained = (
            task_head.parameters() if head == "full" else [*task_head.fc.parameters(), *task_head.out_norm.parameters()]
        )
        for p in trained:
            p.requires_grad_(True)
    elif head == "full":
        if new_classes is not None:
            model.head = AttentionPool(dim, model.cfg.latent_heads, model.cfg.latent_dim_head, new_classes).to(device)
        for p in model.head.parameters():
            p.requires_grad_(True)


def attribute_mixtures(model: nn.Module, batch: Any) -> list[Tensor]:
    """The mixture weights ``(S, experts)`` each latent self-attention block's :class:`MixtureOfAdapters`
    gives the atom sets of ``batch`` (one encode, no gradients), in the order of the blocks."""
    model = getattr(model, "module", model)
    moas = [m for m in model.modules() if isinstance(m, MixtureOfAdapters)]
    if not moas:
        raise AdapterError("the model has no mixture of adapters (kinds: moa)")
    with torch.no_grad():
        cast(Atomizer, model).encode(batch)
    return [m.last_mixture for m in moas if m.last_mixture is not None]


def adapter_report(model: nn.Module) -> dict:
    """Parameter counts per adapter kind (all of them, trained or frozen), of the trainable head, of the
    encoder (the base minus the head) and in total; ``trainable`` and ``fraction`` (trainable / encoder)."""
    model = getattr(model, "module", model)
    heads = head_prefixes(model)
    n = {**{k: 0 for k in KINDS}, "head": 0, "encoder": 0, "total": 0}
    trainable = 0
    for name, p in model.named_parameters():
        n["total"] += p.numel()
        if p.requires_grad:
            trainable += p.numel()
        kind = adapter_kind(name)
        if kind is not None:
            n[kind] += p.numel()
        elif name.startswith(heads):
            n["head"] += p.numel() if p.requires_grad else 0
        else:
            n["encoder"] += p.numel()
    return {**n, "trainable": trainable, "fraction": trainable / max(1, n["encoder"])}


def base_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the frozen base weights (names and bytes; adapters excluded): which base the adapters
    belong to."""
    model = getattr(model, "module", model)
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if not p.requires_grad and not _is_adapter(name):
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def encoder_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the encoder's base weights (not the head, not the adapters), named as in the unadapted
    model (wrappers' ``.base`` left out): the same whatever adapters or head a model carries."""
    model = getattr(model, "module", model)
    h = hashlib.sha256()
    named = {re.sub(r"(\.base)+\.", ".", k): p for k, p in model.named_parameters()}
    heads = head_prefixes(model)
    for name, p in sorted(named.items()):
        if not name.startswith(heads) and not _is_adapter(name):
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """The adapter weights (trained or frozen) and the trainable head weights."""
    model = getattr(model, "module", model)
    return {k: p.detach().cpu().clone() for k, p in model.named_parameters() if p.requires_grad or _is_adapter(k)}


# --------------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------------


def save_adapters(model: nn.Module, path: str | Path, base_checkpoint: str | Path | None = None) -> Path:
    """Write only the adapter (and trainable head) weights, their config, the base config and the base
    fingerprints to ``path`` (atomically); the base checkpoint is not copied."""
    core = getattr(model, "module", model)
    adapter_config = getattr(core, "adapter_config", None)
    if adapter_config is None:
        raise AdapterError("the model has no adapters to save")
    payload = plain_data(
        {
            "format": FORMAT,
            "adapter_config": adapter_config.to_dict(),
            "base_config": core.adapter_base_config,
            "base_fingerprint": base_fingerprint(core),
            "encoder_fingerprint": encoder_fingerprint(core),
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


def load_adapters(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Add the adapters stored at ``path`` to a base ``model`` (in place) and return it.

    Raises:
        AdapterError: the base configuration differs (fields named), or, with ``strict``, the base
            weights are not the ones the adapters were trained on (fingerprint).
    """
    payload = read_adapters(path)
    return _load(getattr(model, "module", model), payload, path, strict)


def _load(model: Any, payload: dict, path: str | Path, strict: bool) -> nn.Module:
    """:func:`load_adapters` on the model itself, with the file's payload."""
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


def init_adapters(model: nn.Module, path: str | Path) -> list[str]:
    """Start the adapters of ``model`` (already applied) from those stored at ``path`` (an ``adapters.pt``):
    every stored adapter weight is copied into the model's weight of the same name; the stored head is
    not (SpectralX: stage 2 starts from stage 1's adapters, with its own head and new kinds fresh).
    Returns the names copied.

    Raises:
        AdapterError: the adapters were trained on other encoder weights (fingerprint), or a stored
            adapter weight has no place of its shape in the model (a kind or size the model lacks).
    """
    payload = read_adapters(path)
    core = getattr(model, "module", model)
    if not has_adapters(core):
        raise AdapterError(f"{path}: the model has no adapters to initialise (apply them first)")
    stored_fp, fp = payload.get("encoder_fingerprint"), encoder_fingerprint(core)
    if stored_fp != fp:
        raise AdapterError(
            f"{path}: its adapters were trained on other encoder weights (fingerprint "
            f"{str(stored_fp)[:12]}..., this model {fp[:12]}...; base checkpoint {payload.get('base_checkpoint')})"
        )
    state = {k: v for k, v in payload["state_dict"].items() if _is_adapter(k)}
    own = dict(core.named_parameters())
    missing = sorted(k for k in state if k not in own)
    if missing:
        kinds = sorted({str(adapter_kind(k)) for k in missing})
        raise AdapterError(f"{path}: adapter weights {missing[:3]} have no place in the model (add kinds {kinds})")
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if bad:
        raise AdapterError(f"{path}: adapter shapes differ from the model's (rank, experts?): " + "; ".join(bad[:3]))
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    return sorted(state)
