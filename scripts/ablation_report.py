"""Recipe ablations of a cross-validated store, each variant paired with its reference run (same seed, folds).

    python scripts/ablation_report.py runs/ablations --reference atomizer-nogsd --out docs/results/ablations_recipe.csv

For every variant: the mean (and sd) over folds of the best VALIDATION macro mAP (training modalities only:
what chooses a recipe), the test macro mAP mean of T1-T6, and per test modality the paired difference
variant - reference with its 95 % CI and Holm-corrected permutation p-value (:mod:`atomizer.results.stats`).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from atomizer.results import stats  # noqa: E402
from atomizer.results.store import collect_predictions  # noqa: E402


def validation(store: Path, model: str) -> tuple[float, float, int]:
    vals = [json.loads(f.read_text())["best_val_macro_map"] for f in sorted((store / model).glob("*/summary.json"))]
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store")
    p.add_argument("--reference", required=True)
    p.add_argument("--variants", nargs="*", help="default: every other model of the store with 5 folds")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--out", help="CSV of the per-modality differences")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    store = Path(args.store)
    preds = collect_predictions(store)
    have = [str(m) for m in preds.model.values]
    variants = args.variants or [m for m in have if m != args.reference]
    rows, lines = [], []
    ref_val = validation(store, args.reference)
    for v in variants:
        pair = preds.sel(model=[v, args.reference])
        d = stats.paired_differences(pair, v, [args.reference], n_resamples=args.resamples)
        o = stats.summarize_over_modalities(pair, n_resamples=args.resamples)
        val = validation(store, v)
        rows.append(d.assign(validation_mean=val[0], validation_sd=val[1], folds=val[2]))
        diffs = " ".join(f"{r.difference:+.1f}{'*' if r.significant else ''}" for r in d.itertuples())
        lines.append(
            f"| {v} | {val[0]:.1f} (sd {val[1]:.1f}) | {float(o[o.model == v]['mean'].iloc[0]):.1f} | {diffs} |"
        )
    o = stats.summarize_over_modalities(preds.sel(model=[args.reference]), n_resamples=args.resamples)
    print(
        f"| {args.reference} (reference) | {ref_val[0]:.1f} (sd {ref_val[1]:.1f}) | {float(o['mean'].iloc[0]):.1f} | |"
    )
    print("\n".join(lines))
    if args.out and rows:
        pd.concat(rows).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
