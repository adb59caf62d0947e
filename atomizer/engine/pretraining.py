"""Masked-atom pretraining: the S2MAE idea for atom sets.

Hide most atoms of an unlabelled image (default 90%, as S2MAE found best for redundant spectra), encode
the visible ones with the Atomizer encoder (:meth:`atomizer.models.atomizer.Atomizer.encode`), and reconstruct the
hidden atoms' values with a light decoder whose queries are the hidden atoms' (position, GSD,
wavelength, bandwidth) encodings: the coordinate and band feature tables gathered at the hidden atoms,
projected, one cross-attention over the latents, a feed-forward and a linear map to one scalar.

Read top to bottom: the config, the data, the loop. The pieces live in their layers: unlabelled images
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
from collections.abc import Sequence
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
from atomizer.engine.loop import Loop, state_hash
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
        LockedError: another process is writing ``out_dir`` (its lock is held for the whole run).
    """
    loop = Loop(cfg, resume, progress=progress, desc=f"pretrain {cfg.masking}")
    try:
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
        if not any(r["kind"] == "eval" and r["step"] == loop.step for r in loop.log.read()):  # resumed at the end
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
    except BaseException:
        loop.discard_if_untrained()  # a failed start leaves nothing behind
        raise
    finally:
        loop.close()  # the run folder's lock
