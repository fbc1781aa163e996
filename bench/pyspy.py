"""py-spy around a benchmark: sample some processes while it runs, then say
where each spent its CPU (the top functions by self time, and by total time).

    profs = pyspy.start({"node": pid1, "worker-1": pid2}, out_dir=d)   # until stopped
    ...                                   # the workload runs meanwhile
    summaries = pyspy.finish(profs, stop=True)  # SIGINT: py-spy writes what it has
    # or start(..., seconds=10) and finish(profs): each stops by itself
    print(pyspy.text(summaries))

`py-spy record --format raw --function --nonblocking` (collapsed stacks, one
line per distinct stack with its sample count; frames aggregated by function,
the process not paused to sample). Without `--idle`, py-spy drops samples of
threads waiting in a system call (poll, recv), so the counts are where the
process was on the CPU. The self time of a function is the samples where it
is the innermost frame; its total time the samples where it is on the stack.
py-spy's idea of idle does not always catch a wait in zmq's `Poller.poll`:
read that function's samples as mostly waiting (or sample with `gil=True`).
py-spy attaches with ptrace: it needs root or ptrace_scope 0. Used by
cpu_split.py and scale.py; standard library only.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def available() -> str | None:
    """The py-spy executable, or None."""
    return shutil.which("py-spy")


def start(pids: dict, out_dir: str, seconds: float | None = None, rate: int = 100,
          gil: bool = False) -> dict:
    """Start one `py-spy record` per process ({name: pid}) for `seconds`
    (None: until `finish(stop=True)`); `gil`: only samples holding the GIL
    (drops a thread waiting in zmq's poll, which py-spy otherwise often counts
    as on the CPU, and also C code that releases the GIL: zmq's send).
    Returns {name: (Popen, raw path, log path)}."""
    exe = available()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    os.makedirs(out_dir, exist_ok=True)
    profs = {}
    for name, pid in pids.items():
        raw = os.path.join(out_dir, f"{name}.raw.txt")
        logp = os.path.join(out_dir, f"{name}.pyspy.log")
        with open(logp, "w") as log:        # (cwd out_dir: its log names no path)
            proc = subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--duration",
                 str(3600 if seconds is None else max(1, round(seconds))),
                 "--rate", str(rate), "--format", "raw", "--function", "--nonblocking",
                 "-o", os.path.basename(raw)] + (["--gil"] if gil else []), cwd=out_dir,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        profs[name] = (proc, raw, logp)
    return profs


def finish(profs: dict, stop: bool = False, timeout: float = 60.0, top: int = 15) -> dict:
    """Wait for every py-spy started by `start` (`stop`: first send each one
    SIGINT, on which it writes what it sampled; one still running after
    `timeout` is stopped by its PID) and summarize each profile."""
    out = {}
    if stop:
        for proc, _, _ in profs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
    for name, (proc, raw, logp) in profs.items():
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        summary = summarize(raw, top) if os.path.exists(raw) else {"samples": 0}
        if not os.path.exists(raw):
            with open(logp, errors="replace") as fh:
                summary["error"] = fh.read().strip().splitlines()[-1:] or ["no output"]
        else:
            os.unlink(logp)                  # kept only when py-spy wrote nothing
        summary["raw"] = raw
        out[name] = summary
    return out


def short(frame: str) -> str:
    """'func (path/to/file.py:12)' -> 'func (file.py:12)' with the package path
    kept from zfabric/ or site-packages/ on."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("zfabric/", "site-packages/", "lib/python"):
        i = path.rfind(marker)
        if i >= 0:
            path = path[i:].replace("site-packages/", "")
            break
    else:
        path = os.path.basename(path)
    line = f":{m.group('line')}" if m.group("line") else ""
    return f"{m.group('func')} ({path}{line})"


def summarize(raw_path: str, top: int = 15) -> dict:
    """Samples in all, the `top` functions by self samples ([function, self,
    total]) and the `top` by total samples ([function, total])."""
    self_c, total_c = Counter(), Counter()
    samples = 0
    with open(raw_path, errors="replace") as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            samples += n
            frames = [short(f) for f in stack.split(";") if f]
            if not frames:
                continue
            self_c[frames[-1]] += n
            for f in set(frames):
                total_c[f] += n
    return {"samples": samples,
            "self": [[f, c, total_c[f]] for f, c in self_c.most_common(top)],
            "total": total_c.most_common(top)}


def text(summaries: dict, rate: int = 100) -> str:
    """A plain-text report: per process, its top functions by self time."""
    lines = []
    for name, s in summaries.items():
        n = s.get("samples", 0)
        lines.append(f"== {name}: {n} samples on the CPU ({n / rate:.2f} s at {rate} Hz)"
                     + (f" -- {s['error']}" if s.get("error") else ""))
        if not n:
            lines.append("")
            continue
        lines.append("   self%  total%  function")
        for func, c, tot in s["self"]:
            lines.append(f"  {100 * c / n:6.1f}  {100 * tot / n:6.1f}  {func}")
        lines.append("  -- by total (inclusive) time:")
        for func, c in s["total"][:10]:
            lines.append(f"          {100 * c / n:6.1f}  {func}")
        lines.append("")
    return "\n".join(lines)
