"""One SQS consumer task: long-poll a queue, hand each batch to its handler, delete what committed.

- Receive: up to 10 messages, `worker_wait_seconds` long poll (the client's read timeout is above it). When a
  receive comes back full there is a backlog, and more receives (no wait) fill the batch up to the handler's
  `max_messages` (10 packed click messages already hold thousands of clicks; conversions take 100 a batch),
  so the fixed cost of a transaction is shared by more messages.
- While a batch is being processed its messages' visibility is extended (ChangeMessageVisibilityBatch) every
  half visibility timeout, so a slow batch is not handed to another worker meanwhile.
- Messages are deleted only after their transaction committed; kept ones (failures) are left for SQS to
  redeliver and, after maxReceiveCount, to move to the dead-letter queue.
- When the database or Redis is down the same messages are retried here with backoff (still holding their
  visibility), instead of being redelivered: an outage does not count as a receive of a good message.
- On stop: no new receive starts; the long poll in flight ends (within `wait_seconds`) and what it brought is
  processed, the batch in flight is finished (or, if the database is still down, handed back to the queue at
  once) and the task returns. So a pod's termination grace period should exceed the wait plus one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from botocore.exceptions import BotoCoreError, ClientError

from adclick.core.sqs import SQSClient
from adclick.worker.batches import BatchHandler, Received, describe
from adclick.worker.health import Heartbeat, WorkerMetrics

log = logging.getLogger("adclick.worker")

MAX_MESSAGES = 10
RETRY_MIN_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
_SQS_ERRORS = (ClientError, BotoCoreError, OSError, asyncio.TimeoutError)


def parse_messages(messages: Sequence[dict[str, object]]) -> list[Received]:
    out: list[Received] = []
    for message in messages:
        attributes = message.get("Attributes") or {}
        assert isinstance(attributes, dict)
        sent = attributes.get("SentTimestamp")
        out.append(
            Received(
                message_id=str(message["MessageId"]),
                receipt_handle=str(message["ReceiptHandle"]),
                body=str(message.get("Body", "")),
                receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
                sent_at_ms=int(sent) if sent is not None else None,
            )
        )
    return out


class Consumer:
    """Consumes one queue; run several on the same queue for concurrency."""

    def __init__(
        self,
        name: str,
        client: SQSClient,
        queue_url: str,
        handler: BatchHandler[object],
        metrics: WorkerMetrics,
        heartbeat: Heartbeat,
        *,
        wait_seconds: int,
        visibility_timeout: int,
    ) -> None:
        self.name = name
        self.client = client
        self.queue_url = queue_url
        self.handler = handler
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        self.queue = handler.queue

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in flight when it is set is finished first."""
        self.heartbeat.beat(self.name)
        backoff = RETRY_MIN_SECONDS
        try:
            while not stop.is_set():
                self.heartbeat.beat(self.name)
                # A long poll is not cancelled on stop: SQS may already have handed its messages to this
                # request, and abandoning it would hide them for a whole visibility timeout. It ends within
                # `wait_seconds`, and what it brings is processed as the last batch.
                try:
                    messages = await self._receive()
                except _SQS_ERRORS as error:
                    log.warning("%s: receive failed (%s); retrying in %.1f s", self.name, describe(error), backoff)
                    await self._sleep(backoff, stop)
                    backoff = min(backoff * 2, RETRY_MAX_SECONDS)
                    continue
                backoff = RETRY_MIN_SECONDS
                self.heartbeat.beat(self.name)
                messages = await self._fill(messages)
                if messages:
                    try:
                        await self.process(messages, stop)
                    except Exception:
                        # A bug, not an outage: the messages come back after their visibility timeout.
                        log.exception("%s: batch of %d failed unexpectedly", self.name, len(messages))
                        await self._sleep(backoff, stop)
        finally:
            self.heartbeat.forget(self.name)

    async def _fill(self, messages: list[Received]) -> list[Received]:
        """A full receive means a backlog: take more right away (no wait) to fill one transaction."""
        while len(messages) % MAX_MESSAGES == 0 and 0 < len(messages) < self.handler.max_messages:
            try:
                more = await self._receive(wait_seconds=0)
            except _SQS_ERRORS as error:
                log.warning("%s: receive failed (%s); going on with %d", self.name, describe(error), len(messages))
                break
            if not more:
                break
            messages += more
        return messages

    async def _receive(self, wait_seconds: int | None = None) -> list[Received]:
        response = await self.client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=MAX_MESSAGES,
            WaitTimeSeconds=self.wait_seconds if wait_seconds is None else wait_seconds,
            VisibilityTimeout=self.visibility_timeout,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        return parse_messages(response.get("Messages", []))

    async def process(self, messages: list[Received], stop: asyncio.Event) -> None:
        """Handle one received batch to the end: committed and deleted, kept, or handed back on stop."""
        started = time.monotonic()
        sent = [m.sent_at_ms for m in messages if m.sent_at_ms is not None]
        if sent:
            self.metrics.oldest_age.labels(self.queue).set(max(0.0, time.time() - min(sent) / 1000))
        holding = list(messages)
        extender = asyncio.create_task(self._extend_visibility(holding))
        try:
            pending = list(messages)
            backoff = RETRY_MIN_SECONDS
            while pending:
                outcome = await self.handler.handle(pending)
                self.heartbeat.beat(self.name)
                log.debug(
                    "%s: %d done, %d kept, %d to retry after %.3f s",
                    self.name,
                    len(outcome.done),
                    len(outcome.kept),
                    len(outcome.retry),
                    time.monotonic() - started,
                )
                if outcome.done:
                    await self._delete(outcome.done)
                finished = {m.message_id for m in outcome.done + outcome.kept}
                holding[:] = [m for m in holding if m.message_id not in finished]
                pending = outcome.retry
                if not pending:
                    break
                self.metrics.retries.labels(self.queue).inc()
                if stop.is_set():
                    log.warning(
                        "%s: stopping with %d messages not stored (%s); handing them back to the queue",
                        self.name,
                        len(pending),
                        describe(outcome.error) if outcome.error else "?",
                    )
                    await self._release(pending)
                    holding.clear()
                    return
                log.warning(
                    "%s: %d messages wait for the database or Redis (%s); retrying in %.1f s",
                    self.name,
                    len(pending),
                    describe(outcome.error) if outcome.error else "?",
                    backoff,
                )
                await self._sleep(backoff, stop)
                backoff = min(backoff * 2, RETRY_MAX_SECONDS)
        finally:
            extender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await extender
        self.metrics.batch_seconds.labels(self.queue).observe(time.monotonic() - started)

    async def _sleep(self, seconds: float, stop: asyncio.Event) -> None:
        """Sleep, beating the heartbeat; wake early on stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        self.heartbeat.beat(self.name)

    async def _extend_visibility(self, holding: list[Received]) -> None:
        """Every half visibility timeout, push the held messages' visibility out by a full timeout again."""
        interval = max(1.0, self.visibility_timeout / 2)
        while True:
            await asyncio.sleep(interval)
            if not holding:
                continue
            entries = [
                {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": self.visibility_timeout}
                for i, m in enumerate(holding[:MAX_MESSAGES])
            ]
            try:
                await self.client.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)
                self.metrics.visibility_extensions.inc()
            except _SQS_ERRORS as error:
                log.warning("%s: could not extend visibility: %s", self.name, describe(error))

    async def _delete(self, messages: Sequence[Received]) -> None:
        """Delete committed messages; on failure they come back and are recognised as already stored."""
        entries = [{"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(messages)]
        for attempt in range(3):
            try:
                response = await self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except _SQS_ERRORS as error:
                log.warning("%s: delete failed (%s), attempt %d", self.name, describe(error), attempt + 1)
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            failed = {entry["Id"] for entry in response.get("Failed", [])}
            deleted = len(entries) - len(failed)
            self.metrics.messages.labels(self.queue).inc(deleted)
            entries = [entry for entry in entries if entry["Id"] in failed]
            if not entries:
                return
        log.warning("%s: %d messages not deleted; they will be redelivered and skipped", self.name, len(entries))

    async def _release(self, messages: Sequence[Received]) -> None:
        """Make messages visible again now, for another worker (or this one, restarted)."""
        entries = [
            {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": 0} for i, m in enumerate(messages)
        ]
        with contextlib.suppress(*_SQS_ERRORS):
            await self.client.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)
