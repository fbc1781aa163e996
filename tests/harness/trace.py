"""A checker of the Chrome trace event format, as `zf.timeline()` and
`zfabric timeline -o` must write it for Perfetto and chrome://tracing.

`check_trace(events)` raises AssertionError naming the first event that breaks
a rule, and returns the events by phase. The rules (Trace Event Format, the
JSON array form):
- every event is an object with a string "ph" among the phases we write
  ("X" complete, "M" metadata) and integer "pid" and "tid";
- "X": a string "name", numbers "ts" and "dur" with dur >= 0 (microseconds),
  ts >= 0, optional "cat" a string and "args" an object;
- "M": "name" one of process_name / thread_name / process_sort_index /
  thread_sort_index, "args" an object with a string "name" (or int
  "sort_index");
- every X event's pid has a process_name and its (pid, tid) a thread_name;
- no two process_name (or thread_name) events name the same pid (pid, tid);
- X events on one thread are properly nested: two that overlap, one inside
  the other (what Perfetto draws as a stack), never crossing.
The whole list must survive a JSON round trip unchanged.
"""
from __future__ import annotations

import json
from collections import defaultdict

META_NAMES = {"process_name", "thread_name", "process_sort_index", "thread_sort_index"}


def check_trace(events) -> dict[str, list[dict]]:
    assert type(events) is list, f"a trace is a JSON array, not {type(events).__name__}"
    assert json.loads(json.dumps(events)) == events, "the trace does not survive JSON"
    by_phase: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        assert type(e) is dict, f"an event is an object: {e!r}"
        assert e.get("ph") in ("X", "M"), f"unexpected phase: {e!r}"
        assert type(e.get("pid")) is int and type(e.get("tid")) is int, f"pid/tid ints: {e!r}"
        assert type(e.get("name")) is str, f"a name is a string: {e!r}"
        assert type(e.get("args", {})) is dict, f"args is an object: {e!r}"
        (_check_complete if e["ph"] == "X" else _check_meta)(e)
        by_phase[e["ph"]].append(e)
    _check_names(by_phase)
    _check_nesting(by_phase["X"])
    return by_phase


def _check_complete(e: dict) -> None:
    for key in ("ts", "dur"):
        assert type(e.get(key)) in (int, float) and e[key] >= 0, f"{key} a number >= 0: {e!r}"
    assert type(e.get("cat", "")) is str, f"cat is a string: {e!r}"


def _check_meta(e: dict) -> None:
    assert e["name"] in META_NAMES, f"unknown metadata event: {e!r}"
    args = e.get("args")
    if e["name"].endswith("_name"):
        assert type(args) is dict and type(args.get("name")) is str, f"no name: {e!r}"
    else:
        assert type(args) is dict and type(args.get("sort_index")) is int, f"bad index: {e!r}"


def _check_names(by_phase) -> None:
    processes = [e["pid"] for e in by_phase["M"] if e["name"] == "process_name"]
    threads = [(e["pid"], e["tid"]) for e in by_phase["M"] if e["name"] == "thread_name"]
    assert len(processes) == len(set(processes)), "a process named twice"
    assert len(threads) == len(set(threads)), "a thread named twice"
    for e in by_phase["X"]:
        assert e["pid"] in processes, f"an event outside any named process: {e!r}"
        assert (e["pid"], e["tid"]) in threads, f"an event outside any named thread: {e!r}"


def _check_nesting(complete: list[dict]) -> None:
    by_thread: dict[tuple, list] = defaultdict(list)
    for e in complete:
        by_thread[(e["pid"], e["tid"])].append(e)
    for spans in by_thread.values():
        spans.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[dict] = []
        for e in spans:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"] and not (
                    stack[-1]["ts"] == e["ts"]):
                stack.pop()
            if stack:
                top = stack[-1]
                assert e["ts"] + e["dur"] <= top["ts"] + top["dur"], (
                    f"{e!r} crosses the end of {top!r}")
            stack.append(e)


def process_names(events) -> dict[int, str]:
    return {e["pid"]: e["args"]["name"] for e in events
            if e["ph"] == "M" and e["name"] == "process_name"}


def thread_names(events) -> dict[tuple[int, int], str]:
    return {(e["pid"], e["tid"]): e["args"]["name"] for e in events
            if e["ph"] == "M" and e["name"] == "thread_name"}
