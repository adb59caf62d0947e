"""The beyond-the-paper notebook end to end with tiny parameters (about 30 s on 2 idle CPU cores; it
evaluates every run on the 40 EuroSAT test images under the six test modalities)."""

from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm

ROOT = Path(__file__).resolve().parents[2]
SMOKE = {
    "preset": "tiny",
    "pretrain_steps": 2,
    "pretrain_batch_size": 4,
    "pretrain_limit": 4,
    "finetune_epochs": 1,
    "adapt_epochs": 1,
    "seeds": [0],
    "batch_size": 4,
    "max_steps": 2,
    "train_limit": 8,
    "val_limit": 4,
    "device": "cpu",
    "threads": 1,
    # SpectralX's two stages, and a frozen ViT adapted to the same new sensor
    "spectralx_variants": {
        "moa": {
            "adapters": {"kinds": ["moa"]},
            "stage2_kinds": ["refine"],
            "freeze_stage1": True,
            "pretrain": {"steps": 2, "batch_size": 4, "eval_images": 2},
        },
    },  # fmt: skip
    "adapt_baselines": {
        "vit": {"slr+patch": {"kinds": ["slr"], "rank": 2, "targets": ["to_q", "to_out", "patch_proj"]}}
    },
    "baseline_preset": "tiny",
}


def test_beyond_the_paper_notebook_smoke(tmp_path):
    out = tmp_path / "nb.ipynb"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "beyond_the_paper.ipynb"),
        str(out),
        kernel_name="python3",
        parameters={**SMOKE, "output_dir": str(tmp_path / "store")},
        cwd=str(ROOT),
        progress_bar=False,
    )
    store = tmp_path / "store"
    for name in (
        "pretraining.png",
        "finetune_minus_scratch.png",
        "adapters.png",
        "finetune_minus_scratch.csv",
        "adapt_table.csv",
        "adapt_minus_reference.csv",
        "summary.json",
    ):
        assert (store / name).stat().st_size > 0, name
    assert (store / "adapt" / "adapters_lora_spectral" / "seed0" / "adapters.pt").exists()
    table = pd.read_csv(store / "adapt_table.csv", index_col=0)
    methods = {"none", "adapters: lora+spectral", "SpectralX two-stage: moa", "vit: none",
               "vit: adapters: slr+patch", "vit: full fine-tune"}  # fmt: skip
    assert methods <= set(table.index)
    assert 0 < table.loc["vit: adapters: slr+patch", "% of encoder"] < 100  # of the ViT's own encoder
    stage = store / "adapt" / "spectralx_moa" / "seed0"
    assert (stage / "stage1" / "adapters.pt").exists() and (stage / "stage2" / "results.nc").exists()
    diffs = pd.read_csv(store / "adapt_minus_reference.csv")
    assert set(diffs["method"]) == set(table.index) - {"adapters: lora+spectral"}
    nb = nbformat.read(out, as_version=4)
    assert "error" not in {o.get("output_type") for c in nb.cells if c.cell_type == "code" for o in c.outputs}
