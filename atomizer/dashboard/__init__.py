"""Interactive dashboards (Panel + HoloViews), the top layer of the library.

One module per app, each a :class:`panel.viewable.Viewer` that notebooks can display and tests can
drive through its parameters:

* :class:`~atomizer.dashboard.spectral.SpectralCoverage` -- RBF anchors, sensor bands, spectral codes;
* :class:`~atomizer.dashboard.positional.PositionalEncodings` -- resolution-modulated positional codes;
* :class:`~atomizer.dashboard.attention.AttentionMaps` -- cross-attention of a checkpoint on an image;
* :class:`~atomizer.dashboard.results.ResultsView` -- the results store (tables, sweeps, curves).

:func:`atomizer.dashboard.app.build_app` combines them as tabs (``atomizer serve``). Everything is
computed by the library (:mod:`atomizer.atoms.encodings`, :mod:`atomizer.models.atomizer`, :mod:`atomizer.results.store`...);
these modules only arrange and plot. Importing a submodule loads Panel and HoloViews; this package
itself imports nothing heavy.
"""

from __future__ import annotations

__all__ = ["AttentionMaps", "PositionalEncodings", "ResultsView", "SpectralCoverage", "build_app"]


def __getattr__(name: str):
    if name == "SpectralCoverage":
        from atomizer.dashboard.spectral import SpectralCoverage

        return SpectralCoverage
    if name == "PositionalEncodings":
        from atomizer.dashboard.positional import PositionalEncodings

        return PositionalEncodings
    if name == "AttentionMaps":
        from atomizer.dashboard.attention import AttentionMaps

        return AttentionMaps
    if name == "ResultsView":
        from atomizer.dashboard.results import ResultsView

        return ResultsView
    if name == "build_app":
        from atomizer.dashboard.app import build_app

        return build_app
    raise AttributeError(f"module 'atomizer.dashboard' has no attribute {name!r}")
