"""The papermill experiment runner: a spec (data, checked whole), a grid of notebook runs, a locked store.

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
import logging
import math
import re
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import yaml

from atomizer.core.config import Config
from atomizer.core.run_folder import FAILED
from atomizer.core.storage import atomic_write_json, atomic_write_text, locked
from atomizer.engine.evaluation import save_results
from atomizer.results.store import RESULT_FILES, collect


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
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise SpecError(
                f"experiment spec: the injected parameters cell holds {type(stmt).__name__} code, not an assignment"
            )
        name = stmt.targets[0].id
        try:
            value = ast.literal_eval(stmt.value)
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
    def from_yaml(cls, path: str | Path, **overrides: Any) -> ExperimentSpec:
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
        planned: list[tuple[str, dict, Path]] = []
        seen: dict[str, dict] = {}
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


class _Terminal(logging.Handler):
    """Writes each record to the current ``sys.stdout`` (looked up at each record, so a replaced stream,
    e.g. pytest's capture, is honoured)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record).rstrip("\n") + "\n")
            sys.stdout.flush()
        except Exception:  # a closed stream must not fail the run
            self.handleError(record)


def stream_notebook_output() -> None:
    """Send what papermill logs (``log_output=True``: every line a running notebook prints, e.g. the
    training's one line per epoch) to this process's terminal; idempotent."""
    logger = logging.getLogger("papermill")
    if not any(isinstance(h, _Terminal) for h in logger.handlers):
        handler = _Terminal()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(lambda r: not r.getMessage().startswith("Ending Cell"))  # "Executing Cell n" suffices
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # once, not again through a root handler


def execute_run(notebook: str, run_dir: str, parameters: Mapping[str, Any], kernel_name: str = "python3") -> dict:
    """Execute one notebook run with papermill, with ``parameters`` as given (the runner adds
    ``output_dir`` where the notebook declares it); never raises (the outcome is returned and recorded)."""
    import papermill as pm

    stream_notebook_output()
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    params = dict(parameters)
    t0 = time.time()
    status: dict[str, Any] = {"run_dir": str(run), "parameters": params, "started": t0}
    try:
        check_rendered(params)  # again where it runs: nothing but literal assignments reaches the kernel
        atomic_write_text(run / "params.yaml", yaml.safe_dump(params, sort_keys=False))
        pm.execute_notebook(
            _literal_path(notebook),
            _literal_path(run / "notebook.ipynb"),
            parameters=params,
            kernel_name=kernel_name,
            progress_bar=False,
            log_output=True,  # each cell's output to the "papermill" logger: the terminal (stream_notebook_output)
            cwd=str(Path.cwd()),
        )
        status.update(state="done", seconds=time.time() - t0)
        (run / FAILED).unlink(missing_ok=True)
    except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
        status.update(state="failed", seconds=time.time() - t0, error=f"{type(e).__name__}: {e}"[:4000])
        atomic_write_text(run / FAILED, status["error"] + "\n" + traceback.format_exc()[-4000:])
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


def changed_parameters(recorded: Mapping[str, Any] | None, params: Mapping[str, Any]) -> list[str]:
    """The parameter names whose values differ between a finished run's record and the spec's run now
    (compared as JSON); a finished run whose spec changed runs again (the notebook resumes what it can)."""
    if not isinstance(recorded, Mapping):
        return ["(none recorded)"]
    norm = lambda v: json.dumps(v, sort_keys=True, default=str)  # noqa: E731
    return sorted(k for k in set(recorded) | set(params) if norm(recorded.get(k)) != norm(params.get(k)))


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
    pending, skipped, changed = [], [], {}
    for rid, params, run in planned:
        if only and rid not in only:
            continue
        st = run / "status.json"
        if not force and st.exists():
            status = json.loads(st.read_text())
            if status.get("state") == "done":
                differ = changed_parameters(status.get("parameters"), params)
                if not differ:
                    skipped.append(rid)
                    continue
                changed[rid] = differ
        pending.append((rid, params, run))
    for rid in skipped:
        print(f"[skip] {rid}: already finished", flush=True)
    results: list[dict] = []
    notebook = str(spec.notebook_path())
    args = [(notebook, str(run), params, spec.kernel_name) for _, params, run in pending]
    for rid, _, _ in pending:
        why = f" (finished with other parameters: {', '.join(changed[rid])})" if rid in changed else ""
        print(f"[run ] {rid}{why}", flush=True)
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
