"""Write the fixed k-fold assignment of the embedded datasets: ``data/folds/<dataset>.csv`` (id, stratum, fold).

Stratified by class (EuroSAT: its label; BigEarthNet: the rarest of a patch's 19-class labels in the
slice, so rare classes spread over the folds), shuffled with a fixed seed. The files are committed; run
this only to regenerate them (``python scripts/make_folds.py``), and check with ``--verify``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atomizer.data.datasets import open_dataset  # noqa: E402
from atomizer.data.folds import assign_folds  # noqa: E402

N_FOLDS = 5
SEED = 0


def assignment(name: str) -> pd.DataFrame:
    ds = open_dataset(name)
    return assign_folds(ds.ids(), [r["labels"] for r in ds.records], k=N_FOLDS, seed=SEED)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--verify", action="store_true", help="check the committed files instead of writing them")
    args = p.parse_args()
    out = ROOT / "data" / "folds"
    out.mkdir(parents=True, exist_ok=True)
    bad = 0
    for name in ("eurosat", "bigearthnet"):
        df = assignment(name)
        path = out / f"{name}.csv"
        if args.verify:
            same = path.is_file() and pd.read_csv(path).reset_index(drop=True).equals(df.reset_index(drop=True))
            print(f"{path.relative_to(ROOT)}: {'ok' if same else 'DIFFERS'}")
            bad += not same
        else:
            df.to_csv(path, index=False)
            print(
                f"wrote {path.relative_to(ROOT)}: {len(df)} images, per fold {df['fold'].value_counts().sort_index().tolist()}"
            )
    return int(bad > 0)


if __name__ == "__main__":
    sys.exit(main())
