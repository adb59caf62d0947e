"""``atomizer serve``: the dashboard (:func:`atomizer.dashboard.app.build_app`) on a local port.

    atomizer serve [--port 5006] [--results DIR] [--checkpoint PATH] [--show/--no-show]

Every browser session gets its own app. A missing results store or checkpoint is not an error: the
tabs say what is missing.
"""

from __future__ import annotations

import argparse

from atomizer.cli import register


def _cmd_serve(args: argparse.Namespace) -> int:
    import panel as pn

    from atomizer.dashboard.app import build_app

    def app():
        return build_app(results_root=args.results, checkpoint=args.checkpoint)

    url = f"http://localhost:{args.port}/"
    print(f"atomizer: serving the dashboard at {url} (results: {args.results}, checkpoint: "
          f"{args.checkpoint or 'none'}); Ctrl-C stops", flush=True)
    pn.serve(app, port=args.port, address="localhost", websocket_origin=[f"localhost:{args.port}", f"127.0.0.1:{args.port}"],
             show=args.show, title="Atomizer", verbose=False)
    return 0


@register
def _add_serve(sub) -> None:
    s = sub.add_parser("serve", help="serve the dashboard (spectral, positional, attention, results)")
    s.add_argument("--port", type=int, default=5006, help="local port (default 5006)")
    s.add_argument("--results", default="runs", help="results store to show (default: runs)")
    s.add_argument("--checkpoint", help="Atomizer checkpoint for the attention maps")
    s.add_argument("--show", action=argparse.BooleanOptionalAction, default=True,
                   help="open a browser tab (default: --show)")
    s.set_defaults(func=_cmd_serve)
