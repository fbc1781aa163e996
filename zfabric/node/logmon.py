"""Reading what workers print: the node's shell for task output in the driver.

    zygote._child: a worker's fds 1 and 2 --> {session}/logs/worker-{id}.out, .err
    worker (Worker.run): before a task of another job or function than the
    last, a marker line on both: MARKER pid job-hex name
    NodeLoop --SpawnWorker--> add(wid): the files, made and opened for reading
    NodeLoop --every tick, a worker's TaskDone (its lines before its result;
        while the node has peers), its exit, a listener leaving--> read_*()
        --> runs --> ev.WorkerOutput
        --> Fabric (core/logroute.py) --> the job's driver

Owns the read end of every worker's two log files (kept whole in the session
dir: the full logs) and where each stands: the bytes of a line not ended
yet, and the task (job, function name, pid) its last marker named, to which
the lines after it belong. Lines before any marker, or of a task without a
job (its driver asked for none), are only read past. C-level output lands
in the same files and is attributed the same way.

Bounded: at most `read_bytes` of each file per read; a file more than
`max_behind` bytes behind is skipped ahead to its last `read_bytes` (its
markers still read), and the lines skipped are counted (`dropped`) for the
driver to be told. A line longer than MAX_LINE is cut. A task that prints
nothing costs nothing here (with peers: two reads at end of file when it ends).
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("zfabric.node")
MARKER = b"::zfabric-task:: "
MAX_LINE = 16 << 10     # longer lines are cut into pieces of this size
SKIP_CHUNK = 1 << 20    # bytes read at once while skipping ahead
STREAMS = ((1, "out"), (2, "err"))


def marker(pid: int, job: bytes, name: str) -> bytes:
    """The line a worker writes to both files before a task of `job` and `name`."""
    return b"%s%d %s %s\n" % (MARKER, pid, job.hex().encode() or b"-",
                              name.replace("\n", " ").encode("utf-8", "replace"))


class _Stream:
    """One log file of one worker, and where its reading stands."""
    __slots__ = ("fd", "number", "carry", "job", "name", "pid", "dropped", "cut")

    def __init__(self, fd: int, number: int):
        self.fd = fd
        self.number = number
        self.carry = b""        # the start of a line not ended yet
        self.job = b""          # the task the lines belong to (from the last marker)
        self.name = ""
        self.pid = 0
        self.dropped = 0        # lines skipped, not yet reported
        self.cut = False        # a skip ended inside a line (counted): read past its rest


class LogMonitor:
    def __init__(self, log_dir: str, read_bytes: int, max_behind: int):
        self.log_dir = log_dir
        self.read_bytes = read_bytes
        self.max_behind = max(max_behind, read_bytes)
        os.makedirs(log_dir, mode=0o700, exist_ok=True)
        self._workers: dict[bytes, tuple[_Stream, _Stream]] = {}   # worker id -> out, err

    def path(self, wid: str, stream: str) -> str:
        return os.path.join(self.log_dir, f"worker-{wid}.{stream}")

    def add(self, wid: str) -> None:
        """A worker is about to start: make its files and open them for reading."""
        key = wid.encode()
        self._close(key)
        streams = []
        try:
            for number, ext in STREAMS:
                fd = os.open(self.path(wid, ext), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                streams.append(_Stream(fd, number))
        except OSError as e:   # (out of fds, a full disk: its output is not passed on)
            log.warning("cannot read the output of worker %s: %s", wid, e)
            for s in streams:
                os.close(s.fd)
            return
        self._workers[key] = tuple(streams)

    def remove(self, wid: str) -> list:
        """A worker exited: what it printed last; its files stay."""
        key = wid.encode()
        runs = self.read_worker(key, drain=True)
        for s in self._workers.get(key, ()):
            if s.carry:   # its last line, without a newline
                self._lines(s, s.carry, runs, True)
                s.carry = b""
        self._close(key)
        return runs

    def read_worker(self, key: bytes, drain: bool = True) -> list:
        """What one worker (its client id) printed since the last read; with
        `drain`, to the end of its files (skipping ahead if far behind)."""
        streams = self._workers.get(key)
        if streams is None:
            return []
        runs: list = []
        for s in streams:
            self._read(s, runs, drain)
        return runs

    def read_all(self, drain: bool = False) -> list:
        """What every worker printed since the last read: at most `read_bytes` of
        each file (a tick's share), or with `drain` all of it."""
        runs: list = []
        for streams in self._workers.values():
            for s in streams:
                self._read(s, runs, drain)
        return runs

    def close(self) -> None:
        for key in list(self._workers):
            self._close(key)

    def _close(self, key: bytes) -> None:
        for s in self._workers.pop(key, ()):
            os.close(s.fd)

    # -- reading -------------------------------------------------------------------------

    def _read(self, s: _Stream, runs: list, drain: bool) -> None:
        size = self.read_bytes
        try:   # (a drain is bounded too: a writer faster than us cannot keep us here)
            for _ in range(self.max_behind // size + 2):
                data = os.read(s.fd, size)
                if len(data) == size:
                    behind = os.fstat(s.fd).st_size - os.lseek(s.fd, 0, os.SEEK_CUR)
                    if behind > self.max_behind:
                        self._skip(s, data, behind - size, runs)
                        continue   # (its last read_bytes follow)
                if data:
                    self._feed(s, data, runs, True)
                if not drain or len(data) < size:
                    return
        except OSError:   # (a file removed under us reads as nothing more)
            return

    def _skip(self, s: _Stream, data: bytes, skip: int, runs: list) -> None:
        """Read past `skip` bytes after `data`, keeping only their markers and the
        count of their lines; the rest of the file is read as usual later."""
        self._feed(s, data, runs, False)
        while skip > 0:
            data = os.read(s.fd, min(skip, SKIP_CHUNK))
            if not data:
                break
            skip -= len(data)
            self._feed(s, data, runs, False)
        if s.carry:   # the line cut by the skip: counted, its rest read past
            self._lines(s, s.carry, runs, False)
            s.carry, s.cut = b"", True
        self._report_dropped(s, runs)

    def _feed(self, s: _Stream, data: bytes, runs: list, keep: bool) -> None:
        """New bytes of a file: its complete lines, split at markers."""
        if s.cut:   # the rest of a line a skip counted already
            i = data.find(b"\n")
            if i < 0:
                return
            data, s.cut = data[i + 1:], False
        if s.carry:
            data = s.carry + data
        end = data.rfind(b"\n") + 1
        s.carry = data[end:]
        if len(s.carry) > MAX_LINE:   # too long a line: cut it here
            end, s.carry = len(data), b""
        if not end:
            return
        body = data[:end] if end < len(data) else data
        pos = 0
        while True:
            i = body.find(MARKER, pos)
            if i < 0:
                if pos < len(body):
                    self._lines(s, body[pos:] if pos else body, runs, keep)
                return
            if i > pos:   # (a line without its newline just before a marker: a line still)
                self._lines(s, body[pos:i], runs, keep)
            j = body.find(b"\n", i)
            j = len(body) if j < 0 else j
            self._marker(s, body[i + len(MARKER):j], runs)
            pos = j + 1

    def _marker(self, s: _Stream, text: bytes, runs: list) -> None:
        self._report_dropped(s, runs)
        try:
            pid, job, name = text.decode("utf-8", "replace").split(" ", 2)
            s.pid, s.job, s.name = int(pid), (b"" if job == "-" else bytes.fromhex(job)), name
        except ValueError:   # a user's line that merely looks like one: not ours
            pass

    def _lines(self, s: _Stream, chunk: bytes, runs: list, keep: bool) -> None:
        if not s.job:
            return
        if not keep:
            s.dropped += chunk.count(b"\n") + (not chunk.endswith(b"\n"))
            return
        lines = chunk.decode("utf-8", "replace").split("\n")
        if chunk.endswith(b"\n"):
            lines.pop()
        if len(chunk) > MAX_LINE:   # (a line that came whole can be too long too)
            lines = [line[i:i + MAX_LINE] for line in lines
                     for i in range(0, max(len(line), 1), MAX_LINE)]
        last = runs[-1] if runs else None
        if last is not None and last[0] == s.job and last[1] == s.name and \
                last[2] == s.pid and last[3] == s.number and not s.dropped:
            last[4].extend(lines)
        else:
            runs.append([s.job, s.name, s.pid, s.number, lines, s.dropped])
            s.dropped = 0

    def _report_dropped(self, s: _Stream, runs: list) -> None:
        if s.dropped and s.job:
            runs.append([s.job, s.name, s.pid, s.number, [], s.dropped])
        s.dropped = 0
