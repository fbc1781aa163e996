"""Folding repeated lines of task output: the driver's half (pure; no clock).

Eight workers that print the same line would fill the driver's terminal with
eight copies. As Ray's log deduplication does, a line several workers print
is shown once at once, and its repeats within `window` seconds are counted
and shown as one line when the window ends:

    (work pid=4242 node=3fa2c1d09e8b) loading the model
    ... (window seconds later, or at shutdown)
    (work pid=4250 node=3fa2c1d09e8b) loading the model [repeated 7x across cluster]

Only identical lines (same text, same stream) from different workers (node,
pid) fold; a worker repeating itself is shown each time, and so is an empty
line. (Ray also folds lines that differ only in their numbers; here such
lines differ -- they are often the values users print.) Repeats keep folding,
window after window, while they come; a line repeated once is shown as it
is, with the repeat's prefix.

    LogFolder.add(source, stream, lines, now) -> what to show now
    LogFolder.expire(now)  -> the counts whose window ended
    LogFolder.flush()      -> every count still open (at shutdown)

What to show is (source, stream, text): `source` is whatever the caller uses
to name the worker, `source[:2]` must name it uniquely (node, pid).
`node/loglisten.py` owns one, and passes the clock in.
"""
from __future__ import annotations

HINT = " (zfabric folds lines repeated across workers; ZFABRIC_DEDUP_LOGS=0 shows each one)"


class _Seen:
    __slots__ = ("since", "count", "source", "workers")

    def __init__(self, since: float, source):
        self.since = since
        self.count = 0           # repeats not shown yet
        self.source = source     # where the last repeat came from
        self.workers = {source[:2]}


class LogFolder:
    def __init__(self, window: float = 5.0, enabled: bool = True, max_kept: int = 10_000):
        self.window = window
        self.enabled = enabled
        self.max_kept = max_kept   # lines remembered at most (the oldest are let go first)
        self._seen: dict[tuple, _Seen] = {}   # (stream, text) -> its state, oldest first
        self._hinted = False

    def add(self, source, stream: int, lines, now: float) -> list[tuple]:
        """Lines a worker printed: those to show now, in order."""
        if not self.enabled:
            return [(source, stream, line) for line in lines]
        out = []
        seen = self._seen
        worker = source[:2]
        for line in lines:
            key = (stream, line)
            state = seen.get(key)
            if state is None or not line.strip():
                if line.strip():
                    seen[key] = _Seen(now, source)
                out.append((source, stream, line))
                continue
            state.workers.add(worker)
            if len(state.workers) > 1:
                state.count += 1
                state.source = source
            else:
                out.append((source, stream, line))
        if len(seen) > self.max_kept:
            out += self._let_go(len(seen) - self.max_kept)
        return out + self.expire(now)

    def pending(self) -> bool:
        """Is a line remembered (so that expire() may show something later)?"""
        return bool(self._seen)

    def expire(self, now: float) -> list[tuple]:
        """The folded lines whose window ended: shown now, with their count."""
        out = []
        seen = self._seen
        while seen:
            key = next(iter(seen))
            state = seen[key]
            if now - state.since < self.window:
                break
            del seen[key]
            if state.count:
                out.append(self._show(key, state))
            if state.count > 1:   # still folding: the next repeats in a new window
                state.since, state.count = now, 0
                seen[key] = state
        return out

    def flush(self) -> list[tuple]:
        """Every count still open, shown now; nothing is remembered after."""
        out = [self._show(key, state) for key, state in self._seen.items() if state.count]
        self._seen.clear()
        return out

    def _let_go(self, n: int) -> list[tuple]:
        out = []
        for _ in range(n):
            key = next(iter(self._seen))
            state = self._seen.pop(key)
            if state.count:
                out.append(self._show(key, state))
        return out

    def _show(self, key: tuple, state: _Seen) -> tuple:
        stream, line = key
        if state.count == 1:
            return (state.source, stream, line)
        text = f"{line} [repeated {state.count}x across cluster]"
        if not self._hinted:
            self._hinted = True
            text += HINT
        return (state.source, stream, text)
