"""The Targets table `run.py` prints after its main table: each target of
issue #11 that one run of `run.py` can judge, the two figures it compares
(both from that run), their ratio, the bound, and met / not met.

A target's figures come from a system's column (`results[system]["metrics"]`)
or from the baselines measured in the same run (`bench/baselines.py`: raw
ZeroMQ ipc round trip, numpy copy, fresh-interpreter imports). A target
whose figures are missing (a system skipped or failed, `--no-baselines`)
reads "not measured". The targets measured by other scripts are listed
under the table with the script that measures them.

Standard library only (run.py's startup children import nothing else).
"""
from __future__ import annotations

# (key, target as the issue words it, figure A, figure B, ratio, op, bound)
#   figure: (source, metric): source a system of run.py or "baselines"
#   ratio "a/b": A / B; "b/a": B / A (a speed-up from two times)
TARGETS = [
    ("throughput_ray", "Tiny-task throughput at least 5x Ray's",
     ("zfabric", "throughput"), ("ray", "throughput"), "a/b", ">=", 5.0),
    ("throughput_pool", "Tiny-task throughput at least ProcessPoolExecutor's (same workers)",
     ("zfabric", "throughput"), ("processpool", "throughput"), "a/b", ">=", 1.0),
    ("rtt_ray", "Sync round trip at most 1/5 of Ray's",
     ("zfabric", "rtt"), ("ray", "rtt"), "a/b", "<=", 0.2),
    ("rtt_zmq", "Sync round trip at most 2x a raw ZeroMQ ipc round trip between two "
     "Python processes", ("zfabric", "rtt"), ("baselines", "zmq_rtt"), "a/b", "<=", 2.0),
    ("chain_ray", "{chain:,}-task chain at least 8x Ray's (speed: Ray's time / zfabric's)",
     ("zfabric", "chain"), ("ray", "chain"), "b/a", ">=", 8.0),
    ("startup_ray", "Startup, whole process exec → exit, at most 1/10 of Ray's",
     ("zfabric", "startup_wall"), ("ray", "startup_wall"), "a/b", "<=", 0.1),
    ("startup_pool", "Startup, whole process exec → exit, at most 4x ProcessPoolExecutor's",
     ("zfabric", "startup_wall"), ("processpool", "startup_wall"), "a/b", "<=", 4.0),
    ("import", 'Import at most 3x `python -c "import zmq, cloudpickle, msgpack"` '
     "(fresh interpreters, exec → exit)",
     ("baselines", "import_zfabric"), ("baselines", "import_deps"), "a/b", "<=", 3.0),
    ("put", "Put of {big_mb} MB at most 2x a numpy copy of it",
     ("zfabric", "big_put"), ("baselines", "numpy_copy"), "a/b", "<=", 2.0),
    ("get", "Get under 1 ms whatever the size ({big_mb} MB and 1 KB)",
     ("zfabric", "big_get"), ("zfabric", "tiny_get"), "max", "<", 1e-3),
    ("idle_rss", "Idle resident memory of a node with 2 workers at most 1/5 of Ray's",
     ("zfabric", "idle_rss"), ("ray", "idle_rss"), "a/b", "<=", 0.2),
]

ELSEWHERE = [  # targets no run of run.py can judge, and what measures them
    ("100 MB between two nodes at most 1.3x raw ZeroMQ over the same loopback",
     "`bench/cluster.py --only zfabric,zmq` (zfabric's warm transfer / raw ZeroMQ's)"),
    ("Scale on one machine: tiny tasks on 4 nodes ≥ 1 node; 16 idle nodes < 10% of one "
     "core; < 40 MB per idle node without workers", "`bench/scale.py`"),
    ("Scale in simulation: O(log N) convergence; per-node control traffic sublinear in N",
     "`bench/scale_sim.py`"),
]

LABEL = {"zfabric": "zfabric", "ray": "Ray", "processpool": "ProcessPool",
         "baselines": ""}
BASELINE_LABEL = {"zmq_rtt": "raw ZeroMQ ipc round trip", "numpy_copy": "numpy copy",
                  "import_zfabric": '`python -c "import zfabric"`',
                  "import_deps": '`python -c "import zmq, cloudpickle, msgpack"`'}
METRIC_LABEL = {"throughput": "tasks/s", "rtt": "round trip", "chain": "chain",
                "startup_wall": "exec → exit", "big_put": "put", "big_get": "get {big_mb} MB",
                "tiny_get": "get 1 KB", "idle_rss": "idle RSS"}


def _value(results, base, source, metric):
    if source == "baselines":
        return (base or {}).get(metric)
    res = results.get(source) or {}
    return res.get("metrics", {}).get(metric)


def evaluate(results: dict, base: dict | None, params: dict) -> list[dict]:
    """Each target with its two figures, their ratio and whether it is met
    (None: a figure is missing)."""
    rows = []
    for key, text, fa, fb, how, op, bound in TARGETS:
        a, b = _value(results, base, *fa), _value(results, base, *fb)
        row = {"key": key, "target": text.format(**params), "a": list(fa), "b": list(fb),
               "a_value": a, "b_value": b, "op": op, "bound": bound, "ratio": None, "met": None}
        if a is not None and b is not None:
            if how == "max":
                row["ratio"] = max(a, b)
            elif how == "a/b" and b:
                row["ratio"] = a / b
            elif how == "b/a" and a:
                row["ratio"] = b / a
        if row["ratio"] is not None:
            r = row["ratio"]
            row["met"] = {">=": r >= bound, "<=": r <= bound, "<": r < bound}[op]
        rows.append(row)
    return rows


def _figure(source, metric, value, params):
    from run import fmt_rate, fmt_time           # bench/run.py's formats
    if value is None:
        text = "—"
    elif metric == "throughput":
        text = fmt_rate(value, "tasks/s")
    elif metric == "idle_rss":
        text = f"{value:.0f} MB"
    else:
        text = fmt_time(value)
    if source == "baselines":
        return f"{BASELINE_LABEL.get(metric, metric)}: {text}"
    what = METRIC_LABEL.get(metric, metric).format(**params)
    return f"{LABEL[source]} {what}: {text}" if what != "tasks/s" else f"{LABEL[source]}: {text}"


def _bound(row):
    op = {">=": "≥", "<=": "≤", "<": "<"}[row["op"]]
    if row["key"] == "get":
        return f"{op} 1 ms"
    b = row["bound"]
    return f"{op} {b:g}x" if b >= 1 else f"{op} {b:g}x (1/{1 / b:g})"


def _ratio(row):
    r = row["ratio"]
    if r is None:
        return "—"
    if row["key"] == "get":
        from run import fmt_time
        return f"slower of the two: {fmt_time(r)}"
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def markdown(rows: list[dict], base: dict | None, params: dict | None = None) -> str:
    params = params or {}
    lines = ["**Targets** (issue #11; both figures of each row from this run)", "",
             "| target | zfabric | compared with | ratio | bound | met |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        fa = _figure(*row["a"], row["a_value"], params)
        fb = _figure(*row["b"], row["b_value"], params)
        met = "not measured" if row["met"] is None else ("**met**" if row["met"] else "not met")
        lines.append(f"| {row['target']} | {fa} | {fb} | {_ratio(row)} | {_bound(row)} | {met} |")
    lines.append("")
    for text, where in ELSEWHERE:
        lines.append(f"- {text}: measured by {where}, not by this script.")
    if base and base.get("errors"):
        for name, err in base["errors"].items():
            lines.append(f"- baseline `{name}` error: {err}")
    if base and base.get("import_errors"):
        for name, err in base["import_errors"].items():
            lines.append(f"- `{base['import_commands'][name]}` failed: {err}")
    if base and "zmq_rtt" in base:
        lines.append("- Raw ZeroMQ round trip: a 16-byte message, DEALER → ROUTER → back, "
                     "over ipc:// between two Python processes, median of "
                     f"{params.get('rtt', '?'):,} after {params.get('rtt_warmup', '?')} warm-up; "
                     "numpy copy: `a.copy()` of the same array as the put, median of "
                     f"{params.get('big_reps', '?')}; imports: fresh interpreters timed exec → "
                     f"exit, median of {params.get('import_reps', '?')} each, alternating "
                     "(`python -c pass`: "
                     + (f"{base['import_pass'] * 1e3:.0f} ms" if "import_pass" in base else "—")
                     + ").")
    return "\n".join(lines)
