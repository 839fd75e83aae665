"""One batch of queue messages into one database transaction, with poison messages split out.

A handler decodes every message, then applies the readable ones in a single transaction. What can happen
to a message:
- done: its effects committed (or it was recorded as a rejection); the consumer deletes it.
- kept: it could not be decoded or processed; a failed-jobs row says why, the consumer leaves it on the
  queue, SQS redelivers it and, after the queue's maxReceiveCount, moves it to the dead-letter queue.
- retry: the database or Redis was unreachable; nothing is recorded (that needs the database too) and the
  consumer retries the same messages in-process, holding their visibility, so an outage does not burn
  receive counts and push good messages to the dead-letter queue.

When the transaction fails for any other reason, the batch is split in halves and each half is tried on its
own, down to the single message at fault, so one bad message never blocks the rest of its batch.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import redis.exceptions
from sqlalchemy import Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adclick.core.db.models import FailedJob
from adclick.worker.health import WorkerMetrics
from adclick.worker.messages import UndecodableMessage

log = logging.getLogger("adclick.worker")

T = TypeVar("T")

# PostgreSQL error classes that say "try again later", not "this data is wrong": connection exceptions,
# transaction rollbacks (serialization failures, deadlocks), insufficient resources, operator
# intervention (shutdown, starting up), system errors.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Received:
    """One SQS message as received."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int = 1
    sent_at_ms: int | None = None


@dataclass(slots=True)
class Outcome:
    done: list[Received] = field(default_factory=list)
    kept: list[Received] = field(default_factory=list)
    retry: list[Received] = field(default_factory=list)
    error: BaseException | None = None  # the transient error behind `retry`


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed-jobs row to write. `key` None: the whole message failed and stays on the queue; otherwise
    `message_id#n`, one event inside a message that is done."""

    message: Received
    error: str
    key: str | None = None
    body: str | None = None


@dataclass(slots=True)
class Applied:
    """What `apply` decided beyond "done": failures to record (a message-level one keeps its message queued)."""

    failures: list[Failure] = field(default_factory=list)
    processed: dict[str, int] = field(default_factory=dict)  # metric "processed" by kind, counted after commit
    capped_offers: set[int] = field(default_factory=set)  # whose cap state changed: republished after commit


class RetryBatch(Exception):
    """Raised by a handler when the batch lost a race (another worker stored the same key): run it again."""


def is_transient(error: BaseException) -> bool:
    """Whether the error is about reaching the database or Redis (retry later) rather than about the data."""
    if isinstance(error, RetryBatch):
        return True
    if isinstance(error, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return True
    if isinstance(error, redis.exceptions.BusyLoadingError | redis.exceptions.TryAgainError):
        return True
    if isinstance(error, OSError | TimeoutError | ConnectionError):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
            return True
        original = error.orig
        sqlstate = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
        if isinstance(sqlstate, str) and sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES:
            return True
        cause = getattr(original, "__cause__", None)
        if cause is not None and cause is not error and is_transient(cause):
            return True
    if isinstance(error, sa_exc.TimeoutError):  # the connection pool had none to give
        return True
    return False


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]


async def record_failures(session: AsyncSession, queue: str, failures: Sequence[Failure]) -> None:
    """Upsert failed-jobs rows keyed (queue, message id): a redelivery updates the error and receive count."""
    if not failures:
        return
    rows: dict[str, dict[str, Any]] = {}
    for failure in failures:
        key = (failure.key or failure.message.message_id)[:128]
        rows[key] = {
            "queue": queue,
            "message_id": key,
            "body": failure.body if failure.body is not None else failure.message.body,
            "error": failure.error[:MAX_ERROR_CHARS],
            "receive_count": failure.message.receive_count,
        }
    table = cast(Table, FailedJob.__table__)
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    statement = insert.on_conflict_do_update(
        index_elements=[table.c.queue, table.c.message_id],
        set_={
            "error": insert.excluded.error,
            "receive_count": insert.excluded.receive_count,
            "body": insert.excluded.body,
            "retried_at": None,
        },
    )
    await session.execute(statement, [rows[key] for key in sorted(rows)])


class BatchHandler(ABC, Generic[T]):
    """Decode, apply in one transaction, split on failure. Subclasses say how to decode and how to apply."""

    kind: str = ""
    max_messages: int = 10  # messages per transaction when there is a backlog (SQS hands out 10 per receive)

    def __init__(self, sessions: async_sessionmaker[AsyncSession], queue: str, metrics: WorkerMetrics) -> None:
        self.sessions = sessions
        self.queue = queue
        self.metrics = metrics

    @abstractmethod
    def decode(self, body: str) -> T:
        """The message body as a value `apply` takes; raises UndecodableMessage."""

    @abstractmethod
    async def apply(self, session: AsyncSession, items: list[tuple[Received, T]]) -> Applied:
        """Write the items inside the caller's transaction; raise to roll it back."""

    async def committed(self, applied: Applied) -> None:
        """What to do once `apply`'s transaction has committed (never raises: the messages are done)."""

    async def handle(self, messages: Sequence[Received]) -> Outcome:
        """Process messages; every message ends in exactly one of the outcome's lists."""
        items: list[tuple[Received, T]] = []
        undecodable: list[Failure] = []
        for message in messages:
            try:
                items.append((message, self.decode(message.body)))
            except Exception as error:  # whatever a decoder raises, the body is the problem
                reason = str(error) if isinstance(error, UndecodableMessage) else describe(error)
                log.warning("undecodable message %s on %s: %s", message.message_id, self.queue, reason)
                undecodable.append(Failure(message, f"undecodable: {reason}"))
        outcome = Outcome()
        await self._attempt(items, undecodable, outcome)
        return outcome

    async def _attempt(self, items: list[tuple[Received, T]], failures: list[Failure], outcome: Outcome) -> None:
        try:
            async with self.sessions() as session, session.begin():
                applied = await self.apply(session, items)
                await record_failures(session, self.queue, failures + applied.failures)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if is_transient(error):
                outcome.retry += [message for message, _ in items] + [failure.message for failure in failures]
                outcome.error = error
                return
            if len(items) > 1:
                middle = len(items) // 2
                log.info("batch of %d on %s failed (%s); splitting it", len(items), self.queue, describe(error))
                await self._attempt(items[:middle], failures, outcome)
                await self._attempt(items[middle:], [], outcome)
                return
            if not items:
                # Even recording the failures failed for a reason that is not an outage: log, keep the messages.
                log.error("could not record failures on %s: %s", self.queue, describe(error))
                outcome.kept += [failure.message for failure in failures]
                return
            message = items[0][0]
            log.exception("message %s on %s failed", message.message_id, self.queue)
            await self._attempt([], [*failures, Failure(message, describe(error))], outcome)
            return
        # A failure without a key is about the whole message: it stays on the queue. One with a key is about one
        # event inside a message that is otherwise done.
        whole = [failure.message for failure in failures + applied.failures if failure.key is None]
        kept_ids: set[str] = set()
        for message in whole:
            if message.message_id not in kept_ids:
                kept_ids.add(message.message_id)
                outcome.kept.append(message)
        outcome.done += [message for message, _ in items if message.message_id not in kept_ids]
        for kind, count in applied.processed.items():
            if count:
                self.metrics.processed.labels(kind).inc(count)
                if kind.startswith("rejected:"):
                    self.metrics.rejected.labels(kind.partition(":")[2]).inc(count)
        recorded = len(failures) + len(applied.failures)
        if recorded:
            self.metrics.failed.labels(self.queue).inc(recorded)
        await self.committed(applied)
