"""S2MAE: a 3-D cube ViT over the Sentinel-2 canvas, with MAE pretraining (Li, Hong, Chanussot, CVPR 2024).

S2MAE published no code; this is the method note's description (section 7) on the baselines' canvas
(:mod:`atomizer.atoms.canvas`: the 12 Sentinel-2 L2A bands of :data:`~atomizer.atoms.canvas.CANVAS_BANDS`
on one grid, :attr:`CanvasBatch.present` per channel):

* **Cube tokens.** The canvas is cut into cubes of ``patch_size x patch_size`` pixels by ``group_size``
  consecutive canvas channels (a local spectral group: 8 px x 3 bands gives 4 groups of the 12 bands). One
  linear projection, shared by every group (a 3-D patch embedding), maps a cube's pixels to the model width.
  Tokens are ordered group-major: token ``g * N + n`` is group ``g`` at patch ``n`` (row-major grid).
* **Embeddings.** A fixed 2-D sin-cos code of the patch position plus a spectral code of the group:
  ``spectral_embedding: learned`` (S2MAE's learnable spectral embedding: one trained row per group) or
  ``wavelength`` (a fixed 1-D sin-cos code of the group's centre wavelength in nm, the mean of its bands'
  central wavelengths in the Sentinel-2 sensor table, :mod:`atomizer.data.bands`).
* **Absent bands are dropped, not zero-filled.** A cube whose channels are all absent from the image
  (``present`` False) is removed from the token set (batches of different band sets are padded and the
  padding masked in attention), so the model never reads the canvas's zero fill for a missing band. A cube
  with some of its channels present is kept; its absent channels read the canvas's 0 (and are left out of
  the MAE loss).
* **A band never seen in training.** With ``wavelength``, its group's embedding is the sin-cos code of its
  wavelength, computed, never trained, and the cube projection is shared: the band is embedded like its
  spectral neighbours, from its wavelength. With ``learned``, its group's row received no gradient in
  training (its cubes were always dropped), so it keeps its random initial value (shrunk only by weight
  decay): the model reads it, but nothing was learned for it. With ``group_size: 1`` every band is a group
  of its own (EuroSAT's training modalities never show B8A: that is such a band).
* **Heads.** Classification: LayerNorm'd tokens, mean-pooled over the kept cubes, a Linear to the logits.
  Segmentation (``task: segmentation``): each patch's kept cube tokens are averaged into one token per patch,
  laid out on the patch grid and brought to the canvas resolution by the ViT's progressive-upsampling
  decoder (:class:`atomizer.models.baselines.ProgressiveUpsampling`), read at the queries like every canvas
  model (:func:`atomizer.atoms.dense.sample_canvas`).
* **MAE pretraining** (``task: pretraining``; :meth:`S2MAE.mae_loss`): a random ``mask_ratio`` (90 % in
  the paper) of each image's kept cubes is hidden, the encoder reads the visible ones only, a decoder of
  ``decoder_depth`` self-attention blocks (4 in the paper) over every kept cube (mask tokens at the hidden
  ones) predicts each hidden cube's pixels; loss = MSE over the hidden cubes' present channels. With
  ``norm_target`` the target is each cube's pixels min-max normalised to [0, 1] (S2MAE's target), else the
  canvas values. The pretraining run is :func:`atomizer.engine.pretraining.pretrain` with ``model: s2mae``;
  its checkpoint initialises a classifier or segmenter (``TrainConfig.init``) with the encoder's weights.

Shapes: S images, C canvas channels, H x W canvas pixels, G spectral groups, N patches, T = G * N cube
tokens, P = group_size * patch_size**2 pixels per cube, D model width, K classes, Q output pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar, cast

import torch
from einops import rearrange
from torch import Tensor, nn

from atomizer.atoms.canvas import CANVAS_BANDS, CanvasBatch, EmptyCanvasError
from atomizer.atoms.dense import TASKS, DenseQueries
from atomizer.core.config import Config, config_diff
from atomizer.data.bands import get_sensor
from atomizer.models.baselines import ProgressiveUpsampling, _Baseline, _check_input, sincos_pos_embed_2d
from atomizer.models.layers import SelfBlock, residual_step

#: What an S2MAE is built for: the canvas models' tasks, or MAE pretraining (:meth:`S2MAE.mae_loss`).
S2MAE_TASKS: tuple[str, ...] = (*TASKS, "pretraining")
SPECTRAL_EMBEDDINGS: tuple[str, ...] = ("learned", "wavelength")


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S2MAEConfig(Config):
    """Hyper-parameters of :class:`S2MAE` (see the module docstring)."""

    kind: ClassVar[str] = "s2mae"
    name: ClassVar[str] = "s2mae"  # named in the canvas models' errors

    num_classes: int = 19
    in_channels: int = len(CANVAS_BANDS)
    patch_size: int = 8  # spatial side of a cube (px)
    group_size: int = 3  # canvas channels per cube (a local spectral group); divides in_channels
    spectral_embedding: str = "learned"  # learned | wavelength (sin-cos of the group's centre wavelength)
    dim: int = 128
    depth: int = 4
    heads: int = 4
    dim_head: int = 32
    ff_mult: int = 2
    dropout: float = 0.0
    task: str = "classification"  # classification | segmentation | pretraining (MAE: a decoder, no head)
    dense_width: int = 0  # segmentation only: channels of the upsampling stages; 0: dim // 2
    decoder_depth: int = 4  # pretraining only: self-attention blocks of the MAE decoder
    decoder_dim: int = 0  # pretraining only: the decoder's width; 0: dim
    decoder_heads: int = 4
    decoder_dim_head: int = 32
    norm_target: bool = True  # pretraining only: each cube's pixels min-max normalised to [0, 1]

    def __post_init__(self) -> None:
        if self.task not in S2MAE_TASKS:
            raise ValueError(f"s2mae config: task must be one of {', '.join(S2MAE_TASKS)}, got {self.task!r}")
        if self.spectral_embedding not in SPECTRAL_EMBEDDINGS:
            raise ValueError(
                f"s2mae config: spectral_embedding must be one of {', '.join(SPECTRAL_EMBEDDINGS)}, "
                f"got {self.spectral_embedding!r}"
            )
        if self.in_channels != len(CANVAS_BANDS):
            raise ValueError(
                f"s2mae config: in_channels must be the {len(CANVAS_BANDS)} canvas bands (the spectral "
                f"embedding is per canvas band), got {self.in_channels}"
            )
        if self.group_size < 1 or self.in_channels % self.group_size:
            raise ValueError(
                f"s2mae config: group_size must divide the {self.in_channels} canvas channels, got {self.group_size}"
            )
        for name in ("patch_size", "dim", "depth", "heads", "dim_head", "decoder_heads", "decoder_dim_head"):
            if getattr(self, name) < 1:
                raise ValueError(f"s2mae config: {name} must be >= 1, got {getattr(self, name)}")
        if self.decoder_depth < 1:
            raise ValueError(f"s2mae config: decoder_depth must be >= 1, got {self.decoder_depth}")
        if self.dense_width < 0 or self.decoder_dim < 0:
            raise ValueError("s2mae config: dense_width and decoder_dim must be >= 0 (0: the default width)")
        for name, width in (("dim", self.dim), ("decoder_dim", self.decoder_dim or self.dim)):
            if width % 4:
                raise ValueError(f"s2mae config: {name} must be divisible by 4 (sin-cos embeddings), got {width}")

    @property
    def num_groups(self) -> int:
        return self.in_channels // self.group_size

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> S2MAEConfig:
        """A named preset (``tiny`` for CI, ``small`` for CPU experiments, ``paper``: ViT-Base widths)."""
        if name not in S2MAE_PRESETS:
            raise KeyError(f"unknown s2mae preset {name!r}; presets: {', '.join(S2MAE_PRESETS)}")
        if not overrides:
            return S2MAE_PRESETS[name]
        return cls.from_dict({**S2MAE_PRESETS[name].to_dict(), **overrides})


S2MAE_PRESETS: dict[str, S2MAEConfig] = {
    "tiny": S2MAEConfig(dim=64, depth=2, heads=2, dim_head=32, decoder_depth=1, decoder_dim=32, decoder_heads=2),
    "small": S2MAEConfig(decoder_depth=2, decoder_dim=64),
    # S2MAE's ViT-Base encoder (the paper's), the MAE decoder of depth 4 (its ablation's best)
    "paper": S2MAEConfig(dim=768, depth=12, heads=12, dim_head=64, ff_mult=4, decoder_dim=512, decoder_heads=16),
}

#: Config fields that do not change the encoder's weights: an encoder trained under one value initialises a
#: model with another (:func:`encoder_state`).
ENCODER_FREE_FIELDS = (
    "num_classes",
    "task",
    "dropout",
    "dense_width",
    "decoder_depth",
    "decoder_dim",
    "decoder_heads",
    "decoder_dim_head",
    "norm_target",
)
#: State-dict prefixes that are not the encoder: the heads and the MAE decoder.
NON_ENCODER_PREFIXES = ("fc.", "dense_head.", "mae.")


# --------------------------------------------------------------------------------------------------
# Spectral embedding
# --------------------------------------------------------------------------------------------------


def sincos_1d(values: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 1-D sin-cos code of ``values`` (V,) -> (V, dim): ``[sin(v w_k), cos(v w_k)]_k``,
    ``w_k = temperature^(-k / (dim / 2))`` (the transformer's code, here of a wavelength in nm)."""
    if dim % 2:
        raise ValueError(f"dim must be even for a sin-cos code, got {dim}")
    omega = temperature ** -(torch.arange(dim // 2, dtype=torch.float32, device=values.device) / (dim // 2))
    a = values.float()[:, None] * omega
    return torch.cat([a.sin(), a.cos()], dim=-1)


@cache
def canvas_wavelengths_nm() -> tuple[float, ...]:
    """Central wavelength (nm) of every canvas channel, from the Sentinel-2 sensor table."""
    s2 = get_sensor("sentinel2")
    return tuple(float(s2.band(b).wavelength_nm) for b in CANVAS_BANDS)


def group_wavelengths_nm(group_size: int) -> Tensor:
    """The centre wavelength (nm) of each spectral group of ``group_size`` consecutive canvas channels:
    the mean of its bands' central wavelengths, (G,)."""
    wl = torch.tensor(canvas_wavelengths_nm())
    return wl.reshape(-1, group_size).mean(1)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


@dataclass
class MAEOutput:
    """One MAE step: ``loss``; per cube token (S, T): ``pred`` and ``target`` (S, T, P), ``visible`` and
    ``hidden`` (bool: the encoder read the visible cubes; the loss covers the hidden ones; dropped cubes,
    of absent bands, are neither)."""

    loss: Tensor
    pred: Tensor
    target: Tensor
    visible: Tensor
    hidden: Tensor


class _Embedding(nn.Module):
    """The patch-position plus spectral-group code of every cube token, (T, width)."""

    def __init__(self, cfg: S2MAEConfig, width: int):
        super().__init__()
        self.width, self.learned = width, cfg.spectral_embedding == "learned"
        self.spectral: nn.Parameter | None = None
        if self.learned:
            self.spectral = nn.Parameter(torch.randn(cfg.num_groups, width) * 0.02)
        self.wavelengths: Tensor
        self.register_buffer("wavelengths", group_wavelengths_nm(cfg.group_size), persistent=False)

    def groups(self) -> Tensor:
        """(G, width): the spectral code of every group (a learned row or its wavelength's sin-cos code)."""
        if self.spectral is not None:
            return self.spectral
        return sincos_1d(self.wavelengths, self.width)

    def forward(self, gh: int, gw: int, like: Tensor) -> Tensor:
        pos = sincos_pos_embed_2d(gh, gw, self.width).to(like)  # (N, width)
        spec = self.groups().to(like)  # (G, width)
        return (spec[:, None, :] + pos[None, :, :]).reshape(-1, self.width)  # (G * N, width), group-major


def _attend(blocks: nn.ModuleList, t: Tensor, mask: Tensor | None, training: bool) -> Tensor:
    """``t`` through :class:`SelfBlock` s, padding (``mask`` False) never attended; ``None``: no padding."""
    for blk in cast(Iterable[SelfBlock], blocks):
        t = residual_step(t, blk.norm, blk.attn, blk.ff, blk.drop_path, training, mask=mask)[0]
    return t


def _gather(t: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` (S, n) of ``t`` (S, T, ...) -> (S, n, ...)."""
    return torch.gather(t, 1, idx.reshape(*idx.shape, *([1] * (t.ndim - 2))).expand(-1, -1, *t.shape[2:]))


class S2MAE(_Baseline):
    """The S2MAE cube ViT (module docstring): ``model(batch)`` -> logits (S, K); ``model(batch, queries)``
    -> per-pixel logits (S, Q, K) (task segmentation); :meth:`mae_loss` (task pretraining)."""

    def __init__(self, cfg: S2MAEConfig):
        super().__init__()
        self.cfg = cfg
        cube = cfg.group_size * cfg.patch_size**2
        self.cube_norm = nn.LayerNorm(cube)
        self.cube_proj = nn.Linear(cube, cfg.dim)  # shared by every spectral group: a 3-D patch embedding
        self.embed_norm = nn.LayerNorm(cfg.dim)
        self.embed = _Embedding(cfg, cfg.dim)
        self.layers = nn.ModuleList(
            SelfBlock(cfg.dim, cfg.heads, cfg.dim_head, cfg.ff_mult, cfg.dropout, cfg.dropout) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        if cfg.task == "classification":
            self.fc = nn.Linear(cfg.dim, cfg.num_classes)
        elif cfg.task == "segmentation":
            width = cfg.dense_width or max(1, cfg.dim // 2)
            self.dense_head = ProgressiveUpsampling(cfg.dim, width, cfg.num_classes, cfg.patch_size)
        else:
            self.mae = S2MAEDecoder(cfg)

    # ---- cubes and tokens

    def cubes(self, batch: CanvasBatch) -> tuple[Tensor, Tensor, int, int]:
        """batch -> (cube pixels (S, T, P), kept (S, T): the cube has a present channel, grid rows, columns).

        Raises:
            ValueError: not a canvas of the configured channels, or not divisible by the patch size.
            EmptyCanvasError: an image with no present canvas band (nothing to read).
        """
        x = _check_input(batch, self.cfg.in_channels)
        p, g = self.cfg.patch_size, self.cfg.group_size
        if x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"canvas {tuple(x.shape[2:])} is not divisible by the patch size {p}")
        present = torch.as_tensor(batch.present, dtype=torch.bool, device=x.device)
        if present.shape != x.shape[:2]:
            raise ValueError(f"present has shape {tuple(present.shape)} for a canvas of {tuple(x.shape[:2])}")
        empty = (~present.any(1)).nonzero().flatten().tolist()
        if empty:
            raise EmptyCanvasError(f"canvas(es) {empty} of the batch have no present band: S2MAE has no cube to read")
        gh, gw = x.shape[2] // p, x.shape[3] // p
        t = rearrange(x, "s (gr g) (gh p1) (gw p2) -> s (gr gh gw) (g p1 p2)", g=g, p1=p, p2=p)
        kept = present.reshape(x.shape[0], -1, g).any(-1)  # (S, G)
        return t, kept.repeat_interleave(gh * gw, dim=1), gh, gw

    def tokens(self, cubes: Tensor, gh: int, gw: int) -> Tensor:
        """Cube pixels (S, T, P) -> embedded tokens (S, T, D): shared projection + position + spectral code."""
        t = self.embed_norm(self.cube_proj(self.cube_norm(cubes)))
        return t + self.embed(gh, gw, t)

    def group_embedding(self) -> Tensor:
        """(G, D): the spectral code each group's tokens get (learned rows, or wavelength sin-cos codes)."""
        return self.embed.groups()

    def encode(self, batch: CanvasBatch) -> tuple[Tensor, Tensor | None, Tensor, int, int]:
        """batch -> (normalised tokens of the kept cubes (S, n, D), their mask (S, n) or None when no image
        drops a cube, their token index (S, n) into the T cube tokens, grid rows, grid columns)."""
        cubes, kept, gh, gw = self.cubes(batch)
        idx, mask = _pack(kept)
        t = _gather(self.tokens(cubes, gh, gw), idx)
        return self.norm(_attend(self.layers, t, mask, self.training)), mask, idx, gh, gw

    # ---- heads

    def forward(self, batch: CanvasBatch, queries: DenseQueries | None = None) -> Tensor:
        """Classification: logits (S, K); segmentation: logits (S, Q, K) at ``queries`` (see the baselines)."""
        if self.task == "pretraining":
            raise ValueError("this s2mae is built for MAE pretraining (task pretraining): call model.mae_loss(batch)")
        return super().forward(batch, queries)

    def classify(self, batch: CanvasBatch) -> Tensor:
        """batch -> logits (S, K): the kept cubes' tokens mean-pooled."""
        self._require("classification")
        t, mask, _, _, _ = self.encode(batch)
        if mask is None:
            return self.fc(t.mean(1))
        m = mask[..., None].to(t.dtype)
        return self.fc((t * m).sum(1) / m.sum(1))

    def dense(self, batch: CanvasBatch) -> Tensor:
        """batch -> per-pixel logits (S, K, H, W): each patch's kept cube tokens averaged, then upsampled."""
        self._require("segmentation")
        t, mask, idx, gh, gw = self.encode(batch)
        n = gh * gw
        w = torch.ones(idx.shape, dtype=t.dtype, device=t.device) if mask is None else mask.to(t.dtype)
        patch = (idx % n)[..., None]
        s, d = t.shape[0], t.shape[2]
        summed = t.new_zeros(s, n, d).scatter_add(1, patch.expand(-1, -1, d), t * w[..., None])
        count = t.new_zeros(s, n, 1).scatter_add(1, patch, w[..., None])
        g = rearrange(summed / count.clamp_min(1), "s (gh gw) d -> s d gh gw", gh=gh, gw=gw)
        h, wd = batch.pixels.shape[-2:]
        return self.dense_head(g, (int(h), int(wd)))

    # ---- MAE pretraining

    def mae_loss(
        self, batch: CanvasBatch, mask_ratio: float = 0.9, generator: torch.Generator | None = None
    ) -> MAEOutput:
        """The MAE loss of ``batch``: each image hides ``round(mask_ratio * k)`` of its ``k`` kept cubes (at
        least one hidden and one visible), drawn with ``generator`` (a CPU generator; default torch's), the
        encoder reads the visible cubes, the decoder predicts the hidden cubes' pixels.

        Raises:
            ValueError: the model was not built with ``task: pretraining``, or ``mask_ratio`` not in (0, 1).
        """
        self._require("pretraining")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        cubes, kept, gh, gw = self.cubes(batch)
        if int(kept.sum(1).min()) < 2:
            raise ValueError("an image of the batch has fewer than 2 cubes: nothing to hide and see")
        s, total = kept.shape
        n_kept = kept.sum(1)
        n_hidden = torch.round(mask_ratio * n_kept.double()).long().clamp(min=1)
        n_hidden = torch.minimum(n_hidden, n_kept - 1)
        n_vis = n_kept - n_hidden
        noise = torch.rand(s, total, generator=generator).to(kept.device)
        noise = noise.masked_fill(~kept, 2.0)  # dropped cubes sort last: never visible
        order = noise.argsort(dim=1)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(total, device=kept.device).expand(s, -1))
        visible = rank < n_vis[:, None]
        hidden = kept & ~visible
        idx = order[:, : int(n_vis.max())]
        vis_mask = torch.arange(idx.shape[1], device=idx.device)[None, :] < n_vis[:, None]
        t = _gather(self.tokens(cubes, gh, gw), idx)
        z = self.norm(_attend(self.layers, t, None if bool(vis_mask.all()) else vis_mask, self.training))
        pred = self.mae(z, idx, vis_mask, kept, gh, gw)  # (S, T, P)
        present = torch.as_tensor(batch.present, dtype=torch.bool, device=cubes.device)
        channel_ok = self._cube_channels(present, gh * gw)  # (S, T, P): the cube's pixels of present channels
        target = self.target(cubes, channel_ok)
        w = (channel_ok & hidden[..., None]).to(pred.dtype)
        loss = ((pred.float() - target).square() * w).sum() / w.sum().clamp_min(1)
        return MAEOutput(loss, pred, target, visible, hidden)

    def _cube_channels(self, present: Tensor, n: int) -> Tensor:
        """(S, C) present channels -> (S, T, P): which pixels of each cube belong to a present channel."""
        p2, g = self.cfg.patch_size**2, self.cfg.group_size
        per_group = present.reshape(present.shape[0], -1, g)  # (S, G, g)
        per_cube = per_group.repeat_interleave(n, dim=1)  # (S, T, g)
        return per_cube.repeat_interleave(p2, dim=2)  # (S, T, g * p2): (g p1 p2) order

    def target(self, cubes: Tensor, channel_ok: Tensor) -> Tensor:
        """The reconstruction target (S, T, P): with ``norm_target`` each cube min-max normalised to [0, 1]
        over its present channels' pixels (a constant cube reads 0), else the canvas values."""
        cubes = cubes.float()
        if not self.cfg.norm_target:
            return cubes
        lo = cubes.masked_fill(~channel_ok, float("inf")).amin(-1, keepdim=True)
        hi = cubes.masked_fill(~channel_ok, float("-inf")).amax(-1, keepdim=True)
        span = (hi - lo).nan_to_num(0.0, posinf=0.0, neginf=0.0)
        lo = lo.nan_to_num(0.0, posinf=0.0, neginf=0.0)
        out = (cubes - lo) / span.clamp_min(1e-6)
        return torch.where(channel_ok & (span > 0), out, torch.zeros_like(out)).clamp(0.0, 1.0)


class S2MAEDecoder(nn.Module):
    """MAE decoder: the visible cubes' encodings projected to ``decoder_dim``, a learned mask token at every
    hidden cube, position + spectral codes of its own, ``decoder_depth`` self-attention blocks over every
    kept cube, a linear map to each cube's pixels."""

    def __init__(self, cfg: S2MAEConfig):
        super().__init__()
        width = cfg.decoder_dim or cfg.dim
        self.proj = nn.Linear(cfg.dim, width)
        self.mask_token = nn.Parameter(torch.randn(width) * 0.02)
        self.embed = _Embedding(cfg, width)
        self.blocks = nn.ModuleList(
            SelfBlock(width, cfg.decoder_heads, cfg.decoder_dim_head, cfg.ff_mult) for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, cfg.group_size * cfg.patch_size**2)

    def forward(self, z: Tensor, idx: Tensor, vis_mask: Tensor, kept: Tensor, gh: int, gw: int) -> Tensor:
        """Visible encodings ``z`` (S, n, D) at token indices ``idx`` (S, n) (``vis_mask`` False: padding),
        ``kept`` (S, T) -> predicted pixels of every cube token (S, T, P)."""
        s, total = kept.shape
        v = self.proj(z)
        full = self.mask_token.to(v.dtype).expand(s, total, -1).clone()
        rows = torch.arange(s, device=idx.device)[:, None].expand_as(idx)
        full[rows[vis_mask], idx[vis_mask]] = v[vis_mask]
        full = full + self.embed(gh, gw, full)
        mask = None if bool(kept.all()) else kept
        return self.out(self.norm(_attend(self.blocks, full, mask, self.training)))


def _pack(kept: Tensor) -> tuple[Tensor, Tensor | None]:
    """The kept tokens first: (token index (S, n), mask (S, n) or None when every image keeps all ``n``)."""
    counts = kept.sum(1)
    n = int(counts.max())
    if bool((counts == kept.shape[1]).all()):
        return torch.arange(n, device=kept.device).expand(kept.shape[0], -1), None
    order = torch.argsort((~kept).to(torch.uint8), dim=1, stable=True)[:, :n]
    mask = torch.arange(n, device=kept.device)[None, :] < counts[:, None]
    return order, None if bool(mask.all()) else mask


# --------------------------------------------------------------------------------------------------
# Fine-tuning from a pretrained encoder
# --------------------------------------------------------------------------------------------------


def encoder_state(model: S2MAE, state: Mapping[str, Tensor], stored_config: Mapping[str, Any]) -> dict[str, Tensor]:
    """The encoder weights of a stored S2MAE (``state``, built from ``stored_config``) that initialise
    ``model``: every weight but the heads and the MAE decoder.

    Raises:
        ValueError: the stored encoder was configured differently (every differing field is named), or a
            weight is missing or of another shape.
    """
    ours = {k: v for k, v in model.cfg.to_dict().items() if k not in ENCODER_FREE_FIELDS}
    stored = S2MAEConfig.from_dict(dict(stored_config)).to_dict()
    theirs = {k: v for k, v in stored.items() if k not in ENCODER_FREE_FIELDS}
    diff = config_diff(theirs, ours)
    if diff:
        raise ValueError(
            "its S2MAE encoder configuration does not match the model's (use the same preset and "
            "model_overrides): " + "; ".join(diff)
        )
    keys = [k for k in model.state_dict() if not k.startswith(NON_ENCODER_PREFIXES)]
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"it lacks encoder weight(s) {missing[:5]}")
    own = model.state_dict()
    bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in keys if state[k].shape != own[k].shape]
    if bad:
        raise ValueError("its weight shapes differ from the model's: " + "; ".join(bad[:5]))
    return {k: state[k] for k in keys}
