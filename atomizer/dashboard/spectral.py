"""Spectral coverage: the RBF anchors of the spectral encoding, the bands of sensors, their codes.

Every code shown here comes from :func:`atomizer.atoms.encodings.rbf_spectral_encoding` with the anchors of
the encoding (:data:`atomizer.atoms.encodings.DEFAULT_ANCHORS` unless given): a band ``[c - w/2, c + w/2]``
lights each Gaussian anchor by its maximum response over the band, then the vector is L2-normalised,
so a wider band lights more anchors. The similarity of two bands is the cosine of their codes.

Use in a notebook::

    from atomizer.dashboard.spectral import SpectralCoverage
    app = SpectralCoverage(sensors=["sentinel2", "landsat8"], width_nm=120)
    app.custom_encoding()          # the code of the custom band, (K,)
    app.similarity("sentinel2", "landsat8")   # DataFrame of cosines
    app                            # the interactive view
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
import torch
import yaml

from atomizer.atoms.encodings import DEFAULT_ANCHORS, rbf_spectral_encoding
from atomizer.dashboard._common import PLOT_HEIGHT, PLOT_WIDTH, OutsideRootsError, Roots, alert, error_text, escape_text
from atomizer.data.bands import Sensor, get_sensor, list_sensors

#: The reflective range the anchors cover (nm).
SPECTRAL_RANGE = (350.0, 2500.0)
#: Response (after L2 normalisation) above which an anchor counts as "lit".
LIT_THRESHOLD = 0.1


@cache
def optical_sensors() -> tuple[str, ...]:
    """Catalogued sensors with at least one optical band (radar-only sensors are left out)."""
    return tuple(s for s in list_sensors() if any(b.domain == "optical" for b in get_sensor(s).bands))


def optical_part(sensor: Sensor) -> Sensor:
    """``sensor`` restricted to its optical bands (thermal and SAR bands are off the RBF axis)."""
    return sensor.select([b.name for b in sensor.bands if b.domain == "optical"])


#: File names a sensor sidecar may have.
SIDECAR_PATTERNS = ("**/*.yaml", "**/*.yml", "**/*.json")


def read_sidecar(path: Path) -> Sensor:
    """The sensor a sidecar file describes; a file that does not parse is refused naming only the line
    (``line 3: not valid YAML``): the page never shows what the file holds."""
    text = path.read_text(errors="replace")
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        spec = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"line {e.lineno}: not valid JSON") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ValueError(f"{where}not valid YAML") from None
    if not isinstance(spec, dict):
        raise ValueError(f"not a sensor sidecar (a {kind} mapping with name and bands)")
    return Sensor.from_dict(spec, default_name=path.stem)


def encode_bands(center_nm, width_nm, anchors=DEFAULT_ANCHORS) -> np.ndarray:
    """RBF codes of optical bands, ``(B,), (B,) -> (B, K)`` (the K anchor channels of the library's code)."""
    c = torch.as_tensor(np.atleast_1d(np.asarray(center_nm, dtype=np.float64)))
    w = torch.as_tensor(np.atleast_1d(np.asarray(width_nm, dtype=np.float64)))
    code = rbf_spectral_encoding(c, w, anchors)
    return code[:, : len(anchors)].numpy().astype(np.float64)


class SpectralCoverage(pn.viewable.Viewer):
    """Where sensors' bands fall on the RBF anchors, and how the spectral code responds."""

    sensors = param.ListSelector(
        default=["sentinel2", "landsat8"],
        objects=list(optical_sensors()),
        doc="Catalogued sensors whose optical bands are drawn.",
    )
    sidecar = param.String(default="", doc="Optional path of a sensor sidecar (.yaml/.json) to add.")
    roots = param.ClassSelector(
        class_=Roots,
        default=None,
        allow_None=True,
        precedence=-1,
        doc="Folders a served dashboard may read (a sidecar must lie under them); None: any file (notebooks).",
    )
    band = param.Selector[str | None](default=None, objects=[], doc="Band whose encoding is shown as bars.")
    center_nm = param.Number(
        default=865.0, bounds=SPECTRAL_RANGE, step=1.0, doc="Centre wavelength of the custom band (nm)."
    )
    width_nm = param.Number(default=20.0, bounds=(1.0, 1000.0), step=1.0, doc="Full width of the custom band (nm).")
    sensor_a = param.Selector[str](
        default="sentinel2", objects=list(optical_sensors()), doc="Rows of the similarity matrix."
    )
    sensor_b = param.Selector[str](
        default="landsat8", objects=list(optical_sensors()), doc="Columns of the similarity matrix."
    )
    anchors = param.List(
        default=[tuple(map(float, a)) for a in DEFAULT_ANCHORS],
        item_type=tuple,
        doc="RBF anchors (mu_nm, sigma_nm) of the encoding.",
        precedence=-1,
    )

    def __init__(self, **params):
        super().__init__(**params)
        self._sidecar_sensor: Sensor | None = None
        self.sidecar_error: str | None = None
        self._update_sidecar()

    # ------------------------------------------------------------------ data
    def available_sensors(self) -> dict[str, Sensor]:
        """Name -> optical part of each sensor on display (the chosen catalogued ones + the sidecar)."""
        out = {name: optical_part(get_sensor(name)) for name in self.sensors}
        if self._sidecar_sensor is not None:
            out[self._sidecar_sensor.name] = self._sidecar_sensor
        return out

    def _all_sensors(self) -> dict[str, Sensor]:
        out = {name: optical_part(get_sensor(name)) for name in optical_sensors()}
        if self._sidecar_sensor is not None:
            out[self._sidecar_sensor.name] = self._sidecar_sensor
        return out

    @param.depends("sidecar", watch=True)
    def _update_sidecar(self) -> None:
        self._sidecar_sensor, self.sidecar_error = None, None
        text = self.sidecar.strip()
        if text:
            shown = text
            try:
                if self.roots is None:
                    path = Path(text).expanduser()
                else:  # served: only a file under the roots is opened, and it is named relative to its root
                    path = self.roots.resolve(text, "sidecar")
                    shown = self.roots.display(path)
                if not path.is_file():
                    raise FileNotFoundError(f"no such file: {Path(shown).name}")
                self._sidecar_sensor = optical_part(read_sidecar(path))
            except OutsideRootsError as e:
                self.sidecar_error = f"Cannot use sidecar {text!r}: {e}"
            except Exception as e:  # noqa: BLE001  (a bad sidecar becomes a message in the page)
                msg = error_text(e) if self.roots is None else self.roots.scrub(error_text(e))
                self.sidecar_error = f"Cannot use sidecar {shown!r}: {msg}"
        self._update_choices()

    def sidecar_choices(self) -> list[str]:
        """The sidecar files a served page offers (under the roots, as they are shown); [] without roots."""
        if self.roots is None:
            return []
        return [self.roots.display(f) for f in self.roots.files(*SIDECAR_PATTERNS) if f.is_file()]

    @param.depends("sensors", watch=True)
    def _update_choices(self) -> None:
        labels = list(self.band_table()["label"])
        self.param.band.objects = labels
        if self.band not in labels:
            self.band = "sentinel2 B08" if "sentinel2 B08" in labels else (labels[0] if labels else None)
        names = list(self._all_sensors())
        self.param.sensor_a.objects = names
        self.param.sensor_b.objects = names

    def anchor_table(self) -> pd.DataFrame:
        """One row per anchor: mu, sigma (nm) and a short label."""
        a = np.asarray(self.anchors, dtype=float)
        return pd.DataFrame({"anchor": [f"{m:g}±{s:g}" for m, s in a], "mu_nm": a[:, 0], "sigma_nm": a[:, 1]})

    def anchor_curves(self, num: int = 861) -> pd.DataFrame:
        """Gaussian response of every anchor over 350-2500 nm: index wavelength, one column per anchor."""
        wl = np.linspace(*SPECTRAL_RANGE, num)
        t = self.anchor_table()
        resp = np.exp(-((wl[:, None] - t["mu_nm"].values) ** 2) / (2 * t["sigma_nm"].values ** 2))
        return pd.DataFrame(resp, index=pd.Index(wl, name="wavelength_nm"), columns=t["anchor"])

    def band_table(self) -> pd.DataFrame:
        """One row per optical band on display: sensor, band, centre, width, interval, GSD, label."""
        rows = []
        for sname, s in self.available_sensors().items():
            for b in s.bands:
                lo, hi = b.interval_nm
                rows.append(
                    {
                        "sensor": sname,
                        "band": b.name,
                        "wavelength_nm": b.wavelength_nm,
                        "bandwidth_nm": b.bandwidth_nm,
                        "lo_nm": lo,
                        "hi_nm": hi,
                        "gsd_m": b.gsd_m,
                        "label": f"{sname} {b.name}",
                    }
                )
        cols = ["sensor", "band", "wavelength_nm", "bandwidth_nm", "lo_nm", "hi_nm", "gsd_m", "label"]
        return pd.DataFrame(rows, columns=cols)

    def encode(self, center_nm: float, width_nm: float) -> np.ndarray:
        """The (K,) RBF code of one band."""
        return encode_bands([center_nm], [width_nm], self.anchors)[0]

    def band_encoding(self, label: str | None = None) -> np.ndarray:
        """The code of the selected band (or of ``label``, ``"<sensor> <band>"``)."""
        label = label or self.band
        t = self.band_table()
        row = t[t["label"] == label]
        if row.empty:
            raise KeyError(f"no band {label!r} on display")
        return self.encode(float(row["wavelength_nm"].iloc[0]), float(row["bandwidth_nm"].iloc[0]))

    def custom_encoding(self) -> np.ndarray:
        """The code of the custom band ``[center_nm - width_nm/2, center_nm + width_nm/2]``."""
        return self.encode(self.center_nm, self.width_nm)

    @staticmethod
    def lit_anchors(code: np.ndarray, threshold: float = LIT_THRESHOLD) -> int:
        """Number of anchors whose normalised response exceeds ``threshold``."""
        return int((np.asarray(code) > threshold).sum())

    def sensor_encodings(self, sensor: str) -> pd.DataFrame:
        """Codes of a sensor's optical bands: index band, one column per anchor."""
        s = self._all_sensors().get(sensor)
        if s is None:
            raise KeyError(f"unknown sensor {sensor!r}; available: {sorted(self._all_sensors())}")
        codes = encode_bands([b.wavelength_nm for b in s.bands], [b.bandwidth_nm for b in s.bands], self.anchors)
        return pd.DataFrame(codes, index=pd.Index(s.band_names, name="band"), columns=self.anchor_table()["anchor"])

    def similarity(self, sensor_a: str | None = None, sensor_b: str | None = None) -> pd.DataFrame:
        """Cosine similarity of the codes of the bands of two sensors (rows: ``sensor_a``)."""
        a = self.sensor_encodings(sensor_a or self.sensor_a)
        b = self.sensor_encodings(sensor_b or self.sensor_b)
        na = a.values / np.linalg.norm(a.values, axis=1, keepdims=True).clip(1e-12)
        nb = b.values / np.linalg.norm(b.values, axis=1, keepdims=True).clip(1e-12)
        return pd.DataFrame(na @ nb.T, index=a.index, columns=b.index)

    # ------------------------------------------------------------------ plots
    @param.depends("sensors", "sidecar", "anchors", "band", "center_nm", "width_nm")
    def coverage_plot(self) -> hv.Overlay:
        """Anchors, bands, the selected band (red span) and the custom band (orange span)."""
        curves = self.anchor_curves()
        # all anchors as one multi-line glyph (one renderer instead of K; its colour is a data spec, which the
        # notebook comms round-trip cleanly, where K single-line glyphs echoed back failed Bokeh's validation)
        wl = curves.index.values
        layers = [
            hv.Path(
                [np.column_stack([wl, curves[c].values]) for c in curves.columns],
                ["wavelength_nm", "response"],
                label="RBF anchors",
            ).opts(color="slategray", line_width=1.5, show_legend=True)
        ]
        t = self.band_table()
        names = list(dict.fromkeys(t["sensor"]))
        rows = []
        for i, sname in enumerate(names):
            y0 = -0.22 * (i + 1)
            for _, r in t[t["sensor"] == sname].iterrows():
                rows.append(
                    (r["lo_nm"], y0, r["hi_nm"], y0 + 0.16, sname, r["band"], r["wavelength_nm"], r["bandwidth_nm"])
                )
        rects = hv.Rectangles(
            rows, kdims=["x0", "y0", "x1", "y1"], vdims=["sensor", "band", "wavelength_nm", "bandwidth_nm"]
        )
        rects = rects.opts(
            color="sensor",
            cmap="Category10",
            line_color="black",
            line_width=0.5,
            alpha=0.7,
            tools=["hover"],
            show_legend=False,
        )
        labels = hv.Labels(
            {
                "x": [SPECTRAL_RANGE[1] - 5] * len(names),
                "y": [-0.22 * (i + 1) + 0.08 for i in range(len(names))],
                "text": names,
            },
            ["x", "y"],
            "text",
        ).opts(text_align="right", text_font_size="9pt", text_baseline="middle")
        bottom = -0.22 * (len(names) + 1)
        return hv.Overlay([*layers, rects, labels, *self.highlight_plot()]).opts(
            width=PLOT_WIDTH + 280,
            height=PLOT_HEIGHT + 40,
            xlim=SPECTRAL_RANGE,
            ylim=(bottom, 1.08),
            xlabel="wavelength (nm)",
            ylabel="anchor response / bands",
            title="RBF anchors over 350-2500 nm and sensor bands [centre ± width/2]",
            legend_position="top_right",
        )

    @param.depends("band", "center_nm", "width_nm")
    def highlight_plot(self) -> hv.Overlay:
        spans = []
        t = self.band_table()
        row = t[t["label"] == self.band]
        if not row.empty:
            spans.append(
                hv.VSpan(float(row["lo_nm"].iloc[0]), float(row["hi_nm"].iloc[0])).opts(color="crimson", alpha=0.25)
            )
        lo, hi = self.center_nm - self.width_nm / 2, self.center_nm + self.width_nm / 2
        spans.append(hv.VSpan(lo, hi).opts(color="orange", alpha=0.35))
        return hv.Overlay(spans)

    def _bars(self, code: np.ndarray, vdim: str, title: str, color: str) -> hv.Bars:
        df = pd.DataFrame({"anchor": self.anchor_table()["anchor"], vdim: code})
        return hv.Bars(df, "anchor", vdim).opts(
            width=PLOT_WIDTH // 2 + 140,
            height=PLOT_HEIGHT - 20,
            ylim=(0, 1.05),
            xrotation=60,
            color=color,
            title=title,
            tools=["hover"],
            ylabel="normalised response",
            xlabel="anchor (mu±sigma nm)",
        )

    @param.depends("band", "sensors", "sidecar", "anchors")
    def band_bars(self) -> hv.Bars:
        if self.band is None:
            code = np.zeros(len(self.anchors))
            title = "no band selected"
        else:
            code = self.band_encoding()
            title = f"{self.band}: {self.lit_anchors(code)} anchors lit"
        return self._bars(code, "band_response", title, "crimson")

    @param.depends("center_nm", "width_nm", "anchors")
    def custom_bars(self) -> hv.Bars:
        code = self.custom_encoding()
        title = f"custom band {self.center_nm:g} ± {self.width_nm / 2:g} nm: {self.lit_anchors(code)} anchors lit"
        return self._bars(code, "custom_response", title, "darkorange")

    @param.depends("sensor_a", "sensor_b", "sidecar", "anchors")
    def similarity_plot(self) -> hv.HeatMap:
        sim = self.similarity()
        rows = hv.Dimension("row_band", label=f"{self.sensor_a} band")
        cols = hv.Dimension("col_band", label=f"{self.sensor_b} band")
        df = pd.DataFrame(
            {
                "row_band": np.repeat(sim.index.values, sim.shape[1]),
                "col_band": np.tile(sim.columns.values, sim.shape[0]),
                "cosine": sim.values.ravel(),
            }
        )
        hm = hv.HeatMap(df, [cols, rows], "cosine")
        n = max(len(sim.index), len(sim.columns))
        big = n > 40
        return hm.opts(
            cmap="viridis",
            clim=(0, 1),
            colorbar=True,
            tools=["hover"],
            xrotation=90,
            width=PLOT_WIDTH + 60,
            height=PLOT_HEIGHT + 120,
            invert_yaxis=True,
            xaxis=None if big else "bottom",
            yaxis=None if big else "left",
            title=f"cosine similarity of spectral codes: {self.sensor_a} x {self.sensor_b}",
        )

    @param.depends("sidecar")
    def _messages(self):
        if self.sidecar_error:
            return alert(escape_text(self.sidecar_error), "warning")
        return pn.Spacer(height=0)

    def _sidecar_widget(self):
        if self.roots is None:
            return pn.widgets.TextInput.from_param(
                self.param.sidecar, name="Sidecar (.yaml/.json path)", placeholder="path/to/my_sensor.yaml"
            )
        choices = ["", *self.sidecar_choices()]  # served: only files under the dashboard's folders
        if self.sidecar and self.sidecar not in choices:
            choices.append(self.sidecar)
        select = pn.widgets.Select(name="Sidecar (.yaml/.json under the served folders)", options=choices)
        select.value = self.sidecar if self.sidecar in choices else ""
        select.link(self, value="sidecar")
        return select

    def __panel__(self):
        w = pn.widgets
        controls = pn.Column(
            "### Sensors",
            w.MultiChoice.from_param(self.param.sensors, name="Sensors (optical bands)"),
            self._sidecar_widget(),
            pn.panel(self._messages),
            w.Select.from_param(self.param.band, name="Band to encode"),
            "### Custom band",
            w.FloatSlider.from_param(self.param.center_nm, name="Centre (nm)"),
            w.FloatSlider.from_param(self.param.width_nm, name="Width (nm)"),
            "### Similarity",
            w.Select.from_param(self.param.sensor_a, name="Rows: sensor"),
            w.Select.from_param(self.param.sensor_b, name="Columns: sensor"),
            width=300,
        )
        plots = pn.Column(
            pn.param.ParamMethod(self.coverage_plot, name="coverage"),
            pn.Row(
                pn.pane.HoloViews(hv.DynamicMap(self.band_bars), name="band_bars"),
                pn.pane.HoloViews(hv.DynamicMap(self.custom_bars), name="custom_bars"),
            ),
            pn.param.ParamMethod(self.similarity_plot, name="similarity"),
        )
        return pn.Row(controls, plots)
