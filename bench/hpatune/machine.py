"""The machine under the tuner: which cores, whether other work is running, and a pod's CPU limit held with a
cgroup."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from pathlib import Path

from benchkit import cpu_model
from trust import Usage, snapshot, usage


def parse_cpus(spec: str | None) -> list[str]:
    """Core numbers of a taskset list ("0", "0-2", "0,2"), as /proc/stat names them."""
    cores: list[str] = []
    for part in (spec or "").split(","):
        if part.strip():
            lo, _, hi = part.partition("-")
            cores += [str(c) for c in range(int(lo), int(hi or lo) + 1)]
    return cores


def machine() -> str:
    return f"{platform.node()} ({cpu_model() or '?'}, {os.cpu_count()} cores)"


def sample_others(seconds: float) -> Usage:
    a = snapshot()
    time.sleep(seconds)
    return usage(a, snapshot())


def wait_idle(args: argparse.Namespace) -> Usage:
    """Wait up to --wait-idle seconds for other processes to leave the machine alone; the last sample."""
    u = sample_others(1.0)
    deadline = time.monotonic() + args.wait_idle
    while u.others_pct > args.busy_limit and time.monotonic() < deadline:
        u = sample_others(2.0)
    who = ", ".join(f"{n} {p:.0f}%" for n, p in u.top_others)
    print(
        f"  idle check: other processes {u.others_pct:.0f}% of a core"
        + (
            f" ({who})  <- other work is running: its steps will be marked busy"
            if u.others_pct > args.busy_limit
            else ""
        )
    )
    return u


def limit_cpu(pid: int, cores: float) -> str | None:
    """Hold a process to `cores` of CPU time with a CFS quota, as a pod's limit does; None where cgroups are shut."""
    period = 100_000
    quota = max(1000, int(cores * period))
    for root, files in (
        (Path("/sys/fs/cgroup/cpu"), {"cpu.cfs_period_us": str(period), "cpu.cfs_quota_us": str(quota)}),
        (Path("/sys/fs/cgroup"), {"cpu.max": f"{quota} {period}"}),
    ):
        group = root / f"adclick-hpa-tune-{pid}"
        try:
            if not (root / next(iter(files))).exists() and not (root / "cgroup.procs").exists():
                continue
            group.mkdir(exist_ok=True)
            for name, value in files.items():
                (group / name).write_text(value)
            (group / "cgroup.procs").write_text(str(pid))
            return str(group)
        except OSError:
            with contextlib.suppress(OSError):
                group.rmdir()
    return None


def release_cpu(group: str | None) -> None:
    if group:
        with contextlib.suppress(OSError):
            Path(group).rmdir()


def cpu_limit_text(cores: float, group: str | None) -> str:
    if cores >= 1:
        return f"{cores:g} core (its pinned core)"
    return f"{cores:g} core" + (" (CFS quota)" if group else " (not enforced: no writable cgroup; scaled, see below)")
