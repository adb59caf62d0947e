"""Masked-atom pretraining: the S2MAE idea for atom sets.

Hide most atoms of an unlabelled image (default 90%, as S2MAE found best for redundant spectra), encode
the visible ones with the Atomizer encoder (:meth:`atomizer.models.atomizer.Atomizer.encode`), and reconstruct the
hidden atoms' values with a light decoder whose queries are the hidden atoms' (position, GSD,
wavelength, bandwidth) encodings: the coordinate and band feature tables gathered at the hidden atoms,
projected, one cross-attention over the latents, a feed-forward and a linear map to one scalar.

Read top to bottom: the config, the data, the task (:class:`PretrainTask`, the loop's hooks). The pieces live in their layers: unlabelled images
in :mod:`atomizer.data.unlabelled`, the masking kinds and target in :mod:`atomizer.atoms.masking`, the
decoder in :mod:`atomizer.models.masked`, loading the encoder into a classifier in
:func:`atomizer.models.checkpoint.load_encoder_weights`.

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

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from atomizer.atoms.masking import MASKINGS, mask_atoms, split_atoms
from atomizer.atoms.tokens import AtomBatch, collate
from atomizer.core.config import Config
from atomizer.core.runtime import autocast, check_precision
from atomizer.data.modalities import Assignment, load_modalities
from atomizer.data.unlabelled import UnlabelledImages
from atomizer.engine.loaders import AsRead, ModalityDataset
from atomizer.engine.loop import Loop, Step, Task, state_hash
from atomizer.models.atomizer import Atomizer, AtomizerConfig
from atomizer.models.checkpoint import load_into, save_checkpoint
from atomizer.models.masked import MaskedAtomDecoder, MaskedAtomModel

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
# The task: the loop's hooks
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


class PretrainTask(Task):
    """Masked-atom pretraining as the :class:`~atomizer.engine.loop.Loop`'s hooks: the reconstruction loss
    of a fixed held-in batch is logged at step 0, every ``eval_every`` steps and at the end."""

    def __init__(self, cfg: PretrainConfig, loop: Loop):
        self.cfg, self.loop = cfg, loop
        self.device = loop.device

    def on_start(self) -> None:
        cfg, loop, device = self.cfg, self.loop, self.device
        self.data = build_pretrain_dataset(cfg)
        fixed = build_pretrain_dataset(cfg, self.data.base, random_window=False)
        self.n = n = len(self.data)
        self.batch_size = min(cfg.batch_size, n)
        self.per_epoch = max(1, n // self.batch_size)
        self.model = model = build_models(cfg).to(device)
        loop.attach(model, cfg.steps)
        loop.resume_from(self._load)
        # A fixed batch (centred windows, fixed masks) whose reconstruction loss is comparable across steps.
        eval_items = [fixed[i] for i in range(min(cfg.eval_images, n))]
        eval_vis, eval_tgt, _ = _masked_batch(eval_items, cfg, (cfg.seed, 7, 7))
        self.eval_vis, self.eval_tgt = eval_vis.to(device), eval_tgt.to(device)
        if loop.step == 0:
            loop.log.write(kind="eval", step=0, loss=self.evaluate(), time=time.time())

    def _load(self, path: Path) -> dict:
        extra = load_into(self.model.atomizer, path)
        self.model.decoder.load_state_dict(extra["decoder"])
        return extra

    @torch.no_grad()
    def evaluate(self) -> float:
        """The reconstruction loss of the fixed batch."""
        self.model.eval()
        with autocast(self.cfg.precision, self.device):
            loss, _ = self.model(self.eval_vis, self.eval_tgt)
        self.model.train()
        return float(loss)

    def on_checkpoint(self, path: Path) -> None:
        save_checkpoint(
            path,
            self.model.atomizer,
            {
                "kind": "pretrain",
                **self.loop.state(),
                "decoder": self.model.decoder.state_dict(),
                "pretrain_config": self.cfg.to_dict(),
            },
        )

    def steps(self) -> Iterator[Step]:
        cfg, loop, data, bs = self.cfg, self.loop, self.data, self.batch_size
        while loop.step < cfg.steps:
            epoch, pos = divmod(loop.step, self.per_epoch)
            data.set_epoch(epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
            idx = perm[pos * bs : (pos + 1) * bs].tolist()
            yield epoch, [_masked_batch([data[i] for i in idx], cfg, (cfg.seed, 1, loop.step))]

    def training_step(self, batch: tuple[AtomBatch, AtomBatch, Tensor]) -> tuple[Tensor, int, dict]:
        vis, tgt, hidden = batch
        loss, _ = self.model(vis.to(self.device), tgt.to(self.device))
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

    def on_step_end(self, epoch: int) -> None:
        cfg, loop = self.cfg, self.loop
        if cfg.eval_every and loop.step % cfg.eval_every == 0 and loop.step < cfg.steps:
            loop.log.write(kind="eval", step=loop.step, loss=self.evaluate(), time=time.time())
        if loop.checkpoint_due():
            self.on_checkpoint(loop.last)

    def on_end(self) -> dict:
        cfg, loop = self.cfg, self.loop
        final = self.evaluate()
        if not any(r["kind"] == "eval" and r["step"] == loop.step for r in loop.log.read()):  # resumed at the end
            loop.log.write(kind="eval", step=loop.step, loss=final, time=time.time())
        self.on_checkpoint(loop.last)
        evals = [r for r in loop.log.read() if r["kind"] == "eval"]
        return {
            "out_dir": str(loop.out),
            "checkpoint": str(loop.last),
            "step": loop.step,
            "masking": cfg.masking,
            "mask_ratio": cfg.mask_ratio,
            "images": self.n,
            "eval_loss_start": evals[0]["loss"],
            "eval_loss_end": final,
            "weights_fingerprint": state_hash(self.model.atomizer),
        }


def pretrain(cfg: PretrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Masked-atom pretraining of an Atomizer encoder; returns a summary (paths, losses, step).

    ``<out_dir>/checkpoints/last.pt`` is the pretrained checkpoint to pass as ``init``.

    Raises:
        FileExistsError: ``out_dir`` already holds a run and ``resume`` is False.
        LockedError: another process is writing ``out_dir`` (its lock is held for the whole run).
    """
    loop = Loop(cfg, resume, progress=progress, desc=f"pretrain {cfg.masking}")
    return loop.fit(PretrainTask(cfg, loop))
