"""The combined dashboard: the five apps as tabs (what ``atomizer serve`` and ``dashboards/app.py`` serve).

:func:`serve` runs it on a local port; every browser session gets its own app. A missing results store
or checkpoint is not an error: the tabs say what is missing.

Trust model: the server has no authentication. It binds localhost and answers only requests addressed to
``localhost``/``127.0.0.1``/``[::1]`` (or the ``address`` it was given) whose websocket Origin is one of those
(:class:`LocalHostsOnly`); every path a tab reads lies under :func:`dashboard_roots`, fixed at start (the
results store, the checkpoint's folder, the embedded data, and each ``roots`` folder). To share it, put an
authenticating reverse proxy in front of it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import panel as pn
from bokeh.document import Document
from bokeh.server.auth_provider import AuthProvider
from panel.viewable import Viewable
from tornado.web import RequestHandler
from tornado.websocket import WebSocketHandler

from atomizer.core.runtime import release_memory
from atomizer.dashboard._common import Roots, on_session_end
from atomizer.dashboard.attention import AttentionMaps
from atomizer.dashboard.maps import MapView
from atomizer.dashboard.positional import PositionalEncodings
from atomizer.dashboard.results import ResultsView
from atomizer.dashboard.spectral import SpectralCoverage

TAB_TITLES = ("Spectral coverage", "Positional encodings", "Attention maps", "Results", "Maps")


#: Host names that address this machine (what a request's Host header and a websocket's Origin may name).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


class DashboardTabs(pn.Tabs):
    """The dashboard's tabs, with the roots every tab reads under and each tab's view by name (``apps``)."""

    roots: Roots
    apps: dict[str, Any]


def dashboard_roots(
    results_root: str | Path = "runs", checkpoint: str | Path | None = None, roots: Iterable[str | Path] = ()
) -> Roots:
    """The folders a served dashboard may read, fixed at start: the results store, the checkpoint's folder, the
    embedded data (when present) and every folder of ``roots``. Each is labelled by its name (what the page
    shows instead of its server path). A ``roots`` entry that is not a folder, or the file system's root, is
    refused in one line."""
    from atomizer.core.paths import embedded_dir

    pairs: list[tuple[str, Path]] = [(Path(results_root).expanduser().resolve().name or "results", Path(results_root))]
    if checkpoint:
        folder = Path(checkpoint).expanduser().resolve().parent
        pairs.append((folder.name or "checkpoint", folder))
    try:
        embedded = embedded_dir()
    except OSError:  # no data folder on this machine
        embedded = None
    if embedded is not None and embedded.is_dir():
        pairs.append(("embedded", embedded))
    for r in roots:
        p = Path(r).expanduser().resolve()
        if not p.is_dir():
            raise ValueError(f"--root {str(r)!r} is not a folder")
        pairs.append((p.name or "root", p))
    for label, p in pairs:
        if p.expanduser().resolve() == Path(p.anchor or "/").resolve():
            raise ValueError(f"the {label} folder is the file system's root: serve a folder below it")
    return Roots(pairs)


def build_app(
    results_root: str | Path = "runs",
    checkpoint: str | Path | None = None,
    roots: Iterable[str | Path] | Roots = (),
    map_cache: str | Path | None = None,
    max_map_windows: int | None = None,
) -> DashboardTabs:
    """The dashboard as :class:`panel.Tabs`, one tab per app (rendered when first shown).

    Args:
        results_root: Results store for the Results tab (missing: an empty-state message).
        checkpoint: Atomizer checkpoint for the Attention maps tab (None: a message and a path box).
        roots: More folders the tabs may read (beside the store, the checkpoint's folder and the embedded data),
            or the :class:`~atomizer.dashboard._common.Roots` themselves.
        map_cache: Folder of the Maps tab's built maps (None: the Maps tab's default).
        max_map_windows: Most windows one map may have (None: the Maps tab's default).
    """
    pn.extension(notifications=False)
    served = roots if isinstance(roots, Roots) else dashboard_roots(results_root, checkpoint, roots)
    ckpt = str(checkpoint) if checkpoint else ""
    shown_ckpt = served.display(ckpt) if ckpt and served.contains(ckpt) else ckpt
    spectral = SpectralCoverage(roots=served)
    positional = PositionalEncodings()
    attention = AttentionMaps(checkpoint=shown_ckpt, roots=served)
    results = ResultsView(root=served.display(Path(results_root).expanduser().resolve()), roots=served)
    map_options: dict[str, Any] = {"checkpoint": shown_ckpt, "roots": served}
    if map_cache is not None:
        map_options["cache_dir"] = str(map_cache)
    if max_map_windows is not None:
        map_options["max_windows"] = int(max_map_windows)
    maps = MapView(**map_options)
    tabs = DashboardTabs(
        *zip(TAB_TITLES, (spectral, positional, attention, results, maps)),
        dynamic=True,
        sizing_mode="stretch_width",
        name="atomizer-dashboard",
    )
    tabs.roots = served
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


def warm_up(results_root: str | Path = "runs", checkpoint: str | Path | None = None, **options: Any) -> None:
    """Build and render every tab once, off any session: imports, the checkpoint's model, the store's tables
    and statistics and the attention maps of the default input land in the shared caches, so the first
    browser session is as fast as the next and the server's memory after start-up is its resting level.
    ``options`` are :func:`build_app`'s others (``roots``, ``map_cache``, ``max_map_windows``)."""
    import warnings

    app = build_app(results_root=results_root, checkpoint=checkpoint, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for view in app.apps.values():
            try:
                pane = cast(Viewable, pn.panel(view))
                root = pane.get_root(Document())
                pane._cleanup(root)  # what a destroyed session does: no model of the warm-up stays behind
                pn.state._views.pop(root.ref["id"], None)
                if hasattr(view, "result") and str(getattr(view, "checkpoint", "")):
                    view.result()
                if hasattr(view, "summary"):
                    view.summary(), view.differences(), view.landscape()
            except Exception:  # noqa: BLE001  (the page shows what is wrong; warming never stops the server)
                pass
            if hasattr(view, "close"):
                view.close()
    release_memory()


# --------------------------------------------------------------------------------------------------
# Serving: the port, the hosts and origins it answers
# --------------------------------------------------------------------------------------------------


def check_port(address: str, port: int) -> None:
    """Raise :class:`OSError` in one line when ``address:port`` cannot be bound (a server already holds it);
    binds each address ``address`` resolves to, as the server will, and closes at once."""
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(f"cannot serve on address {address!r}: {e.strerror}") from None
    bound = 0
    for family, kind, proto, _name, sockaddr in infos:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:  # an address family this machine lacks (IPv6)
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            try:
                sock.bind(sockaddr)
                bound += 1
            except OSError as e:
                if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):  # as the server, skip what cannot exist
                    continue
                if e.errno == errno.EADDRINUSE:
                    raise OSError(
                        f"port {port} is in use on {address}: stop what serves there or choose another --port"
                    ) from None
                raise OSError(f"cannot serve on {address}:{port}: {e.strerror}") from None
    if not bound:
        raise OSError(f"cannot serve on {address}:{port}: no address to bind")


def allowed_hosts(port: int, address: str = "localhost", extra: Sequence[str] = ()) -> list[str]:
    """``host:port`` entries a request's Host header and a websocket's Origin may name: this machine's loopback
    names, the serving ``address`` (unless a wildcard), ``extra`` and Bokeh's ``BOKEH_ALLOW_WS_ORIGIN`` (for
    an authenticating proxy in front, whose public name browsers then send)."""
    hosts = [f"{h}:{port}" for h in LOCAL_HOSTS]
    if address and address not in ("0.0.0.0", "::", "") and f"{address}:{port}" not in hosts:
        hosts.append(f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
    env = [h.strip() for h in os.environ.get("BOKEH_ALLOW_WS_ORIGIN", "").split(",") if h.strip()]
    for h in [*extra, *env]:
        h = h.lower()
        hosts.append(h if ":" in h.rsplit("]", 1)[-1] else f"{h}:80")
    return list(dict.fromkeys(hosts))


def host_allowed(host: str | None, allowed: Iterable[str]) -> bool:
    """Whether a Host header (or an Origin's ``host:port``) is one of ``allowed`` (``host:port``, exact)."""
    if not host:
        return False
    host = host.strip().lower()
    if ":" not in host.rsplit("]", 1)[-1]:
        host = f"{host}:80"
    return host in {a.lower() for a in allowed}


def origin_host(origin: str | None) -> str | None:
    """``host:port`` of an Origin header (None for a missing or opaque ``null`` origin)."""
    if not origin or origin.strip().lower() == "null":
        return None
    parts = urlsplit(origin.strip())
    if not parts.netloc:
        return None
    netloc = parts.netloc.lower()
    if ":" not in netloc.rsplit("]", 1)[-1]:
        netloc = f"{netloc}:{443 if parts.scheme in ('https', 'wss') else 80}"
    return netloc


def is_local_request(remote_ip: str | None, host: str | None) -> bool:
    """Whether a request came from this machine (loopback peer) and names it (Host ``localhost``,
    ``127.0.0.1`` or ``[::1]``, any port): what the ``panel serve`` entry requires unless told otherwise."""
    try:
        loopback = remote_ip is not None and ipaddress.ip_address(remote_ip.split("%")[0]).is_loopback
    except ValueError:
        loopback = False
    name = (host or "").strip().lower()
    name = name.rsplit(":", 1)[0] if ":" in name.rsplit("]", 1)[-1] else name
    return loopback and name in LOCAL_HOSTS


class _RefusedHandler(RequestHandler):
    """Where a request for another host is sent: 403 and one line."""

    def get(self) -> None:
        self.set_status(403)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("refused: this dashboard answers only on the addresses it was started with\n")


class LocalHostsOnly(AuthProvider):
    """Bokeh's authentication hook, used to refuse what Bokeh and Tornado let through by default.

    Every request must name an allowed ``host:port`` in its Host header (a DNS-rebinding page names its own
    host and is refused, page and websocket alike), and a websocket handshake must carry an Origin that is
    allowed too: a missing Origin (Tornado lets it through as "not a browser") and an Origin equal to the Host
    header (Tornado's same-host rule) are refused unless that host is on the list. No user is authenticated:
    this only fixes where a request may come from; share through an authenticating proxy.
    """

    def __init__(self, allowed: Iterable[str]):
        self.allowed = list(allowed)
        super().__init__()

    @property
    def get_user(self):
        return self._user

    @property
    def login_url(self) -> str:
        return "/refused"

    @property
    def login_handler(self):
        return _RefusedHandler

    def _user(self, handler: RequestHandler) -> str | None:
        headers = handler.request.headers
        if not host_allowed(headers.get("Host"), self.allowed):
            return None
        if isinstance(handler, WebSocketHandler) and not host_allowed(origin_host(headers.get("Origin")), self.allowed):
            return None
        return "local"


def make_server(
    port: int = 5006,
    results_root: str | Path = "runs",
    checkpoint: str | Path | None = None,
    threads: int = 4,
    roots: Iterable[str | Path] = (),
    map_cache: str | Path | None = None,
    max_map_windows: int | None = None,
    address: str = "localhost",
    show: bool = False,
):
    """The dashboard's server, bound to ``address:port`` but not started (``server.start()``, then its loop).

    The port is checked first (a busy one raises :class:`OSError` in one line) and the roots (a bad ``--root``
    raises :class:`ValueError`); requests are admitted by :class:`LocalHostsOnly`.
    """
    check_port(address, port)
    served = dashboard_roots(results_root, checkpoint, roots)
    options: dict[str, Any] = {"roots": served, "map_cache": map_cache, "max_map_windows": max_map_windows}

    def app() -> DashboardTabs:
        return build_app(results_root=results_root, checkpoint=checkpoint, **options)

    pn.config.param.update(
        _nthreads=threads
    )  # (pn.config.nthreads reads it) sessions' callbacks run in a thread pool: one user's work never blocks another
    server = pn.serve(
        app,
        port=port,
        address=address,
        check_unused_sessions_milliseconds=5_000,  # closed sessions are dropped (and their memory freed) within ~15 s
        unused_session_lifetime_milliseconds=10_000,
        # Bokeh's own origin list (it cannot parse IPv6 entries; LocalHostsOnly checks those)
        websocket_origin=[h for h in allowed_hosts(port, address) if h.count(":") == 1],
        auth_provider=LocalHostsOnly(allowed_hosts(port, address)),
        show=show,
        start=False,
        title="Atomizer",
        verbose=False,
    )
    return server


def serve(
    port: int = 5006,
    results_root: str | Path = "runs",
    checkpoint: str | Path | None = None,
    show: bool = True,
    threads: int = 4,
    warm: bool = True,
    roots: Sequence[str | Path] = (),
    map_cache: str | Path | None = None,
    max_map_windows: int | None = None,
    address: str = "localhost",
) -> None:
    """Serve :func:`build_app` on ``address:port`` (default: localhost only) until interrupted.

    Every browser session gets its own app; what sessions can share (loaded models, a store's tables and
    statistics, attention results) is computed once and cached with a bound (:mod:`atomizer.dashboard._common`),
    and a session's own state is freed when it closes. ``threads`` callbacks run at once, off the event loop.
    With ``warm``, :func:`warm_up` fills those caches before the first user arrives. The tabs read only under
    :func:`dashboard_roots` (the store, the checkpoint's folder, the embedded data, ``roots``). A busy port is
    an :class:`OSError` raised before anything is announced.
    """
    check_port(address, port)
    dashboard_roots(results_root, checkpoint, roots)  # a bad --root is refused before the warm-up
    options = {"roots": roots, "map_cache": map_cache, "max_map_windows": max_map_windows}
    if warm:
        warm_up(results_root, checkpoint, **options)
    server = make_server(
        port, results_root, checkpoint, threads, roots, map_cache, max_map_windows, address=address, show=show
    )
    host = "localhost" if address in ("localhost", "127.0.0.1", "::1") else address
    print(
        f"atomizer: serving the dashboard at http://{host}:{server.port}/ (results: {results_root}, checkpoint: "
        f"{checkpoint or 'none'}); Ctrl-C stops",
        flush=True,
    )
    server.start()
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        pass
