"""`python -m zfabric.node` (also the console script `zfabric`): start, stop and inspect nodes.

    start --head | --address tcp://H:P   start a node (daemonized unless --block)
    status [--address tcp://H:P] [--json]  one line per node, totals, pending demands
    stop                                 stop the nodes started from this machine
    timeline -o trace.json               Chrome trace of finished tasks
    memory [--json] [--sort-by size|node] [--group-by node]
                                         objects: size, nodes, reference holders, spilled

Errors print one line and exit non-zero; no tracebacks for user mistakes.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

from ..config import ADDRESS_ENV, Config
from ..core.memview import SORT_KEYS
from ..exceptions import AuthenticationError, ZFabricError
from . import launch
from . import report
from .report import fmt_bytes as _fmt_bytes

DEFAULT_PORT = 7380
INSECURE_WARNING = ("WARNING: this cluster runs with --insecure-no-auth: its TCP ports are "
                    "neither authenticated nor encrypted, and anyone who reaches them can "
                    "run code on it")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not a usage dump
        self.exit(2, f"zfabric: error: {message} (see `zfabric {self.prog.split()[-1]} --help`)\n"
                  if " " in self.prog else f"zfabric: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zfabric", description="Start, stop and inspect zfabric nodes.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    start = sub.add_parser("start", help="start a node on this machine")
    where = start.add_mutually_exclusive_group()
    where.add_argument("--head", action="store_true", help="start the first node of a cluster")
    where.add_argument("--address", help="join the cluster of the node at tcp://HOST:PORT")
    start.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    start.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    start.add_argument("--num-cpus", type=float, default=None, help="CPUs to offer (default: all cores)")
    start.add_argument("--num-gpus", type=int, default=0,
                       help="GPUs to offer, declared, not detected (default 0)")
    start.add_argument("--resources", default="{}", help='custom resources as JSON, e.g. \'{"gpu": 1}\'')
    start.add_argument("--object-store-memory", type=int, default=None, metavar="BYTES",
                       help="object store capacity (default 30%% of RAM)")
    _dashboard_arguments(start)
    start.add_argument("--cluster-key", default=None, metavar="FILE",
                       help="the cluster key file (a first node creates it if missing; "
                            "default: a new key in the session dir, or, to join, the key of "
                            "a node of that cluster on this machine)")
    start.add_argument("--insecure-no-auth", action="store_true",
                       help="no authentication or encryption on TCP: anyone who reaches the "
                            "ports can run code as you (only on a network you trust)")
    start.add_argument("--block", action="store_true", help="stay in the foreground")

    status = sub.add_parser("status", help="show the cluster's nodes")
    status.add_argument("--address", default=None)
    status.add_argument("--json", action="store_true", help="print the records as JSON")
    sub.add_parser("stop", help="stop the nodes started from this machine")
    timeline = sub.add_parser("timeline", help="write a Chrome trace of finished tasks")
    timeline.add_argument("-o", "--output", required=True)
    timeline.add_argument("--address", default=None)
    memory = sub.add_parser("memory", help="show objects and store use")
    memory.add_argument("--address", default=None)
    memory.add_argument("--json", action="store_true", help="print the records as JSON")
    memory.add_argument("--sort-by", choices=SORT_KEYS, default="size")
    memory.add_argument("--group-by", choices=["node"], default=None)

    serve = sub.add_parser("_serve")  # the node process itself (started by spawn_node)
    serve.add_argument("--ready-fd", type=int, default=None)
    serve.add_argument("--config", required=True)
    serve.add_argument("--num-cpus", type=float, required=True)
    serve.add_argument("--resources", default="{}")
    serve.add_argument("--object-store-memory", type=int, default=None)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--embedded-driver-pid", type=int, default=None)
    serve.add_argument("--join", action="append", default=[], metavar="ADDRESS")
    serve.add_argument("--insecure-no-auth", action="store_true")
    _dashboard_arguments(serve)
    return parser


def _dashboard_arguments(parser) -> None:
    dash = parser.add_mutually_exclusive_group()
    dash.add_argument("--dashboard-port", type=int, default=None, metavar="P",
                      help="the dashboard's port (default 8265, or a free port when that is "
                           "taken; 0 picks a free one)")
    dash.add_argument("--no-dashboard", action="store_true", help="serve no dashboard")
    parser.add_argument("--dashboard-host", default=None, metavar="H",
                        help="address the dashboard listens on (default 127.0.0.1)")


class UsageError(Exception):
    """A mistake of the user's: printed as one line."""


def parse_resources(text: str) -> dict:
    try:
        res = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--resources is not valid JSON: {e}") from None
    if not isinstance(res, dict):
        raise UsageError("--resources must be a JSON object such as '{\"gpu\": 1}'")
    for k, v in res.items():
        if k in ("CPU", "GPU"):
            raise UsageError(f"give {k}s with --num-{k.lower()}s, not in --resources")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise UsageError(f"resource {k!r} must be a non-negative number, got {v!r}")
    return {k: float(v) for k, v in res.items()}


def _node_resources_of(args) -> dict:
    """Check `start`'s flags for the new node (UsageError for a bad one); its resources."""
    if args.num_cpus is not None and args.num_cpus < 0:
        raise UsageError("--num-cpus must be >= 0")
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be between 0 and 65535")
    if args.object_store_memory is not None and args.object_store_memory <= 0:
        raise UsageError("--object-store-memory must be a positive number of bytes")
    resources = parse_resources(args.resources)
    if args.num_gpus < 0:
        raise UsageError("--num-gpus must be >= 0")
    if args.num_gpus:
        resources["GPU"] = float(args.num_gpus)
    return resources


def cmd_start(args) -> int:
    config = Config.from_env()
    if args.cluster_key:
        if args.insecure_no_auth:
            raise UsageError("--cluster-key and --insecure-no-auth contradict each other")
        config = config.replace(cluster_key=os.path.abspath(args.cluster_key))
    join = []
    if not args.head:
        address = args.address or os.environ.get(ADDRESS_ENV)
        if not address or address == "auto":
            raise UsageError("say --head to start the first node, "
                             "or --address tcp://HOST:PORT to join a cluster")
        try:
            join = [launch.check_address(address)]
        except ValueError as e:
            raise UsageError(str(e)) from None
    resources = _node_resources_of(args)
    dashboard = _dashboard_of(args)
    num_cpus = args.num_cpus if args.num_cpus is not None else float(os.cpu_count() or 1)
    try:
        if join:
            config = launch.prepare_join(config, join[0], args.insecure_no_auth)
        proc, info = launch.spawn_node(
            config, num_cpus=num_cpus, resources=resources,
            object_store_memory=args.object_store_memory, host=args.host, port=args.port,
            embedded=False, join=join, insecure=args.insecure_no_auth, dashboard=dashboard)
    except (launch.NodeStartError, AuthenticationError, ConnectionError) as e:
        raise UsageError(str(e)) from None
    print(f"address: {info['address']}")
    if info.get("dashboard_url"):
        print(f"dashboard: {info['dashboard_url']}")
    if info["cluster_key"]:
        print(f"cluster key: {info['cluster_key']} (whoever can read it can run code on "
              "this cluster; copy it to the machines that join, mode 0600)")
        how = f"--address {info['address']} --cluster-key {info['cluster_key']}"
    else:
        print(INSECURE_WARNING, file=sys.stderr)
        how = f"--address {info['address']} --insecure-no-auth"
    print(f"To add a node to this cluster, run on the machine that joins:\n"
          f"  python -m zfabric.node start {how}")
    if info["host"].startswith("127.") or info["host"] in ("localhost", "::1"):
        print(f"  (this node listens on {info['host']} only: for other machines, start it "
              "with --host 0.0.0.0 or this machine's address)")
    print("To use it from Python on this machine:\n  zf.init(address=\"auto\")")
    print(f"node {info['node_id'][:12]} pid {info['pid']}, session {info['session_dir']}",
          flush=True)
    if args.block:
        def forward(signum, frame):
            proc.send_signal(signal.SIGTERM)
        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        return proc.wait()
    return 0


def _dashboard_of(args) -> tuple | None:
    """spawn_node's `dashboard` from the flags: (host, port), or None."""
    if args.dashboard_port is not None and not 0 <= args.dashboard_port <= 65535:
        raise UsageError("--dashboard-port must be between 0 and 65535")
    return None if args.no_dashboard else (args.dashboard_host or "", args.dashboard_port)


def _tool_client(address: str | None):
    return _connect(_local_nodes(address)[0])


def _local_nodes(address: str | None) -> list[dict]:
    """Records of the nodes started from this machine (the one at `address`)."""
    config = Config.from_env()
    nodes = launch.find_local_nodes(config)
    address = address or os.environ.get(ADDRESS_ENV)
    if address and address != "auto":
        nodes = [n for n in nodes if n["address"] == address]
        if not nodes:
            raise UsageError(f"no zfabric node started from this machine listens at {address}")
    if not nodes:
        raise UsageError("no zfabric node is running on this machine "
                         "(start one with `python -m zfabric.node start --head`)")
    return nodes


def _connect(record: dict):
    from .client import Client
    try:
        return Client(record["ipc"], "tool", connect_timeout=5.0)
    except ConnectionError as e:
        raise UsageError(str(e)) from None


def cmd_status(args) -> int:
    client = _tool_client(args.address)
    try:
        status = client.request("status")
    finally:
        client.close()
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    rows = status["nodes"]
    print(f"{'node':<14}{'address':<24}{'state':<9}{'CPUs used/total':<17}"
          f"{'store used/total':<24}{'spilled':<12}{'tasks queued/running'}")
    tot_cpu = used_cpu = 0.0
    alive = 0
    for s in rows:
        total = s["Resources"].get("CPU", 0.0)
        used = total - s["available"].get("CPU", 0.0)
        if s["Alive"]:
            alive += 1
            tot_cpu += total
            used_cpu += used
        addr = f"{s['NodeManagerAddress']}:{s['NodeManagerPort']}"
        store = f"{_fmt_bytes(s['store_used'])}/{_fmt_bytes(s['store_capacity'])}"
        cpus = f"{used:g}/{total:g}"
        spilled = _fmt_bytes(s.get("spilled_bytes", 0))
        me = " (this node)" if s["NodeID"] == status["self"] else ""
        print(f"{s['NodeID'][:12]:<14}{addr:<24}{s['State'].lower():<9}{cpus:<17}"
              f"{store:<24}{spilled:<12}{s['tasks_queued']}/{s['tasks_running']}{me}")
        if s.get("spill_error"):
            print(f"  spilling to disk failed: {s['spill_error']}")
        for demand in s.get("pending_demand", []):
            print(f"  pending demand no live node can meet: {demand}")
    print(f"cluster: {alive} node(s) alive of {len(rows)}, {used_cpu:g}/{tot_cpu:g} CPUs in use")
    print("\n".join(report.demand_lines(status)))
    for info in launch.find_local_nodes(Config.from_env()):
        if info["node_id"] == status["self"] and info.get("dashboard_url"):
            print(f"dashboard: {info['dashboard_url']}")
    insecure = [s["NodeID"][:12] for s in rows if s["Alive"] and s.get("auth") == "none"]
    if insecure:
        print(f"{INSECURE_WARNING} (node(s) {', '.join(insecure)})")
    return 0


def cmd_stop(args) -> int:
    config = Config.from_env()
    nodes = launch.find_local_nodes(config)
    for info in nodes:
        try:
            os.kill(info["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    for info in nodes:
        while launch.pid_is_node(info["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if launch.pid_is_node(info["pid"]):
            os.kill(info["pid"], signal.SIGKILL)
        # a node that could not clean up after itself: do it for it
        from . import store
        store.remove_dir(info["store_dir"])
        if info.get("spill_dir"):
            store.remove_dir(info["spill_dir"])
        import shutil
        shutil.rmtree(info["session_dir"], ignore_errors=True)
        try:
            os.unlink(os.path.join(launch.node_records_dir(config), f"{info['node_id']}.json"))
        except FileNotFoundError:
            pass
    print(f"stopped {len(nodes)} node(s)")
    return 0


def cmd_timeline(args) -> int:
    client = _tool_client(args.address)
    try:
        events = client.request("timeline")
    finally:
        client.close()
    with open(args.output, "w") as f:
        json.dump(events, f)
    print(f"wrote {len(events)} events to {args.output} (open in chrome://tracing or Perfetto)")
    return 0


def cmd_memory(args) -> int:
    """Every node of the cluster started from this machine lists what it knows
    in full; other machines' objects come as the first node's GCS shows them."""
    records = _local_nodes(args.address)
    client = _connect(records[0])
    try:
        status, answers = client.request("status"), [client.request("memory")]
    finally:
        client.close()
    alive = {s["NodeID"] for s in status["nodes"] if s["Alive"]} - {status["self"]}
    for record in records[1:]:
        if record["node_id"] in alive:
            try:
                answers.append(_ask(record, "memory"))
            except (UsageError, ZFabricError, ValueError) as e:
                print(f"zfabric: node {record['node_id'][:12]} did not answer: {e}",
                      file=sys.stderr)
    listing = report.memory_listing(answers, args.sort_by, args.group_by)
    if args.json:
        print(json.dumps(listing, indent=1))
    else:
        print("\n".join(report.memory_lines(listing, status)))
    return 0


def _ask(record: dict, what: str):
    client = _connect(record)
    try:
        return client.request(what, timeout=10.0)
    finally:
        client.close()


def cmd_serve(args) -> int:
    from . import forking
    forking.set_name(forking.NODE_NAME)
    config = Config.from_json(args.config)
    zygote = None
    if args.num_cpus > 0:   # its first zygote imports while the node does (two cores: at once)
        from .processes import raise_fd_limit, start_zygote
        raise_fd_limit()   # (its workers inherit it)
        try:   # (forked: we have one thread yet, and no zmq context)
            zygote = start_zygote(config.zygote_preload, fork=True)
        except OSError:
            pass   # the first spawn tries again, and reports it if it cannot
    from .node import serve   # (the node's own modules: only in the node process)
    code = serve(config, num_cpus=args.num_cpus, resources=json.loads(args.resources),
                 object_store_memory=args.object_store_memory, host=args.host,
                 port=args.port, ready_fd=args.ready_fd,
                 embedded_driver_pid=args.embedded_driver_pid,
                 join=args.join, insecure=args.insecure_no_auth,
                 dashboard=_dashboard_of(args), zygote=zygote)
    # It cleaned up after itself: exit now, not after tearing down every module
    # (what a driver waiting in shutdown() would wait for).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


COMMANDS = {"start": cmd_start, "status": cmd_status, "stop": cmd_stop,
            "timeline": cmd_timeline, "memory": cmd_memory, "_serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command != "_serve":
            Config.from_env()  # a bad ZFABRIC_* value: one line, before anything starts
        return COMMANDS[args.command](args)
    except ValueError as e:
        if args.command == "_serve":
            raise
        print(f"zfabric: error: {e}", file=sys.stderr)
        return 1
    except UsageError as e:
        print(f"zfabric: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
