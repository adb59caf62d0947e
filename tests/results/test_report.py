"""`atomizer report`: one self-contained HTML file of a results store (real tiny runs on the embedded EuroSAT),
checked for external references and rendered in Chromium with every network request blocked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from atomizer.experiments import run_path, train_and_evaluate
from atomizer.results.report import build_report
from tests.conftest import CHROMIUM

TINY = dict(preset="tiny", dataset="eurosat", epochs=1, max_steps=1, batch_size=8, device="cpu", val_limit=8)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report_store")
    for model in ("atomizer", "resnet"):
        for fold in (0, 1):
            train_and_evaluate(
                model, run_path(root, model, 0, fold), "eurosat_test", progress=False, seed=0, fold=fold, **TINY
            )
    return root


def test_report_is_self_contained_with_tables_cis_configs_and_commit(store, tmp_path, capsys):
    from atomizer.cli import main

    out = tmp_path / "report.html"
    assert main(["report", str(store), "--out", str(out), "--resamples", "200", "--figures", str(tmp_path / "f")]) == 0
    assert "self-contained" in capsys.readouterr().out
    text = out.read_text()
    # nothing outside the file: every src is a data URI, no link or script to anywhere
    assert not re.search(r"(?:src|href)\s*=\s*['\"](?!data:)", text)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert text.count("data:image/png;base64,") == 4  # CI bars and paired differences, two metrics
    for needle in ("macro mAP", "top-1", "atomizer minus each model", "resnet", "Verdict", "Configurations"):
        assert needle.lower() in text.lower(), needle
    assert "seed-0_fold-1" in text and "eurosat_test" in text  # runs and their configs
    assert re.search(r"commit <code>[0-9a-f]{40}", text) or "commit <code>unknown" in text
    assert "not recorded" not in text  # every run carries its provenance (commit) from training
    figs = sorted(p.name for p in (tmp_path / "f").iterdir())
    assert figs == sorted(
        f"{m}_{k}.{e}" for m in ("macro_map", "top1") for k in ("ci", "differences") for e in ("png", "svg")
    )
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "x.html")]) == 2


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (install it with `make chromium`)")
def test_report_renders_with_the_network_blocked(store, tmp_path, page):
    out = tmp_path / "report.html"
    out.write_text(build_report(store, n_resamples=200))
    requested = []

    def block(route):
        requested.append(route.request.url)
        route.abort()

    page.route(re.compile(r"^(?!file:|data:).*"), block)
    page.goto(out.as_uri())
    page.wait_for_load_state("load")
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == 4 and min(widths) > 100  # every figure decoded from the file itself
    assert page.locator("table").count() >= 5
    assert requested == []  # the page never asked the network for anything
    shots = Path("test-artifacts")
    shots.mkdir(exist_ok=True)
    page.screenshot(path=str(shots / "report.png"), full_page=True)


def test_dashboard_download_gives_the_same_report(store):
    from atomizer.dashboard.results import ResultsView

    view = ResultsView(root=str(store), resamples=200)
    data = view.report_file().getvalue().decode()
    assert data.startswith("<!DOCTYPE html>") and "atomizer minus each model" in data
