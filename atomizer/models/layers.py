"""Layers shared by the models: the factorised token projection, one ``Attention`` for cross and self
attention, the GEGLU feed-forward, the blocks built from them (:class:`SelfBlock`, :class:`CrossBlock`,
:class:`LatentBlock`, the weight-tied stack :class:`TiedStack`) and the attention-pooling head. Pure torch (and einops).

Every block is the same pre-norm residual step (:func:`residual_step`): ``z + attn(norm(z))``, then
``z + ff(z)``. The Atomizer and the pixel Perceiver stack the same blocks (a cross-attention block, then
self-attention blocks) and tie every block after the first the same way; the ViT is a stack of self blocks.

**Fused kernels.** :class:`Attention` calls :func:`torch.nn.functional.scaled_dot_product_attention`,
and with ``mask=None`` it passes no ``attn_mask``: the flash and memory-efficient kernels can then run
(on CUDA, flash takes no mask at all). Callers pass ``None`` whenever no atom of the batch is padding
or nodata (:meth:`atomizer.models.atomizer.Atomizer.encode`).

Shapes: S sets in a batch, N (or K) tokens, L latents or queries, D widths, H heads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

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

    def forward(self, v: Tensor, fx: Tensor, fy: Tensor, fb: Tensor, xi: Tensor, yi: Tensor, band: Tensor) -> Tensor:
        """v (S,K,Dv); fx (X,Dp); fy (Y,Dp); fb (B,Db); xi, yi, band (S,K) -> (S, K, out)."""
        a = self.proj.weight * self.norm.weight  # (out, D)
        av, ax, ay, ab = a.split(self.part_dims, dim=1)
        bias = self.proj.weight @ self.norm.bias  # (out,)
        a1 = a.sum(1)  # (out,)
        d = self.token_dim
        # LayerNorm statistics from per-row sums and sums of squares of each part (S, K, 1)
        s = (v.sum(-1) + fx.sum(-1)[xi] + fy.sum(-1)[yi] + fb.sum(-1)[band])[..., None]
        q = (v.square().sum(-1) + fx.square().sum(-1)[xi] + fy.square().sum(-1)[yi] + fb.square().sum(-1)[band])[
            ..., None
        ]
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

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        dropout: float = 0.0,
        external_kv: bool = False,
    ):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head, self.dropout = heads, dim_head, dropout
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_kv: nn.Module | None = (
            None if external_kv else nn.Linear(context_dim or query_dim, 2 * inner, bias=False)
        )
        self.to_out = nn.Linear(inner, query_dim)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        kv: Tensor | None = None,
        mask: Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """x (S, Lq, Dq); context (S, N, Dc) or kv (S, N, 2*inner); mask (S, N) True=attend."""
        h = self.heads
        q = rearrange(self.to_q(x), "s l (h d) -> s h l d", h=h)
        if kv is None:
            if self.to_kv is None:
                raise ValueError("this attention projects no keys/values (external_kv): pass kv")
            kv = self.to_kv(x if context is None else context)
        k, v = rearrange(kv, "s n (two h d) -> two s h n d", two=2, h=h)
        attn_mask = None if mask is None else mask[:, None, None, :]
        weights: Tensor | None = None
        if return_weights:
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(self.dim_head)  # (S, H, Lq, N)
            if attn_mask is not None:
                logits = logits.masked_fill(~attn_mask, float("-inf"))
            weights = logits.softmax(-1)
            out = weights @ v
        else:  # no mask: a fused kernel (flash / memory-efficient) may run
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
            )
        return self.to_out(rearrange(out, "s h l d -> s l (h d)")), weights


class GEGLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        x, gate = x.chunk(2, dim=-1)
        return x * F.gelu(gate)


def drop_path(x: Tensor, p: float, training: bool, generator: torch.Generator | None = None) -> Tensor:
    """Stochastic depth: zero a residual branch ``x`` (S, ...) for a random ``p`` of the sets, rescale the rest.

    Identity at evaluation or when ``p == 0``.
    """
    if not training or p == 0.0:
        return x
    keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, generator=generator) >= p
    return x * keep.to(x.dtype) / (1.0 - p)


class FeedForward(nn.Module):
    """Pre-LayerNorm GEGLU feed-forward."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim * mult * 2), GEGLU(), nn.Dropout(dropout), nn.Linear(dim * mult, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# --------------------------------------------------------------------------------------------------
# Blocks and the weight-tied stack
# --------------------------------------------------------------------------------------------------


def residual_step(
    z: Tensor,
    norm: nn.Module,
    attn: nn.Module,
    ff: nn.Module,
    drop_p: float = 0.0,
    training: bool = False,
    **attn_kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """The pre-norm residual step of every block: ``z + attn(norm(z))``, then ``z + ff(z)``.

    ``attn`` is an :class:`Attention` (``attn_kwargs``: ``context``, ``kv``, ``mask``, ``return_weights``);
    ``drop_p`` is the stochastic depth of both branches. Returns the new ``z`` and the attention weights
    (``None`` unless asked).
    """
    out, weights = attn(norm(z), **attn_kwargs)
    z = z + drop_path(out, drop_p, training)
    return z + drop_path(ff(z), drop_p, training), weights


class SelfBlock(nn.Module):
    """Self-attention + GEGLU feed-forward, both pre-norm and residual (latents, or ViT tokens)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        ff_mult: int = 4,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head, dropout=attn_dropout)
        self.ff = FeedForward(dim, ff_mult, ff_dropout)
        self.drop_path = drop_path

    def forward(self, z: Tensor) -> Tensor:
        return residual_step(z, self.norm, self.attn, self.ff, self.drop_path, self.training)[0]


class CrossBlock(nn.Module):
    """Queries (latents) attend to a context, then feed-forward; both pre-norm and residual.

    Keys and values come from ``context`` through the attention's own projection (``context_dim``), or,
    with ``to_kv`` (the Atomizer's :class:`FactorizedTokenProjection`), are computed by the caller with
    ``to_kv`` and passed as ``kv``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        to_kv: nn.Module | None = None,
        ff_mult: int = 4,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if to_kv is not None:
            self.to_kv = to_kv  # registered first: parameter order (optimizer state) as before
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(
            dim, heads, dim_head, context_dim=context_dim, dropout=attn_dropout, external_kv=to_kv is not None
        )
        self.ff = FeedForward(dim, ff_mult, ff_dropout)
        self.drop_path = drop_path

    def forward(
        self,
        z: Tensor,
        kv: Tensor | None = None,
        mask: Tensor | None = None,
        return_weights: bool = False,
        context: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """z (S, L, D); kv (S, N, 2*inner) or context (S, N, Dc); mask (S, N) True=attend, or None (fused kernels)."""
        return residual_step(
            z,
            self.norm,
            self.attn,
            self.ff,
            self.drop_path,
            self.training,
            context=context,
            kv=kv,
            mask=mask,
            return_weights=return_weights,
        )

    def forward_streaming(self, z: Tensor, chunks: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
        """Exact cross-attention over a context delivered in chunks, with an online softmax (evaluation).

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


class LatentBlock(nn.ModuleDict):
    """One block of a Perceiver stack: its modules by name (the names are the checkpoints' keys).

    ``"self"`` holds the latent :class:`SelfBlock` s that follow the cross-attention; the cross-attention
    is ``"cross"`` (a :class:`CrossBlock`, the Atomizer) or the modules of one :func:`residual_step`
    (``"norm"``, ``"cross"`` an :class:`Attention`, ``"ff"``: the pixel Perceiver's layout).
    """

    def __init__(self, cross: dict[str, nn.Module], self_blocks: Iterable[SelfBlock]):
        super().__init__({**cross, "self": nn.ModuleList(self_blocks)})

    @property
    def cross_block(self) -> CrossBlock:
        return cast(CrossBlock, self["cross"])  # ModuleDict items are untyped (the Atomizer's layout)

    def attend_latents(self, z: Tensor) -> Tensor:
        """``z`` through the block's latent self-attention blocks."""
        for block in cast(nn.ModuleList, self["self"]):
            z = block(z)
        return z


M = TypeVar("M", bound=nn.Module)


class TiedStack(nn.ModuleList, Generic[M]):
    """``depth`` blocks from ``make_block``; with ``tie_weights`` every block after the first is one module.

    (The Perceiver recipe: the first block reads the input with its own weights, the others share theirs.)
    """

    def __init__(self, make_block: Callable[[], M], depth: int, tie_weights: bool):
        first = make_block()
        if depth > 1 and tie_weights:
            shared = make_block()
            super().__init__([first] + [shared] * (depth - 1))
        else:
            super().__init__([first] + [make_block() for _ in range(depth - 1)])

    def __iter__(self) -> Iterator[M]:
        return cast(Iterator[M], super().__iter__())  # ModuleList items are untyped


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


class DenseDecoder(nn.Module):
    """Perceiver-IO decoder: one query per output pixel reads the latents.

    A query is coded from its position (metres from the window centre, the atoms' positional encoding) and
    the output GSD (the atoms' GSD code), projected to the latent width, then one pre-norm cross-attention
    over every latent (a *global* decoder) and a feed-forward, then LayerNorm + Linear to the class logits.
    Queries are processed ``chunk`` at a time: memory is bounded whatever the output size.
    """

    def __init__(self, query_features: int, dim: int, heads: int, dim_head: int, num_classes: int, ff_mult: int = 4):
        super().__init__()
        self.to_query = nn.Sequential(nn.Linear(query_features, dim), nn.GELU(), nn.Linear(dim, dim))
        self.norm_q = nn.LayerNorm(dim)
        self.norm_z = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head)
        self.ff = FeedForward(dim, ff_mult)
        self.out_norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, z: Tensor, features: Callable[[slice], Tensor], num_queries: int, chunk: int = 4096) -> Tensor:
        """Logits (S, Q, C) of ``num_queries`` queries whose input features ``features(slice)`` (S, q, F) are
        built chunk by chunk."""
        context = self.norm_z(z)
        out = []
        for a in range(0, num_queries, chunk):
            q = self.to_query(features(slice(a, a + chunk)))
            q, _ = residual_step(q, self.norm_q, self.attn, self.ff, context=context)
            out.append(self.fc(self.out_norm(q)))
        return torch.cat(out, dim=1)


#: A chunk of atoms as the local decoder reads it: keys/values (S, c, 2 * inner), positions ``x``, ``y``
#: (S, c) in metres from the window centre, and ``valid`` (S, c) (False for padding and nodata).
AtomChunk = tuple[Tensor, Tensor, Tensor, Tensor]


class LocalDenseDecoder(nn.Module):
    """A *local* dense decoder: spatial latents on a ``grid x grid`` lattice over each window, each output
    pixel reading only its nearest spatial latents.

    1. A spatial latent per cell is coded from the cell's centre and size (the queries' own features), reads
       the global latents (the encoder's output: context) and then **the atoms inside its cell** (a local
       cross-attention: a per-cell softmax over the cell's atoms, computed chunk by chunk with an online
       softmax, so memory does not grow with the number of atoms and no cell is padded).
    2. Each output query (the same position + GSD code as :class:`DenseDecoder`) attends to the 3 x 3 spatial
       latents around its cell (fewer at the border), then a feed-forward, LayerNorm + Linear to the logits.

    Per output pixel it reads 9 latents instead of all of them; per window it adds ``grid**2`` cells reading
    the latents and one pass over the atoms. The cells span each window's own extent (from its atoms), so a
    window's spatial latents are the same whatever output GSD is asked.
    """

    def __init__(
        self,
        query_features: int,
        part_dims: tuple[int, int, int, int],
        dim: int,
        heads: int,
        dim_head: int,
        atom_heads: int,
        atom_dim_head: int,
        num_classes: int,
        grid: int = 8,
        ff_mult: int = 4,
    ):
        super().__init__()
        if grid < 1:
            raise ValueError(f"the local decoder's grid must have at least 1 cell a side, got {grid}")
        self.grid = grid
        self.to_cell = nn.Sequential(nn.Linear(query_features, dim), nn.GELU(), nn.Linear(dim, dim))
        self.to_query = nn.Sequential(nn.Linear(query_features, dim), nn.GELU(), nn.Linear(dim, dim))
        # 1a. cells read the global latents
        self.norm_c = nn.LayerNorm(dim)
        self.norm_z = nn.LayerNorm(dim)
        self.attn_z = Attention(dim, heads, dim_head)
        self.ff_z = FeedForward(dim, ff_mult)
        # 1b. cells read their atoms (keys/values projected from the atoms' parts, like the encoder's)
        self.atom_heads, self.atom_dim_head = atom_heads, atom_dim_head
        inner = atom_heads * atom_dim_head
        self.norm_a = nn.LayerNorm(dim)
        self.to_q_atoms = nn.Linear(dim, inner, bias=False)
        self.to_kv_atoms = FactorizedTokenProjection(part_dims, 2 * inner)
        self.out_atoms = nn.Linear(inner, dim)
        self.ff_a = FeedForward(dim, ff_mult)
        # 2. queries read their neighbouring cells
        self.norm_cells = nn.LayerNorm(dim)
        self.to_kv_cells = nn.Linear(dim, 2 * heads * dim_head, bias=False)
        self.norm_q = nn.LayerNorm(dim)
        self.attn_q = Attention(dim, heads, dim_head, external_kv=True)
        self.ff = FeedForward(dim, ff_mult)
        self.out_norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        offsets = torch.tensor([(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)], dtype=torch.long)
        self.neighbours: Tensor
        self.register_buffer("neighbours", offsets, persistent=False)

    def cell_of(self, x: Tensor, y: Tensor, half: Tensor) -> tuple[Tensor, Tensor]:
        """Row and column (S, n) of the cells holding the points ``x``, ``y`` (S, n) of windows of half-extent
        ``half`` (S,) metres (points outside fall in the border cells)."""
        size = (2 * half / self.grid)[:, None]
        col = torch.floor((x + half[:, None]) / size).long().clamp_(0, self.grid - 1)
        row = torch.floor((half[:, None] - y) / size).long().clamp_(0, self.grid - 1)
        return row, col

    def cells(self, half: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Centres ``x``, ``y`` (S, G) and size (S,) of each window's cells, row-major."""
        g = self.grid
        size = 2 * half / g
        c = (torch.arange(g, device=half.device, dtype=half.dtype) + 0.5)[None, :] * size[:, None] - half[:, None]
        x = c[:, None, :].expand(-1, g, -1).reshape(len(half), g * g)
        y = (-c)[:, :, None].expand(-1, -1, g).reshape(len(half), g * g)
        return x, y, size

    def read_atoms(self, cells: Tensor, half: Tensor, chunks: Iterable[AtomChunk]) -> Tensor:
        """Each cell's attention over the atoms inside it, ``(S, G, D)``: a softmax per cell, accumulated
        chunk by chunk (online: running maximum, denominator and weighted sum per cell and head)."""
        s, g2, _ = cells.shape
        h, d = self.atom_heads, self.atom_dim_head
        q = self.to_q_atoms(self.norm_a(cells)).float().view(s, g2, h, d)
        q = torch.cat([q, q.new_zeros(s, 1, h, d)], 1)  # a last, unread cell collects padding and nodata
        m = q.new_full((s, g2 + 1, h), -1e30)
        den = q.new_zeros(s, g2 + 1, h)
        acc = q.new_zeros(s, g2 + 1, h, d)
        for kv, x, y, valid in chunks:
            row, col = self.cell_of(x.float(), y.float(), half)
            cid = torch.where(valid, row * self.grid + col, g2)  # (S, c)
            k, v = kv.float().view(s, -1, 2, h, d).unbind(2)
            idx = cid[..., None, None].expand(-1, -1, h, d)
            score = (torch.gather(q, 1, idx) * k).sum(-1) / math.sqrt(d)  # (S, c, H): each atom vs its cell
            idx_h = cid[..., None].expand(-1, -1, h)
            cmax = m.scatter_reduce(1, idx_h, score.detach(), "amax", include_self=True)
            scale = torch.exp(m - cmax)
            w = torch.exp(score - torch.gather(cmax, 1, idx_h))
            den = (den * scale).scatter_add(1, idx_h, w)
            acc = (acc * scale[..., None]).scatter_add(1, idx, w[..., None] * v)
            m = cmax
        out = acc[:, :g2] / den[:, :g2, :, None].clamp_min(1e-30)  # a cell without atoms reads 0
        return self.out_atoms(out.reshape(s, g2, h * d).to(cells.dtype))

    def forward(
        self,
        z: Tensor,
        features: Callable[[Tensor, Tensor, Tensor], Tensor],
        qx: Tensor,
        qy: Tensor,
        q_gsd: Tensor,
        half: Tensor,
        chunks: Iterable[AtomChunk],
        chunk: int = 4096,
    ) -> Tensor:
        """Logits (S, Q, C) of the queries at ``qx``, ``qy`` (S, Q) metres from the window centres, output GSD
        ``q_gsd`` (S,); ``features(x, y, gsd)`` codes points; ``half`` (S,) each window's half-extent;
        ``chunks`` the atoms (:data:`AtomChunk`), read once."""
        cx, cy, size = self.cells(half)
        c = self.to_cell(features(cx, cy, size))  # (S, G, D)
        c, _ = residual_step(c, self.norm_c, self.attn_z, self.ff_z, context=self.norm_z(z))
        c = c + self.read_atoms(c, half, chunks)
        c = c + self.ff_a(c)
        kv_cells = self.to_kv_cells(self.norm_cells(c))  # (S, G, 2 * inner)
        s, g = z.shape[0], self.grid
        out = []
        for a in range(0, qx.shape[1], chunk):
            x, y = qx[:, a : a + chunk], qy[:, a : a + chunk]
            q = self.to_query(features(x, y, q_gsd))  # (S, q, D)
            row, col = self.cell_of(x, y, half)
            nr = row[..., None] + self.neighbours[:, 0]  # (S, q, 9)
            nc = col[..., None] + self.neighbours[:, 1]
            ok = (nr >= 0) & (nr < g) & (nc >= 0) & (nc < g)
            nid = (nr.clamp(0, g - 1) * g + nc.clamp(0, g - 1)).reshape(s, -1)  # (S, q*9)
            kv = torch.gather(kv_cells, 1, nid[..., None].expand(-1, -1, kv_cells.shape[-1]))
            n = q.shape[1]
            q1 = q.reshape(s * n, 1, -1)
            attended, _ = self.attn_q(self.norm_q(q1), kv=kv.reshape(s * n, 9, -1), mask=ok.reshape(s * n, 9))
            q = (q1 + attended).reshape(s, n, -1)
            q = q + self.ff(q)
            out.append(self.fc(self.out_norm(q)))
        return torch.cat(out, dim=1)
