"""Pulls of store objects from other nodes: chunks, credits, re-sourcing.

    node shell                         Transfers              holder's object server
    start(oid, size, holders) ------->            ChunkRequest ---->  (stateless: answers
    on_chunk(holder, oid, off, len) ->            <---- chunk bytes    each request alone,
    on_error(holder, oid, reason) --->            <---- error reply    zguide "fileio3")
    on_holder_dead(holder)  <- membership
    on_tick(now)            <- timer
                            <------- ChunkRequest / PullDone / PullFailed

The node shell owns the I/O: it sends each ChunkRequest to the holder's
object socket, writes each arriving chunk at its offset in a temporary store
file (asking `expects()` first, so it never writes for a pull that is over),
and seals the file on PullDone or deletes it on PullFailed. This module owns
the books of every pull in progress, one per object however many tasks need
it, and decides what to ask of whom.

A pull asks its current holder for chunk_size-aligned chunks, at most
`window` at a time (credits): each chunk that arrives returns its credit and
the next request goes out. A holder that fails (an error reply, declared
dead, or a chunk unanswered for `chunk_timeout` seconds) is dropped from the
pull, and the chunks it owed are asked first of the next holder in order of
preference; when none is left, the pull fails. The last holder is not
dropped for a late chunk at once: a lost request or a slow disk would lose
an object a live node holds. Its late chunks are asked again, up to
LAST_HOLDER_RETRIES times in the pull; so a pull still ends within
(LAST_HOLDER_RETRIES + 1) * chunk_timeout of its last answer. A chunk
counts only if it answers a request outstanding at the current holder, so
late, duplicate and stray chunks are ignored and every byte is counted
exactly once.
"""
from __future__ import annotations

from dataclasses import dataclass

# Times a pull asks its last holder again for chunks it left unanswered.
LAST_HOLDER_RETRIES = 2


@dataclass(frozen=True, slots=True)
class ChunkRequest:
    """Ask `holder` for bytes [offset, offset + length) of object `oid`."""
    holder: bytes
    oid: bytes
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class PullDone:
    """Every byte of `oid` has been written: seal the store file."""
    oid: bytes
    size: int


@dataclass(frozen=True, slots=True)
class PullFailed:
    """No holder could serve `oid`: drop the partial file."""
    oid: bytes
    reason: str


class _Pull:
    __slots__ = ("oid", "size", "current", "candidates", "failed", "next_offset",
                 "outstanding", "redo", "received", "retries")

    def __init__(self, oid: bytes, size: int, holders: list[bytes]):
        self.oid = oid
        self.size = size
        self.current = holders[0]               # every request goes to it
        self.candidates = holders[1:]           # the holders to try next, in order
        self.failed: list[tuple[bytes, str]] = []   # dropped holders and why
        self.next_offset = 0                    # chunks below it were asked at least once
        self.outstanding: dict[int, tuple[int, float]] = {}   # offset -> (length, sent_at)
        self.redo: list[int] = []               # offsets of chunks to ask again, first first
        self.received = 0                       # bytes counted
        self.retries = 0                        # late chunks asked again of the last holder


class Transfers:
    def __init__(self, *, chunk_size: int = 4 << 20, window: int = 4,
                 chunk_timeout: float = 10.0):
        assert chunk_size > 0 and window > 0 and chunk_timeout > 0
        self.chunk_size = chunk_size
        self.window = window
        self.chunk_timeout = chunk_timeout
        self._pulls: dict[bytes, _Pull] = {}
        self._stats = {"pulls_started": 0, "pulls_merged": 0, "pulls_done": 0,
                       "pulls_failed": 0, "pulls_cancelled": 0, "bytes_received": 0,
                       "resourced": 0}

    # -- what the shell tells us ------------------------------------------------

    def start(self, oid: bytes, size: int, holders: list[bytes], now: float) -> list:
        """Pull `oid` from `holders` (in order of preference).

        An object already being pulled is not pulled twice: its pull takes
        the holders it did not know and this returns [].
        """
        assert size >= 0, size
        holders = list(dict.fromkeys(holders))
        pull = self._pulls.get(oid)
        if pull is not None:
            self._stats["pulls_merged"] += 1
            known = {pull.current, *pull.candidates, *(h for h, _ in pull.failed)}
            pull.candidates += [h for h in holders if h not in known]
            return []
        self._stats["pulls_started"] += 1
        if size == 0:
            self._stats["pulls_done"] += 1
            return [PullDone(oid, 0)]
        if not holders:
            self._stats["pulls_failed"] += 1
            return [PullFailed(oid, f"no node holds object {oid.hex()}")]
        pull = self._pulls[oid] = _Pull(oid, size, holders)
        return self._fill(pull, now)

    def expects(self, holder: bytes, oid: bytes, offset: int, length: int) -> bool:
        """Does this chunk answer an outstanding request? If not, don't write it."""
        pull = self._pulls.get(oid)
        if pull is None or holder != pull.current:
            return False
        sent = pull.outstanding.get(offset)
        return sent is not None and sent[0] == length

    def on_chunk(self, holder: bytes, oid: bytes, offset: int, length: int,
                 now: float) -> list:
        """The shell has written this chunk: count it and spend its credit."""
        if not self.expects(holder, oid, offset, length):
            return []
        pull = self._pulls[oid]
        del pull.outstanding[offset]
        pull.received += length
        self._stats["bytes_received"] += length
        if pull.received == pull.size:
            del self._pulls[oid]
            self._stats["pulls_done"] += 1
            return [PullDone(oid, pull.size)]
        return self._fill(pull, now)

    def on_error(self, holder: bytes, oid: bytes, reason: str, now: float) -> list:
        """`holder` cannot serve `oid`."""
        pull = self._pulls.get(oid)
        if pull is None or not self._uses(pull, holder):
            return []
        return self._drop(pull, holder, reason, now)

    def on_holder_dead(self, holder: bytes, now: float) -> list:
        out = []
        for pull in list(self._pulls.values()):
            if self._uses(pull, holder):
                out += self._drop(pull, holder, "declared dead", now)
        return out

    def on_tick(self, now: float) -> list:
        """Drop the holder of every pull with a chunk unanswered for too long (the
        last holder: ask it again, a few times)."""
        out = []
        for pull in list(self._pulls.values()):
            late = [offset for offset, (_, sent_at) in pull.outstanding.items()
                    if now - sent_at > self.chunk_timeout]
            if not late:
                continue
            if not pull.candidates and pull.retries < LAST_HOLDER_RETRIES:
                pull.retries += 1
                for offset in late:
                    length = pull.outstanding[offset][0]
                    pull.outstanding[offset] = (length, now)
                    out.append(ChunkRequest(pull.current, pull.oid, offset, length))
                continue
            why = f"a chunk went unanswered for more than {self.chunk_timeout:g} s"
            out += self._drop(pull, pull.current, why, now)
        return out

    def cancel(self, oid: bytes) -> None:
        """Nobody needs `oid` any more; chunks still on their way are ignored."""
        if self._pulls.pop(oid, None) is not None:
            self._stats["pulls_cancelled"] += 1

    # -- queries ----------------------------------------------------------------

    def size_of(self, oid: bytes) -> int:
        """The size of an object being pulled (0 if it is not)."""
        pull = self._pulls.get(oid)
        return pull.size if pull is not None else 0

    def pulling(self, oid: bytes) -> bool:
        return oid in self._pulls

    def statistics(self) -> dict:
        return {**self._stats, "pulls_active": len(self._pulls)}

    def validate(self) -> None:
        """Invariants, for tests: each chunk is in one place, credits are used."""
        s = self._stats
        assert s["pulls_started"] == (s["pulls_done"] + s["pulls_failed"]
                                      + s["pulls_cancelled"] + len(self._pulls)), s
        for oid, pull in self._pulls.items():
            assert pull.oid == oid and 0 <= pull.received < pull.size
            holders = [pull.current, *pull.candidates]
            assert len(set(holders)) == len(holders), "a holder listed twice"
            assert not {h for h, _ in pull.failed} & set(holders), "a dropped holder kept"
            assert 0 <= pull.next_offset <= pull.size
            assert pull.next_offset % self.chunk_size == 0 or pull.next_offset == pull.size
            offsets = [*pull.outstanding, *pull.redo]
            assert len(set(offsets)) == len(offsets), "a chunk asked twice at once"
            for offset in offsets:
                assert offset % self.chunk_size == 0 and offset < pull.next_offset, offset
            for offset, (length, _) in pull.outstanding.items():
                assert length == self._length(pull, offset), (offset, length)
            # Every chunk asked so far is outstanding, to redo, or counted once.
            assert pull.received + sum(self._length(pull, o) for o in offsets) == pull.next_offset
            # No credit sits idle while there is something left to ask.
            assert len(pull.outstanding) <= self.window
            assert (len(pull.outstanding) == self.window
                    or (not pull.redo and pull.next_offset == pull.size))

    # -- internals --------------------------------------------------------------

    def _length(self, pull: _Pull, offset: int) -> int:
        return min(self.chunk_size, pull.size - offset)

    @staticmethod
    def _uses(pull: _Pull, holder: bytes) -> bool:
        return holder == pull.current or holder in pull.candidates

    def _fill(self, pull: _Pull, now: float) -> list:
        """Spend the free credits: chunks to redo first, then new ones."""
        out = []
        while len(pull.outstanding) < self.window:
            if pull.redo:
                offset = pull.redo.pop(0)
            elif pull.next_offset < pull.size:
                offset = pull.next_offset
                pull.next_offset += self._length(pull, offset)
            else:
                break
            length = self._length(pull, offset)
            pull.outstanding[offset] = (length, now)
            out.append(ChunkRequest(pull.current, pull.oid, offset, length))
        return out

    def _drop(self, pull: _Pull, holder: bytes, why: str, now: float) -> list:
        """Drop `holder` from `pull`; its outstanding chunks go to the next one."""
        pull.failed.append((holder, why))
        if holder != pull.current:
            pull.candidates.remove(holder)
            return []
        pull.redo[:0] = sorted(pull.outstanding)
        pull.outstanding.clear()
        if not pull.candidates:
            del self._pulls[pull.oid]
            self._stats["pulls_failed"] += 1
            tried = ", ".join(f"{h.hex()} ({why})" for h, why in pull.failed)
            return [PullFailed(pull.oid, f"no node holding object {pull.oid.hex()} "
                                         f"could serve it (tried: {tried})")]
        pull.current = pull.candidates.pop(0)
        self._stats["resourced"] += 1
        return self._fill(pull, now)
