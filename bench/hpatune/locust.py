"""The tracker's steps from Locust's StepShape, read back from its per-step CSV."""

from __future__ import annotations

import argparse
import csv
import math
import subprocess
from pathlib import Path

from benchkit import BENCH, PROCS, VENV_BIN, pinned

from .steps import Server, ServerResult, Step, judge, server_figures


def locust_plan(args: argparse.Namespace, peak: float, shares: list[float]) -> tuple[int, int]:
    """(users added per step, users in the last step): the steps' rates in users x --user-rps."""
    per_step = max(1, math.ceil(peak * shares[0] / args.user_rps))
    return per_step, per_step * len(shares)


def locust_steps(
    args: argparse.Namespace, srv: Server, peak: float, shares: list[float], res: ServerResult
) -> list[Step]:
    """bench/locust_steps.py's StepShape of bench/locustfile.py's TrackerUser (one master and
    --locust-processes workers when more than one), headless, its per-step CSV read back."""
    per_step, top = locust_plan(args, peak, shares)
    res.locust_processes = args.locust_processes
    prefix = args.out_dir / "locust"
    cmd = [str(VENV_BIN / "locust"), "-f", f"{BENCH / 'locustfile.py'},{BENCH / 'locust_steps.py'}"]
    cmd += ["--headless", "--only-summary", "--host", f"http://127.0.0.1:{srv.port}", "--csv", str(prefix)]
    cmd += ["--csv-full-history", "--step-start-users", str(per_step), "--step-users", str(per_step)]
    cmd += ["--step-seconds", f"{args.step_seconds:g}", "--step-max-users", str(top)]
    cmd += ["--step-settle-seconds", f"{args.settle_seconds:g}", "--user-rps", f"{args.user_rps:g}"]
    cmd += ["--slugs", str(args.slugs), "--stop-timeout", "2"]
    if args.locust_processes > 1:
        cmd += ["--processes", str(args.locust_processes)]
    cmd.append("TrackerUser")
    print(
        f"  locust: {per_step} users more every {args.step_seconds:g} s up to {top}, {args.user_rps:g} req/s each, "
        f"{args.locust_processes} process(es) on core(s) {args.client_cpu}"
    )
    budget = len(shares) * args.step_seconds + 90
    logs = args.out_dir / "logs"
    proc = PROCS.start("locust", pinned(args.client_cpu, cmd), logs / "locust.log")
    srv.recorder.add_role("generator", proc.pid)
    try:
        proc.wait(budget)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"locust still running after {budget:.0f} s, see {logs / 'locust.log'}") from None
    finally:
        PROCS.stop(proc)
    path = Path(f"{prefix}_steps.csv")
    if proc.returncode not in (0, 1) or not path.exists():
        # Locust exits 1 when any request failed; that is a figure, not a crash.
        raise RuntimeError(f"locust exited with {proc.returncode} and no {path.name}; see {logs / 'locust.log'}")
    steps = []
    with path.open() as f:
        for row in csv.DictReader(f):
            n, users = int(row["step"]), int(row["users"])
            start, end = float(row["start"]), float(row["end"])
            step = Step(
                step=n,
                share=shares[min(n, len(shares) - 1)],
                offered_rps=users * args.user_rps,
                rps=float(row["rps"]),
                p50_ms=_num(row["p50_ms"]),
                p95_ms=_num(row["p95_ms"]),
                p99_ms=_num(row["p99_ms"]),
                requests=int(row["requests"]),
                failures=int(row["failures"]),
                error_rate=_num(row["error_rate"]),
                seconds=int(row["seconds"]),
                users=users,
                window=(start, end),
            )
            during = srv.recorder.usage(start, end)
            before = srv.recorder.usage(start - args.settle_seconds, start)
            pair = srv.recorder.window(start, end, with_extra=True)
            if during is not None:
                # Each Locust process runs its users on one thread: a process at its core's full is saturated.
                step.generator_cpu_pct = during.role_max_proc.get("generator")
                judge(args, srv, step, before, during)
            else:
                step.trust, step.why = "busy", "no CPU samples over the step: the machine could not be watched"
            if pair is not None:
                server_figures(step, pair[0][1], pair[1][1], srv.role)
            steps.append(step)
    return steps


def _num(v: str) -> float | None:
    return None if v in ("", "None") else float(v)
