"""Whether a benchmark step measured the server: the machine's other work and the load generator's own limits.

A step is one of:

- `ok`: a measurement of the server;
- `busy`: processes the run did not start used more than a tenth of a core (`Limits.busy_pct`) while it ran or
  just before; a compile or a test suite on the machine lowers every figure, so the step measured the machine;
- `generator-bound`: the load generator, not the server, set the figure: its core (or one of its processes) was
  saturated, or it answered less than `Limits.keep_up` of the offered rate while the server's core had room.

The CPU figures come from snapshots: every core's counters in /proc/stat and the CPU time of every process, from
/proc/<pid>/stat. The run's own processes are this process and its descendants, the CPU of the children it has
reaped included (their `cutime`), so a load generator that ran and exited between two snapshots still counts as
the run's. "Others" is the machine's user, nice, system and steal time less the run's: interrupt and softirq time
are left out, as that is the kernel's work for the run's own loopback traffic.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
OK, BUSY, GENERATOR_BOUND = "ok", "busy", "generator-bound"


@dataclass(frozen=True)
class Limits:
    """Where a step stops being a measurement of the server."""

    busy_pct: float = 10.0  # CPU of processes the run did not start, in % of one core
    keep_up: float = 0.95  # answered / offered below this, with the server's core not saturated: the generator's
    saturated_pct: float = 95.0  # a core (or a single-threaded process) this busy is saturated


@dataclass(frozen=True)
class Proc:
    ppid: int
    name: str
    own: float  # CPU seconds of the process itself (every thread)
    reaped: float  # CPU seconds of the children it has waited for
    start: int = 0  # when it started (clock ticks after boot): a reused pid is another process


@dataclass(frozen=True)
class Snapshot:
    t: float
    cores: dict[str, tuple[int, ...]]  # core -> (all jiffies, busy, user+nice+system+steal, steal)
    procs: dict[int, Proc]
    ours: frozenset[int]  # this process and its descendants
    roles: dict[str, frozenset[int]]  # role -> its root process and descendants


def read_cores() -> dict[str, tuple[int, ...]]:
    out = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, *vals = line.split()
            if name.startswith("cpu") and name != "cpu":
                n = [int(v) for v in vals] + [0] * 10
                # user nice system idle iowait irq softirq steal (guest and guest_nice are inside user and nice)
                total = sum(n[:8])
                out[name[3:]] = (total, total - n[3] - n[4], n[0] + n[1] + n[2] + n[7], n[7])
    return out


def read_procs() -> dict[int, Proc]:
    procs = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            head, _, rest = text.rpartition(")")
            f = rest.split()
            # fields after the name: state ppid ... utime(11) stime(12) cutime(13) cstime(14) ... starttime(19)
            procs[int(stat.parent.name)] = Proc(
                ppid=int(f[1]),
                name=head.partition("(")[2],
                own=(int(f[11]) + int(f[12])) / CLK_TCK,
                reaped=(int(f[13]) + int(f[14])) / CLK_TCK,
                start=int(f[19]),
            )
    return procs


def descendants(procs: dict[int, Proc], root: int) -> frozenset[int]:
    children: dict[int, list[int]] = {}
    for pid, p in procs.items():
        children.setdefault(p.ppid, []).append(pid)
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in procs and pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, []))
    return frozenset(out)


def snapshot(roles: dict[str, int] | None = None) -> Snapshot:
    """Every core's counters and every process's CPU time, now; `roles` names processes (with their children)."""
    cores = read_cores()
    procs = read_procs()
    return Snapshot(
        t=time.time(),
        cores=cores,
        procs=procs,
        ours=descendants(procs, os.getpid()),
        roles={name: descendants(procs, pid) for name, pid in (roles or {}).items()},
    )


def _cpu(snap: Snapshot, pids: Iterable[int]) -> float:
    return sum(snap.procs[p].own + snap.procs[p].reaped for p in pids if p in snap.procs)


@dataclass
class Usage:
    """CPU between two snapshots; percentages are of one core."""

    seconds: float
    cores: dict[str, float]  # % busy of each core, any work
    others_pct: float  # processes the run did not start
    top_others: list[tuple[str, float]]  # ("name pid", % of a core), the largest first
    roles: dict[str, float] = field(default_factory=dict)  # each role with its children
    role_max_proc: dict[str, float] = field(default_factory=dict)  # each role's busiest single process

    def cores_pct(self, cores: Iterable[str] | None) -> float | None:
        """Mean busy % of the named cores (None: no cores named, or none sampled)."""
        values = [self.cores[c] for c in cores or () if c in self.cores]
        return sum(values) / len(values) if values else None


def usage(a: Snapshot, b: Snapshot) -> Usage:
    wall = max(1e-6, b.t - a.t)
    cores = {
        c: 100 * (b.cores[c][1] - a.cores[c][1]) / max(1, b.cores[c][0] - a.cores[c][0])
        for c in b.cores
        if c in a.cores
    }
    machine = sum(b.cores[c][2] - a.cores[c][2] for c in b.cores if c in a.cores) / CLK_TCK
    # The run's CPU: its processes now, the ones that were there before (their reaped children included).
    ours = _cpu(b, b.ours | a.ours) - _cpu(a, a.ours)
    others = max(0.0, machine - ours)
    top = []
    for pid, p in b.procs.items():
        if pid in b.ours or pid in a.ours:
            continue
        before = a.procs.get(pid)
        # A kernel worker renames itself after its work item: the start time tells one process from another.
        spent = p.own - (before.own if before is not None and before.start == p.start else 0.0)
        if spent > 0.01 * wall:
            top.append((f"{p.name} {pid}", 100 * spent / wall))
    # Steal is time the hypervisor gave another guest: no process of ours or theirs shows it, so it is named here.
    steal = sum(b.cores[c][3] - a.cores[c][3] for c in b.cores if c in a.cores and len(b.cores[c]) > 3) / CLK_TCK
    if steal > 0.01 * wall:
        top.append(("steal (the hypervisor ran other guests)", 100 * steal / wall))
    top.sort(key=lambda x: -x[1])
    roles, role_max = {}, {}
    for role, pids in b.roles.items():
        was = a.roles.get(role, frozenset())
        roles[role] = 100 * (_cpu(b, pids | was) - _cpu(a, was)) / wall
        per_proc = [b.procs[p].own - a.procs[p].own for p in pids if p in a.procs and p in b.procs]
        role_max[role] = 100 * max(per_proc, default=0.0) / wall
    return Usage(wall, cores, 100 * others / wall, top[:3], roles, role_max)


class Recorder(threading.Thread):
    """Snapshots on `mark()` and, once started, every `interval` seconds; beside each mark, and beside a periodic
    snapshot at most every `extra_every` seconds (never when None), whatever `extra()` returns.

    A snapshot costs a few milliseconds of CPU on the load generator's cores: where the step's edges are known,
    marks alone (and no thread) keep it out of the measured seconds.

    `extra` is typically a scrape of the server's /metrics, which the server answers on the thread that serves the
    load: scraped during a measured window, it would add to the latency it measures. Snapshots cost the server
    nothing (they read /proc).
    """

    def __init__(
        self,
        roles: dict[str, int],
        extra: Callable[[], Any] | None = None,
        interval: float = 0.5,
        extra_every: float | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.roles, self.extra, self.interval, self.extra_every = dict(roles), extra, interval, extra_every
        self.samples: list[tuple[Snapshot, Any]] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.last_extra = 0.0

    def mark(self, with_extra: bool = True) -> tuple[Snapshot, Any]:
        """A sample now (besides the periodic ones), e.g. at a step's edge; it is also kept."""
        with self.lock:
            roles = dict(self.roles)
        snap = snapshot(roles)
        data = None
        if self.extra is not None and with_extra:
            with contextlib.suppress(OSError, RuntimeError):
                data = self.extra()
                self.last_extra = time.monotonic()
        with self.lock:
            self.samples.append((snap, data))
            self.samples.sort(key=lambda s: s[0].t)
        return snap, data

    def add_role(self, name: str, pid: int) -> None:
        with self.lock:
            self.roles[name] = pid

    def run(self) -> None:
        while not self.done.is_set():
            due = self.extra_every is not None and time.monotonic() - self.last_extra >= self.extra_every
            self.mark(with_extra=due)
            self.done.wait(self.interval)

    def stop(self) -> None:
        self.done.set()
        if self.is_alive():
            self.join(5)

    def window(
        self, start: float, end: float, with_extra: bool = False
    ) -> tuple[tuple[Snapshot, Any], tuple[Snapshot, Any]] | None:
        """The first and last samples inside [start, end] (with a little slack for the sampling period); with
        `with_extra`, the first and last that have an `extra()` beside them."""
        slack = (self.extra_every or self.interval) / 2 if with_extra else self.interval / 2
        with self.lock:
            inside = [s for s in self.samples if start - slack <= s[0].t <= end + slack]
        if with_extra:
            inside = [s for s in inside if s[1] is not None]
        if len(inside) < 2 or inside[-1][0].t - inside[0][0].t < self.interval / 2:
            return None
        return inside[0], inside[-1]

    def usage(self, start: float, end: float) -> Usage | None:
        pair = self.window(start, end)
        return None if pair is None else usage(pair[0][0], pair[1][0])


# ---------------------------------------------------------------- classification


@dataclass
class Verdict:
    trust: str
    why: str = ""


def classify(
    limits: Limits,
    *,
    others_pct: Iterable[float | None],
    top_others: list[tuple[str, float]] | None = None,
    offered: float | None = None,
    achieved: float | None = None,
    generator_cores_pct: float | None = None,
    generator_proc_pct: float | None = None,
    server_pct: float | None = None,
    server_limit_pct: float = 100.0,
) -> Verdict:
    """`busy`, `generator-bound` or `ok`, and why; the machine's other work is checked first.

    `others_pct`: CPU of other processes before and during the step (% of a core), each checked;
    `generator_cores_pct`: mean busy % of the generator's cores; `generator_proc_pct`: its busiest process, in %
    of the cores that process can use; `server_pct`: the server's CPU, against its limit `server_limit_pct`.
    """
    seen = [v for v in others_pct if v is not None]
    worst = max(seen, default=None)
    if worst is not None and worst > limits.busy_pct:
        named = top_others or []
        who = ", ".join(f"{name} {pct:.0f}%" for name, pct in named)
        if sum(pct for _, pct in named) < worst / 2:
            who += (", and " if who else "") + "processes that came and went between samples"
        return Verdict(BUSY, f"other processes used {worst:.0f}% of a core (limit {limits.busy_pct:g}%): {who}")
    server_room = server_pct is None or server_pct < limits.saturated_pct / 100 * server_limit_pct
    if generator_cores_pct is not None and generator_cores_pct >= limits.saturated_pct and server_room:
        return Verdict(GENERATOR_BOUND, f"the generator's core(s) were {generator_cores_pct:.0f}% busy")
    if generator_proc_pct is not None and generator_proc_pct >= limits.saturated_pct and server_room:
        return Verdict(GENERATOR_BOUND, f"a generator process used {generator_proc_pct:.0f}% of its core(s)")
    if offered and achieved is not None and achieved < limits.keep_up * offered and server_room:
        shown = "" if server_pct is None else f", the server's core {server_pct:.0f}% busy"
        return Verdict(
            GENERATOR_BOUND,
            f"the generator sent {achieved:,.0f} of {offered:,.0f} req/s offered ({achieved / offered:.0%}){shown}",
        )
    return Verdict(OK)


@dataclass
class Decision:
    best: Any | None  # the step chosen as capacity
    refusal: str | None  # why no target may be written from these steps
    complete: bool  # a step failed the SLO: the capacity is bounded from above as well


def decide(steps: list[Any], passed: Callable[[Any], bool], rate: str, label: Callable[[Any], str]) -> Decision:
    """The highest-`rate` step before the first that fails `passed`, provided every step up to and including that
    one (or every step, when none fails) is a measurement (`trust == ok`); otherwise a refusal that says why.

    Each step gets `passed` set. A busy or generator-bound step is never chosen: were it the boundary, the capacity
    would be the machine's or the generator's; were it below the boundary, a step it hides might have failed.
    """
    for s in steps:
        s.passed = bool(passed(s))
    best = None
    for s in steps:
        if s.trust != OK:
            return Decision(None, f"{label(s)} was {s.trust} ({s.why}): the capacity cannot be told from it", False)
        if not s.passed:
            return Decision(best, None, True)
        if best is None or getattr(s, rate) > getattr(best, rate):
            best = s
    return Decision(best, None, False)
