"""Experiments: train-and-evaluate steps the notebooks call, and the papermill experiment runner.

``atomizer experiment run SPEC.yaml`` executes a grid of parameterised notebook runs::

    name: embedded_demo
    notebook: notebooks/disjoint_modalities.ipynb
    output_dir: runs/embedded_demo      # the results store the dashboard reads
    workers: 2                          # local processes (1 = in turn)
    scheduler: null                     # or a TRUSTED Dask scheduler: tls://host:8786, tcp://127.0.0.1:8786
    parameters: {dataset: eurosat, preset: small, epochs: 8}   # shared by every run
    grid: {models: [[atomizer], [resnet]], seeds: [[0], [1]]}  # one run per combination

Each run gets ``<output_dir>/<run_id>/`` with the executed notebook (``notebook.ipynb``), its parameters
(``params.yaml``) and a status file (``status.json``). Finished runs are skipped; a failing run is
recorded (``failed.txt``) and reported, and the other runs go on. At the end every run's results are
collected into ``<output_dir>/results.nc`` (and the sweeps, if any). While it runs, the store is locked
(``<output_dir>/.experiment.lock``): a second runner on the same store is refused at once.

A spec is data, checked whole before the first run starts (:meth:`ExperimentSpec.check`; nothing runs
if any part is refused, in one line naming the key):

* ``notebook`` is a local ``.ipynb`` file (relative to the current folder, the spec's folder or the
  repository), never a URL;
* every parameter and grid key is a Python identifier that the notebook's ``parameters`` cell declares
  (read with :mod:`ast`, nothing executed);
* values are JSON-like only (str, int, finite float, bool, null, and lists and string-keyed mappings of
  those): a ``!!binary`` value, a date or any other YAML type is refused; the cell papermill injects is
  re-parsed and must hold nothing but ``name = <literal>`` assignments of exactly those values;
* run folders are slugged (``[A-Za-z0-9._=-]``, no ``..``), distinct, and lie under ``output_dir``.

Dask: a scheduler must be TRUSTED. It runs every notebook (code of its choosing, on workers it
controls) and what it sends back is unpickled here, so whoever controls the scheduler controls this
process. ``tcp://`` has no authentication and no encryption: a ``tcp://`` (or ``ws://``, ``ucx://``)
scheduler that is not on the loopback interface is refused unless the spec says ``trust_scheduler:
true``. Prefer ``tls://host:8786`` with ``tls: {ca_file: ca.pem, cert: client.pem, key: client.key}``
(-> :class:`distributed.security.Security`, encryption required), or with the TLS settings of Dask's
own config (``distributed.comm.tls``) when the spec gives none. ``pip install 'atomizer[distributed]'``.
"""

from __future__ import annotations

import ast
import ipaddress
import itertools
import json
import keyword
import math
import re
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import xarray as xr
import yaml

from atomizer.core.config import Config
from atomizer.core.storage import atomic_write_json, atomic_write_text, locked
from atomizer.data.modalities import load_modalities
from atomizer.engine.evaluation import evaluate_checkpoint, save_results, sweep_modalities
from atomizer.engine.training import TrainConfig, train
from atomizer.results.store import PREDICTIONS_FILE, RESULT_FILES, collect

# --------------------------------------------------------------------------------------------------
# Steps called by the notebooks
# --------------------------------------------------------------------------------------------------


def train_and_evaluate(
    model: str, out_dir: str | Path, test_modalities: str, progress: bool = True, **train_options: Any
) -> Path:
    """Train ``model`` into ``out_dir`` (resuming if a run is there) and evaluate it on every test
    modality; returns the run directory. Finished steps are not redone."""
    run = Path(out_dir)
    cfg = TrainConfig.from_dict(
        {"model": model, "test_modalities": test_modalities, "out_dir": str(run), **train_options}
    )
    if not (run / "summary.json").exists():
        train(cfg, resume=(run / "config.yaml").exists(), progress=progress)
    table, per_image = run / RESULT_FILES["table"], run / PREDICTIONS_FILE
    if not (table.exists() and per_image.exists()):
        res, preds = evaluate_checkpoint(
            run / "checkpoints" / "best.pt",
            test_modalities,
            dataset=cfg.dataset,
            data_root=cfg.data_root,
            batch_size=cfg.batch_size,
            device=cfg.device,
            model_name=cfg.label or model,
            predictions=True,
            num_workers=cfg.num_workers,
        )
        save_results(preds, per_image, overwrite=True, records=False)
        save_results(res, table, overwrite=True)
    return run


def run_sweep(
    run_dir: str | Path,
    kind: str,
    values: Sequence[float],
    bands: Sequence[str] | None = None,
    batch_size: int = 16,
    device: str = "auto",
) -> Path:
    """Evaluate a run's best checkpoint on a GSD (``kind="gsd"``) or size (``"size"``) sweep (on the run's
    test images: its test fold when cross-validated); writes ``sweep_<kind>.nc`` and the per-image
    ``sweep_<kind>_predictions.nc``."""
    from atomizer.data.modalities import ModalitySet

    run = Path(run_dir)
    cfg = TrainConfig.from_yaml(run / "config.yaml")
    test = load_modalities(cfg.test_modalities)
    size, gsd = int(test.source_size_px), float(test.source_gsd_m)
    if bands is None:  # every band the dataset's test modalities use
        bands = sorted({b for m in test for b in m.bands})
    mods = ModalitySet(f"sweep_{kind}", tuple(sweep_modalities(kind, size, gsd, bands, values)), size, gsd)
    for m in mods:
        if kind == "gsd" and m.extent_m < size * gsd - 1e-6:
            warnings.warn(
                f"GSD {m.gsd_m:g} m does not divide the {size * gsd:g} m source: the largest whole window that "
                f"fits is used, {m.size_px} px ({m.extent_m:g} m)",
                stacklevel=2,
            )
    res, preds = evaluate_checkpoint(
        run / "checkpoints" / "best.pt",
        mods,
        dataset=cfg.dataset,
        data_root=cfg.data_root,
        batch_size=batch_size,
        device=device,
        model_name=cfg.label or cfg.model,
        predictions=True,
        num_workers=cfg.num_workers,
    )
    res.attrs["sweep"] = kind
    out = run / RESULT_FILES[kind]
    save_results(preds, run / sweep_predictions_file(kind), overwrite=True, records=False)
    save_results(res, out, overwrite=True)
    return out


def sweep_predictions_file(kind: str) -> str:
    """Per-image predictions of a sweep (``sweep_gsd_predictions.nc``), for CIs over repeats."""
    return f"sweep_{kind}_predictions.nc"


# --------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------


class SpecError(ValueError):
    """An experiment spec that is refused before anything runs; the message names the key."""


#: Allowed in a run folder name (anything else is dropped from a grid value; ``..`` collapses to ``.``).
_RUN_ID_BAD = re.compile(r"[^A-Za-z0-9._=-]")
_TLS_KEYS = ("ca_file", "cert", "key")
_PLAIN_SCHEMES = ("tcp", "ws", "ucx")  # no authentication, no encryption
_TLS_SCHEMES = ("tls", "wss")
_JSON_LIKE = "JSON-like values only: str, int, finite float, bool, null, and lists and string-keyed mappings of those"


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _check_name(name: Any, where: str) -> None:
    """A parameter name: a Python identifier (not a keyword), as papermill writes it raw into code."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise SpecError(f"experiment spec: {where} key {_short(name)} is not a Python identifier")


def _check_value(value: Any, where: str) -> None:
    """Refuse anything but JSON-like data (exact types: no subclasses, bytes, dates, sets, tuples...)."""
    t = type(value)
    if value is None or t in (str, bool, int):
        return
    if t is float:
        if not math.isfinite(value):
            raise SpecError(f"experiment spec: {where} = {value!r} is not a finite number")
        return
    if t is list:
        for i, v in enumerate(value):
            _check_value(v, f"{where}[{i}]")
        return
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise SpecError(f"experiment spec: {where} has a {type(k).__name__} key {_short(k)}; {_JSON_LIKE}")
            _check_value(v, f"{where}[{k!r}]")
        return
    hint = " (a !!binary value?)" if t is bytes else ""
    raise SpecError(f"experiment spec: {where} is a {t.__name__}{hint}, refused; {_JSON_LIKE}")


def check_rendered(parameters: Mapping[str, Any]) -> None:
    """Render ``parameters`` as papermill injects them into the notebook and refuse the result unless
    it is only ``name = <literal>`` statements giving back exactly these names and values."""
    from papermill.translators import PythonTranslator

    code = PythonTranslator.codify(dict(parameters))
    try:
        tree = ast.parse(code)
    except SyntaxError:
        raise SpecError("experiment spec: the injected parameters cell would not be valid Python") from None
    names = []
    for stmt in tree.body:
        ok = isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
        if not ok:
            raise SpecError(
                f"experiment spec: the injected parameters cell holds {type(stmt).__name__} code, not an assignment"
            )
        name = stmt.targets[0].id  # type: ignore[union-attr]
        try:
            value = ast.literal_eval(stmt.value)  # type: ignore[union-attr]
        except ValueError:
            raise SpecError(f"experiment spec: parameter {name!r} would be injected as code, not a literal") from None
        if name not in parameters or value != parameters[name]:
            raise SpecError(f"experiment spec: parameter {name!r} would not be injected as given")
        names.append(name)
    if names != list(parameters):
        raise SpecError("experiment spec: the injected parameters cell does not assign exactly the spec's parameters")


def notebook_parameters(notebook: str | Path) -> list[str]:
    """The names the notebook's ``parameters`` cell assigns (read with :mod:`ast`; nothing executed)."""
    import nbformat

    path = Path(notebook)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # nbformat raises several kinds on a file that is not a notebook
        raise SpecError(f"notebook {path.name!r} is not a readable notebook ({type(e).__name__})") from None
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise SpecError(f"notebook {path.name!r} has {len(cells)} cells tagged 'parameters', expected one")
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as e:
        raise SpecError(f"notebook {path.name!r}: its parameters cell is not valid Python (line {e.lineno})") from None
    names: list[str] = []
    for stmt in tree.body:
        targets = (
            stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        )
        names += [t.id for t in targets if isinstance(t, ast.Name) and t.id not in names]
    return names


def local_notebook(text: str, base: str | Path | None = None) -> Path:
    """A spec's ``notebook``: a local ``.ipynb`` file, relative to the current folder, ``base`` (the spec's
    folder) or the repository; a URL or any other scheme (``s3://``, ``http://``, ``file:``) is refused."""
    from atomizer.core.paths import REPO_ROOT

    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", text) or "://" in text:
        raise SpecError(f"experiment spec: notebook {text!r} is a URL; give a local .ipynb file")
    path = Path(text)
    if path.suffix != ".ipynb":
        raise SpecError(f"experiment spec: notebook {text!r} is not a .ipynb file")
    places = [path] if path.is_absolute() else [path, *([Path(base) / path] if base else []), REPO_ROOT / path]
    for p in places:
        if p.is_file():
            return p
    raise SpecError(
        f"experiment spec: notebook {text!r} not found (looked in the current folder, the spec's and the repository)"
    )


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: not resolved here (it could point anywhere)


def check_scheduler(address: str, trust: bool = False, tls: Mapping[str, Any] | None = None) -> str:
    """Refuse a Dask scheduler address that is not safe to hand notebooks to; returns its scheme.

    ``tls://`` / ``wss://`` are accepted (encrypted; TLS settings from ``tls`` or Dask's config); a
    ``tcp://`` (also ``ws://``, ``ucx://``, or no scheme) address must be on loopback unless ``trust``;
    ``inproc://`` is in-process. The scheduler must be trusted in every case (module docstring).
    """
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    scheme = scheme.lower()
    if tls is not None and scheme not in _TLS_SCHEMES:
        raise SpecError(f"experiment spec: tls settings are given but scheduler {address!r} is not a tls:// address")
    if scheme in _TLS_SCHEMES or scheme == "inproc":
        return scheme
    if scheme not in _PLAIN_SCHEMES:
        raise SpecError(f"experiment spec: scheduler {address!r}: unknown scheme {scheme!r} (use tls:// or tcp://)")
    host = urlsplit(f"{scheme}://{rest}").hostname
    if not _loopback(host) and not trust:
        raise SpecError(
            f"experiment spec: scheduler {address!r} is a plain {scheme}:// address off this machine: a Dask "
            "scheduler runs the notebooks and its results are unpickled here, with no authentication on "
            f"{scheme}://; use tls:// (with tls: {{ca_file, cert, key}}), or set trust_scheduler: true for a "
            "cluster and network you control"
        )
    return scheme


@dataclass
class ExperimentSpec(Config):
    """An experiment: a notebook, shared parameters and a grid of runs (module docstring)."""

    kind: ClassVar[str] = "experiment"

    name: str
    notebook: str
    output_dir: str
    parameters: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    workers: int = 1
    scheduler: str | None = None
    trust_scheduler: bool = False  # a plain tcp:// scheduler off this machine (see the module docstring)
    tls: dict | None = None  # {ca_file, cert, key} for a tls:// scheduler
    kernel_name: str = "python3"

    #: The folder of the spec file (set by :meth:`from_yaml`): a relative notebook is looked for there too.
    spec_dir: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        """What can be checked without the notebook: names, values, grid shape, scheduler, kernel."""
        for k, v in self.parameters.items():
            _check_name(k, "parameters")
            _check_value(v, f"parameters.{k}")
        for k, vs in self.grid.items():
            _check_name(k, "grid")
            if type(vs) is not list or not vs:
                raise SpecError(f"experiment spec: grid.{k} must be a non-empty list of values, got {_short(vs)}")
            _check_value(vs, f"grid.{k}")
        if self.workers < 1:
            raise SpecError(f"experiment spec: workers = {self.workers} must be >= 1")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.kernel_name):
            raise SpecError(f"experiment spec: kernel_name {_short(self.kernel_name)} is not a kernel name")
        if self.tls is not None:
            unknown = sorted(set(self.tls) - set(_TLS_KEYS))
            if unknown:
                raise SpecError(f"experiment spec: unknown tls key(s) {unknown}; known: {list(_TLS_KEYS)}")
            for k, v in self.tls.items():
                if not isinstance(v, str):
                    raise SpecError(f"experiment spec: tls.{k} must be a file path, got {_short(v)}")
        if self.scheduler:
            check_scheduler(self.scheduler, self.trust_scheduler, self.tls)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> ExperimentSpec:  # type: ignore[override]
        spec = super().from_yaml(path, **overrides)
        spec.spec_dir = str(Path(path).parent)  # type: ignore[misc]
        return spec

    def runs(self) -> list[tuple[str, dict]]:
        """(run id, parameters) for every point of the grid; run ids are slugged folder names."""
        keys = list(self.grid)
        out = []
        for combo in itertools.product(*(self.grid[k] for k in keys)) if keys else [()]:
            point = dict(zip(keys, combo))
            rid = "_".join(f"{_slug(k)}-{_slug(v)}" for k, v in point.items()) or "run"
            out.append((rid, {**self.parameters, **point}))
        return out

    def notebook_path(self) -> Path:
        """The local notebook file (:func:`local_notebook`)."""
        return local_notebook(self.notebook, self.spec_dir)

    def check(self) -> list[tuple[str, dict, Path]]:
        """Check the whole spec, every grid combination, before anything runs; returns (run id, the
        parameters papermill injects, run folder) for every run. Raises :class:`SpecError` (one line)."""
        self.__post_init__()
        notebook = self.notebook_path()
        declared = notebook_parameters(notebook)
        for where, keys in (("parameters", self.parameters), ("grid", self.grid)):
            for k in keys:
                if k not in declared:
                    raise SpecError(
                        f"experiment spec: {where} key {k!r} is not a parameter of {notebook.name} "
                        f"(it declares: {', '.join(declared)})"
                    )
        root = Path(self.output_dir)
        real_root = root.resolve()
        planned, seen = [], {}
        for rid, params in self.runs():
            point = {k: params[k] for k in self.grid}
            if rid in seen:
                raise SpecError(
                    f"experiment spec: two grid points give the same run folder {rid!r} "
                    f"({_short(seen[rid])} and {_short(point)}); make the values differ in [A-Za-z0-9._=-]"
                )
            seen[rid] = point
            run = root / rid
            if (
                _RUN_ID_BAD.search(rid)
                or ".." in rid
                or not run.resolve().is_relative_to(real_root)
                or run.resolve() == real_root
            ):
                raise SpecError(f"experiment spec: run folder {rid!r} would not lie inside output_dir")
            if "output_dir" in declared:
                params = {**params, "output_dir": str(run)}
            check_rendered(params)
            planned.append((rid, params, run))
        return planned


def _slug(v: Any) -> str:
    """A grid value as part of a folder name: only ``[A-Za-z0-9._=-]``, never ``..`` (lists joined by ``-``)."""
    text = "-".join(map(_slug, v)) if isinstance(v, (list, tuple)) else str(v)
    return re.sub(r"\.{2,}", ".", _RUN_ID_BAD.sub("", text))


def _literal_path(path: str | Path) -> str:
    """A path for papermill, which formats paths with the parameters (``{...}``): braces escaped."""
    return str(path).replace("{", "{{").replace("}", "}}")


def execute_run(notebook: str, run_dir: str, parameters: Mapping[str, Any], kernel_name: str = "python3") -> dict:
    """Execute one notebook run with papermill, with ``parameters`` as given (the runner adds
    ``output_dir`` where the notebook declares it); never raises (the outcome is returned and recorded)."""
    import papermill as pm

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    params = dict(parameters)
    t0 = time.time()
    status = {"run_dir": str(run), "parameters": params, "started": t0}
    try:
        check_rendered(params)  # again where it runs: nothing but literal assignments reaches the kernel
        atomic_write_text(run / "params.yaml", yaml.safe_dump(params, sort_keys=False))
        pm.execute_notebook(
            _literal_path(notebook),
            _literal_path(run / "notebook.ipynb"),
            parameters=params,
            kernel_name=kernel_name,
            progress_bar=False,
            cwd=str(Path.cwd()),
        )
        status.update(state="done", seconds=time.time() - t0)
        (run / "failed.txt").unlink(missing_ok=True)
    except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
        status.update(state="failed", seconds=time.time() - t0, error=f"{type(e).__name__}: {e}"[:4000])
        atomic_write_text(run / "failed.txt", status["error"] + "\n" + traceback.format_exc()[-4000:])
    atomic_write_json(run / "status.json", status)
    return status


def _client(spec: ExperimentSpec) -> Any:
    """A Dask client of the spec's (trusted) scheduler, with its TLS settings."""
    try:
        from distributed import Client
        from distributed.security import Security
    except ImportError:
        raise RuntimeError(
            "scheduler is set but dask.distributed is not installed: pip install 'atomizer[distributed]'"
        ) from None
    check_scheduler(spec.scheduler or "", spec.trust_scheduler, spec.tls)
    security = None
    if spec.tls is not None:
        files = {}
        for k, v in spec.tls.items():
            p = Path(v)
            if not p.is_absolute() and not p.is_file() and spec.spec_dir:
                p = Path(spec.spec_dir) / p
            if not p.is_file():
                raise FileNotFoundError(f"experiment spec: tls.{k} file {v!r} not found")
            files[k] = str(p)
        security = Security(
            tls_ca_file=files.get("ca_file"),
            tls_client_cert=files.get("cert"),
            tls_client_key=files.get("key"),
            require_encryption=True,
        )
    return Client(spec.scheduler, security=security) if security is not None else Client(spec.scheduler)


def run_experiment(spec: ExperimentSpec, only: Sequence[str] | None = None, force: bool = False) -> dict:
    """Run every pending run of ``spec``; returns ``{"done": [...], "skipped": [...], "failed": [...]}``.

    The whole spec is checked first (:meth:`ExperimentSpec.check`: nothing runs, no folder is made, if
    any part is refused), then the store is locked (``.experiment.lock``) while the runs go."""
    planned = spec.check()
    unknown = sorted(set(only or ()) - {rid for rid, _, _ in planned})
    if unknown:
        raise SpecError(f"--only: no run {unknown[0]!r} in this spec; runs: {', '.join(r for r, _, _ in planned)}")
    root = Path(spec.output_dir)
    with locked(root, "results store", name=".experiment.lock"):
        return _run_planned(spec, root, planned, only, force)


def _run_planned(
    spec: ExperimentSpec, root: Path, planned: list[tuple[str, dict, Path]], only: Sequence[str] | None, force: bool
) -> dict:
    pending, skipped = [], []
    for rid, params, run in planned:
        if only and rid not in only:
            continue
        st = run / "status.json"
        if not force and st.exists() and json.loads(st.read_text()).get("state") == "done":
            skipped.append(rid)
            continue
        pending.append((rid, params, run))
    for rid in skipped:
        print(f"[skip] {rid}: already finished", flush=True)
    results: list[dict] = []
    notebook = str(spec.notebook_path())
    args = [(notebook, str(run), params, spec.kernel_name) for _, params, run in pending]
    for rid, _, _ in pending:
        print(f"[run ] {rid}", flush=True)
    if spec.scheduler and args:
        with _client(spec) as client:
            futures = [client.submit(execute_run, *a, pure=False) for a in args]
            results = client.gather(futures)
    elif spec.workers > 1 and len(args) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=spec.workers) as ex:
            results = list(ex.map(execute_run, *zip(*args)))
    else:
        results = [execute_run(*a) for a in args]
    done = [Path(r["run_dir"]).name for r in results if r["state"] == "done"]
    failed = [Path(r["run_dir"]).name for r in results if r["state"] == "failed"]
    for r in results:
        tag = "ok  " if r["state"] == "done" else "FAIL"
        print(
            f"[{tag}] {Path(r['run_dir']).name} ({r['seconds']:.0f} s){'' if r['state'] == 'done' else ': ' + r['error'][:300]}",
            flush=True,
        )
    for kind in RESULT_FILES:
        merged = collect(root, kind)
        if merged is not None:
            save_results(merged, root / f"{Path(RESULT_FILES[kind]).stem}_all.nc", overwrite=True)
    summary = {"done": done, "skipped": skipped, "failed": failed}
    atomic_write_json(root / "experiment.json", {"spec": spec.to_dict(), **summary})
    return summary


def run_states(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """(run id, state) of every run of ``spec``: ``done``, ``failed`` or ``pending``."""
    out = []
    for rid, _ in spec.runs():
        st = Path(spec.output_dir) / rid / "status.json"
        out.append((rid, json.loads(st.read_text())["state"] if st.exists() else "pending"))
    return out


def run_path(store: str | Path, model: str, seed: int, fold: int | None) -> Path:
    """Where a (model, seed, fold) run lives in a results store: ``<store>/<model>/seed-<s>[_fold-<f>]``.

    ``model`` (a label such as ``resnet@25%``) is one folder name: a separator, ``..`` or a leading dot
    is refused, so a run never lies outside its store."""
    label = str(model)
    if not label or "/" in label or "\\" in label or label.startswith(".") or any(ord(c) < 32 for c in label):
        raise ValueError(f"model label {_short(label)} cannot name a run folder (no '/', no leading '.')")
    return Path(store) / label / (f"seed-{int(seed)}" + ("" if fold is None else f"_fold-{int(fold)}"))


#: The landscape around a modality set: GSDs, fractions of the largest window, band sets (EuroSAT-MS names)
#: at the geometry of the first training modality. Every band set holds a canvas band (B10 alone has none).
LANDSCAPE = {
    "gsds": [10, 15, 20, 30, 40, 60],
    "size_fractions": [0.25, 0.5, 1.0],
    "band_sets": {
        "rgb": ["B02", "B03", "B04"],
        "rgbn": ["B02", "B03", "B04", "B08"],
        "rededge": ["B05", "B06", "B07"],
        "swir": ["B11", "B12"],
        "seen11": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B11", "B12"],
        "b8a": ["B8A"],
        "rgb_b8a": ["B02", "B03", "B04", "B8A"],
        "all13": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"],
    },
}
LANDSCAPE_FILES = {"table": "landscape.nc", "predictions": "landscape_predictions.nc"}


def landscape_set(train_modalities: str | Path, spec: Mapping[str, Any] | None = None):
    """The landscape :class:`~atomizer.data.modalities.ModalitySet` around a training modality set."""
    from atomizer.data.modalities import landscape_modalities

    spec = {**LANDSCAPE, **(spec or {})}
    train = load_modalities(train_modalities)
    first = train.modalities[0]
    return landscape_modalities(
        train, spec["gsds"], spec["size_fractions"], spec["band_sets"], first.bands, (first.size_px, first.gsd_m)
    )


def run_landscape(
    run_dir: str | Path, batch_size: int = 32, device: str = "auto", spec: Mapping[str, Any] | None = None
) -> Path:
    """Evaluate a run's best checkpoint on the landscape around its training modalities (on its test
    images: the test fold of a cross-validated run); writes ``landscape.nc`` and
    ``landscape_predictions.nc`` into the run (skipped when both exist)."""
    run = Path(run_dir)
    table, per_image = run / LANDSCAPE_FILES["table"], run / LANDSCAPE_FILES["predictions"]
    cfg = TrainConfig.from_yaml(run / "config.yaml")
    mods = landscape_set(cfg.train_modalities, spec)
    if table.exists() and per_image.exists():
        with xr.open_dataset(per_image, engine="h5netcdf") as old:  # reuse only the same landscape
            if [str(m) for m in old.modality.values] == mods.names:
                return table
    res, preds = evaluate_checkpoint(
        run / "checkpoints" / "best.pt",
        mods,
        dataset=cfg.dataset,
        data_root=cfg.data_root,
        batch_size=batch_size,
        device=device,
        model_name=cfg.label or cfg.model,
        predictions=True,
        num_workers=cfg.num_workers,
    )
    save_results(preds, per_image, overwrite=True, records=False)
    save_results(res, table, overwrite=True)
    return table


def store_runs(store: str | Path, models: Sequence[str] = (), seeds: Sequence[int] = ()) -> list[Path]:
    """The trained runs of a results store (those with ``checkpoints/best.pt``), filtered by label (empty:
    every model) and seed (empty: every seed); what the sweep and landscape notebooks evaluate."""
    from atomizer.results.store import find_run_dirs

    if not Path(store).is_dir():
        raise FileNotFoundError(f"results store {store} does not exist: train runs into it first (disjoint_modalities)")
    runs = []
    for d in find_run_dirs(store):
        cfg = yaml.safe_load((d / "config.yaml").read_text()) or {}
        label = cfg.get("label") or cfg.get("model")
        if not (d / "checkpoints" / "best.pt").exists():
            continue
        if (not seeds or int(cfg.get("seed", 0)) in seeds) and (not models or label in models):
            runs.append(d)
    return runs


def param_list(value: Any, cast: Any = str) -> list:
    """A notebook's list parameter as a list: papermill's ``-p`` passes ``"atomizer,resnet"`` or ``"[0, 1]"``
    as strings and ``-p seeds 0`` as a scalar; a list passes through. Items are converted with ``cast``."""
    if isinstance(value, str):
        value = [x.strip() for x in value.strip("[]").replace("'", "").replace('"', "").split(",") if x.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    return [cast(x) for x in value]


# --------------------------------------------------------------------------------------------------
# Notebook parameters
# --------------------------------------------------------------------------------------------------


class ParameterError(ValueError):
    """A notebook parameter that cannot run; the message names the parameter and the value."""


_TRAINING_KEYS = (
    "dataset", "data_root", "train_modalities", "test_modalities", "preset", "epochs", "batch_size", "lr",
    "seed", "device", "num_workers",
)  # fmt: skip
_POSITIVE = ("epochs", "batch_size", "n_resamples", "pretrain_steps", "pretrain_batch_size", "finetune_epochs",
             "adapt_epochs", "size_px")  # fmt: skip
_NON_NEGATIVE = ("max_steps", "train_limit", "val_limit", "num_workers", "pretrain_limit", "threads")


def check_parameters(params: Mapping[str, Any], sweep: str | None = None) -> None:
    """Refuse a notebook's parameters that cannot run, before anything is trained or written.

    Each notebook calls this on its parameters (``check_parameters(globals())``: names that are not
    notebook parameters are ignored), so a bad value stops the run at once with one line naming the
    parameter, its value and what would be accepted, instead of failing minutes later.

    Args:
        params: The notebook's parameters by name (papermill's injected values included).
        sweep: ``"gsd"`` or ``"size"`` for the sweep notebooks: ``values`` must each give a window inside
            the test modalities' source image (a GSD whose extent does not divide the source takes the
            largest whole window that fits).

    Raises:
        ParameterError: Naming the first bad parameter.
    """
    from atomizer.core.runtime import pick_device
    from atomizer.data.bands import get_sensor
    from atomizer.data.datasets import folds_table
    from atomizer.models.registry import architectures, config_class

    def bad(name: str, why: str) -> ParameterError:
        return ParameterError(f"notebook parameter {name!r} = {params[name]!r}: {why}")

    def as_list(name: str, cast: Any = str) -> list:
        try:
            return param_list(params[name], cast)
        except (TypeError, ValueError):
            raise bad(name, f"expected a list of {cast.__name__}") from None

    p = {k: params[k] for k in params if not k.startswith("_")}
    for name in _POSITIVE + _NON_NEGATIVE:
        if name in p:
            v = p[name]
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad(name, "expected an integer")
            if v < (1 if name in _POSITIVE else 0):
                raise bad(name, f"must be >= {1 if name in _POSITIVE else 0}")
    for name in ("lr", "pretrain_lr", "gsd_m"):
        if name in p and not (isinstance(p[name], (int, float)) and p[name] > 0):
            raise bad(name, "must be a positive number")
    if "mask_ratio" in p and not (isinstance(p["mask_ratio"], (int, float)) and 0 < p["mask_ratio"] < 1):
        raise bad("mask_ratio", "must be in (0, 1)")
    if "device" in p:
        try:
            pick_device(str(p["device"]))
        except (RuntimeError, ValueError) as e:
            raise bad("device", str(e)) from None
    # ``models`` names architectures to train, except where a notebook reads a results store: there they
    # are the labels of its runs (``atomizer-tiny``, ``resnet@25%``), which the store itself checks
    models = as_list("models") if "models" in p and "store" not in p else []
    if p.get("model"):
        models.append(str(p["model"]))
    for m in models:
        if m not in architectures():
            raise bad(
                "models" if "models" in p else "model", f"unknown model {m!r}; choose from {', '.join(architectures())}"
            )
    if "preset" in p:
        for m in models or ["atomizer"]:
            try:
                config_class(m).preset(str(p["preset"]), num_classes=2)
            except (KeyError, ValueError) as e:
                raise bad("preset", f"{m}: {e.args[0] if e.args else e}") from None
    if "reference" in p and models and p["reference"] not in models:
        raise bad("reference", f"not one of the models {models}")
    if "metric" in p and p["metric"] not in ("macro_map", "top1", "micro_map", "overall_accuracy"):
        raise bad("metric", "choose macro_map, top1, micro_map or overall_accuracy")
    if "maskings" in p:
        from atomizer.atoms.masking import MASKINGS

        for k in as_list("maskings"):
            if k not in MASKINGS:
                raise bad("maskings", f"unknown masking {k!r}; choose from {', '.join(MASKINGS)}")
    if "sensors" in p:
        for s in as_list("sensors"):
            try:
                get_sensor(s)
            except (KeyError, ValueError, OSError) as e:
                raise bad("sensors", str(e.args[0] if e.args else e)) from None
    sets = {}
    for name in ("train_modalities", "test_modalities", "pretrain_modalities"):
        if p.get(name):
            try:
                sets[name] = load_modalities(str(p[name]))
            except (OSError, ValueError, KeyError) as e:
                raise bad(name, str(e.args[0] if e.args else e)) from None
    seeds = as_list("seeds", int) if "seeds" in p else []
    if "seeds" in p and not seeds:
        raise bad("seeds", "give at least one seed")
    if p.get("folds"):
        folds = as_list("folds", int)
        try:
            table = folds_table(str(p.get("dataset", "eurosat")))
        except (OSError, KeyError, ValueError) as e:
            raise bad("folds", str(e.args[0] if e.args else e)) from None
        known = sorted(int(f) for f in table["fold"].unique())
        if any(f not in known for f in folds):
            raise bad("folds", f"the shipped assignment has folds {known}")
    training = {k: p[k] for k in _TRAINING_KEYS if k in p and p[k] not in ("", None)}
    if training and (models or "dataset" in p):
        try:
            TrainConfig.from_dict({"model": (models or ["atomizer"])[0], **training, "out_dir": "unused"})
        except (TypeError, ValueError, KeyError) as e:
            raise ParameterError(f"notebook parameters: {e.args[0] if e.args else e}") from None
    for name in ("gsds", "size_fractions"):
        if name in p:
            vals = as_list(name, float)
            if not vals or min(vals) <= 0 or (name == "size_fractions" and max(vals) > 1):
                raise bad(name, "expected positive numbers" + (" <= 1" if name == "size_fractions" else ""))
    if sweep is not None and "values" in p:
        values = as_list("values", float)
        test = sets.get("test_modalities")
        if not values:
            raise bad("values", "give at least one value")
        if test is not None:
            extent = test.source_size_px * test.source_gsd_m
            limit = test.source_size_px if sweep == "size" else extent
            too_big = [v for v in values if v <= 0 or v > limit]
            if too_big:
                unit = "px" if sweep == "size" else "m"
                raise bad("values", f"{too_big} outside (0, {limit:g}] {unit}: the source image is "
                          f"{test.source_size_px} px at {test.source_gsd_m:g} m ({extent:g} m)")  # fmt: skip
