"""The step load for bench/locustfile.py, opt in: `StepShape` and its per-step table.

Load it beside the locustfile (it holds no users of its own), in every process of the run, workers included:
they report their per-second samples to the master.

    locust -f bench/locustfile.py,bench/locust_steps.py --headless --host http://127.0.0.1:8000 \
        --csv out/run --step-start-users 10 --step-users 10 --step-seconds 20 --step-max-users 100 TrackerUser

`StepShape` starts `--step-start-users`, adds `--step-users` every `--step-seconds` up to `--step-max-users`, then
stops; Locust's -u, -r and -t do not apply to it (without this file they work as in any Locust project). Besides
Locust's own CSV files (`--csv PREFIX --csv-full-history`), the master writes `PREFIX_steps.csv` (or `--step-csv`):
one row per step (users, requests per second, p50/p95/p99 in ms, errors), from each step's last `step_seconds -
step_settle_seconds` seconds, with latencies kept at 1% resolution rather than Locust's whole milliseconds.
Every option also reads a `LOCUST_*` variable; a master passes them on to its workers.
"""

from __future__ import annotations

import bisect
import collections
import csv
import itertools
import logging
import math
import time
from pathlib import Path
from typing import Any

from locust import LoadTestShape, events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

log = logging.getLogger("adclick.locust")

# Response times are kept in buckets 1% wide (bucket k holds about 1.01**k microseconds).
_LOG_STEP = math.log(1.01)


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--step-start-users", type=int, default=10, env_var="LOCUST_STEP_START_USERS")
    parser.add_argument("--step-users", type=int, default=10, env_var="LOCUST_STEP_USERS", help="users added per step")
    parser.add_argument("--step-seconds", type=float, default=30, env_var="LOCUST_STEP_SECONDS", help="step length")
    parser.add_argument("--step-max-users", type=int, default=100, env_var="LOCUST_STEP_MAX_USERS")
    parser.add_argument(
        "--step-settle-seconds",
        type=float,
        default=5,
        env_var="LOCUST_STEP_SETTLE_SECONDS",
        help="seconds at the start of each step left out of its row in PREFIX_steps.csv",
    )
    parser.add_argument(
        "--step-csv", default="", env_var="LOCUST_STEP_CSV", help="where the per-step table goes (PREFIX_steps.csv)"
    )


def options_of(environment: Environment) -> Any:
    if environment.parsed_options is None:
        raise RuntimeError("bench/locust_steps.py needs Locust's command line options")
    return environment.parsed_options


class Seconds:
    """Requests, failures and response-time buckets by wall-clock second."""

    def __init__(self) -> None:
        self.data: dict[int, list[Any]] = {}

    def record(self, when: float, response_time_ms: float, failed: bool) -> None:
        entry = self.data.get(int(when))
        if entry is None:
            entry = self.data[int(when)] = [0, 0, collections.Counter()]
        entry[0] += 1
        entry[1] += failed
        micros = max(1.0, response_time_ms * 1000)
        entry[2][round(math.log(micros) / _LOG_STEP)] += 1

    def take(self) -> dict[str, list[Any]]:
        """The samples so far as msgpack-friendly data, and forget them (a worker's report to its master)."""
        out = {str(sec): [n, f, list(b.items())] for sec, (n, f, b) in self.data.items()}
        self.data = {}
        return out

    def merge(self, data: dict[str, list[Any]]) -> None:
        for sec, (n, f, buckets) in data.items():
            entry = self.data.get(int(sec))
            if entry is None:
                entry = self.data[int(sec)] = [0, 0, collections.Counter()]
            entry[0] += n
            entry[1] += f
            for key, count in buckets:
                entry[2][int(key)] += count

    def window(self, start: float, end: float) -> tuple[int, int, collections.Counter[int], int]:
        """Requests, failures, buckets and whole seconds in [start, end)."""
        n = f = 0
        buckets: collections.Counter[int] = collections.Counter()
        secs = range(math.ceil(start), math.floor(end))
        for sec in secs:
            entry = self.data.get(sec)
            if entry:
                n += entry[0]
                f += entry[1]
                buckets.update(entry[2])
        return n, f, buckets, len(secs)


def percentile_ms(buckets: collections.Counter[int], q: float) -> float | None:
    total = sum(buckets.values())
    if not total:
        return None
    keys = sorted(buckets)
    cum = list(itertools.accumulate(buckets[k] for k in keys))
    k = keys[min(len(keys) - 1, bisect.bisect_left(cum, q * total))]
    return math.exp(k * _LOG_STEP) / 1000


SECONDS = Seconds()
# (step number, target users, wall-clock start) as StepShape enters each step, and its wall-clock end.
STEPS: list[tuple[int, int, float]] = []
SHAPE_END: list[float] = []


@events.init.add_listener
def _init(environment: Environment, **_kw: Any) -> None:
    runner = environment.runner

    @environment.events.request.add_listener
    def _on_request(response_time: float, exception: BaseException | None, **_kw: Any) -> None:
        SECONDS.record(time.time(), response_time, exception is not None)

    if isinstance(runner, WorkerRunner):

        @environment.events.report_to_master.add_listener
        def _report(data: dict[str, Any], **_kw: Any) -> None:
            data["adclick_seconds"] = SECONDS.take()

        return

    if isinstance(runner, MasterRunner):

        @environment.events.worker_report.add_listener
        def _merge(data: dict[str, Any], **_kw: Any) -> None:
            SECONDS.merge(data.get("adclick_seconds", {}))

    @environment.events.quitting.add_listener
    def _write_steps(environment: Environment, **_kw: Any) -> None:
        write_steps(environment)


def step_rows(settle: float) -> list[dict[str, Any]]:
    rows = []
    ends = [start for _, _, start in STEPS[1:]] + [SHAPE_END[0] if SHAPE_END else time.time()]
    for (number, users, start), end in zip(STEPS, ends, strict=True):
        begin = start + settle if end - start - settle >= 1 else start
        n, failed, buckets, seconds = SECONDS.window(begin, end)
        if not seconds:
            continue
        p50, p95, p99 = (percentile_ms(buckets, q) for q in (0.5, 0.95, 0.99))
        rows.append(
            {
                "step": number,
                "users": users,
                "start": round(begin, 3),
                "end": round(end, 3),
                "seconds": seconds,
                "requests": n,
                "failures": failed,
                "rps": round(n / seconds, 1),
                "p50_ms": None if p50 is None else round(p50, 3),
                "p95_ms": None if p95 is None else round(p95, 3),
                "p99_ms": None if p99 is None else round(p99, 3),
                "error_rate": round(failed / n, 6) if n else None,
            }
        )
    return rows


def write_steps(environment: Environment) -> None:
    opts = options_of(environment)
    if not STEPS or not SECONDS.data:
        return  # the run stopped before its first request (a failed check): no table rather than a table of zeros
    path = opts.step_csv or (f"{opts.csv_prefix}_steps.csv" if opts.csv_prefix else "")
    rows = step_rows(opts.step_settle_seconds)
    for row in rows:
        log.info(
            "step %d: %d users, %.0f req/s, p50 %s ms, p95 %s ms, p99 %s ms, %d errors of %d",
            row["step"], row["users"], row["rps"], row["p50_ms"], row["p95_ms"], row["p99_ms"], row["failures"],
            row["requests"],
        )  # fmt: skip
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as out:
        fields = ["step", "users", "start", "end", "seconds", "requests", "failures", "rps"]
        fields += ["p50_ms", "p95_ms", "p99_ms", "error_rate"]
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    log.info("per-step table written to %s", path)


class StepShape(LoadTestShape):
    """Start users, add a step of users every step length, up to the maximum; then stop."""

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        opts = options_of(self.runner.environment)
        start, step, length, top = opts.step_start_users, opts.step_users, opts.step_seconds, opts.step_max_users
        steps = (max(0, top - start) // step + 1) if step > 0 else 1
        elapsed = self.get_run_time()
        number = int(elapsed // length)
        if number >= steps:
            if not SHAPE_END:
                SHAPE_END.append(time.time())
            return None
        users = min(top, start + number * step) if step > 0 else start
        if not STEPS or STEPS[-1][0] != number:
            STEPS.append((number, users, time.time()))
        # Spawn a step's users within about a second, so the step's load is there for most of its length.
        return users, float(max(step, start, 1))
