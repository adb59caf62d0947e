"""The beyond-the-paper notebook end to end with tiny parameters (about 30 s on 2 idle CPU cores; it
evaluates every run on the 40 EuroSAT test images under the six test modalities)."""

from pathlib import Path

import nbformat
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
        "summary.json",
    ):
        assert (store / name).stat().st_size > 0, name
    assert (store / "adapt" / "adapters_lora_spectral" / "seed0" / "adapters.pt").exists()
    nb = nbformat.read(out, as_version=4)
    assert "error" not in {o.get("output_type") for c in nb.cells if c.cell_type == "code" for o in c.outputs}
