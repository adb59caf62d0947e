"""Positional encodings: the resolution-modulated Fourier code of pixel positions.

Every code comes from :func:`atomizer.atoms.encodings.positional_grid` / :func:`positional_encoding`: the
physical offset of a pixel centre from the image centre (metres) over a reference ``ref_m``, through
Fourier features. A ground point keeps its code whatever the GSD (up to the pixel it falls in); a
coarse GSD moves further per pixel, so its code varies faster from pixel to pixel.

Use in a notebook::

    from atomizer.dashboard.positional import PositionalEncodings
    app = PositionalEncodings(gsd_m=20, size_px=64, channel=3)
    app.code_image()               # (size_px, size_px) array of that channel
    app.ground_point_codes()       # DataFrame: the code of one ground point at several GSDs
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
import torch

from atomizer.atoms.encodings import (
    EncodingConfig,
    fourier_dim,
    fourier_frequencies,
    positional_encoding,
    positional_grid,
)
from atomizer.dashboard._common import PLOT_HEIGHT, PLOT_WIDTH

_DEFAULT = EncodingConfig()


def channel_names(num_bands: int, max_freq: float, include_raw: bool = True) -> list[str]:
    """Names of the channels of a Fourier code, in the library's order: sin..., cos..., raw."""
    f = fourier_frequencies(num_bands, max_freq).tolist()
    names = [f"sin f={v:.3g}" for v in f] + [f"cos f={v:.3g}" for v in f]
    return names + (["raw"] if include_raw else [])


class PositionalEncodings(pn.viewable.Viewer):
    """Explore the positional code of an image of ``size_px`` pixels at ``gsd_m`` metres per pixel."""

    gsd_m = param.Number(
        default=10.0,
        bounds=(1.0, 500.0),
        softbounds=(1.0, 120.0),
        step=1.0,
        doc="Ground sampling distance of the image (m/px).",
    )
    size_px = param.Integer(default=64, bounds=(2, 512), softbounds=(2, 256), doc="Image side in pixels.")
    num_bands = param.Integer(
        default=_DEFAULT.pos_bands, bounds=(1, 128), doc="Number of Fourier frequencies L of the positional code."
    )
    max_freq = param.Number(
        default=_DEFAULT.pos_max_freq, bounds=(1.0, 512.0), doc="Highest frequency f_max of the positional code."
    )
    ref_m = param.Number(
        default=_DEFAULT.pos_ref_m, bounds=(1.0, 1e5), doc="Reference distance (m): the code encodes offset_m / ref_m."
    )
    channel = param.Integer(
        default=1,
        bounds=(0, fourier_dim(_DEFAULT.pos_bands) - 1),
        doc="Channel of the code shown over the pixel grid (sin..., cos..., raw).",
    )
    axis = param.Selector[str](default="x", objects=["x", "y"], doc="Axis whose code is shown (x east, y north).")
    point_m = param.Number(
        default=137.0,
        bounds=(-5000.0, 5000.0),
        doc="Offset (m) of the ground point from the image centre along the axis.",
    )
    gsd_list = param.List(
        default=[10.0, 20.0, 40.0, 60.0, 120.0],
        item_type=(int, float),
        doc="GSDs (m/px) at which the ground point's code is compared.",
    )

    @param.depends("num_bands", watch=True, on_init=True)
    def _update_channel_bounds(self) -> None:
        top = self.code_dim - 1
        self.param.channel.bounds = (0, top)
        self.channel = min(self.channel, top)

    @property
    def code_dim(self) -> int:
        """Channels of one axis' code (``2 L + 1``)."""
        return fourier_dim(self.num_bands)

    def channel_names(self) -> list[str]:
        return channel_names(self.num_bands, self.max_freq)

    # ------------------------------------------------------------------ data
    def grid(self) -> np.ndarray:
        """The library's code of every pixel centre: (size_px, size_px, 2, code_dim)."""
        return positional_grid(self.size_px, self.gsd_m, self.num_bands, self.max_freq, self.ref_m).numpy()

    def code_image(self) -> np.ndarray:
        """Channel ``channel`` of the ``axis`` code over the pixel grid, (size_px, size_px), row 0 north."""
        return self.grid()[:, :, 0 if self.axis == "x" else 1, self.channel]

    def extent_m(self) -> float:
        return self.size_px * self.gsd_m

    def ground_point_codes(self) -> pd.DataFrame:
        """The code of the ground point ``point_m`` at each GSD of ``gsd_list`` over the same extent.

        At each GSD the image covers the current ground extent with ``round(extent / gsd)`` pixels; the
        point falls in one pixel, whose centre's code is what an atom there carries. Columns: gsd_m,
        pixel_offset_m, channel, name, value.
        """
        extent = self.extent_m()
        rows = []
        names = self.channel_names()
        for g in self.gsd_list:
            n = max(1, round(extent / g))
            centres = (np.arange(n) + 0.5 - n / 2) * g
            off = float(centres[np.abs(centres - self.point_m).argmin()])
            code = positional_encoding(torch.tensor([off]), self.num_bands, self.max_freq, self.ref_m)[0].numpy()
            rows += [
                {"gsd_m": float(g), "pixel_offset_m": off, "channel": c, "name": names[c], "value": float(v)}
                for c, v in enumerate(code)
            ]
        return pd.DataFrame(rows)

    def fourier_channels(self, channels: list[int] | None = None, num: int = 400) -> pd.DataFrame:
        """Channels of the code as functions of the offset (m) across the image along ``axis``.

        Columns: offset_m, channel, name, value, on a fine grid (``num`` points) spanning the image.
        Default channels: the lowest, a middle and the highest sine frequency, and ``channel``.
        """
        L = self.num_bands
        if channels is None:
            channels = sorted({0, L // 2, L - 1, self.channel})
        half = self.extent_m() / 2
        off = torch.linspace(-half, half, num)
        code = positional_encoding(off, self.num_bands, self.max_freq, self.ref_m).numpy()
        names = self.channel_names()
        frames = [
            pd.DataFrame({"offset_m": off.numpy(), "channel": c, "name": names[c], "value": code[:, c]})
            for c in channels
        ]
        return pd.concat(frames, ignore_index=True)

    def pixel_samples(self) -> pd.DataFrame:
        """The selected channel at the pixel centres along ``axis`` (what the atoms actually see)."""
        off = (torch.arange(self.size_px, dtype=torch.float32) + 0.5 - self.size_px / 2) * self.gsd_m
        code = positional_encoding(off, self.num_bands, self.max_freq, self.ref_m).numpy()
        return pd.DataFrame({"offset_m": off.numpy(), "value": code[:, self.channel]})

    # ------------------------------------------------------------------ plots
    @param.depends("gsd_m", "size_px", "num_bands", "max_freq", "ref_m", "channel", "axis")
    def image_plot(self) -> hv.Image:
        half = self.extent_m() / 2
        img = hv.Image(
            self.code_image(),
            bounds=(-half, -half, half, half),
            kdims=["x_m", "y_m"],
            vdims=[hv.Dimension("code", range=(-1, 1))],
        )
        name = self.channel_names()[self.channel]
        return img.opts(
            cmap="RdBu_r",
            clim=(-1, 1) if self.channel < 2 * self.num_bands else (None, None),
            colorbar=True,
            width=PLOT_WIDTH - 120,
            height=PLOT_HEIGHT + 120,
            tools=["hover"],
            xlabel="x (m from centre)",
            ylabel="y (m from centre)",
            title=f"{self.axis} code, channel {self.channel} ({name}): "
            f"{self.size_px}x{self.size_px} px @ {self.gsd_m:g} m",
        )

    @param.depends("gsd_m", "size_px", "num_bands", "max_freq", "ref_m", "point_m", "gsd_list")
    def ground_point_plot(self) -> hv.Overlay:
        df = self.ground_point_codes()
        curves = [
            hv.Curve(d, "channel", "value", label=f"{g:g} m (pixel at {d['pixel_offset_m'].iloc[0]:g} m)").opts(
                line_width=1.5
            )
            for g, d in df.groupby("gsd_m", sort=True)
        ]
        return hv.Overlay(curves).opts(
            width=PLOT_WIDTH,
            height=PLOT_HEIGHT,
            legend_position="right",
            xlabel="code channel",
            ylabel="code value",
            title=f"code of the ground point at {self.point_m:g} m, across GSDs",
        )

    @param.depends("gsd_m", "size_px", "num_bands", "max_freq", "ref_m", "channel", "axis")
    def channels_plot(self) -> hv.Overlay:
        df = self.fourier_channels()
        curves = [
            hv.Curve(d, "offset_m", "value", label=name).opts(line_width=1.5)
            for name, d in df.groupby("name", sort=False)
        ]
        pts = hv.Scatter(self.pixel_samples(), "offset_m", "value", label=f"pixel centres @ {self.gsd_m:g} m").opts(
            color="black", size=4
        )
        return hv.Overlay([*curves, pts]).opts(
            width=PLOT_WIDTH,
            height=PLOT_HEIGHT,
            legend_position="right",
            xlabel=f"{self.axis} offset (m)",
            ylabel="code value",
            title="Fourier channels vs position",
        )

    def __panel__(self):
        w = pn.widgets
        controls = pn.Column(
            "### Image",
            w.FloatSlider.from_param(self.param.gsd_m, name="GSD (m/px)"),
            w.IntSlider.from_param(self.param.size_px, name="Size (px)"),
            "### Code",
            w.IntSlider.from_param(self.param.channel, name="Channel"),
            w.RadioButtonGroup.from_param(self.param.axis, name="Axis"),
            w.IntInput.from_param(self.param.num_bands, name="Frequencies L"),
            w.FloatInput.from_param(self.param.max_freq, name="f_max"),
            w.FloatInput.from_param(self.param.ref_m, name="Reference (m)"),
            "### Ground point",
            w.FloatInput.from_param(self.param.point_m, name="Offset (m)"),
            w.LiteralInput.from_param(self.param.gsd_list, name="GSDs (m/px)"),
            width=300,
        )
        plots = pn.Column(
            pn.pane.HoloViews(hv.DynamicMap(self.image_plot).opts(framewise=True), name="code_image"),
            pn.param.ParamMethod(self.channels_plot, name="channels"),
            pn.param.ParamMethod(self.ground_point_plot, name="ground_point"),
        )
        return pn.Row(controls, plots)
