"""The masked-atom model: the Atomizer's encoder and a light decoder that reconstructs hidden atoms.

The decoder's queries are the hidden atoms' (position, GSD, wavelength, bandwidth) encodings: the
coordinate and band feature tables gathered at the hidden atoms, projected (factorised, never
materialised), one cross-attention over the latents, a feed-forward and a linear map to one scalar.
The loss is the MSE against :func:`atomizer.atoms.masking.reconstruction_target` over the hidden atoms.
"""

from __future__ import annotations

from torch import Tensor, nn

from atomizer.atoms.masking import reconstruction_target
from atomizer.atoms.tokens import AtomBatch
from atomizer.models.atomizer import Atomizer, AtomizerConfig
from atomizer.models.layers import Attention, FactorizedTokenProjection, FeedForward


class MaskedAtomDecoder(nn.Module):
    """Queries = hidden atoms' (x, y, band) features -> LayerNorm + Linear (factorised, never
    materialised) -> one cross-attention over the latents -> feed-forward -> scalar."""

    def __init__(
        self, cfg: AtomizerConfig, dim: int | None = None, heads: int = 4, dim_head: int = 32, ff_mult: int = 2
    ):
        super().__init__()
        enc = cfg.encoding
        dim = dim or cfg.latent_dim
        self.query = FactorizedTokenProjection((0, enc.pos_dim, enc.pos_dim, enc.band_dim), dim)
        self.context_norm = nn.LayerNorm(cfg.latent_dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head, context_dim=cfg.latent_dim)
        self.ff = FeedForward(dim, ff_mult)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1))

    def forward(self, z: Tensor, fx: Tensor, fy: Tensor, fb: Tensor, xi: Tensor, yi: Tensor, band: Tensor) -> Tensor:
        """z (S, L, D); tables fx (X,Dp), fy (Y,Dp), fb (B,Db); xi, yi, band (S, K) -> (S, K)."""
        none = fx.new_zeros(*xi.shape, 0)
        q = self.query(none, fx, fy, fb, xi, yi, band)
        q = q + self.attn(self.norm(q), context=self.context_norm(z))[0]
        q = q + self.ff(q)
        return self.out(q).squeeze(-1)


class MaskedAtomModel(nn.Module):
    """The Atomizer (its encoder part) and the decoder; ``forward(visible, targets)`` -> (loss, predictions)."""

    def __init__(self, atomizer: Atomizer, decoder: MaskedAtomDecoder, prune_visible: bool = False):
        super().__init__()
        self.atomizer = atomizer
        self.decoder = decoder
        self.prune_visible = prune_visible

    def forward(self, visible: AtomBatch, targets: AtomBatch) -> tuple[Tensor, Tensor]:
        z = self.atomizer.encode(visible, prune=self.prune_visible and self.training)
        targets = targets.decoded()
        enc = self.atomizer.encoder
        fx, fy = enc.coord_features(targets.coord_x), enc.coord_features(targets.coord_y)
        fb = enc.band_features(targets.band_table)
        pred = self.decoder(z, fx, fy, fb, targets.xi, targets.yi, targets.band).float()
        err = (pred - reconstruction_target(targets)).square() * targets.mask
        return err.sum() / targets.mask.sum().clamp_min(1), pred
