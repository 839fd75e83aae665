"""Send the affiliate-postback outbox (`postback_deliveries`, written by adclick.core.outbox) to affiliates' servers.

A task of its own beside the queue consumers: a slow or failing affiliate server holds one of its request slots,
never a conversion batch. Each round claims the rows that are due, renders their URLs (the click's subs and
parameters read then), and sends them, at most `affiliate_postback_concurrency` at once and
`affiliate_postback_per_host` per host, each within `affiliate_postback_timeout_seconds`.

- Claim: a conditional UPDATE that moves the row's next attempt past its lease and counts the attempt; only the
  worker whose UPDATE matched sends, so replicas never send the same row at once. A worker holds at most twice
  `affiliate_postback_per_host` rows per host (sending or waiting for a slot), so a row is sent within two
  timeouts of its claim, well inside the lease (three timeouts and LEASE_MARGIN_SECONDS). A worker killed while
  sending leaves a lease that runs out, and the row is sent again: delivery is at least once, and every request
  carries its row's id in `X-Adclick-Delivery` so the receiver can tell a repeat.
- Answer: 2xx is delivered. Anything else (an error, a timeout, a redirect, which is never followed) is retried
  after `affiliate_postback_first_retry_seconds` (10 s), then three times as long each time up to hourly, until
  `affiliate_postback_retry_hours` after the row was written; then it is `failed`, and staff can redeliver it.
  A test postback (the manager's button) is tried once.
- A template that needs the click (its subs, `{p:NAME}`) waits up to CLICK_WAIT for the click to be stored (a
  conversion can overtake its click); after that it is sent with those values empty.
- Addresses: unless `affiliate_postback_allow_private`, a host that resolves to a loopback, private, link-local
  or otherwise non-global address is refused at connect time (the resolver's answer is what is connected to, so
  DNS cannot swap it in between).
- Signed: with the affiliate's secret, `X-Adclick-Signature: t=<unix>,v1=<HMAC-SHA256("<t>.<url>")>`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adclick.core.affiliate_postbacks import DELIVERY_HEADER, SIGNATURE_HEADER, render, signature, uses_click
from adclick.core.db.models import Affiliate, Click, PostbackDelivery
from adclick.core.db.types import utc_now
from adclick.core.settings import WorkerSettings
from adclick.worker.health import WorkerMetrics

log = logging.getLogger("adclick.worker.deliverer")

MAX_BACKOFF_SECONDS = 3600.0
CLICK_WAIT = timedelta(minutes=10)
CLICK_RETRY_SECONDS = 5.0
LEASE_MARGIN_SECONDS = 10.0
BATCH = 100
SCAN = 200  # due rows looked at per round, so that one busy host's backlog does not hide the others
USER_AGENT = "adclick-postback/1"
MAX_ERROR = 500


def backoff(first: float, attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: first, 3x first, 9x first, ... up to an hour."""
    return min(MAX_BACKOFF_SECONDS, first * 3.0 ** min(max(attempts, 1) - 1, 20))


def template_host(template: str) -> str:
    """The host a template sends to (never a macro: adclick.core.affiliate_postbacks.check_template)."""
    try:
        return urllib.parse.urlsplit(template).hostname or ""
    except ValueError:
        return ""


class PrivateAddress(OSError):
    pass


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, keeping only globally routable addresses (unless private ones are allowed)."""

    def __init__(self, allow_private: bool) -> None:
        self.inner = aiohttp.ThreadedResolver()
        self.allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        if self.allow_private:
            return found
        kept = [r for r in found if ipaddress.ip_address(r["host"]).is_global]
        if not kept:
            raise PrivateAddress(f"{host} resolves only to non-public addresses")
        return kept

    async def close(self) -> None:
        await self.inner.close()


@dataclass(slots=True)
class Claimed:
    id: int
    attempts: int
    template: str
    values: dict[str, Any]
    click_id: str | None
    affiliate_id: int
    created_at: datetime
    host: str
    kind: str = "conversion"
    needs_click: bool = False  # its template names the click's subs or parameters
    secret: str | None = None
    url: str | None = None
    wait_for_click: bool = False


class Deliverer:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], settings: WorkerSettings, metrics: WorkerMetrics
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.metrics = metrics
        self.timeout = settings.affiliate_postback_timeout_seconds
        self.window = timedelta(hours=settings.affiliate_postback_retry_hours)
        self.slots = asyncio.Semaphore(settings.affiliate_postback_concurrency)
        self.hosts: dict[str, asyncio.Semaphore] = {}
        self.held: dict[str, int] = {}  # rows claimed per host, sending or waiting for a slot
        self.in_flight: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()  # a request finished: its host (and a slot) may take the next row now

    async def run(self, stop: asyncio.Event) -> None:
        # No pool limits: the slots and per-host gates in `deliver` are the limits, taken before a request's
        # timeout starts (a pool's wait would count against it).
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.settings.affiliate_postback_allow_private), limit=0, limit_per_host=0
        )
        async with aiohttp.ClientSession(connector=connector, headers={"User-Agent": USER_AGENT}) as http:
            while not stop.is_set():
                try:
                    claimed = await self.claim()
                except Exception as error:  # the database is down: the rows wait, the worker goes on
                    log.warning("affiliate postbacks: cannot claim deliveries (%s)", error)
                    claimed = []
                for row in claimed:
                    task = asyncio.create_task(self.deliver(http, row))
                    self.in_flight.add(task)
                    task.add_done_callback(self.in_flight.discard)
                    task.add_done_callback(functools.partial(self.release, row.host))
                if len(claimed) < BATCH:
                    # Until a request finishes (its host may take another row), or the next poll.
                    stopping = asyncio.ensure_future(stop.wait())
                    woken = asyncio.ensure_future(self.wake.wait())
                    await asyncio.wait(
                        {stopping, woken},
                        timeout=self.settings.affiliate_postback_poll_seconds,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    stopping.cancel()
                    woken.cancel()
                self.wake.clear()
            # Stopping: what is in flight finishes (each within its timeout); the rest waits for the next worker.
            if self.in_flight:
                await asyncio.wait(set(self.in_flight), timeout=self.timeout + 1)

    def release(self, host: str, _task: object = None) -> None:
        self.held[host] -= 1
        if not self.held[host]:
            del self.held[host]
        self.wake.set()

    async def claim(self) -> list[Claimed]:
        """The due rows this worker now holds a lease on, with what sending them needs."""
        room = min(BATCH, self.settings.affiliate_postback_concurrency * 2 - len(self.in_flight))
        if room <= 0:
            return []
        per_host = 2 * self.settings.affiliate_postback_per_host
        now = utc_now()
        lease = now + timedelta(seconds=3 * self.timeout + LEASE_MARGIN_SECONDS)
        table = PostbackDelivery
        async with self.sessions.begin() as session:
            due = (
                await session.execute(
                    select(
                        table.id,
                        table.attempts,
                        table.template,
                        table.values,
                        table.click_id,
                        table.affiliate_id,
                        table.created_at,
                        table.kind,
                    )
                    .where(table.state == "pending", table.next_attempt_at <= now)
                    .order_by(table.next_attempt_at)
                    .limit(SCAN)
                )
            ).all()
            claimed: list[Claimed] = []
            for row in due:
                if len(claimed) >= room:
                    break
                host = template_host(row.template)
                if self.held.get(host, 0) >= per_host:
                    continue  # this host has all it may have in flight or waiting: its rows wait their turn
                won = await session.execute(
                    update(table)
                    .where(table.id == row.id, table.attempts == row.attempts, table.state == "pending")
                    .values(attempts=row.attempts + 1, next_attempt_at=lease, last_attempt_at=now)
                )
                if won.rowcount == 1:  # type: ignore[attr-defined]
                    self.held[host] = self.held.get(host, 0) + 1
                    claimed.append(Claimed(row.id, row.attempts + 1, row.template, dict(row.values), row.click_id,
                                           row.affiliate_id, row.created_at, host, row.kind,
                                           bool(row.click_id) and uses_click(row.template)))  # fmt: skip
            if not claimed:
                return []
            secrets = dict(
                (
                    await session.execute(
                        select(Affiliate.id, Affiliate.postback_secret).where(
                            Affiliate.id.in_(sorted({c.affiliate_id for c in claimed}))
                        )
                    )
                ).all()
            )
            wanted = sorted({c.click_id for c in claimed if c.click_id and c.needs_click})
            clicks = {}
            if wanted:
                found = await session.execute(
                    select(
                        Click.click_id, Click.sub1, Click.sub2, Click.sub3, Click.sub4, Click.sub5, Click.params
                    ).where(Click.click_id.in_(wanted))
                )
                clicks = {row.click_id: row for row in found.all()}
        for c in claimed:
            c.secret = secrets.get(c.affiliate_id)
            values, params = dict(c.values), {}
            if c.click_id and c.needs_click:
                click = clicks.get(c.click_id)
                if click is None and now - c.created_at < CLICK_WAIT:
                    c.wait_for_click = True
                    continue
                if click is not None:
                    values.update({f"sub{n}": getattr(click, f"sub{n}") for n in range(1, 6)})
                    params = dict(click.params or {})
            c.url = render(c.template, values, params)
        return claimed

    async def deliver(self, http: aiohttp.ClientSession, row: Claimed) -> None:
        if row.wait_for_click:
            # Not an attempt: the click is not stored yet. Give the attempt back and look again shortly.
            await self.record(row, None, None, retry_in=CLICK_RETRY_SECONDS, counts=False)
            return
        assert row.url is not None
        host = row.host
        gate = self.hosts.setdefault(host, asyncio.Semaphore(self.settings.affiliate_postback_per_host))
        status: int | None = None
        error: str | None = None
        async with self.slots, gate:
            headers = {DELIVERY_HEADER: str(row.id)}
            if row.secret:
                headers[SIGNATURE_HEADER] = signature(row.secret, int(time.time()), row.url)
            started = time.monotonic()
            try:
                self.check_literal(host)
                async with http.get(
                    row.url,
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as answer:
                    status = answer.status
                    await answer.content.read(4096)  # a little of the body, so the connection can be reused
                    if not 200 <= status < 300:
                        error = f"HTTP {status}"
            except PrivateAddress as exc:
                error = str(exc)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.metrics.affiliate_postback_seconds.observe(time.monotonic() - started)
        self.metrics.affiliate_postbacks.labels("delivered" if error is None else "error").inc()
        await self.record(row, status, error)

    def check_literal(self, host: str) -> None:
        """An address written in the URL is never resolved, so the resolver's check is made here."""
        if self.settings.affiliate_postback_allow_private:
            return
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return  # a name: GuardedResolver checks what it resolves to
        if not address.is_global:
            raise PrivateAddress(f"{host} is a non-public address")

    async def record(
        self, row: Claimed, status: int | None, error: str | None, retry_in: float | None = None, counts: bool = True
    ) -> None:
        now = utc_now()
        values: dict[str, Any] = {"last_status": status, "last_error": error[:MAX_ERROR] if error else None}
        if row.url is not None:
            values["url"] = row.url
        if not counts:
            values = {"attempts": row.attempts - 1, "next_attempt_at": now + timedelta(seconds=retry_in or 0)}
        elif error is None:
            values.update(state="delivered", delivered_at=now)
        elif row.kind == "test" or now - row.created_at >= self.window:
            # A test answers the person who pressed the button now; it is never retried behind their back.
            values.update(state="failed")
            self.metrics.affiliate_postbacks.labels("failed").inc()
            log.warning("affiliate postback %d failed for good after %d attempts: %s", row.id, row.attempts, error)
        else:
            first = self.settings.affiliate_postback_first_retry_seconds
            values.update(next_attempt_at=now + timedelta(seconds=backoff(first, row.attempts)))
        for delay in (0.5, 2.0, 5.0, None):
            try:
                async with self.sessions.begin() as session:
                    await session.execute(
                        update(PostbackDelivery)
                        .where(PostbackDelivery.id == row.id, PostbackDelivery.attempts == row.attempts)
                        .values(**values)
                    )
                return
            except Exception as exc:
                if delay is None:
                    # The lease runs out and the row is tried again: at least once, never lost.
                    log.warning("affiliate postback %d: cannot record its result (%s)", row.id, exc)
                    return
                await asyncio.sleep(delay)
