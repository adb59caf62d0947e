"""The combined dashboard: the five apps as tabs (what ``atomizer serve`` and ``dashboards/app.py`` serve).

:func:`serve` runs it on a local port; every browser session gets its own app. A missing results store
or checkpoint is not an error: the tabs say what is missing.
"""

from __future__ import annotations

from pathlib import Path

import panel as pn

from atomizer.dashboard.attention import AttentionMaps
from atomizer.dashboard.maps import MapView
from atomizer.dashboard.positional import PositionalEncodings
from atomizer.dashboard.results import ResultsView
from atomizer.dashboard.spectral import SpectralCoverage

TAB_TITLES = ("Spectral coverage", "Positional encodings", "Attention maps", "Results", "Maps")


def build_app(results_root: str | Path = "runs", checkpoint: str | Path | None = None) -> pn.Tabs:
    """The dashboard as :class:`panel.Tabs`, one tab per app (rendered when first shown).

    Args:
        results_root: Results store for the Results tab (missing: an empty-state message).
        checkpoint: Atomizer checkpoint for the Attention maps tab (None: a message and a path box).
    """
    pn.extension(notifications=False)
    spectral = SpectralCoverage()
    positional = PositionalEncodings()
    attention = AttentionMaps(checkpoint=str(checkpoint) if checkpoint else "")
    results = ResultsView(root=str(results_root))
    maps = MapView(checkpoint=str(checkpoint) if checkpoint else "")
    tabs = pn.Tabs(
        *zip(TAB_TITLES, (spectral, positional, attention, results, maps)),
        dynamic=True,
        sizing_mode="stretch_width",
        name="atomizer-dashboard",
    )
    tabs.apps = {
        "spectral": spectral,
        "positional": positional,
        "attention": attention,
        "results": results,
        "maps": maps,
    }
    return tabs


def serve(
    port: int = 5006, results_root: str | Path = "runs", checkpoint: str | Path | None = None, show: bool = True
) -> None:
    """Serve :func:`build_app` on ``localhost:port`` until interrupted."""

    def app() -> pn.Tabs:
        return build_app(results_root=results_root, checkpoint=checkpoint)

    url = f"http://localhost:{port}/"
    print(
        f"atomizer: serving the dashboard at {url} (results: {results_root}, checkpoint: "
        f"{checkpoint or 'none'}); Ctrl-C stops",
        flush=True,
    )
    pn.serve(
        app,
        port=port,
        address="localhost",
        websocket_origin=[f"localhost:{port}", f"127.0.0.1:{port}"],
        show=show,
        title="Atomizer",
        verbose=False,
    )
