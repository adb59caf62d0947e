"""Attention maps: where the latents of a trained Atomizer look, mapped back onto each band's grid.

The model (:func:`atomizer.models.checkpoint.load_model`) reads the image's atoms (:func:`atomizer.atoms.tokens.tokenize`,
after :func:`atomizer.data.modalities.simulate` for a chosen modality) and returns, per cross-attention
block, the weights ``(S, heads, L, N)`` over every atom (``forward(batch, return_attention=True)``).
Here they are averaged over heads and scattered back through the atoms' indices (``band``, ``xi``,
``yi``) onto each band's native pixel grid, then aggregated per band (attention mass per band and
wavelength, and a latent x band heat map) and per pixel (every band's mass spread onto the finest grid
by exact area overlap, :func:`atomizer.data.modalities.overlap_matrix`). For each latent, the mass over all
atoms sums to 1.

The computation is :mod:`atomizer.engine.attention`; this view only arranges and plots it. Use in a
notebook::

    from atomizer.dashboard.attention import AttentionMaps
    app = AttentionMaps(checkpoint="runs/x/checkpoints/best.pt")
    maps = app.band_maps()         # band -> (L, h, w) attention weights of the chosen block
    app.band_mass()                # DataFrame: attention mass of the chosen latent per band
    app                            # the interactive view
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
import xarray as xr

from atomizer.core.limits import check_atoms, max_atoms
from atomizer.dashboard._common import (
    ATTENTION,
    MODELS,
    PLOT_HEIGHT,
    PLOT_WIDTH,
    Roots,
    alert,
    choice_select,
    default_roots,
    escape_text,
    file_key,
    path_choices,
    safe_error,
)
from atomizer.data.bands import list_sensors
from atomizer.data.datasets import embedded_items
from atomizer.data.modalities import NATIVE, Modality, load_modalities, simulate
from atomizer.data.readers import open_image
from atomizer.data.rgb import RGB_BANDS, rgb_composite
from atomizer.engine.attention import AttentionResult, BandGrid, compute_attention, input_atoms
from atomizer.models.checkpoint import load_trained

#: Largest input (atoms) the Attention tab computes: the result keeps every atom's weight in every block
#: (about 0.7 GB per million atoms with the tiny model), so an input above it is refused before it is read.
DASHBOARD_MAX_ATOMS = 1_000_000

# --------------------------------------------------------------------------------------------------
# Paths under the served roots, and messages without server paths
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------


class AttentionMaps(pn.viewable.Viewer):
    """Cross-attention of a trained Atomizer on one image, per band and per pixel."""

    checkpoint = param.String(default="", doc="Path of an Atomizer checkpoint (.pt).")
    source = param.Selector[str | None](
        default=None, objects={}, allow_None=True, doc="Embedded input (EuroSAT tile or BigEarthNet patch)."
    )
    path = param.String(
        default="",
        doc="Another input: GeoTIFF, .npz patch or folder of per-band GeoTIFFs (overrides the embedded input).",
    )
    sensor = param.String(default="", doc="Sensor name or sidecar of a multi-band GeoTIFF (optional).")
    modality = param.Selector[str](
        default=NATIVE, objects=[NATIVE], doc="Modality simulated from the input, from the checkpoint's modality files."
    )
    block = param.Integer(default=0, bounds=(0, 0), doc="Cross-attention block.")
    latent = param.Integer(default=0, bounds=(0, 0), doc="Latent whose attention is mapped.")
    roots = param.ClassSelector(
        class_=Roots, default=None, allow_None=True, doc="The folders whose files this view may read."
    )
    max_atoms = param.Integer(
        default=DASHBOARD_MAX_ATOMS,
        bounds=(1, None),
        doc="Largest input (atoms) whose attention is computed (never above ATOMIZER_MAX_ATOMS).",
    )

    def __init__(self, **params):
        if params.get("roots") is None:
            params["roots"] = default_roots(params.get("checkpoint"), params.get("path"), params.get("sensor"))
        super().__init__(**params)
        self.param.source.objects = embedded_items()
        self._models: dict[tuple, tuple] = {}
        self._results: dict[tuple, AttentionResult] = {}
        self._modalities: dict[str, Modality] = {}
        self.model_error: str | None = None
        self._on_checkpoint()

    @property
    def served(self) -> Roots:
        """The folders this view reads under (``__init__`` always sets ``roots``)."""
        if self.roots is None:
            raise RuntimeError(f"{type(self).__name__} has no roots")
        return self.roots

    # ------------------------------------------------------------------ model and input
    def _resolve(self, text: str | Path, what: str) -> Path:
        return self.served.resolve(text, what)

    def _model_entry(self):
        """(model, extra) for the current checkpoint, cached by path and modification time."""
        path = self._resolve(self.checkpoint, "checkpoint")  # OutsideRootsError names no server path
        key = file_key(path)
        if key not in self._models:
            shown = self.served.display(path)

            def load():
                trained = load_trained(path)  # CheckpointError (a ValueError) names the problem
                if trained.arch != "atomizer":
                    raise TypeError(
                        f"{shown} holds a {trained.arch[:40]!r} model: attention maps need an Atomizer checkpoint"
                    )
                return trained.model, trained.extra

            # one model in memory for every session that opens this checkpoint
            self._models = {key: MODELS.get(("attention", *key), load)}
        return self._models[key]

    @param.depends("checkpoint", watch=True)
    def _on_checkpoint(self) -> None:
        self.model_error = None
        self._modalities = {}
        if not self.checkpoint.strip():
            self.param.modality.objects = [NATIVE]
            self.modality = NATIVE
            return
        try:
            model, extra = self._model_entry()
        except Exception as e:  # noqa: BLE001  (shown in the page)
            self.model_error = safe_error(e, self.served)
            self.param.modality.objects = [NATIVE]
            self.modality = NATIVE
            return
        cfg = model.cfg
        self.param.block.bounds = (0, cfg.depth - 1)
        self.param.latent.bounds = (0, cfg.num_latents - 1)
        self.block = min(self.block, cfg.depth - 1)
        self.latent = min(self.latent, cfg.num_latents - 1)
        tc = extra.get("train_config") or {}
        files = [tc.get("test_modalities"), extra.get("train_modalities") or tc.get("train_modalities")]
        for f in dict.fromkeys(x for x in files if x):
            try:
                mset = load_modalities(self._modality_file(f))
            except (OSError, ValueError, TypeError):  # unreadable, or outside the roots: not offered
                continue
            for m in mset:
                self._modalities[f"{mset.name} {m.name}: {m.size_px}px @ {m.gsd_m:g} m, {len(m.bands)} bands"] = m
        self.param.modality.objects = [NATIVE, *self._modalities]
        if self.modality not in self.param.modality.objects:
            self.modality = NATIVE
        if self.source is None and not self.path:
            ds = str(tc.get("dataset", "eurosat")).lower()
            prefix = "BigEarthNet" if ds in ("bigearthnet", "ben") else "EuroSAT"
            items = embedded_items()
            first = next((k for k in items if k.startswith(prefix)), None)
            if first is not None:
                self.source = items[first]

    def _modality_file(self, name: object) -> str | Path:
        """A checkpoint's modality set: a shipped set by name, else a file under the roots."""
        text = str(name)
        if not Path(text).suffix and "/" not in text and "\\" not in text and text not in ("", ".", ".."):
            return text  # a shipped set (atomizer/data/modality_sets/<name>.yaml)
        return self._resolve(text, "modality file")

    def _sensor(self) -> str | Path | None:
        """The sensor: a catalogued name, or a sidecar file under the roots."""
        text = self.sensor.strip()
        if not text:
            return None
        if text in list_sensors():
            return text
        return self._resolve(text, "sensor sidecar")

    def input_path(self) -> str | None:
        """The input's real path (under the roots), or None when there is none to show."""
        if self.path.strip():
            return str(self._resolve(self.path, "input"))
        if self.source is None:
            first = next(iter(embedded_items().values()), None)
            return None if first is None else str(self._resolve(first, "input"))
        return str(self._resolve(self.source, "input"))

    def image(self) -> xr.Dataset:
        """The input image under the chosen modality (raises on unreadable input, an input above
        ``max_atoms``, or an impossible modality); the atom count is read from headers before any pixel."""
        p = self.input_path()
        if p is None:
            raise FileNotFoundError("no input: choose an embedded item or give a path")
        sensor = self._sensor()
        limit = min(self.max_atoms, max_atoms())
        check_atoms(input_atoms(p, sensor=sensor), f"the input {self.served.display(p)}", limit=limit)
        img = open_image(p, sensor=sensor)
        if self.modality != NATIVE:
            img = simulate(img, self._modalities[self.modality])
        return img

    def result(self) -> AttentionResult:
        """The model's attention on the current input (cached; raises on any problem)."""
        if not self.checkpoint.strip():
            raise FileNotFoundError("no checkpoint: give the path of an Atomizer checkpoint")
        model, extra = self._model_entry()
        p = self.input_path()
        key = (*file_key(self._resolve(self.checkpoint, "checkpoint")), id(model), p, self.sensor, self.modality)
        if key not in self._results:

            def compute() -> AttentionResult:
                return compute_attention(model, self.image(), extra.get("classes"), bool(extra.get("multilabel", True)))

            self._results = {key: ATTENTION.get(key, compute)}  # shared by sessions
        return self._results[key]

    def close(self) -> None:
        """Drop this session's references (the shared model and results stay cached, bounded)."""
        self._models, self._results = {}, {}

    # ------------------------------------------------------------------ derived data
    def band_maps(self) -> dict[str, np.ndarray]:
        """Band -> (L, h, w) weights of the chosen block on the band's native grid."""
        return self.result().band_maps(self.block)

    def latent_band_mass(self) -> pd.DataFrame:
        """Latent x band attention mass of the chosen block (bands ordered by wavelength)."""
        return self.result().latent_band_mass(self.block)

    def band_mass(self) -> pd.DataFrame:
        """The chosen latent's mass per band, with wavelength and the mass relative to the band's share
        of atoms (``relative`` > 1: the latent favours the band beyond its number of atoms)."""
        res = self.result()
        t = res.band_table().set_index("band")
        mass = self.latent_band_mass().loc[self.latent]
        t = t.loc[mass.index]
        share = t["atoms"] / t["atoms"].sum()
        return pd.DataFrame(
            {
                "band": mass.index,
                "wavelength_nm": t["wavelength_nm"].values,
                "gsd_m": t["gsd_m"].values,
                "mass": mass.values,
                "relative": (mass / share).values,
            }
        ).reset_index(drop=True)

    def pixel_map(self) -> np.ndarray:
        """The chosen latent's attention summed over bands, on the finest grid."""
        return self.result().pixel_map(self.block, self.latent)[0]

    def status(self) -> str | None:
        """Why nothing can be shown (None when the maps can be computed)."""
        try:
            self.result()
        except Exception as e:  # noqa: BLE001
            return safe_error(e, self.served)
        return None

    # ------------------------------------------------------------------ plots
    def _rgb_plot(self, res_image: xr.Dataset, grids: dict[str, BandGrid] | None = None):
        rgb = rgb_composite(res_image)
        if rgb is None:
            return None
        if grids is not None:
            bounds = grids[RGB_BANDS[0]].bounds
        else:
            h, w = rgb.shape[:2]
            g = float(res_image[RGB_BANDS[0]].attrs["gsd_m"])
            bounds = (-w * g / 2, -h * g / 2, w * g / 2, h * g / 2)
        return hv.RGB(rgb, bounds=bounds, kdims=["x_m", "y_m"]).opts(
            width=PLOT_WIDTH // 2 + 40,
            height=PLOT_WIDTH // 2 + 10,
            title="RGB (B04, B03, B02)",
            xlabel="x (m from centre)",
            ylabel="y (m from centre)",
        )

    def _pixel_plot(self, res: AttentionResult):
        total, grid = res.pixel_map(self.block, self.latent)
        return hv.Image(total, bounds=grid.bounds, kdims=["x_m", "y_m"], vdims=["attention"]).opts(
            cmap="inferno",
            colorbar=True,
            tools=["hover"],
            width=PLOT_WIDTH // 2 + 90,
            height=PLOT_WIDTH // 2 + 10,
            xlabel="x (m from centre)",
            ylabel="",
            title=f"block {self.block}, latent {self.latent}: all bands ({grid.gsd:g} m grid)",
        )

    def _band_grid(self, res: AttentionResult):
        maps = res.band_maps(self.block)
        grids = res.grids()
        t = res.band_table().set_index("band").sort_values("wavelength_nm")
        plots = []
        for name in t.index:
            m = maps[name][self.latent]
            plots.append(
                hv.Image(m, bounds=grids[name].bounds, kdims=["x_m", "y_m"], vdims=["attention"], label=name).opts(
                    cmap="inferno",
                    width=190,
                    height=180,
                    xaxis=None,
                    yaxis=None,
                    tools=["hover"],
                    toolbar=None,
                    title=f"{name} {t.loc[name, 'wavelength_nm']:.0f} nm, {grids[name].gsd:g} m: {m.sum():.3f}",
                    fontsize={"title": "8pt"},
                )
            )
        return pn.GridBox(
            *[pn.pane.HoloViews(p, name=f"band_map_{n}") for p, n in zip(plots, t.index)], ncols=4, name="band_maps"
        )

    def _mass_bars(self):
        df = self.band_mass()
        df["label"] = [f"{b} ({w:.0f} nm)" for b, w in zip(df["band"], df["wavelength_nm"])]
        return hv.Bars(df, "label", ["mass", "relative", "gsd_m"]).opts(
            width=PLOT_WIDTH - 60,
            height=PLOT_HEIGHT - 20,
            xrotation=45,
            tools=["hover"],
            color="teal",
            xlabel="band (centre wavelength)",
            ylabel="attention mass",
            title=f"latent {self.latent}: attention mass per band (block {self.block})",
        )

    def _latent_heatmap(self):
        m = self.latent_band_mass()
        df = m.reset_index().melt(id_vars="latent", var_name="band", value_name="mass")
        df["latent"] = df["latent"].astype(str)
        return hv.HeatMap(df, ["band", "latent"], "mass").opts(
            cmap="viridis",
            colorbar=True,
            tools=["hover"],
            width=PLOT_WIDTH - 60,
            height=max(PLOT_HEIGHT, 14 * len(m) + 80),
            xrotation=45,
            invert_yaxis=True,
            title=f"which wavelengths each latent attends to (block {self.block})",
            xlabel="band (by wavelength)",
            ylabel="latent",
        )

    @param.depends("checkpoint", "source", "path", "sensor", "modality", "block", "latent")
    def main_view(self):
        """The maps, or an Alert saying why they cannot be shown."""
        if not self.checkpoint.strip():
            parts: list[Any] = [
                alert(
                    "No checkpoint: give the path of an Atomizer checkpoint "
                    "(`atomizer serve --checkpoint runs/<run>/checkpoints/best.pt`).",
                    "info",
                )
            ]
            try:
                rgb = self._rgb_plot(self.image())
                if rgb is not None:
                    parts.append(pn.pane.HoloViews(rgb))
            except Exception as e:  # noqa: BLE001
                parts.append(alert(f"Cannot read the input: {safe_error(e, self.served)}"))
            return pn.Column(*parts)
        if self.model_error:
            return alert(f"Cannot use the checkpoint: {self.model_error}")
        try:
            res = self.result()
        except Exception as e:  # noqa: BLE001
            return alert(f"Cannot compute attention maps: {safe_error(e, self.served)}")
        top = res.probabilities().head(5)
        pred = pd.DataFrame({"class": top.index, "probability": top.values.round(3)})
        rgb = self._rgb_plot(res.image, res.grids())
        first_row: list[Any] = (
            [pn.pane.HoloViews(rgb, name="rgb")]
            if rgb is not None
            else [alert(f"No {'/'.join(RGB_BANDS)} in this input: no RGB composite.", "warning")]
        )
        first_row.append(pn.pane.HoloViews(self._pixel_plot(res), name="pixel_map"))
        n_atoms = int(res.batch.mask.sum())
        info = pn.pane.Markdown(
            f"**{len(res.bands)} bands, {n_atoms:,} atoms** (input {escape_text(Path(self.input_path() or '').name)}, "
            f"modality {escape_text(self.modality.split(':')[0])}). Weights averaged over heads; each latent's "
            f"weights sum to 1 over all atoms.",
            sizing_mode="stretch_width",
        )
        return pn.Column(
            info,
            pn.Row(
                *first_row, pn.Column("**Top classes**", pn.pane.DataFrame(pred, index=False, width=260, escape=True))
            ),
            pn.Row(
                pn.pane.HoloViews(self._mass_bars(), name="band_mass"),
                pn.pane.HoloViews(self._latent_heatmap(), name="latent_heatmap"),
            ),
            "**Per band, on its native grid** (title: band, wavelength, GSD, attention mass)",
            self._band_grid(res),
        )

    def __panel__(self):
        w = pn.widgets
        controls = pn.Column(
            "### Model",
            choice_select(self, "checkpoint", path_choices(self.served, "**/*.pt"), "Checkpoints"),
            w.TextInput.from_param(self.param.checkpoint, name="Or a checkpoint path (.pt)"),
            "### Input",
            w.Select.from_param(self.param.source, name="Embedded input"),
            w.TextInput.from_param(self.param.path, name="Or a path (GeoTIFF, .npz, folder)"),
            w.TextInput.from_param(self.param.sensor, name="Sensor / sidecar (GeoTIFF)"),
            w.Select.from_param(self.param.modality, name="Modality"),
            "### Attention",
            w.IntSlider.from_param(self.param.block, name="Block"),
            w.IntSlider.from_param(self.param.latent, name="Latent"),
            width=300,
        )
        view = pn.param.ParamMethod(self.main_view, loading_indicator=True, lazy=True, name="attention")
        return pn.Row(controls, view)
