"""The Atomizer as a backbone a TorchGeo task trains (the optional extra: ``pip install atomizer[torchgeo]``).

:class:`AtomizerBackbone` is an ``nn.Module`` that reads what TorchGeo models read, a ``B x C x H x W`` image
tensor, and returns class logits: its channels are fixed bands of a sensor at construction (names, sensor,
GSD), each image becomes the atoms :func:`atomizer.atoms.tokens.tokenize` makes of it (one per pixel per
band: physical value, band, position), and an :class:`~atomizer.models.atomizer.Atomizer` classifies them.
The input is the images' stored digital numbers, as TorchGeo's datasets give them; the sensor's
``dn_scale``/``dn_offset`` turn them into reflectance. (A TorchGeo datamodule normalises images before the
model: train with plain data loaders, or describe the normalised values with a sidecar.)

``AtomizerClassificationTask`` is ``torchgeo.trainers.ClassificationTask`` whose ``configure_models`` builds
that backbone (model args: ``band_names``, ``sensor``, ``gsd``, ``preset``, ``model_overrides``,
``num_classes`` or ``num_labels``). It is made when first asked for, so this module imports without TorchGeo;
asking for it without TorchGeo raises the one-line install hint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import Tensor, nn

from atomizer.atoms.tokens import AtomBatch, EmptyTokenSetError, collate, tokenize
from atomizer.data.bands import Sensor, get_sensor
from atomizer.data.light import LightImage
from atomizer.data.torchgeo import band_gsds, match_bands, require_torchgeo, tensor_light
from atomizer.models.atomizer import Atomizer
from atomizer.models.registry import build_model


class AtomizerBackbone(nn.Module):
    """``B x C x H x W`` images of fixed bands in, ``(B, num_classes)`` logits out, through atoms.

    Args:
        band_names: The channels' bands, in channel order (matched to the sensor by name: ``B08A`` is ``B8A``).
        sensor: Catalogued sensor name, sidecar path, or :class:`~atomizer.data.bands.Sensor`.
        gsd: Pixel size in metres of the images' grid, one for all bands or per band; default: each band's
            native GSD (give it when the dataset resampled its bands, as EuroSAT did to 10 m).
        num_classes: Logits per image.
        preset: Atomizer preset (``tiny``, ``small``, ``paper``).
        model: An Atomizer to use as it is (e.g. loaded from a checkpoint) instead of a fresh one.
        **overrides: Fields of the Atomizer config that override the preset's.
    """

    def __init__(
        self,
        band_names: Sequence[str],
        sensor: str | Path | Sensor = "sentinel2",
        gsd: float | Mapping[str, float] | None = None,
        num_classes: int = 10,
        preset: str = "tiny",
        model: Atomizer | None = None,
        **overrides: Any,
    ):
        super().__init__()
        self.sensor = get_sensor(sensor)
        self.bands = match_bands(band_names, self.sensor)
        self.gsds = band_gsds(self.bands, self.sensor, gsd)
        self.model = (
            model if model is not None else cast(Atomizer, build_model("atomizer", preset, num_classes, **overrides))
        )
        self.num_classes = self.model.cfg.num_classes
        # per band (C,): physical value = (DN + offset) * scale; nodata (NaN: none) marks missing pixels
        cal = [self.sensor.calibration(b) for b in self.bands]
        self.register_buffer("dn_offset", torch.tensor([c[1] for c in cal], dtype=torch.float32), persistent=False)
        self.register_buffer("dn_scale", torch.tensor([c[0] for c in cal], dtype=torch.float32), persistent=False)
        nodata = [np.nan if c[2] is None else float(c[2]) for c in cal]
        self.register_buffer("nodata", torch.tensor(nodata, dtype=torch.float32), persistent=False)
        self._templates: dict[tuple[int, int, int, str], AtomBatch] = {}

    def template(self, h: int, w: int) -> LightImage:
        """The image model of one ``h x w`` image of these bands (values 1): the grids and attributes the
        atoms' bands and positions come from."""
        ones = np.ones((len(self.bands), h, w), np.float32)
        return tensor_light(ones, self.bands, self.sensor, self.gsds, {"source": "torchgeo backbone"})

    def _layout(self, b: int, h: int, w: int, device: torch.device) -> AtomBatch:
        """Bands, positions and tables of a batch of ``b`` images ``h x w`` (cached): what :func:`collate` of
        :func:`tokenize` gives, whose values and mask :meth:`atoms` fills in."""
        key = (b, h, w, str(device))
        if key not in self._templates:
            one = tokenize(self.template(h, w))
            self._templates[key] = collate([one] * b).to(device)
        return self._templates[key]

    def atoms(self, x: Tensor) -> AtomBatch:
        """The atoms of a ``B x C x H x W`` batch of DN: the same atoms as :func:`tokenize` of each image
        (tested), computed on the tensor's device."""
        if x.ndim != 4 or x.shape[1] != len(self.bands):
            raise ValueError(
                f"AtomizerBackbone: expected B x {len(self.bands)} x H x W images ({', '.join(self.bands)}), "
                f"got shape {tuple(x.shape)}"
            )
        b, c, h, w = x.shape
        v = x.to(torch.float32)
        per = lambda t: t.view(1, c, 1, 1)  # noqa: E731
        ok = torch.isfinite(v) & (v != per(self.nodata))  # != NaN is True: a band without nodata keeps finite pixels
        value = (v + per(self.dn_offset)) * per(self.dn_scale)
        value = torch.where(ok, value, torch.zeros((), dtype=value.dtype, device=value.device))
        mask = ok.reshape(b, -1)
        empty = (~mask.any(1)).nonzero().flatten().tolist()
        if empty:
            raise EmptyTokenSetError(f"image(s) {empty} of the batch have no valid atom: every pixel is nodata or NaN")
        return replace(self._layout(b, h, w, x.device), value=value.reshape(b, -1), mask=mask)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, num_classes)`` logits of a ``B x C x H x W`` batch of DN."""
        return self.model(self.atoms(x))


def _make_task() -> type:
    """``AtomizerClassificationTask``: TorchGeo's ClassificationTask with the Atomizer as its model."""
    require_torchgeo()
    from torchgeo.trainers import ClassificationTask

    class AtomizerClassificationTask(ClassificationTask):
        """TorchGeo's image classification task whose model is an :class:`AtomizerBackbone`.

        Args:
            band_names, sensor, gsd: The images' bands (:class:`AtomizerBackbone`).
            preset: Atomizer preset; ``model_overrides``: config fields that override it.
            task, num_classes, num_labels, loss, class_weights, lr, patience: as ClassificationTask's.
            freeze_backbone: Train only the classification head.
        """

        def __init__(
            self,
            band_names: Sequence[str],
            sensor: str = "sentinel2",
            gsd: float | Mapping[str, float] | None = None,
            preset: str = "tiny",
            model_overrides: Mapping[str, Any] | None = None,
            task: Literal["binary", "multiclass", "multilabel"] = "multiclass",
            num_classes: int | None = None,
            num_labels: int | None = None,
            loss: Literal["ce", "bce", "jaccard", "focal"] = "ce",
            class_weights: Sequence[float] | None = None,
            lr: float = 1e-3,
            patience: int = 10,
            freeze_backbone: bool = False,
        ) -> None:
            super().__init__(
                model="atomizer",
                weights=None,
                in_channels=len(band_names),
                task=task,
                num_classes=num_classes,
                num_labels=num_labels,
                loss=loss,
                class_weights=class_weights,
                lr=lr,
                patience=patience,
                freeze_backbone=freeze_backbone,
            )

        def configure_models(self) -> None:
            hp = self.hparams
            n = hp["num_classes"] or hp["num_labels"]
            if not n:
                raise ValueError("AtomizerClassificationTask needs num_classes (multiclass) or num_labels (multilabel)")
            self.model = AtomizerBackbone(
                list(hp["band_names"]),
                hp["sensor"],
                hp["gsd"],
                num_classes=int(n),
                preset=hp["preset"],
                **dict(hp["model_overrides"] or {}),
            )
            if hp["freeze_backbone"]:
                for name, p in self.model.named_parameters():
                    p.requires_grad = name.startswith("model.head.")

    AtomizerClassificationTask.__module__ = __name__  # found again by name (pickling, Lightning's CLI)
    AtomizerClassificationTask.__qualname__ = "AtomizerClassificationTask"
    return AtomizerClassificationTask


_TASK: type | None = None


def __getattr__(name: str) -> Any:
    """``AtomizerClassificationTask``, made on first use (it subclasses a TorchGeo class)."""
    global _TASK
    if name == "AtomizerClassificationTask":
        if _TASK is None:
            _TASK = _make_task()
        return _TASK
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
