"""The steps the notebooks call: train and evaluate a run, sweep it, put it on the landscape, list a store.

Every file name of a run folder comes from :mod:`atomizer.core.run_folder`. While a run trains,
:func:`train_and_evaluate` can print one line per epoch (``progress="lines"``: model, seed, fold, epoch,
loss, time left), which papermill streams to the runner's terminal (a progress bar in a kernel does not
reach it).
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import xarray as xr
import yaml

from atomizer.core.run_folder import RunFolder
from atomizer.data.modalities import ModalitySet, load_modalities
from atomizer.engine.evaluation import evaluate_checkpoint, save_results, sweep_modalities
from atomizer.engine.training import TrainConfig, train

# --------------------------------------------------------------------------------------------------
# Progress: one line per epoch
# --------------------------------------------------------------------------------------------------


def run_tag(model: str, seed: int, fold: int | None) -> str:
    """``atomizer seed 0 fold 1``: how a run is named in progress lines."""
    return f"{model} seed {seed}" + ("" if fold is None else f" fold {fold}")


def _duration(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class EpochLines:
    """Follows a run's ``metrics.jsonl`` in a thread while it trains and prints one line per finished
    epoch: ``[atomizer seed 0 fold 1] epoch 3/12 loss 1.234 val macro mAP 41.2 | 0m36s, ~1m12s left``.

    Reads only what the training loop already writes (``kind: train`` records with ``epoch``, ``step``,
    ``loss``; ``kind: val`` records at an epoch's end), so the loop needs no hook for it.
    """

    def __init__(self, cfg: TrainConfig, tag: str, interval: float = 1.0):
        self.path = RunFolder(cfg.out_dir).metrics
        self.tag, self.epochs, self.max_steps, self.interval = tag, cfg.epochs, cfg.max_steps, interval
        self._offset, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"progress {tag}", daemon=True)
        self._losses: list[float] = []
        self._epoch: int | None = None  # the epoch being trained
        self._printed: set[int] = set()
        self._first_step: int | None = None
        self._step, self._per_epoch = 0, 0
        self._t0 = time.time()

    def __enter__(self) -> EpochLines:
        self._t0 = time.time()
        if self.path.exists():  # a resumed run: only what is written from now on
            self._offset = self.path.stat().st_size
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read()
        if self._epoch is not None and self._losses:  # the last epoch of a run without validation
            self._line(self._epoch, None)

    def _follow(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def _read(self) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size < self._offset:  # rewritten (a resumed run truncates its log)
            self._offset = 0
        with self.path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read(size - self._offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        self._offset += end + 1
        for raw in chunk[: end + 1].splitlines():
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                self._record(record)

    def _record(self, r: dict) -> None:
        epoch, kind = r.get("epoch"), r.get("kind")
        if not isinstance(epoch, int):
            return
        if kind == "train":
            if self._epoch is not None and epoch != self._epoch and self._losses:  # no validation record came
                self._line(self._epoch, None)
            if epoch != self._epoch:
                self._epoch, self._losses = epoch, []
            step = int(r.get("step", 0))
            if self._first_step is None:
                self._first_step = step - 1
            self._step = step
            self._losses.append(float(r.get("loss", float("nan"))))
        elif kind == "val":
            self._line(epoch, r.get("macro_map"))

    def _line(self, epoch: int, val: Any) -> None:
        if epoch in self._printed:
            return
        self._printed.add(epoch)
        loss = sum(self._losses) / len(self._losses) if self._losses else float("nan")
        self._losses = []
        if not self._per_epoch:  # the steps of one epoch: the log's step at the end of the first one seen
            self._per_epoch = self._step // (epoch + 1)
        elapsed = time.time() - self._t0
        total = self.epochs * self._per_epoch if self._per_epoch else 0
        if self.max_steps:
            total = min(total, self.max_steps) if total else self.max_steps
        done = self._step - (self._first_step or 0)
        left = elapsed / done * max(0, total - self._step) if done > 0 and total else float("nan")
        score = f" val macro mAP {float(val):.1f}" if isinstance(val, (int, float)) else ""
        when = f"{_duration(elapsed)}, ~{_duration(left)} left" if left == left else _duration(elapsed)
        print(f"[{self.tag}] epoch {epoch + 1}/{self.epochs} loss {loss:.4f}{score} | {when}", flush=True)


# --------------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------------


def train_and_evaluate(
    model: str, out_dir: str | Path, test_modalities: str, progress: bool | str = True, **train_options: Any
) -> Path:
    """Train ``model`` into ``out_dir`` (resuming if a run is there) and evaluate it on every test
    modality; returns the run directory. Finished steps are not redone.

    ``progress``: ``True`` a progress bar, ``False`` nothing, ``"lines"`` one printed line per epoch
    (model, seed, fold, epoch, loss, validation score, time left: what a notebook run by the experiment
    runner streams to its terminal)."""
    folder = RunFolder(out_dir)
    run = folder.path
    cfg = TrainConfig.from_dict(
        {"model": model, "test_modalities": test_modalities, "out_dir": str(run), **train_options}
    )
    if not folder.summary.exists():
        resume = folder.config.exists()
        if progress == "lines":
            with EpochLines(cfg, run_tag(cfg.label or model, cfg.seed, cfg.fold)):
                train(cfg, resume=resume, progress=False)
        else:
            train(cfg, resume=resume, progress=bool(progress))
    if not (folder.results.exists() and folder.predictions.exists()):
        res, preds = evaluate_checkpoint(
            folder.best,
            test_modalities,
            dataset=cfg.dataset,
            data_root=cfg.data_root,
            batch_size=cfg.batch_size,
            device=cfg.device,
            model_name=cfg.label or model,
            predictions=True,
            num_workers=cfg.num_workers,
        )
        save_results(preds, folder.predictions, overwrite=True, records=False)
        save_results(res, folder.results, overwrite=True)
    return run


def _evaluate_run(folder: RunFolder, cfg: TrainConfig, mods: ModalitySet, batch_size: int, device: str):
    """(scores, per-image predictions) of a run's best checkpoint on ``mods``, under the run's own data settings."""
    return evaluate_checkpoint(
        folder.best,
        mods,
        dataset=cfg.dataset,
        data_root=cfg.data_root,
        batch_size=batch_size,
        device=device,
        model_name=cfg.label or cfg.model,
        predictions=True,
        num_workers=cfg.num_workers,
    )


def run_sweep(
    run_dir: str | Path,
    kind: str,
    values: Sequence[float],
    bands: Sequence[str] | None = None,
    batch_size: int = 16,
    device: str = "auto",
) -> Path:
    """Evaluate a run's best checkpoint on a GSD (``kind="gsd"``) or size (``"size"``) sweep (on the run's
    test images: its test fold when cross-validated); writes ``sweep_<kind>.nc`` and the per-image
    ``sweep_<kind>_predictions.nc`` (:func:`atomizer.core.run_folder.sweep_file`)."""
    folder = RunFolder(run_dir)
    cfg = TrainConfig.from_yaml(folder.config)
    test = load_modalities(cfg.test_modalities)
    if not test.source_size_px or not test.source_gsd_m:
        raise ValueError(f"test modalities {cfg.test_modalities!r} name no source size and GSD: nothing to sweep")
    size, gsd = int(test.source_size_px), float(test.source_gsd_m)
    if bands is None:  # every band the dataset's test modalities use
        bands = sorted({b for m in test for b in m.bands})
    mods = ModalitySet(f"sweep_{kind}", tuple(sweep_modalities(kind, size, gsd, bands, values)), size, gsd)
    for m in mods:
        if kind == "gsd" and m.extent_m < size * gsd - 1e-6:
            warnings.warn(
                f"GSD {m.gsd_m:g} m does not divide the {size * gsd:g} m source: the largest whole window that "
                f"fits is used, {m.size_px} px ({m.extent_m:g} m)",
                stacklevel=2,
            )
    res, preds = _evaluate_run(folder, cfg, mods, batch_size, device)
    res.attrs["sweep"] = kind
    out = folder.sweep(kind)
    save_results(preds, folder.sweep(kind, predictions=True), overwrite=True, records=False)
    save_results(res, out, overwrite=True)
    return out


def pretrain_for_fold(
    config: str | Path | Mapping[str, Any],
    root: str | Path,
    dataset: str,
    fold: int | None,
    model: str | None = None,
    device: str | None = None,
    **overrides: Any,
) -> Path:
    """Masked pretraining (:func:`atomizer.engine.pretraining.pretrain`) for one cross-validation fold of
    ``dataset``, resumed or skipped when done; returns its ``checkpoints/last.pt``, the ``init`` of the
    fine-tuning runs of that fold.

    ``config`` is a pretraining config (a YAML path or a mapping of
    :class:`~atomizer.engine.pretraining.PretrainConfig` fields), ``overrides`` replace its fields (e.g.
    ``mask_ratio``, ``steps``). Every source that reads ``dataset`` itself is restricted so that the
    pretraining never sees the pixels the fold is tested on: ``exclude_fold: fold`` (its test images left
    out) with folds, ``split: train`` on the fixed split; such a pretraining runs in
    ``<root>/<model>_fold-<k>`` (``<model>_fixed``). A source that already names a split of ``dataset`` is
    refused, since the two could disagree. When no source reads ``dataset``, the pretraining is the same for
    every fold: it runs once, in ``<root>/<model>_any-fold``. ``model`` (when given) must be the config's."""
    from atomizer.engine.pretraining import PretrainConfig, pretrain

    base = (
        PretrainConfig.from_yaml(config).to_dict()
        if isinstance(config, (str, Path))
        else PretrainConfig.from_dict(dict(config)).to_dict()
    )
    if model is not None and base["model"] != model:
        raise ValueError(f"pretraining config {config}: model {base['model']!r}, but it should pretrain {model!r}")
    sources, reads_downstream = [], False
    for src in base["sources"]:
        src = dict(src)
        if str(src.get("dataset", src.get("manifest", ""))) == str(dataset):
            if src.get("split") is not None or src.get("exclude_fold") is not None:
                raise ValueError(
                    f"pretraining source {src} reads the downstream dataset {dataset!r}: leave its split out "
                    "(each fold's test images are left out for you)"
                )
            src.update({"exclude_fold": int(fold)} if fold is not None else {"split": "train"})
            reads_downstream = True
        sources.append(src)
    which = ("fixed" if fold is None else f"fold-{int(fold)}") if reads_downstream else "any-fold"
    run = Path(root) / f"{base['model']}_{which}"
    cfg = PretrainConfig.from_dict(
        {**base, **overrides, "sources": sources, "out_dir": str(run), **({"device": device} if device else {})}
    )
    folder = RunFolder(run)
    if not folder.summary.exists():
        pretrain(cfg, resume=folder.config.exists(), progress=False)
    return run / "checkpoints" / "last.pt"


#: The values a sweep evaluates when none are given: GSDs (m/px) and input sizes (px), the paper's Tables 2-3.
SWEEP_VALUES: dict[str, list[float]] = {"gsd": [10, 20, 30, 40, 60], "size": [16, 32, 48, 64]}


def run_path(store: str | Path, model: str, seed: int, fold: int | None) -> Path:
    """Where a (model, seed, fold) run lives in a results store: ``<store>/<model>/seed-<s>[_fold-<f>]``.

    ``model`` (a label such as ``resnet@25%``) is one folder name: a separator, ``..`` or a leading dot
    is refused, so a run never lies outside its store."""
    label = str(model)
    if not label or "/" in label or "\\" in label or label.startswith(".") or any(ord(c) < 32 for c in label):
        shown = repr(label) if len(repr(label)) <= 60 else repr(label)[:57] + "..."
        raise ValueError(f"model label {shown} cannot name a run folder (no '/', no leading '.')")
    return Path(store) / label / (f"seed-{int(seed)}" + ("" if fold is None else f"_fold-{int(fold)}"))


def run_label(model: str, models: Sequence[str] = (), label: str = "", train_fraction: float = 1.0) -> str:
    """The label of ``model``'s runs in a store: the model (``model@<percent>%`` on a fraction of the
    training data); ``label`` is a suffix when several models train (``atomizer+aug``), the whole label
    when one does."""
    if label:
        return label if len(models) <= 1 else f"{model}{label}"
    return model if train_fraction == 1.0 else f"{model}@{round(100 * train_fraction)}%"


#: The landscape around a modality set: GSDs, fractions of the largest window, band sets (EuroSAT-MS names)
#: at the geometry of the first training modality. Every band set holds a canvas band (B10 alone has none).
LANDSCAPE: dict[str, Any] = {
    "gsds": [10, 15, 20, 30, 40, 60],
    "size_fractions": [0.25, 0.5, 1.0],
    "band_sets": {
        "rgb": ["B02", "B03", "B04"],
        "rgbn": ["B02", "B03", "B04", "B08"],
        "rededge": ["B05", "B06", "B07"],
        "swir": ["B11", "B12"],
        "seen11": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B11", "B12"],
        "b8a": ["B8A"],
        "rgb_b8a": ["B02", "B03", "B04", "B8A"],
        "all13": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"],
    },
}


def landscape_set(train_modalities: str | Path, spec: Mapping[str, Any] | None = None) -> ModalitySet:
    """The landscape :class:`~atomizer.data.modalities.ModalitySet` around a training modality set."""
    from atomizer.data.modalities import landscape_modalities

    full = {**LANDSCAPE, **(spec or {})}
    train_set = load_modalities(train_modalities)
    first = train_set.modalities[0]
    return landscape_modalities(
        train_set, full["gsds"], full["size_fractions"], full["band_sets"], first.bands, (first.size_px, first.gsd_m)
    )


def run_landscape(
    run_dir: str | Path, batch_size: int = 32, device: str = "auto", spec: Mapping[str, Any] | None = None
) -> Path:
    """Evaluate a run's best checkpoint on the landscape around its training modalities (on its test
    images: the test fold of a cross-validated run); writes ``landscape.nc`` and
    ``landscape_predictions.nc`` into the run (skipped when both exist)."""
    folder = RunFolder(run_dir)
    table, per_image = folder.landscape, folder.landscape_predictions
    cfg = TrainConfig.from_yaml(folder.config)
    mods = landscape_set(cfg.train_modalities, spec)
    if table.exists() and per_image.exists():
        with xr.open_dataset(per_image, engine="h5netcdf") as old:  # reuse only the same landscape
            if [str(m) for m in old.modality.values] == mods.names:
                return table
    res, preds = _evaluate_run(folder, cfg, mods, batch_size, device)
    save_results(preds, per_image, overwrite=True, records=False)
    save_results(res, table, overwrite=True)
    return table


def store_runs(store: str | Path, models: Sequence[str] = (), seeds: Sequence[int] = ()) -> list[Path]:
    """The trained runs of a results store (those with ``checkpoints/best.pt``), filtered by label (empty:
    every model) and seed (empty: every seed); what the sweep and landscape notebooks evaluate."""
    from atomizer.results.store import find_run_dirs

    if not Path(store).is_dir():
        raise FileNotFoundError(f"results store {store} does not exist: train runs into it first (disjoint_modalities)")
    runs = []
    for d in find_run_dirs(store):
        folder = RunFolder(d)
        cfg = yaml.safe_load(folder.config.read_text()) or {}
        label = cfg.get("label") or cfg.get("model")
        if not folder.best.exists():
            continue
        if (not seeds or int(cfg.get("seed", 0)) in seeds) and (not models or label in models):
            runs.append(d)
    return runs
