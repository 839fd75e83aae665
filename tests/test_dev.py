"""`adclick dev` (what `make dev` runs) brings the system up on embedded defaults and stops it cleanly."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import redis
from support.procs import ManagedProcess, ProcessGuard, free_port, wait_until
from support.roles import prometheus, request


def dev_env() -> dict[str, str]:
    """The caller's environment without any ADCLICK_ or AWS_ setting: dev must bring everything itself."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("ADCLICK_", "AWS_"))}


def start_dev(guard: ProcessGuard, tmp_path: Path, *extra: str) -> tuple[ManagedProcess, dict[str, int], Path]:
    ports = {name: free_port() for name in ("tracker", "postback", "worker-health", "manager")}
    data = tmp_path / "dev"
    argv = [sys.executable, "-m", "adclick.cli", "dev", "--data-dir", str(data), *extra]
    argv += [arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]
    dev = guard.spawn(argv, name="dev", env=dev_env(), cwd=tmp_path)
    wait_until(lambda: "adclick is running" in dev.output(), timeout=90, message="adclick dev to start", proc=dev)
    return dev, ports, data


def stopped(dev: ManagedProcess, timeout: float) -> int:
    """dev's exit code; if it is still running after `timeout`, a failure that says where it stood."""
    try:
        return dev.wait(timeout)
    except subprocess.TimeoutExpired:
        children = subprocess.run(
            ["ps", "-o", "pid,stat,etime,args", "--ppid", str(dev.popen.pid)], capture_output=True, text=True
        ).stdout
        tail = "\n".join(dev.output().splitlines()[-40:])
        message = f"adclick dev still running {timeout:.0f} s after the signal\n{children}\n{tail}"
        raise AssertionError(message) from None


def query(db: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql, params).fetchall()


def printed(output: str, label: str) -> str:
    match = re.search(rf"^  {label}:\s+(.+)$", output, flags=re.M)
    assert match, f"adclick dev printed no {label!r} line:\n{output}"
    return match.group(1).strip()


def manager_available() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "adclick.cli", "manager", "--help"], capture_output=True, timeout=60, check=False
    )
    return done.returncode == 0


def test_dev_runs_every_role_on_embedded_servers_with_demo_data(process_guard: ProcessGuard, tmp_path: Path) -> None:
    dev, ports, data = start_dev(process_guard, tmp_path)
    out = dev.output()
    port = ports["tracker"]

    # The tracker redirects the demo link.
    assert f"curl -i 'http://127.0.0.1:{port}/c/demo?sub1=hello'" in out
    reply = request(port, "GET", "/c/demo?sub1=hello", headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"})
    assert reply.status == 302
    assert (reply.location or "").startswith("https://example.com/landing?click_id=")
    assert "sub1=hello" in (reply.location or "")
    assert request(port, "GET", "/health").status == 200
    # The tracker has the fetched country database for clicks without a CDN country header.
    assert prometheus(port)["adclick_geoip_build_timestamp"] > 1_600_000_000

    # SQLite under the data directory, migrated, with the demo link under the same id as in Redis.
    db = data / "adclick.db"
    assert printed(out, "database") == f"sqlite+aiosqlite:///{db}"
    [(link_id, offer_id, affiliate_id)] = query(db, "SELECT id, offer_id, affiliate_id FROM links WHERE slug = 'demo'")
    cached = json.loads(redis.Redis.from_url(printed(out, "redis")).get("adclick:link:demo") or b"{}")
    assert (cached["id"], cached["offer_id"], cached["affiliate_id"]) == (link_id, offer_id, affiliate_id)

    # The printed load-test line, run as written, makes the bench links on this database and Redis: they redirect.
    words = shlex.split(printed(out, "load test").partition("  (then")[0])
    assigned = dict(word.split("=", 1) for word in words[:2])
    assert assigned == {"ADCLICK_DATABASE_URL": printed(out, "database"), "ADCLICK_REDIS_URL": printed(out, "redis")}
    made = subprocess.run(words[2:], env={**dev_env(), **assigned}, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0 and "bench-0 .. bench-63" in made.stdout, made.stdout + made.stderr
    assert request(port, "HEAD", "/c/bench-63").status == 302

    # The demo week went through SQS and the worker: reports have clicks on every day and conversions.
    def demo_stored() -> bool:
        [(days, clicks, conversions)] = query(
            db, "SELECT COUNT(DISTINCT substr(hour, 1, 10)), SUM(clicks), SUM(conversions) FROM hourly_rollups"
        )
        return bool(days and days >= 7 and clicks and conversions)

    wait_until(demo_stored, timeout=60, interval=0.5, message="demo clicks and conversions in the rollups", proc=dev)
    [(clicks, bots)] = query(db, "SELECT COUNT(*), SUM(bot) FROM clicks")
    [(rollup_clicks, rollup_bots)] = query(db, "SELECT SUM(clicks), SUM(bot_clicks) FROM hourly_rollups")
    assert (clicks - bots, bots) == (rollup_clicks, rollup_bots) and clicks > 500  # bots count apart

    # The printed postback curl makes a conversion row, end to end through the postback role, SQS and the worker.
    curl = printed(out, "postback")
    url = re.fullmatch(r"curl -i '(http://127\.0\.0\.1:\d+/postback\?[^']+)'", curl)
    assert url, curl
    with urllib.request.urlopen(url.group(1), timeout=10) as answer:
        assert answer.status == 200
        assert json.loads(answer.read())["status"] == "accepted"
    txid = urllib.parse.parse_qs(urllib.parse.urlsplit(url.group(1)).query)["txid"][0]
    row = wait_until(
        lambda: query(db, "SELECT status, link_id, amount, revenue, currency FROM conversions WHERE txid = ?", txid),
        timeout=30,
        interval=0.2,
        message=f"conversion {txid} in the database",
        proc=dev,
    )
    # Money on SQLite is an integer of millionths: 49.90 USD sold, 12.00 USD revenue (the demo offer's CPA).
    assert row == [("approved", link_id, 49_900_000, 12_000_000, "USD")]

    # The manager when this build has it; otherwise dev says so instead of failing.
    if manager_available():
        manager = printed(out, "manager")
        assert manager == f"http://127.0.0.1:{ports['manager']}/"
        email, _, password = printed(out, "login").partition(" / ")
        assert query(db, "SELECT role, is_active FROM users WHERE email = ?", email) == [("admin", 1)]
        assert len(password) >= 12
        with urllib.request.urlopen(f"{manager}health", timeout=5) as answer:
            assert answer.status == 200
    else:
        assert "not in this build yet" in printed(out, "manager")

    os.kill(dev.pid, signal.SIGINT)  # Ctrl-C reaches `adclick dev` only; it stops its roles in order
    assert stopped(dev, 90) == 0
    out = dev.output()
    assert "[ tracker]" in out and "flushed on shutdown" in out
    assert "[  worker]" in out and "worker stopped" in out
    assert "[postback]" in out and "Finished server process" in out
    wait_until(lambda: request_fails(port), timeout=10, message="the tracker to be gone")


def test_dev_reports_a_crashed_role_and_stops_the_others(process_guard: ProcessGuard, tmp_path: Path) -> None:
    dev, ports, _ = start_dev(process_guard, tmp_path, "--no-manager")
    pid = re.search(r"^\[  worker\] \S+ \S+ worker (\d+) ", dev.output(), flags=re.M)
    assert pid, dev.output()
    os.kill(int(pid.group(1)), signal.SIGKILL)
    assert stopped(dev, 60) == 1
    assert f"worker crashed: exited with code {-signal.SIGKILL}" in dev.output()
    wait_until(lambda: request_fails(ports["tracker"]), timeout=10, message="the tracker to be stopped too")


def request_fails(port: int) -> bool:
    try:
        request(port, "GET", "/health", timeout=0.5)
    except OSError:
        return True
    return False
