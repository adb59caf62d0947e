"""Servable entry of the Atomizer dashboard.

    panel serve dashboards/app.py --args --results runs/x --checkpoint runs/x/checkpoints/best.pt

The same options can be given per session in the URL (``?results=runs/x&checkpoint=...``), which win
over the command line. ``atomizer serve`` serves the same app without ``panel serve``.
"""

import argparse
import sys

import panel as pn

from atomizer.dashboard.app import build_app


def _options() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dashboards/app.py", add_help=False)
    p.add_argument("--results", default="runs")
    p.add_argument("--checkpoint", default=None)
    args, _unknown = p.parse_known_args(sys.argv[1:])
    session = pn.state.session_args or {}
    for key in ("results", "checkpoint"):
        if session.get(key):
            value = session[key][0]
            setattr(args, key, value.decode() if isinstance(value, bytes) else str(value))
    return args


_args = _options()
build_app(results_root=_args.results, checkpoint=_args.checkpoint).servable(title="Atomizer")
