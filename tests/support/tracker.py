"""Run the real tracker process and talk to it like a browser or a load generator would."""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path

from adclick import _native, geoip

from support.procs import ProcessGuard, free_port, wait_until
from support.roles import Role, serve, settings_env
from support.servers import SqsServer


class TrackerProc(Role):
    """`adclick tracker` as a child process on a free port (or `port`), healthy on return unless `wait=False`."""

    def __init__(
        self,
        guard: ProcessGuard,
        env: Mapping[str, str],
        processes: int = 1,
        wait: bool = True,
        port: int | None = None,
        **settings: object,
    ) -> None:
        port = port or free_port()
        defaults = {"ADCLICK_DRAIN_SECONDS": "1", "ADCLICK_FLUSH_INTERVAL_MS": "50"}  # unless `env` says otherwise
        full = {**defaults, **os.environ, **env, "PYTHONUNBUFFERED": "1", **settings_env(settings)}
        super().__init__(guard, "tracker", [*serve("tracker", port), "--processes", str(processes)], full, port)
        self.spawn()
        if wait:
            self.wait_healthy()


def geoip_database() -> Path:
    """The country database `make install` fetches (fetched here if it is missing), for ADCLICK_GEOIP_DB."""
    return geoip.ensure(geoip.default_dir())


def click_path(slug: str, **params: str) -> str:
    return f"/c/{slug}" + (("?" + urllib.parse.urlencode(params)) if params else "")


def collect_events(
    sqs: SqsServer, queue: str, want: set[str], timeout: float = 30.0, bodies: list[str] | None = None
) -> list[dict[str, object]]:
    """Read the queue until every ClickID in `want` has arrived; return every event read. Each body read is also
    appended to `bodies` when given (pass the same list again to wait for more on top of what was read)."""
    kept = [] if bodies is None else bodies

    def arrived() -> bool:
        kept.extend(sqs.drain(queue))
        return want <= {str(e["click_id"]) for e in events_in(kept)}

    wait_until(arrived, timeout=timeout, interval=0.2, message=f"{len(want)} click events in SQS")
    return events_in(kept)


def events_in(bodies: Iterable[str]) -> list[dict[str, object]]:
    """Every click event packed in these SQS message bodies."""
    return [json.loads(e) for body in bodies for e in _native.unpack_clicks(body)]


def click_id_from(location: str) -> str:
    """The ClickID a test link template puts in the `cid` query parameter."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    return query["cid"][0]


UA_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
UA_DESKTOP = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
UA_SLACKBOT = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
