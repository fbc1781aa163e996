"""The Targets table `run.py` prints after its main table: each target of
issue #11, the two figures it compares (both from the same run), their
ratio, the bound, and met / not met.

A target's figures come from a system's column (`results[system]["metrics"]`),
from the baselines measured in the same run (`bench/baselines.py`: raw
ZeroMQ ipc round trip, numpy copy, fresh-interpreter imports), and with
`run.py --all-targets` from `bench/cluster.py` (100 MB between two nodes,
zfabric and raw ZeroMQ) and `bench/scale.py` (tiny tasks on 1 and 4 nodes,
16 idle nodes) run by it in the same run. A target whose figures are
missing (a system skipped or failed, `--no-baselines`, no `--all-targets`)
reads "not measured", with the script that measures it.

Standard library only (run.py's startup children import nothing else).
"""
from __future__ import annotations

# (key, target as the issue words it, figure A, figure B, ratio, op, bound)
#   figure: (source, metric): source a system of run.py, "baselines", "cluster"
#   or "scale" (metric: a dotted path into that script's JSON); None: no figure
#   ratio "a/b": A / B; "b/a": B / A (a speed-up from two times);
#   "max": the larger of A and B; "a": A itself
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
    ("transfer_curve", "{cluster_mb} MB between two nodes at most 1.3x raw ZeroMQ over the same "
     "loopback (warm; both with CURVE)", ("cluster", "zfabric.transfer_warm_s"),
     ("cluster", "zmq-curve.transfer_warm_s"), "a/b", "<=", 1.3),
    ("transfer_plain", "{cluster_mb} MB between two nodes at most 1.3x raw ZeroMQ over the same "
     "loopback (warm; both plain TCP)", ("cluster", "zfabric-insecure.transfer_warm_s"),
     ("cluster", "zmq.transfer_warm_s"), "a/b", "<=", 1.3),
    ("idle_rss", "Idle resident memory of a node with 2 workers at most 1/5 of Ray's",
     ("zfabric", "idle_rss"), ("ray", "idle_rss"), "a/b", "<=", 0.2),
    ("scale_4_nodes", "Tiny-task throughput on 4 nodes at least that of one node "
     "(4 x 1 CPU against 1 x 2 CPUs)", ("scale", "throughput.configs.4x1.rate"),
     ("scale", "throughput.configs.1x2.rate"), "a/b", ">=", 1.0),
    ("scale_idle_cpu", "16 idle nodes: the node processes together under 10% of one core",
     ("scale", "idle.no_workers.cpu.nodes_pct"), None, "a", "<", 10.0),
    ("scale_idle_rss", "Memory per idle node without workers under 40 MB (RSS of the "
     "node process, the largest)", ("scale", "idle.no_workers.rss.max"),
     ("scale", "idle.no_workers.uss.max"), "a", "<", 40.0),
]

MEASURED_BY = {"cluster": "`run.py --all-targets` (runs `bench/cluster.py --only "
                          "zfabric,zfabric-insecure,zmq,zmq-curve --workloads transfer`)",
               "scale": "`run.py --all-targets` (runs `bench/scale.py --idle-nodes 16 "
                        "--configs 1x2,4x1 --no-workers`)"}
ELSEWHERE = [  # targets no run of run.py judges, and what measures them
    ("Scale in simulation: O(log N) convergence; per-node control traffic sublinear in N",
     "`bench/scale_sim.py`"),
]

LABEL = {"zfabric": "zfabric", "ray": "Ray", "processpool": "ProcessPool"}
BASELINE_LABEL = {"zmq_rtt": "raw ZeroMQ ipc round trip", "numpy_copy": "numpy copy",
                  "import_zfabric": '`python -c "import zfabric; zfabric.remote"`',
                  "import_deps": '`python -c "import zmq, cloudpickle, msgpack"`'}
METRIC_LABEL = {"throughput": "tasks/s", "rtt": "round trip", "chain": "chain",
                "startup_wall": "exec → exit", "big_put": "put", "big_get": "get {big_mb} MB",
                "tiny_get": "get 1 KB", "idle_rss": "idle RSS"}
OTHER_LABEL = {  # figures of cluster.py and scale.py: (label, unit)
    "zfabric.transfer_warm_s": ("zfabric, CURVE", "s"),
    "zmq-curve.transfer_warm_s": ("raw ZeroMQ, CURVE", "s"),
    "zfabric-insecure.transfer_warm_s": ("zfabric, plain TCP", "s"),
    "zmq.transfer_warm_s": ("raw ZeroMQ, plain TCP", "s"),
    "throughput.configs.4x1.rate": ("4 x 1 CPU", "tasks/s"),
    "throughput.configs.1x2.rate": ("1 x 2 CPUs", "tasks/s"),
    "idle.no_workers.cpu.nodes_pct": ("{idle_nodes} idle nodes", "%"),
    "idle.no_workers.rss.max": ("RSS, largest of {idle_nodes}", "MB"),
    "idle.no_workers.uss.max": ("USS, largest", "MB"),
}


def _path(obj, dotted):
    """obj['a']['b']... for 'a.b...'; None where missing."""
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _value(results, others, figure):
    if figure is None:
        return None
    source, metric = figure
    if source == "cluster":            # cluster.py's JSON: results.{system}.{figure}
        return _path(others.get("cluster") or {}, "results." + metric)
    if source in ("baselines", "scale"):
        return _path(others.get(source) or {}, metric)
    return (results.get(source) or {}).get("metrics", {}).get(metric)


def evaluate(results: dict, base: dict | None, params: dict,
             cluster: dict | None = None, scale: dict | None = None) -> list[dict]:
    """Each target with its two figures, their ratio and whether it is met
    (None: a figure is missing)."""
    others = {"baselines": base, "cluster": cluster, "scale": scale}
    fmt = dict(params, idle_nodes=_path(scale or {}, "idle.nodes") or 16,
               cluster_mb=_path(cluster or {}, "params.mb") or 100)
    rows = []
    for key, text, fa, fb, how, op, bound in TARGETS:
        a, b = _value(results, others, fa), _value(results, others, fb)
        row = {"key": key, "target": text.format(**fmt), "a": fa and list(fa),
               "b": fb and list(fb), "a_value": a, "b_value": b, "op": op, "bound": bound,
               "ratio": None, "met": None}
        if how == "a" and a is not None:
            row["ratio"] = a
        elif a is not None and b is not None:
            if how == "max":
                row["ratio"] = max(a, b)
            elif how == "a/b" and b:
                row["ratio"] = a / b
            elif how == "b/a" and a:
                row["ratio"] = b / a
        if key == "scale_idle_cpu" and fmt["idle_nodes"] != 16:
            row["ratio"] = None                  # the target is for 16 nodes
        if row["ratio"] is not None:
            r = row["ratio"]
            row["met"] = {">=": r >= bound, "<=": r <= bound, "<": r < bound}[op]
        rows.append(row)
    return rows


def _figure(fig, value, params):
    from run import fmt_rate, fmt_time           # bench/run.py's formats
    if fig is None:
        return ""
    source, metric = fig
    if source in ("cluster", "scale"):
        name, unit = OTHER_LABEL.get(metric, (metric, ""))
        name = name.format(**params)
        if value is None:
            return f"{name}: —"
        text = {"s": lambda v: fmt_time(v), "tasks/s": lambda v: fmt_rate(v, "tasks/s"),
                "%": lambda v: f"{v:.1f}% of one core", "MB": lambda v: f"{v:.1f} MB"}[unit](value)
        return f"{name}: {text}"
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
    b = row["bound"]
    if row["key"] == "get":
        return f"{op} 1 ms"
    if row["key"] == "scale_idle_cpu":
        return f"{op} {b:g}%"
    if row["key"] == "scale_idle_rss":
        return f"{op} {b:g} MB"
    return f"{op} {b:g}x" if b >= 1 else f"{op} {b:g}x (1/{1 / b:g})"


def _ratio(row):
    r = row["ratio"]
    if r is None:
        return "—"
    if row["key"] == "get":
        from run import fmt_time
        return f"slower of the two: {fmt_time(r)}"
    if row["key"] in ("scale_idle_cpu", "scale_idle_rss"):
        return "(the figure)"
    if abs(r - row["bound"]) < 0.01 * row["bound"]:      # 1.30x that is 1.304x: say so
        return f"{r:.3f}x"
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def markdown(rows: list[dict], base: dict | None, params: dict | None = None,
             scale: dict | None = None, cluster: dict | None = None) -> str:
    params = dict(params or {}, idle_nodes=_path(scale or {}, "idle.nodes") or 16)
    lines = ["**Targets** (issue #11; both figures of each row from this run)", "",
             "| target | zfabric | compared with | ratio | bound | met |",
             "|---|---|---|---|---|---|"]
    missing = set()
    for row in rows:
        fa = _figure(row["a"], row["a_value"], params)
        fb = _figure(row["b"], row["b_value"], params)
        met = "not measured" if row["met"] is None else ("**met**" if row["met"] else "not met")
        if row["met"] is None and row["a"] and row["a"][0] in MEASURED_BY:
            missing.add(row["a"][0])
        lines.append(f"| {row['target']} | {fa} | {fb} | {_ratio(row)} | {_bound(row)} | {met} |")
    lines.append("")
    for source in sorted(missing):
        lines.append(f"- Not measured in this run: measured by {MEASURED_BY[source]}.")
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
                     f"{params.get('rtt', 0):,} after {params.get('rtt_warmup', '?')} warm-up; "
                     "numpy copy: `a.copy()` of the same array as the put, median of "
                     f"{params.get('big_reps', '?')}; imports: fresh interpreters timed exec → "
                     f"exit, median of {params.get('import_reps', '?')} each, alternating "
                     "(`python -c pass`: "
                     + (f"{base['import_pass'] * 1e3:.0f} ms" if "import_pass" in base else "—")
                     + ").")
    if "cluster" not in missing and any(r["key"].startswith("transfer") and r["met"] is not None
                                        for r in rows):
        lines.append(f"- {_path(cluster or {}, 'params.mb') or 100} MB between nodes: "
                     "`bench/cluster.py`'s warm transfer (a task on "
                     "node B takes an array made on node A; median of its warm runs) against "
                     "raw ZeroMQ pushing the same bytes between two processes over loopback "
                     "into a new buffer, each pair with CURVE and without.")
    if "scale" not in missing and any(r["key"].startswith("scale") and r["met"] is not None
                                      for r in rows):
        lines.append("- Scale: `bench/scale.py` on this machine: tiny tasks from one driver on "
                     "LocalClusters of 4 nodes x 1 CPU and 1 node x 2 CPUs (medians of its "
                     "rounds); idle nodes with num_cpus=0 (no worker, no fork server), CPU time "
                     "of the node processes over a window after they settle, RSS per node "
                     "process (its USS beside it).")
    return "\n".join(lines)
