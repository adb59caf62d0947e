"""Write the experiment notebooks (clean, no outputs) from the cell sources below.

Run ``python scripts/build_notebooks.py`` after editing; the notebooks in ``notebooks/`` are committed.
Each has exactly one cell tagged ``parameters`` (papermill), annotated, with no derived values.
"""

import hashlib
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


SETUP = """
import os
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import pandas as pd
from IPython.display import Image, display

from atomizer.engine.training import pick_device

if repo_root:
    os.chdir(Path(repo_root).resolve())
device = str(pick_device(device))
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
common = dict(dataset=dataset, data_root=data_root or None, train_modalities=train_modalities, preset=preset,
              epochs=epochs, max_steps=max_steps or None, batch_size=batch_size, lr=lr, seed=seed, device=device,
              train_limit=train_limit or None, val_limit=val_limit or None)
print("device:", device, "| output:", out.resolve())
"""

DISJOINT = [
    md("""
# Modality-disjoint experiment (the paper's Table 1)

Trains each model on images that each get one **training** modality (size, GSD, band subset), selects
on validation images under the training modalities only, then evaluates on six **test** modalities that
differ from every training modality in size, GSD and band set. Ends with a results table and a bar
chart; results are written to `output_dir` (one run directory per model: the results store the
dashboard reads).

**Time** (measured on 2 CPU cores shared with other jobs, no GPU was available to measure): Atomizer
and ResNet, `small` preset, 12 epochs on the embedded EuroSAT (`experiments/embedded_demo.yaml`): 4 min
11 s for both runs. Training alone, 30 epochs: Atomizer `small` 161 s, ResNet `small` 57 s. The smoke
parameters of the tests (`tiny`, `max_steps=2`, `train_limit=8`, two models) take under a minute. For the paper's
scale, point `dataset="bigearthnet"`/`data_root` at BigEarthNet and use `experiments/paper_table1.yaml`.
"""),
    params("""
dataset: str = "eurosat"  # embedded dataset name: "eurosat" or "bigearthnet"
data_root: str = ""  # folder of the dataset, empty for the embedded slice in data/
models: list = ["atomizer", "resnet", "vit", "scalemae", "perceiver"]  # models to train and compare
train_modalities: str = "eurosat_train"  # training modality file (name of a shipped modality set or a path)
test_modalities: str = "eurosat_test"  # test modality file
preset: str = "small"  # model size preset: tiny, small (paper: Atomizer only)
epochs: int = 30  # training epochs
max_steps: int = 0  # stop after this many optimiser steps (0: no limit)
batch_size: int = 16  # images per step
lr: float = 0.001  # peak learning rate (warm-up then cosine)
train_limit: int = 0  # use only the first N training images (0: all)
val_limit: int = 0  # use only the first N validation images (0: all)
device: str = "auto"  # auto (CUDA when present), cpu or cuda
seed: int = 0  # random seed
output_dir: str = "runs/disjoint"  # results store for this experiment
repo_root: str = ""  # run from this folder (relative paths), empty for the current folder
"""),
    code(SETUP),
    code("""
from atomizer.experiments import train_and_evaluate

if isinstance(models, str):  # papermill -p passes strings: accept "atomizer,resnet"
    models = [m.strip() for m in models.strip("[]").replace("'", "").replace('"', "").split(",") if m.strip()]
run_dirs = {}
for model in models:
    print(f"=== {model}")
    run_dirs[model] = train_and_evaluate(model, out / model, test_modalities, **common)
"""),
    code("""
from atomizer.results.paper import PAPER_TABLE1
from atomizer.results.store import collect

results = collect(out, "table")
metric = "macro_map"
table = results["score"].sel(metric=metric).to_pandas().round(2)
print(f"{metric} (%) per test modality; modalities:")
for m in results.modality.values:
    print(f"  {m}: {int(results.size_px.sel(modality=m))} px @ {float(results.gsd_m.sel(modality=m)):g} m, "
          f"{results.bands.sel(modality=m).item()}")
table
"""),
    code("""
from atomizer.results import plots

fig = plots.table1_bars(results, metric, paper=PAPER_TABLE1 if dataset == "bigearthnet" else None,
                        title=f"{dataset}: {metric} on the six test modalities")
figure_path = plots.save(fig, out / "table1.png")
display(Image(filename=str(figure_path)))
"""),
]


EXPLORE = [
    md("""
# Explore the atom encodings

Interactive in JupyterLab: the three encodings of the method (non-uniform RBF spectral code,
resolution-modulated positional code, Fourier value code) through the same Panel components the served
dashboard uses (`atomizer.dashboard`), then a real image broken into atoms. Move the sliders; the
plots and the arrays printed below come from the library's pure encoding functions.

**Time.** No training: 8 s on 2 CPU cores in the test suite (papermill, default parameters).
"""),
    params("""
image: str = ""  # image to tokenize (npz, GeoTIFF or band folder), empty for an embedded BigEarthNet patch
sensors: list = ["sentinel2", "landsat8", "enmap"]  # sensors drawn on the spectral axis
gsd_m: float = 20.0  # GSD of the positional-encoding view (m/px)
size_px: int = 60  # image size of the positional-encoding view (px)
"""),
    code("""
import numpy as np
import panel as pn
import torch

from atomizer.dashboard.positional import PositionalEncodings
from atomizer.dashboard.spectral import SpectralCoverage

pn.extension()
spectral = SpectralCoverage(sensors=list(sensors))
spectral
"""),
    code("""
# The same component as data: a custom band's code, and how wider bands light more anchors
for width in (10.0, 60.0, 200.0):
    spectral.width_nm = width
    print(f"width {width:5.0f} nm -> anchors lit: {spectral.lit_anchors(spectral.custom_encoding())}")
spectral.similarity().round(2)
"""),
    code("""
positional = PositionalEncodings(gsd_m=gsd_m, size_px=size_px)
positional
"""),
    code("""
positional.ground_point_codes().head(10)
"""),
    code("""
from atomizer.data.datasets import embedded_path
from atomizer.data.readers import describe, open_image
from atomizer.atoms.tokens import tokenize

path = image or sorted((embedded_path("bigearthnet") / "patches").glob("*.npz"))[1]
img = open_image(path)
atoms = tokenize(img)
x, y = atoms.positions()
print(f"{path}: {int(atoms.mask.sum()):,} atoms over {len(atoms.band_names)} bands, each on its native grid")
describe(img)
"""),
    code("""
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
"""),
]


def sweep_notebook(kind):
    coord = "GSD" if kind == "gsd" else "input size"
    values = "[10, 20, 30, 40, 60]" if kind == "gsd" else "[16, 32, 48, 64]"
    paper = "PAPER_RESOLUTION_SWEEP" if kind == "gsd" else "PAPER_SIZE_SWEEP"
    table = "Table 2" if kind == "gsd" else "Table 3"
    what = (
        "the same ground extent at coarser and coarser GSDs (each band area-averaged, never upsampled)"
        if kind == "gsd"
        else "centred crops of decreasing size at the source GSD"
    )
    return [
        md(f"""
# {coord.capitalize()} sweep (the paper's {table})

Evaluates one trained model on {what}, with all the dataset's bands, and plots the metric against the
{coord}. Uses the checkpoint of `run_dir` if given, otherwise trains a model first (same options as the
Table 1 notebook).

**Time** (measured on 2 CPU cores, no GPU was available to measure): training `small` Atomizer on the
embedded EuroSAT for 30 epochs took 161 s, and evaluating it on the six test modalities 20 s (a sweep
evaluates once per value). The tests' smoke parameters (`tiny`, `max_steps=2`, from an existing run)
took 13-49 s per sweep notebook.
"""),
        params(f"""
run_dir: str = ""  # an existing run directory to sweep, empty to train one into output_dir
model: str = "atomizer"  # model to train when run_dir is empty
values: list = {values}  # {coord} values to evaluate ({"m/px" if kind == "gsd" else "pixels"})
dataset: str = "eurosat"  # embedded dataset name: "eurosat" or "bigearthnet"
data_root: str = ""  # folder of the dataset, empty for the embedded slice in data/
train_modalities: str = "eurosat_train"  # training modality file
test_modalities: str = "eurosat_test"  # test modality file (gives the source size and GSD)
preset: str = "small"  # model size preset
epochs: int = 30  # training epochs
max_steps: int = 0  # stop after this many optimiser steps (0: no limit)
batch_size: int = 16  # images per step
lr: float = 0.001  # peak learning rate
train_limit: int = 0  # use only the first N training images (0: all)
val_limit: int = 0  # use only the first N validation images (0: all)
device: str = "auto"  # auto, cpu or cuda
seed: int = 0  # random seed
output_dir: str = "runs/sweep_{kind}"  # where a trained run goes
repo_root: str = ""  # run from this folder, empty for the current folder
"""),
        code(SETUP),
        code(f'''
from atomizer.experiments import run_sweep, train_and_evaluate

run = Path(run_dir) if run_dir else train_and_evaluate(model, out / model, test_modalities, **common)
sweep_path = run_sweep(run, "{kind}", values, batch_size=batch_size, device=device)
print("sweep results:", sweep_path)
'''),
        code(f'''
from atomizer.results import plots
from atomizer.engine.evaluation import {paper}, load_results

sweep = load_results(sweep_path)
metric = "macro_map"
display(sweep["score"].sel(metric=metric).to_pandas().round(2))
fig = plots.sweep_lines(sweep, "{kind}", metric, paper={paper} if dataset == "bigearthnet" else None)
figure_path = plots.save(fig, Path(run) / "sweep_{kind}.png")
display(Image(filename=str(figure_path)))
'''),
    ]


BEYOND = [
    md("""
# Beyond the paper: masked-atom pretraining and adapters for a new sensor

Two capabilities from the related work (method note, section 7), on the embedded data.

**(a) Masked-atom pretraining (the S2MAE idea).** The encoder is pretrained without labels on unlabelled
images (embedded EuroSAT training images, BigEarthNet patches and Major-TOM scene tiles, each seen
through the *training* modalities, so no test modality and no unseen band is ever shown): 90% of the
atoms are hidden and their values reconstructed from the visible ones, with at least two masking kinds
(random atoms, whole bands, whole pixels, spatial blocks). Each pretrained encoder is then fine-tuned on
EuroSAT under the modality-disjoint protocol (`eurosat_train` -> `eurosat_test`) and compared with
training from scratch on the same labelled images with the same budget, over several seeds; the table
and figure give the per-test-modality difference (fine-tuned minus scratch, whatever its sign).

**(b) Adapters for a new sensor (the SpectralX idea).** The from-scratch model of the first seed (trained
on Sentinel-2 band subsets) meets a modality whose bands it never saw (default: B8A and B10 only). It is
evaluated as is (no adaptation), with only small adapters trained (LoRA on the attention projections
and/or a spectral adapter on the band encoding; base frozen, adapters saved apart), and fully
fine-tuned; the table gives accuracy and trainable parameter counts.

**Time.** Measured with the default parameters (`small` preset, 2 maskings x 300 pretraining steps,
3 seeds x 3 variants x 15 epochs, adaptation 3 seeds x 3 trained methods x 15 epochs) on 2 CPU cores
shared with another job, `threads=1`: 32 minutes (pretraining 7, fine-tuning and scratch 20,
adaptation 5). Smoke parameters used by the tests (`tiny`, `pretrain_steps=2`, `max_steps=2`,
`train_limit=8`, one seed): 30 seconds on 2 idle CPU cores, about 4 minutes when they are busy.
A GPU was not measured.
"""),
    params("""
preset: str = "small"  # model size preset (tiny, small); pretraining and fine-tuning use the same
pretrain_sources: list = [{"dataset": "eurosat", "split": "train"}, {"dataset": "bigearthnet"}, {"path": "data/embedded/majortom", "tile_px": 64}]  # unlabelled images (atomizer.engine.pretraining.PretrainConfig.sources)
pretrain_modalities: str = "eurosat_train"  # modalities the unlabelled images are seen through; "" for the images as read (all bands)
pretrain_limit: int = 0  # at most N images (or tiles) per pretraining source; 0 for all
maskings: list = ["random", "block"]  # masking kinds to compare: random, band, pixel, block
mask_ratio: float = 0.9  # fraction of the atoms hidden
pretrain_steps: int = 300  # pretraining steps per masking kind
pretrain_batch_size: int = 16  # unlabelled images per pretraining step
pretrain_lr: float = 0.001  # peak pretraining learning rate
finetune_epochs: int = 15  # labelled epochs, identical for fine-tuning and training from scratch
seeds: list = [0, 1, 2]  # fine-tuning / from-scratch / adaptation seeds
batch_size: int = 16  # labelled images per step
lr: float = 0.001  # peak learning rate of scratch training and full fine-tuning
max_steps: int = 0  # stop every labelled run after this many steps; 0 for no limit
train_limit: int = 0  # use only the first N labelled training images; 0 for all
val_limit: int = 0  # use only the first N validation images; 0 for all
adapt_bands: list = ["B8A", "B10"]  # the new sensor's bands (never seen in eurosat_train)
adapt_size_px: int = 32  # the new modality's image size (px)
adapt_gsd_m: float = 20.0  # the new modality's GSD (m/px)
adapt_epochs: int = 15  # epochs of adapter training and of full fine-tuning
adapter_lr: float = 0.003  # peak learning rate of adapter training
adapter_variants: dict = {"lora+spectral": {"rank": 4}, "spectral": {"targets": []}}  # name -> atomizer.models.adapters.AdapterConfig fields
device: str = "auto"  # auto (CUDA when present), cpu or cuda
threads: int = 0  # CPU threads for torch (1 on a shared machine); 0 for torch's default
output_dir: str = "runs/beyond"  # where runs, tables and figures go
repo_root: str = ""  # run from this folder (relative paths); "" for the current folder
"""),
    code('''
import json
import os
import time
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import yaml
from IPython.display import Image, display

from atomizer.results import plots
from atomizer.engine.evaluation import evaluate_checkpoint, load_results, save_results
from atomizer.experiments import train_and_evaluate
from atomizer.engine.training import pick_device

if repo_root:
    os.chdir(Path(repo_root).resolve())
device = str(pick_device(device))
if threads:
    torch.set_num_threads(int(threads))
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
t_start = time.time()
labelled = dict(dataset="eurosat", train_modalities="eurosat_train", preset=preset, batch_size=batch_size,
                max_steps=max_steps or None, train_limit=train_limit or None, val_limit=val_limit or None,
                device=device, progress=False)
metric_names = ["top1", "macro_map"]


def scores(run):
    """(modality x metric) table of a run's results.nc."""
    res = load_results(Path(run) / "results.nc")
    return res["score"].isel(model=0).to_pandas()


print("device:", device, "| output:", out.resolve())
'''),
    md("## (a) Masked-atom pretraining, then fine-tuning vs training from scratch"),
    code("""
from atomizer.engine.pretraining import PretrainConfig, build_pretrain_dataset, mask_atoms, pretrain
from atomizer.atoms.tokens import collate

sources = [{**s, "limit": pretrain_limit} if pretrain_limit else dict(s) for s in pretrain_sources]
pretrained = {}
for kind in maskings:
    run = out / "pretrain" / kind
    cfg = PretrainConfig(preset=preset, sources=sources, modalities=pretrain_modalities or None, masking=kind,
                         mask_ratio=mask_ratio, steps=pretrain_steps, batch_size=pretrain_batch_size,
                         lr=pretrain_lr, seed=int(seeds[0]), device=device, out_dir=str(run))
    if not (run / "summary.json").exists():
        pretrain(cfg, resume=(run / "config.yaml").exists(), progress=False)
    summary = json.loads((run / "summary.json").read_text())
    pretrained[kind] = run / "checkpoints" / "last.pt"
    print(f"{kind:7s} {summary['images']} unlabelled images, {summary['step']} steps: reconstruction MSE "
          f"{summary['eval_loss_start']:.4f} -> {summary['eval_loss_end']:.4f}")
"""),
    code("""
# What each masking hides (one image, one training modality), and the reconstruction loss while pretraining
data = build_pretrain_dataset(cfg, random_window=False)
atoms = collate([data[0]["input"]])
x, y = atoms.positions()
fig, axes = plt.subplots(1, len(maskings) + 1, figsize=(3.2 * (len(maskings) + 1), 3.0))
for ax, kind in zip(axes, maskings):
    hidden = mask_atoms(atoms, mask_ratio, kind, torch.Generator().manual_seed(0))[0]
    fine = atoms.band_table[atoms.band[0], 2] == atoms.band_table[atoms.band[0], 2].min()
    df = pd.DataFrame({"x": x[0][fine].numpy(), "y": y[0][fine].numpy(), "h": hidden[fine].float().numpy()})
    grid = df.pivot_table(index="y", columns="x", values="h").sort_index(ascending=False)
    ax.imshow(grid.values, cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(f"{kind}: {100 * float(hidden.float().mean()):.0f}% hidden", fontsize=9)
    ax.set_axis_off()
for kind in maskings:
    log = pd.read_json(out / "pretrain" / kind / "metrics.jsonl", lines=True)
    ev = log[log.kind == "eval"]
    axes[-1].plot(ev.step, ev.loss, marker="o", label=kind)
axes[-1].set_xlabel("pretraining step"); axes[-1].set_ylabel("reconstruction MSE (fixed batch)")
axes[-1].legend(fontsize=8)
fig.suptitle("fraction of the bands hidden per pixel (black = all), and the pretraining loss", fontsize=9)
fig.tight_layout()
display(Image(filename=str(plots.save(fig, out / "pretraining.png"))))
"""),
    code("""
variants = {"scratch": None, **{f"pretrained ({k})": pretrained[k] for k in maskings}}
finetune_runs = {}
for name, init in variants.items():
    for seed in seeds:
        run = out / "finetune" / name.replace(" ", "_").replace("(", "").replace(")", "") / f"seed{seed}"
        finetune_runs[name, seed] = train_and_evaluate("atomizer", run, "eurosat_test", seed=int(seed),
                                                       epochs=finetune_epochs, lr=lr,
                                                       init=str(init) if init else None, **labelled)
rows = []
for (name, seed), run in finetune_runs.items():
    t = scores(run)
    for mod in t.index:
        rows.append({"variant": name, "seed": seed, "modality": mod, **{m: float(t.loc[mod, m]) for m in metric_names}})
finetune_scores = pd.DataFrame(rows)
finetune_scores.to_csv(out / "finetune_scores.csv", index=False)
finetune_scores.groupby(["variant", "modality"])[metric_names].mean().unstack("variant").round(1)
"""),
    code("""
# Paired differences (same seed, same labelled data and budget): pretrained minus scratch, in points
wide = finetune_scores.pivot_table(index=["modality", "seed"], columns="variant", values=metric_names)
diff_rows = []
for m in metric_names:
    for v in variants:
        if v == "scratch":
            continue
        d = (wide[(m, v)] - wide[(m, "scratch")]).groupby("modality")
        for mod, g in d:
            diff_rows.append({"metric": m, "variant": v, "modality": mod, "mean": g.mean(),
                              "sd": g.std(ddof=1) if len(g) > 1 else float("nan"), "seeds": len(g),
                              "wins": int((g > 0).sum())})
diffs = pd.DataFrame(diff_rows)
diffs.to_csv(out / "finetune_minus_scratch.csv", index=False)
table = diffs.pivot_table(index="modality", columns=["metric", "variant"], values="mean").round(2)
overall = diffs.groupby(["metric", "variant"])["mean"].mean().round(2)
print("mean over the six test modalities (points):")
print(overall.to_string())
table
"""),
    code("""
fig, axes = plt.subplots(1, len(metric_names), figsize=(6.5 * len(metric_names), 3.4))
mods = sorted(diffs.modality.unique())
others = [v for v in variants if v != "scratch"]
width = 0.8 / max(1, len(others))
for ax, m in zip(axes, metric_names):
    for i, v in enumerate(others):
        d = diffs[(diffs.metric == m) & (diffs.variant == v)].set_index("modality").loc[mods]
        ax.bar(np.arange(len(mods)) + i * width - 0.4 + width / 2, d["mean"], width, yerr=d["sd"].fillna(0),
               capsize=3, label=v)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(mods)), mods)
    ax.set_ylabel(f"{m}: pretrained - scratch (points)")
    ax.set_title(f"{m}, mean +- sd over {len(seeds)} seed(s)", fontsize=9)
    ax.legend(fontsize=8)
fig.tight_layout()
display(Image(filename=str(plots.save(fig, out / "finetune_minus_scratch.png"))))
"""),
    md("## (b) A new sensor: no adaptation vs adapters only vs full fine-tuning"),
    code("""
from atomizer.models.adapters import adapter_report
from atomizer.models.checkpoint import load_model
from atomizer.data.modalities import load_modalities

seen = {b for m in load_modalities("eurosat_train") for b in m.bands}
print("bands of the new modality already seen in training:", sorted(set(adapt_bands) & seen) or "none")
new_modality = out / "adapt" / "new_sensor.yaml"
new_modality.parent.mkdir(parents=True, exist_ok=True)
new_modality.write_text(yaml.safe_dump({"source": {"size_px": 64, "gsd_m": 10}, "modalities": [
    {"name": "new_sensor", "size_px": int(adapt_size_px), "gsd_m": float(adapt_gsd_m), "bands": list(adapt_bands)}]}))
base_run = finetune_runs["scratch", seeds[0]]
base = base_run / "checkpoints" / "best.pt"
base_params = load_model(base).num_parameters()
print("base model:", base_run, f"({base_params:,} parameters)")

none_run = out / "adapt" / "none"
if not (none_run / "results.nc").exists():
    save_results(evaluate_checkpoint(base, new_modality, dataset="eurosat", device=device, model_name="atomizer"),
                 none_run / "results.nc")
adapt_runs = {("none", seed): none_run for seed in seeds}
trainable = {"none": 0}
for seed in seeds:
    for name, spec in {**{f"adapters: {k}": v for k, v in adapter_variants.items()}, "full fine-tune": None}.items():
        run = out / "adapt" / name.replace(": ", "_").replace("+", "_") / f"seed{seed}"
        opts = dict(epochs=adapt_epochs, lr=adapter_lr if spec is not None else lr, adapters=spec)
        adapt_runs[name, seed] = train_and_evaluate("atomizer", run, str(new_modality), seed=int(seed), init=str(base),
                                                    **{**labelled, **opts, "train_modalities": str(new_modality)})
        trainable[name] = (json.loads((run / "summary.json").read_text())["trainable_parameters"]["trainable"]
                           if spec is not None else base_params)
"""),
    code("""
rows = []
for (name, seed), run in adapt_runs.items():
    t = scores(run).iloc[0]
    rows.append({"method": name, "seed": seed, **{m: float(t[m]) for m in metric_names}})
adapt_scores = pd.DataFrame(rows)
adapt_scores.to_csv(out / "adapt_scores.csv", index=False)
g = adapt_scores.groupby("method", sort=False)[metric_names]
adapt_table = pd.concat([g.mean().add_suffix(" mean"), g.std(ddof=1).add_suffix(" sd")], axis=1)
adapt_table.insert(0, "trainable parameters", [trainable[m] for m in adapt_table.index])
adapt_table.insert(1, "% of encoder", [100 * trainable[m] / adapter_report(load_model(base))["encoder"]
                                       for m in adapt_table.index])
adapt_table.to_csv(out / "adapt_table.csv")
print(f"new modality: {adapt_size_px} px @ {adapt_gsd_m:g} m, bands {list(adapt_bands)}; EuroSAT test images")
adapt_table.round(2)
"""),
    code("""
fig, ax = plt.subplots(figsize=(1.8 * len(adapt_table) + 2, 3.4))
xs = np.arange(len(adapt_table))
ax.bar(xs, adapt_table["top1 mean"], yerr=adapt_table["top1 sd"].fillna(0), capsize=3, color="tab:blue")
ax.set_xticks(xs, [f"{m}\\n{trainable[m]:,} params" for m in adapt_table.index], fontsize=8)
ax.set_ylabel("top-1 accuracy (%)")
ax.set_title(f"new modality ({'+'.join(adapt_bands)}, {adapt_size_px} px @ {adapt_gsd_m:g} m): "
             f"mean +- sd over {len(seeds)} seed(s)", fontsize=9)
fig.tight_layout()
display(Image(filename=str(plots.save(fig, out / "adapters.png"))))
elapsed = time.time() - t_start
(out / "summary.json").write_text(json.dumps({
    "seconds": elapsed, "finetune_minus_scratch": diffs.to_dict(orient="records"),
    "adapters": adapt_table.reset_index().to_dict(orient="records")}, indent=2, default=float))
print(f"total time: {elapsed / 60:.1f} min")
"""),
]


def write(name, cells):
    nb = nbf.v4.new_notebook()
    nb.cells = cells
    for i, c in enumerate(cells):  # stable cell ids: rebuilding rewrites the notebooks byte for byte
        c["id"] = hashlib.sha1(f"{name}:{i}".encode()).hexdigest()[:8]
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
    write("beyond_the_paper.ipynb", BEYOND)
