"""The Atomizer encoder: a Perceiver that reads a set of atoms through cross-attention into latents.

Read top to bottom: config and presets, the factorised token projection, one ``Attention`` for cross
and self attention, the GEGLU feed-forward, the blocks, the model.

Shapes: S sets in a batch, N atoms per set (padded), K atoms kept after pruning, L latents, D latent
width, H heads, C classes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import (CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts,
                                    noop_context_fn)

from atomizer.encodings import AtomEncoder, EncodingConfig
from atomizer.tokens import AtomBatch

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AtomizerConfig:
    """Hyper-parameters of :class:`Atomizer`. See :data:`PRESETS` for named settings."""

    num_classes: int = 19
    num_latents: int = 128
    latent_dim: int = 512
    depth: int = 4  # cross-attention blocks
    self_per_cross: int = 4  # latent self-attention layers after each cross-attention
    cross_heads: int = 1
    cross_dim_head: int = 64
    latent_heads: int = 8
    latent_dim_head: int = 64
    ff_mult: int = 4
    tie_weights: bool = True  # share all blocks after the first
    prune_p: float = 0.5  # fraction of valid atoms dropped before each cross-attention (training only)
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    checkpoint_tokens: bool = False  # recompute atom keys/values in backward (memory ~ one block's atoms)
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    band_stats: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # z-score option

    def __post_init__(self) -> None:
        if not 0.0 <= self.prune_p < 1.0:
            raise ValueError(f"prune_p must be in [0, 1), got {self.prune_p}")
        if isinstance(self.encoding, Mapping):
            enc = dict(self.encoding)
            if "anchors" in enc:
                enc["anchors"] = tuple(tuple(float(v) for v in a) for a in enc["anchors"])
            object.__setattr__(self, "encoding", EncodingConfig(**enc))
        object.__setattr__(self, "band_stats", {k: tuple(v) for k, v in dict(self.band_stats).items()})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["encoding"]["anchors"] = [list(a) for a in d["encoding"]["anchors"]]
        d["band_stats"] = {k: list(v) for k, v in self.band_stats.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AtomizerConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown AtomizerConfig field(s): {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "AtomizerConfig":
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)


PRESETS: dict[str, AtomizerConfig] = {
    # CI: a forward pass on a native BigEarthNet patch (80,000 atoms) well under a second on CPU.
    "tiny": AtomizerConfig(num_latents=16, latent_dim=64, depth=2, self_per_cross=1, cross_dim_head=32,
                           latent_heads=2, latent_dim_head=32, ff_mult=2,
                           encoding=EncodingConfig(value_bands=8, value_max_freq=8, pos_bands=8, pos_max_freq=8)),
    # CPU experiments on the embedded data.
    "small": AtomizerConfig(num_latents=32, latent_dim=128, depth=4, self_per_cross=2, cross_dim_head=64,
                            latent_heads=4, latent_dim_head=32, ff_mult=2,
                            encoding=EncodingConfig(value_bands=16, value_max_freq=16, pos_bands=16,
                                                    pos_max_freq=16)),
    # The paper: 4 x (cross + 4 self), latent dim 512, 8 x 64 latent heads, 1 x 64 cross head, 128 latents.
    "paper": AtomizerConfig(checkpoint_tokens=True),
}


# --------------------------------------------------------------------------------------------------
# Token projection without materialising tokens
# --------------------------------------------------------------------------------------------------


class FactorizedTokenProjection(nn.Module):
    """``Linear(LayerNorm(concat(parts)))`` computed from the parts, never the concatenation.

    A token is ``t = concat(v, x, y, b)`` where ``v`` is per atom, ``x``/``y`` rows of coordinate tables
    and ``b`` rows of the band table. With ``A = W diag(gamma)`` split into column blocks,
    ``W LN(t) = (A_v v + A_x x + A_y y + A_b b - mean(t) A 1) / std(t) + W beta``, and ``mean(t)``,
    ``var(t)`` follow from per-part sums and sums of squares. Only the small tables are projected; each
    atom costs four gathered adds of ``out_dim`` numbers.
    """

    def __init__(self, part_dims: tuple[int, int, int, int], out_dim: int, eps: float = 1e-5):
        super().__init__()
        self.part_dims = tuple(part_dims)
        self.token_dim = sum(part_dims)
        self.norm = nn.LayerNorm(self.token_dim, eps=eps)
        self.proj = nn.Linear(self.token_dim, out_dim, bias=False)

    def reference(self, tokens: Tensor) -> Tensor:
        """The materialised path: ``(S, N, token_dim) -> (S, N, out)``."""
        return self.proj(self.norm(tokens))

    def forward(self, v: Tensor, fx: Tensor, fy: Tensor, fb: Tensor, xi: Tensor, yi: Tensor,
                band: Tensor) -> Tensor:
        """v (S,K,Dv); fx (X,Dp); fy (Y,Dp); fb (B,Db); xi, yi, band (S,K) -> (S, K, out)."""
        a = self.proj.weight * self.norm.weight  # (out, D)
        av, ax, ay, ab = a.split(self.part_dims, dim=1)
        bias = self.proj.weight @ self.norm.bias  # (out,)
        a1 = a.sum(1)  # (out,)
        d = self.token_dim
        # LayerNorm statistics from per-row sums and sums of squares of each part (S, K, 1)
        s = (v.sum(-1) + fx.sum(-1)[xi] + fy.sum(-1)[yi] + fb.sum(-1)[band])[..., None]
        q = (v.square().sum(-1) + fx.square().sum(-1)[xi] + fy.square().sum(-1)[yi]
             + fb.square().sum(-1)[band])[..., None]
        mean = s / d
        rstd = torch.rsqrt((q / d - mean.square()).clamp_min(0) + self.norm.eps)
        # projections: the per-atom part, then the table parts gathered and added in place, so one
        # atoms-sized buffer lives at a time (embedding's backward is a fast index_add)
        proj = v @ av.T  # (S, K, out)
        proj += F.embedding(xi, fx @ ax.T)
        proj += F.embedding(yi, fy @ ay.T)
        proj += F.embedding(band, fb @ ab.T)
        if rstd.requires_grad:  # learnable feature tables (e.g. a spectral adapter): keep autograd's inputs
            return torch.addcmul(bias, torch.addcmul(proj, mean, a1, value=-1.0), rstd)
        return proj.addcmul_(mean, a1, value=-1.0).mul_(rstd).add_(bias)  # fixed features: in place


# --------------------------------------------------------------------------------------------------
# Attention and feed-forward
# --------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention for both cross and self attention (queries ``x``, keys/values ``context``).

    With ``kv_dim=None`` the module projects keys and values itself (from ``context`` or ``x``);
    otherwise the caller passes precomputed ``kv`` of width ``2 * heads * dim_head``.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 dropout: float = 0.0, external_kv: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head, self.dropout = heads, dim_head, dropout
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_kv = None if external_kv else nn.Linear(context_dim or query_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)

    def forward(self, x: Tensor, context: Tensor | None = None, kv: Tensor | None = None,
                mask: Tensor | None = None, return_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (S, Lq, Dq); context (S, N, Dc) or kv (S, N, 2*inner); mask (S, N) True=attend."""
        h = self.heads
        q = rearrange(self.to_q(x), "s l (h d) -> s h l d", h=h)
        if kv is None:
            kv = self.to_kv(x if context is None else context)
        k, v = rearrange(kv, "s n (two h d) -> two s h n d", two=2, h=h)
        attn_mask = None if mask is None else mask[:, None, None, :]
        weights = None
        if return_weights:
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(self.dim_head)  # (S, H, Lq, N)
            if attn_mask is not None:
                logits = logits.masked_fill(~attn_mask, float("-inf"))
            weights = logits.softmax(-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                                 dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(rearrange(out, "s h l d -> s l (h d)")), weights


class GEGLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        x, gate = x.chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """Pre-LayerNorm GEGLU feed-forward."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult * 2), GEGLU(),
                                 nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SelfBlock(nn.Module):
    """Latent self-attention + feed-forward, both pre-norm and residual."""

    def __init__(self, cfg: AtomizerConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.latent_dim)
        self.attn = Attention(cfg.latent_dim, cfg.latent_heads, cfg.latent_dim_head, dropout=cfg.attn_dropout)
        self.ff = FeedForward(cfg.latent_dim, cfg.ff_mult, cfg.ff_dropout)

    def forward(self, z: Tensor) -> Tensor:
        z = z + self.attn(self.norm(z))[0]
        return z + self.ff(z)


class CrossBlock(nn.Module):
    """Latents attend to atoms (keys/values from the factorised projection), then feed-forward."""

    def __init__(self, cfg: AtomizerConfig, part_dims: tuple[int, int, int, int]):
        super().__init__()
        inner = cfg.cross_heads * cfg.cross_dim_head
        self.to_kv = FactorizedTokenProjection(part_dims, 2 * inner)
        self.norm = nn.LayerNorm(cfg.latent_dim)
        self.attn = Attention(cfg.latent_dim, cfg.cross_heads, cfg.cross_dim_head, dropout=cfg.attn_dropout,
                              external_kv=True)
        self.ff = FeedForward(cfg.latent_dim, cfg.ff_mult, cfg.ff_dropout)

    def forward(self, z: Tensor, kv: Tensor, mask: Tensor | None, return_weights: bool = False):
        out, w = self.attn(self.norm(z), kv=kv, mask=mask, return_weights=return_weights)
        z = z + out
        return z + self.ff(z), w

    def forward_streaming(self, z: Tensor, chunks) -> Tensor:
        """Exact cross-attention over atoms delivered in chunks, with an online softmax.

        ``chunks`` yields ``(kv (S, n, 2*inner), mask (S, n))``; memory is bounded by one chunk. The
        running maximum ``m``, normaliser ``l`` and accumulator ``acc`` are rescaled as each chunk
        arrives, so the result equals attention over all atoms at once.
        """
        attn = self.attn
        h, d = attn.heads, attn.dim_head
        q = rearrange(attn.to_q(self.norm(z)), "s l (h d) -> s h l d", h=h).float() / math.sqrt(d)
        m = torch.full(q.shape[:-1] + (1,), float("-inf"), device=z.device)  # (S, H, L, 1)
        l = torch.zeros_like(m)
        acc = torch.zeros_like(q)  # (S, H, L, d)
        for kv, mask in chunks:
            k, v = rearrange(kv.float(), "s n (two h d) -> two s h n d", two=2, h=h)
            logits = (q @ k.transpose(-1, -2)).masked_fill(~mask[:, None, None, :], float("-inf"))
            m_new = torch.maximum(m, logits.amax(-1, keepdim=True))
            safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(logits - safe)
            scale = torch.exp(m - safe)
            l = l * scale + p.sum(-1, keepdim=True)
            acc = acc * scale + p @ v
            m = m_new
        out = attn.to_out(rearrange(acc / l, "s h l d -> s l (h d)").to(z.dtype))
        z = z + out
        return z + self.ff(z)


class AttentionPool(nn.Module):
    """One learned query cross-attends over the latents; LayerNorm; Linear to the logits."""

    def __init__(self, dim: int, heads: int, dim_head: int, num_classes: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head)
        self.out_norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, z: Tensor) -> Tensor:
        q = self.query.expand(z.shape[0], -1, -1)
        pooled = self.attn(q, context=self.norm(z))[0][:, 0]  # (S, D)
        return self.fc(self.out_norm(pooled))


# Fused attention kernels whose outputs (latent-sized: the attended values and the log-sum-exp) are kept
# when a cross block is checkpointed, so backward recomputes only the atoms' keys/values, not attention.
_ATTENTION_OPS = tuple(getattr(torch.ops.aten, name).default for name in (
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
) if hasattr(torch.ops.aten, name))


def _keep_attention(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Selective-checkpoint policy of :meth:`Atomizer.encode`: save the attention outputs, recompute the rest.

    (Saving the latent-sized matmuls too was measured: 2 % faster, 16 % more peak memory; not worth it.)
    """
    return CheckpointPolicy.MUST_SAVE if op in _ATTENTION_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _checkpoint_context():
    return create_selective_checkpoint_contexts(_keep_attention)


def prune_index(mask: Tensor, p: float, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Keep a random ``1 - p`` of each set's VALID atoms.

    Returns ``index`` (S, K) into the atoms and ``keep`` (S, K) (False where a set keeps fewer than K).
    """
    n_valid = mask.sum(1)
    k = torch.ceil((1.0 - p) * n_valid).long().clamp_min(1)
    kmax = int(k.max())
    scores = torch.rand(mask.shape, device=mask.device, generator=generator)
    scores = scores.masked_fill(~mask, 2.0)  # invalid atoms sort last
    index = scores.topk(kmax, dim=1, largest=False, sorted=True).indices
    keep = torch.arange(kmax, device=mask.device)[None, :] < k[:, None]
    return index, keep


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class Atomizer(nn.Module):
    """Atoms in, class logits out. ``forward(batch)`` -> (S, C); see :meth:`forward`."""

    input_kind = "atoms"

    def __init__(self, cfg: AtomizerConfig):
        super().__init__()
        self.cfg = cfg
        enc = cfg.encoding
        self.encoder = AtomEncoder(enc, cfg.band_stats)
        part_dims = (enc.value_dim, enc.pos_dim, enc.pos_dim, enc.band_dim)
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, cfg.latent_dim) * 0.02)

        def block() -> nn.ModuleDict:
            return nn.ModuleDict({"cross": CrossBlock(cfg, part_dims),
                                  "self": nn.ModuleList(SelfBlock(cfg) for _ in range(cfg.self_per_cross))})

        first = block()
        if cfg.depth > 1 and cfg.tie_weights:
            shared = block()
            self.blocks = nn.ModuleList([first] + [shared] * (cfg.depth - 1))
        else:
            self.blocks = nn.ModuleList([first] + [block() for _ in range(cfg.depth - 1)])
        self.head = AttentionPool(cfg.latent_dim, cfg.latent_heads, cfg.latent_dim_head, cfg.num_classes)
        #: Compute keys/values from materialised tokens (benchmark reference; same function, slower).
        self.reference_embedding = False

    def forward(self, batch: AtomBatch, return_attention: bool = False,
                generator: torch.Generator | None = None, chunk_size: int | None = None):
        """Classify atom sets: :meth:`encode`, then the attention-pooling head.

        Args:
            batch: Padded atom sets (``mask`` False for padding and nodata).
            return_attention: Also return, per block, the cross-attention weights (S, H, L, N) over all
                atoms of the batch (pruning is skipped when asked, so weights map onto every atom).
            generator: RNG for token pruning (training).
            chunk_size: At evaluation, stream atoms through each cross-attention in chunks of this many
                atoms (exact online softmax; peak memory independent of the number of atoms).

        Returns:
            logits (S, C), or ``(logits, [weights per block])``.
        """
        out = self.encode(batch, return_attention=return_attention, generator=generator, chunk_size=chunk_size)
        if return_attention:
            return self.head(out[0]), out[1]
        return self.head(out)

    def encode(self, batch: AtomBatch, return_attention: bool = False, generator: torch.Generator | None = None,
               chunk_size: int | None = None, prune: bool | None = None):
        """The final latents ``(S, L, D)`` of atom sets (what the head reads); arguments as :meth:`forward`.

        ``prune`` overrides token pruning (default: in training mode when ``cfg.prune_p > 0``).
        Returns ``z`` or, with ``return_attention``, ``(z, [weights per block])``.
        """
        if batch.value.shape[1] == 0 or not bool(batch.mask.any(1).all()):
            raise ValueError("empty token set: every set in the batch needs at least one valid atom")
        if chunk_size is not None and not self.training and not return_attention:
            return self._encode_streaming(batch, chunk_size)
        v_all, fx, fy, fb = self.encoder.parts(batch)  # (S,N,Dv), (X,Dp), (Y,Dp), (B,Db)
        z = self.latents.expand(batch.num_sets, -1, -1)  # (S, L, D)
        if prune is None:
            prune = self.training and self.cfg.prune_p > 0
        prune = prune and not return_attention
        # Sets with no padding or nodata (a batch of one modality) keep equally many atoms after pruning:
        # no mask at all then, so attention takes its dense kernel (one host sync per forward).
        dense = bool(batch.mask.all())
        weights = []
        for blk in self.blocks:
            if prune:
                idx, keep = prune_index(batch.mask, self.cfg.prune_p, generator)  # (S, K)
                g = lambda t: torch.gather(t, 1, idx)  # noqa: E731
                v = torch.gather(v_all, 1, idx[..., None].expand(-1, -1, v_all.shape[-1]))
                xi, yi, band, mask = g(batch.xi), g(batch.yi), g(batch.band), None if dense else keep
            else:
                v, xi, yi, band, mask = v_all, batch.xi, batch.yi, batch.band, None if dense else batch.mask
            args = (z, v, fx, fy, fb, xi, yi, band, mask)
            if self.cfg.checkpoint_tokens and self.training and torch.is_grad_enabled() and not return_attention:
                # keep the block's inputs and the attention's (latent-sized) outputs; backward recomputes
                # the atoms' keys/values, not the attention. Under autocast, plain checkpointing: tied
                # blocks reuse cached weight casts, so the recomputation's op sequence differs from the
                # forward's, which selective checkpointing refuses.
                autocast = torch.is_autocast_enabled(z.device.type)
                z, w = checkpoint(self._cross, blk["cross"], *args, use_reentrant=False,
                                  context_fn=noop_context_fn if autocast else _checkpoint_context)
            else:
                z, w = self._cross(blk["cross"], *args, return_weights=return_attention)
            if return_attention:
                weights.append(w)
            for sb in blk["self"]:
                z = sb(z)
        return (z, weights) if return_attention else z

    def _cross(self, cross: "CrossBlock", z: Tensor, v: Tensor, fx: Tensor, fy: Tensor, fb: Tensor, xi: Tensor,
               yi: Tensor, band: Tensor, mask: Tensor | None, return_weights: bool = False):
        """One cross-attention block over the atoms (keys/values projected from the feature tables)."""
        if self.reference_embedding:  # the authors' way: materialise (S, K, token_dim), LayerNorm, project
            kv = cross.to_kv.reference(torch.cat([v, fx[xi], fy[yi], fb[band]], -1))
        else:
            kv = cross.to_kv(v, fx, fy, fb, xi, yi, band)  # (S, K, 2 * inner)
        return cross(z, kv, mask, return_weights=return_weights)

    def _encode_streaming(self, batch: AtomBatch, chunk_size: int) -> Tensor:
        fx = self.encoder.coord_features(batch.coord_x)
        fy = self.encoder.coord_features(batch.coord_y)
        fb = self.encoder.band_features(batch.band_table)
        n = batch.value.shape[1]

        def chunks(to_kv):
            for a in range(0, n, chunk_size):
                sl = slice(a, a + chunk_size)
                band = batch.band[:, sl]
                v = self.encoder.value_features(batch, batch.value[:, sl], band)
                yield to_kv(v, fx, fy, fb, batch.xi[:, sl], batch.yi[:, sl], band), batch.mask[:, sl]

        z = self.latents.expand(batch.num_sets, -1, -1)
        for blk in self.blocks:
            z = blk["cross"].forward_streaming(z, chunks(blk["cross"].to_kv))
            for sb in blk["self"]:
                z = sb(z)
        return z

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_checkpoint(cls, path, map_location: str | torch.device = "cpu") -> "Atomizer":
        """Rebuild a model from a checkpoint written by :func:`atomizer.checkpoint.save_checkpoint`."""
        from atomizer.checkpoint import load_model

        model = load_model(path, map_location=map_location)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not an Atomizer")
        return model
