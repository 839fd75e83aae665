"""bench/locustfile.py run the way Locust users run it, against a real tracker and postback role on 127.0.0.1.

The links come from `adclick bench-links` on a SQLite database, as the README says; each run is a few seconds with
`-u/-r/-t`, or the opt-in step shape of bench/locust_steps.py. No timing figure is asserted: zero failures, where
the postbacks' conversions point, and that a run without the links stops before its first request, once, saying how
to make them.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from adclick import _native
from adclick.worker.messages import decode_conversion
from support.procs import ProcessGuard, free_port
from support.roles import Role, serve
from support.servers import RedisServer, SqsServer
from support.tracker import TrackerProc

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "bench" / "locustfile.py"
STEPS = ROOT / "bench" / "locust_steps.py"
SLUGS = 16
CODEC = _native.ClickIdCodec(1, b"dev-only-click-secret-change-me")  # the tracker's and Locust's default


@dataclass
class BenchLinks:
    advertiser_id: int
    link_ids: set[int]


@pytest.fixture
def tracker(start_tracker: Callable[..., TrackerProc], clicks_queue: str) -> TrackerProc:
    """A tracker on the test's Redis and SQS endpoint and its clicks queue, no links yet."""
    return start_tracker()


@pytest.fixture
def bench_links(
    tmp_path: Path, _sqlite_template: Path, adclick_env: dict[str, str], redis_server: RedisServer
) -> BenchLinks:
    """`adclick bench-links 16` on a fresh SQLite database and the tracker's Redis, as README's load tests do."""
    db = tmp_path / "adclick.db"
    shutil.copyfile(_sqlite_template, db)
    env = {**os.environ, **adclick_env, "ADCLICK_DATABASE_URL": f"sqlite+aiosqlite:///{db}"}
    done = subprocess.run(
        [sys.executable, "-m", "adclick.cli", "bench-links", str(SLUGS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    advertiser = re.search(r"advertiser (\d+)", done.stdout)
    assert advertiser, done.stdout
    with sqlite3.connect(db) as connection:
        ids = {row[0] for row in connection.execute("SELECT id FROM links WHERE slug LIKE 'bench-%'")}
    assert len(ids) == SLUGS
    return BenchLinks(int(advertiser.group(1)), ids)


def locust(
    files: list[Path], *args: str, cwd: Path, timeout: float = 60
) -> tuple[subprocess.CompletedProcess[str], float]:
    """A headless Locust run with `files` (`-f a,b`), and how long it took."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    argv = [sys.executable, "-m", "locust", "-f", ",".join(map(str, files)), "--headless", "--only-summary", *args]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - started


def stats(prefix: Path) -> dict[str, dict[str, str]]:
    """Locust's `PREFIX_stats.csv` by request name (the totals under `Aggregated`)."""
    with open(f"{prefix}_stats.csv", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def test_a_bounded_run_against_bench_links_has_no_failure_and_postbacks_convert_real_clicks(
    process_guard: ProcessGuard,
    adclick_env: dict[str, str],
    sqs_server: SqsServer,
    tracker: TrackerProc,
    bench_links: BenchLinks,
    tmp_path: Path,
) -> None:
    conversions = sqs_server.create_queue("adclick-conversions")
    port = free_port()
    postback = Role(process_guard, "postback", serve("postback", port), {**os.environ, **adclick_env}, port)
    postback.start(within=30)

    prefix, html = tmp_path / "run", tmp_path / "report.html"
    args = ["--host", tracker.base, "--postback-host", postback.base]
    args += ["--advertiser-id", str(bench_links.advertiser_id), "--slugs", str(SLUGS), "--user-rps", "10"]
    # 21 users: with the classes' weights (20 to 1), one of them is a PostbackUser.
    args += ["-u", "21", "-r", "21", "-t", "5s", "--csv", str(prefix), "--html", str(html)]
    done, took = locust([LOCUSTFILE], *args, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "will be ignored" not in output  # -u, -r and -t are the run's, not a shape's
    assert took < 30, output[-2000:]

    rows = stats(prefix)
    assert int(rows["Aggregated"]["Failure Count"]) == 0, rows
    assert int(rows["GET /c/[slug]"]["Request Count"]) > 0
    assert int(rows["GET /c/[slug] (then a postback)"]["Request Count"]) > 0
    assert int(rows["postback valid"]["Request Count"]) > 0
    assert "Locust" in html.read_text()  # Locust's own HTML report

    # Every valid postback carries a ClickID the tracker signed for one of the bench links, and their advertiser.
    sent = [decode_conversion(body) for body in sqs_server.drain(conversions)]
    valid = [c for c in sent if c.txid.startswith("ORDER-")]
    assert valid
    assert {CODEC.verify(c.click_id)[3] for c in valid} <= bench_links.link_ids
    assert {c.advertiser_id for c in valid} == {bench_links.advertiser_id}


def test_a_run_without_the_links_stops_before_its_first_request_saying_how_to_make_them(
    tracker: TrackerProc, tmp_path: Path
) -> None:
    prefix = tmp_path / "run"
    args = ["--host", tracker.base, "--slugs", str(SLUGS), "-u", "5", "-r", "5", "-t", "20s", "--csv", str(prefix)]
    done, took = locust([LOCUSTFILE], *args, "TrackerUser", cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-4000:]
    assert took < 15, output[-2000:]  # stopped, not run out to -t
    assert output.count(f"`adclick bench-links {SLUGS}`") == 1, output[-4000:]
    assert "answer 404" in output
    assert int(stats(prefix)["Aggregated"]["Request Count"]) == 0  # no wall of 404s
    assert "Traceback" not in output


def test_the_step_shape_is_opt_in_and_writes_its_table(
    tracker: TrackerProc, bench_links: BenchLinks, tmp_path: Path
) -> None:
    prefix = tmp_path / "steps"
    args = ["--host", tracker.base, "--slugs", str(SLUGS), "--user-rps", "20", "--csv", str(prefix)]
    # Steps of 4 s: on a loaded 2-core CI machine the users of a 2 s step may not have sent anything yet.
    args += ["--step-start-users", "2", "--step-users", "2", "--step-seconds", "4", "--step-max-users", "4"]
    args += ["--step-settle-seconds", "1"]
    done, _ = locust([LOCUSTFILE, STEPS], *args, "TrackerUser", cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    with open(f"{prefix}_steps.csv", newline="") as f:
        steps = list(csv.DictReader(f))
    assert [int(s["users"]) for s in steps] == [2, 4]
    assert all(int(s["requests"]) > 0 and int(s["failures"]) == 0 for s in steps), steps
    assert int(stats(prefix)["Aggregated"]["Failure Count"]) == 0
