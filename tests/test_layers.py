"""The layer rules of docs/architecture.md ("Imports") hold: read from the document, checked
against every module's imports as written (``ast``; imports inside functions included)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "relcache"
DOC = ROOT / "docs" / "architecture.md"
ROW = re.compile(r"^\| ([^|]+?) \| ([^|]+?) \| ([^|]+?) \|$", re.M)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


@cache
def layers() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """The document's import table: layer -> (its files, what it may import)."""
    text = DOC.read_text().split("\n## Imports\n", 1)[1].split("\n## ", 1)[0]
    table = {}
    for name, files, allowed in ROW.findall(text):
        if name in ("layer", "---"):
            continue
        table[name] = (_items(files), () if allowed == "—" else _items(allowed))
    return table


def _items(cell: str) -> tuple[str, ...]:
    """``a`, `b/`, layer`` -> ("a", "b/", "layer"): paths without their backticks."""
    return tuple(item.strip().strip("`") for item in cell.split(","))


def _covers(entry: str, path: Path) -> bool:
    """Whether the table's ``entry`` (a folder ``x/`` or a file) names the file ``path``."""
    rel = path.relative_to(PACKAGE).as_posix()
    return rel.startswith(entry) if entry.endswith("/") else rel == entry


def layer_of(module: str) -> str:
    """The one layer whose files hold ``module``."""
    found = [
        n for n, (files, _) in layers().items() if any(_covers(f, modules()[module]) for f in files)
    ]
    assert len(found) == 1, f"{module} is in {found or 'no layer'} of docs/architecture.md"
    return found[0]


def imports(module: str) -> list[tuple[str, ast.stmt]]:
    """The relcache modules ``module`` imports (a ``from pkg import submodule`` names the
    submodule), with the statement; ``if TYPE_CHECKING:`` blocks run nothing and are skipped."""
    tree = ast.parse(modules()[module].read_text())
    skipped = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for n in ast.walk(block)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) not in skipped and isinstance(node, ast.Import | ast.ImportFrom):
            targets = dict.fromkeys(_targets(node, module))  # once per statement, in order
            found += [(t, node) for t in targets if t.split(".")[0] == "relcache"]
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The dotted modules one import statement loads."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package up
        package = module if modules()[module].name == "__init__.py" else module.rpartition(".")[0]
        package = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{package}.{base}".rstrip(".")
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base for a in node.names]


def _allowed(layer: str, target: str) -> bool:
    """Whether files of ``layer`` may import the module ``target`` (one that exists)."""
    if target not in modules():
        return False
    allowed = layers()[layer][1]
    other = layer_of(target)
    return other == layer or other in allowed or any(_covers(a, modules()[target]) for a in allowed)


# ----- the document ---------------------------------------------------------------------------
def test_every_module_is_in_exactly_one_layer() -> None:
    assert {"caching", "sampling", "public API", "evaluation", "CLI"} <= set(layers())
    for module in modules():
        layer_of(module)


def test_layers_form_an_order() -> None:
    """What a layer may import lies below it: the table's rows form no cycle."""
    below = {name: _allowed_layers(name) for name in layers()}
    order: list[str] = []
    while len(order) < len(below):
        ready = [n for n, deps in below.items() if n not in order and deps <= set(order)]
        assert ready, f"the layers {sorted(set(below) - set(order))} import one another"
        order += ready


def _allowed_layers(layer: str) -> set[str]:
    """The layers whose files ``layer`` may import (a file entry counts as its layer)."""
    entries = layers()[layer][1]
    named = {e for e in entries if e in layers()}
    files = {layer_of(m) for m in modules() for e in entries if _covers(e, modules()[m])}
    return named | files


# ----- the code -------------------------------------------------------------------------------
@pytest.mark.parametrize("module", sorted(modules()))
def test_module_imports_only_what_its_layer_may(module: str) -> None:
    layer = layer_of(module)
    wrong = [f"{t} (line {n.lineno})" for t, n in imports(module) if not _allowed(layer, t)]
    assert not wrong, f"{module} ({layer}) imports {wrong}: not allowed by docs/architecture.md"


def test_no_import_cycles() -> None:
    """No module imports one that imports it back, counting imports inside functions; a file may
    import its own package's ``__init__`` (registries: the entries register themselves there)."""
    graph = {
        m: {t for t, _ in imports(m) if t in modules() and t != m.rpartition(".")[0]}
        for m in modules()
    }
    cycles = [c for c in _components(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` (Kosaraju: two depth-first passes)."""
    order: list[str] = []
    seen: set[str] = set()
    for start in graph:
        stack = [(start, iter(sorted(graph[start])))] if start not in seen else []
        seen.add(start)
        while stack:
            node, edges = stack[-1]
            nxt = next((e for e in edges if e not in seen), None)
            if nxt is None:
                order.append(node)
                stack.pop()
            else:
                seen.add(nxt)
                stack.append((nxt, iter(sorted(graph[nxt]))))
    reverse: dict[str, set[str]] = {n: set() for n in graph}
    for node, edges in graph.items():
        for e in edges:
            reverse[e].add(node)
    found, done = [], set()
    for node in reversed(order):
        if node in done:
            continue
        component, todo = [], [node]
        done.add(node)
        while todo:
            n = todo.pop()
            component.append(n)
            todo += [e for e in reverse[n] if e not in done]
            done.update(reverse[n])
        found.append(sorted(component))
    return found


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_private_names_of_other_packages(module: str) -> None:
    """Outside ``caching/`` and the public API, another package's ``_name`` is not used."""
    if layer_of(module) in ("caching", "public API"):
        return
    package = module if modules()[module].name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(modules()[module].read_text())
    used = [
        f"{t}.{a.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for t in _targets(node, module)
        if t.startswith("relcache") and not t.startswith(package)
        for a in node.names
        if a.name.startswith("_")
    ]
    used += [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_")
        if ast.unparse(node.value).split(".")[0] == "relcache"
    ]
    assert not used, f"{module} uses private names {used}: use the public API"


def test_import_relcache_loads_no_training_peers_or_diffusers() -> None:
    """The core path (``import relcache``, ``relcache.apply`` on the reference DiT, a DDIM
    generation) stays clear of the training code, the peers' adapters and diffusers."""
    code = (
        "import sys, relcache\n"
        "from relcache.models import create_dit\n"
        "from relcache.sampling import generate\n"
        "model = create_dit('DiT-FM', depth=1, hidden_size=32, num_heads=2)\n"
        "relcache.apply(model, relcache.FORA(interval=2))\n"
        "generate(model, [0], steps=2, progress=False)\n"
        "print(' '.join(sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    loaded = run.stdout.split()
    banned = ("relcache.shipped", "relcache.peers", "relcache.evaluation", "diffusers", "cache_dit")
    assert not [m for m in loaded if m.startswith(banned)]
