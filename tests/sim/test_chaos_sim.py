"""The whole cluster under seeded chaos (zfabric/testing/sim/chaos.py).

Each run plays a scenario (testing/sim/scenario.py) on a FabricSim: drivers
submit task DAGs (INLINE and STORE results, several returns, puts), drop
refs, get and cancel, while workers, zygotes, nodes and drivers die, nodes
restart with a fresh id, partitions (both ways or one) come and heal, and
the network loses, duplicates, reorders and delays messages. chaos.py's
docstring lists the invariants: values match the model or are a documented
error a fault explains, gets are bounded after the faults, membership and
the GCS converge, no referenced object is freed, no attempt runs twice at
once. A failure names the seed (or the scenario) and the one line that
replays it:

    python -m zfabric.testing.sim.chaos --seed N

Lineage (core/lineage.py) makes again what a fault lost while its owner
lives, so the checks run with `chaos.LINEAGE_STRICT`: an ObjectLostError for
an object a live driver holds is a failure.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric import protocol as p
from zfabric.testing.sim import chaos
from zfabric.testing.sim.scenario import Scenario, generate

SEEDS = 200   # CI runs this many seeds (each a few hundred ms on one core)


@pytest.mark.parametrize("seed", range(SEEDS))
def test_seeded_chaos_keeps_every_invariant(seed):
    chaos.check(chaos.scenario_for(seed))


class Draws:
    """generate()'s choices drawn by hypothesis, so that it can shrink them."""

    def __init__(self, data):
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def pick(self, options):
        return self.data.draw(st.sampled_from(list(options)))

    def subset(self, options, most: int) -> list:
        options = list(options)
        if not options:
            return []
        return self.data.draw(st.lists(st.sampled_from(options), max_size=most, unique_by=str))


# Two halves of 30 examples each (derandomized: each draws its own fixed sequence),
# so that each test stays far inside the per-test timeout on a loaded machine.
HYPOTHESIS = settings(max_examples=30, deadline=None, derandomize=True, database=None)


def play_drawn(data, seed) -> None:
    """Hypothesis draws the DAGs and the fault schedules (and shrinks them); a
    failure prints `--scenario '<json>'`, which replays it exactly."""
    chaos.check(generate(seed, Draws(data)), from_seed=False)


@HYPOTHESIS
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_random_dags_and_fault_schedules_keep_every_invariant(data, seed):
    play_drawn(data, seed)


@HYPOTHESIS
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_more_random_dags_and_fault_schedules_keep_every_invariant(data, seed):
    play_drawn(data, seed)


def test_a_run_replays_exactly_from_its_seed_and_from_its_json():
    sc = chaos.scenario_for(63)      # a crash, a one-way cut, a restart, a zygote, a worker
    assert [f[1] for f in sc.faults] == ["crash", "cut", "restart", "zygote", "worker"]
    first, again = chaos.check(sc), chaos.check(Scenario.from_json(sc.to_json()))
    assert Scenario.from_json(sc.to_json()) == sc
    trace = lambda run: ([(r.node, r.task_id, r.start, r.end) for r in run.sim.runs],
                         run.fault_log, run.faults.stats, [n.node_id for n in run.sim.nodes])
    assert trace(first) == trace(again)
    assert first.sim.runs and first.faults.stats.cut > 0


def test_the_checks_catch_a_wrong_value_and_print_the_replay_command(monkeypatch):
    program = chaos.ChaosRun.program

    def off_by_one(self, sim, i, ex):
        work = program(self, sim, i, ex)
        wrong = tuple((s, n, v[:-1] + bytes([v[-1] ^ 1])) for s, n, v in work.results)
        return chaos.Work(work.duration, wrong)
    monkeypatch.setattr(chaos.ChaosRun, "program", off_by_one)
    with pytest.raises(AssertionError) as e:
        chaos.check(chaos.scenario_for(2))
    text = str(e.value)
    assert "python -m zfabric.testing.sim.chaos --seed 2" in text
    assert "want" in text


def test_the_checks_catch_an_object_freed_under_a_driver_that_holds_it():
    run = chaos.ChaosRun(chaos.scenario_for(2))
    run.start()
    sim = run.sim
    assert sim.run_until(lambda: run.drivers[0].held, 5.0)
    driver = run.drivers[0]
    oid = sorted(driver.held)[0]
    sim.run_until(lambda: driver.node.scheduler.objects.get(oid).ready, 5.0)
    driver.node.scheduler.objects.refs(driver.client, p.Refs([], [oid]))   # behind its back
    run.check_refs()
    assert any("which its node freed" in f for f in run.failures), run.failures


def crash_after_a_result():
    """Task 2's 5 MB result is made on node 1 (node 0 is busy with task 1), and
    node 1 crashes after it is done, before anyone pulled it; then task 3 needs it."""
    MB = 1 << 20
    return Scenario(seed=1, nodes=[{"CPU": 1}, {"CPU": 1}], drivers=[0], ops=[
        [0.0, 0, "submit", 1, [], ["i"], 1.0, 1, 3],
        [0.0, 0, "submit", 2, [], [5 * MB], 0.1, 1, 3],
        [0.55, 0, "submit", 3, [[2, 0]], ["i"], 0.1, 1, 3]],
        faults=[[0.5, "crash", 1]], quiet=0.6)


def test_an_object_lost_with_a_crashed_node_is_made_again():
    run = chaos.check(crash_after_a_result(), lineage=True)
    (driver,) = run.drivers
    got = {run.name(oid): [state for _, state in answers]
           for oid, answers in driver.answered.items()}
    assert got == {"task 1 return 0": [chaos.INLINE], "task 2 return 0": [chaos.STORE],
                   "task 3 return 0": [chaos.INLINE]}
