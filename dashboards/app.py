"""Servable entry of the Atomizer dashboard, for ``panel serve``:

    panel serve dashboards/app.py --address 127.0.0.1 --args --results runs/x --checkpoint runs/x/checkpoints/best.pt

Options come only from ``--args`` (``--results``, ``--checkpoint``, ``--root DIR`` repeated, ``--map-cache``,
``--max-map-windows``, ``--allow-remote``); URL parameters are ignored, so a link cannot make the server open a
file. ``panel serve`` binds every interface unless given ``--address 127.0.0.1``: a session whose request
does not come from this machine (a loopback peer naming localhost, 127.0.0.1 or [::1]) gets a one-line page
instead of the dashboard, unless ``--args --allow-remote`` (or ``ATOMIZER_ALLOW_REMOTE=1``) is given; then put
an authenticating proxy in front, the dashboard has none. ``atomizer serve`` serves the same app, bound to
localhost.
"""

import argparse
import os
import sys

import panel as pn

from atomizer.dashboard._common import alert
from atomizer.dashboard.app import build_app, is_local_request


def _options() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dashboards/app.py", add_help=False)
    p.add_argument("--results", default="runs")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--root", action="append", default=[])
    p.add_argument("--map-cache", default=None)
    p.add_argument("--max-map-windows", type=int, default=None)
    p.add_argument("--allow-remote", action="store_true")
    args, _unknown = p.parse_known_args(sys.argv[1:])
    args.allow_remote = args.allow_remote or os.environ.get("ATOMIZER_ALLOW_REMOTE", "") == "1"
    return args


def _admitted(allow_remote: bool) -> bool:
    """True outside a server, with ``--allow-remote``, or for a request from this machine."""
    doc = pn.state.curdoc
    context = doc.session_context if doc is not None else None
    request = getattr(context, "request", None)  # a served session's (bokeh's base SessionContext declares none)
    if allow_remote or request is None:
        return True
    return is_local_request(getattr(request, "remote_ip", None), (request.headers or {}).get("Host"))


_args = _options()
if _admitted(_args.allow_remote):
    build_app(
        results_root=_args.results,
        checkpoint=_args.checkpoint,
        roots=_args.root,
        map_cache=_args.map_cache,
        max_map_windows=_args.max_map_windows,
    ).servable(title="Atomizer")
else:
    alert(
        "This dashboard answers only on the machine that serves it; start it with `--args --allow-remote` "
        "(behind an authenticating proxy) to share it.",
        "warning",
    ).servable(title="Atomizer")
