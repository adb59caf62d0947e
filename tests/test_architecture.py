"""The package's one-way layering, read from the source with ``ast`` (nothing imported).

Layers, lowest first: ``core`` -> ``data`` -> ``atoms`` -> ``models`` -> ``engine`` -> ``results`` ->
``experiments``, ``bench`` -> ``dashboard`` -> ``cli``. A module may import its own layer and those
below, never above; no module-level import cycle anywhere (also inside a layer); nothing but the
entry points (``cli``, ``__main__``) imports the CLI.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "atomizer"

LAYERS = {
    "core": 0,
    "data": 1,
    "atoms": 2,
    "models": 3,
    "engine": 4,
    "results": 5,
    "experiments": 6,
    "bench": 6,
    "dashboard": 7,
    "cli": 8,
    "__main__": 9,
}


def modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules imported by ``name`` (anywhere in the file, functions included)."""
    out = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            cands = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            cands = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {c for c in cands if c in known and c != name and not name.startswith(c + ".")}
    return out


def layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else None  # the root package (lazy public API) has no layer


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, f, set(mods)) for m, f in mods.items()}


def test_every_module_belongs_to_a_layer():
    unplaced = [m for m in modules() if m != "atomizer" and m.split(".")[1] not in LAYERS]
    assert unplaced == [], f"modules outside the layers: {unplaced}"


def test_imports_only_run_down_the_layers():
    up = []
    for m, deps in graph().items():
        lm = layer(m)
        if lm is None:
            continue
        for d in deps:
            ld = layer(d)
            if ld is not None and ld > lm:
                up.append(f"{m} imports {d}")
    assert up == [], "imports up the layers:\n" + "\n".join(sorted(up))


def test_no_import_cycle():
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in g:
        if v not in index:
            strong(v)
    assert cycles == []


def test_nothing_in_the_library_imports_the_cli():
    offenders = sorted(m for m, deps in graph().items() if "atomizer.cli" in deps and m != "atomizer.__main__")
    assert offenders == []


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The checker itself: an engine import inside a data module is reported."""
    f = tmp_path / "atomizer" / "data" / "x.py"
    f.parent.mkdir(parents=True)
    f.write_text("def f():\n    from atomizer.engine.training import train\n")
    deps = imports("atomizer.data.x", f, {"atomizer.engine.training", "atomizer.engine"})
    assert deps == {"atomizer.engine.training"}
    assert all(layer(d) > layer("atomizer.data.x") for d in deps)


@pytest.mark.parametrize(
    "name", ["Atomizer", "AtomizerConfig", "tokenize", "open_image", "get_sensor", "train", "evaluate", "predict"]
)
def test_public_api(name):
    import atomizer

    assert callable(getattr(atomizer, name))
    assert name in atomizer.__all__


def test_import_atomizer_is_lazy():
    code = "import sys, atomizer; print('torch' in sys.modules, 'atomizer.models' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
