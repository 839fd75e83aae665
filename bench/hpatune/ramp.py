"""The ramp of steps from a server's peak, and what it concludes: capacity, target, or a refusal; the CPU target
that goes with the RPS target."""

from __future__ import annotations

import argparse
import itertools
import math

from benchkit import build_loadgen
from trust import OK, Decision, decide

from .locust import locust_steps
from .steps import Server, ServerResult, fmt, loadgen_step, run_peak, show, within


def ramp(args: argparse.Namespace, srv: Server, res: ServerResult, given_peak: float | None) -> None:
    """Peak, then steps from 1/N to N/N of it, then the decision: capacity, target, or a refusal."""
    res.peak = peak = run_peak(args, srv, given_peak)
    print(
        f"  {srv.role} peak: {peak.rps:,.0f} req/s ({peak.source}"
        + (
            f", p99 {fmt(peak.p99_ms, ' ms')}, server CPU {fmt(peak.server_cpu_pct, '%', 0)}"
            if peak.source == "wrk"
            else ""
        )
        + ")"
        + ("" if peak.trust == OK else f"  <- {peak.trust}: {peak.why}")
    )
    if peak.rps <= 0:
        raise RuntimeError(f"the {srv.role} answered nothing at its peak")
    passed = within(args, res.slo_ms)
    shares = [k / args.steps for k in range(1, args.steps + 1)]
    if res.generator == "locust":
        res.steps = locust_steps(args, srv, peak.rps, shares, res)
        for s in res.steps:
            print(show(srv.role, s))
    else:
        binary = build_loadgen()
        if binary is None:
            raise RuntimeError("bench/loadgen is needed for the constant-rate steps, and it needs cargo to build")
        for n, share in enumerate(shares):
            step = loadgen_step(args, binary, srv, n, share, share * peak.rps)
            res.steps.append(step)
            print(show(srv.role, step))
            if step.trust != OK or not passed(step):
                break  # nothing after it can be chosen
    verdict = decide(res.steps, passed, "rps", lambda s: f"step {s.step} ({s.offered_rps:,.0f} req/s offered)")
    conclude(args, res, verdict)
    if peak.trust == "busy" and not res.refusal:
        # A generator-bound peak only caps the steps (the capacity found is then a lower bound); a busy one was
        # taken while other work ran, and what it scaled is no measurement of this server.
        res.refusal = f"the peak that scales the steps was busy ({peak.why})"
        res.target_rps = None


def conclude(args: argparse.Namespace, res: ServerResult, verdict: Decision) -> None:
    if verdict.refusal:
        res.refusal = verdict.refusal
        if res.generator == "locust" and any(s.trust == "generator-bound" for s in res.steps):
            res.refusal += (
                f"; Locust was the bottleneck with {res.locust_processes} process(es): give it more "
                "(--locust-processes N on more client cores) or run it distributed (README, Load tests)"
            )
        return
    best = verdict.best
    res.complete = verdict.complete
    if best is None:
        res.note = "no step kept p99 within the SLO with errors under the limit"
        return
    res.capacity_rps, res.capacity_step = best.rps, best.step
    if res.limit_cores < 1 and not res.enforced and best.server_cpu_pct:
        # The pod's limit could not be enforced here: a pod gets its share of the CPU this rate took.
        res.scale = min(1.0, res.limit_cores * 100 / best.server_cpu_pct)
    res.target_rps = max(1, math.floor(args.fraction * best.rps * res.scale))
    if not verdict.complete:
        res.note = "every step kept the SLO: the capacity is at least the last step's rate" + (
            " (the peak was generator-bound: a lower bound)" if res.peak and res.peak.trust != OK else ""
        )


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """y at x on the polyline through `points` (x, y), held flat beyond its ends."""
    pts = sorted(points)
    if not pts:
        return None
    if x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return pts[-1][1]


def cpu_at_target(args: argparse.Namespace, res: ServerResult) -> None:
    """The CPU utilization target that scales out at the same load as the RPS target.

    The HPA scales on whichever metric asks for more pods. A CPU target below what a pod uses at its RPS target
    makes the measured RPS target dead letter (e.g. 60% of a postback pod's 250m request is reached at a third of
    its measured target); so the CPU target is what the server used at the target rate, as a share of the request.
    """
    request = getattr(args, f"{res.role}_cpu_request", None)
    if res.target_rps is None or not request:
        return
    at = res.at_target
    if at is not None and at.trust == OK and at.server_cpu_pct:
        cpu, res.cpu_at_target_from = at.server_cpu_pct, "measured at the target rate"
    else:
        points = [(s.rps, s.server_cpu_pct) for s in res.steps if s.server_cpu_pct and s.trust == OK]
        value = interpolate(points, float(res.target_rps))
        if value is None:
            return
        cpu, res.cpu_at_target_from = value, f"interpolated between the steps around {res.target_rps:,} req/s"
    res.cpu_at_target_pct, res.cpu_request_cores = cpu, request
    res.cpu_target_pct = max(1, math.ceil(cpu / request))
