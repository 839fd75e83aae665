"""Ships packed click messages from the tracker's buffer to SQS, spilling to Redis when SQS will not take them.

Every body taken from the buffer stays in `_pending` until SQS or the Redis spill list has it, so a cancelled
cycle or a failed send loses nothing (it may send a body twice: the worker is idempotent). Bodies spilled to
`adclick:spill:clicks` are replayed by whichever tracker process holds `adclick:spill:lock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from adclick.core.settings import TrackerSettings
from adclick.core.sqs import SendOutcome, SQSClient, create_client, queue_url, send_batches

log = logging.getLogger("adclick.tracker.shipper")

SPILL_KEY = "adclick:spill:clicks"
LOCK_KEY = "adclick:spill:lock"
LOCK_TTL_MS = 30_000

EARLY_FLUSH_FRACTION = 0.1  # flush before the interval once the buffer is this full
POLL_SECONDS = 0.1  # how often buffered() is checked between flushes (one cheap native call)
BACKOFF_BASE_SECONDS = 0.05
BACKOFF_MAX_SECONDS = 1.0
PROBE_INTERVAL_SECONDS = 1.0  # while SQS is down, try it again this often
REPLAY_CHUNK = 50  # bodies per replay round (each up to 256 KiB)
REPLAY_IDLE_SECONDS = 1.0
SPILL_CHUNK = 100  # bodies per RPUSH, to bound one command's size
DEFAULT_MAX_PENDING_BYTES = 64 * 1024 * 1024
DROP_REASONS = ("rejected", "overflow", "shutdown")

# Trim what was replayed and put back what SQS did not take, only if we still hold the lock: a holder whose
# lock expired must not trim entries another replayer may have already taken and trimmed.
_TRIM_LUA = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('LTRIM', KEYS[1], tonumber(ARGV[2]), -1)
if #ARGV > 3 then redis.call('RPUSH', KEYS[1], unpack(ARGV, 4)) end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]))
return 1
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class BodySource(Protocol):
    """What the shipper needs from the native tracker's event buffer."""

    @property
    def capacity(self) -> int: ...

    def take_bodies(self, max_body_bytes: int) -> list[str]: ...

    def buffered(self) -> int: ...


class ShipperMetrics:
    """Prometheus metrics of one shipper, in a registry the caller owns."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages_sent = Counter(
            "adclick_sqs_messages_sent", "Click messages (packed bodies) SQS accepted", registry=registry
        )
        self.requests = Counter("adclick_sqs_requests", "SendMessageBatch calls made", registry=registry)
        self.failures = Counter("adclick_sqs_failures", "SQS calls that failed in whole or in part", registry=registry)
        self.spilled = Counter(
            "adclick_spilled_messages", "Click messages written to the Redis spill list", registry=registry
        )
        self.replayed = Counter(
            "adclick_replayed_messages", "Click messages moved from the Redis spill list to SQS", registry=registry
        )
        self.dropped = Counter(
            "adclick_dropped_messages",
            "Click messages given up: refused by SQS, over the in-memory bound, or unsent at exit",
            ["reason"],
            registry=registry,
        )
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        self.spill_backlog = Gauge(
            "adclick_spill_backlog", "Click messages waiting in the Redis spill list", registry=registry
        )


@dataclass
class FlushResult:
    """Messages (packed bodies) handled by `Shipper.flush`."""

    sent: int = 0
    spilled: int = 0
    rejected: int = 0
    dropped: int = 0


class Shipper:
    """Moves packed click messages from `source` to SQS, through Redis when SQS is down or too slow.

    Args:
        source: the native tracker (or anything with `take_bodies`, `buffered` and `capacity`).
        settings: tracker settings (flush interval, SQS and spill limits).
        metrics: where to count.
        max_pending_bytes: bodies held in memory while neither SQS nor Redis takes them; beyond this
            the oldest are dropped, counted and logged.
    """

    def __init__(
        self,
        source: BodySource,
        settings: TrackerSettings,
        metrics: ShipperMetrics,
        *,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    ) -> None:
        self.source = source
        self.settings = settings
        self.metrics = metrics
        self.max_pending_bytes = max_pending_bytes
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._pending: list[str] = []
        self._sqs_down = False
        self._redis_down = False
        self._next_probe = 0.0
        self._stopping = False
        self._run_task: asyncio.Task[Any] | None = None
        self._resources = contextlib.AsyncExitStack()
        self._sqs_client: SQSClient | None = None
        self._sqs_open_lock = asyncio.Lock()
        self._queue_url: str | None = None
        self._redis_client: aioredis.Redis | None = None
        self._trim_script: Any = None
        self._release_script: Any = None

    # -- state --

    @property
    def pending(self) -> int:
        """Bodies held in memory: taken from the buffer, not yet in SQS or Redis."""
        return len(self._pending)

    @property
    def sqs_down(self) -> bool:
        return self._sqs_down

    def _mark_sqs(self, ok: bool, error: object = None) -> None:
        if ok:
            if self._sqs_down:
                log.warning("SQS is back; replaying spilled click messages")
            self._sqs_down = False
            return
        if not self._sqs_down:
            log.warning("SQS is failing (%s); spilling click messages to Redis", error or "send failed")
        self._sqs_down = True
        self._next_probe = time.monotonic() + PROBE_INTERVAL_SECONDS

    # -- clients, opened on the running loop (after any fork) --

    async def open(self) -> None:
        """Create the SQS client now (no network call: botocore only loads its service model), so the
        process's long-lived heap exists before the tracker freezes it for the garbage collector."""
        await self._sqs_client_or_open()

    async def _sqs_client_or_open(self) -> SQSClient:
        client: SQSClient = self._sqs_client
        if client is None:
            async with self._sqs_open_lock:  # the ship and replay tasks may both get here first
                if self._sqs_client is None:
                    self._sqs_client = await self._resources.enter_async_context(create_client(self.settings))
            client = self._sqs_client
        return client

    async def _sqs(self) -> tuple[SQSClient, str]:
        client = await self._sqs_client_or_open()
        if self._queue_url is None:
            self._queue_url = await queue_url(client, self.settings, "clicks")
        return client, self._queue_url

    def _redis(self) -> aioredis.Redis:
        if self._redis_client is None:
            self._redis_client = aioredis.Redis.from_url(
                self.settings.redis_url,
                decode_responses=True,
                socket_connect_timeout=self.settings.redis_connect_timeout_ms / 1000,
                socket_timeout=self.settings.sqs_timeout_seconds,
                # One immediate retry heals a connection Redis closed; waiting out an outage is our job.
                retry=Retry(NoBackoff(), 1),
            )
            self._trim_script = self._redis_client.register_script(_TRIM_LUA)
            self._release_script = self._redis_client.register_script(_RELEASE_LUA)
        return self._redis_client

    async def aclose(self) -> None:
        """Close the SQS and Redis clients."""
        if self._redis_client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis_client.aclose()
            self._redis_client = None
        await self._resources.aclose()
        self._sqs_client = None
        self._queue_url = None

    # -- sending --

    def _count(self, outcome: SendOutcome) -> None:
        self.metrics.requests.inc(outcome.requests)
        self.metrics.failures.inc(outcome.failed_requests)
        self.metrics.messages_sent.inc(len(outcome.sent))
        for body, reason in outcome.rejected:
            self.metrics.dropped.labels("rejected").inc()
            log.error("dropped a click message of %d bytes that SQS refused: %s", len(body.encode()), reason)

    async def _send_once(self, bodies: Sequence[str]) -> SendOutcome:
        """One attempt at every body; SQS state and metrics updated."""
        try:
            client, queue_url = await self._sqs()
            outcome = await send_batches(client, queue_url, bodies, max_total_bytes=self.settings.sqs_max_body_bytes)
        except (ClientError, BotoCoreError, OSError, TimeoutError) as error:
            self._queue_url = None
            outcome = SendOutcome(retry=list(bodies), failed_requests=1)
            self._count(outcome)
            self._mark_sqs(False, error)
            return outcome
        self._count(outcome)
        if outcome.retry and not outcome.sent:
            self._mark_sqs(False, f"{outcome.failed_requests} of {outcome.requests} requests failed")
        elif outcome.sent or outcome.rejected:
            self._mark_sqs(True)
        return outcome

    async def _send_with_retries(self, bodies: list[str], attempts: int, deadline: float | None) -> SendOutcome:
        """Up to `attempts` tries with exponential backoff; `retry` of the result holds what is still unsent."""
        total = SendOutcome()
        remaining = bodies
        for attempt in range(attempts):
            outcome = await self._send_once(remaining)
            total.sent += outcome.sent
            total.rejected += outcome.rejected
            remaining = outcome.retry
            if not remaining:
                break
            delay = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt) * random.uniform(0.5, 1.0)
            if attempt + 1 == attempts or (deadline is not None and time.monotonic() + delay >= deadline):
                break
            await asyncio.sleep(delay)
        total.retry = remaining
        return total

    async def _spill(self, bodies: list[str]) -> list[str]:
        """RPUSH bodies to the spill list; return those Redis did not take."""
        for start in range(0, len(bodies), SPILL_CHUNK):
            chunk = bodies[start : start + SPILL_CHUNK]
            try:
                backlog = await self._redis().rpush(SPILL_KEY, *chunk)
            except (RedisError, OSError) as error:
                if not self._redis_down:
                    log.error("Redis spill failed (%s); holding click messages in memory", error)
                self._redis_down = True
                return bodies[start:]
            if self._redis_down:
                log.warning("Redis takes spilled click messages again")
            self._redis_down = False
            self.metrics.spilled.inc(len(chunk))
            self.metrics.spill_backlog.set(backlog)
            log.debug("spilled %d click messages to Redis (backlog %d)", len(chunk), backlog)
        return []

    def _take(self) -> None:
        bodies = self.source.take_bodies(self.settings.sqs_max_body_bytes)
        if bodies:
            self._pending.extend(bodies)

    def _enforce_bound(self) -> None:
        size = sum(len(body) for body in self._pending)
        dropped = 0
        while self._pending and size > self.max_pending_bytes:
            size -= len(self._pending.pop(0))
            dropped += 1
        if dropped:
            self.metrics.dropped.labels("overflow").inc(dropped)
            log.error(
                "dropped %d click messages: SQS and Redis both unavailable and %d bytes already held",
                dropped,
                self.max_pending_bytes,
            )

    async def ship_once(self) -> None:
        """One cycle: take what is buffered, send it to SQS (or straight to Redis when SQS is down or the
        buffer is past its high-water mark), and keep in memory only what neither would take."""
        high_water = self.source.buffered() > self.settings.spill_high_water * self.source.capacity
        self._take()
        if not self._pending:
            return
        snapshot = list(self._pending)
        now = time.monotonic()
        # While SQS is down, the replay loop probes it with spilled messages; we probe from here only
        # when Redis is down too, since then nothing is spilled.
        use_sqs = not high_water and (not self._sqs_down or (self._redis_down and now >= self._next_probe))
        rest = snapshot
        if use_sqs:
            attempts = 1 if self._sqs_down else self.settings.sqs_retry_attempts
            rest = (await self._send_with_retries(snapshot, attempts, None)).retry
        if rest:
            rest = await self._spill(rest)
        # Only this task appends to _pending, and only in _take above: the snapshot is still its prefix.
        self._pending[: len(snapshot)] = rest
        self._enforce_bound()

    # -- replay --

    async def replay_once(self) -> int:
        """Move spilled messages to SQS under the spill lock; return how many SQS accepted."""
        if self._sqs_down and time.monotonic() < self._next_probe:
            return 0
        r = self._redis()
        backlog = await r.llen(SPILL_KEY)
        self.metrics.spill_backlog.set(backlog)
        if not backlog:
            return 0
        token = f"{self.instance_id}:{uuid.uuid4().hex[:8]}"
        if not await r.set(LOCK_KEY, token, nx=True, px=LOCK_TTL_MS):
            return 0
        replayed = 0
        try:
            while not self._stopping:
                chunk = [
                    str(body) for body in await r.lrange(SPILL_KEY, 0, (1 if self._sqs_down else REPLAY_CHUNK) - 1)
                ]
                if not chunk:
                    break
                outcome = await self._send_once(chunk)
                if len(outcome.retry) == len(chunk):
                    break  # nothing taken: leave the list as it is
                still_ours = await self._trim_script(
                    keys=[SPILL_KEY, LOCK_KEY], args=[token, len(chunk), LOCK_TTL_MS, *outcome.retry]
                )
                self.metrics.replayed.inc(len(outcome.sent))
                replayed += len(outcome.sent)
                if not still_ours:
                    log.warning("lost the spill lock while replaying; another process carries on")
                    break
                if outcome.retry:
                    break
        finally:
            with contextlib.suppress(RedisError, OSError):
                await self._release_script(keys=[LOCK_KEY], args=[token])
                self.metrics.spill_backlog.set(await r.llen(SPILL_KEY))
        if replayed:
            log.info("replayed %d spilled click messages to SQS", replayed)
        return replayed

    async def _replay_loop(self) -> None:
        while not self._stopping:
            try:
                replayed = await self.replay_once()
            except (RedisError, OSError) as error:
                log.debug("replay skipped: Redis unavailable (%s)", error)
                replayed = 0
            except Exception:
                log.exception("replay round failed")
                replayed = 0
            if not replayed:
                await asyncio.sleep(REPLAY_IDLE_SECONDS)

    # -- lifecycle --

    async def _wait_for_work(self) -> None:
        deadline = time.monotonic() + self.settings.flush_interval_ms / 1000
        early = max(1, int(self.source.capacity * EARLY_FLUSH_FRACTION))
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0 or self.source.buffered() >= early:
                return
            await asyncio.sleep(min(left, POLL_SECONDS))

    async def run(self) -> None:
        """Ship every `flush_interval_ms` (sooner when the buffer fills) and replay spills, until `flush()`."""
        self._run_task = asyncio.current_task()
        replay = asyncio.create_task(self._replay_loop(), name="adclick-spill-replay")
        try:
            while not self._stopping:
                await self._wait_for_work()
                if self._stopping:
                    break
                try:
                    await self.ship_once()
                except Exception:
                    log.exception("shipping cycle failed; retrying next cycle")
                    await asyncio.sleep(self.settings.flush_interval_ms / 1000)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # flush() interrupted us and now owns what we were sending: stopping is the normal end.
        finally:
            replay.cancel()
            await asyncio.gather(replay, return_exceptions=True)

    async def flush(self, deadline_s: float) -> FlushResult:
        """Stop `run()`, then send everything buffered or held: SQS until shortly before the deadline, Redis
        for the rest. What neither takes in time is dropped, counted and logged. Closes the clients."""
        deadline = time.monotonic() + deadline_s
        self._stopping = True
        task = self._run_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()  # bodies of an interrupted cycle are still in _pending
            await asyncio.gather(task, return_exceptions=True)
        self._take()
        result = FlushResult()
        bodies = list(self._pending)
        self._pending.clear()
        try:
            # Leave a quarter of the time (at most 2 s) to spill what SQS did not take.
            sqs_budget = deadline_s - min(2.0, deadline_s / 4)
            if bodies and sqs_budget > 0:
                try:
                    async with asyncio.timeout(sqs_budget):
                        outcome = await self._send_with_retries(
                            bodies, self.settings.sqs_retry_attempts, time.monotonic() + sqs_budget
                        )
                    result.sent, result.rejected = len(outcome.sent), len(outcome.rejected)
                    bodies = outcome.retry
                except TimeoutError:
                    log.warning("SQS did not take the final flush in time; spilling it to Redis")
            if bodies:
                left = deadline - time.monotonic()
                try:
                    async with asyncio.timeout(max(left, 0.1)):
                        rest = await self._spill(bodies)
                except TimeoutError:
                    rest = bodies
                result.spilled = len(bodies) - len(rest)
                bodies = rest
            if bodies:
                result.dropped = len(bodies)
                self.metrics.dropped.labels("shutdown").inc(len(bodies))
                log.error("dropped %d click messages at shutdown: neither SQS nor Redis took them", len(bodies))
        finally:
            await self.aclose()
        return result
