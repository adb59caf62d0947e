"""SpectralX-style two-stage adaptation of a frozen Atomizer to new spectral data: one call, :func:`adapt`.

* **Stage 1** (``<out_dir>/stage1``): masked reconstruction on the new data with only the adapters
  trainable. The base checkpoint is loaded and frozen, ``adapters`` (default ``kinds: [moa]``: the hyper
  tokenizer and the attribute-oriented mixture of adapters; head frozen) are added
  (:func:`atomizer.models.adapters.apply_adapters`), and the masked-atom objective of
  :mod:`atomizer.engine.pretraining` is trained: hide ``mask_ratio`` of each set's atoms, encode the
  visible ones, reconstruct the hidden atoms' values with a fresh light decoder
  (:class:`atomizer.models.masked.MaskedAtomDecoder`, trained too, then discarded). ``pretrain`` holds
  the :class:`~atomizer.engine.pretraining.PretrainConfig` options of this stage (``sources``,
  ``modalities``, ``masking``, ``mask_ratio``, ``steps``, ``lr``, ...); by default the images are the
  training images of the stage-2 dataset (of its ``fold`` under cross-validation) seen through the stage-2
  training modalities. The stage writes ``stage1/adapters.pt`` (:func:`atomizer.models.adapters.save_adapters`).
* **Stage 2** (``<out_dir>/stage2``): the task, through the ordinary loop
  (:func:`atomizer.engine.training.train` with ``init`` = the base, ``adapters`` = stage 1's kinds plus
  ``stage2_kinds`` (default ``[refine]``: the attribute-refined adapter) and the head, and
  ``adapters_init`` = ``stage1/adapters.pt``, so stage 1's adapters start where stage 1 left them). With
  ``freeze_stage1`` they stay fixed (``frozen_kinds``) and only the new kinds and the head train.
  ``train`` holds the :class:`~atomizer.engine.training.TrainConfig` options of this stage (``dataset``,
  ``train_modalities``, ``epochs``, ``lr``, ``preset``: the base's, ...).

The base may be any Atomizer checkpoint (a classifier or a pretraining checkpoint) without adapters.
Each stage is an ordinary run folder (config, metrics, checkpoints, summary); ``adapt.yaml`` at the top
records the whole config. ``resume=True`` resumes the stage that was interrupted.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from atomizer.core.config import Config
from atomizer.core.run_folder import RunFolder
from atomizer.core.storage import atomic_write_text
from atomizer.engine.loop import Loop
from atomizer.engine.pretraining import PretrainConfig, PretrainTask
from atomizer.engine.training import TrainConfig, train
from atomizer.models.adapters import AdapterConfig, AdapterError, adapter_report, apply_adapters, save_adapters
from atomizer.models.atomizer import Atomizer
from atomizer.models.checkpoint import load_trained
from atomizer.models.masked import MaskedAtomDecoder, MaskedAtomModel

#: Options each stage's config gets from :class:`AdaptConfig`, never from ``pretrain`` / ``train``.
STAGE1_SET = ("out_dir", "model", "preset", "model_overrides")
STAGE2_SET = ("out_dir", "init", "adapters", "adapters_init")


@dataclass
class AdaptConfig(Config):
    """The two stages of a SpectralX-style adaptation (module docstring); saved as ``adapt.yaml``."""

    kind: ClassVar[str] = "adaptation"

    base: str = ""  # the frozen base: an Atomizer checkpoint without adapters
    adapters: dict = field(default_factory=lambda: {"kinds": ["moa"]})  # stage 1's AdapterConfig fields
    stage2_kinds: list[str] = field(default_factory=lambda: ["refine"])  # kinds stage 2 adds
    freeze_stage1: bool = False  # stage 2 keeps stage 1's adapters fixed
    pretrain: dict = field(default_factory=dict)  # stage 1: PretrainConfig options
    train: dict = field(default_factory=dict)  # stage 2: TrainConfig options
    out_dir: str = "runs/adapt"

    def __post_init__(self) -> None:
        if not self.base:
            raise ValueError("adaptation config: base (the frozen base checkpoint) is required")
        for name, given, owned in (("pretrain", self.pretrain, STAGE1_SET), ("train", self.train, STAGE2_SET)):
            clash = sorted(set(given) & set(owned))
            if clash:
                raise ValueError(f"adaptation config: {name} may not set {clash} (the adaptation sets them)")
        self.stage1_adapters()
        self.stage2_adapters()

    def stage1_adapters(self) -> AdapterConfig:
        """Stage 1's adapters: ``adapters`` with the head frozen (reconstruction reads no head)."""
        spec = {**self.adapters, "head": "freeze", "num_classes": None, "frozen_kinds": []}
        return AdapterConfig.from_any(spec)

    def stage2_adapters(self) -> dict:
        """Stage 2's adapters: stage 1's kinds plus ``stage2_kinds`` (stage 1's frozen with ``freeze_stage1``)."""
        first = AdapterConfig.from_any({**self.adapters, "frozen_kinds": []}).active
        spec = {
            **self.adapters,
            "kinds": list(dict.fromkeys([*first, *self.stage2_kinds])),
            "frozen_kinds": list(first) if self.freeze_stage1 else [],
        }
        return AdapterConfig.from_any(spec).to_dict()

    def stage1_config(self) -> PretrainConfig:
        """Stage 1's :class:`PretrainConfig` (defaults: the stage-2 dataset's training images, those of its
        ``fold`` with cross-validation, through its training modalities)."""
        tc = TrainConfig.from_dict({k: v for k, v in self.train.items() if k not in STAGE2_SET})
        source: dict[str, Any] = {"dataset": tc.dataset, "split": tc.train_split}
        if tc.fold is not None:  # the fold's training images, as stage 2 trains on
            source["fold"] = tc.fold
        if tc.data_root is not None:
            source["root"] = tc.data_root
        if tc.train_limit is not None:
            source["limit"] = tc.train_limit
        spec = {
            "sources": [source],
            "modalities": tc.train_modalities,
            "seed": tc.seed,
            "device": tc.device,
            "precision": tc.precision,
            **self.pretrain,
            "out_dir": str(Path(self.out_dir) / "stage1"),
        }
        return PretrainConfig.from_dict(spec)

    def stage2_config(self, stage1_adapters: str | Path) -> TrainConfig:
        return TrainConfig.from_dict(
            {
                **self.train,
                "init": self.base,
                "adapters": self.stage2_adapters(),
                "adapters_init": str(stage1_adapters),
                "out_dir": str(Path(self.out_dir) / "stage2"),
            }
        )


# --------------------------------------------------------------------------------------------------
# Stage 1: masked reconstruction with only the adapters trainable
# --------------------------------------------------------------------------------------------------


class AdapterPretrainTask(PretrainTask):
    """Stage 1: masked-atom pretraining (:class:`~atomizer.engine.pretraining.PretrainTask`, its batches, masks,
    evaluation and resumption) of the frozen base with adapters and a fresh masked-atom decoder; only the
    adapters and the decoder train, and the adapters are saved apart (``adapters.pt``)."""

    def __init__(self, cfg: PretrainConfig, base: str, adapters: AdapterConfig, loop: Loop):
        super().__init__(cfg, loop)
        self.base, self.adapter_spec = base, adapters

    def build_model(self) -> MaskedAtomModel:
        cfg = self.cfg
        if cfg.model != "atomizer":
            raise AdapterError("adaptation: stage 1 reconstructs atoms with an Atomizer (pretrain.model: atomizer)")
        if cfg.source_epochs:
            raise ValueError("adaptation: stage 1 runs pretrain.steps steps over its pooled sources (no source_epochs)")
        trained = load_trained(self.base)
        if not isinstance(trained.model, Atomizer):
            raise AdapterError(f"{self.base}: adapters need an Atomizer base, not a {trained.arch!r} checkpoint")
        self.atomizer = atomizer = trained.model
        self.adapters = apply_adapters(atomizer, self.adapter_spec)
        decoder = MaskedAtomDecoder(atomizer.cfg, cfg.decoder_dim, cfg.decoder_heads, cfg.decoder_dim_head)
        return MaskedAtomModel(atomizer, decoder, cfg.prune_visible)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {
            "kind": "adapt-stage1",
            "adapters": self.adapters.to_dict(),
            "base": self.base,
            "pretrain_config": self.cfg.to_dict(),
        }

    def on_end(self) -> dict:
        summary = super().on_end()
        adapters = save_adapters(self.atomizer, self.loop.folder.adapters, base_checkpoint=self.base)
        return {**summary, "adapters": str(adapters), "trainable_parameters": adapter_report(self.atomizer)}


def adapt_stage1(cfg: AdaptConfig, resume: bool = False, progress: bool = True) -> dict:
    """Stage 1 alone (masked reconstruction, only the adapters trainable); returns its summary."""
    pcfg = cfg.stage1_config()
    loop = Loop(pcfg, resume, progress=progress, desc="adapt: stage 1")
    return loop.fit(AdapterPretrainTask(pcfg, cfg.base, cfg.stage1_adapters(), loop))


def adapt(cfg: AdaptConfig, resume: bool = False, progress: bool = True) -> dict:
    """Both stages of a SpectralX-style adaptation (module docstring); returns ``{"stage1": summary,
    "stage2": summary, "best": stage 2's best checkpoint, "adapters": stage 2's adapters.pt}``.

    Raises:
        FileExistsError: ``out_dir`` already holds an adaptation and ``resume`` is False.
        AdapterError: the base is not an Atomizer without adapters, or the adapters exceed their budget.
    """
    out = Path(cfg.out_dir)
    record = out / "adapt.yaml"
    if record.exists() and not resume:
        raise FileExistsError(f"{out} already holds an adaptation; pass resume=True or another out_dir")
    cfg.stage1_config()  # every option checked before anything runs
    probe = load_trained(cfg.base).model  # and both stages' adapters fit the base and its budget (head aside)
    for spec in (cfg.stage1_adapters(), {**cfg.stage2_adapters(), "head": "freeze", "num_classes": None}):
        apply_adapters(copy.deepcopy(probe), spec)
    out.mkdir(parents=True, exist_ok=True)
    if not record.exists():
        atomic_write_text(record, cfg.to_yaml())
    stage1 = RunFolder(out / "stage1")
    if resume and stage1.summary.exists() and stage1.adapters.exists():
        first = json.loads(stage1.summary.read_text())
    else:
        first = adapt_stage1(cfg, resume=resume, progress=progress)
    second = train(cfg.stage2_config(first["adapters"]), resume=resume, progress=progress)
    return {"stage1": first, "stage2": second, "best": second["best"], "adapters": second.get("adapters")}
