"""Where task output goes: the node's half of task output in the driver.

    node/logmon.py --WorkerOutput(runs)--> LogRouter.output: per job,
        the job's driver is attached here  --> Send(its listener, LogLines)
        it is attached to another node     --> PeerSend(that node, LogLines)
    a peer --LogLines--> LogRouter.from_peer --> Send(the job's listener, LogLines)
    a driver's log listener --Listen(job, on)--> LogRouter.listen: it is the job's
        listener from now on (or no more); answered with a LogLines without output
    a driver gone (ClientGone) --> its listener is forgotten

A job (`ids.job_id`) names a driver by its node and client id; its tasks,
and the tasks they submit, carry it in their `opts` ("job"), wherever they
run. A driver that asked for no output (`init(log_to_driver=False)`) gives
its tasks no job: their lines stay in the workers' log files. Lines with
nowhere to go (no listener, the job's node dead, or unknown: neither gossip
nor a task it spilled here told us where it is) are dropped and
counted in the fabric's `stats` (`log_lines_dropped`; `log_lines`: lines
routed). Owned by `Fabric`, which hands it these messages and events. Pure:
no I/O, no clock.
"""
from __future__ import annotations

from .. import ids
from .. import protocol as p
from ..protocol_checks import MAX_LOG_LINES
from . import effects as fx


class LogRouter:
    def __init__(self, node_id: bytes, address_of, stats: dict):
        self.node_id = node_id
        self.address_of = address_of   # (node id) -> a live peer's address, or None
        self.stats = stats
        stats.update(log_lines=0, log_lines_dropped=0)
        self.listeners: dict[bytes, bytes] = {}   # job -> its listener's client id

    def listen(self, client: bytes, msg: p.Listen) -> list:
        """A driver's listener starts (or stops) taking its job's output."""
        if msg.on:
            self.listeners[msg.job] = client
        elif self.listeners.get(msg.job) == client:
            del self.listeners[msg.job]
        return [fx.Send(client, p.LogLines(self.node_id, msg.job, []))]

    def client_gone(self, client: bytes) -> None:
        """A driver is gone: so is its listener."""
        self.listeners.pop(ids.job_id(self.node_id, client), None)

    def output(self, runs) -> list:
        """Lines our workers printed: to the listener of each job, here or on its node."""
        by_job: dict[bytes, list] = {}
        for job, name, pid, stream, lines, dropped in runs:
            by_job.setdefault(job, []).append([name, pid, stream, lines, dropped])
        out = []
        for job, output in by_job.items():
            node = ids.job_node(job)
            if node == self.node_id:
                out += self._deliver(job, self.node_id, output)
                continue
            address = self.address_of(node)
            if address is None:
                self._drop(output)
                continue
            self.stats["log_lines"] += _count(output)
            out += [fx.PeerSend(address, p.LogLines(self.node_id, job, part))
                    for part in _parts(output)]
        return out

    def from_peer(self, msg: p.LogLines) -> list:
        """Lines a peer's workers printed for a job of ours."""
        if ids.job_node(msg.job) != self.node_id:
            self._drop(msg.output)
            return []
        return self._deliver(msg.job, msg.sender, msg.output)

    def _deliver(self, job: bytes, sender: bytes, output: list) -> list:
        listener = self.listeners.get(job)
        if listener is None:
            self._drop(output)
            return []
        self.stats["log_lines"] += _count(output)
        return [fx.Send(listener, p.LogLines(sender, job, part)) for part in _parts(output)]

    def _drop(self, output: list) -> None:
        self.stats["log_lines_dropped"] += _count(output)


def _count(output: list) -> int:
    return sum(len(run[3]) + run[4] for run in output)


def _parts(output: list) -> list[list]:
    """The runs split so that no LogLines holds more than MAX_LOG_LINES lines."""
    parts, part, size = [], [], 0
    for name, pid, stream, lines, dropped in output:
        while True:
            room = MAX_LOG_LINES - size
            if len(lines) <= room:
                part.append([name, pid, stream, lines, dropped])
                size += len(lines)
                break
            part.append([name, pid, stream, lines[:room], dropped])
            parts.append(part)
            part, size, lines, dropped = [], 0, lines[room:], 0
    if part:
        parts.append(part)
    return parts


def goes_elsewhere(node_id: bytes, opts: dict | None) -> bool:
    """Do the lines of a task with these `opts` go to another node (its job's)?"""
    job = opts.get("job") if opts else None
    return job is not None and ids.job_node(job) != node_id
