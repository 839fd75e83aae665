"""The tracker's contract in plain FastAPI + uvicorn + redis.asyncio: the baseline a Python team would write.

Per request: read the link JSON from Redis, sign a ClickID (HMAC-SHA256, base64), pick a rule or a weighted
destination, fill the URL macros with urllib.parse.quote, append a click event to an in-process list that a
background task packs into `c1:` message bodies every 100 ms (no SQS call in the request), answer a 302.

Run: python bench/baseline_fastapi.py --host 127.0.0.1 --port 8082   (reads ADCLICK_REDIS_URL)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

SLUG_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MACRO_RE = re.compile(r"\{(click_id|link_id|offer_id|aff_id|sub[1-5]|country|device|os|ts)\}")
SECRET = os.environ.get("ADCLICK_CLICK_SECRET", "dev-only-click-secret-change-me").encode()
KEY_ID = int(os.environ.get("ADCLICK_CLICK_KEY_ID", "1"))
COUNTRY_HEADERS = ("cloudfront-viewer-country", "cf-ipcountry")
BOT_RE = re.compile(r"bot|crawl|spider|slurp|facebookexternalhit|headless|preview", re.I)
MAX_BODY = 262_144
# Standard URL-safe base64 mapped onto the ASCII-ordered alphabet of docs/contracts.md.
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ORDERED = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
_TO_ORDERED = str.maketrans(_B64, _ORDERED)

events: list[dict[str, Any]] = []
stats = {"clicks": 0, "bodies": 0}
redis_client: aioredis.Redis | None = None


def click_id(link_id: int, now_ms: int) -> str:
    """30 bytes: ms timestamp, version/key nibble, link id, 64 random bits, 80-bit truncated HMAC."""
    head = now_ms.to_bytes(6, "big") + bytes([0x10 | KEY_ID]) + link_id.to_bytes(5, "big") + secrets.token_bytes(8)
    tag = hmac.new(SECRET, head, hashlib.sha256).digest()[:10]
    return base64.urlsafe_b64encode(head + tag).decode().translate(_TO_ORDERED)


def device_and_os(ua: str) -> tuple[str, str]:
    if "iPhone" in ua or "iPad" in ua:
        return ("tablet" if "iPad" in ua else "mobile"), "iOS"
    if "Android" in ua:
        return ("mobile" if "Mobile" in ua else "tablet"), "Android"
    if "Windows" in ua:
        return "desktop", "Windows"
    if "Mac OS X" in ua:
        return "desktop", "macOS"
    if "Linux" in ua:
        return "desktop", "Linux"
    return "other", "other"


def pick(destinations: list[dict[str, Any]]) -> tuple[str, int]:
    total = sum(d.get("weight", 1) for d in destinations)
    r = random.uniform(0, total)
    for i, d in enumerate(destinations):
        r -= d.get("weight", 1)
        if r <= 0:
            return d["url"], i
    return destinations[-1]["url"], len(destinations) - 1


def choose(link: dict[str, Any], country: str | None, device: str, os_name: str, now: float) -> tuple[str, int, bool]:
    """Destination template, its index, and whether it is the fallback."""
    expires = link.get("expires_at")
    if link.get("status") != "active" or (expires is not None and now >= expires):
        return link.get("fallback_url") or link["url"], -1, True
    for rule in link.get("rules") or ():
        if (
            ("countries" not in rule or country in rule["countries"])
            and ("devices" not in rule or device in rule["devices"])
            and ("os" not in rule or os_name in rule["os"])
        ):
            if "destinations" in rule:
                url, i = pick(rule["destinations"])
                return url, i, False
            return rule["url"], 0, False
    if link.get("destinations"):
        url, i = pick(link["destinations"])
        return url, i, False
    return link["url"], 0, False


async def flush_forever() -> None:
    """Every 100 ms, pack buffered events into `c1:` bodies (zlib + base64), as the SQS sender would."""
    global events
    while True:
        await asyncio.sleep(0.1)
        if not events:
            continue
        batch, events = events, []
        lines = b"\n".join(json.dumps(e, separators=(",", ":")).encode() for e in batch)
        body = "c1:" + base64.b64encode(zlib.compress(lines)).decode()
        stats["bodies"] += 1 + len(body) // MAX_BODY


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global redis_client
    redis_client = aioredis.from_url(os.environ.get("ADCLICK_REDIS_URL", "redis://127.0.0.1:6379/0"))
    task = asyncio.create_task(flush_forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await redis_client.aclose()


app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/c/{slug}")
async def click(slug: str, request: Request) -> Response:
    if not SLUG_RE.fullmatch(slug):
        return PlainTextResponse("bad link\n", status_code=400)
    assert redis_client is not None
    raw = await redis_client.get(f"adclick:link:{slug}")
    if raw is None:
        return PlainTextResponse("unknown link\n", status_code=404)
    link = json.loads(raw)
    now = time.time()
    now_ms = int(now * 1000)
    headers = request.headers
    ua = headers.get("user-agent", "")
    country = next((headers[h].upper() for h in COUNTRY_HEADERS if h in headers), None)
    device, os_name = device_and_os(ua)
    template, dest, fallback = choose(link, country, device, os_name, now)
    cid = click_id(link["id"], now_ms)
    q = request.query_params
    subs = {f"sub{i}": q.get(f"sub{i}") for i in range(1, 6)}
    values = {
        "click_id": cid,
        "link_id": str(link["id"]),
        "offer_id": str(link.get("offer_id") or ""),
        "aff_id": str(link.get("affiliate_id") or ""),
        "country": country or "",
        "device": device,
        "os": os_name,
        "ts": str(now_ms),
        **{k: v or "" for k, v in subs.items()},
    }
    location = MACRO_RE.sub(lambda m: quote(values[m.group(1)], safe=""), template)
    events.append(
        {
            "v": 1,
            "click_id": cid,
            "ts": now_ms,
            "link_id": link["id"],
            "offer_id": link.get("offer_id"),
            "aff_id": link.get("affiliate_id"),
            "slug": slug,
            "method": "GET",
            "ip": request.client.host if request.client else None,
            "ua": ua,
            "referer": headers.get("referer"),
            "country": country,
            "device": device,
            "os": os_name,
            "bot": bool(BOT_RE.search(ua)),
            **subs,
            "params": {k: v for k, v in q.items() if not k.startswith("sub")},
            "dest": dest,
            "fallback": fallback,
        }
    )
    stats["clicks"] += 1
    return RedirectResponse(location, status_code=302, headers={"Cache-Control": "no-store"})


@app.get("/health")
async def health() -> PlainTextResponse:
    return PlainTextResponse("ok\n")


@app.get("/metrics")
async def metrics() -> PlainTextResponse:
    return PlainTextResponse(
        f"baseline_clicks_total {stats['clicks']}\nbaseline_bodies_total {stats['bodies']}\n",
        media_type="text/plain; version=0.0.4",
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    args = parser.parse_args()
    # uvicorn picks uvloop and httptools when installed, as `uvicorn[standard]` would.
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
