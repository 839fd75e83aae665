"""`adclick postback` and `adclick postback-token` as real processes, used over HTTP like an advertiser would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

from adclick.postback.intake import GIF
from postback_helpers import QUEUE, click_id, conversions, tampered
from support.procs import ProcessGuard, free_port, wait_until
from support.roles import status_of
from support.servers import SqsServer


def get(url: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, data=data, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def test_token_cli_url_drives_the_running_postback_process(
    process_guard: ProcessGuard, adclick_env: dict[str, str], sqs_server: SqsServer
) -> None:
    queue = sqs_server.create_queue(QUEUE)
    port = free_port()
    env = {**os.environ, **adclick_env, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "adclick.cli", "postback", "--host", "127.0.0.1", "--port", str(port)]
    proc = process_guard.spawn(argv, name="postback", env=env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: status_of(port, "/health") == 200, timeout=30.0, message="postback /health 200", proc=proc)

    printed = subprocess.run(
        [sys.executable, "-m", "adclick.cli", "postback-token", "5", "--version", "3", "--base-url", base],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = dict(line.split(":", 1) for line in printed.strip().splitlines())
    token, template = lines["token"].strip(), lines["url"].strip()
    assert token.startswith("5.3.")
    assert f"token={token}" in template

    cid = click_id()
    macros = {"{click_id}": cid, "{txid}": "ORD-9", "{amount}": "12.00", "{currency}": "EUR", "{status}": "pending"}
    url = template
    for macro, value in macros.items():
        url = url.replace(macro, urllib.parse.quote(value))
    status, _, body = get(url)
    assert status == 200, body

    form = urllib.parse.urlencode({"click_id": tampered(cid), "token": token}).encode()
    status, _, body = get(f"{base}/postback", data=form)
    assert status == 400, body

    status, headers, body = get(f"{base}/pixel.gif?click_id={cid}&txid=PIX-1")
    assert (status, headers["content-type"], body) == (200, "image/gif", GIF)

    [s2s, pixel] = sorted(conversions(sqs_server, queue), key=lambda m: m["source"] != "s2s")
    assert (s2s["click_id"], s2s["txid"], s2s["amount"], s2s["currency"], s2s["status"]) == (
        cid,
        "ORD-9",
        "12.00",
        "EUR",
        "pending",
    )
    assert (s2s["advertiser_id"], pixel["source"], pixel["txid"]) == (5, "pixel", "PIX-1")

    proc.send_signal(signal.SIGTERM)
    # uvicorn finishes in-flight requests and the lifespan, then re-raises SIGTERM on recent versions.
    assert proc.wait(timeout=20) in (0, -signal.SIGTERM), proc.output()
    assert "Application shutdown complete" in proc.output()
