"""Where the zfabric package's source is, for the tests that read it
(tests/test_layering.py, tests/test_code_size.py)."""
from __future__ import annotations

import pathlib


def package_root() -> pathlib.Path:
    """The zfabric package next to (some parent of) this file."""
    for parent in pathlib.Path(__file__).resolve().parents:
        if (parent / "zfabric" / "__init__.py").is_file():
            return parent / "zfabric"
    raise RuntimeError("cannot find the zfabric package above tests/")
