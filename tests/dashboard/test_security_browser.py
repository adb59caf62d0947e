"""Stored XSS in the served dashboard (issue 23), in headless Chromium: a store whose run folder, model label
and modality name hold HTML (written on purpose, under tmp_path) is served with ``atomizer serve``; the Results
tab shows the names as text, no injected element exists in the page and no injected handler ran.

Playwright drives Debian's Chromium (``/usr/bin/chromium``, installed by ``make chromium``).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dashboard_support import DASH_HOSTILE_LABEL, DASH_HOSTILE_MODALITY, DASH_HOSTILE_RUN, dash_hostile_store

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (install it with `make chromium`)"),
]


def _dash_free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _dash_wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"atomizer serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("localhost", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"atomizer serve did not listen on port {port} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def test_dash_hostile_store_names_render_as_text(page, tmp_path):
    store, port, log = dash_hostile_store(tmp_path / "store"), _dash_free_port(), tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "atomizer",
                "serve",
                "--port",
                str(port),
                "--results",
                str(store),
                "--no-show",
                "--no-warm",
            ],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _dash_wait_for_port(port, proc, log)
        page.goto(f"http://localhost:{port}/")
        page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)
        tab = page.locator(".bk-tab", has_text=re.compile(r"^Results$"))
        tab.wait_for(timeout=120_000)
        tab.click()
        # the runs table (the hostile run folder) and the verdict (the hostile model label) are rendered
        page.get_by_role("cell", name=DASH_HOSTILE_RUN, exact=True).first.wait_for(timeout=120_000)
        page.get_by_text("Verdict.").first.wait_for(timeout=120_000)
        assert page.get_by_text(DASH_HOSTILE_LABEL).count() >= 1  # shown as text
        assert page.get_by_text(DASH_HOSTILE_MODALITY).count() >= 1
        assert page.locator('img[src="x"]').count() == 0  # no injected element, in the page or a shadow root
        assert page.evaluate("() => document.querySelectorAll('img[src=\"x\"]').length") == 0
        assert page.evaluate("() => window.__xss") is None  # no injected handler or script ran
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
