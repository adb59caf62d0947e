"""Masked-atom pretraining: the S2MAE idea for atom sets.

Hide most atoms of an unlabelled image (default 90%, as S2MAE found best for redundant spectra), encode
the visible ones with the Atomizer encoder (:meth:`atomizer.models.atomizer.Atomizer.encode`), and reconstruct the
hidden atoms' values with a light decoder whose queries are the hidden atoms' (position, GSD,
wavelength, bandwidth) encodings: the coordinate and band feature tables gathered at the hidden atoms,
projected, one cross-attention over the latents, a feed-forward and a linear map to one scalar.

Read top to bottom: the config, the unlabelled data (datasets without labels, scene tiles, GeoTIFF
folders), the masking kinds, the decoder, the loop, loading the encoder into a classifier, the CLI.

* Masking kinds (each set masked on its own, always at least one visible and one hidden atom):
  ``random`` (atoms), ``band`` (whole bands), ``pixel`` (every band at a position: atoms whose centre
  falls in a hidden cell of the set's finest grid), ``block`` (square blocks of ``block_px`` x
  ``block_px`` finest-grid cells). Band masking hides whole bands, so the realised fraction is the
  attainable one nearest ``mask_ratio`` (3 of 4 bands hide 75%).
* Target: the hidden atoms' values on the fixed, sensor-free scale of
  :func:`atomizer.atoms.encodings.normalize_values` (reflectance 0-0.5 -> [-1, 1], clamped to [-4, 4]), like
  S2MAE's fixed-range target; loss = MSE over the hidden atoms (at most ``max_targets`` per set).
* Checkpoints are ordinary Atomizer checkpoints (``--init`` / ``TrainConfig.init`` reads them) with the
  decoder and optimiser in ``extra``; written atomically, resumable, ``metrics.jsonl`` like training.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from atomizer.atoms.encodings import normalize_values
from atomizer.atoms.tokens import AtomBatch, collate, tokenize
from atomizer.core.config import Config
from atomizer.core.runtime import autocast, check_precision
from atomizer.data.datasets import open_dataset
from atomizer.data.modalities import Assignment, Modality, load_modalities, simulate
from atomizer.data.readers import image_bands, open_image
from atomizer.engine.loaders import ModalityDataset
from atomizer.engine.loop import Loop, state_hash
from atomizer.models.atomizer import Atomizer, AtomizerConfig
from atomizer.models.checkpoint import load_into, save_checkpoint
from atomizer.models.layers import Attention, FactorizedTokenProjection, FeedForward

MASKINGS = ("random", "band", "pixel", "block")
_BAND_FILE = re.compile(r"(?:^|_)(?:B\d{1,2}A?|VV|VH|HH|HV)$")

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass
class PretrainConfig(Config):
    """Everything a pretraining run needs; saved as ``config.yaml`` in the run directory.

    ``sources`` is a list of unlabelled image sources, each a dict with one of:

    * ``dataset: eurosat | bigearthnet`` (``split``, ``root``): a dataset's images, labels ignored;
    * ``path: FILE_OR_FOLDER``: a folder of per-band GeoTIFFs (one image, e.g. a Major-TOM product), a
      GeoTIFF / npz file, or a folder of such files (``pattern``, default ``*.tif``), read with
      :func:`atomizer.data.readers.open_image` (``sensor``: a catalogued name or a sidecar);

    plus optional ``tile_px`` (cut each image into non-overlapping tiles of that many pixels of its
    finest grid, with :func:`atomizer.data.modalities.simulate` windows) and ``limit`` (first N images/tiles).
    """

    kind: ClassVar[str] = "pretraining"

    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    sources: list = field(default_factory=lambda: [{"dataset": "eurosat", "split": "train"}])
    modalities: str | None = "eurosat_train"  # modality set each image is seen through; None = as read
    random_window: bool = True
    mask_ratio: float = 0.9
    masking: str = "random"  # random | band | pixel | block
    block_px: int = 4  # block masking: side of a block in finest-grid pixels
    max_targets: int | None = 1024  # reconstruct at most this many hidden atoms per set (None = all)
    prune_visible: bool = False  # also apply the encoder's token pruning to the visible atoms
    decoder_dim: int | None = None  # default: the latent width
    decoder_heads: int = 4
    decoder_dim_head: int = 32
    steps: int = 200
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    ckpt_every: int = 50
    eval_every: int = 50  # steps between reconstruction losses on a fixed held-in batch (0 = only at the end)
    eval_images: int = 8
    out_dir: str = "runs/pretrain"

    def __post_init__(self) -> None:
        if self.masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}, got {self.masking!r}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not self.sources:
            raise ValueError("sources: give at least one image source")
        check_precision(self.precision)


# --------------------------------------------------------------------------------------------------
# Unlabelled images
# --------------------------------------------------------------------------------------------------


def tile_windows(image, tile_px: int) -> list[tuple[Modality, tuple[float, float]]]:
    """Top-left offsets (m) of the non-overlapping ``tile_px`` tiles of ``image``'s finest grid."""
    names = image_bands(image)
    gsd = min(float(image[b].attrs["gsd_m"]) for b in names)
    exts = []
    for b in names:
        da = image[b]
        g = float(da.attrs["gsd_m"])
        exts.append((da.shape[1] * g, da.shape[0] * g))
    width, height = min(e[0] for e in exts), min(e[1] for e in exts)
    tile_m = tile_px * gsd
    nx, ny = int(width // tile_m), int(height // tile_m)
    mod = Modality("tile", tile_px, gsd, tuple(names))
    return [(mod, (i * tile_m, j * tile_m)) for j in range(ny) for i in range(nx)]


class UnlabelledImages(torch.utils.data.Dataset):
    """Images of several sources as dataset items ``{"image", "target": 0, "id"}`` (loaded lazily).

    Whole images come from their reader; a tile is :func:`atomizer.data.modalities.simulate` of its window
    (all bands at native resolution, so 20 m and 60 m bands keep their own grids).
    """

    multilabel = False
    classes = ["unlabelled"]

    def __init__(self, sources: Sequence[Mapping[str, Any]]):
        self.records: list[tuple] = []  # (source index, loader key, tile window or None, id)
        self._loaders: list = []
        self._cache: dict[tuple[int, Any], Any] = {}
        for si, src in enumerate(sources):
            src = dict(src)
            keys, loader, names = self._source(src)
            self._loaders.append(loader)
            items = []
            for key, name in zip(keys, names):
                if src.get("tile_px"):
                    image = self._image(si, key)
                    items += [
                        (si, key, w, f"{name}_t{k}") for k, w in enumerate(tile_windows(image, int(src["tile_px"])))
                    ]
                else:
                    items.append((si, key, None, name))
                if src.get("limit") and len(items) >= int(src["limit"]):
                    break
            if src.get("limit"):
                items = items[: int(src["limit"])]
            if not items:
                raise ValueError(f"pretraining source #{si} {src} gives no image")
            self.records += items

    @staticmethod
    def _source(src: dict):
        known = {"dataset", "split", "root", "path", "pattern", "sensor", "tile_px", "limit"}
        if set(src) - known:
            raise ValueError(
                f"unknown key(s) {sorted(set(src) - known)} in pretraining source {src}; known: {sorted(known)}"
            )
        if "dataset" in src:
            ds = open_dataset(src["dataset"], src.get("split"), src.get("root"))
            return list(range(len(ds))), (lambda i: ds.load(ds.records[i])), ds.ids()
        if "path" not in src:
            raise ValueError(f"a pretraining source needs 'dataset' or 'path': {src}")
        path = Path(src["path"])
        sensor = src.get("sensor")
        if not path.exists():
            raise FileNotFoundError(f"pretraining source not found: {path}")
        if path.is_file():
            files = [path]
        elif src.get("pattern"):
            files = sorted(path.glob(src["pattern"]))
        else:  # folders of per-band GeoTIFFs (e.g. Major-TOM products) anywhere below, else image files
            files = sorted({f.parent for f in path.rglob("*.tif*") if _BAND_FILE.search(f.stem)})
            files = files or sorted(f for f in path.iterdir() if f.suffix.lower() in (".tif", ".tiff", ".npz"))
        return files, (lambda f: open_image(f, sensor=sensor)), [Path(f).stem for f in files]

    def _image(self, si: int, key: Any):
        if (si, key) not in self._cache:
            self._cache[(si, key)] = self._loaders[si](key)
        return self._cache[(si, key)]

    def __len__(self) -> int:
        return len(self.records)

    def ids(self) -> list[str]:
        return [r[3] for r in self.records]

    def __getitem__(self, i: int) -> dict:
        si, key, window, name = self.records[i]
        image = self._image(si, key)
        if window is not None:
            mod, offset = window
            image = simulate(image, mod, offset_m=offset)
        return {"image": image, "target": torch.tensor(0), "id": name}


class AsRead(torch.utils.data.Dataset):
    """Items of ``base`` tokenized as read (no modality simulation)."""

    def __init__(self, base):
        self.base = base
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        it = self.base[i]
        return {"input": tokenize(it["image"]), "target": it["target"], "id": it["id"], "modality": 0}


def build_pretrain_dataset(
    cfg: PretrainConfig, base: UnlabelledImages | None = None, random_window: bool | None = None
):
    """Atom sets of the unlabelled images: each image through one modality of ``cfg.modalities`` (a
    seeded assignment, random windows per epoch), or as read when ``cfg.modalities`` is None."""
    base = base if base is not None else UnlabelledImages(cfg.sources)
    if not cfg.modalities:
        return AsRead(base)
    mods = load_modalities(cfg.modalities)
    rw = cfg.random_window if random_window is None else random_window
    return ModalityDataset(
        base,
        mods.modalities,
        Assignment.random(len(base), len(mods), cfg.seed).modality_index,
        AtomBatch,
        random_window=rw,
        seed=cfg.seed,
    )


# --------------------------------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------------------------------


def _n_hide(n: Tensor, ratio: float) -> Tensor:
    """Hidden count for ``n`` units: round(ratio * n), at least one hidden and one visible unit."""
    return torch.clamp(torch.round(ratio * n.double()).long(), min=1, max=None).minimum((n - 1).clamp_min(1))


def _rank_hide(scores: Tensor, k: int) -> Tensor:
    """Boolean: the ``k`` lowest scores."""
    out = torch.zeros_like(scores, dtype=torch.bool)
    out[scores.argsort()[:k]] = True
    return out


def grid_cells(batch: AtomBatch, s: int, cell_px: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """For set ``s``: (cell index of each of its valid atoms, integer x, y of those cells, atom indices).

    Cells are ``cell_px`` x ``cell_px`` pixels of the set's finest grid, aligned on its first pixel; an
    atom of a coarser band belongs to the cell holding its centre.
    """
    atoms = batch.mask[s].nonzero().squeeze(1)
    x = batch.coord_x[batch.xi[s, atoms]].double()
    y = batch.coord_y[batch.yi[s, atoms]].double()
    gsd = batch.band_table[batch.band[s, atoms], 2].double()
    g = float(gsd.min())
    fine = gsd <= g + 1e-6
    ix = torch.floor((x - x[fine].min()) / g + 0.5 + 1e-6).long()
    iy = torch.floor((y[fine].max() - y) / g + 0.5 + 1e-6).long()  # rows from the top
    cx, cy = torch.div(ix, cell_px, rounding_mode="floor"), torch.div(iy, cell_px, rounding_mode="floor")
    key = (cx - cx.min()) * (int(cy.max() - cy.min()) + 1) + (cy - cy.min())
    _, cell = torch.unique(key, return_inverse=True)
    return cell, torch.stack([cx, cy], 1), atoms


def mask_atoms(
    batch: AtomBatch,
    ratio: float = 0.9,
    kind: str = "random",
    generator: torch.Generator | None = None,
    block_px: int = 4,
) -> Tensor:
    """Which valid atoms to hide: (S, N) bool (never padding; each set keeps >= 1 visible atom).

    ``random``: ``round(ratio * n)`` atoms. ``band``: whole bands, the prefix of a random band order whose
    atom fraction is nearest ``ratio`` (at least one band hidden and one visible; a one-band set falls
    back to random atoms). ``pixel``: ``round(ratio * cells)`` cells of the finest grid, every band at
    those positions. ``block``: the same with ``block_px`` x ``block_px`` cells.
    """
    if kind not in MASKINGS:
        raise ValueError(f"masking must be one of {MASKINGS}, got {kind!r}")
    S, N = batch.mask.shape
    hidden = torch.zeros(S, N, dtype=torch.bool)
    mask = batch.mask.cpu()
    cpu = batch.to("cpu") if batch.value.device.type != "cpu" else batch
    for s in range(S):
        atoms = mask[s].nonzero().squeeze(1)
        n = atoms.numel()
        if n < 2:
            continue  # nothing can be hidden while keeping one visible atom
        k = kind
        if k == "band":
            bands, inverse, counts = torch.unique(cpu.band[s, atoms], return_inverse=True, return_counts=True)
            if bands.numel() < 2:
                k = "random"
            else:
                order = torch.randperm(bands.numel(), generator=generator)
                frac = counts[order].cumsum(0).double() / n
                j = int((frac[:-1] - ratio).abs().argmin())  # hide order[: j + 1], keep >= 1 band
                hide_band = torch.zeros(bands.numel(), dtype=torch.bool)
                hide_band[order[: j + 1]] = True
                hidden[s, atoms] = hide_band[inverse]
                continue
        if k == "random":
            hidden[s, atoms] = _rank_hide(torch.rand(n, generator=generator), int(_n_hide(torch.tensor(n), ratio)))
            continue
        cell, _, atoms = grid_cells(cpu, s, 1 if k == "pixel" else block_px)
        m = int(cell.max()) + 1
        if m < 2:  # one cell: fall back to random atoms
            hidden[s, atoms] = _rank_hide(torch.rand(n, generator=generator), int(_n_hide(torch.tensor(n), ratio)))
            continue
        hide_cell = _rank_hide(torch.rand(m, generator=generator), int(_n_hide(torch.tensor(m), ratio)))
        hidden[s, atoms] = hide_cell[cell]
    return hidden.to(batch.mask.device)


def _first(sel: Tensor, limit: int | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Index (S, K) of the True entries of each row (in random order when capped at ``limit``) and keep."""
    score = (
        torch.rand(sel.shape, generator=generator)
        if limit is not None
        else torch.arange(sel.shape[1]).double().expand(sel.shape)
    )
    score = score.masked_fill(~sel.cpu(), float("inf"))
    count = sel.sum(1).cpu()
    if limit is not None:
        count = count.clamp(max=limit)
    k = max(1, int(count.max()))
    index = score.argsort(dim=1, stable=True)[:, :k]
    keep = torch.arange(k)[None, :] < count[:, None]
    return index.to(sel.device), keep.to(sel.device)


def split_atoms(
    batch: AtomBatch, hidden: Tensor, max_targets: int | None = None, generator: torch.Generator | None = None
) -> tuple[AtomBatch, AtomBatch]:
    """(visible atoms, target atoms): the unhidden valid atoms, and the hidden ones (at most
    ``max_targets`` per set, drawn at random). Both share the batch's band and coordinate tables."""
    vis_idx, vis_keep = _first(batch.mask & ~hidden)
    tgt_idx, tgt_keep = _first(batch.mask & hidden, max_targets, generator)
    return batch.select(vis_idx, vis_keep), batch.select(tgt_idx, tgt_keep)


def reconstruction_target(atoms: AtomBatch) -> Tensor:
    """(S, K) values on the fixed, sensor-free scale of :func:`normalize_values` (no band statistics)."""
    return normalize_values(atoms.value, atoms.band_table[:, 3][atoms.band])


# --------------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------------


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
        enc = self.atomizer.encoder
        fx, fy = enc.coord_features(targets.coord_x), enc.coord_features(targets.coord_y)
        fb = enc.band_features(targets.band_table)
        pred = self.decoder(z, fx, fy, fb, targets.xi, targets.yi, targets.band).float()
        err = (pred - reconstruction_target(targets)).square() * targets.mask
        return err.sum() / targets.mask.sum().clamp_min(1), pred


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def _masked_batch(items: list[dict], cfg: PretrainConfig, seed: Sequence[int]) -> tuple[AtomBatch, AtomBatch, Tensor]:
    batch = collate([it["input"] for it in items])
    g = torch.Generator().manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))
    hidden = mask_atoms(batch, cfg.mask_ratio, cfg.masking, g, cfg.block_px)
    vis, tgt = split_atoms(batch, hidden, cfg.max_targets, g)
    return vis, tgt, hidden


def build_models(cfg: PretrainConfig) -> MaskedAtomModel:
    atomizer = Atomizer(AtomizerConfig.preset(cfg.preset, num_classes=1, **cfg.model_overrides))
    decoder = MaskedAtomDecoder(atomizer.cfg, cfg.decoder_dim, cfg.decoder_heads, cfg.decoder_dim_head)
    return MaskedAtomModel(atomizer, decoder, cfg.prune_visible)


def pretrain(cfg: PretrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Masked-atom pretraining of an Atomizer encoder; returns a summary (paths, losses, step).

    ``<out_dir>/checkpoints/last.pt`` is the pretrained checkpoint to pass as ``init``.

    Raises:
        FileExistsError: ``out_dir`` already holds a run and ``resume`` is False.
    """
    loop = Loop(cfg, resume, progress=progress, desc=f"pretrain {cfg.masking}")
    device = loop.device
    data = build_pretrain_dataset(cfg)
    fixed = build_pretrain_dataset(cfg, data.base, random_window=False)
    n = len(data)
    batch_size = min(cfg.batch_size, n)
    per_epoch = max(1, n // batch_size)
    model = build_models(cfg).to(device)
    loop.attach(model, cfg.steps)

    def load(path):
        extra = load_into(model.atomizer, path)
        model.decoder.load_state_dict(extra["decoder"])
        return extra

    loop.resume_from(load)
    # A fixed batch (centred windows, fixed masks) whose reconstruction loss is comparable across steps.
    eval_items = [fixed[i] for i in range(min(cfg.eval_images, n))]
    eval_vis, eval_tgt, _ = _masked_batch(eval_items, cfg, (cfg.seed, 7, 7))
    eval_vis, eval_tgt = eval_vis.to(device), eval_tgt.to(device)

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        with autocast(cfg.precision, device):
            loss, _ = model(eval_vis, eval_tgt)
        model.train()
        return float(loss)

    def checkpoint(path: Path) -> None:
        save_checkpoint(
            path,
            model.atomizer,
            {
                "kind": "pretrain",
                **loop.state(),
                "decoder": model.decoder.state_dict(),
                "pretrain_config": cfg.to_dict(),
            },
        )

    def steps():
        while loop.step < cfg.steps:
            epoch, pos = divmod(loop.step, per_epoch)
            data.set_epoch(epoch)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
            idx = perm[pos * batch_size : (pos + 1) * batch_size].tolist()
            yield epoch, [_masked_batch([data[i] for i in idx], cfg, (cfg.seed, 1, loop.step))]

    def loss_of(masked):
        vis, tgt, hidden = masked
        loss, _ = model(vis.to(device), tgt.to(device))
        visible = int(vis.mask.sum())
        return (
            loss,
            vis.num_sets,
            {
                "visible_atoms": visible,
                "hidden_fraction": float(hidden.sum()) / max(1, visible + int(hidden.sum())),
                "target_atoms": int(tgt.mask.sum()),
            },
        )

    def after_step(epoch: int) -> None:
        if cfg.eval_every and loop.step % cfg.eval_every == 0 and loop.step < cfg.steps:
            loop.log.write(kind="eval", step=loop.step, loss=evaluate(), time=time.time())
        if loop.checkpoint_due():
            checkpoint(loop.last)

    if loop.step == 0:
        loop.log.write(kind="eval", step=0, loss=evaluate(), time=time.time())
    loop.run(steps(), loss_of, after_step)
    final = evaluate()
    loop.log.write(kind="eval", step=loop.step, loss=final, time=time.time())
    checkpoint(loop.last)
    evals = [r for r in loop.log.read() if r["kind"] == "eval"]
    return loop.finish(
        {
            "out_dir": str(loop.out),
            "checkpoint": str(loop.last),
            "step": loop.step,
            "masking": cfg.masking,
            "mask_ratio": cfg.mask_ratio,
            "images": n,
            "eval_loss_start": evals[0]["loss"],
            "eval_loss_end": final,
            "weights_fingerprint": state_hash(model.atomizer),
        }
    )


# --------------------------------------------------------------------------------------------------
# Pretrained encoder -> classifier
# --------------------------------------------------------------------------------------------------
