"""Baselines that read a fixed canvas: ResNet, ViT, ScaleMAE-style ViT and a pixel-token Perceiver.

The input protocol is the paper's, and it is the baselines' handicap by design (method note, section 5):
the Atomizer reads every band on its own grid with its own GSD and never sees padding, while a
baseline reads one fixed tensor, the *canvas*, built by :func:`to_canvas`:

1. The canvas has one channel per band of :data:`CANVAS_BANDS`, the 12 Sentinel-2 L2A bands, in that
   order, and ``size_px x size_px`` pixels on a reference grid of ``gsd_m`` (120 px at 10 m: a native
   BigEarthNet patch).
2. Every present band is converted to its physical value ``(DN + dn_offset) * dn_scale`` and normalised
   with the Atomizer's fixed, sensor-free scaling (:func:`atomizer.encodings.normalize_values`, i.e.
   :data:`atomizer.encodings.PHYSICAL_SCALING`, clamped to [-4, 4]), so both families see the same
   value scale and any difference comes from how the input is laid out, not from normalisation.
3. The band is resampled, bilinearly (``torch.nn.functional.interpolate``, ``align_corners=False``),
   from its own grid onto the reference grid covering the band's ground extent: a band of ``n`` pixels
   at GSD ``g`` covers ``n * g`` metres and becomes ``round(n * g / gsd_m)`` canvas pixels. A band
   already on the reference grid is copied unchanged.
4. The result is zero-padded and centred in the canvas (centre-cropped when larger). Every band is
   centred on its own extent; the bands of one image share a centre (readers and
   :func:`atomizer.modalities.simulate` keep a common window), so they stay co-registered.
5. Missing bands are zero-filled. Nodata and NaN pixels are 0 on the canvas as well, so everything the
   image does not provide reads the same value, 0 (a reflectance of 0.25 after normalisation).

No mask tells the model which channels, pixels or borders are real: the model is told only the
modality's GSD (:func:`canvas_batch`), which only :class:`ScaleMAEBaseline` uses. A coarse modality
therefore arrives as a blurred upsampled image, a small crop as an image with a zero frame, and a band
subset as zero channels, as in the paper's comparison.

Every model has ``forward(x (S, C, H, W), gsd (S,)) -> logits (S, num_classes)``, a class attribute
``input_kind = "canvas"``, a ``cfg`` holding its frozen config, and named presets ("tiny" for CI,
"small" for CPU experiments). :func:`build_baseline` builds one by registry name.

Shapes: S images in a batch, C canvas channels, H x W canvas pixels, N tokens (patches or pixels),
D model width, L latents, K classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from einops import rearrange
from torch import Tensor, nn

from atomizer.encodings import fourier_dim, fourier_features, normalize_values
from atomizer.model import Attention, AttentionPool, FeedForward
from atomizer.readers import image_bands, physical_values
from atomizer.tokens import extra_channel

#: The 12 Sentinel-2 L2A bands of the canvas, in channel order (B10 is not in L2A products).
CANVAS_BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                                 "B11", "B12")

# --------------------------------------------------------------------------------------------------
# Input protocol: image -> canvas
# --------------------------------------------------------------------------------------------------


def _normalised_band(da: xr.DataArray) -> Tensor:
    """One band of the image representation -> (h, w) float32 normalised values; invalid pixels 0."""
    a = da.attrs
    phys, ok = physical_values(da)
    ec = extra_channel(a.get("domain", "optical"), a.get("polarisation") or None)
    v = torch.from_numpy(np.ascontiguousarray(phys, dtype=np.float32))
    out = normalize_values(v, torch.full_like(v, ec))
    return torch.where(torch.from_numpy(ok), out, torch.zeros_like(out))


def _place(band: Tensor, size_px: int) -> Tensor:
    """Centre ``band`` (h, w) in a zero (size_px, size_px) frame, cropping its centre if larger."""
    out = band.new_zeros(size_px, size_px)
    h, w = band.shape
    # Source and destination slices per axis: pad (dst offset) when smaller, crop (src offset) when larger.
    (sy, dy, ny), (sx, dx, nx) = [
        (max(n - size_px, 0) // 2, max(size_px - n, 0) // 2, min(n, size_px)) for n in (h, w)
    ]
    out[dy:dy + ny, dx:dx + nx] = band[sy:sy + ny, sx:sx + nx]
    return out


def to_canvas(image: xr.Dataset, canvas_bands: Sequence[str] = CANVAS_BANDS, size_px: int = 120,
              gsd_m: float = 10.0) -> tuple[Tensor, Tensor]:
    """Lay an image out on the baselines' fixed canvas (protocol in the module docstring).

    Args:
        image: The image representation of :mod:`atomizer.readers` (any bands, native grids).
        canvas_bands: Band names of the canvas channels, in order; bands of the image not listed are
            ignored.
        size_px: Side of the canvas in pixels.
        gsd_m: Pixel size of the canvas grid in metres.

    Returns:
        ``(canvas (C, size_px, size_px) float32, present (C,) bool)``: ``present[c]`` says whether the
        image had band ``canvas_bands[c]`` (the models never see it; it is for analysis).

    Raises:
        ValueError: ``size_px`` or ``gsd_m`` is not positive, or the image has no canvas band.
    """
    if int(size_px) < 1 or not float(gsd_m) > 0:
        raise ValueError(f"size_px and gsd_m must be positive, got {size_px} and {gsd_m}")
    size_px, gsd_m = int(size_px), float(gsd_m)
    have = set(image_bands(image))
    present = torch.tensor([b in have for b in canvas_bands], dtype=torch.bool)
    if not bool(present.any()):
        raise ValueError(f"image {image.attrs.get('source', '')!s} has none of the canvas bands "
                         f"{list(canvas_bands)} (its bands: {sorted(have)})")
    canvas = torch.zeros(len(canvas_bands), size_px, size_px)
    for c, name in enumerate(canvas_bands):
        if name not in have:
            continue
        da = image[name]
        g = float(da.attrs["gsd_m"])
        band = _normalised_band(da)  # (h, w)
        h, w = band.shape
        th, tw = max(1, round(h * g / gsd_m)), max(1, round(w * g / gsd_m))
        if (th, tw) != (h, w):
            band = F.interpolate(band[None, None], size=(th, tw), mode="bilinear", align_corners=False)[0, 0]
        canvas[c] = _place(band, size_px)
    return canvas, present


def image_gsd(image: xr.Dataset, canvas_bands: Sequence[str] = CANVAS_BANDS) -> float:
    """The modality GSD of an image: the finest GSD among its canvas bands.

    :func:`atomizer.modalities.simulate` brings every band finer than the modality GSD to that GSD and
    keeps coarser bands on their own grids, so the finest present band is at the modality GSD (a
    native BigEarthNet patch: 10 m). The coarsest band would say 60 m for any image holding B01.
    """
    gsds = [float(image[b].attrs["gsd_m"]) for b in canvas_bands if b in set(image_bands(image))]
    if not gsds:
        raise ValueError(f"image {image.attrs.get('source', '')!s} has none of the canvas bands")
    return min(gsds)


def canvas_batch(images: Sequence[xr.Dataset], canvas_bands: Sequence[str] = CANVAS_BANDS,
                 size_px: int = 120, gsd_m: float = 10.0) -> tuple[Tensor, Tensor]:
    """Canvases of several images and their modality GSDs.

    Returns:
        ``x (S, C, size_px, size_px)`` float32 and ``gsd (S,)`` float32, the modality GSD of each image
        (:func:`image_gsd`: its finest canvas band's GSD), the value :class:`ScaleMAEBaseline` reads.
    """
    if len(images) == 0:
        raise ValueError("canvas_batch needs at least one image")
    x = torch.stack([to_canvas(im, canvas_bands, size_px, gsd_m)[0] for im in images])
    gsd = torch.tensor([image_gsd(im, canvas_bands) for im in images], dtype=torch.float32)
    return x, gsd


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------


class _ConfigMixin:
    """``to_dict``/``from_dict``/``preset`` shared by the baseline configs (tuples stored as lists)."""

    name: ClassVar[str] = ""  # key in BASELINES and PRESETS

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @classmethod
    def preset(cls, name: str, **overrides: Any):
        presets = PRESETS[cls.name]
        if name not in presets:
            raise KeyError(f"unknown {cls.name} preset {name!r}; presets: {', '.join(presets)}")
        return replace(presets[name], **overrides)


@dataclass(frozen=True)
class ResNetConfig(_ConfigMixin):
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
class ViTConfig(_ConfigMixin):
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
class PerceiverConfig(_ConfigMixin):
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
        "tiny": PerceiverConfig(num_latents=16, latent_dim=64, depth=1, self_per_cross=2, cross_dim_head=32,
                                latent_heads=2, latent_dim_head=32, pos_bands=8, pos_max_freq=16.0),
        "small": PerceiverConfig(),
        # the Atomizer paper preset's encoder, reading pixels instead of atoms
        "paper": PerceiverConfig(num_latents=128, latent_dim=512, depth=4, self_per_cross=4, cross_heads=1,
                                 cross_dim_head=64, latent_heads=8, latent_dim_head=64, ff_mult=4),
    },
}

# --------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------


def _check_input(x: Tensor, in_channels: int) -> None:
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"expected a canvas batch (S, {in_channels}, H, W), got shape {tuple(x.shape)}")


def sincos_pos_embed_2d(h: int, w: int, dim: int, scale: Tensor | float = 1.0,
                        temperature: float = 10000.0) -> Tensor:
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
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    omega = temperature ** -(torch.arange(dim // 4, dtype=torch.float32, device=device) / (dim // 4))
    y = ii.reshape(1, -1, 1) * s * omega  # (S, N, dim/4)
    x = jj.reshape(1, -1, 1) * s * omega
    pe = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=-1)  # (S, N, dim)
    return pe if batched else pe[0]


class TransformerLayer(nn.Module):
    """Pre-norm self-attention + GEGLU feed-forward (the Atomizer's :class:`Attention`/``FeedForward``)."""

    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head, dropout=dropout)
        self.ff = FeedForward(dim, ff_mult, dropout)

    def forward(self, z: Tensor) -> Tensor:
        z = z + self.attn(self.norm(z))[0]
        return z + self.ff(z)


class _Baseline(nn.Module):
    input_kind: ClassVar[str] = "canvas"
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
        self.shortcut = nn.Identity()
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
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, cfg.stem_width, 3, cfg.stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(cfg.stem_width), nn.ReLU(inplace=True))
        layers, c = [], cfg.stem_width
        for i, (width, n) in enumerate(zip(cfg.widths, cfg.blocks)):
            for j in range(n):
                layers.append(BasicBlock(c, width, stride=2 if (i > 0 and j == 0) else 1))
                c = width
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(c, cfg.num_classes)

    def forward(self, x: Tensor, gsd: Tensor | None = None) -> Tensor:
        """x (S, C, H, W) -> logits (S, K); ``gsd`` is ignored."""
        _check_input(x, self.cfg.in_channels)
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
        self.layers = nn.ModuleList(TransformerLayer(cfg.dim, cfg.heads, cfg.dim_head, cfg.ff_mult, cfg.dropout)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.fc = nn.Linear(cfg.dim, cfg.num_classes)

    def patchify(self, x: Tensor) -> tuple[Tensor, int, int]:
        """x (S, C, H, W) -> (patch embeddings (S, N, D), grid rows, grid columns)."""
        _check_input(x, self.cfg.in_channels)
        p = self.cfg.patch_size
        if x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"canvas {tuple(x.shape[2:])} is not divisible by the patch size {p}")
        gh, gw = x.shape[2] // p, x.shape[3] // p
        t = rearrange(x, "s c (gh p1) (gw p2) -> s (gh gw) (p1 p2 c)", p1=p, p2=p)
        return self.embed_norm(self.patch_proj(self.patch_norm(t))), gh, gw

    def positions(self, gh: int, gw: int, gsd: Tensor | None, x: Tensor) -> Tensor:
        """(N, D) fixed positions, the same for every sample."""
        return sincos_pos_embed_2d(gh, gw, self.cfg.dim).to(x)

    def forward(self, x: Tensor, gsd: Tensor | None = None) -> Tensor:
        """x (S, C, H, W), gsd (S,) (ignored by the ViT) -> logits (S, K)."""
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
    the canvas. Blocks of cross-attention (latents over LayerNorm'd tokens) + latent self-attention use
    the Atomizer's :class:`~atomizer.model.Attention` and GEGLU :class:`~atomizer.model.FeedForward`;
    the head is the Atomizer's attention pooling. Padding and zero channels are tokens like any other.
    """

    def __init__(self, cfg: PerceiverConfig):
        super().__init__()
        self.cfg = cfg
        self.token_dim = cfg.in_channels + 2 * fourier_dim(cfg.pos_bands)
        # Pre-norm of the tokens without affine parameters (each cross-attention's key/value projection
        # absorbs them), so the normalised tokens are computed once per forward, not once per block.
        self.token_norm = nn.LayerNorm(self.token_dim, elementwise_affine=False)
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, cfg.latent_dim) * 0.02)

        def block() -> nn.ModuleDict:
            return nn.ModuleDict({
                "norm": nn.LayerNorm(cfg.latent_dim),
                "cross": Attention(cfg.latent_dim, cfg.cross_heads, cfg.cross_dim_head, context_dim=self.token_dim,
                                   dropout=cfg.attn_dropout),
                "ff": FeedForward(cfg.latent_dim, cfg.ff_mult, cfg.ff_dropout),
                "self": nn.ModuleList(TransformerLayer(cfg.latent_dim, cfg.latent_heads, cfg.latent_dim_head,
                                                       cfg.ff_mult, cfg.attn_dropout)
                                      for _ in range(cfg.self_per_cross)),
            })

        first = block()
        if cfg.depth > 1 and cfg.tie_weights:
            shared = block()
            self.blocks = nn.ModuleList([first] + [shared] * (cfg.depth - 1))
        else:
            self.blocks = nn.ModuleList([first] + [block() for _ in range(cfg.depth - 1)])
        self.head = AttentionPool(cfg.latent_dim, cfg.latent_heads, cfg.latent_dim_head, cfg.num_classes)

    def tokens(self, x: Tensor) -> Tensor:
        """x (S, C, H, W) -> pixel tokens (S, H * W, C + 2 * pos_dim), row-major."""
        _check_input(x, self.cfg.in_channels)
        s, _, h, w = x.shape
        cy = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h * 2 - 1
        cx = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) / w * 2 - 1
        fy = fourier_features(cy, self.cfg.pos_bands, self.cfg.pos_max_freq)  # (H, P)
        fx = fourier_features(cx, self.cfg.pos_bands, self.cfg.pos_max_freq)  # (W, P)
        pos = torch.cat([fx[None, :, :].expand(h, -1, -1), fy[:, None, :].expand(-1, w, -1)], -1)  # (H, W, 2P)
        vals = rearrange(x, "s c h w -> s (h w) c")
        return torch.cat([vals, rearrange(pos, "h w p -> (h w) p").to(x).expand(s, -1, -1)], -1)

    def forward(self, x: Tensor, gsd: Tensor | None = None) -> Tensor:
        """x (S, C, H, W) -> logits (S, K); ``gsd`` is ignored."""
        t = self.token_norm(self.tokens(x))  # (S, N, T)
        z = self.latents.expand(x.shape[0], -1, -1)  # (S, L, D)
        for blk in self.blocks:
            z = z + blk["cross"](blk["norm"](z), context=t)[0]
            z = z + blk["ff"](z)
            for layer in blk["self"]:
                z = layer(z)
        return self.head(z)


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

BASELINES: dict[str, type[_Baseline]] = {
    "resnet": ResNetBaseline,
    "vit": ViTBaseline,
    "scalemae": ScaleMAEBaseline,
    "perceiver": PixelPerceiverBaseline,
}

CONFIGS: dict[str, type] = {
    "resnet": ResNetConfig,
    "vit": ViTConfig,
    "scalemae": ScaleMAEConfig,
    "perceiver": PerceiverConfig,
}


def build_baseline(name: str, preset: str = "tiny", num_classes: int = 19, **overrides: Any) -> _Baseline:
    """Build baseline ``name`` ("resnet", "vit", "scalemae", "perceiver") from a preset plus overrides."""
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    cfg = CONFIGS[name].preset(preset, num_classes=num_classes, **overrides)
    return BASELINES[name](cfg)


def baseline_from_config(name: str, cfg: Mapping[str, Any]) -> _Baseline:
    """Rebuild baseline ``name`` from a stored ``cfg.to_dict()`` (checkpoints)."""
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    return BASELINES[name](CONFIGS[name].from_dict(cfg))
