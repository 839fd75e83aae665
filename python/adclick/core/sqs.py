"""SQS over aiobotocore: a client with tight timeouts, our queues, and batch sends that report what failed."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiobotocore import __version__ as aiobotocore_version
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from adclick import __version__
from adclick.core.settings import Settings

logger = logging.getLogger("adclick.core.sqs")

MAX_BATCH_ENTRIES = 10
MAX_BATCH_BYTES = 262_144
MAX_MESSAGE_BYTES = 262_144
DEFAULT_TIMEOUT_SECONDS = 2.0
MAX_CONCURRENT_REQUESTS = 8

# Errors about the content of a request: sending the same bytes again can only fail the same way.
_CONTENT_ERRORS = frozenset(
    {
        "InvalidParameterValue",
        "InvalidMessageContents",
        "BatchRequestTooLong",
        "AWS.SimpleQueueService.BatchRequestTooLong",
        "MessageTooLong",
        "InvalidAttributeValue",
    }
)
_QUEUE_EXISTS_ERRORS = frozenset({"QueueAlreadyExists", "QueueNameExists", "AWS.SimpleQueueService.QueueNameExists"})

SQSClient = Any  # aiobotocore's client is generated at runtime; types-aiobotocore is not a dependency


# A fixed User-Agent naming adclick and aiobotocore (the session appends botocore's version). Without one,
# botocore rebuilds its User-Agent from about 90 sanitised components twice per request (to list the SDK features
# used). That was about a tenth of the tracker's CPU per SendMessageBatch (measured with `time.process_time` over
# 150 calls: 3.2 ms against 2.9 ms), paid ten times a second on the core that serves clicks.
USER_AGENT = f"adclick/{__version__} aiobotocore/{aiobotocore_version}"


@asynccontextmanager
async def create_client(
    settings: Settings, *, connect_timeout: float | None = None, read_timeout: float | None = None
) -> AsyncIterator[SQSClient]:
    """An SQS client that fails fast: no botocore retries (callers retry), short timeouts.

    Timeouts default to `settings.sqs_timeout_seconds` where the settings have it (the tracker), else 2 s;
    a long-polling consumer passes a `read_timeout` above its WaitTimeSeconds.
    """
    default = float(getattr(settings, "sqs_timeout_seconds", DEFAULT_TIMEOUT_SECONDS))
    config = AioConfig(
        connect_timeout=connect_timeout if connect_timeout is not None else default,
        read_timeout=read_timeout if read_timeout is not None else default,
        # total_max_attempts counts the first try; botocore's "max_attempts" would still allow one retry.
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=MAX_CONCURRENT_REQUESTS * 2,
        user_agent=USER_AGENT,
    )
    session = get_session()
    async with session.create_client(
        "sqs", region_name=settings.aws_region, endpoint_url=settings.sqs_endpoint_url, config=config
    ) as client:
        yield client


def _error_codes(error: ClientError) -> set[str]:
    """The error code, and the query-protocol code botocore keeps next to it for JSON-protocol SQS."""
    details = error.response.get("Error", {})
    return {str(details.get("Code", "")), str(details.get("QueryErrorCode", ""))} - {""}


async def _create_queue(client: SQSClient, name: str, attributes: dict[str, str]) -> str:
    try:
        response = await client.create_queue(QueueName=name, Attributes=attributes)
        return str(response["QueueUrl"])
    except ClientError as error:
        if not _error_codes(error) & _QUEUE_EXISTS_ERRORS:
            raise
    # It exists with other attributes: bring them in line instead of failing.
    url = str((await client.get_queue_url(QueueName=name))["QueueUrl"])
    await client.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url


_NO_QUEUE_ERRORS = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


def is_missing_queue(error: ClientError) -> bool:
    """Whether SQS refused a call because the queue does not exist (its two spellings of that code)."""
    details = error.response.get("Error", {})
    return bool({details.get("Code"), details.get("QueryErrorCode")} & _NO_QUEUE_ERRORS)


async def queue_url(client: SQSClient, settings: Settings, kind: str) -> str:
    """The URL of the `clicks` or `conversions` queue; in a fresh environment (dev, tests) it creates the queues."""
    name = {"clicks": settings.clicks_queue, "conversions": settings.conversions_queue}[kind]
    try:
        response = await client.get_queue_url(QueueName=name)
        return str(response["QueueUrl"])
    except ClientError as error:
        if not is_missing_queue(error):
            raise
        return (await ensure_queues(client, settings))[kind]


async def ensure_queues(client: SQSClient, settings: Settings) -> dict[str, str]:
    """Create the clicks and conversions queues, each with a `-dlq` dead-letter queue; safe to repeat.

    Returns queue URLs keyed "clicks", "clicks-dlq", "conversions", "conversions-dlq".
    """
    urls: dict[str, str] = {}
    for key, name in (("clicks", settings.clicks_queue), ("conversions", settings.conversions_queue)):
        dlq_url = await _create_queue(client, f"{name}-dlq", {"MessageRetentionPeriod": "1209600"})
        dlq_attributes = await client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
        redrive = {
            "deadLetterTargetArn": dlq_attributes["Attributes"]["QueueArn"],
            "maxReceiveCount": str(settings.sqs_max_receives),
        }
        urls[f"{key}-dlq"] = dlq_url
        urls[key] = await _create_queue(
            client,
            name,
            {
                "RedrivePolicy": json.dumps(redrive, separators=(",", ":")),
                "MaximumMessageSize": str(MAX_MESSAGE_BYTES),
            },
        )
    return urls


def batch_bodies(bodies: Iterable[str], max_total_bytes: int = MAX_BATCH_BYTES) -> list[list[str]]:
    """Group bodies, in order, into SendMessageBatch calls of <= 10 entries and <= max_total_bytes (UTF-8).

    A body larger than `max_total_bytes` gets a batch of its own, for SQS to accept or refuse.
    """
    batches: list[list[str]] = []
    current: list[str] = []
    current_bytes = 0
    for body in bodies:
        size = len(body.encode())
        if current and (len(current) == MAX_BATCH_ENTRIES or current_bytes + size > max_total_bytes):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(body)
        current_bytes += size
    if current:
        batches.append(current)
    return batches


@dataclass
class SendOutcome:
    """What became of each body handed to `send_batches`."""

    sent: list[str] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)  # not taken for a passing reason: send again later
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (body, reason) that SQS will never take
    requests: int = 0
    failed_requests: int = 0  # calls that raised, or that reported any entry in "Failed"

    def merge(self, other: SendOutcome) -> None:
        self.sent += other.sent
        self.retry += other.retry
        self.rejected += other.rejected
        self.requests += other.requests
        self.failed_requests += other.failed_requests


async def _send_batch(client: SQSClient, queue_url: str, batch: Sequence[str]) -> SendOutcome:
    outcome = SendOutcome(requests=1)
    entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(batch)]
    try:
        response = await client.send_message_batch(QueueUrl=queue_url, Entries=entries)
    except ClientError as error:
        outcome.failed_requests = 1
        codes = _error_codes(error)
        if not codes & _CONTENT_ERRORS:
            outcome.retry = list(batch)
            return outcome
        if len(batch) == 1:
            outcome.rejected = [(batch[0], str(error))]
            return outcome
        # One bad body fails the whole call: send them one by one so only the bad ones are refused.
        for body in batch:
            outcome.merge(await _send_batch(client, queue_url, [body]))
        return outcome
    except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError):
        outcome.failed_requests = 1
        outcome.retry = list(batch)
        return outcome
    succeeded = {entry["Id"] for entry in response.get("Successful", [])}
    failed = {entry["Id"]: entry for entry in response.get("Failed", [])}
    if failed:
        outcome.failed_requests = 1
    for i, body in enumerate(batch):
        key = str(i)
        if key in succeeded:
            outcome.sent.append(body)
        elif key in failed and failed[key].get("SenderFault"):
            reason = f"{failed[key].get('Code')}: {failed[key].get('Message')}"
            outcome.rejected.append((body, reason))
        else:
            outcome.retry.append(body)
    return outcome


async def send_batches(
    client: SQSClient, queue_url: str, bodies: Sequence[str], *, max_total_bytes: int = MAX_BATCH_BYTES
) -> SendOutcome:
    """Send bodies in batches, a few requests at a time; once one request fails for a passing reason,
    the batches not yet started are not attempted (they go to `retry`), so an outage costs one timeout.
    """
    total = SendOutcome()
    batches = batch_bodies(bodies, max_total_bytes)
    if not batches:
        return total
    semaphore = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
    broken = False

    async def one(batch: list[str]) -> SendOutcome:
        nonlocal broken
        async with semaphore:
            if broken:
                return SendOutcome(retry=list(batch))
            outcome = await _send_batch(client, queue_url, batch)
            if outcome.retry and not outcome.sent:
                broken = True
            return outcome

    for outcome in await asyncio.gather(*(one(batch) for batch in batches)):
        total.merge(outcome)
    return total


async def send_bodies(
    client: SQSClient, queue_url: str, bodies: Sequence[str], *, max_total_bytes: int = MAX_BATCH_BYTES
) -> list[str]:
    """Send bodies with SendMessageBatch; return the ones that failed (partial failures included)."""
    outcome = await send_batches(client, queue_url, bodies, max_total_bytes=max_total_bytes)
    for body, reason in outcome.rejected:
        logger.error("SQS refused a message of %d bytes: %s", len(body.encode()), reason)
    return outcome.retry + [body for body, _ in outcome.rejected]
