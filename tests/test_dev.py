"""`adclick dev` (what `make dev` runs) brings the system up on embedded defaults and stops it cleanly."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from support.procs import ProcessGuard, free_port, wait_until
from support.tracker import request


def test_dev_runs_a_working_tracker_on_embedded_redis_and_sqs(process_guard: ProcessGuard, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADCLICK_", "AWS_"))}
    dev = process_guard.spawn(
        [sys.executable, "-m", "adclick.cli", "dev", "--tracker-port", str(port), "--data-dir", str(tmp_path / "dev")],
        env=env,
        cwd=tmp_path,
    )
    wait_until(lambda: "adclick is running" in dev.output(), timeout=60, message="adclick dev to start", proc=dev)
    assert f"curl -i 'http://127.0.0.1:{port}/c/demo?sub1=hello'" in dev.output()
    reply = request(port, "GET", "/c/demo?sub1=hello", headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"})
    assert reply.status == 302
    assert (reply.location or "").startswith("https://example.com/landing?click_id=")
    assert "sub1=hello" in (reply.location or "")
    assert request(port, "GET", "/health").status == 200

    os.kill(dev.pid, signal.SIGINT)  # Ctrl-C reaches `adclick dev` only; it stops its roles in order
    assert dev.wait(60) == 0
    out = dev.output()
    assert "[ tracker]" in out and "flushed on shutdown" in out
    wait_until(lambda: request_fails(port), timeout=10, message="the tracker to be gone")


def request_fails(port: int) -> bool:
    try:
        request(port, "GET", "/health", timeout=0.5)
    except OSError:
        return True
    return False
