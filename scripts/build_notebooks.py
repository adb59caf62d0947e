"""Write the experiment notebooks (clean, no outputs) from the cell sources below.

Run ``python scripts/build_notebooks.py`` after editing; the notebooks in ``notebooks/`` are committed.
Each has exactly one cell tagged ``parameters`` (papermill), annotated, with no derived values.
"""

from pathlib import Path

import nbformat as nbf

ROOT = Path(__file__).resolve().parents[1]


def md(text):
    return nbf.v4.new_markdown_cell(text.strip())


def code(text, tags=()):
    c = nbf.v4.new_code_cell(text.strip())
    if tags:
        c.metadata["tags"] = list(tags)
    return c


def params(text):
    return code(text, tags=["parameters"])


SETUP = '''
import os
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import pandas as pd
from IPython.display import Image, display

from atomizer.training import pick_device

if repo_root:
    os.chdir(Path(repo_root).resolve())
device = str(pick_device(device))
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
common = dict(dataset=dataset, data_root=data_root or None, train_modalities=train_modalities, preset=preset,
              epochs=epochs, max_steps=max_steps or None, batch_size=batch_size, lr=lr, seed=seed, device=device,
              train_limit=train_limit or None, val_limit=val_limit or None)
print("device:", device, "| output:", out.resolve())
'''

DISJOINT = [
    md('''
# Modality-disjoint experiment (the paper's Table 1)

Trains each model on images that each get one **training** modality (size, GSD, band subset), selects
on validation images under the training modalities only, then evaluates on six **test** modalities that
differ from every training modality in size, GSD and band set. Ends with a results table and a bar
chart; results are written to `output_dir` (one run directory per model: the results store the
dashboard reads).

**Time.** Default parameters (embedded EuroSAT, `small` preset, 30 epochs, all five models): about
5 minutes on one H100 GPU, about 40 minutes on 2 CPU cores. Smoke parameters used by the tests
(`tiny` preset, `max_steps=2`, `train_limit=8`, one model): under a minute on a CPU. For the paper's
scale, point `dataset="bigearthnet"`/`data_root` at BigEarthNet and use `experiments/paper_table1.yaml`.
'''),
    params('''
dataset: str = "eurosat"  # embedded dataset name: "eurosat" or "bigearthnet"
data_root: str = ""  # folder of the dataset; "" = the embedded slice in data/
models: list = ["atomizer", "resnet", "vit", "scalemae", "perceiver"]  # models to train and compare
train_modalities: str = "eurosat_train"  # training modality file (name in data/modalities or a path)
test_modalities: str = "eurosat_test"  # test modality file
preset: str = "small"  # model size preset: tiny, small (paper: Atomizer only)
epochs: int = 30  # training epochs
max_steps: int = 0  # stop after this many optimiser steps; 0 = no limit
batch_size: int = 16  # images per step
lr: float = 0.001  # peak learning rate (warm-up then cosine)
train_limit: int = 0  # use only the first N training images; 0 = all
val_limit: int = 0  # use only the first N validation images; 0 = all
device: str = "auto"  # auto (CUDA when present), cpu or cuda
seed: int = 0  # random seed
output_dir: str = "runs/disjoint"  # results store for this experiment
repo_root: str = ""  # run from this folder (relative paths); "" = current folder
'''),
    code(SETUP),
    code('''
from atomizer.experiments import train_and_evaluate

if isinstance(models, str):  # papermill -p passes strings: accept "atomizer,resnet"
    models = [m.strip() for m in models.strip("[]").replace("'", "").replace('"', "").split(",") if m.strip()]
run_dirs = {}
for model in models:
    print(f"=== {model}")
    run_dirs[model] = train_and_evaluate(model, out / model, test_modalities, **common)
'''),
    code('''
from atomizer.evaluation import PAPER_TABLE1
from atomizer.results import collect

results = collect(out, "table")
metric = "macro_map"
table = results["score"].sel(metric=metric).to_pandas().round(2)
print(f"{metric} (%) per test modality; modalities:")
for m in results.modality.values:
    print(f"  {m}: {int(results.size_px.sel(modality=m))} px @ {float(results.gsd_m.sel(modality=m)):g} m, "
          f"{results.bands.sel(modality=m).item()}")
table
'''),
    code('''
from atomizer import plots

fig = plots.table1_bars(results, metric, paper=PAPER_TABLE1 if dataset == "bigearthnet" else None,
                        title=f"{dataset}: {metric} on the six test modalities")
figure_path = plots.save(fig, out / "table1.png")
display(Image(filename=str(figure_path)))
'''),
]


EXPLORE = [
    md('''
# Explore the atom encodings

Interactive in JupyterLab: the three encodings of the method (non-uniform RBF spectral code,
resolution-modulated positional code, Fourier value code) through the same Panel components the served
dashboard uses (`atomizer.dashboard`), then a real image broken into atoms. Move the sliders; the
plots and the arrays printed below come from the library's pure encoding functions.

**Time.** Runs in about 20 seconds on a CPU (no training); a GPU is not used.
'''),
    params('''
image: str = ""  # image to tokenize (npz, GeoTIFF or band folder); "" = an embedded BigEarthNet patch
sensors: list = ["sentinel2", "landsat8", "enmap"]  # sensors drawn on the spectral axis
gsd_m: float = 20.0  # GSD of the positional-encoding view (m/px)
size_px: int = 60  # image size of the positional-encoding view (px)
'''),
    code('''
import numpy as np
import panel as pn
import torch

from atomizer.dashboard.positional import PositionalEncodings
from atomizer.dashboard.spectral import SpectralCoverage

pn.extension()
spectral = SpectralCoverage(sensors=list(sensors))
spectral
'''),
    code('''
# The same component as data: a custom band's code, and how wider bands light more anchors
for width in (10.0, 60.0, 200.0):
    spectral.width_nm = width
    print(f"width {width:5.0f} nm -> anchors lit: {spectral.lit_anchors(spectral.custom_encoding())}")
spectral.similarity().round(2)
'''),
    code('''
positional = PositionalEncodings(gsd_m=gsd_m, size_px=size_px)
positional
'''),
    code('''
positional.ground_point_codes().head(10)
'''),
    code('''
from atomizer.datasets import embedded_path
from atomizer.readers import describe, open_image
from atomizer.tokens import tokenize

path = image or sorted((embedded_path("bigearthnet") / "patches").glob("*.npz"))[1]
img = open_image(path)
atoms = tokenize(img)
x, y = atoms.positions()
print(f"{path}: {int(atoms.mask.sum()):,} atoms over {len(atoms.band_names)} bands, each on its native grid")
describe(img)
'''),
    code('''
import pandas as pd

table = atoms.band_table.numpy()
sample = np.random.default_rng(0).choice(atoms.value.shape[1], 8, replace=False)
pd.DataFrame({
    "band": [atoms.band_names[b] for b in atoms.band[0, sample].tolist()],
    "value (reflectance)": atoms.value[0, sample].numpy(),
    "wavelength_nm": table[atoms.band[0, sample], 0],
    "bandwidth_nm": table[atoms.band[0, sample], 1],
    "gsd_m": table[atoms.band[0, sample], 2],
    "x_m": x[0, sample].numpy(), "y_m": y[0, sample].numpy(),
})
'''),
]


def sweep_notebook(kind):
    coord = "GSD" if kind == "gsd" else "input size"
    values = "[10, 20, 30, 40, 60]" if kind == "gsd" else "[16, 32, 48, 64]"
    paper = "PAPER_RESOLUTION_SWEEP" if kind == "gsd" else "PAPER_SIZE_SWEEP"
    table = "Table 2" if kind == "gsd" else "Table 3"
    what = ("the same ground extent at coarser and coarser GSDs (each band area-averaged, never upsampled)"
            if kind == "gsd" else "centred crops of decreasing size at the source GSD")
    return [
        md(f'''
# {coord.capitalize()} sweep (the paper's {table})

Evaluates one trained model on {what}, with all the dataset's bands, and plots the metric against the
{coord}. Uses the checkpoint of `run_dir` if given, otherwise trains a model first (same options as the
Table 1 notebook).

**Time.** Default parameters (train `small` Atomizer on embedded EuroSAT, 30 epochs, then sweep): about
2 minutes on one H100 GPU, about 10 minutes on 2 CPU cores. Smoke parameters (`tiny`, `max_steps=2`):
under a minute on a CPU.
'''),
        params(f'''
run_dir: str = ""  # an existing run directory to sweep; "" = train one into output_dir
model: str = "atomizer"  # model to train when run_dir is empty
values: list = {values}  # {coord} values to evaluate ({'m/px' if kind == 'gsd' else 'pixels'})
dataset: str = "eurosat"  # embedded dataset name: "eurosat" or "bigearthnet"
data_root: str = ""  # folder of the dataset; "" = the embedded slice in data/
train_modalities: str = "eurosat_train"  # training modality file
test_modalities: str = "eurosat_test"  # test modality file (gives the source size and GSD)
preset: str = "small"  # model size preset
epochs: int = 30  # training epochs
max_steps: int = 0  # stop after this many optimiser steps; 0 = no limit
batch_size: int = 16  # images per step
lr: float = 0.001  # peak learning rate
train_limit: int = 0  # use only the first N training images; 0 = all
val_limit: int = 0  # use only the first N validation images; 0 = all
device: str = "auto"  # auto, cpu or cuda
seed: int = 0  # random seed
output_dir: str = "runs/sweep_{kind}"  # where a trained run goes
repo_root: str = ""  # run from this folder; "" = current folder
'''),
        code(SETUP),
        code(f'''
from atomizer.experiments import run_sweep, train_and_evaluate

run = Path(run_dir) if run_dir else train_and_evaluate(model, out / model, test_modalities, **common)
sweep_path = run_sweep(run, "{kind}", values, batch_size=batch_size, device=device)
print("sweep results:", sweep_path)
'''),
        code(f'''
from atomizer import plots
from atomizer.evaluation import {paper}, load_results

sweep = load_results(sweep_path)
metric = "macro_map"
display(sweep["score"].sel(metric=metric).to_pandas().round(2))
fig = plots.sweep_lines(sweep, "{kind}", metric, paper={paper} if dataset == "bigearthnet" else None)
figure_path = plots.save(fig, Path(run) / "sweep_{kind}.png")
display(Image(filename=str(figure_path)))
'''),
    ]


def write(name, cells):
    nb = nbf.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    path = ROOT / "notebooks" / name
    path.parent.mkdir(exist_ok=True)
    nbf.write(nb, path)
    print("wrote", path.relative_to(ROOT))


if __name__ == "__main__":
    write("disjoint_modalities.ipynb", DISJOINT)
    write("resolution_sweep.ipynb", sweep_notebook("gsd"))
    write("size_sweep.ipynb", sweep_notebook("size"))
    write("explore_encodings.ipynb", EXPLORE)
