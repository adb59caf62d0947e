"""The combined dashboard: the five apps as tabs (what ``atomizer serve`` and ``dashboards/app.py`` serve).

:func:`serve` runs it on a local port; every browser session gets its own app. A missing results store
or checkpoint is not an error: the tabs say what is missing.
"""

from __future__ import annotations

from pathlib import Path

import panel as pn
from bokeh.document import Document

from atomizer.core.runtime import release_memory
from atomizer.dashboard._common import on_session_end
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

    def close() -> None:  # the session ended: free what it holds (shared models and tables stay, bounded)
        for app in tabs.apps.values():
            if hasattr(app, "close"):
                app.close()
        tabs.apps = {}

    on_session_end(close)
    return tabs


def warm_up(results_root: str | Path = "runs", checkpoint: str | Path | None = None) -> None:
    """Build and render every tab once, off any session: imports, the checkpoint's model, the store's tables
    and statistics and the attention maps of the default input land in the shared caches, so the first
    browser session is as fast as the next and the server's memory after start-up is its resting level."""
    import warnings

    app = build_app(results_root=results_root, checkpoint=checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for view in app.apps.values():
            try:
                pane = pn.panel(view)
                root = pane.get_root(Document())
                pane._cleanup(root)  # what a destroyed session does: no model of the warm-up stays behind
                pn.state._views.pop(root.ref["id"], None)
                if hasattr(view, "result") and getattr(view, "checkpoint", ""):
                    view.result()
                if hasattr(view, "summary"):
                    view.summary(), view.differences(), view.landscape()
            except Exception:  # noqa: BLE001  (the page shows what is wrong; warming never stops the server)
                pass
            if hasattr(view, "close"):
                view.close()
    release_memory()


def serve(
    port: int = 5006,
    results_root: str | Path = "runs",
    checkpoint: str | Path | None = None,
    show: bool = True,
    threads: int = 4,
    warm: bool = True,
) -> None:
    """Serve :func:`build_app` on ``localhost:port`` until interrupted.

    Every browser session gets its own app; what sessions can share (loaded models, a store's tables and
    statistics, attention results) is computed once and cached with a bound (:mod:`atomizer.dashboard._common`),
    and a session's own state is freed when it closes. ``threads`` callbacks run at once, off the event loop.
    With ``warm``, :func:`warm_up` fills those caches before the first user arrives.
    """

    def app() -> pn.Tabs:
        return build_app(results_root=results_root, checkpoint=checkpoint)

    if warm:
        warm_up(results_root, checkpoint)
    url = f"http://localhost:{port}/"
    print(
        f"atomizer: serving the dashboard at {url} (results: {results_root}, checkpoint: "
        f"{checkpoint or 'none'}); Ctrl-C stops",
        flush=True,
    )
    pn.config.nthreads = (
        threads  # sessions' callbacks run in a thread pool: one user's work never blocks another's page
    )
    pn.serve(
        app,
        port=port,
        check_unused_sessions_milliseconds=5_000,  # closed sessions are dropped (and their memory freed) within ~15 s
        unused_session_lifetime_milliseconds=10_000,
        address="localhost",
        websocket_origin=[f"localhost:{port}", f"127.0.0.1:{port}"],
        show=show,
        title="Atomizer",
        verbose=False,
    )
