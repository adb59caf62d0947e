"""Train and evaluate models over seeds x folds into one results store (what the cross-validated
``disjoint_modalities`` notebook does, without the notebook): finished runs are skipped, so this and
``atomizer experiment run experiments/eurosat_cv.yaml`` fill the same store.

    python scripts/run_cv.py --store runs/eurosat_cv --models atomizer resnet --seeds 0 1 --folds 0 1 2 3 4
    python scripts/run_cv.py --store runs/eurosat_cv --models atomizer resnet --label +aug --augment '{"band_drop": 0.2}'

With several models, ``--label`` is a suffix (``atomizer+aug``); with one, the whole label (one folder
name: no ``/``, no leading ``.``). The store is locked while this runs (``.experiment.lock``, as
``atomizer experiment run`` does): a second writer of the same store is refused at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atomizer.core.storage import locked  # noqa: E402
from atomizer.experiments import run_path, train_and_evaluate  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="runs/eurosat_cv")
    p.add_argument("--models", nargs="+", default=["atomizer", "resnet"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--preset", default="small")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dataset", default="eurosat")
    p.add_argument("--test-modalities", default="eurosat_test")
    p.add_argument("--train-modalities", default="eurosat_train")
    p.add_argument(
        "--train-fraction",
        type=float,
        default=1.0,
        help="class-stratified fraction of the training folds; runs labelled '<model>@<percent>%%'",
    )
    p.add_argument("--label", help="name of this variant in the results (default: the model, or model@percent%%)")
    p.add_argument(
        "--augment", type=json.loads, help='training augmentation, e.g. \'{"flips": true, "band_drop": 0.2}\''
    )
    p.add_argument("--model-overrides", type=json.loads, default={}, help="model config overrides (JSON)")
    p.add_argument(
        "--train-options",
        type=json.loads,
        default={},
        help='other TrainConfig fields (JSON), e.g. \'{"weight_decay": 0.05, "patience": 3, "init": "ckpt.pt"}\'',
    )
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    try:
        with locked(args.store, "results store", name=".experiment.lock"):
            _run(args)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"run_cv: error: {e}", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace) -> None:
    for seed in args.seeds:
        for model in args.models:
            for fold in args.folds:
                t0 = time.time()
                label = model if args.train_fraction == 1.0 else f"{model}@{round(100 * args.train_fraction)}%"
                if args.label:
                    label = args.label if len(args.models) == 1 else f"{model}{args.label}"
                run = train_and_evaluate(
                    model,
                    run_path(args.store, label, seed, fold),
                    args.test_modalities,
                    progress=False,
                    dataset=args.dataset,
                    train_modalities=args.train_modalities,
                    preset=args.preset,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    seed=seed,
                    fold=fold,
                    device="cpu",
                    label=None if label == model else label,
                    train_fraction=args.train_fraction,
                    augment=args.augment,
                    model_overrides=args.model_overrides,
                    **args.train_options,
                )
                print(f"{label} seed {seed} fold {fold}: {time.time() - t0:.0f} s -> {run}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
