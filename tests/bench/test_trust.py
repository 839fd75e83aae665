"""bench/trust.py: which steps measured the server, which the machine's other work or the load generator, and
when a capacity may be chosen from them.

The classification and the decision are checked on steps built by hand; the CPU accounting on real processes,
one outside this process tree (other work) and one inside it (the run's own)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import trust  # noqa: E402
from trust import BUSY, GENERATOR_BOUND, OK, Limits, Proc, Snapshot, classify, decide, usage  # noqa: E402

LIMITS = Limits()


def test_a_step_is_busy_when_other_processes_take_a_tenth_of_a_core_before_or_during_it() -> None:
    quiet = classify(LIMITS, others_pct=[2.0, 4.0], offered=1000, achieved=998, server_pct=40)
    assert quiet.trust == OK and quiet.why == ""
    before = classify(LIMITS, others_pct=[35.0, 1.0], top_others=[("cc1 4242", 33.0)], offered=1000, achieved=1000)
    assert before.trust == BUSY
    assert "35% of a core" in before.why and "cc1 4242 33%" in before.why
    during = classify(LIMITS, others_pct=[None, 10.5])
    assert during.trust == BUSY
    assert classify(LIMITS, others_pct=[10.0]).trust == OK  # the limit itself is still quiet


def test_busy_is_told_before_generator_bound() -> None:
    # Other work on the machine is also what starves a generator: the first cause is the one to fix.
    v = classify(LIMITS, others_pct=[80.0], offered=1000, achieved=500, generator_cores_pct=99, server_pct=30)
    assert v.trust == BUSY


def test_a_step_is_generator_bound_when_the_generator_fell_behind_while_the_server_had_room() -> None:
    behind = classify(LIMITS, others_pct=[0.0], offered=10_000, achieved=7_000, server_pct=55)
    assert behind.trust == GENERATOR_BOUND
    assert "7,000 of 10,000" in behind.why and "70%" in behind.why
    # The same shortfall with the server's core full is the server's limit: a measurement (that fails its SLO).
    saturated = classify(LIMITS, others_pct=[0.0], offered=10_000, achieved=7_000, server_pct=99)
    assert saturated.trust == OK
    # Held to half a core, 48% is a full server.
    limited = classify(LIMITS, others_pct=[0.0], offered=400, achieved=300, server_pct=48, server_limit_pct=50)
    assert limited.trust == OK
    assert classify(LIMITS, others_pct=[0.0], offered=1000, achieved=960, server_pct=20).trust == OK


def test_a_step_is_generator_bound_when_the_generators_core_or_process_was_saturated() -> None:
    cores = classify(LIMITS, others_pct=[0.0], offered=500, achieved=500, generator_cores_pct=97, server_pct=14)
    assert cores.trust == GENERATOR_BOUND and "core(s) were 97% busy" in cores.why
    proc = classify(LIMITS, others_pct=[0.0], offered=500, achieved=500, generator_proc_pct=98.4, server_pct=14)
    assert proc.trust == GENERATOR_BOUND and "used 98% of its core" in proc.why
    assert classify(LIMITS, others_pct=[0.0], generator_cores_pct=80, generator_proc_pct=90).trust == OK


@dataclass
class S:
    step: int
    rps: float
    ok: bool
    trust: str = OK
    why: str = ""
    passed: bool = False


def label(s: S) -> str:
    return f"step {s.step}"


def choose(*steps: S) -> trust.Decision:
    return decide(list(steps), lambda s: s.ok, "rps", label)


def test_the_capacity_is_the_best_step_before_the_first_failure() -> None:
    d = choose(S(0, 100, True), S(1, 200, True), S(2, 290, False), S(3, 400, True))
    assert d.refusal is None and d.complete and d.best is not None and d.best.rps == 200
    d = choose(S(0, 100, True), S(1, 200, True))
    assert d.best is not None and d.best.rps == 200 and not d.complete  # no failure: a lower bound
    d = choose(S(0, 100, False))
    assert d.best is None and d.refusal is None and d.complete  # a measurement with no capacity


@pytest.mark.parametrize("kind", [BUSY, GENERATOR_BOUND])
def test_no_capacity_is_chosen_that_depends_on_an_untrusted_step(kind: str) -> None:
    # The boundary itself: the SLO may have failed on the machine or the generator, not the server.
    d = choose(S(0, 100, True), S(1, 200, False, kind, "why"))
    assert d.best is None and d.refusal == f"step 1 was {kind} (why): the capacity cannot be told from it"
    # Below the boundary: a step it hides might have failed.
    d = choose(S(0, 100, True), S(1, 200, True, kind, "why"), S(2, 300, True), S(3, 400, False))
    assert d.best is None and d.refusal is not None and "step 1" in d.refusal
    # After the boundary, nothing depends on it.
    d = choose(S(0, 100, True), S(1, 200, False), S(2, 300, False, kind, "why"))
    assert d.refusal is None and d.best is not None and d.best.rps == 100


def snap(t: float, machine: int, procs: dict[int, Proc], ours: set[int], steal: int = 0) -> Snapshot:
    # One core, `machine` jiffies of user+system+steal (`steal` of them stolen) out of t * CLK_TCK.
    total = int(t * trust.CLK_TCK)
    return Snapshot(t, {"0": (total, machine, machine, steal)}, procs, frozenset(ours), {})


def test_others_are_the_machines_cpu_less_the_runs_own_reaped_children_included() -> None:
    hz = trust.CLK_TCK
    me = os.getpid()
    a = snap(0.0, 0, {me: Proc(1, "tuner", 1.0, 0.0), 50: Proc(me, "loadgen", 2.0, 0.0)}, {me, 50})
    # loadgen ran 3 more seconds and was reaped: its time is now in the tuner's children's time.
    b = snap(10.0, int(3.5 * hz), {me: Proc(1, "tuner", 1.5, 5.0)}, {me})
    u = usage(a, b)
    assert u.others_pct == pytest.approx(0.0, abs=0.5)  # 3.5 s of machine CPU, all of it the run's
    c = snap(20.0, int(6.5 * hz), {me: Proc(1, "tuner", 1.5, 5.0), 77: Proc(1, "cc1", 3.0, 0.0)}, {me})
    u = usage(b, c)
    assert u.others_pct == pytest.approx(30.0, abs=0.5)
    assert u.top_others == [("cc1 77", pytest.approx(30.0))]


def test_time_the_hypervisor_stole_is_named_as_other_work() -> None:
    # No process shows steal: without a name of its own, a noisy neighbour on the host would read as processes
    # that came and went.
    hz = trust.CLK_TCK
    me = os.getpid()
    a = snap(0.0, 0, {me: Proc(1, "tuner", 1.0, 0.0)}, {me})
    b = snap(10.0, int(4.0 * hz), {me: Proc(1, "tuner", 2.0, 0.0)}, {me}, steal=int(3.0 * hz))
    u = usage(a, b)
    assert u.others_pct == pytest.approx(30.0, abs=0.5)
    assert u.top_others == [("steal (the hypervisor ran other guests)", pytest.approx(30.0))]
    verdict = trust.classify(trust.Limits(), others_pct=[u.others_pct], top_others=u.top_others)
    assert verdict.trust == trust.BUSY and "hypervisor" in verdict.why and "came and went" not in verdict.why


def spin_code() -> list[str]:
    return [sys.executable, "-c", "import time\nend = time.time() + 30\nwhile time.time() < end: pass"]


def test_a_process_outside_the_run_shows_as_other_work_and_its_own_children_do_not() -> None:
    # Started through a shell that exits at once: the spinner is reparented away from this process tree, like a
    # compile or a test suite that happens to run beside a benchmark.
    shell = subprocess.run(
        ["sh", "-c", f"{' '.join(spin_code()[:2])} '{spin_code()[2]}' >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    outsider = int(shell.stdout.strip())
    child = subprocess.Popen(spin_code())
    try:
        time.sleep(0.3)
        a = trust.snapshot({"child": child.pid})
        time.sleep(2.0)
        u = usage(a, trust.snapshot({"child": child.pid}))
    finally:
        os.kill(outsider, signal.SIGKILL)
        child.kill()
        child.wait()
    # Each spinner gets at least a share of a core, however busy the machine is otherwise.
    assert u.others_pct > 25, u
    assert any(name.endswith(f" {outsider}") for name, _ in u.top_others), u.top_others
    assert not any(name.endswith(f" {child.pid}") for name, _ in u.top_others), u.top_others
    assert u.roles["child"] > 25 and u.role_max_proc["child"] > 25
