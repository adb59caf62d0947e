"""Baselines that read a fixed canvas: ResNet, ViT, ScaleMAE-style ViT and a pixel-token Perceiver.

Their input is the paper's canvas (:mod:`atomizer.atoms.canvas`: the 12 Sentinel-2 L2A bands resampled
onto one fixed grid, missing bands and nodata zero-filled, no mask): the baselines' handicap by design
(method note, section 5), while the Atomizer reads every band on its own grid with its own GSD.

Every model has ``forward(batch: CanvasBatch) -> logits (S, num_classes)`` (reading ``batch.pixels``
(S, C, H, W) and, ScaleMAE only, ``batch.gsd`` (S,)), a class attribute ``input_type = CanvasBatch``,
a ``cfg`` holding its frozen config, and named presets ("tiny" for CI, "small" for CPU experiments).
They are built by name through the one model factory, :func:`atomizer.models.registry.build_model`.

Shapes: S images in a batch, C canvas channels, H x W canvas pixels, N tokens (patches or pixels),
D model width, L latents, K classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from atomizer.atoms.canvas import CANVAS_BANDS, CanvasBatch
from atomizer.atoms.encodings import fourier_dim, fourier_features
from atomizer.core.config import Config
from atomizer.models.layers import (
    Attention,
    AttentionPool,
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

    def __post_init__(self) -> None:
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

    def __post_init__(self) -> None:
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


class _Baseline(nn.Module):
    input_type: ClassVar[type] = CanvasBatch
    cfg: Any

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


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


class ResNetBaseline(_Baseline):
    """A small ResNet: 3x3 stem for the 12-channel canvas, basic-block stages, global average pool."""

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
        self.fc = nn.Linear(c, cfg.num_classes)

    def forward(self, batch: CanvasBatch) -> Tensor:
        """batch.pixels (S, C, H, W) -> logits (S, K); ``batch.gsd`` is ignored."""
        x = _check_input(batch, self.cfg.in_channels)
        f = self.stages(self.stem(x))  # (S, C', H', W')
        return self.fc(f.mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------------------
# ViT and ScaleMAE
# --------------------------------------------------------------------------------------------------


class ViTBaseline(_Baseline):
    """SimpleViT: LayerNorm'd patch embedding, fixed 2-D sin-cos positions, pre-norm encoder, mean pool.

    The positions are computed for the actual patch grid of the input, so any ``H, W`` divisible by the
    patch size works.
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
        self.fc = nn.Linear(cfg.dim, cfg.num_classes)

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

    def forward(self, batch: CanvasBatch) -> Tensor:
        """batch.pixels (S, C, H, W), batch.gsd (S,) (ignored by the ViT) -> logits (S, K)."""
        x, gsd = _check_input(batch, self.cfg.in_channels), batch.gsd
        t, gh, gw = self.patchify(x)  # (S, N, D)
        t = t + self.positions(gh, gw, gsd, x)
        for layer in self.layers:
            t = layer(t)
        return self.fc(self.norm(t).mean(1))


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
        self.head = AttentionPool(cfg.latent_dim, cfg.latent_heads, cfg.latent_dim_head, cfg.num_classes)

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

    def forward(self, batch: CanvasBatch) -> Tensor:
        """batch.pixels (S, C, H, W) -> logits (S, K); ``batch.gsd`` is ignored."""
        x = _check_input(batch, self.cfg.in_channels)
        t = self.token_norm(self.tokens(x))  # (S, N, T)
        z = self.latents.expand(x.shape[0], -1, -1)  # (S, L, D)
        for blk in self.blocks:
            z = residual_step(z, blk["norm"], blk["cross"], blk["ff"], context=t)[0]  # no mask: fused kernels
            z = blk.attend_latents(z)
        return self.head(z)


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
