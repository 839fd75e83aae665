"""`adclick manager` as a real process: it serves /health and sign-in, reconciles Redis, and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request

from support.procs import ProcessGuard, free_port, wait_until
from support.roles import status_of
from support.seeding import seed_database
from support.servers import RedisServer


def get(url: str) -> tuple[int, dict[str, str], str]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.status, dict(reply.headers), reply.read().decode()


def test_the_manager_process_serves_reconciles_and_stops_cleanly(
    process_guard: ProcessGuard, database_url: str, redis_server: RedisServer
) -> None:
    import asyncio

    asyncio.run(seed_database(database_url, link={"slug": "proc"}))
    port = free_port()
    env = {
        **os.environ,
        "ADCLICK_DATABASE_URL": database_url,
        "ADCLICK_REDIS_URL": redis_server.url,
        "ADCLICK_MANAGER_RECONCILE_SECONDS": "0.2",
    }
    proc = process_guard.spawn(
        [sys.executable, "-m", "adclick.cli", "manager", "--host", "127.0.0.1", "--port", str(port)],
        name="manager",
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: status_of(port, "/health") == 200, timeout=30, message="manager /health", proc=proc)
    status, headers, body = get(f"{base}/login")
    assert (
        status == 200 and 'name="csrf_token"' in body and "frame-ancestors 'none'" in headers["content-security-policy"]
    )
    redis = redis_server.client()
    wait_until(lambda: redis.get("adclick:link:proc"), timeout=15, message="the reconciler to publish", proc=proc)
    assert json.loads(redis.get("adclick:link:proc"))["url"] == "https://shop.example/"
    proc.send_signal(signal.SIGTERM)
    # uvicorn finishes in-flight requests and the lifespan (reconciler, pools), then re-raises SIGTERM.
    assert proc.wait(timeout=20) in (0, -signal.SIGTERM), proc.output()
    assert "Application shutdown complete" in proc.output()
