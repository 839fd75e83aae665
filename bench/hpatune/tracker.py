"""The tracker phase: one `adclick tracker` process on the pod's core, its ramp, and a step at its target rate."""

from __future__ import annotations

import argparse

from benchkit import PROCS, build_loadgen, http_get, scrape, start_tracker, tracker_available, wait_http
from trust import OK, Recorder

from .machine import cpu_limit_text, limit_cpu, release_cpu, wait_idle
from .ramp import cpu_at_target, interpolate, ramp
from .steps import Server, ServerResult, fmt, loadgen_step, show


def tune_tracker(args: argparse.Namespace, env: dict[str, str]) -> ServerResult:
    res = ServerResult(role="tracker", generator=args.generator, slo_ms=args.slo_ms)
    res.others_before_pct = wait_idle(args).others_pct
    why = tracker_available()
    if why:
        raise RuntimeError(f"the tracker cannot run: {why}")
    logs = args.out_dir / "logs"
    proc, port = start_tracker(args.tracker_cpu, logs / "tracker.log", env)
    group = limit_cpu(proc.pid, args.tracker_cpu_limit) if args.tracker_cpu_limit < 1 else None
    res.limit_cores, res.enforced = args.tracker_cpu_limit, group is not None or args.tracker_cpu_limit >= 1
    res.cpu_limit = cpu_limit_text(args.tracker_cpu_limit, group)
    # Locust's step windows are only known afterwards: scrape once a second then; loadgen's edges are marked.
    every = 1.0 if args.generator == "locust" else None
    recorder = Recorder({"server": proc.pid}, extra=lambda: scrape(port), extra_every=every)
    try:
        wait_http(port, "/health", proc)
        status, headers, _ = http_get(port, "/c/bench-1?sub1=hpa-tune")
        if status != 302:
            raise RuntimeError(f"GET /c/bench-1 answered {status}, not 302; see {logs / 'tracker.log'}")
        print(f"  tracker on 127.0.0.1:{port} (core {args.tracker_cpu}); /c/bench-1 -> 302 {headers.get('location')}")
        if args.generator == "locust":
            recorder.start()  # Locust's steps are known afterwards: sample all along; loadgen's edges are marked
        limit_pct = 100 * min(1.0, args.tracker_cpu_limit) if group else 100.0
        srv = Server("tracker", port, recorder, limit_pct, "clicks.lua", None, ["--slugs", str(args.slugs)])
        try:
            ramp(args, srv, res, args.peak_rps)
            if res.target_rps is not None and res.refusal is None and (binary := build_loadgen()):
                # Clicks per message at the rate the HPA holds each pod to: what the worker's trigger counts in.
                share = res.target_rps / res.peak.rps
                res.at_target = at = loadgen_step(args, binary, srv, len(res.steps), share, float(res.target_rps))
                print(show("tracker", at) + f", {fmt(at.clicks_per_message, ' clicks per message', 0)} (the target)")
        finally:
            recorder.stop()
        if proc.poll() is not None:
            raise RuntimeError(f"the tracker exited with {proc.returncode} during the load")
    finally:
        PROCS.stop(proc, grace=15.0)
        release_cpu(group)
    at = res.at_target
    if at is not None and at.clicks_per_message:
        res.clicks_per_message, res.clicks_per_message_from = at.clicks_per_message, "measured at the target rate"
        if at.trust != OK:
            res.refusal = f"the step at the target rate (it measures the clicks per message) was {at.trust} ({at.why})"
    else:
        points = [(s.rps, s.clicks_per_message) for s in res.steps if s.clicks_per_message]
        rate = res.target_rps or args.fraction * (res.capacity_rps or max((s.rps for s in res.steps), default=0))
        value = interpolate(points, rate) if rate else None
        if value:
            res.clicks_per_message = value
            res.clicks_per_message_from = f"interpolated between the steps around {rate:,.0f} req/s"
    cpu_at_target(args, res)
    return res
