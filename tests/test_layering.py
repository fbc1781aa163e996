"""The layering rules of docs/architecture.md, checked on the source.

zfabric's modules sit in four layers; a module may import from its own
layer or from any layer to its right, never from one to its left:

    public face  ->  node  ->  core  ->  wire

Every import counts: at the top of a file or inside a function, absolute
(`import zfabric.x`, `from zfabric.x import y`) or relative at any level
(`from . import x`, `from ..core import effects`). On top of that, the
imports between zfabric modules must not form a cycle, even within a layer.

A new module must be placed in a layer: add it to LAYERS below.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.harness.source import package_root


ROOT = package_root()
PACKAGE = "zfabric"

# (layer name, module patterns): "x" is the module zfabric.x, "x/" the
# package zfabric.x and everything in it, "" the package zfabric itself.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("public face", ("", "api", "compat", "options", "testing/", "util/")),
    ("node", ("node/",)),
    ("core", ("core/",)),
    ("wire", ("protocol", "protocol_peers", "protocol_checks", "protocol_codec", "structs", "ids", "config", "exceptions", "serialization", "records", "ref")),
]
WHAT_EACH_LAYER_IS = {
    "public face": "what users and tests call: zf.init/remote/get..., zfabric.testing",
    "node": "processes and I/O: the node loop, sockets, store files, the client, workers",
    "core": "sans-I/O state machines: the node's decisions (scheduler, gcs, membership...)",
    "wire": "the vocabulary every layer shares: messages, ids, config, errors, "
            "serialization, ObjectRef",
}

FORBIDDEN_IN_CORE = {"zmq", "asyncio", "time", "os", "socket", "subprocess", "threading",
                     "select", "signal"}


# -- reading the source -----------------------------------------------------------------

def module_name(path: pathlib.Path) -> str:
    """zfabric/node/client.py -> zfabric.node.client; zfabric/core/__init__.py -> zfabric.core"""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


SOURCES = sorted(ROOT.rglob("*.py"))
MODULES = {module_name(p): p for p in SOURCES}


def rel(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT.parent))


@dataclasses.dataclass(frozen=True)
class Import:
    source: str      # the importing module, e.g. zfabric.node.worker
    target: str      # the zfabric module it imports, e.g. zfabric.core.events
    line: int
    text: str        # the import statement as written
    lazy: bool       # inside a function

    def where(self) -> str:
        return f"{rel(MODULES[self.source])}:{self.line}"


def _resolve_base(module: str, level: int, name: str | None) -> str:
    """The absolute module a (possibly relative) `from` import names."""
    if level == 0:
        return name or ""
    is_package = MODULES[module].name == "__init__.py"
    package = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(package) - 1:
        raise ValueError(f"relative import beyond the top package in {module}")
    base = package[:len(package) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _targets(module: str, node: ast.AST) -> list[str]:
    """The zfabric modules an import statement imports."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
    if isinstance(node, ast.ImportFrom):
        base = _resolve_base(module, node.level, node.module)
        if base.split(".")[0] != PACKAGE:
            return []
        out = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            # `from pkg import name`: a submodule if there is one, else an attribute of pkg
            out.append(sub if sub in MODULES else base)
        return out
    if isinstance(node, ast.Call):  # importlib.import_module("zfabric.x") / __import__(...)
        fn = node.func
        fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
        if fname in ("import_module", "__import__") and node.args and isinstance(
                node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            name = node.args[0].value
            return [name] if name.split(".")[0] == PACKAGE else []
    return []


def _walk(tree: ast.AST, in_function: bool = False):
    """(node, inside a function?) for every node of the tree."""
    for child in ast.iter_child_nodes(tree):
        yield child, in_function
        nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                   ast.Lambda))
        yield from _walk(child, nested)


def imports_in(module: str) -> list[Import]:
    path = MODULES[module]
    text = path.read_text()
    tree = ast.parse(text, filename=str(path))
    found = []
    for node, lazy in _walk(tree):
        for target in dict.fromkeys(_targets(module, node)):
            stmt = ast.get_source_segment(text, node) or ""
            found.append(Import(module, target, node.lineno, " ".join(stmt.split()), lazy))
    return found


ALL_IMPORTS = [imp for m in MODULES for imp in imports_in(m)]


def layer_of(module: str) -> int | None:
    """The index in LAYERS of a zfabric module (0 = leftmost), or None."""
    inner = module[len(PACKAGE) + 1:] if module != PACKAGE else ""
    for i, (_name, patterns) in enumerate(LAYERS):
        for pat in patterns:
            if pat.endswith("/"):
                pkg = pat[:-1].replace("/", ".")
                if inner == pkg or inner.startswith(pkg + "."):
                    return i
            elif inner == pat.replace("/", "."):
                return i
    return None


def _as_path(pattern: str) -> str:
    if not pattern:
        return f"{PACKAGE}/__init__.py"
    return f"{PACKAGE}/{pattern}" + ("" if pattern.endswith("/") else ".py")


def _layer_list() -> str:
    return "\n".join(f"    {i + 1}. {name:<12} {', '.join(_as_path(p) for p in pats)}"
                     f"\n       {WHAT_EACH_LAYER_IS[name]}"
                     for i, (name, pats) in enumerate(LAYERS))


# -- the layering rules -------------------------------------------------------------------

def test_every_module_has_a_layer():
    unknown = [rel(p) for m, p in MODULES.items() if layer_of(m) is None]
    assert not unknown, (
        "these modules are in no layer, so nobody checks what they may import:\n"
        + "".join(f"  {u}\n" for u in unknown)
        + "Add each to LAYERS in tests/test_layering.py, in the layer it belongs to "
          "(it may import only from its own layer and those after it):\n" + _layer_list())


def test_imports_name_existing_modules():
    missing = [imp for imp in ALL_IMPORTS if imp.target not in MODULES]
    assert not missing, "these imports name a zfabric module that does not exist:\n" + "".join(
        f"  {imp.where()}: {imp.text}  ->  {imp.target}\n" for imp in missing)


def test_no_import_goes_left():
    problems = []
    for imp in ALL_IMPORTS:
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if src is None or dst is None or dst >= src:
            continue  # unknown modules fail test_every_module_has_a_layer
        problems.append(
            f"  {imp.where()}: {imp.text}\n"
            f"      {imp.source} ({LAYERS[src][0]} layer) imports {imp.target} "
            f"({LAYERS[dst][0]} layer){' inside a function' if imp.lazy else ''}\n")
    assert not problems, (
        "imports that go left (a module may import from its own layer or any layer to "
        "its right, never to its left):\n" + "".join(problems)
        + "Layers, left to right:\n" + _layer_list() + "\n"
        "What to do instead: if what you import is shared vocabulary (a message, an enum, "
        "an id helper), move it right, into the layer of the importer or further right. "
        "If a lower layer must call back into a higher one, let the higher one register "
        "a hook at import time (as node/client.py does with ref.set_client_lookup) or "
        "pass it in as an argument. Importing lazily, inside a function, does not make "
        "it allowed.")


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): every strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def import_graph(imports: list[Import]) -> dict[str, dict[str, Import]]:
    """module -> {module it imports: the first import statement that does it}"""
    graph: dict[str, dict[str, Import]] = {m: {} for m in MODULES}
    for imp in imports:
        if imp.target != imp.source and imp.target in MODULES:
            graph.setdefault(imp.source, {}).setdefault(imp.target, imp)
    return graph


def import_cycles(imports: list[Import]) -> list[list[str]]:
    """The groups of modules that import each other (strongly connected, > 1 module)."""
    graph = import_graph(imports)
    return [c for c in strongly_connected({m: set(t) for m, t in graph.items()}) if len(c) > 1]


def shortest_cycle(start: str, members: set[str], graph) -> list[str]:
    """start -> ... -> start, as few imports as possible, staying inside `members`."""
    came_from = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt == start:
                    path = [node]
                    while came_from[path[-1]] is not None:
                        path.append(came_from[path[-1]])
                    return list(reversed(path)) + [start]
                if nxt in members and nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    return []


def describe_cycles(imports: list[Import], limit: int = 5) -> str:
    graph = import_graph(imports)
    out = []
    for members in import_cycles(imports):
        out.append(f"  modules that import each other: {', '.join(members)}\n")
        seen: set[tuple[str, ...]] = set()
        for start in members:
            path = shortest_cycle(start, set(members), graph)
            key = tuple(sorted(zip(path, path[1:])))
            if not path or key in seen:
                continue
            seen.add(key)
            if len(seen) > limit:
                out.append("    (more cycles through these modules not shown)\n")
                break
            out.append(f"    cycle {' -> '.join(path)}:\n")
            for a, b in zip(path, path[1:]):
                imp = graph[a][b]
                out.append(f"      {imp.where()}: {imp.text}"
                           f"{'  (inside a function)' if imp.lazy else ''}\n")
    return "".join(out)


def test_no_import_cycles():
    cycles = import_cycles(ALL_IMPORTS)
    assert not cycles, (
        f"{len(cycles)} group(s) of zfabric modules import each other in a cycle:\n"
        + describe_cycles(ALL_IMPORTS)
        + "Break each cycle by removing one of its imports: move what both sides need into "
          "a module they can both import (further right), or let one side register a hook "
          "into the other at import time (see ref.set_client_lookup). A lazy import inside "
          "a function is still part of the cycle.")


def test_the_checker_resolves_imports():
    """The resolver itself: relative imports at each level, submodules vs attributes."""
    def targets(module, src):
        return [t for node in ast.walk(ast.parse(src)) for t in _targets(module, node)]

    assert targets("zfabric.node.worker", "from . import client") == ["zfabric.node.client"]
    assert targets("zfabric.node.worker", "from .. import ids, protocol as p") == [
        "zfabric.ids", "zfabric.protocol"]
    assert targets("zfabric.node.worker", "from ..core import effects") == ["zfabric.core.effects"]
    assert targets("zfabric.node.worker", "from ..protocol import TaskStatus") == [
        "zfabric.protocol"]
    assert targets("zfabric.node.worker", "from .. import get") == ["zfabric"]
    assert targets("zfabric", "from . import exceptions") == ["zfabric.exceptions"]
    assert targets("zfabric.core", "from . import effects") == ["zfabric.core.effects"]
    assert targets("zfabric.core", "from .. import ids") == ["zfabric.ids"]
    assert targets("zfabric.testing.sim", "from .fabric import FabricSim") == [
        "zfabric.testing.sim.fabric"]
    assert targets("zfabric.testing.sim.fabric", "from ...core import events") == [
        "zfabric.core.events"]
    assert targets("zfabric.testing.sim.fabric", "from ... import protocol") == [
        "zfabric.protocol"]
    assert targets("zfabric.ref", "import zfabric.node.client") == ["zfabric.node.client"]
    assert targets("zfabric.ref", "import os, zmq") == []
    assert targets("zfabric.ref", "importlib.import_module('zfabric.api')") == ["zfabric.api"]
    assert layer_of("zfabric") == layer_of("zfabric.api") == layer_of("zfabric.util.x") == 0
    assert layer_of("zfabric.node.__main__") == 1
    assert layer_of("zfabric.core") == 2
    assert layer_of("zfabric.ref") == 3
    assert layer_of("zfabric.newthing") is None
    assert import_cycles([Import("zfabric.ids", "zfabric.records", 1, "", False),
                          Import("zfabric.records", "zfabric.ids", 1, "", True)]) == [
        ["zfabric.ids", "zfabric.records"]]


def test_ref_finds_the_client_through_its_hook():
    """ref.py (wire) knows the client only through the lookup node/client.py registers."""
    from zfabric import ids, ref
    from zfabric.node import client
    assert ref._client_lookup is client.current_or_none

    class FakeClient:
        def __init__(self):
            self.ops = []

        def add_ref(self, oid):
            self.ops.append(("add", oid))

        def drop_ref(self, oid):
            self.ops.append(("drop", oid))

    fake = FakeClient()
    oid = ids.new_put_id()
    ref.set_client_lookup(lambda: fake)
    try:
        r = ref.ObjectRef(oid)
        del r
    finally:
        ref.set_client_lookup(client.current_or_none)
    assert fake.ops == [("add", oid), ("drop", oid)]
    ref.set_client_lookup(None)
    try:
        assert ref.ObjectRef(oid)._client is None       # no client: an uncounted ref
    finally:
        ref.set_client_lookup(client.current_or_none)


# -- what the layers may do ---------------------------------------------------------------

def external_imports_of(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "core").glob("*.py")) + [
    ROOT / "protocol.py", ROOT / "protocol_peers.py", ROOT / "protocol_codec.py",
    ROOT / "protocol_checks.py"],
                         ids=lambda p: p.name)
def test_core_and_protocol_do_no_io(path):
    bad = external_imports_of(path) & FORBIDDEN_IN_CORE
    assert not bad, (
        f"{rel(path)} imports {', '.join(sorted(bad))}: core/ and protocol.py are sans-I/O "
        "(no sockets, clocks, files, threads or signals). Take what you need as an "
        "argument (the current time is the `now` passed to handle()) or return an effect "
        "that node/loop.py carries out.")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_sockets_makes_sockets_and_nothing_below_imports_api(path):
    text = path.read_text()
    if path.name != "sockets.py":
        assert ".socket(zmq." not in text, (
            f"{rel(path)} makes a zmq socket: only zfabric/node/sockets.py makes sockets "
            "(one place sets their options); add a constructor there and call it.")
    if path.parent.name in ("core", "node") or path.name == "api.py":
        assert "import api" not in text and "from ..api" not in text, (
            f"{rel(path)} imports zfabric.api: api.py is the public face, on top of "
            "everything; nothing below it may call it. Use node/client.py instead.")


# What a driver imports: the node's own modules are the node process's alone.
NODE_ONLY = ("zfabric.node.node", "zfabric.node.loop", "zfabric.node.dashboard",
             "zfabric.core.fabric", "zfabric.core.scheduler", "zfabric.node.packaging",
             "http.server", "psutil", "asyncio")


def _loaded_after(code: str, modules) -> list[str]:
    """Which of `modules` a fresh interpreter has loaded after running `code`."""
    code += f"; import json, sys; print(json.dumps([m for m in {tuple(modules)!r} " \
            "if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT.parent)})
    return json.loads(out.stdout)


def test_import_zfabric_leaves_the_node_to_the_node_process():
    """`import zfabric` and its API (a driver) import no module that only a node
    runs (its state machines, loop, dashboard server, runtime_env packing):
    starting a driver pays for the client, not for a node. And a node, which
    imports the package too, does not load the driver's API. Checked in fresh
    interpreters."""
    loaded = _loaded_after("import zfabric; zfabric.init, zfabric.remote, zfabric.util",
                           NODE_ONLY)
    assert loaded == [], (
        f"`import zfabric` imported {loaded}: import it where it is used "
        "(inside the function), or from node/launch.py's side of the split, so that a "
        "driver does not load the node's modules")
    assert _loaded_after("import zfabric.node.node", ["zfabric.api", "zfabric.options"]) == [], (
        "the node process loads the driver's API: zfabric/__init__.py loads it on first "
        "use of a public name, so nothing the node imports may use one")
