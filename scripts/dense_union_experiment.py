"""The dense union experiment: one segmentation Atomizer on TerraMesh + CaFFe at once, against the same model on
each part alone, on the same folds (configs/dense_union_atomizer.yaml; README "Dense prediction").

    # one run (train, then evaluate its fold's test images as read, per-image confusions kept)
    python scripts/dense_union_experiment.py run --condition union --fold 0 --seed 0
    # every run's per-part mIoU: per seed the 5 folds pooled (each image tested once), mean and sd over seeds,
    # and a 95 % bootstrap CI over the part's test images (atomizer.results.stats)
    python scripts/dense_union_experiment.py summary

Runs go to runs/dense_union/<condition>/seed<S>_fold<F>/ (a finished run is skipped).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import xarray as xr

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "dense_union_atomizer.yaml"
TERRAMESH = "data/embedded/dense/terramesh/manifest.csv"
CAFFE = "data/embedded/dense/caffe/manifest.csv"
CONDITIONS = {"union": f"{TERRAMESH}+{CAFFE}", "terramesh": TERRAMESH, "caffe": CAFFE}
OUT = Path("runs/dense_union")


def run_dir(condition: str, seed: int, fold: int) -> Path:
    return OUT / condition / f"seed{seed}_fold{fold}"


def run(condition: str, seed: int, fold: int, epochs: int | None) -> None:
    from atomizer.engine.evaluation import evaluate_checkpoint
    from atomizer.engine.training import TrainConfig, train

    out = run_dir(condition, seed, fold)
    preds_file = out / "predictions.nc"
    if preds_file.is_file():
        print(f"{out}: done")
        return
    over = {"dataset": CONDITIONS[condition], "seed": seed, "fold": fold, "out_dir": str(out)}
    if epochs is not None:
        over["epochs"] = epochs
    cfg = TrainConfig.from_yaml(CONFIG, **over)
    summary = train(cfg, resume=(out / "checkpoints" / "last.pt").is_file(), progress=False)
    res, preds = evaluate_checkpoint(summary["best"], "native", predictions=True, batch_size=2)
    preds.to_netcdf(preds_file, engine="h5netcdf")
    print(res["score"].sel(model=res.model.values[0]).to_pandas().round(2).to_string())


def part_confusions(preds: xr.Dataset, condition: str) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Per part: (per-image confusions (n, C, C) of that part's images, the part's class indices)."""
    conf = preds["confusion"].values[0]  # the one modality: native
    if "part" not in preds.coords:
        return {condition: (conf, list(range(conf.shape[-1])))}
    parts = [str(p) for p in preds["part"].values]
    classes = [str(c).split("/", 1)[0] for c in preds["true"].values]
    out = {}
    for p in dict.fromkeys(classes):
        rows = [i for i, q in enumerate(parts) if q == p]
        out[p] = (conf[rows], [k for k, q in enumerate(classes) if q == p])
    return out


def miou(conf: np.ndarray, cls: list[int]) -> np.ndarray:
    """mIoU (%) of the part's classes from confusions (..., n, C, C) summed over images (the definition of
    atomizer.engine.metrics.part_miou, vectorised over resamples)."""
    m = conf.sum(axis=-3).astype(np.float64)
    tp = np.diagonal(m, axis1=-2, axis2=-1)[..., cls]
    union = m.sum(-1)[..., cls] + m.sum(-2)[..., cls] - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return 100 * np.nanmean(iou, axis=-1)


def summary() -> None:
    from atomizer.engine.metrics import part_miou
    from atomizer.results import stats

    rows = []
    for condition in CONDITIONS:
        per_seed: dict[int, dict[str, list[tuple[str, np.ndarray]]]] = {}
        classes: dict[str, list[int]] = {}
        folds_seen: dict[int, set[int]] = {}
        for d in sorted((OUT / condition).glob("seed*_fold*")):
            f = d / "predictions.nc"
            if not f.is_file():
                continue
            seed, fold = (int(x) for x in d.name.replace("seed", "").split("_fold"))
            with xr.open_dataset(f, engine="h5netcdf") as ds:
                preds = ds.load()
            if "part" in preds.coords:  # check: the script's mIoU is the library's
                conf = torch.from_numpy(preds["confusion"].values[0])
                lib = part_miou(
                    conf,
                    [str(p) for p in preds["part"].values],
                    [str(c).split("/", 1)[0] for c in preds["true"].values],
                )
                for p, (c, cls) in part_confusions(preds, condition).items():
                    assert np.isclose(lib[p], miou(c, cls), equal_nan=True), (d, p)
            folds_seen.setdefault(seed, set()).add(fold)
            for p, (c, cls) in part_confusions(preds, condition).items():
                per_seed.setdefault(seed, {}).setdefault(p, []).append((d.name, c))
                classes[p] = cls
        for p in classes:
            seeds = sorted(s for s in per_seed if p in per_seed[s])
            pooled = [np.concatenate([c for _, c in per_seed[s][p]]) for s in seeds]  # each (n, C, C)
            n = min(len(x) for x in pooled)
            pooled = [x[:n] for x in pooled]
            stack = np.stack(pooled)  # (S, n, C, C): the same images in the same order for every seed
            values = np.array([miou(x, classes[p]) for x in stack])
            lo = hi = float("nan")  # a bootstrap needs two images at least
            if n >= 2:
                lo, hi = stats._bootstrap(
                    lambda idx, s=stack, cls=classes[p]: miou(s[:, idx], cls).mean(axis=0),
                    n,
                    2000,
                    0,
                    width=stack.shape[0] * stack[0, 0].size,
                )
            rows.append(
                {
                    "condition": condition,
                    "part": p,
                    "seeds": len(seeds),
                    "folds": len(set.intersection(*(folds_seen[s] for s in seeds))),
                    "test images": n,
                    "per seed": " ".join(f"{v:.1f}" for v in values),
                    "mean": values.mean(),
                    "sd": values.std(ddof=1) if len(values) > 1 else float("nan"),
                    "ci": f"[{lo:.1f}, {hi:.1f}]",
                }
            )
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(pd.DataFrame(rows).round(1).to_string(index=False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--condition", choices=list(CONDITIONS), required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--fold", type=int, default=0)
    r.add_argument("--epochs", type=int, default=None)
    sub.add_parser("summary")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        run(args.condition, args.seed, args.fold, args.epochs)
    else:
        summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
