"""A results store as ONE self-contained HTML file: tables, figures with their CIs, configs and commits.

``atomizer report STORE --out report.html`` (and the dashboard's download button) write it. Nothing in
the file refers to anything outside it: the CSS is inline, the figures are PNG data URIs drawn by
matplotlib (no browser, no JavaScript), so the report opens offline and can be mailed or archived as is.
With ``figures_dir``, every figure is also written as PNG and SVG for papers.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from atomizer.core.run_folder import RunFolder, is_pretraining_config  # noqa: E402
from atomizer.core.runtime import git_commit  # noqa: E402
from atomizer.core.storage import atomic_path, atomic_write_text  # noqa: E402
from atomizer.results import plots, stats  # noqa: E402
from atomizer.results._runs import collect_predictions, find_run_dirs, read_config  # noqa: E402

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em} h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0} th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left} .meta{color:#555;font-size:.9em}
img{max-width:100%} details{margin:.3em 0} pre{background:#f8f8f8;padding:.6em;font-size:.8em;overflow-x:auto}
.verdict{background:#f3f7ff;border-left:4px solid #4a78d0;padding:.6em 1em}
"""


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _table(df: pd.DataFrame, index: bool = True) -> str:
    return df.to_html(index=index, escape=True, border=0, na_rep="")


def build_report(
    store: str | Path,
    reference: str = "atomizer",
    metrics: tuple[str, ...] = ("macro_map", "top1"),
    n_resamples: int = 2000,
    figures_dir: str | Path | None = None,
    title: str | None = None,
) -> str:
    """The HTML text of the report of ``store`` (see the module docstring)."""
    store = Path(store)
    preds = collect_predictions(store)
    if preds is None:
        raise FileNotFoundError(f"no run with per-image predictions under {store}")
    models = [str(m) for m in preds.model.values]
    parts: list[str] = []
    figs: dict[str, plt.Figure] = {}
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = title or f"Atomizer results: {store.name}"
    parts.append(f"<h1>{html.escape(head)}</h1>")
    parts.append(
        f"<p class='meta'>Store <code>{html.escape(str(store))}</code>; {len(models)} model(s); seeds "
        f"{list(map(int, preds.seed.values))}; {preds.attrs.get('folds', 1)} fold(s); {preds.sizes['image']} test "
        f"images; {preds.sizes['modality']} test modalities. Report written {now} at commit "
        f"<code>{html.escape(git_commit())}</code>. Statistics: {n_resamples} bootstrap / permutation resamples "
        "(atomizer.results.stats).</p>"
    )
    for metric in metrics:
        s = stats.summarize(preds, metric, n_resamples=n_resamples)
        label = {"macro_map": "macro mAP", "top1": "top-1 accuracy"}.get(metric, metric)
        parts.append(f"<h2>Test {html.escape(label)} (%), mean over seeds [95 % CI]</h2>")
        parts.append(_table(stats.mean_ci_table(s)))
        fig = plots.ci_bars(s, metric, title=f"{label} per test modality (95 % CI)")
        figs[f"{metric}_ci"] = fig
        parts.append(f"<img alt='{html.escape(label)} with CIs' src='{_png(fig)}'>")
        if reference in models and len(models) > 1:
            d = stats.paired_differences(preds, reference, metric=metric, n_resamples=n_resamples)
            table, words = stats.verdict(d)
            parts.append(f"<h3>{html.escape(reference)} minus each model ({html.escape(label)} points)</h3>")
            parts.append(_table(table))
            parts.append(f"<p class='verdict'>{html.escape(words)}</p>")
            cols = ["other", "modality", "difference", "ci_low", "ci_high", "p_value", "p_holm", "significant"]
            parts.append(f"<details><summary>every cell</summary>{_table(d[cols].round(4), index=False)}</details>")
            fig = plots.difference_bars(d, title=f"{reference} minus each model ({label}, 95 % CI)")
            figs[f"{metric}_differences"] = fig
            parts.append(f"<img alt='paired differences' src='{_png(fig)}'>")
    parts.append("<h2>Runs</h2>")
    rows: list[dict[str, Any]] = []
    configs: list[str] = []
    for d in find_run_dirs(store):
        cfg = read_config(d)
        if is_pretraining_config(cfg):  # per-fold pretraining runs: the dashboard's Pretraining section lists them
            continue
        prov = json.loads(RunFolder(d).provenance.read_text()) if RunFolder(d).provenance.is_file() else {}
        rel = d.relative_to(store)
        rows.append(
            {
                "run": str(rel),
                "model": cfg.get("label") or cfg.get("model"),
                "seed": cfg.get("seed"),
                "fold": cfg.get("fold"),
                "epochs": cfg.get("epochs"),
                "commit": prov.get("git_commit", "not recorded"),
                "started": prov.get("started_utc", ""),
            }
        )
        configs.append(
            f"<details><summary>{html.escape(str(rel))}</summary><pre>{html.escape(yaml.safe_dump(cfg, sort_keys=True))}</pre></details>"
        )
    parts.append(_table(pd.DataFrame(rows), index=False))
    parts.append("<h3>Configurations</h3>" + "".join(configs))
    if figures_dir is not None:
        out = Path(figures_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, fig in figs.items():  # atomically, like every record: no half-written figure
            for fmt, dpi in (("png", 200), ("svg", None)):
                with atomic_path(out / f"{name}.{fmt}") as tmp:
                    fig.savefig(tmp, format=fmt, dpi=dpi or "figure", bbox_inches="tight")
    for fig in figs.values():
        plt.close(fig)
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(head)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


def write_report(store: str | Path, out: str | Path, **kw: Any) -> Path:
    """Write :func:`build_report` atomically to ``out``."""
    out = Path(out)
    return atomic_write_text(out, build_report(store, **kw))
