"""Adapters on a dense task, bands never seen: a frozen segmentation Atomizer trained on TerraMesh's optical
Sentinel-2 bands, adapted to a new sensor (Sentinel-1 VV/VH + the S2 bands it never saw: B01, B8A, B09)
by every adapter kind, SpectralX's two stages and full fine-tuning (README "Dense prediction", issue 27).

    python scripts/dense_adapters_experiment.py blocks               # the blocks and the modality files, once
    python scripts/dense_adapters_experiment.py run --fold 0 --seed 0  # the base, then every method (resumable)
    python scripts/dense_adapters_experiment.py summary              # tables: mIoU, and differences, paired

Protocol:
* Data: the shipped TerraMesh manifest cut into 2 x 2 spatial blocks of 112 px at 10 m
  (:mod:`atomizer.data.blocks`): 20 blocks, 4 folds; fold k tests one block of every tile (5 blocks),
  validates on the next fold's, trains on the other 10. Across the 4 folds every block is tested once.
  Whole-tile folds do not work for this set: its 5 tiles share few classes (README "Dense prediction").
* Base: the recipe's ``tiny`` Atomizer with the dense decoder, trained on the optical bands
  B02-B08, B11, B12 (``base`` modalities below), never on B01, B8A, B09 or Sentinel-1; then frozen.
* New sensor: B01, B8A, B09, VV, VH, trained in 64 px windows at 10 m (``new_train``), tested on the whole
  112 px block at 10 m (``new_test``). Masks scored on their own 10 m grid.
* Methods (each from the same base, same data, same epochs): none; adapters spectral, LoRA, SLR, IA3, moa
  (each with the spectral adapter; the head, i.e. the dense decoder, frozen: the label set is unchanged);
  LoRA + spectral with the pixel classifier trained (``head: fc``) or the whole dense decoder (``head:
  full``, beyond the 5 % budget), and the decoder alone;
  SpectralX's two stages (masked reconstruction on the new sensor with moa + spectral, then the refinement
  adapter, stage 1 frozen); full fine-tuning. The base on its own optical bands (``base_test``) is the
  reference of what the base knows.
* Statistics: per seed, the 4 folds are pooled (each block tested once) and mIoU is computed from the summed
  per-block confusions; mean (sd) over seeds; 95 % bootstrap CI over the 20 blocks; differences to
  LoRA + spectral paired by seed and block (bootstrap over blocks of the seed-mean difference).

Runs go to runs/dense_adapters/seed<S>_fold<F>/<method>/ (a method whose predictions exist is skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

REPO = Path(__file__).resolve().parent.parent
SOURCE = "data/embedded/dense/terramesh/manifest.csv"
OUT = Path("runs/dense_adapters")
BLOCKS = OUT / "blocks" / "manifest.csv"
OPTICAL = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]
NEW = ["B01", "B8A", "B09", "VV", "VH"]
SRC = {"size_px": 112, "gsd_m": 10}
MODALITIES = {
    "base": [
        {"name": "b10m", "size_px": 64, "gsd_m": 10, "bands": ["B02", "B03", "B04", "B08"]},
        {"name": "b20m", "size_px": 48, "gsd_m": 20, "bands": OPTICAL},
        {"name": "b10m_all", "size_px": 80, "gsd_m": 10, "bands": OPTICAL},
    ],
    "base_test": [{"name": "optical", "size_px": 112, "gsd_m": 10, "bands": OPTICAL}],
    "new_train": [{"name": "new_sensor", "size_px": 64, "gsd_m": 10, "bands": NEW}],
    "new_test": [{"name": "new_sensor", "size_px": 112, "gsd_m": 10, "bands": NEW}],
}
COMMON = {
    "model": "atomizer",
    "preset": "tiny",
    "model_overrides": {"encoding": {"gsd_code": False}},
    "dataset": BLOCKS.as_posix(),
    "epochs": 12,
    "batch_size": 4,
    "windows_per_image": 4,
    "dense_train_queries": 2048,
    "lr": 0.001,
    "device": "auto",
}
ADAPTER_LR = 0.003
ADAPTERS = {
    "spectral": {"kinds": ["spectral"]},
    "lora+spectral": {"kinds": ["lora", "spectral"], "rank": 4},
    "slr+spectral": {"kinds": ["spectral", "slr"], "rank": 3},
    "ia3+spectral": {"kinds": ["spectral", "ia3"]},
    "moa+spectral": {"kinds": ["spectral", "moa"]},
    # the dense decoder is the task head: its pixel classifier trained (head: fc, within the 5 % budget), or the
    # whole decoder (head: full: 49,417 parameters, 32 % of the tiny encoder's, so beyond the budget), with
    # LoRA + spectral or alone
    "lora+spectral+fc": {"kinds": ["lora", "spectral"], "rank": 4, "head": "fc"},
    "lora+spectral+decoder": {"kinds": ["lora", "spectral"], "rank": 4, "head": "full", "max_fraction": 0.4},
    "decoder only": {"kinds": [], "head": "full", "max_fraction": 0.4},
}
SPECTRALX = {
    "adapters": {"kinds": ["spectral", "moa"]},
    "stage2_kinds": ["refine"],
    "freeze_stage1": True,
    "pretrain": {"steps": 200, "batch_size": 8, "lr": ADAPTER_LR, "mask_ratio": 0.9, "masking": "random"},
}
METHODS = ["base: own bands", "none", *ADAPTERS, "spectralx two-stage", "full fine-tuning"]
REFERENCE = "lora+spectral"


def modality_file(name: str) -> Path:
    return OUT / "modalities" / f"{name}.yaml"


def blocks() -> None:
    from atomizer.core.storage import atomic_write_text
    from atomizer.data.blocks import write_blocks

    if not BLOCKS.is_file():
        write_blocks(SOURCE, BLOCKS.parent, n=2)
    for name, mods in MODALITIES.items():
        text = yaml.safe_dump({"description": f"dense adapters experiment: {name}", "source": SRC,
                               "modalities": mods}, sort_keys=False)  # fmt: skip
        atomic_write_text(modality_file(name), text)
    print(f"{BLOCKS}: 20 blocks, 4 folds; modalities in {modality_file('base').parent}")


def method_dir(seed: int, fold: int, method: str) -> Path:
    safe = method.replace(": ", "_").replace(" ", "_").replace("+", "_")
    return OUT / f"seed{seed}_fold{fold}" / safe


def predictions_file(seed: int, fold: int, method: str) -> Path:
    """Where a method's per-block predictions are: in its run folder (the results store reads them, the
    method's ``label`` naming the model), but the base on its own bands apart (other test modalities)."""
    run = OUT / f"seed{seed}_fold{fold}"
    if method == "base: own bands":
        return run / "base" / "own_bands_predictions.nc"
    if method == "spectralx two-stage":
        return method_dir(seed, fold, method) / "stage2" / "predictions.nc"
    return method_dir(seed, fold, method) / "predictions.nc"


def _evaluate(checkpoint: str, modalities: str, out: Path, label: str) -> None:
    from atomizer.engine.evaluation import evaluate_checkpoint

    res, preds = evaluate_checkpoint(checkpoint, modalities, dataset=BLOCKS.as_posix(), predictions=True,
                                     batch_size=2, model_name=label)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    preds.to_netcdf(out, engine="h5netcdf")
    score = float(res["score"].sel(metric="miou").mean())
    print(f"  seed {preds.attrs.get('seed')} fold {preds.attrs.get('fold')} {label}: test mIoU {score:.1f}", flush=True)


def run(seed: int, fold: int, methods: list[str]) -> None:
    from atomizer.core.storage import atomic_write_text
    from atomizer.engine.adaptation import AdaptConfig, adapt
    from atomizer.engine.training import TrainConfig, train

    if not BLOCKS.is_file():
        blocks()
    base_out = OUT / f"seed{seed}_fold{fold}" / "base"
    common = {**COMMON, "seed": seed, "fold": fold}
    best = base_out / "checkpoints" / "best.pt"
    if not (base_out / "summary.json").is_file():
        cfg = {**common, "train_modalities": str(modality_file("base")), "label": "base",
               "test_modalities": str(modality_file("base_test")), "out_dir": str(base_out)}  # fmt: skip
        train(TrainConfig.from_dict(cfg), resume=(base_out / "checkpoints" / "last.pt").is_file(), progress=False)
    new = {**common, "train_modalities": str(modality_file("new_train")),
           "test_modalities": str(modality_file("new_test"))}  # fmt: skip
    test = str(modality_file("new_test"))
    for method in methods:
        out, preds = method_dir(seed, fold, method), predictions_file(seed, fold, method)
        if preds.is_file():
            continue
        if method == "base: own bands":
            _evaluate(str(best), str(modality_file("base_test")), preds, "base")
        elif method == "none":  # the base itself: its configuration, named "none" in the store
            config = yaml.safe_load((base_out / "config.yaml").read_text())
            atomic_write_text(out / "config.yaml", yaml.safe_dump({**config, "label": "none"}, sort_keys=False))
            atomic_write_text(out / "metrics.jsonl", "")  # no training step: an empty log (a run for the store)
            _evaluate(str(best), test, preds, method)
        elif method == "spectralx two-stage":
            spec = {**SPECTRALX, "base": str(best), "out_dir": str(out),
                    "train": {k: v for k, v in {**new, "lr": ADAPTER_LR, "label": method}.items() if k != "model"}}  # fmt: skip
            s = adapt(AdaptConfig.from_dict(spec), resume=(out / "adapt.yaml").is_file(), progress=False)
            _evaluate(s["best"], test, preds, method)
        elif method in ADAPTERS or method == "full fine-tuning":
            cfg = {**new, "init": str(best), "label": method, "out_dir": str(out)}
            if method in ADAPTERS:
                cfg.update(adapters=ADAPTERS[method], lr=ADAPTER_LR)
            s = train(TrainConfig.from_dict(cfg), resume=(out / "checkpoints" / "last.pt").is_file(), progress=False)
            _evaluate(s["best"], test, preds, method)
        else:
            raise SystemExit(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def _confusions() -> dict[str, dict[int, list[tuple[str, np.ndarray]]]]:
    """method -> seed -> [(block id, confusion (C, C))], every fold of the seed."""
    found: dict[str, dict[int, list[tuple[str, np.ndarray]]]] = {}
    for d in sorted(OUT.glob("seed*_fold*")):
        seed, fold = (int(x) for x in d.name.replace("seed", "").split("_fold"))
        for method in METHODS:
            p = predictions_file(seed, fold, method)
            if not p.is_file():
                continue
            with xr.open_dataset(p, engine="h5netcdf") as ds:
                preds = ds.load()
            conf = preds["confusion"].values[0]  # the one modality
            ids = [str(i) for i in preds["image"].values]
            found.setdefault(method, {}).setdefault(seed, []).extend(zip(ids, conf))
    return found


def miou(conf: np.ndarray) -> np.ndarray:
    """mIoU (%) from confusions (..., n, C, C) summed over blocks: the results store's statistic
    (:func:`atomizer.results.stats.metric_values`, which reads confusions flattened to C * C "classes")."""
    from atomizer.results.stats import metric_values

    flat = conf.reshape(*conf.shape[:-2], -1)
    return metric_values(flat, flat, "miou")


def _trainable(seed: int, method: str) -> str:
    """The trained parameters of a method (fold 0's run of ``seed``), and their share of the encoder's."""
    if method in ("base: own bands", "none"):
        return "0"
    run = method_dir(seed, 0, method) / ("stage2" if method == "spectralx two-stage" else "")
    f = run / "summary.json"
    rep = json.loads(f.read_text()).get("trainable_parameters") if f.is_file() else None
    if not rep:
        return "all"
    return f"{rep['trainable']:,} ({100 * rep['fraction']:.1f} %)"


def summary(resamples: int = 2000) -> None:
    import pandas as pd

    from atomizer.results import stats

    found = _confusions()
    if not found:
        raise SystemExit(f"no finished runs under {OUT}; run some first")
    seeds = sorted(set.intersection(*(set(v) for v in found.values())))
    complete = {m: v for m, v in found.items() if all(len(v.get(s, [])) == 20 for s in seeds)}
    stacks: dict[str, np.ndarray] = {}
    for method, per_seed in complete.items():
        order = sorted(i for i, _ in per_seed[seeds[0]])
        stacks[method] = np.stack([np.stack([dict(per_seed[s])[i] for i in order]) for s in seeds])  # (S, n, C, C)
    rows = []
    for method in [m for m in METHODS if m in stacks]:
        st = stacks[method]
        values = np.array([miou(x) for x in st])
        lo, hi = stats._bootstrap(lambda idx, s=st: miou(s[:, idx]).mean(axis=0), st.shape[1], resamples, 0,
                                  width=st.shape[0] * st[0, 0].size)  # fmt: skip
        row = {"method": method, "trainable": _trainable(seeds[0], method), "seeds": len(seeds), "blocks": st.shape[1],
               "per seed": " ".join(f"{v:.1f}" for v in values), "mIoU": values.mean(),
               "sd": values.std(ddof=1) if len(values) > 1 else float("nan"), "95% CI": f"[{lo:.1f}, {hi:.1f}]"}  # fmt: skip
        if REFERENCE in stacks and method != REFERENCE:
            ref = stacks[REFERENCE]
            d = values - np.array([miou(x) for x in ref])
            dlo, dhi = stats._bootstrap(lambda idx, a=st, b=ref: (miou(a[:, idx]) - miou(b[:, idx])).mean(axis=0),
                                        st.shape[1], resamples, 0, width=st.shape[0] * st[0, 0].size)  # fmt: skip
            row[f"minus {REFERENCE}"] = f"{d.mean():+.1f} [{dlo:+.1f}, {dhi:+.1f}]"
        rows.append(row)
    table = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT / "summary.csv", index=False)
    with pd.option_context("display.width", 220, "display.max_columns", None):
        print(table.round(1).to_string(index=False))
    print(f"written: {OUT / 'summary.csv'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("blocks")
    r = sub.add_parser("run")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--fold", type=int, default=0)
    r.add_argument("--methods", nargs="*", default=METHODS, choices=METHODS)
    s = sub.add_parser("summary")
    s.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args(argv)
    if args.cmd == "blocks":
        blocks()
    elif args.cmd == "run":
        run(args.seed, args.fold, args.methods)
    else:
        summary(args.resamples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
