"""Attacks on the served dashboard (issue 23), each asserting that it fails: a URL parameter naming a hostile
checkpoint, paths outside the served roots, a sidecar whose broken YAML holds a secret, absolute server paths in
error texts, HTML in a store's run names, model labels and modality names, websocket handshakes from a foreign
or missing Origin (DNS rebinding), and a server started on a busy port.

Several tests write hostile files on purpose (a pickle that creates a marker folder when unpickled, a store
whose names hold HTML, a YAML file with a secret line); everything lives under ``tmp_path``. Servers run in
this process on a free local port, each in its own thread and event loop, and are stopped at the end.
"""

from __future__ import annotations

import asyncio
import html
import os
import queue
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import panel as pn
import pytest
from bokeh.document import Document

from atomizer.dashboard._common import Roots, escape_text
from atomizer.dashboard.results import ResultsView
from atomizer.dashboard.spectral import SpectralCoverage
from tests.dashboard.dashboard_support import (
    DASH_HOSTILE_LABEL,
    DASH_HOSTILE_MODALITY,
    DASH_HOSTILE_RUN,
    dash_hostile_store,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:No positive samples:UserWarning")


# ------------------------------------------------------------------------------------------ helpers


def dash_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _DashPwn:
    """Unpickling this creates the folder ``marker`` (what a hostile checkpoint would do, harmlessly)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def dash_hostile_checkpoint(path: Path, marker: Path) -> Path:
    """A ``.pt`` file whose pickle creates ``marker`` when loaded (a hostile file, written on purpose)."""
    import torch

    torch.save({"format": "atomizer-checkpoint", "model": _DashPwn(str(marker))}, path)
    return path


def dash_serve_in_thread(make):
    """Run the server ``make()`` builds (not started) in a thread of its own event loop; returns (server, stop)."""
    box: queue.Queue = queue.Queue()

    def run() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            server = make()
            server.start()
        except BaseException as e:  # noqa: BLE001  (handed to the test)
            box.put(e)
            return
        box.put(server)
        server.io_loop.start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    server = box.get(timeout=120)
    if isinstance(server, BaseException):
        raise server

    def stop() -> None:
        def _stop() -> None:
            try:
                server.stop()
            finally:
                server.io_loop.stop()

        server.io_loop.add_callback(_stop)
        thread.join(timeout=30)

    return server, stop


def dash_get(url: str, host: str | None = None) -> tuple[int, str]:
    """GET ``url`` (optionally with another Host header); (status, body), redirects not followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=60) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def dash_handshake(port: int, headers: dict[str, str]) -> int:
    """A real websocket handshake on the app's ``/ws`` with a valid session token; 101 when accepted, else the
    HTTP status the server refused it with."""
    from bokeh.util.token import generate_jwt_token, generate_session_id
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    token = generate_jwt_token(generate_session_id(), signed=False)

    async def go() -> int:
        req = HTTPRequest(f"ws://127.0.0.1:{port}/ws", headers=headers, request_timeout=60)
        try:
            conn = await websocket_connect(req, subprotocols=["bokeh", token])
        except HTTPClientError as e:
            return e.code
        conn.close()
        return 101

    return asyncio.run(go())


def dash_new_documents(server, path: str, seen: set[int]) -> list:
    """The documents of the sessions ``server`` holds for ``path`` whose id is not in ``seen``."""
    return [s.document for s in server.get_sessions(path) if id(s.document) not in seen]


def dash_has_tabs(doc) -> bool:
    """Whether a Bokeh document holds the dashboard (its Results tab)."""
    return any(getattr(m, "title", None) == "Results" for m in doc.models)


def dash_document_text(doc) -> str:
    """The text of every Markdown/HTML model of a Bokeh document (what its panes render)."""
    return "\n".join(str(getattr(m, "text", "")) for m in doc.models if getattr(m, "text", None))


def dash_panes(obj) -> list:
    """Every pane inside a layout (or the object itself)."""
    if isinstance(obj, pn.layout.ListLike) or isinstance(obj, pn.layout.base.ListPanel):
        return [p for o in obj.objects for p in dash_panes(o)]
    return [obj]


def dash_inner_html(pane) -> str:
    """The HTML a Markdown/HTML/Alert/DataFrame pane puts into the page (what the browser sets as innerHTML)."""
    model = pane.get_root(Document())
    return html.unescape(model.text)


# ------------------------------------------------------------------------------------------ URL parameters


def test_dash_url_parameter_checkpoint_is_ignored(tmp_path):
    """``panel serve dashboards/app.py``: a GET naming a hostile checkpoint in ``?checkpoint=`` loads nothing."""
    from panel.io.application import build_single_handler_application

    marker = tmp_path / "pwned"
    evil = dash_hostile_checkpoint(tmp_path / "evil.pt", marker)
    store = tmp_path / "store"
    store.mkdir()
    port = dash_free_port()
    app = build_single_handler_application(str(REPO_ROOT / "dashboards" / "app.py"), argv=["--results", str(store)])
    server, stop = dash_serve_in_thread(
        lambda: pn.serve({"app": app}, port=port, address="127.0.0.1", show=False, start=False, verbose=False)
    )
    try:
        status, body = dash_get(
            f"http://127.0.0.1:{port}/app?checkpoint={evil}&results={tmp_path}", host=f"localhost:{port}"
        )
        assert status == 200  # the session ran the app script
        assert not marker.exists()  # the hostile checkpoint was never unpickled
        assert str(evil) not in body
        (doc,) = dash_new_documents(server, "/app", set())
        assert dash_has_tabs(doc)  # the dashboard, built from --args only
        seen = {id(d) for d in dash_new_documents(server, "/app", set())}
        # a request that names another host (DNS rebinding) gets the one-line refusal, not the dashboard
        dash_get(f"http://127.0.0.1:{port}/app", host=f"evil.example:{port}")
        (refused,) = dash_new_documents(server, "/app", seen)
        assert not dash_has_tabs(refused)
        assert "answers only on the machine" in dash_document_text(refused)
    finally:
        stop()
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ roots


def test_dash_results_root_outside_roots_refused(tmp_path):
    """The Results tab's store box: a store outside the roots (or ``/``) is refused before anything is listed."""
    inside = dash_hostile_store(tmp_path / "served" / "store")
    outside = tmp_path / "elsewhere"
    (outside / "secret_run").mkdir(parents=True)  # a real run directory outside the roots
    (outside / "secret_run" / "config.yaml").write_text("model: atomizer\n")
    (outside / "secret_run" / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 1.0}\n')
    view = ResultsView(root="store", roots=Roots([inside]), resamples=100)
    assert len(view.runs()) == 2
    messages = {}
    for typed in (str(outside), "/", str(tmp_path / "does_not_exist"), "../../elsewhere"):
        view.root = typed
        assert view.runs().empty and view.store_path is not None
        assert view._store is None  # nothing was resolved, so nothing under it was scanned
        msg = view.runs_view().object
        assert "not under the folders this dashboard serves" in msg
        assert "secret_run" not in msg
        messages[typed] = msg.replace(escape_text(repr(typed)), "TYPED")
    # the message is the same whether the outside path exists or not
    assert len(set(messages.values())) == 1
    view.root = "store"  # back inside: served again
    assert len(view.runs()) == 2


def test_dash_spectral_sidecar_outside_roots_refused(tmp_path):
    """A valid sidecar outside the roots is not opened; the Select offers only files under the roots."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "cam.yaml").write_text(
        "name: cam\nbands:\n  - {name: nir, wavelength_nm: 860, bandwidth_nm: 40, gsd_m: 3}\n"
    )
    outside = tmp_path / "outside.yaml"
    outside.write_text("name: spy\nbands:\n  - {name: nir, wavelength_nm: 860, bandwidth_nm: 40, gsd_m: 3}\n")
    app = SpectralCoverage(roots=Roots([served]))
    assert app.sidecar_choices() == ["served/cam.yaml"]
    app.sidecar = str(outside)
    assert "not under the folders this dashboard serves" in app.sidecar_error
    assert "spy" not in set(app.band_table()["sensor"])
    app.sidecar = "../outside.yaml"
    assert "not under the folders" in app.sidecar_error and "spy" not in set(app.band_table()["sensor"])
    app.sidecar = "served/cam.yaml"
    assert app.sidecar_error is None and "cam" in set(app.band_table()["sensor"])


def test_dash_spectral_broken_yaml_is_not_echoed(tmp_path):
    """A sidecar that does not parse is named by line only: a secret on the offending line never reaches the page."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "creds.yaml").write_text("name: cam\npassword: hunter2-SECRET: [unclosed\nbands: []\n")
    app = SpectralCoverage(roots=Roots([served]))
    app.sidecar = "served/creds.yaml"
    assert app.sidecar_error is not None and "not valid YAML" in app.sidecar_error
    assert "line 2" in app.sidecar_error
    assert "SECRET" not in app.sidecar_error and "hunter2" not in app.sidecar_error
    assert "SECRET" not in app._messages().object


def test_dash_error_texts_carry_no_absolute_path(tmp_path):
    """Errors from a store and a sidecar show paths relative to their root, never the server's absolute paths."""
    store = tmp_path / "served" / "store"
    run = store / "broken"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: atomizer\n")
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 1.0}\n')
    (run / "results.nc").write_bytes(b"not a netcdf file")  # a foreign file: the store cannot be read
    roots = Roots([store])
    view = ResultsView(root="store", roots=roots)
    msg = view.table_view().object
    assert "Cannot read the store" in msg
    assert str(tmp_path) not in msg and "/tmp" not in msg
    app = SpectralCoverage(roots=roots)
    app.sidecar = "store/missing.yaml"
    assert "missing.yaml" in app.sidecar_error and str(tmp_path) not in app.sidecar_error
    # the scrubbing itself: a root's path becomes its label, another absolute path its last component
    scrubbed = roots.scrub(f"[Errno 2] No such file: '{store}/broken/x.nc' (see /usr/lib/python3/thing.py)")
    assert scrubbed == "[Errno 2] No such file: 'store/broken/x.nc' (see thing.py)"


# ------------------------------------------------------------------------------------------ stored XSS


def test_dash_hostile_names_escaped_in_every_results_pane(tmp_path):
    """A store whose run folder, model label and modality name hold HTML: every HTML-rendering pane of the
    Results tab shows them as text (no element can be injected)."""
    store = dash_hostile_store(tmp_path / "store")
    view = ResultsView(root="store", roots=Roots([store]), resamples=100)
    assert view.run == DASH_HOSTILE_RUN and view.reference == DASH_HOSTILE_LABEL  # the hostile ones are shown
    panes = []
    for method in (
        view.runs_view,
        view.repeats_view,
        view.landscape_view,
        view.table_view,
        view.sweeps_view,
        view.curves_view,
    ):
        panes += dash_panes(method())
    view.run = "resnet"
    panes += dash_panes(view.curves_view())
    view.root = "nowhere"  # the empty states name the store the user typed
    panes += dash_panes(view.runs_view()) + dash_panes(view.table_view())
    html_panes = [p for p in panes if isinstance(p, (pn.pane.Markdown, pn.pane.HTML, pn.pane.DataFrame))]
    assert len(html_panes) >= 8
    shown = "\n".join(dash_inner_html(p) for p in html_panes)
    for hostile in (DASH_HOSTILE_RUN, DASH_HOSTILE_LABEL, DASH_HOSTILE_MODALITY):
        assert hostile not in shown  # never as markup
    lowered = shown.lower()
    assert "<img" not in lowered and "<script" not in lowered
    # ... but as text: each hostile name appears escaped
    for hostile in (DASH_HOSTILE_RUN, DASH_HOSTILE_LABEL, DASH_HOSTILE_MODALITY):
        assert html.escape(hostile, quote=False) in shown or escape_text(hostile) in shown, hostile


# ------------------------------------------------------------------------------------------ serving


def test_dash_websocket_origin_and_host_checks(tmp_path):
    """``atomizer serve``: a websocket handshake without an Origin, or from a page whose Origin equals its Host
    (DNS rebinding), is refused; one from the page at localhost is accepted."""
    from atomizer.dashboard.app import make_server

    store = tmp_path / "store"
    store.mkdir()
    port = dash_free_port()
    threads = pn.config.nthreads
    server, stop = dash_serve_in_thread(lambda: make_server(port, store, None, threads=0, address="localhost"))
    try:
        local = {"Host": f"localhost:{port}"}
        assert dash_handshake(port, {**local, "Origin": f"http://localhost:{port}"}) == 101
        assert dash_handshake(port, local) == 403  # no Origin
        evil = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        assert dash_handshake(port, evil) == 403  # Origin equal to Host, neither ours
        assert dash_handshake(port, {**evil, "Sec-Fetch-Site": "same-origin"}) == 403
        assert dash_handshake(port, {**local, "Origin": "http://evil.example"}) == 403
        # the page itself is not served to a request naming another host
        assert dash_get(f"http://127.0.0.1:{port}/", host=f"localhost:{port}")[0] == 200
        status, body = dash_get(f"http://127.0.0.1:{port}/", host=f"evil.example:{port}")
        assert status in (302, 403) and "atomizer-dashboard" not in body
    finally:
        stop()
        pn.config.nthreads = threads


def test_dash_serve_on_busy_port_fails_before_announcing(tmp_path, capsys):
    """``serve`` on a port another server holds raises one line and prints no 'serving ...' announcement."""
    from atomizer.dashboard.app import serve

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(OSError, match=f"port {port} is in use"):
            serve(port=port, results_root=tmp_path, show=False, warm=False, address="127.0.0.1")
    out = capsys.readouterr()
    assert "serving the dashboard" not in out.out + out.err
