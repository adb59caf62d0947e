"""Shared bits of the dashboards: the HoloViews backend, messages, small formatting helpers."""

from __future__ import annotations

import holoviews as hv
import holoviews.plotting.bokeh  # registers the bokeh backend and makes it current
import panel as pn

hv.Store.set_current_backend("bokeh")

#: Width of the plots of the dashboards (px); layouts stretch around them.
PLOT_WIDTH = 620
PLOT_HEIGHT = 320


def alert(message: str, kind: str = "danger") -> pn.pane.Alert:
    """A message shown in the page instead of an exception (``kind``: danger, warning, info...)."""
    return pn.pane.Alert(message, alert_type=kind, sizing_mode="stretch_width")


def error_text(exc: BaseException) -> str:
    """One line describing ``exc`` (the message of the library's errors already names the input)."""
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return f"{type(exc).__name__}: {msg}"
