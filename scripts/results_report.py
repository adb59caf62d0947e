"""Tables and figures of a cross-validated results store for ``docs/results.md``.

    python scripts/results_report.py runs/eurosat_cv --out docs/results
    python scripts/results_report.py runs/eurosat_recipe --out docs/results/recipe \
        --models atomizer-tiny resnet vit scalemae perceiver --reference atomizer-tiny

Writes CSV tables (summary per model and modality, paired differences of Atomizer against every baseline,
ablations, data scaling, landscape) and PNG figures into ``--out``; prints the main tables. Everything
is computed by the library (:mod:`atomizer.results.stats`, ``landscape``, ``scaling``) from the per-image
predictions of the runs.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from atomizer.results import plots, stats  # noqa: E402
from atomizer.results.landscape import landscape  # noqa: E402
from atomizer.results.scaling import scaling  # noqa: E402
from atomizer.results.store import collect_predictions  # noqa: E402

MODELS = ["atomizer", "resnet", "vit", "scalemae", "perceiver"]
#: variant -> the run it is compared with (same seeds and folds)
ABLATIONS = {"atomizer+aug": "atomizer", "resnet+aug": "resnet", "atomizer-nogsd": "atomizer"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--train-modalities", default="eurosat_train")
    p.add_argument("--models", nargs="+", default=MODELS, help="models of the main tables (labels in the store)")
    p.add_argument("--reference", default="atomizer", help="the model every other is paired with")
    p.add_argument(
        "--pairs",
        nargs="*",
        default=[],
        metavar="A:B",
        help="more paired differences, A minus B (e.g. atomizer+pretrained:atomizer): pairs_<metric>.csv",
    )
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    preds = collect_predictions(args.store)
    have = [str(m) for m in preds.model.values]
    main_models = [m for m in args.models if m in have]
    base = preds.sel(model=main_models)
    pd.set_option("display.width", 250)
    for metric in ("macro_map", "top1"):
        s = stats.summarize(base, metric, n_resamples=args.resamples)
        s.to_csv(out / f"summary_{metric}.csv", index=False)
        print(f"\n== {metric}: mean [95 % CI] over seeds x 5 folds ({base.sizes['image']} test images)")
        print(stats.mean_ci_table(s).to_string())
        print("seeds:", s.groupby("model")["seeds"].max().to_dict())
        d = stats.paired_differences(base, args.reference, metric=metric, n_resamples=args.resamples)
        d.to_csv(out / f"differences_{metric}.csv", index=False)
        table, words = stats.verdict(d)
        print(f"-- {args.reference} minus baseline ({metric})\n{table.to_string()}\nVerdict: {words}")
        if metric == "macro_map":
            plots.save(
                plots.ci_bars(s, metric, title="EuroSAT, 5 folds: macro mAP per test modality"), out / "table1_ci.png"
            )
            plots.save(
                plots.difference_bars(d, title="Atomizer minus each baseline (macro mAP, 95 % CI)"),
                out / "differences.png",
            )
    for metric in ("macro_map", "top1"):
        found = [pair.split(":", 1) for pair in args.pairs]
        bad = [f"{a}:{b}" for a, b in found if a not in have or b not in have]
        if bad:
            print(f"results_report: pair(s) {bad} name a model the store lacks (it has {have})", file=sys.stderr)
            return 2
        if found:
            d = pd.concat(
                [
                    stats.paired_differences(preds.sel(model=[a, b]), a, [b], metric=metric, n_resamples=args.resamples)
                    for a, b in found
                ]  # fmt: skip
            )
            d.to_csv(out / f"pairs_{metric}.csv", index=False)
            print(f"\n== pairs ({metric}): A minus B, paired over the same images")
            named = d.assign(other=d["model"] + " - " + d["other"])  # one row per pair, whatever repeats
            print(stats.verdict(named)[0].to_string())
    rows = []
    for variant, ref in ABLATIONS.items():
        if variant in have and ref in have:
            d = stats.paired_differences(preds.sel(model=[variant, ref]), variant, [ref], n_resamples=args.resamples)
            o = stats.summarize_over_modalities(preds.sel(model=[variant, ref]), n_resamples=args.resamples)
            rows.append(
                d.assign(
                    variant_mean_over_modalities=float(o[o.model == variant]["mean"].iloc[0]),
                    reference_mean_over_modalities=float(o[o.model == ref]["mean"].iloc[0]),
                )
            )
    if rows:
        ab = pd.concat(rows)
        ab.to_csv(out / "ablations.csv", index=False)
        print("\n== ablations (variant minus reference, macro mAP)")
        print(ab.pivot(index="model", columns="modality", values="difference").round(1).to_string())
        print(ab.groupby("model")[["variant_mean_over_modalities", "reference_mean_over_modalities"]].first().round(1))
    sc = scaling(args.store, n_resamples=args.resamples)
    if sc is not None:
        sc = sc[sc.base_model.isin(args.models)]
        sc.to_csv(out / "scaling.csv", index=False)
        plots.save(
            plots.scaling_plot(sc, title="data scaling on EuroSAT (mean of T1-T6, 95 % CI)"), out / "scaling.png"
        )
        print("\n== data scaling\n", sc[["model", "train_images", "mean", "ci_low", "ci_high", "seeds"]].round(1))
    land = landscape(args.store, args.train_modalities, n_resamples=args.resamples)
    if land is not None:
        land = land[land.model.isin(args.models)]
        land.to_csv(out / "landscape.csv", index=False)
        plots.save(plots.landscape_plot(land), out / "landscape.png")
        bins = pd.cut(
            land["distance_total"],
            [-0.01, 0.01, 0.75, 1.5, 10],
            labels=["training", "near (<0.75)", "mid (<1.5)", "far (>=1.5)"],
        )
        nf = (
            land.assign(distance=bins)
            .pivot_table(index="model", columns="distance", values="mean", aggfunc="mean", observed=False)
            .round(1)
        )
        nf.to_csv(out / "landscape_near_far.csv")
        print("\n== landscape: mean macro mAP by distance from the training modalities\n", nf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
