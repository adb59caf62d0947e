"""Layers shared by the models: the factorised token projection, one ``Attention`` for cross and self
attention, the GEGLU feed-forward and the attention-pooling head. Pure torch (and einops).

Shapes: S sets in a batch, N (or K) tokens, L latents or queries, D widths, H heads.
"""

from __future__ import annotations

import math

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
        self.to_kv = None if external_kv else nn.Linear(context_dim or query_dim, 2 * inner, bias=False)
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
