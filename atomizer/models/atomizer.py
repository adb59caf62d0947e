"""The Atomizer encoder: a Perceiver that reads a set of atoms through cross-attention into latents.

Read top to bottom: config and presets, the blocks, the model. The layers (the factorised token
projection, one ``Attention`` for cross and self attention, the GEGLU feed-forward, the cross and self
blocks, the weight-tied stack, the pooling head) are in :mod:`atomizer.models.layers`.

Shapes: S sets in a batch, N atoms per set (padded), K atoms kept after pruning, L latents, D latent
width, H heads, C classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts, noop_context_fn

from atomizer.atoms.dense import TASKS, DenseQueries
from atomizer.atoms.encodings import AtomEncoder, EncodingConfig, gsd_encoding
from atomizer.atoms.tokens import AtomBatch
from atomizer.core.config import Config
from atomizer.models.layers import (
    AtomChunk,
    AttentionPool,
    CrossBlock,
    DenseDecoder,
    FactorizedTokenProjection,
    LatentBlock,
    LocalDenseDecoder,
    SelfBlock,
    TiedStack,
)

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------

#: The dense decoders of a segmentation Atomizer (:class:`DenseDecoder`, :class:`LocalDenseDecoder`).
DECODERS: tuple[str, ...] = ("global", "local")


@dataclass(frozen=True)
class AtomizerConfig(Config):
    """Hyper-parameters of :class:`Atomizer`. See :data:`PRESETS` for named settings."""

    kind: ClassVar[str] = "model"

    num_classes: int = 19
    task: str = "classification"  # classification (attention pooling) | segmentation (a query per output pixel)
    decoder: str = "global"  # segmentation: global (queries read every latent) | local (spatial latents, 3x3 nearest)
    decoder_grid: int = 8  # local decoder: spatial latents per window side
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
    drop_path: float = 0.0  # stochastic depth: probability of skipping each residual branch per set (training)
    checkpoint_tokens: bool = False  # recompute atom keys/values in backward (memory ~ one block's atoms)
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    band_stats: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # z-score option

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.decoder_grid < 1:
            raise ValueError(f"decoder_grid must be at least 1, got {self.decoder_grid}")
        if not 0.0 <= self.prune_p < 1.0:
            raise ValueError(f"prune_p must be in [0, 1), got {self.prune_p}")
        for name in ("attn_dropout", "ff_dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if isinstance(self.encoding, Mapping):
            enc = dict(self.encoding)
            if "anchors" in enc:
                enc["anchors"] = tuple(tuple(float(v) for v in a) for a in enc["anchors"])
            object.__setattr__(self, "encoding", EncodingConfig(**enc))
        object.__setattr__(self, "band_stats", {k: tuple(v) for k, v in dict(self.band_stats).items()})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "AtomizerConfig":
        """A named preset (:data:`PRESETS`) with ``overrides`` (validated like any config).

        A nested ``encoding`` override changes only the fields it names (``{"encoding": {"gsd_code": False}}``
        keeps the preset's frequencies).
        """
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        if not overrides:
            return PRESETS[name]
        base = PRESETS[name].to_dict()
        merged = {**base, **overrides}
        if isinstance(overrides.get("encoding"), Mapping):  # a partial encoding overrides the preset's, field by field
            merged["encoding"] = {**base["encoding"], **overrides["encoding"]}
        return cls.from_dict(merged)


PRESETS: dict[str, AtomizerConfig] = {
    # CI: a forward pass on a native BigEarthNet patch (80,000 atoms) well under a second on CPU.
    "tiny": AtomizerConfig(
        num_latents=16,
        latent_dim=64,
        depth=2,
        self_per_cross=1,
        cross_dim_head=32,
        latent_heads=2,
        latent_dim_head=32,
        ff_mult=2,
        encoding=EncodingConfig(value_bands=8, value_max_freq=8, pos_bands=8, pos_max_freq=8),
    ),
    # CPU experiments on the embedded data.
    "small": AtomizerConfig(
        num_latents=32,
        latent_dim=128,
        depth=4,
        self_per_cross=2,
        cross_dim_head=64,
        latent_heads=4,
        latent_dim_head=32,
        ff_mult=2,
        encoding=EncodingConfig(value_bands=16, value_max_freq=16, pos_bands=16, pos_max_freq=16),
    ),
    # The paper: 4 x (cross + 4 self), latent dim 512, 8 x 64 latent heads, 1 x 64 cross head, 128 latents.
    "paper": AtomizerConfig(checkpoint_tokens=True),
}


# --------------------------------------------------------------------------------------------------
# Blocks (the block classes and the weight-tied stack are in :mod:`atomizer.models.layers`)
# --------------------------------------------------------------------------------------------------


def _block(cfg: AtomizerConfig, part_dims: tuple[int, int, int, int]) -> LatentBlock:
    """One block: latents attend to the atoms (``"cross"``, keys/values from the factorised projection),
    then ``self_per_cross`` latent self-attention blocks (``"self"``)."""
    inner = cfg.cross_heads * cfg.cross_dim_head
    cross = CrossBlock(
        cfg.latent_dim,
        cfg.cross_heads,
        cfg.cross_dim_head,
        to_kv=FactorizedTokenProjection(part_dims, 2 * inner),
        ff_mult=cfg.ff_mult,
        attn_dropout=cfg.attn_dropout,
        ff_dropout=cfg.ff_dropout,
        drop_path=cfg.drop_path,
    )
    latents = (
        SelfBlock(
            cfg.latent_dim,
            cfg.latent_heads,
            cfg.latent_dim_head,
            cfg.ff_mult,
            attn_dropout=cfg.attn_dropout,
            ff_dropout=cfg.ff_dropout,
            drop_path=cfg.drop_path,
        )
        for _ in range(cfg.self_per_cross)
    )
    return LatentBlock({"cross": cross}, latents)


# Fused attention kernels whose outputs (latent-sized: the attended values and the log-sum-exp) are kept
# when a cross block is checkpointed, so backward recomputes only the atoms' keys/values, not attention.
_ATTENTION_OPS = tuple(
    getattr(torch.ops.aten, name).default
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
    if hasattr(torch.ops.aten, name)
)


def _keep_attention(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Selective-checkpoint policy of :meth:`Atomizer.encode`: save the attention outputs, recompute the rest.

    (Saving the latent-sized matmuls too was measured: 2 % faster, 16 % more peak memory; not worth it.)
    """
    return CheckpointPolicy.MUST_SAVE if op in _ATTENTION_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _checkpoint_context():
    return create_selective_checkpoint_contexts(_keep_attention)


def window_half_extent(batch: AtomBatch) -> Tensor:
    """Half the side (metres) of each set's window (S,): the farthest valid atom from the centre plus half
    its band's GSD (the pixel's edge), over both axes."""
    x = batch.coord_x[batch.xi].abs()
    y = batch.coord_y[batch.yi].abs()
    edge = torch.maximum(x, y) + batch.band_table[:, 2][batch.band] / 2
    return edge.masked_fill(~batch.mask, 0).amax(1).clamp_min(1e-3).float()


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

    input_type = AtomBatch
    #: Set by :func:`atomizer.models.adapters.apply_adapters`: the adapters' config, the base model's config.
    adapter_config: Config | None = None
    adapter_base_config: dict[str, Any] | None = None

    def __init__(self, cfg: AtomizerConfig):
        super().__init__()
        self.cfg = cfg
        enc = cfg.encoding
        self.encoder = AtomEncoder(enc, cfg.band_stats)
        part_dims = (enc.value_dim, enc.pos_dim, enc.pos_dim, enc.band_dim)
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, cfg.latent_dim) * 0.02)

        self.blocks = TiedStack(lambda: _block(cfg, part_dims), cfg.depth, cfg.tie_weights)
        self.head = AttentionPool(cfg.latent_dim, cfg.latent_heads, cfg.latent_dim_head, cfg.num_classes)
        self.dense: DenseDecoder | LocalDenseDecoder | None = None
        if cfg.task == "segmentation":  # the pooling head stays (checkpoint layout) but is not trained
            self.head.requires_grad_(False)
            query_features = 2 * enc.pos_dim + gsd_encoding(torch.ones(1)).shape[-1]
            if cfg.decoder == "local":
                self.dense = LocalDenseDecoder(
                    query_features,
                    part_dims,
                    cfg.latent_dim,
                    cfg.latent_heads,
                    cfg.latent_dim_head,
                    cfg.cross_heads,
                    cfg.cross_dim_head,
                    cfg.num_classes,
                    cfg.decoder_grid,
                    cfg.ff_mult,
                )
            else:
                self.dense = DenseDecoder(
                    query_features, cfg.latent_dim, cfg.latent_heads, cfg.latent_dim_head, cfg.num_classes, cfg.ff_mult
                )
        #: Compute keys/values from materialised tokens (benchmark reference; same function, slower).
        self.reference_embedding = False

    def forward(
        self,
        batch: AtomBatch,
        return_attention: bool = False,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
        queries: DenseQueries | None = None,
    ):
        """Classify atom sets: :meth:`encode`, then the attention-pooling head; with ``queries`` (a
        segmentation model), the logits of every output pixel instead, ``(S, Q, C)`` (:meth:`decode`).

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
        if queries is not None:
            return self.decode(out[0] if return_attention else out, queries, batch=batch, atom_chunk=chunk_size)
        if return_attention:
            return self.head(out[0]), out[1]
        return self.head(out)

    def encode(
        self,
        batch: AtomBatch,
        return_attention: bool = False,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
        prune: bool | None = None,
    ):
        """The final latents ``(S, L, D)`` of atom sets (what the head reads); arguments as :meth:`forward`.

        ``prune`` overrides token pruning (default: in training mode when ``cfg.prune_p > 0``).
        Returns ``z`` or, with ``return_attention``, ``(z, [weights per block])``.
        """
        batch = batch.decoded()  # a batch still in its wire form (runs, DN) is rebuilt where it is
        counts = batch.mask.sum(1).tolist()  # valid atoms per set: the forward's one host sync
        if batch.value.shape[1] == 0 or 0 in counts:
            raise ValueError("empty token set: every set in the batch needs at least one valid atom")
        if chunk_size is not None and not self.training and not return_attention:
            return self._encode_streaming(batch, chunk_size)
        v_all, fx, fy, fb = self.encoder.parts(batch)  # (S,N,Dv), (X,Dp), (Y,Dp), (B,Db)
        z = self.latents.expand(batch.num_sets, -1, -1)  # (S, L, D)
        if prune is None:
            prune = self.training and self.cfg.prune_p > 0
        prune = prune and not return_attention
        # No mask at all where no atom attended to is padding or nodata, so attention takes a fused kernel
        # (flash / memory-efficient; see layers): sets without padding or nodata (``dense``: a batch of one
        # modality), and, when pruning, sets with equally many valid atoms (each keeps as many, all valid).
        dense = min(counts) == batch.value.shape[1]
        pruned_dense = dense or len(set(counts)) == 1
        weights = []
        for blk in self.blocks:
            if prune:
                idx, keep = prune_index(batch.mask, self.cfg.prune_p, generator)  # (S, K)
                g = lambda t: torch.gather(t, 1, idx)  # noqa: E731, B023  (used at once)
                v = torch.gather(v_all, 1, idx[..., None].expand(-1, -1, v_all.shape[-1]))
                xi, yi, band, mask = g(batch.xi), g(batch.yi), g(batch.band), None if pruned_dense else keep
            else:
                v, xi, yi, band, mask = v_all, batch.xi, batch.yi, batch.band, None if dense else batch.mask
            args = (z, v, fx, fy, fb, xi, yi, band, mask)
            if self.cfg.checkpoint_tokens and self.training and torch.is_grad_enabled() and not return_attention:
                # keep the block's inputs and the attention's (latent-sized) outputs; backward recomputes
                # the atoms' keys/values, not the attention. Under autocast, plain checkpointing: tied
                # blocks reuse cached weight casts, so the recomputation's op sequence differs from the
                # forward's, which selective checkpointing refuses.
                autocast = torch.is_autocast_enabled(z.device.type)
                z, w = checkpoint(
                    self._cross,
                    blk.cross_block,
                    *args,
                    use_reentrant=False,
                    context_fn=noop_context_fn if autocast else _checkpoint_context,
                )
            else:
                z, w = self._cross(blk.cross_block, *args, return_weights=return_attention)
            if return_attention:
                weights.append(w)
            z = blk.attend_latents(z)
        return (z, weights) if return_attention else z

    def _cross(
        self,
        cross: "CrossBlock",
        z: Tensor,
        v: Tensor,
        fx: Tensor,
        fy: Tensor,
        fb: Tensor,
        xi: Tensor,
        yi: Tensor,
        band: Tensor,
        mask: Tensor | None,
        return_weights: bool = False,
    ):
        """One cross-attention block over the atoms (keys/values projected from the feature tables)."""
        to_kv = cross.to_kv
        if not isinstance(to_kv, FactorizedTokenProjection):
            raise TypeError(f"an Atomizer cross block projects atoms with a FactorizedTokenProjection, not {to_kv}")
        if self.reference_embedding:  # the authors' way: materialise (S, K, token_dim), LayerNorm, project
            kv = to_kv.reference(torch.cat([v, fx[xi], fy[yi], fb[band]], -1))
        else:
            kv = to_kv(v, fx, fy, fb, xi, yi, band)  # (S, K, 2 * inner)
        return cross(z, kv, mask, return_weights=return_weights)

    def _encode_streaming(self, batch: AtomBatch, chunk_size: int) -> Tensor:
        fx = self.encoder.coord_features(batch.coord_x)
        fy = self.encoder.coord_features(batch.coord_y)
        fb = self.encoder.band_features(batch.band_table, batch.band_names)
        n = batch.value.shape[1]

        def chunks(to_kv):
            for a in range(0, n, chunk_size):
                sl = slice(a, a + chunk_size)
                band = batch.band[:, sl]
                v = self.encoder.value_features(batch, batch.value[:, sl], band, batch.mask[:, sl])
                yield to_kv(v, fx, fy, fb, batch.xi[:, sl], batch.yi[:, sl], band), batch.mask[:, sl]

        z = self.latents.expand(batch.num_sets, -1, -1)
        for blk in self.blocks:
            z = blk.attend_latents(blk.cross_block.forward_streaming(z, chunks(blk.cross_block.to_kv)))
        return z

    def decode(
        self,
        z: Tensor,
        queries: DenseQueries,
        chunk: int = 4096,
        batch: AtomBatch | None = None,
        atom_chunk: int | None = None,
    ) -> Tensor:
        """Per-pixel logits ``(S, Q, C)`` of the output pixels ``queries`` (metres from each window's centre,
        at their GSD) from the latents ``z``: the queries are coded with the atoms' own position and GSD
        encodings, so the output grid is a free choice in metres. Queries go ``chunk`` at a time.

        The local decoder (``decoder: local``) also reads the atoms of ``batch`` (the batch ``z`` was encoded
        from), ``atom_chunk`` atoms at a time (all at once when ``None``).
        """
        if self.dense is None:
            raise ValueError("this Atomizer classifies images (task: classification); it has no dense decoder")
        dtype, device = z.dtype, z.device

        def features(x: Tensor, y: Tensor, gsd_m: Tensor) -> Tensor:
            """Position (metres) and GSD code of points ``x``, ``y`` (S, n) at ``gsd_m`` (S,)."""
            fx, fy = self.encoder.coord_features(x), self.encoder.coord_features(y)
            g = gsd_encoding(gsd_m)[:, None, :].expand(-1, fx.shape[1], -1)
            return torch.cat([fx, fy, g], dim=-1).to(dtype)

        qx, qy, q_gsd = queries.x.to(device), queries.y.to(device), queries.gsd.to(device)
        if isinstance(self.dense, DenseDecoder):
            return self.dense(z, lambda sl: features(qx[:, sl], qy[:, sl], q_gsd), int(qx.shape[1]), chunk)
        if batch is None:
            raise ValueError("the local dense decoder reads the atoms: pass the batch the latents came from")
        batch = batch.decoded()
        half = window_half_extent(batch)
        return self.dense(z, features, qx, qy, q_gsd, half, self._atom_chunks(batch, atom_chunk), chunk)

    def _atom_chunks(self, batch: AtomBatch, chunk: int | None) -> Iterator[AtomChunk]:
        """The local decoder's view of the atoms: keys/values from its own projection, positions in metres."""
        assert isinstance(self.dense, LocalDenseDecoder)
        to_kv = self.dense.to_kv_atoms
        fx = self.encoder.coord_features(batch.coord_x)
        fy = self.encoder.coord_features(batch.coord_y)
        fb = self.encoder.band_features(batch.band_table, batch.band_names)
        n = batch.value.shape[1]
        step = n if chunk is None else chunk
        for a in range(0, n, step):
            sl = slice(a, a + step)
            band, xi, yi, mask = batch.band[:, sl], batch.xi[:, sl], batch.yi[:, sl], batch.mask[:, sl]
            v = self.encoder.value_features(batch, batch.value[:, sl], band, mask)
            yield to_kv(v, fx, fy, fb, xi, yi, band), batch.coord_x[xi], batch.coord_y[yi], mask

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
