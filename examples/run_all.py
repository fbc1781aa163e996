"""Run every lesson example and check what it prints, and when.

    python examples/run_all.py                 # all of them (about 50 s)
    python examples/run_all.py 03 05           # only those whose name starts so
    python examples/run_all.py -v --late 2.0   # show output; allow 2 s lateness

Each example runs in its own process (``python -u``, so lines arrive as they
are printed). The checks are those the lesson makes:

* the printed elapsed times ("Returned ... (elapsed time: X)" and
  "Total time: duration: X seconds") are near the lesson's: no more than
  ``--early`` seconds early and ``--late`` seconds late;
* each wait returned the lesson's number of refs, and the arrays come out in
  order of size 0, 10, 20, 30, 40, each with as many numbers as its size;
* 02_get_all prints all of its arrays at once, at the end.

Exit status 0 if every example passed, 1 otherwise.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))

SIZES = [0, 10, 20, 30, 40]

# What each example should print. "waits": one (ready count, elapsed s) pair per
# "Returned" line; "groups": the sizes printed after each of those lines.
# 05 prints one section per timeout, each headed by a "== timeout=..." line.
EXPECTED = {
    "00_init.py": {"init": True},
    "01_task_dependencies.py": {"sections": [{"arrays": [20], "total": 4.0}]},
    "02_get_all.py": {"sections": [{"arrays": SIZES, "total": 8.0}],
                      "all_at_once": True},
    "03_wait_one.py": {"sections": [{
        "waits": [(1, 0.0), (1, 2.0), (1, 4.0), (1, 6.0), (1, 8.0)],
        "groups": [[0], [10], [20], [30], [40]], "total": 8.0}]},
    "04_wait_two.py": {"sections": [{
        "waits": [(2, 2.0), (2, 6.0), (1, 8.0)],
        "groups": [[0, 10], [20, 30], [40]], "total": 8.0}]},
    "05_exercise_timeout.py": {"sections": [
        {"header": "timeout=2.5, num_returns=2",
         "waits": [(2, 2.0), (1, 4.5), (1, 7.0), (1, 8.0)],
         "groups": [[0, 10], [20], [30], [40]], "total": 8.0},
        {"header": "timeout=1.5, num_returns=1",
         "waits": [(1, 0.0), (0, 1.5), (1, 2.0), (0, 3.5), (1, 4.0),
                   (0, 5.5), (1, 6.0), (0, 7.5), (1, 8.0)],
         "groups": [[0], [], [10], [], [20], [], [30], [], [40]], "total": 8.0},
    ]},
}

RETURNED = re.compile(r"^Returned +(\d+) completed tasks\. \(elapsed time: +([\d.]+)\)$")
TOTAL = re.compile(r"^Total time: duration: +([\d.]+) seconds$")
HEADER = re.compile(r"^== (.*) ==$")
ARRAY_START = re.compile(r"^(?:(\d+): )?\[")
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|nan|inf")


def run(script, python, timeout):
    """Run one example; return (exit code, [(arrival s, line)], stderr text)."""
    proc = subprocess.Popen(
        [python, "-u", os.path.join(HERE, script)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    t0 = time.monotonic()
    lines, err = [], []

    def read_out():
        for line in proc.stdout:
            lines.append((time.monotonic() - t0, line.rstrip("\n")))

    def read_err():
        err.append(proc.stderr.read())

    readers = [threading.Thread(target=read_out, daemon=True),
               threading.Thread(target=read_err, daemon=True)]
    for r in readers:
        r.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we started, by its id
        proc.wait()
        code = "timeout after {} s".format(timeout)
    for r in readers:
        r.join(5)
    return code, lines, "".join(err)


def parse(lines):
    """Split the output into sections of events: ("returned", n, t),
    ("array", label, count, arrival), ("total", t)."""
    sections = [{"header": None, "events": [], "other": []}]
    i = 0
    while i < len(lines):
        arrival, line = lines[i]
        m_ret, m_tot, m_hdr = RETURNED.match(line), TOTAL.match(line), HEADER.match(line)
        m_arr = ARRAY_START.match(line)
        if m_hdr:
            sections.append({"header": m_hdr.group(1), "events": [], "other": []})
        elif m_ret:
            sections[-1]["events"].append(("returned", int(m_ret.group(1)), float(m_ret.group(2))))
        elif m_tot:
            sections[-1]["events"].append(("total", float(m_tot.group(1))))
        elif m_arr:
            text = line[m_arr.end() - 1:]
            while "]" not in text and i + 1 < len(lines):
                i += 1
                text += " " + lines[i][1]
            body = text[1:text.index("]")] if "]" in text else text[1:]
            label = int(m_arr.group(1)) if m_arr.group(1) is not None else None
            sections[-1]["events"].append(("array", label, len(NUMBER.findall(body)), arrival))
        else:
            sections[-1]["other"].append(line)
        i += 1
    if not sections[0]["events"] and len(sections) > 1:
        sections.pop(0)
    return sections


def check_time(what, got, want, early, late, problems):
    if not (want - early <= got <= want + late):
        problems.append("{}: {:.3f} s, expected {:.1f} s (-{} / +{})".format(
            what, got, want, early, late))


def check(script, lines, early, late):
    """Return a list of problems (empty: the example passed)."""
    expected = EXPECTED[script]
    problems = []
    if expected.get("init"):
        text = "\n".join(line for _, line in lines)
        for key in ("node_id", "node_ip_address", "object_store_address", "session_dir"):
            if "'{}'".format(key) not in text:
                problems.append("init() result lacks {!r}".format(key))
        if "is_initialized: True" not in text or "after shutdown, is_initialized: False" not in text:
            problems.append("is_initialized() not True after init and False after shutdown")
        return problems

    sections = parse(lines)
    if len(sections) != len(expected["sections"]):
        return ["printed {} section(s), expected {}".format(len(sections), len(expected["sections"]))]
    for n, (got, want) in enumerate(zip(sections, expected["sections"])):
        where = want.get("header") or "output"
        if want.get("header") and got["header"] != want["header"]:
            problems.append("section {} header {!r}, expected {!r}".format(n, got["header"], want["header"]))
        events = got["events"]
        arrays = [e for e in events if e[0] == "array"]
        totals = [e for e in events if e[0] == "total"]
        waits = [e for e in events if e[0] == "returned"]

        for _, label, count, _ in arrays:
            if label is not None and label != count:
                problems.append("{}: array labelled {} has {} numbers".format(where, label, count))
        sizes = [count for _, _, count, _ in arrays]
        want_sizes = sum(want["groups"], []) if "groups" in want else want["arrays"]
        if sizes != want_sizes:
            problems.append("{}: array sizes {}, expected {}".format(where, sizes, want_sizes))

        if len(totals) != 1:
            problems.append("{}: {} 'Total time' lines, expected 1".format(where, len(totals)))
        else:
            check_time(where + ": total time", totals[0][1], want["total"], early, late, problems)

        if "waits" in want:
            got_counts = [w[1] for w in waits]
            want_counts = [c for c, _ in want["waits"]]
            if got_counts != want_counts:
                problems.append("{}: waits returned {} refs, expected {}".format(where, got_counts, want_counts))
            else:
                for k, (w, (_, t)) in enumerate(zip(waits, want["waits"])):
                    check_time("{}: wait {} returned".format(where, k + 1), w[2], t, early, late, problems)
            # the arrays printed after each "Returned" line
            groups, current = [], None
            for e in events:
                if e[0] == "returned":
                    current = []
                    groups.append(current)
                elif e[0] == "array" and current is not None:
                    current.append(e[2])
            if groups != want["groups"]:
                problems.append("{}: arrays after each wait {}, expected {}".format(where, groups, want["groups"]))

    if expected.get("all_at_once"):
        arrivals = [e[3] for s in sections for e in s["events"] if e[0] == "array"]
        if arrivals and max(arrivals) - min(arrivals) > 0.5:
            problems.append("arrays were not printed at once: first at {:.2f} s, last at {:.2f} s".format(
                min(arrivals), max(arrivals)))
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("only", nargs="*", help="run only examples whose name starts with one of these")
    parser.add_argument("--python", default=sys.executable, help="interpreter to run the examples with")
    parser.add_argument("--early", type=float, default=0.25, help="seconds a time may be early (default 0.25)")
    parser.add_argument("--late", type=float, default=0.75, help="seconds a time may be late (default 0.75)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds before an example is killed")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each example's output")
    args = parser.parse_args()

    scripts = [s for s in EXPECTED if not args.only or any(s.startswith(o) for o in args.only)]
    if not scripts:
        parser.error("no example matches {}".format(args.only))
    failed = []
    for script in scripts:
        started = time.monotonic()
        code, lines, err = run(script, args.python, args.timeout)
        took = time.monotonic() - started
        problems = [] if code == 0 else ["exit status {}".format(code)]
        problems += check(script, lines, args.early, args.late)
        print("{} {} ({:.1f} s)".format("PASS" if not problems else "FAIL", script, took))
        for p in problems:
            print("    " + p)
        if args.verbose or problems:
            for arrival, line in lines:
                print("    | {:6.2f}  {}".format(arrival, line[:100]))
        if problems and err.strip():
            print("    stderr (last lines):")
            for line in err.strip().splitlines()[-15:]:
                print("    ! " + line)
        if problems:
            failed.append(script)
    print("{} of {} examples passed{}".format(
        len(scripts) - len(failed), len(scripts), "" if not failed else ": failed " + ", ".join(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
