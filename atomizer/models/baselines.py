"""Baselines that read a fixed canvas: ResNet, ViT, ScaleMAE-style ViT and a pixel-token Perceiver.

Their input is the paper's canvas (:mod:`atomizer.atoms.canvas`: the 12 Sentinel-2 L2A bands resampled
onto one fixed grid, missing bands and nodata zero-filled, no mask): the baselines' handicap by design
(method note, section 5), while the Atomizer reads every band on its own grid with its own GSD.

Every model has ``forward(batch: CanvasBatch, queries: DenseQueries | None = None)`` (reading
``batch.pixels`` (S, C, H, W) and, ScaleMAE only, ``batch.gsd`` (S,)), a class attribute
``input_type = CanvasBatch``, a ``cfg`` holding its frozen config, and named presets ("tiny" for CI,
"small" for CPU experiments). They are built by name through the one model factory,
:func:`atomizer.models.registry.build_model`.

Every config has ``task``:

* ``"classification"`` (the default): ``model(batch)`` returns logits ``(S, K)``; the model is exactly
  what it was before dense heads existed (same modules, parameters and outputs).
* ``"segmentation"``: ``model(batch, queries=DenseQueries)`` returns per-pixel logits ``(S, Q, K)`` at the
  query centres (metres from the window centre, :mod:`atomizer.atoms.dense`). The model computes its own
  dense output ``model.dense(batch)`` ``(S, K, H, W)`` at the canvas resolution, under the same canvas
  protocol as the classifiers, and reads it at the queries with
  :func:`~atomizer.atoms.dense.sample_canvas` over the canvas extent ``batch.extent_m``
  (``size_px * gsd_m`` of the canvas). The dense heads: a U-Net decoder on the ResNet's stages, a
  progressive-upsampling (SETR-PUP) decoder on the ViT's and ScaleMAE's patch tokens, and per-pixel
  queries reading the Perceiver's latents (Perceiver IO). A segmentation model has no classification head.

Shapes: S images in a batch, C canvas channels, H x W canvas pixels, N tokens (patches or pixels),
D model width, L latents, K classes, Q output pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from atomizer.atoms.canvas import CANVAS_BANDS, CanvasBatch
from atomizer.atoms.dense import TASKS, DenseQueries, sample_canvas
from atomizer.atoms.encodings import fourier_dim, fourier_features
from atomizer.core.config import Config
from atomizer.models.layers import (
    Attention,
    AttentionPool,
    CrossBlock,
    FeedForward,
    LatentBlock,
    SelfBlock,
    TiedStack,
    residual_step,
)

# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------


class _BaselineConfig(Config):
    """``preset`` shared by the baseline configs (``to_dict``/``from_dict`` come from :class:`Config`)."""

    name: ClassVar[str] = ""  # key in BASELINES and PRESETS
    num_classes: int  # every baseline config's field (declared here for the type checker)
    task: str  # every baseline config's field: one of TASKS

    def _check_task(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"{self.name} config: task must be one of {', '.join(TASKS)}, got {self.task!r}")

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.kind = cls.name  # named in config errors

    @classmethod
    def preset(cls, name: str, **overrides: Any):
        presets = PRESETS[cls.name]
        if name not in presets:
            raise KeyError(f"unknown {cls.name} preset {name!r}; presets: {', '.join(presets)}")
        if not overrides:
            return presets[name]
        return cls.from_dict({**presets[name].to_dict(), **overrides})


@dataclass(frozen=True)
class ResNetConfig(_BaselineConfig):
    """Hyper-parameters of :class:`ResNetBaseline`."""

    name: ClassVar[str] = "resnet"
    num_classes: int = 19
    in_channels: int = len(CANVAS_BANDS)
    stem_width: int = 32
    stem_stride: int = 2
    widths: tuple[int, ...] = (32, 64, 128)  # one stage per width; stages after the first halve H, W
    blocks: tuple[int, ...] = (2, 2, 2)  # basic blocks per stage
    task: str = "classification"  # or "segmentation": a U-Net decoder on the stages, no fc

    def __post_init__(self) -> None:
        self._check_task()
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError(f"widths {self.widths} and blocks {self.blocks} must be non-empty, same length")


@dataclass(frozen=True)
class ViTConfig(_BaselineConfig):
    """Hyper-parameters of :class:`ViTBaseline` (SimpleViT: fixed 2-D sin-cos positions, mean pool)."""

    name: ClassVar[str] = "vit"
    num_classes: int = 19
    in_channels: int = len(CANVAS_BANDS)
    patch_size: int = 8
    dim: int = 128
    depth: int = 4
    heads: int = 4
    dim_head: int = 32
    ff_mult: int = 2
    dropout: float = 0.0
    task: str = "classification"  # or "segmentation": a progressive-upsampling decoder, no fc
    decoder_width: int = 0  # segmentation only: channels of every upsampling stage; 0: dim // 2

    def __post_init__(self) -> None:
        self._check_task()
        if self.decoder_width < 0:
            raise ValueError(f"{self.name} config: decoder_width must be >= 0 (0: dim // 2), got {self.decoder_width}")
        if self.dim % 4:
            raise ValueError(f"dim must be divisible by 4 for the 2-D sin-cos embedding, got {self.dim}")


@dataclass(frozen=True)
class ScaleMAEConfig(ViTConfig):
    """:class:`ViTConfig` plus the reference GSD of the GSD-scaled positions."""

    name: ClassVar[str] = "scalemae"
    reference_gsd_m: float = 10.0


@dataclass(frozen=True)
class PerceiverConfig(_BaselineConfig):
    """Hyper-parameters of :class:`PixelPerceiverBaseline`."""

    name: ClassVar[str] = "perceiver"
    num_classes: int = 19
    in_channels: int = len(CANVAS_BANDS)
    num_latents: int = 32
    latent_dim: int = 128
    depth: int = 2  # cross-attention blocks
    self_per_cross: int = 2
    cross_heads: int = 1
    cross_dim_head: int = 64
    latent_heads: int = 4
    latent_dim_head: int = 32
    ff_mult: int = 2
    pos_bands: int = 16  # Fourier bands per axis of the pixel position
    pos_max_freq: float = 32.0
    tie_weights: bool = True  # share all blocks after the first
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    task: str = "classification"  # or "segmentation": per-pixel queries read the latents, no pooling head

    def __post_init__(self) -> None:
        self._check_task()


PRESETS: dict[str, dict[str, Any]] = {
    "resnet": {
        # CI: 4 x 120 x 120 forward in a few tens of ms on CPU.
        "tiny": ResNetConfig(stem_width=16, widths=(16, 32, 64), blocks=(1, 1, 1)),
        "small": ResNetConfig(),
        # GPU scale (the paper did not publish baseline sizes): ResNet-18 widths and depths.
        "paper": ResNetConfig(stem_width=64, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)),
    },
    "vit": {
        "tiny": ViTConfig(dim=64, depth=2, heads=2, dim_head=32, ff_mult=2),
        "small": ViTConfig(),
        "paper": ViTConfig(patch_size=10, dim=384, depth=8, heads=6, dim_head=64, ff_mult=4),
    },
    "scalemae": {
        "tiny": ScaleMAEConfig(dim=64, depth=2, heads=2, dim_head=32, ff_mult=2),
        "small": ScaleMAEConfig(),
        "paper": ScaleMAEConfig(patch_size=10, dim=384, depth=8, heads=6, dim_head=64, ff_mult=4),
    },
    "perceiver": {
        "tiny": PerceiverConfig(
            num_latents=16,
            latent_dim=64,
            depth=1,
            self_per_cross=2,
            cross_dim_head=32,
            latent_heads=2,
            latent_dim_head=32,
            pos_bands=8,
            pos_max_freq=16.0,
        ),
        "small": PerceiverConfig(),
        # the Atomizer paper preset's encoder, reading pixels instead of atoms
        "paper": PerceiverConfig(
            num_latents=128,
            latent_dim=512,
            depth=4,
            self_per_cross=4,
            cross_heads=1,
            cross_dim_head=64,
            latent_heads=8,
            latent_dim_head=64,
            ff_mult=4,
        ),
    },
}

# --------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------


def _check_input(batch: CanvasBatch, in_channels: int) -> Tensor:
    """The batch's pixels, after checking that they are a canvas batch of ``in_channels`` channels."""
    if not isinstance(batch, CanvasBatch):
        raise TypeError(f"canvas models read a CanvasBatch, got {type(batch).__name__}")
    x = batch.pixels
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"expected a canvas batch (S, {in_channels}, H, W), got shape {tuple(x.shape)}")
    return x


def sincos_pos_embed_2d(h: int, w: int, dim: int, scale: Tensor | float = 1.0, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sin-cos positional embedding of an ``h x w`` grid (timm / SimpleViT layout).

    Position ``(i, j)`` (row, column) is scaled by ``scale`` and encoded as
    ``[sin(j w_k), cos(j w_k), sin(i w_k), cos(i w_k)]_k`` with ``w_k = temperature^(-k / (dim / 4))``.

    Args:
        h, w: Grid rows and columns.
        dim: Embedding width, divisible by 4.
        scale: A float (one grid) or a (S,) tensor (one grid per sample: ScaleMAE's
            ``gsd / reference_gsd``, positions in units of ground distance).

    Returns:
        (h * w, dim) for a float ``scale``, (S, h * w, dim) for a tensor; row-major over the grid.
    """
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4, got {dim}")
    batched = isinstance(scale, Tensor) and scale.ndim > 0
    device = scale.device if isinstance(scale, Tensor) else None
    s = torch.as_tensor(scale, dtype=torch.float32, device=device).reshape(-1, 1, 1)  # (S or 1, 1, 1)
    ii, jj = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    omega = temperature ** -(torch.arange(dim // 4, dtype=torch.float32, device=device) / (dim // 4))
    y = ii.reshape(1, -1, 1) * s * omega  # (S, N, dim/4)
    x = jj.reshape(1, -1, 1) * s * omega
    pe = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=-1)  # (S, N, dim)
    return pe if batched else pe[0]


def canvas_extent(batch: CanvasBatch) -> float:
    """The ground side (m) of the batch's canvas, which a segmentation model's output covers."""
    extent = batch.extent_m
    if extent is None or not float(extent) > 0:
        raise ValueError(
            f"a segmentation model needs the canvas extent of its batch (CanvasBatch.extent_m, metres), got "
            f"{extent!r}: build the batch with CanvasBatch.from_image / canvas_batch, or pass extent_m"
        )
    return float(extent)


class _Baseline(nn.Module):
    """The task dispatch every canvas model shares: :meth:`classify` or :meth:`dense` read at the queries."""

    input_type: ClassVar[type] = CanvasBatch
    cfg: Any

    @property
    def task(self) -> str:
        return str(self.cfg.task)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, batch: CanvasBatch, queries: DenseQueries | None = None) -> Tensor:
        """Classification: ``batch`` -> logits (S, K). Segmentation: ``batch`` and the output pixels
        ``queries`` -> logits (S, Q, K): :meth:`dense` read at the query centres over ``batch.extent_m``."""
        if self.task == "classification":
            if queries is not None:
                raise ValueError(f"this {self.cfg.name} is a classifier (task classification): it takes no queries")
            return self.classify(batch)
        if queries is None:
            raise ValueError(
                f"this {self.cfg.name} segments (task segmentation): call it as model(batch, queries=DenseQueries)"
            )
        if queries.num_sets != batch.num_sets:
            raise ValueError(f"{queries.num_sets} query sets for a batch of {batch.num_sets} canvases")
        extent = canvas_extent(batch)
        return sample_canvas(self.dense(batch), extent, queries)

    def classify(self, batch: CanvasBatch) -> Tensor:
        """batch -> logits (S, K) (task classification)."""
        raise NotImplementedError

    def dense(self, batch: CanvasBatch) -> Tensor:
        """batch -> per-pixel logits (S, K, H, W) at the canvas resolution (task segmentation)."""
        raise NotImplementedError

    def _require(self, task: str) -> None:
        if self.task != task:
            raise ValueError(f"this {self.cfg.name} was built for {self.task}, not {task}")


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """conv3x3 (no bias) - BatchNorm - ReLU, at the input's resolution."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


# --------------------------------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the (projected when needed) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class UNetUp(nn.Module):
    """One U-Net decoder step: upsample (bilinear) to the skip's size, concatenate the skip, two conv-BN-ReLU."""

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(c_in + c_skip, c_out), conv_bn_relu(c_out, c_out))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.convs(torch.cat([x, skip], dim=1))


class ResNetBaseline(_Baseline):
    """A small ResNet: 3x3 stem for the 12-channel canvas, basic-block stages, global average pool.

    Segmentation (``task="segmentation"``): a U-Net decoder in place of the pool and ``fc``. From the
    deepest stage up, each step upsamples to the next shallower stage's resolution, concatenates that
    stage's output (skip connection) and applies two conv-BN-ReLU of that stage's width; a last step
    upsamples to the canvas resolution and concatenates the canvas itself (the full-resolution skip, as the
    stem strides); a 1x1 convolution gives the K class logits per canvas pixel.
    """

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, cfg.stem_width, 3, cfg.stem_stride, 1, bias=False),
            nn.BatchNorm2d(cfg.stem_width),
            nn.ReLU(inplace=True),
        )
        layers, c = [], cfg.stem_width
        for i, (width, n) in enumerate(zip(cfg.widths, cfg.blocks)):
            for j in range(n):
                layers.append(BasicBlock(c, width, stride=2 if (i > 0 and j == 0) else 1))
                c = width
        self.stages = nn.Sequential(*layers)
        if cfg.task == "classification":
            self.fc = nn.Linear(c, cfg.num_classes)
            return
        # the last block of each stage: its output is a skip (stage resolution: stem / 2^i)
        self.stage_ends = tuple(sum(cfg.blocks[: i + 1]) - 1 for i in range(len(cfg.blocks)))
        w = cfg.widths
        self.up = nn.ModuleList(UNetUp(w[i + 1], w[i], w[i]) for i in reversed(range(len(w) - 1)))
        self.up_full = UNetUp(w[0], cfg.in_channels, w[0])  # to the canvas grid, the canvas as the skip
        self.classifier = nn.Conv2d(w[0], cfg.num_classes, 1)

    def classify(self, batch: CanvasBatch) -> Tensor:
        """batch.pixels (S, C, H, W) -> logits (S, K); ``batch.gsd`` is ignored."""
        self._require("classification")
        x = _check_input(batch, self.cfg.in_channels)
        f = self.stages(self.stem(x))  # (S, C', H', W')
        return self.fc(f.mean(dim=(2, 3)))

    def dense(self, batch: CanvasBatch) -> Tensor:
        """batch.pixels (S, C, H, W) -> per-pixel logits (S, K, H, W); ``batch.gsd`` is ignored."""
        self._require("segmentation")
        x = _check_input(batch, self.cfg.in_channels)
        f, skips = self.stem(x), []
        for i, block in enumerate(self.stages):
            f = block(f)
            if i in self.stage_ends:
                skips.append(f)
        d = skips.pop()  # the deepest stage
        for up in self.up:  # deepest-but-one stage first
            d = up(d, skips.pop())
        return self.classifier(self.up_full(d, x))


# --------------------------------------------------------------------------------------------------
# ViT and ScaleMAE
# --------------------------------------------------------------------------------------------------


class ProgressiveUpsampling(nn.Module):
    """SETR-PUP: a token grid (S, D, h, w) brought to (S, K, H, W) by ``ceil(log2(H / h))`` steps of
    (bilinear x2 upsampling, conv-BN-ReLU of ``width`` channels), the last step landing exactly on (H, W),
    then a 1x1 convolution to the K classes."""

    def __init__(self, dim: int, width: int, num_classes: int, factor: int):
        super().__init__()
        steps = max(1, math.ceil(math.log2(factor)))
        self.stages = nn.ModuleList(conv_bn_relu(dim if i == 0 else width, width) for i in range(steps))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, g: Tensor, size: tuple[int, int]) -> Tensor:
        n = len(self.stages)
        for i, stage in enumerate(self.stages):
            k = 2 ** (n - 1 - i)  # this step's output is (H, W) / k: doubling, the last exactly (H, W)
            g = F.interpolate(g, size=(-(-size[0] // k), -(-size[1] // k)), mode="bilinear", align_corners=False)
            g = stage(g)
        return self.classifier(g)


class ViTBaseline(_Baseline):
    """SimpleViT: LayerNorm'd patch embedding, fixed 2-D sin-cos positions, pre-norm encoder, mean pool.

    The positions are computed for the actual patch grid of the input, so any ``H, W`` divisible by the
    patch size works.

    Segmentation (``task="segmentation"``): the normalised patch tokens, laid out on their grid, go through
    a progressive-upsampling decoder (:class:`ProgressiveUpsampling`: ``ceil(log2(patch_size))`` x2 steps
    of ``decoder_width`` channels, ``dim // 2`` by default) to the canvas resolution, in place of the pool
    and ``fc``.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        patch_dim = cfg.in_channels * cfg.patch_size**2
        self.patch_norm = nn.LayerNorm(patch_dim)
        self.patch_proj = nn.Linear(patch_dim, cfg.dim)
        self.embed_norm = nn.LayerNorm(cfg.dim)
        self.layers = nn.ModuleList(
            SelfBlock(cfg.dim, cfg.heads, cfg.dim_head, cfg.ff_mult, cfg.dropout, cfg.dropout) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        if cfg.task == "classification":
            self.fc = nn.Linear(cfg.dim, cfg.num_classes)
        else:
            width = cfg.decoder_width or max(1, cfg.dim // 2)
            self.decoder = ProgressiveUpsampling(cfg.dim, width, cfg.num_classes, cfg.patch_size)

    def patchify(self, x: Tensor) -> tuple[Tensor, int, int]:
        """x (S, C, H, W) -> (patch embeddings (S, N, D), grid rows, grid columns)."""
        p = self.cfg.patch_size
        if x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"canvas {tuple(x.shape[2:])} is not divisible by the patch size {p}")
        gh, gw = x.shape[2] // p, x.shape[3] // p
        t = rearrange(x, "s c (gh p1) (gw p2) -> s (gh gw) (p1 p2 c)", p1=p, p2=p)
        return self.embed_norm(self.patch_proj(self.patch_norm(t))), gh, gw

    def positions(self, gh: int, gw: int, gsd: Tensor | None, x: Tensor) -> Tensor:
        """(N, D) fixed positions, the same for every sample."""
        return sincos_pos_embed_2d(gh, gw, self.cfg.dim).to(x)

    def encode(self, batch: CanvasBatch) -> tuple[Tensor, int, int]:
        """batch -> (normalised patch tokens (S, N, D), grid rows, grid columns)."""
        x, gsd = _check_input(batch, self.cfg.in_channels), batch.gsd
        t, gh, gw = self.patchify(x)  # (S, N, D)
        t = t + self.positions(gh, gw, gsd, x)
        for layer in self.layers:
            t = layer(t)
        return self.norm(t), gh, gw

    def classify(self, batch: CanvasBatch) -> Tensor:
        """batch.pixels (S, C, H, W), batch.gsd (S,) (ignored by the ViT) -> logits (S, K)."""
        self._require("classification")
        return self.fc(self.encode(batch)[0].mean(1))

    def dense(self, batch: CanvasBatch) -> Tensor:
        """batch.pixels (S, C, H, W), batch.gsd (S,) -> per-pixel logits (S, K, H, W)."""
        self._require("segmentation")
        t, gh, gw = self.encode(batch)
        g = rearrange(t, "s (gh gw) d -> s d gh gw", gh=gh, gw=gw)
        h, w = batch.pixels.shape[-2:]
        return self.decoder(g, (int(h), int(w)))


class ScaleMAEBaseline(ViTBaseline):
    """The ViT with ScaleMAE's GSD positional encoding: positions in units of ground distance.

    Patch ``(i, j)`` of sample ``s`` is encoded at ``(i, j) * gsd[s] / reference_gsd_m``, so the same
    patch grid at a coarser GSD gets faster-varying codes. ``gsd`` is the modality GSD of each image
    (:func:`canvas_batch`), not the canvas's: the canvas is always on the reference grid, and the GSD
    is the only hint this baseline gets of the image's true resolution.
    """

    def __init__(self, cfg: ScaleMAEConfig):
        super().__init__(cfg)

    def positions(self, gh: int, gw: int, gsd: Tensor | None, x: Tensor) -> Tensor:
        """(S, N, D) positions scaled by ``gsd / reference_gsd_m``."""
        if gsd is None:
            raise ValueError("ScaleMAEBaseline needs the per-sample gsd (S,)")
        gsd = torch.as_tensor(gsd, dtype=torch.float32, device=x.device).reshape(-1)
        if gsd.shape[0] != x.shape[0]:
            raise ValueError(f"gsd has {gsd.shape[0]} values for a batch of {x.shape[0]}")
        return sincos_pos_embed_2d(gh, gw, self.cfg.dim, gsd / self.cfg.reference_gsd_m).to(x)


# --------------------------------------------------------------------------------------------------
# Pixel-token Perceiver
# --------------------------------------------------------------------------------------------------


class PixelPerceiverBaseline(_Baseline):
    """A Perceiver over one token per canvas pixel: the C channel values and the pixel's position.

    Token = ``concat(values (C,), gamma(x), gamma(y))`` with ``x, y`` the pixel centre in [-1, 1] over
    the canvas. Blocks of cross-attention (latents over LayerNorm'd tokens) + latent self-attention are
    the Atomizer's (:mod:`atomizer.models.layers`: ``Attention``, ``SelfBlock``, the weight-tied
    :class:`~atomizer.models.layers.TiedStack`); the head is the Atomizer's attention pooling. Padding and zero channels are tokens like any other.

    Segmentation (``task="segmentation"``): Perceiver IO's per-pixel output. Every canvas pixel asks one
    query, its own normalised token (values and position) projected to the latent width, which
    cross-attends to the final latents (a :class:`~atomizer.models.layers.CrossBlock`, ``cross_heads``);
    a LayerNorm'd linear readout gives its K logits, in place of the attention pooling.
    """

    def __init__(self, cfg: PerceiverConfig):
        super().__init__()
        self.cfg = cfg
        self.token_dim = cfg.in_channels + 2 * fourier_dim(cfg.pos_bands)
        # Pre-norm of the tokens without affine parameters (each cross-attention's key/value projection
        # absorbs them), so the normalised tokens are computed once per forward, not once per block.
        self.token_norm = nn.LayerNorm(self.token_dim, elementwise_affine=False)
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, cfg.latent_dim) * 0.02)

        def block() -> LatentBlock:
            # the cross-attention step's modules at the block's top level ("norm", "cross", "ff"): the
            # state_dict keys of stored checkpoints; the step itself is layers.residual_step
            cross = Attention(
                cfg.latent_dim,
                cfg.cross_heads,
                cfg.cross_dim_head,
                context_dim=self.token_dim,
                dropout=cfg.attn_dropout,
            )
            step = {"norm": nn.LayerNorm(cfg.latent_dim), "cross": cross}
            step["ff"] = FeedForward(cfg.latent_dim, cfg.ff_mult, cfg.ff_dropout)
            latents = (
                SelfBlock(
                    cfg.latent_dim, cfg.latent_heads, cfg.latent_dim_head, cfg.ff_mult, cfg.attn_dropout, cfg.ff_dropout
                )
                for _ in range(cfg.self_per_cross)
            )
            return LatentBlock(step, latents)

        self.blocks = TiedStack(block, cfg.depth, cfg.tie_weights)
        if cfg.task == "classification":
            self.head = AttentionPool(cfg.latent_dim, cfg.latent_heads, cfg.latent_dim_head, cfg.num_classes)
            return
        self.pixel_query = nn.Linear(self.token_dim, cfg.latent_dim)
        self.pixel_read = CrossBlock(
            cfg.latent_dim,
            cfg.cross_heads,
            cfg.cross_dim_head,
            context_dim=cfg.latent_dim,
            ff_mult=cfg.ff_mult,
            attn_dropout=cfg.attn_dropout,
            ff_dropout=cfg.ff_dropout,
        )
        self.pixel_head = nn.Sequential(nn.LayerNorm(cfg.latent_dim), nn.Linear(cfg.latent_dim, cfg.num_classes))

    def tokens(self, x: Tensor) -> Tensor:
        """x (S, C, H, W) -> pixel tokens (S, H * W, C + 2 * pos_dim), row-major."""
        s, _, h, w = x.shape
        cy = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h * 2 - 1
        cx = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) / w * 2 - 1
        fy = fourier_features(cy, self.cfg.pos_bands, self.cfg.pos_max_freq)  # (H, P)
        fx = fourier_features(cx, self.cfg.pos_bands, self.cfg.pos_max_freq)  # (W, P)
        pos = torch.cat([fx[None, :, :].expand(h, -1, -1), fy[:, None, :].expand(-1, w, -1)], -1)  # (H, W, 2P)
        vals = rearrange(x, "s c h w -> s (h w) c")
        return torch.cat([vals, rearrange(pos, "h w p -> (h w) p").to(x).expand(s, -1, -1)], -1)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (S, C, H, W) -> (normalised pixel tokens (S, N, T), final latents (S, L, D))."""
        t = self.token_norm(self.tokens(x))  # (S, N, T)
        z = self.latents.expand(x.shape[0], -1, -1)  # (S, L, D)
        for blk in self.blocks:
            z = residual_step(z, blk["norm"], blk["cross"], blk["ff"], context=t)[0]  # no mask: fused kernels
            z = blk.attend_latents(z)
        return t, z

    def classify(self, batch: CanvasBatch) -> Tensor:
        """batch.pixels (S, C, H, W) -> logits (S, K); ``batch.gsd`` is ignored."""
        self._require("classification")
        return self.head(self.encode(_check_input(batch, self.cfg.in_channels))[1])

    def dense(self, batch: CanvasBatch) -> Tensor:
        """batch.pixels (S, C, H, W) -> per-pixel logits (S, K, H, W); ``batch.gsd`` is ignored."""
        self._require("segmentation")
        x = _check_input(batch, self.cfg.in_channels)
        t, z = self.encode(x)
        q = self.pixel_read(self.pixel_query(t), context=z)[0]  # (S, H * W, D): each pixel reads the latents
        return rearrange(self.pixel_head(q), "s (h w) k -> s k h w", h=x.shape[2], w=x.shape[3])


# --------------------------------------------------------------------------------------------------
# The baselines' entries of the model registry (atomizer.models.registry: the one factory)
# --------------------------------------------------------------------------------------------------

BASELINES: dict[str, type[_Baseline]] = {
    "resnet": ResNetBaseline,
    "vit": ViTBaseline,
    "scalemae": ScaleMAEBaseline,
    "perceiver": PixelPerceiverBaseline,
}

CONFIGS: dict[str, type[_BaselineConfig]] = {
    "resnet": ResNetConfig,
    "vit": ViTConfig,
    "scalemae": ScaleMAEConfig,
    "perceiver": PerceiverConfig,
}
