"""The layering rules of DESIGN §3, checked on the source."""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "zfabric"
FORBIDDEN_IN_CORE = {"zmq", "asyncio", "time", "os", "socket", "subprocess", "threading",
                     "select", "signal"}


def imports_of(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "core").glob("*.py")) + [ROOT / "protocol.py"],
                         ids=lambda p: p.name)
def test_core_and_protocol_do_no_io(path):
    assert not imports_of(path) & FORBIDDEN_IN_CORE


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_sockets_makes_sockets_and_nothing_below_imports_api(path):
    text = path.read_text()
    if path.name != "sockets.py":
        assert ".socket(zmq." not in text, "make sockets in node/sockets.py"
    if path.parent.name in ("core", "node") or path.name == "api.py":
        assert "import api" not in text and "from ..api" not in text
