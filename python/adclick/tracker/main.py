"""`adclick tracker`: serve clicks, one Robyn process per core, each draining and flushing on SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

from adclick.core.logs import setup_logging
from adclick.core.settings import TrackerSettings

log = logging.getLogger("adclick.tracker")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="adclick tracker",
        description="Serve GET|HEAD /c/{slug} with a 302, /health and /metrics; ship click events to SQS.",
    )
    p.add_argument("--host", help="interface to bind (ADCLICK_TRACKER_HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (ADCLICK_TRACKER_PORT, default 8000)")
    p.add_argument("--processes", type=int, help="processes sharing the port (ADCLICK_TRACKER_PROCESSES, default 1)")
    p.add_argument("--workers", type=int, help="actix threads per process (ADCLICK_TRACKER_WORKERS, default 1)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> TrackerSettings:
    overrides = {
        k: v
        for k, v in {
            "tracker_host": args.host,
            "tracker_port": args.port,
            "tracker_processes": args.processes,
            "tracker_workers": args.workers,
        }.items()
        if v is not None
    }
    return TrackerSettings(**overrides)


def serve_one(settings: TrackerSettings, *, check_port: bool) -> int:
    from adclick.tracker.app import PortBusyError, TrackerProcess

    try:
        TrackerProcess(settings).serve(check_port=check_port)
    except PortBusyError as e:
        log.error("%s; stop the other process or pass --port", e)
        return 2
    return 0


def supervise(settings: TrackerSettings, argv: list[str]) -> int:
    """Runs N single-process trackers on one port (SO_REUSEPORT) and passes SIGTERM/SIGINT to each.

    Robyn's own multi-process mode SIGKILLs its children on SIGTERM, which would lose their buffered clicks.
    """
    from adclick.tracker.app import PortBusyError, check_port_free

    try:
        check_port_free(settings.tracker_host, settings.tracker_port)
    except PortBusyError as e:
        log.error("%s; stop the other process or pass --port", e)
        return 2
    cmd = [sys.executable, "-m", "adclick.cli", "tracker", *argv, "--processes", "1", "--child"]
    env = dict(os.environ, ADCLICK_TRACKER_PORT=str(settings.tracker_port), ADCLICK_TRACKER_HOST=settings.tracker_host)
    children: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def spawn() -> None:
        child = subprocess.Popen(cmd, env=env)
        children[child.pid] = child

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(settings.tracker_processes):
        spawn()
    code = 0
    while children:
        for pid, child in list(children.items()):
            rc = child.poll()
            if rc is None:
                continue
            del children[pid]
            if stopping:
                code = code or rc
            else:
                log.error("tracker process %d exited with %s; starting a new one", pid, rc)
                time.sleep(0.5)
                spawn()
        time.sleep(0.1)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    settings = settings_from(args)
    setup_logging(settings.log_level, role="tracker")
    if settings.tracker_processes > 1 and not args.child:
        return supervise(settings, [a for a in argv if a != "--child"])
    return serve_one(settings, check_port=not args.child)
