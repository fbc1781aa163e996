"""Size limits on the source: no module over 600 lines, no function over 60.

A function is measured from its `def` line (decorators not counted) to its
last line (`ast` end_lineno), docstring and comments included; methods and
nested functions count on their own.
"""
from __future__ import annotations

import ast
import pathlib

from tests.harness.source import package_root

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


ROOT = package_root()
SOURCES = sorted(ROOT.rglob("*.py"))


def rel(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT.parent))


def long_functions(path: pathlib.Path, limit: int = MAX_FUNCTION_LINES):
    """(qualified name, def line, length) of each function longer than `limit` lines."""
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                length = child.end_lineno - child.lineno + 1
                if length > limit:
                    out.append((name, child.lineno, length))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), filename=str(path)), "")
    return out


def test_no_module_is_too_long():
    offenders = []
    for path in SOURCES:
        n = len(path.read_text().splitlines())
        if n > MAX_MODULE_LINES:
            offenders.append(f"  {rel(path)}: {n} lines\n")
    assert not offenders, (
        f"modules over {MAX_MODULE_LINES} lines:\n" + "".join(offenders)
        + "Split each along a seam of what it owns (one concern per module) and say in each "
          "new module's docstring what it owns and who talks to it; place new modules in "
          "LAYERS in tests/test_layering.py.")


def test_no_function_is_too_long():
    offenders = [f"  {rel(path)}:{line}: {name}() is {length} lines\n"
                 for path in SOURCES for name, line, length in long_functions(path)]
    assert not offenders, (
        f"functions over {MAX_FUNCTION_LINES} lines (from `def` to the last line):\n"
        + "".join(offenders)
        + "Split each into steps with names that say what they do.")


def test_the_counter_measures_def_to_last_line(tmp_path):
    src = tmp_path / "m.py"
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    src.write_text(f"class C:\n    def long(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n"
                   f"\n    def short(self):\n        return 1\n")
    assert long_functions(src) == [("C.long", 2, 61)]
    assert long_functions(src, limit=61) == []
