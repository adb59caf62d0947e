"""Many users at once: open N browser sessions of the served dashboard together and measure.

For each N, a fresh ``atomizer serve`` is started; ``--rounds`` times, N Chromium pages (one browser context each, Debian's
Chromium) open it at the same moment. Per session it records the seconds until the page is idle (the
Bokeh document reports idle and the first tab drew a plot) and until the Attention maps tab has drawn
its maps after a click. The server's resident memory (with its children) is sampled throughout: at
start (listening, no session), peak, and after every page closed and the server dropped the sessions.

    python scripts/dashboard_sessions.py --results runs/embedded_demo \
        --checkpoint runs/embedded_demo/run/atomizer/seed-0_fold-0/checkpoints/best.pt --sessions 1 4 8

Prints one JSON line per N (``--json FILE`` also writes them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
IDLE = """() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].is_idle"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
    except psutil.NoSuchProcess:
        return 0


class Sampler(threading.Thread):
    """Peak resident memory of the server, sampled every 0.1 s."""

    def __init__(self, proc: psutil.Process):
        super().__init__(daemon=True)
        self.proc, self.peak, self.stop = proc, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _rss(self.proc))
            time.sleep(0.1)


async def _session(browser, url: str, timeout_ms: int) -> dict:
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await ctx.new_page()
    page.set_default_timeout(timeout_ms)
    t0 = time.perf_counter()
    await page.goto(url)
    await page.wait_for_function(IDLE, polling=100)
    await page.locator(".bk-Canvas, canvas").first.wait_for()
    idle = time.perf_counter() - t0
    t1 = time.perf_counter()
    await page.get_by_text("Attention maps", exact=True).first.click()
    await page.get_by_text("Top classes").first.wait_for()
    await page.wait_for_function(IDLE, polling=100)
    attention = time.perf_counter() - t1
    return {"idle_s": idle, "attention_s": attention, "ctx": ctx}


async def _open_sessions(url: str, n: int, timeout_ms: int) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        out = await asyncio.gather(*(_session(browser, url, timeout_ms) for _ in range(n)))
        for s in out:
            await s.pop("ctx").close()
        await browser.close()
    return out


def measure(
    results: str,
    checkpoint: str,
    n: int,
    settle_s: float,
    timeout_s: float,
    server_log: str = "",
    rounds: int = 1,
    extra: tuple[str, ...] = (),
) -> list[dict]:
    port = _free_port()
    cmd = [sys.executable, "-m", "atomizer", "serve", "--port", str(port), "--results", results, "--no-show", *extra]
    if checkpoint:
        cmd += ["--checkpoint", checkpoint]
    log = open(f"{server_log}.{n}", "w") if server_log else subprocess.DEVNULL  # noqa: SIM115
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    proc = psutil.Process(server.pid)
    try:
        end = time.monotonic() + 300  # the server warms its caches before it listens
        while time.monotonic() < end:
            try:
                with socket.create_connection(("localhost", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.3)
        time.sleep(1.0)
        start = _rss(proc)
        rows = []
        for r in range(rounds):
            sampler = Sampler(proc)
            sampler.start()
            t0 = time.perf_counter()
            sessions = asyncio.run(_open_sessions(f"http://localhost:{port}/", n, int(timeout_s * 1000)))
            wall = time.perf_counter() - t0
            time.sleep(20.0)  # the server drops a closed session after 10 s, checking every 5 s (atomizer serve)
            # then wait until memory settles (or settle_s passes)
            after, deadline = _rss(proc), time.monotonic() + settle_s
            while time.monotonic() < deadline:
                time.sleep(2.0)
                now = _rss(proc)
                if abs(now - after) < 2**20:
                    after = now
                    break
                after = now
            sampler.stop.set()
            idle = [s["idle_s"] for s in sessions]
            att = [s["attention_s"] for s in sessions]
            rows.append(
                {
                    "sessions": n,
                    "round": r + 1,
                    "idle_s_median": round(statistics.median(idle), 2),
                    "idle_s_max": round(max(idle), 2),
                    "attention_s_median": round(statistics.median(att), 2),
                    "attention_s_max": round(max(att), 2),
                    "wall_s": round(wall, 2),
                    "rss_start_mb": round(start / 2**20),
                    "rss_peak_mb": round(max(sampler.peak, start) / 2**20),
                    "rss_after_close_mb": round(after / 2**20),
                    "after_vs_start": round(after / start, 3),
                }
            )
        return rows
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, help="results store the Results tab reads")
    p.add_argument("--checkpoint", default="", help="Atomizer checkpoint of the Attention maps tab")
    p.add_argument("--sessions", nargs="+", type=int, default=[1, 4, 8])
    p.add_argument("--settle-s", type=float, default=60.0, help="longest wait for memory to settle after close")
    p.add_argument("--timeout-s", type=float, default=300.0, help="longest wait for one page")
    p.add_argument("--serve-args", default="", help="more options of atomizer serve, e.g. '--threads 2'")
    p.add_argument("--rounds", type=int, default=1, help="times N sessions open and close on the same server")
    p.add_argument("--server-log", default="", help="write the server's output to FILE.<N>")
    p.add_argument("--json", help="also write the records to this file (JSON lines)")
    args = p.parse_args()
    rows = []
    for n in args.sessions:
        for row in measure(
            args.results, args.checkpoint, n, args.settle_s, args.timeout_s, args.server_log, args.rounds
        ):
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
