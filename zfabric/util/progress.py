"""`progress(refs)`: zf.get(refs) with a progress bar while the refs finish.

The bar is tqdm's when tqdm is installed (extra [progress]), else a one-line
counter on a terminal's stderr, else nothing. It advances as refs finish
(`completed.as_completed`), and each value is read as its ref finishes.
"""
from __future__ import annotations

import sys
import time

from .. import api
from ..ref import ObjectRef
from .completed import as_completed

REDRAW_INTERVAL = 0.2   # seconds between redraws of the plain counter: a line per
                        # finished ref would cost more than the refs on a fast run


def progress(refs, *, desc: str | None = None, timeout: float | None = None,
             file=None, disable: bool = False, **tqdm_kwargs):
    """The values of `refs` (an ObjectRef, or a list: same order), as `zf.get`
    returns them, showing a bar that counts the refs finished meanwhile.

    desc: the bar's label. timeout: as zf.get's (GetTimeoutError). file: where
    the bar goes (default stderr). disable=True: no bar. Other keyword
    arguments go to tqdm. A failed ref raises its error as soon as it
    finishes, as zf.get does. Duplicates in the list are fine.
    """
    single = type(refs) is ObjectRef
    if single:
        refs = [refs]
    elif not isinstance(refs, (list, tuple)):
        raise TypeError(f"progress() takes an ObjectRef or a list of ObjectRefs, got "
                        f"{type(refs).__name__}")
    for r in refs:
        if type(r) is not ObjectRef:
            raise TypeError(f"progress() takes a list of ObjectRefs; the list holds a "
                            f"{type(r).__name__}")
    unique = list(dict.fromkeys(refs))
    done = as_completed(unique, timeout)
    bar = _bar(len(unique), desc, file, disable, tqdm_kwargs)
    values = {}
    try:
        for ref in done:
            values[ref] = api.get(ref)
            bar.update(1)
    finally:
        bar.close()
    out = [values[r] for r in refs]
    return out[0] if single else out


def _bar(total: int, desc, file, disable: bool, tqdm_kwargs: dict):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if tqdm_kwargs:
            raise TypeError(f"progress() got tqdm's arguments {sorted(tqdm_kwargs)}, but "
                            "tqdm is not installed (pip install 'zfabric[progress]')") from None
        return _Counter(total, desc, file if file is not None else sys.stderr, disable)
    return tqdm(total=total, desc=desc, file=file, disable=disable, **tqdm_kwargs)


class _Counter:
    """`desc: 37/100` rewritten in place on a terminal; nothing elsewhere."""

    def __init__(self, total: int, desc, file, disable: bool):
        self.total, self.n = total, 0
        self.label = f"{desc}: " if desc else ""
        self.file = file
        self.on = not disable and hasattr(file, "isatty") and file.isatty()
        self.drawn = 0.0

    def update(self, n: int) -> None:
        self.n += n
        now = time.monotonic()
        if self.on and now - self.drawn >= REDRAW_INTERVAL:
            self.drawn = now
            self.file.write(f"\r{self.label}{self.n}/{self.total}")
            self.file.flush()

    def close(self) -> None:
        if self.on:
            self.file.write(f"\r{self.label}{self.n}/{self.total}\n")
            self.file.flush()
