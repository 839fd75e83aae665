"""Measure one pod of each role and write the autoscaling targets into the prod overlay (`make hpa-tune`).

Tracker: one `adclick tracker` process pinned with taskset to one core (the pod's CPU limit). First a short
closed-loop peak (wrk, bench/clicks.lua), then constant-rate steps from 10% to 100% of that peak (bench/loadgen,
latency measured from when each request was due; or Locust's StepShape with `--generator locust`). The capacity is
the highest step rate reached while every step so far kept its p99 within the SLO, its errors under the limit and
the offered rate; the HPA's per-pod RPS target (the Pods metric's `averageValue`) is a fraction of it. A last step
at that target rate measures the clicks the tracker packs per SQS message there (its /metrics counters).

Postback: one `adclick postback` process on the same core, held to the pod's CPU limit, sending every valid
postback to the bench SQS endpoint; the same peak and steps with valid tokens and ClickIDs give its HPA target.

Worker: one `adclick worker` process on that core against a throwaway database, fed click messages packed as the
tracker packs them at its target rate, then conversion messages, each at steps of its own drain rate; the capacity
is the highest rate it kept up with while the oldest message it received stayed under a bound. KEDA's
`queueLength` (messages per replica) of each queue is a fraction of capacity x bound.

Every step is checked before it counts (bench/trust.py): a step during which other processes used more than a
tenth of a core is "busy", one whose load generator fell behind or saturated its core is "generator-bound". Such
a step is never the capacity, and when a capacity would depend on one, the tuner writes nothing and exits with 3.

Writes a report (markdown), a PNG chart and JSON under bench/results/hpa-<time>/, and the targets as JSON 6902
patches (guarded by `test` operations, so a reshuffled base fails the build instead of patching the wrong entry)
next to the overlay's kustomization.yaml, which gets one `patches` entry per file. Each patch's comment names the
run: its date, machine and command.

All load goes to 127.0.0.1 and stops by itself. A benchmark measures; it does not pass or fail on time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from benchkit import BENCH, PROCS, ROOT, add_load_options, interrupt_on, parser, run_stamp, start_backends

from .machine import machine, parse_cpus
from .overlay import Target, locate_targets, pod_cpu, render, write_overlay
from .postback import tune_postback
from .report import write_chart, write_report
from .tracker import tune_tracker
from .worker import tune_worker

REFUSED = 3  # exit code of a run whose targets cannot be trusted


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--slo-ms", type=float, default=5.0, help="the tracker's p99 objective in ms (default 5)")
    p.add_argument(
        "--postback-slo-ms",
        type=float,
        default=50.0,
        help="the postback role's p99 objective in ms (default 50: an advertiser's server waits on it, no browser)",
    )
    p.add_argument("--max-error-rate", type=float, default=0.001, help="errors allowed per request (default 0.001)")
    p.add_argument("--fraction", type=float, default=0.7, help="share of the capacity to target (default 0.7)")
    p.add_argument("--peak-seconds", type=float, default=5.0, help="length of the closed-loop wrk peak (default 5)")
    p.add_argument("--peak-rps", type=float, help="the tracker's peak, given instead of measured with wrk")
    p.add_argument("--postback-peak-rps", type=float, help="the postback role's peak, given instead of measured")
    p.add_argument("--steps", type=int, default=10, help="constant-rate steps, 1/N to N/N of the peak (default 10)")
    p.add_argument("--step-seconds", type=float, default=20.0, help="length of a step (default 20)")
    p.add_argument("--settle-seconds", type=float, default=5.0, help="start of each step left out (default 5)")
    p.add_argument(
        "--generator",
        choices=("loadgen", "locust"),
        default="loadgen",
        help="the tracker's steps: bench/loadgen at constant rates (default), or Locust's StepShape (the postback "
        "role's steps are loadgen's either way)",
    )
    p.add_argument("--user-rps", type=float, default=50.0, help="Locust: requests per second per user (default 50)")
    p.add_argument(
        "--locust-processes",
        type=int,
        help="Locust: worker processes under one master (default: one per client core)",
    )
    add_load_options(p)
    p.add_argument("--tracker-cpu", default="1", help="the pod's core: every role runs here in turn (default 1)")
    p.add_argument("--client-cpu", default="0", help="cores for the generators, Redis, SQS, PostgreSQL (default 0)")
    p.add_argument("--tracker-cpu-limit", type=float, help="tracker pod's CPU limit (default: from the overlay)")
    p.add_argument("--postback-cpu-limit", type=float, help="postback pod's CPU limit (default: from the overlay)")
    p.add_argument("--worker-cpu-limit", type=float, help="worker pod's CPU limit (default: from the overlay)")
    p.add_argument("--max-age-seconds", type=float, default=60.0, help="bound on the oldest message's age (60)")
    p.add_argument(
        "--events-per-message",
        type=int,
        default=0,
        help="clicks per SQS message (default: what the tracker packed at its target rate in this run)",
    )
    p.add_argument("--worker-drain-events", type=int, default=30_000, help="clicks queued for the drain (30,000)")
    p.add_argument("--worker-drain-conversions", type=int, default=3_000, help="conversions for the drain (3,000)")
    p.add_argument("--worker-fractions", default="0.5,0.75,0.9,1.1", help="step rates as shares of the drain rate")
    p.add_argument("--worker-step-seconds", type=float, default=20.0, help="length of a worker step (default 20)")
    p.add_argument("--worker-concurrency", type=int, default=2, help="adclick worker --concurrency (default 2)")
    p.add_argument("--worker-timeout", type=float, default=300.0, help="give up on a drain after this (300 s)")
    p.add_argument("--database", choices=("postgres", "sqlite"), default="postgres", help="worker's database")
    p.add_argument("--skip-tracker", action="store_true", help="leave the tracker out (needs --events-per-message)")
    p.add_argument("--skip-postback", action="store_true", help="leave the postback role out")
    p.add_argument("--skip-worker", action="store_true", help="leave the worker out")
    p.add_argument(
        "--busy-limit",
        type=float,
        default=10.0,
        help="CPU of processes this run did not start, in %% of a core, above which a step is busy (default 10)",
    )
    p.add_argument(
        "--keep-up",
        type=float,
        default=0.95,
        help="share of the offered rate a step must answer, below which (with the server's core not saturated) it "
        "is generator-bound (default 0.95)",
    )
    p.add_argument(
        "--saturated",
        type=float,
        default=95.0,
        help="%% busy at which the generator's core or process is saturated: generator-bound (default 95)",
    )
    p.add_argument("--wait-idle", type=float, default=30.0, help="wait this long for a quiet machine per phase (30)")
    p.add_argument("--overlay", type=Path, default=ROOT / "k8s" / "overlays" / "prod", help="kustomize overlay")
    p.add_argument("--no-write", action="store_true", help="report only; leave the overlay alone")
    p.add_argument("--out", type=Path, help="report directory (default bench/results/hpa-<time>)")
    args = p.parse_args(argv)
    if not shutil.which("taskset"):
        print("warning: taskset not found (util-linux): nothing is pinned, figures are not one core's")
        args.tracker_cpu = args.client_cpu = None
    if args.locust_processes is None:
        args.locust_processes = max(1, len(parse_cpus(args.client_cpu)))
    args.worker_fractions = [float(x) for x in args.worker_fractions.split(",") if x.strip()]
    if args.step_seconds <= args.settle_seconds:
        p.error("--step-seconds must be longer than --settle-seconds")
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.skip_tracker and not args.skip_worker and not args.events_per_message:
        p.error("the worker's click messages hold what the tracker packs: measure it, or give --events-per-message")
    args.started = dt.datetime.now()
    args.machine = machine()
    args.command = shlex.join(["bench/hpa_tune.py", *(sys.argv[1:] if argv is None else argv)])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    args.out_dir = args.out or BENCH / "results" / f"hpa-{run_stamp(args.started)}"
    (args.out_dir / "logs").mkdir(parents=True, exist_ok=True)
    client = parse_cpus(args.client_cpu)
    if client:
        # This process, and whatever it starts unpinned (PostgreSQL, the tuner's own sends), stay off the pod's core.
        with contextlib.suppress(OSError, ValueError):
            os.sched_setaffinity(0, {int(c) for c in client})
    objects: list[dict[str, Any]] = []
    with contextlib.suppress(RuntimeError, OSError, yaml.YAMLError):
        objects = render(args.overlay)
    for role in ("tracker", "postback", "worker"):
        if getattr(args, f"{role}_cpu_limit") is None:
            setattr(args, f"{role}_cpu_limit", min(1.0, pod_cpu(objects, role) or 1.0))
        setattr(args, f"{role}_cpu_request", pod_cpu(objects, role, "requests"))
    targets: dict[str, list[Target]] = {}
    if not args.no_write:
        if not (args.overlay / "kustomization.yaml").exists():
            print(f"error: {args.overlay / 'kustomization.yaml'} not found: nothing to patch (or --no-write)")
            return 2
        try:
            targets = locate_targets(args, render(args.overlay))
        except RuntimeError as error:
            print(f"error: {error} (or --no-write)")
            return 2
    tracker = postback = worker = None
    try:
        print("starting Redis and the SQS endpoint ...")
        logs = args.out_dir / "logs"
        _, sqs, env = start_backends(args.client_cpu, logs, args.slugs, ADCLICK_DRAIN_SECONDS="0.5")
        if not args.skip_tracker:
            print("\n== tracker")
            tracker = tune_tracker(args, env)
        if not args.skip_postback:
            print("\n== postback")
            postback = tune_postback(args, env)
        if not args.skip_worker:
            print("\n== worker")
            if args.events_per_message:
                per_message, source = args.events_per_message, "--events-per-message"
            elif tracker is not None and tracker.clicks_per_message:
                per_message = max(1, round(tracker.clicks_per_message))
                source = f"what the tracker packed, {tracker.clicks_per_message_from}"
            else:
                raise RuntimeError("the tracker phase measured no clicks per message: give --events-per-message")
            worker = tune_worker(args, env, sqs, per_message)
            worker.events_per_message_from = source
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process this run started")
        return 130
    finally:
        PROCS.stop_all()

    refusals = [f"{r.role}: {r.refusal}" for r in (tracker, postback) if r is not None and r.refusal]
    if worker is not None:
        refusals += [f"worker, {q.queue}: {q.refusal}" for q in worker.queues() if q.refusal]
    report = args.out_dir / "report.md"
    written = []
    if not args.no_write and not refusals:
        written = write_overlay(args, targets, tracker, postback, worker, report)
    write_chart(args, tracker, postback, worker)
    write_report(args, tracker, postback, worker, refusals, written)
    data = {
        "settings": {k: (str(v) if isinstance(v, Path | dt.datetime) else v) for k, v in vars(args).items()},
        "refusals": refusals,
        "tracker": asdict(tracker) if tracker else None,
        "postback": asdict(postback) if postback else None,
        "worker": asdict(worker) if worker else None,
        "written": written,
    }
    (args.out_dir / "result.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nreport: {report}\nchart:  {args.out_dir / 'chart.png'}")
    for w in written:
        print(f"wrote:  {w}")
    if refusals:
        print("\nrefusing to write targets: this run cannot be trusted (nothing was written):")
        for r in refusals:
            print(f"  - {r}")
        print("run it again on a quiet machine: no tests, builds or other load at the same time")
        return REFUSED
    return 0
