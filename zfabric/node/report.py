"""What `status` and `memory` print (node/__main__.py asks the nodes, this
module turns their answers into lines).

    __main__.cmd_memory --"memory", "nodes"--> each node of the cluster started
                         from this machine (its Client) --> memory_lines
    __main__.cmd_status --"status"--> one node --> demand_lines

The records come from core/memview.py (`memory`) and core/views.py
(`status`); merging, sorting and grouping are memview's.
"""
from __future__ import annotations

from ..core import memview


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# -- status ------------------------------------------------------------------------------

def fmt_shape(resources: dict) -> str:
    """A resource shape as Ray prints it: {'CPU': 4}, whole amounts without ".0"."""
    return repr({k: int(v) if float(v).is_integer() else v for k, v in resources.items()})


def demand_lines(status: dict) -> list[str]:
    """The cluster's queued tasks by resource shape, as `status` ends."""
    demands = status.get("demands", [])
    if not demands:
        return ["pending demands: none"]
    lines = ["pending demands (queued tasks by resource shape, all live nodes as gossiped):"]
    for d in demands:
        n = d["tasks"]
        lines.append(f"  {fmt_shape(d['resources'])}: {n} task{'s' if n != 1 else ''} waiting")
    return lines


# -- memory ------------------------------------------------------------------------------

HEADER = (f"{'object id':<42}{'size':>11}  {'state':<8} {'owner':<14}{'nodes':<28}"
          f"{'spilled':<9}reference holders (@node: as that node knows them)")


def memory_listing(answers: list[dict], sort_by: str, group_by: str | None) -> dict:
    """The nodes' answers merged, sorted (and grouped): what `memory --json` prints."""
    records = memview.sort_records(memview.merge(answers), sort_by)
    out = {"self": answers[0]["self"] if answers else "",
           "reported_by": [a["self"] for a in answers],
           "truncated": {a["self"]: a["total"] for a in answers
                         if a["total"] > len(a["objects"])}}
    if group_by == "node":
        out["nodes"] = memview.group_by_node(records)
    else:
        out["objects"] = records
    return out


def memory_lines(listing: dict, status: dict) -> list[str]:
    me = listing["self"]
    lines = []
    if "nodes" in listing:
        for node, g in listing["nodes"].items():
            lines.append(f"node {node[:12]}{' (this node)' if node == me else ''}: "
                         f"{g['count']} objects, {fmt_bytes(g['bytes'])}, "
                         f"{g['spilled_objects']} spilled to disk "
                         f"({fmt_bytes(g['spilled_bytes'])})")
            lines += ["  " + line for line in [HEADER] + [_row(r) for r in g["objects"]]]
    else:
        lines += [HEADER] + [_row(r) for r in listing["objects"]]
    for node, total in listing["truncated"].items():
        lines.append(f"(node {node[:12]} listed only its largest objects, of {total})")
    lines.append("")
    lines += summary_lines(status)
    return lines


def summary_lines(status: dict) -> list[str]:
    """One line per live node: its objects and store use."""
    lines = []
    for s in status["nodes"]:
        if not s["Alive"]:
            continue
        objects = f"{s['objects']} objects, " if "objects" in s else ""
        lines.append(f"node {s['NodeID'][:12]}: {objects}store "
                     f"{fmt_bytes(s['store_used'])} of {fmt_bytes(s['store_capacity'])}, "
                     f"{s.get('spilled_objects', 0)} objects spilled to disk "
                     f"({fmt_bytes(s.get('spilled_bytes', 0))})")
    return lines


def _row(r: dict) -> str:
    nodes = ",".join(n[:12] for n in r["nodes"]) or "-"
    spilled = "?" if r["spilled"] is None else "yes" if r["spilled"] else "no"
    holders = "?" if r["ref_holders"] is None else ", ".join(
        _holder(h) + (f" @{h['at'][:12]}" if h.get("at") != r["owner"] else "")
        for h in r["ref_holders"]) or "-"
    return (f"{r['object_id']:<42}{fmt_bytes(r['size']):>11}  {r['state']:<8}"
            f" {r['owner'][:12]:<14}{nodes:<28}{spilled:<9}{holders}")


def _holder(h: dict) -> str:
    kind = h.get("kind")
    if kind == "driver":
        return f"driver pid {h.get('pid')}" if h.get("pid") else f"driver {h['id'][:12]}"
    if kind == "worker":
        task = f" running {h.get('name') or 'a task'}" if h.get("task") else ""
        return f"worker {h['id']}{task}"
    if kind == "task":
        return f"task {h.get('name') or ''} {h['id'][:12]}".replace("  ", " ")
    return f"{kind} {h.get('id', '')[:12]}"
