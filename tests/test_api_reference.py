"""docs/api.md against the code: every public name is documented under a
heading there, and every name the page gives (in a heading or in code font)
exists."""
from __future__ import annotations

import importlib
import inspect
import pathlib
import re

import zfabric
import zfabric.exceptions
import zfabric.testing
import zfabric.util
import zfabric.util.scheduling_strategies

PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "api.md"
HEADING = re.compile(r"^#{2,4} `(zfabric(?:\.\w+)*)", re.M)
MENTION = re.compile(r"`(zfabric(?:\.\w+)+)")


def resolve(dotted: str):
    """The object a dotted name names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)   # AttributeError: no such name
        return obj
    raise ImportError(dotted)


def public_names() -> set[str]:
    """What a user of zfabric can reach and is told about: the packages' __all__, the
    exceptions, and the public members of the classes users hold."""
    names = {f"zfabric.{n}" for n in zfabric.__all__ if n != "__version__"}
    names |= {f"zfabric.util.{n}" for n in zfabric.util.__all__}
    names |= {f"zfabric.util.scheduling_strategies.{n}"
              for n in zfabric.util.scheduling_strategies.__all__}
    names |= {f"zfabric.exceptions.{n}" for n, v in vars(zfabric.exceptions).items()
              if inspect.isclass(v) and issubclass(v, BaseException)
              and v.__module__ == "zfabric.exceptions"}
    names |= {f"zfabric.testing.{n}" for n in zfabric.testing.__all__}
    for prefix, cls in (("zfabric.ObjectRef", zfabric.ObjectRef),
                        ("zfabric.testing.LocalCluster", zfabric.testing.LocalCluster)):
        names |= {f"{prefix}.{n}" for n in vars(cls) if not n.startswith("_")}
    return names


def test_every_public_name_is_documented():
    documented = set(HEADING.findall(PAGE.read_text()))
    missing = sorted(public_names() - documented)
    assert not missing, f"public but not in docs/api.md (add a ### heading each): {missing}"


def test_every_documented_name_exists():
    text = PAGE.read_text()
    named = set(HEADING.findall(text)) | set(MENTION.findall(text))
    gone = []
    for name in sorted(named):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            gone.append(name)
    assert not gone, f"docs/api.md names what the code does not have: {gone}"


def test_documented_signatures_match_the_code():
    """A heading that spells out parameters spells out the real ones."""
    for name, params in re.findall(r"^#{2,4} `(zfabric[\w.]*)\(([^`]*)\)`", PAGE.read_text(), re.M):
        obj = resolve(name)
        try:
            real = [p for p in inspect.signature(obj).parameters.values()
                if p.name != "self" and not p.name.startswith("_")]   # (private: Ray's spellings)
        except (TypeError, ValueError):
            continue
        written = [p.strip().split("=")[0].lstrip("*") for p in params.split(",")
                   if p.strip() and p.strip() != "*"]
        assert [p.name for p in real if p.name not in written] == [], (name, params)
        assert [w for w in written if w not in {p.name for p in real}] == [], (name, params)
