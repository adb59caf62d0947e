"""Atomizer: any sensor's image as a set of scalar atoms, read by a Perceiver-style encoder.

The public API, loaded lazily (``import atomizer`` imports no torch)::

    from atomizer import Atomizer, AtomizerConfig, open_image, tokenize, get_sensor
    model = Atomizer(AtomizerConfig.preset("tiny", num_classes=10))
    logits = model(tokenize(open_image("data/embedded/eurosat/...tif")))

Packages, each importing only those below it: ``core`` -> ``data`` -> ``atoms`` -> ``models`` ->
``engine`` -> ``results``, ``experiments``, ``bench``, ``dashboard`` -> ``cli``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module holding it
_API = {
    "Atomizer": "atomizer.models.atomizer",
    "AtomizerConfig": "atomizer.models.atomizer",
    "AtomBatch": "atomizer.atoms.tokens",
    "CanvasBatch": "atomizer.atoms.canvas",
    "tokenize": "atomizer.atoms.tokens",
    "open_image": "atomizer.data.readers",
    "get_sensor": "atomizer.data.bands",
    "list_sensors": "atomizer.data.bands",
    "Modality": "atomizer.data.modalities",
    "simulate": "atomizer.data.modalities",
    "load_modalities": "atomizer.data.modalities",
    "build_model": "atomizer.models.registry",
    "load_model": "atomizer.models.checkpoint",
    "TrainConfig": "atomizer.engine.training",
    "train": "atomizer.engine.training",
    "evaluate": "atomizer.engine.evaluation",
    "predict": "atomizer.engine.inference",
}
#: public names that are another name in their module
_ALIAS = {"evaluate": "evaluate_checkpoint", "predict": "predict_image"}

__all__ = [
    "AtomBatch",
    "Atomizer",
    "AtomizerConfig",
    "CanvasBatch",
    "Modality",
    "TrainConfig",
    "build_model",
    "evaluate",
    "get_sensor",
    "list_sensors",
    "load_modalities",
    "load_model",
    "open_image",
    "predict",
    "simulate",
    "tokenize",
    "train",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load on first use
    from atomizer.atoms.canvas import CanvasBatch
    from atomizer.atoms.tokens import AtomBatch, tokenize
    from atomizer.data.bands import get_sensor, list_sensors
    from atomizer.data.modalities import Modality, load_modalities, simulate
    from atomizer.data.readers import open_image
    from atomizer.engine.evaluation import evaluate_checkpoint as evaluate
    from atomizer.engine.inference import predict_image as predict
    from atomizer.engine.training import TrainConfig, train
    from atomizer.models.atomizer import Atomizer, AtomizerConfig
    from atomizer.models.checkpoint import load_model
    from atomizer.models.registry import build_model


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'atomizer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), _ALIAS.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
