"""Scale in simulation: membership convergence and control traffic at 10, 100, 1,000 nodes.

Pure: the core state machines only (core.membership, core.gcs, core.replication),
driven by zfabric/testing/sim/scale.py the way core/fabric.py drives them; no
sockets, no processes. For each N and each design it measures

- gossip rounds until membership converges after a join (every node holds the
  newcomer ALIVE and it holds every node ALIVE), a crash (every node holds the
  dead one DEAD; failure detection included) and a partition into two halves
  for failure_timeout + 3 s that heals (every node holds every node ALIVE
  again, counted from the heal);
- control traffic per node in a steady cluster: messages/s and bytes/s
  (msgpack sizes of what a node sends) of membership gossip (and, in the
  JSON, of membership while a partition heals), and of GCS
  replication with every node writing its shard at a steady rate (pushes,
  answers to gossiped vectors, and the vectors themselves).

Designs: `baseline` is the design before issue #11 (every row in every gossip,
every shard on every node); `scaled` is the current one (config defaults).

    python bench/scale_sim.py --nodes 10,100,1000 --seed 1 \\
        --json bench/results/2026-11-30-scale-sim.json --plots docs/

The baseline at 1,000 nodes is too slow to simulate for long (every gossip
message carries 1,000 rows: over 10 s of CPU and 1.4 GB a round), so beyond
`--baseline-max` (300) only its steady traffic is measured, over 3 rounds
(membership and GCS each).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zfabric.config import Config  # noqa: E402
from zfabric.core.membership import ALIVE, DEAD  # noqa: E402
from zfabric.testing.sim.scale import GcsWorld, MembershipWorld  # noqa: E402

CFG = Config()
MEMBERSHIP = dict(gossip_interval=CFG.gossip_interval, failure_timeout=CFG.failure_timeout,
                  fanout=CFG.gossip_fanout, dead_probe_rounds=CFG.dead_probe_rounds,
                  forget_left_after=CFG.forget_left_after)
WRITES_PER_S = 5.0     # GCS deltas a node writes a second (timeline batches, loc, obj)
VALUE_BYTES = 120      # about one timeline batch entry

DESIGNS = {
    # every row in every gossip, every shard on every node
    "baseline": dict(membership={**MEMBERSHIP, "deltas_above": None}, replicas=None),
    "scaled": dict(membership={**MEMBERSHIP, "deltas_above": CFG.gossip_deltas_above},
                   replicas=CFG.gcs_replicas),
}


def steady_traffic(world, kind: str, warm: int, rounds: int) -> dict:
    """Traffic per node of `kind` over `rounds` rounds, after `warm` rounds."""
    for _ in range(warm):
        world.step()
    world.traffic.reset(world.now)
    for _ in range(rounds):
        world.step()
    return world.traffic.per_node(kind, len(world.running), world.now)


def membership_run(n: int, seed: int, design: dict, log, converge: bool = True) -> dict:
    cfg = design["membership"]
    started = time.perf_counter()
    world = MembershipWorld(n, seed, **cfg)
    rounds = 20 if converge else 3
    traffic = steady_traffic(world, "membership", 3 if converge else 1, rounds)
    log(f"  n={n} steady traffic {traffic['bytes_per_s']:.0f} B/s per node")
    if not converge:
        return {"steady_rounds": rounds, "traffic": traffic, "join_rounds": None,
                "death_rounds": None, "partition_heal_rounds": None,
                "cpu_seconds": round(time.perf_counter() - started, 1)}

    joined = world.join(0)
    join = world.run_until(lambda: world.all_hold(joined, ALIVE) and sum(
        1 for m in world.nodes[joined].members.values() if m.state == ALIVE) == len(
        world.running), 300)
    log(f"  n={n} join: {join} rounds")

    victim = 1
    world.crash(victim)
    first = None

    def dead_everywhere():
        nonlocal first
        dead = sum(1 for i in world.running if world.state(i, victim) == DEAD)
        if dead and first is None:
            first = world.rounds
        return dead == len(world.running)
    crashed_at = world.rounds
    death = world.run_until(dead_everywhere, 400)
    log(f"  n={n} death: {death} rounds (first verdict after {first - crashed_at})")

    half = set(sorted(world.running)[: len(world.running) // 2])
    world.partition(half)
    # cut for failure_timeout + 3 s (each side declares the other dead), then heal
    cut_rounds = round((cfg["failure_timeout"] + 3.0) / cfg["gossip_interval"])
    split = world.run_until(lambda: world.split_seen(half), cut_rounds)
    world.run_until(lambda: False, cut_rounds - (split or cut_rounds))
    world.heal()
    world.traffic.reset(world.now)
    heal = world.run_until(world.agreed, 600)
    heal_traffic = world.traffic.per_node("membership", len(world.running), world.now)
    log(f"  n={n} partition: split seen after {split}, healed after {heal} rounds, "
        f"{heal_traffic['bytes_per_s']:.0f} B/s per node meanwhile")
    return {"steady_rounds": rounds, "traffic": traffic, "join_rounds": join,
            "death_rounds": death,
            "death_first_verdict_rounds": None if first is None else first - crashed_at,
            "death_spread_rounds": None if first is None or death is None
            else death - (first - crashed_at),
            "partition_split_rounds": split, "partition_heal_rounds": heal,
            "partition_heal_traffic": heal_traffic,
            "cpu_seconds": round(time.perf_counter() - started, 1)}


def gcs_run(n: int, seed: int, design: dict, log, converge: bool = True) -> dict:
    started = time.perf_counter()
    interval = design["membership"]["gossip_interval"]
    replicas = design["replicas"] or n
    world = GcsWorld(n, seed, replicas=replicas, fanout=design["membership"]["fanout"],
                     interval=interval, writes_per_round=WRITES_PER_S * interval,
                     value_bytes=VALUE_BYTES)
    rounds = 20 if converge else 3
    traffic = steady_traffic(world, "gcs", 5 if converge else 2, rounds)
    world.stop_writing()
    settled = world.run_until(world.agreed, 50) if converge else None
    shards = sum(len(g.shards()) for g in world.gcs) / n
    log(f"  n={n} GCS {traffic['bytes_per_s']:.0f} B/s per node, {shards:.1f} shards a node")
    return {"traffic": traffic, "replicas": replicas, "shards_per_node": shards,
            "rounds_to_agree_after_writes_stop": settled,
            "cpu_seconds": round(time.perf_counter() - started, 1)}


def table(results: dict) -> str:
    """The markdown table docs/scaling.md quotes."""
    def n(x, fmt="{:,.0f}"):
        return "--" if x is None else fmt.format(x)
    lines = ["| design | nodes | join | crash (first verdict) | partition heal "
             "| membership msgs/s | membership bytes/s | GCS msgs/s | GCS bytes/s "
             "| shards a node |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for design, runs in results.items():
        for k in sorted(runs, key=int):
            mem, gcs = runs[k]["membership"], runs[k]["gcs"]
            crash = n(mem["death_rounds"])
            if mem.get("death_first_verdict_rounds") is not None:
                crash += f" ({mem['death_first_verdict_rounds']})"
            lines.append(" | ".join([
                f"| {design}", f"{int(k):,}", n(mem["join_rounds"]), crash,
                n(mem["partition_heal_rounds"]),
                n(mem["traffic"]["messages_per_s"], "{:,.1f}"), n(mem["traffic"]["bytes_per_s"]),
                n(gcs["traffic"]["messages_per_s"], "{:,.1f}"), n(gcs["traffic"]["bytes_per_s"]),
                n(gcs["shards_per_node"], "{:,.0f}")]) + " |")
    return "\n".join(lines)


def plot(results: dict, out_dir: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    for ax, (key, title) in zip(axes, [("join_rounds", "join"), ("death_rounds", "crash"),
                                       ("partition_heal_rounds", "partition heal")]):
        for design, runs in results.items():
            ns = sorted(int(k) for k in runs)
            pts = [(k, runs[str(k)]["membership"][key]) for k in ns
                   if runs[str(k)]["membership"][key] is not None]
            ax.plot([k for k, _ in pts], [y for _, y in pts], marker="o", label=design)
        ax.set_xscale("log")
        ax.set_title(f"{title}")
        ax.set_xlabel("nodes")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("gossip rounds to converge")
    axes[0].legend()
    fig.suptitle("Membership convergence (simulated, bench/scale_sim.py)")
    fig.tight_layout()
    path = os.path.join(out_dir, "scaling-convergence.png")
    fig.savefig(path, dpi=110)
    paths.append(path)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (part, title) in zip(axes, [("membership", "membership gossip"),
                                        ("gcs", "GCS replication")]):
        for design, runs in results.items():
            ns = sorted(int(k) for k in runs)
            ys = [runs[str(k)][part]["traffic"]["bytes_per_s"] for k in ns]
            ax.plot(ns, ys, marker="o", label=design)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("nodes")
        ax.set_ylabel("bytes/s sent per node")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("Control traffic per node, steady cluster (simulated, bench/scale_sim.py)")
    fig.tight_layout()
    path = os.path.join(out_dir, "scaling-traffic.png")
    fig.savefig(path, dpi=110)
    paths.append(path)
    plt.close(fig)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="10,100,1000", help="sizes to run ('' to only "
                    "plot and tabulate the --merge'd results)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--design", default="scaled", help="baseline, scaled or both")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--merge", action="append", default=[],
                    help="results JSON of an earlier run to plot beside this one")
    ap.add_argument("--merge-as", action="append", default=[], metavar="LABEL=PATH",
                    help="the scaled design's results of an earlier run (e.g. an earlier "
                         "commit's), plotted and tabulated as design LABEL")
    ap.add_argument("--baseline-max", type=int, default=300,
                    help="largest N at which the baseline's convergence is simulated "
                         "(beyond: its steady traffic only, over 3 rounds)")
    ap.add_argument("--plots", help="directory for scaling-convergence.png, scaling-traffic.png")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.nodes.split(",") if x]
    designs = ["baseline", "scaled"] if args.design == "both" else [args.design]

    def log(msg):
        print(msg, file=sys.stderr, flush=True)
    results: dict = {}
    for path in args.merge:
        with open(path) as f:
            for design, runs in json.load(f)["results"].items():
                results.setdefault(design, {}).update(runs)
    for spec in args.merge_as:
        label, _, path = spec.partition("=")
        with open(path) as f:
            results.setdefault(label, {}).update(json.load(f)["results"]["scaled"])
    for design in designs:
        if DESIGNS[design]["replicas"] is None and design == "scaled":
            raise SystemExit("this checkout has no scaled design (config.gcs_replicas)")
        for n in sizes:
            log(f"{design} n={n}")
            converge = design != "baseline" or n <= args.baseline_max
            results.setdefault(design, {})[str(n)] = {
                "membership": membership_run(n, args.seed, DESIGNS[design], log, converge),
                "gcs": gcs_run(n, args.seed, DESIGNS[design], log, converge)}
    out = {"machine": {"python": platform.python_version(), "platform": platform.platform()},
           "command": "python bench/scale_sim.py " + " ".join(argv or sys.argv[1:]),
           "seed": args.seed, "membership_config": MEMBERSHIP,
           "gcs_workload": {"writes_per_s": WRITES_PER_S, "value_bytes": VALUE_BYTES},
           "results": results}
    if args.json and sizes:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, sort_keys=True)
    if args.plots:
        for path in plot(results, args.plots):
            log(f"wrote {path}")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
