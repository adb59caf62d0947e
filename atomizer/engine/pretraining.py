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

``model: s2mae`` runs S2MAE's pretraining through the same loop instead (:mod:`atomizer.models.s2mae`):
the images are laid out on the canvas of the modality set (:class:`~atomizer.atoms.canvas.CanvasSpec`), a
random ``mask_ratio`` of each image's spatial-spectral cubes is hidden (``masking`` must be ``random``), a
decoder of ``decoder_depth`` blocks (``decoder_dim``, ``decoder_heads``, ``decoder_dim_head``) reconstructs
them, against each cube normalised to [0, 1] with ``norm_target``. ``preset`` and ``model_overrides`` are
the S2MAE's; ``max_targets`` and ``prune_visible`` are the Atomizer's only. The checkpoint is an ``s2mae``
checkpoint (the decoder inside its weights) that ``TrainConfig.init`` reads (:func:`load_pretrained_encoder`).

Progressive pretraining (S2MAE: fMoW-S2, then BigEarthNet): ``source_epochs`` (one count per source) runs
the sources one after another, source ``i`` for ``source_epochs[i]`` epochs over its own images, under one
learning-rate schedule; the run is then exactly that many steps long and ``steps`` is not read. Without
it, every step draws from all sources pooled.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from atomizer.atoms.canvas import CANVAS_BANDS, CanvasBatch, CanvasSpec
from atomizer.atoms.masking import MASKINGS, mask_atoms, split_atoms
from atomizer.atoms.tokens import AtomBatch, collate
from atomizer.core.config import Config
from atomizer.core.runtime import autocast, check_precision
from atomizer.data.image import image_bands
from atomizer.data.modalities import Assignment, load_modalities
from atomizer.data.unlabelled import UnlabelledImages
from atomizer.engine.loaders import AsRead, ModalityDataset
from atomizer.engine.loop import Loop, Step, Task, state_hash
from atomizer.models.atomizer import Atomizer, AtomizerConfig
from atomizer.models.checkpoint import (
    CheckpointError,
    load_canvas_weights,
    load_encoder_weights,
    load_into,
    read_checkpoint,
    save_checkpoint,
)
from atomizer.models.masked import MaskedAtomDecoder, MaskedAtomModel
from atomizer.models.s2mae import S2MAE, S2MAEConfig, encoder_state

#: The models pretraining builds: the Atomizer (masked atoms) or S2MAE (masked spatial-spectral cubes).
PRETRAIN_MODELS = ("atomizer", "s2mae")

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass
class PretrainConfig(Config):
    """Everything a pretraining run needs; saved as ``config.yaml`` in the run directory.

    ``sources`` is a list of unlabelled image sources, each a dict with one of:

    * ``dataset: eurosat | bigearthnet | ...`` (``split``, ``root``): a dataset's images, labels ignored
      (BigEarthNet with its Sentinel-1 where the patch has it; ``s1: false`` drops it);
    * ``manifest: PATH`` (``split``, ``root``): any manifest's images, each row's co-registered images
      merged as :class:`~atomizer.data.manifest.ManifestDataset` reads them; labels and masks never read;
    * ``path: FILE_OR_FOLDER``: a folder of per-band GeoTIFFs (one image, e.g. a Major-TOM product), a
      GeoTIFF / npz file, or a folder of such files (``pattern``, default ``*.tif``), read with
      :func:`atomizer.data.readers.open_image` (``sensor``: a catalogued name or a sidecar);

    plus optional ``tile_px`` (cut each image into non-overlapping tiles of that many pixels of its
    finest grid, with :func:`atomizer.data.modalities.simulate` windows) and ``limit`` (first N images/tiles).
    Every image is read at its native grid (``modalities: null`` keeps it so). ``model: s2mae`` refuses a
    source without any of its canvas's 12 Sentinel-2 bands (:func:`check_canvas_sources`).
    """

    kind: ClassVar[str] = "pretraining"

    model: str = "atomizer"  # atomizer (masked atoms) | s2mae (masked spatial-spectral cubes)
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    sources: list = field(default_factory=lambda: [{"dataset": "eurosat", "split": "train"}])
    source_epochs: list[int] | None = None  # progressive: source i for source_epochs[i] epochs, in order
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
    decoder_depth: int = 4  # s2mae: self-attention blocks of the MAE decoder
    norm_target: bool = True  # s2mae: each cube's pixels min-max normalised to [0, 1] as the target
    steps: int = 200  # not read with source_epochs (the stages set the length)
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
        if self.model not in PRETRAIN_MODELS:
            raise ValueError(
                f"pretraining config: model must be one of {', '.join(PRETRAIN_MODELS)}, got {self.model!r}"
            )
        if self.model == "s2mae" and self.masking != "random":
            raise ValueError(f"pretraining config: s2mae masks cubes at random (masking: random), got {self.masking!r}")
        if self.decoder_depth < 1:
            raise ValueError(f"pretraining config: decoder_depth must be >= 1, got {self.decoder_depth}")
        if self.source_epochs is not None:
            if len(self.source_epochs) != len(self.sources) or any(int(e) < 1 for e in self.source_epochs):
                raise ValueError(
                    f"pretraining config: source_epochs needs one count >= 1 per source ({len(self.sources)} "
                    f"sources), got {self.source_epochs}"
                )
        check_precision(self.precision)


# --------------------------------------------------------------------------------------------------
# Unlabelled images
# --------------------------------------------------------------------------------------------------


def build_pretrain_dataset(
    cfg: PretrainConfig, base: UnlabelledImages | None = None, random_window: bool | None = None
):
    """The unlabelled images as the model reads them (atom sets, or canvases for ``model: s2mae``): each
    image through one modality of ``cfg.modalities`` (a seeded assignment, random windows per epoch; the
    canvas is the modality set's source format), or as read when ``cfg.modalities`` is None."""
    base = base if base is not None else UnlabelledImages(cfg.sources)
    canvas_model = cfg.model == "s2mae"
    if canvas_model:
        check_canvas_sources(base)
    if not cfg.modalities:
        return AsRead(base, CanvasBatch if canvas_model else AtomBatch)
    mods = load_modalities(cfg.modalities)
    rw = cfg.random_window if random_window is None else random_window
    return ModalityDataset(
        base,
        mods.modalities,
        Assignment.random(len(base), len(mods), cfg.seed).modality_index,
        CanvasBatch if canvas_model else AtomBatch,
        CanvasSpec.of(mods) if canvas_model else None,
        random_window=rw,
        seed=cfg.seed,
    )


def check_canvas_sources(base: UnlabelledImages) -> None:
    """Refuse, in one line naming it, a source S2MAE cannot read: one whose images hold none of the 12
    Sentinel-2 bands of its canvas (:data:`~atomizer.atoms.canvas.CANVAS_BANDS`; aerial, PlanetScope or
    TerraSAR-X images). A source with Sentinel-2 bands and others (BigEarthNet's or TerraMesh's Sentinel-1
    ``VV``/``VH``) is taken: the canvas reads its Sentinel-2 bands and drops the others. Each source is judged
    by its first image."""
    for si, first in enumerate(base.first):
        bands = image_bands(base[first]["image"])
        if not set(bands) & set(CANVAS_BANDS):
            raise ValueError(
                f"pretraining config: model s2mae reads the 12 Sentinel-2 bands of its canvas; source #{si} "
                f"{base.sources[si]} has none (its bands: {', '.join(bands)}); use model: atomizer for it"
            )


@dataclass
class Stage:
    """A stretch of the run over one dataset: the pooled sources, or one source of progressive pretraining
    (``source`` its index). Steps ``start`` to ``start + steps``; epochs counted from ``first_epoch``."""

    data: Any
    source: int | None
    start: int
    steps: int
    first_epoch: int
    batch_size: int
    per_epoch: int

    @property
    def n(self) -> int:
        return len(self.data)


def plan_stages(cfg: PretrainConfig) -> list[Stage]:
    """The run's stages: one over every source pooled (``cfg.steps`` steps), or, with ``source_epochs``, one
    per source in order, ``source_epochs[i]`` epochs of its own batches each."""

    def stage(data: Any, source: int | None, start: int, epochs: int | None, first_epoch: int) -> Stage:
        bs = min(cfg.batch_size, len(data))
        per_epoch = max(1, len(data) // bs)
        steps = cfg.steps if epochs is None else epochs * per_epoch
        return Stage(data, source, start, steps, first_epoch, bs, per_epoch)

    if cfg.source_epochs is None:
        return [stage(build_pretrain_dataset(cfg), None, 0, None, 0)]
    stages: list[Stage] = []
    start = first_epoch = 0
    for i, (src, epochs) in enumerate(zip(cfg.sources, cfg.source_epochs)):
        stages.append(stage(build_pretrain_dataset(cfg, UnlabelledImages([src])), i, start, int(epochs), first_epoch))
        start += stages[-1].steps
        first_epoch += int(epochs)
    return stages


# --------------------------------------------------------------------------------------------------
# The task: the loop's hooks
# --------------------------------------------------------------------------------------------------


def _generator(seed: Sequence[int]) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers (masks: a pure function of the run's seed and step)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))


def _masked_batch(items: list[dict], cfg: PretrainConfig, seed: Sequence[int]) -> tuple[AtomBatch, AtomBatch, Tensor]:
    batch = collate([it["input"] for it in items])
    g = _generator(seed)
    hidden = mask_atoms(batch, cfg.mask_ratio, cfg.masking, g, cfg.block_px)
    vis, tgt = split_atoms(batch, hidden, cfg.max_targets, g)
    return vis, tgt, hidden


def build_models(cfg: PretrainConfig) -> MaskedAtomModel:
    atomizer = Atomizer(AtomizerConfig.preset(cfg.preset, num_classes=1, **cfg.model_overrides))
    decoder = MaskedAtomDecoder(atomizer.cfg, cfg.decoder_dim, cfg.decoder_heads, cfg.decoder_dim_head)
    return MaskedAtomModel(atomizer, decoder, cfg.prune_visible)


#: The S2MAE config fields a pretraining config sets itself (refused in ``model_overrides``).
S2MAE_PRETRAIN_FIELDS = ("task", "decoder_depth", "decoder_dim", "decoder_heads", "decoder_dim_head", "norm_target")


def build_s2mae(cfg: PretrainConfig) -> S2MAE:
    """The S2MAE of a pretraining run: ``preset`` + ``model_overrides``, with the MAE decoder of the config."""
    clash = sorted(set(cfg.model_overrides) & set(S2MAE_PRETRAIN_FIELDS))
    if clash:
        raise ValueError(f"pretraining config: set {clash} as pretraining options, not in model_overrides")
    mae: dict[str, Any] = {
        "task": "pretraining",
        "decoder_depth": cfg.decoder_depth,
        "decoder_heads": cfg.decoder_heads,
        "decoder_dim_head": cfg.decoder_dim_head,
        "norm_target": cfg.norm_target,
    }
    if cfg.decoder_dim is not None:
        mae["decoder_dim"] = cfg.decoder_dim
    return S2MAE(S2MAEConfig.preset(cfg.preset, num_classes=1, **cfg.model_overrides, **mae))


def load_pretrained_encoder(model: nn.Module, path: str | Path, classes: Sequence[str] | None = None) -> dict:
    """Initialise ``model`` (may be DDP-wrapped) from a checkpoint's encoder: what ``TrainConfig.init`` does.

    An Atomizer reads an Atomizer checkpoint (:func:`atomizer.models.checkpoint.load_encoder_weights`); a
    canvas baseline a checkpoint of its own architecture (:func:`atomizer.models.checkpoint.load_canvas_weights`); an
    S2MAE reads an S2MAE checkpoint (an S2MAE pretraining run, or a trained S2MAE): every weight but the
    heads and the MAE decoder (:func:`atomizer.models.s2mae.encoder_state`); the classification head too
    when the checkpoint is a classifier of the same classes.

    Returns:
        ``{"loaded": number of tensors, "head": "full" | "pool" | "none", "source": path}``.

    Raises:
        CheckpointError: another architecture, or an encoder configured differently (fields named).
    """
    target = getattr(model, "module", model)
    if isinstance(target, Atomizer):
        return load_encoder_weights(model, path, classes=classes)
    if not isinstance(target, S2MAE):  # a canvas baseline: fine-tuned from (or adapted on) its own kind
        return load_canvas_weights(model, path, classes=classes)
    payload = read_checkpoint(path)
    if payload["arch"] != "s2mae":
        raise CheckpointError(
            f"{path} holds a {payload['arch']!r} model; an s2mae initialises from an s2mae checkpoint"
        )
    try:
        state = encoder_state(target, payload["state_dict"], payload["config"])
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    extra = payload["extra"]
    head = "none"
    same_head = payload["config"].get("task") == target.task == "classification"
    if (
        same_head
        and extra.get("kind") != "pretrain"
        and classes is not None
        and list(extra.get("classes") or []) == list(classes)
    ):
        state.update({k: v for k, v in payload["state_dict"].items() if k.startswith("fc.")})
        head = "full"
    target.load_state_dict(state, strict=False)
    return {"loaded": len(state), "head": head, "source": str(path)}


class PretrainTask(Task):
    """Masked pretraining (atoms, or S2MAE's cubes) as the :class:`~atomizer.engine.loop.Loop`'s hooks: the
    reconstruction loss of a fixed held-in batch is logged at step 0, every ``eval_every`` steps and at the end."""

    def __init__(self, cfg: PretrainConfig, loop: Loop):
        self.cfg, self.loop = cfg, loop
        self.device = loop.device
        self.s2mae = cfg.model == "s2mae"

    def on_start(self) -> None:
        cfg, loop, device = self.cfg, self.loop, self.device
        self.stages = plan_stages(cfg)
        self.total = self.stages[-1].start + self.stages[-1].steps
        pooled = self.stages[0].data if cfg.source_epochs is None else None
        fixed = build_pretrain_dataset(cfg, pooled.base if pooled is not None else None, random_window=False)
        self.n = sum(st.n for st in self.stages)
        self.model: S2MAE | MaskedAtomModel = self.build_model().to(device)
        #: the model a checkpoint holds (the Atomizer without the masked-atom decoder; the whole S2MAE)
        self.encoder: nn.Module = self.model if isinstance(self.model, S2MAE) else self.model.atomizer
        loop.attach(self.model, self.total)
        loop.resume_from(self._load)
        # A fixed batch (centred windows, fixed masks) whose reconstruction loss is comparable across steps.
        eval_items = [fixed[i] for i in range(min(cfg.eval_images, len(fixed)))]
        self.eval_batch = self._batch(eval_items, (cfg.seed, 7, 7))
        if loop.step == 0:
            loop.log.write(kind="eval", step=0, loss=self.evaluate(), time=time.time())

    def build_model(self) -> S2MAE | MaskedAtomModel:
        """The model trained: an S2MAE, or an Atomizer with its masked-atom decoder (a subclass may start from
        a trained base: adaptation's stage 1)."""
        return build_s2mae(self.cfg) if self.s2mae else build_models(self.cfg)

    def checkpoint_extra(self) -> dict[str, Any]:
        """What a checkpoint stores besides the weights and the loop's state."""
        return {"kind": "pretrain", "pretrain_config": self.cfg.to_dict()}

    def _batch(self, items: list[dict], seed: Sequence[int]) -> tuple:
        """One micro-batch: (visible atoms, target atoms, hidden) for the Atomizer, (canvases, the mask's
        seed) for S2MAE (its cubes are masked inside :meth:`S2MAE.mae_loss`)."""
        if self.s2mae:
            return CanvasBatch.collate([it["input"] for it in items]), tuple(seed)
        return _masked_batch(items, self.cfg, seed)

    def _loss(self, batch: tuple) -> tuple[Tensor, int, dict]:
        if isinstance(self.model, S2MAE):
            canvases, seed = batch
            out = self.model.mae_loss(canvases.to(self.device), self.cfg.mask_ratio, _generator(seed))
            kept = out.visible | out.hidden
            return (
                out.loss,
                canvases.num_sets,
                {
                    "visible_cubes": int(out.visible.sum()),
                    "hidden_fraction": float(out.hidden.sum()) / max(1, int(kept.sum())),
                },
            )
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

    def _load(self, path: Path) -> dict:
        extra = load_into(self.encoder, path)
        if isinstance(self.model, MaskedAtomModel):
            self.model.decoder.load_state_dict(extra["decoder"])
        return extra

    @torch.no_grad()
    def evaluate(self) -> float:
        """The reconstruction loss of the fixed batch."""
        self.model.eval()
        with autocast(self.cfg.precision, self.device):
            loss = self._loss(self.eval_batch)[0]
        self.model.train()
        return float(loss)

    def on_checkpoint(self, path: Path) -> None:
        extra: dict[str, Any] = {**self.checkpoint_extra(), **self.loop.state()}
        if isinstance(self.model, MaskedAtomModel):
            extra["decoder"] = self.model.decoder.state_dict()
        save_checkpoint(path, self.encoder, extra)

    def stage_at(self, step: int) -> Stage:
        """The stage that optimiser step ``step`` (0-based) belongs to."""
        for st in self.stages:
            if step < st.start + st.steps:
                return st
        return self.stages[-1]

    def steps(self) -> Iterator[Step]:
        cfg, loop = self.cfg, self.loop
        while loop.step < self.total:
            st = self.stage_at(loop.step)
            local_epoch, pos = divmod(loop.step - st.start, st.per_epoch)
            epoch = st.first_epoch + local_epoch
            st.data.set_epoch(local_epoch)
            perm = torch.randperm(st.n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
            idx = perm[pos * st.batch_size : (pos + 1) * st.batch_size].tolist()
            yield epoch, [self._batch([st.data[i] for i in idx], (cfg.seed, 1, loop.step))]

    def training_step(self, batch: tuple) -> tuple[Tensor, int, dict]:
        loss, n, fields = self._loss(batch)
        source = self.stage_at(self.loop.step).source
        return loss, n, fields if source is None else {**fields, "source": source}

    def on_step_end(self, epoch: int) -> None:
        cfg, loop = self.cfg, self.loop
        if cfg.eval_every and loop.step % cfg.eval_every == 0 and loop.step < self.total:
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
        summary = {
            "out_dir": str(loop.out),
            "checkpoint": str(loop.last),
            "model": cfg.model,
            "step": loop.step,
            "masking": cfg.masking,
            "mask_ratio": cfg.mask_ratio,
            "images": self.n,
            "eval_loss_start": evals[0]["loss"],
            "eval_loss_end": final,
            "weights_fingerprint": state_hash(self.encoder),
        }
        if cfg.source_epochs is not None:
            summary["stages"] = [
                {"source": st.source, "images": st.n, "start_step": st.start, "steps": st.steps} for st in self.stages
            ]
        return summary


def pretrain(cfg: PretrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Masked pretraining of an Atomizer encoder (masked atoms) or of an S2MAE (``model: s2mae``, masked
    cubes); returns a summary (paths, losses, step).

    ``<out_dir>/checkpoints/last.pt`` is the pretrained checkpoint to pass as ``init``.

    Raises:
        FileExistsError: ``out_dir`` already holds a run and ``resume`` is False.
        LockedError: another process is writing ``out_dir`` (its lock is held for the whole run).
    """
    loop = Loop(cfg, resume, progress=progress, desc=f"pretrain {cfg.model} {cfg.masking}")
    return loop.fit(PretrainTask(cfg, loop))
