"""Failed jobs, as Laravel Horizon shows them: list, inspect, retry (re-queue the body) or forget; queue health.

The worker records a failed job per message it could not process (`failed_jobs`, keyed queue + message id), or
per bad event inside a packed click message (message id `<id>#<n>`, body: that one event's JSON). Retrying sends
the body to the job's queue again (a single click event is packed into a `c1:` body first, per
docs/contracts.md) and stamps `retried_at`; the worker's writes are idempotent, so a retried message that also
came back from SQS on its own changes nothing twice. Forgetting deletes the row.

Queue health per queue and its dead-letter queue: depth (ApproximateNumberOfMessages), in flight, delayed, and the
age of the oldest message: the `ApproximateAgeOfOldestMessage` attribute where the endpoint reports it, else by
peeking (ReceiveMessage with VisibilityTimeout 0, the oldest SentTimestamp seen; a sample, so at least that old)
but only on queues without a redrive policy, because every receive counts toward moving a message to the
dead-letter queue. Main queues on AWS report the age through CloudWatch, not through the SQS API.
"""

from __future__ import annotations

import base64
import time
import zlib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from adclick import _native
from adclick.core.db.models import FailedJob
from adclick.core.settings import Settings, get_settings
from adclick.core.sqs import SQSClient, create_client
from adclick.core.wire import CLICKS_PREFIX
from adclick.manager.deps import SessionDep, StaffUser
from adclick.manager.templating import flash, render

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
PEEK_MESSAGES = 10
# failed_jobs.id is a BIGINT: a larger id is a 422, not a database overflow (a 500).
MAX_JOB_ID = 2**63 - 1
JobId = Annotated[int, Path(ge=1, le=MAX_JOB_ID)]
BeforeId = Annotated[int | None, Query(ge=1, le=MAX_JOB_ID)]
QueueName = Annotated[str | None, Query(max_length=80)]


class JobError(Exception):
    """A job action that cannot be done; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def job_dict(job: FailedJob, *, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id,
        "queue": job.queue,
        "message_id": job.message_id,
        "error": job.error if full else job.error.splitlines()[0][:200] if job.error else "",
        "receive_count": job.receive_count,
        "created_at": job.created_at.isoformat(),
        "retried_at": job.retried_at.isoformat() if job.retried_at else None,
    }
    if full:
        out["body"] = job.body
        out["payload"] = readable_payload(job.body)
    return out


def readable_payload(body: str) -> str | None:
    """A packed click body unpacked to its newline-separated JSON events, to read; None if not one (or unreadable)."""
    if not body.startswith(CLICKS_PREFIX):
        return None
    try:
        return zlib.decompress(base64.b64decode(body[len(CLICKS_PREFIX) :], validate=True)).decode()
    except (ValueError, zlib.error, UnicodeDecodeError):
        return None


async def list_jobs(
    session: AsyncSession,
    *,
    queue: str | None = None,
    pending_only: bool = False,
    limit: int = PAGE_SIZE,
    before_id: int | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first; `pending_only` hides retried jobs. Returns a page and the next page's `before_id`."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    statement = select(FailedJob).order_by(FailedJob.id.desc()).limit(limit + 1)
    if queue:
        statement = statement.where(FailedJob.queue == queue)
    if pending_only:
        statement = statement.where(FailedJob.retried_at.is_(None))
    if before_id is not None:
        statement = statement.where(FailedJob.id < before_id)
    jobs = list((await session.execute(statement)).scalars())
    following = jobs[limit - 1].id if len(jobs) > limit else None
    return [job_dict(job) for job in jobs[:limit]], following


async def count_jobs(session: AsyncSession) -> dict[str, int]:
    """Jobs not retried yet, per queue."""
    found = await session.execute(
        select(FailedJob.queue, func.count()).where(FailedJob.retried_at.is_(None)).group_by(FailedJob.queue)
    )
    return {queue: int(count) for queue, count in found.all()}


async def get_job(session: AsyncSession, job_id: int) -> FailedJob:
    job = await session.get(FailedJob, job_id)
    if job is None:
        raise JobError(404, f"no failed job {job_id}")
    return job


def body_to_send(job: FailedJob, settings: Settings) -> str:
    """What to put on the queue: the body as recorded, or one bad click event packed as a `c1:` message."""
    if job.queue == settings.clicks_queue and not job.body.startswith(CLICKS_PREFIX):
        (body,) = _native.pack_clicks([job.body.encode()], 1 << 30)  # packed as the tracker packs
        return body
    return job.body


async def queue_url(client: SQSClient, name: str) -> str:
    try:
        return str((await client.get_queue_url(QueueName=name))["QueueUrl"])
    except ClientError as error:
        raise JobError(409, f"queue {name!r} does not exist: {error}") from None
    except (BotoCoreError, OSError, TimeoutError) as error:
        raise JobError(503, f"SQS did not answer: {error}") from None


async def retry_job(session: AsyncSession, client: SQSClient, settings: Settings, job_id: int) -> dict[str, Any]:
    """Send the job's body to its queue, then stamp `retried_at` and commit."""
    job = await get_job(session, job_id)
    url = await queue_url(client, job.queue)
    try:
        sent = await client.send_message(QueueUrl=url, MessageBody=body_to_send(job, settings))
    except ClientError as error:
        raise JobError(502, f"SQS refused the message: {error}") from None
    except (BotoCoreError, OSError, TimeoutError) as error:
        raise JobError(503, f"SQS did not answer: {error}") from None
    job.retried_at = datetime.now(UTC)
    await session.commit()
    return {**job_dict(job), "sent_message_id": sent.get("MessageId")}


async def forget_job(session: AsyncSession, job_id: int) -> None:
    deleted = await session.execute(delete(FailedJob).where(FailedJob.id == job_id).returning(FailedJob.id))
    if deleted.first() is None:
        await session.rollback()
        raise JobError(404, f"no failed job {job_id}")
    await session.commit()


async def forget_retried(session: AsyncSession) -> int:
    """Delete every job that was retried; returns how many."""
    deleted = await session.execute(delete(FailedJob).where(FailedJob.retried_at.is_not(None)).returning(FailedJob.id))
    count = len(deleted.all())
    await session.commit()
    return count


@dataclass(slots=True)
class QueueHealth:
    name: str
    exists: bool = True
    visible: int | None = None
    in_flight: int | None = None
    delayed: int | None = None
    oldest_age_seconds: int | None = None
    oldest_source: str | None = None  # "attribute", "peek" (a lower bound), or None when unknown
    dead_letter: bool = False
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _oldest_by_peek(client: SQSClient, url: str) -> int | None:
    response = await client.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=PEEK_MESSAGES,
        VisibilityTimeout=0,
        WaitTimeSeconds=0,
        AttributeNames=["SentTimestamp"],
    )
    sent = [int(m["Attributes"]["SentTimestamp"]) for m in response.get("Messages", []) if "Attributes" in m]
    if not sent:
        return None
    return max(0, int(time.time() - min(sent) / 1000))


async def queue_health(client: SQSClient, name: str, *, dead_letter: bool = False) -> QueueHealth:
    health = QueueHealth(name, dead_letter=dead_letter)
    try:
        url = str((await client.get_queue_url(QueueName=name))["QueueUrl"])
    except ClientError:
        health.exists = False
        return health
    except (BotoCoreError, OSError, TimeoutError) as error:
        health.error = f"SQS did not answer: {type(error).__name__}"
        return health
    try:
        attributes = (await client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))["Attributes"]
        health.visible = int(attributes.get("ApproximateNumberOfMessages", 0))
        health.in_flight = int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0))
        health.delayed = int(attributes.get("ApproximateNumberOfMessagesDelayed", 0))
        if "ApproximateAgeOfOldestMessage" in attributes:
            health.oldest_age_seconds = int(attributes["ApproximateAgeOfOldestMessage"])
            health.oldest_source = "attribute"
        elif "RedrivePolicy" not in attributes and health.visible:
            health.oldest_age_seconds = await _oldest_by_peek(client, url)
            health.oldest_source = "peek" if health.oldest_age_seconds is not None else None
    except (ClientError, BotoCoreError, OSError, TimeoutError) as error:
        health.error = f"{type(error).__name__}: {error}"[:300]
    return health


async def queues_health(client: SQSClient, settings: Settings) -> list[QueueHealth]:
    """The clicks and conversions queues and their dead-letter queues."""
    out: list[QueueHealth] = []
    for name in (settings.clicks_queue, settings.conversions_queue):
        out.append(await queue_health(client, name))
        out.append(await queue_health(client, f"{name}-dlq", dead_letter=True))
    return out


# -- HTTP: JSON API and pages (staff only) --

router = APIRouter()


def _settings(request: Request) -> Settings:
    settings: Settings | None = getattr(request.app.state, "settings", None)
    return settings if settings is not None else get_settings()


def _http(error: JobError) -> HTTPException:
    return HTTPException(error.status, error.message)


@router.get("/api/v1/jobs", tags=["jobs"])
async def jobs_api(
    session: SessionDep,
    _user: StaffUser,
    queue: QueueName = None,
    pending_only: bool = False,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
    before_id: BeforeId = None,
) -> dict[str, Any]:
    """Failed jobs, newest first; page on with `before_id` = the previous answer's `next_before_id`."""
    items, following = await list_jobs(
        session, queue=queue, pending_only=pending_only, limit=limit, before_id=before_id
    )
    return {"items": items, "next_before_id": following}


@router.get("/api/v1/jobs/{job_id}", tags=["jobs"])
async def job_api(job_id: JobId, session: SessionDep, _user: StaffUser) -> dict[str, Any]:
    """One failed job with its whole error, body and (for packed click messages) the unpacked events."""
    try:
        return job_dict(await get_job(session, job_id), full=True)
    except JobError as error:
        raise _http(error) from None


@router.post("/api/v1/jobs/{job_id}/retry", tags=["jobs"])
async def retry_api(request: Request, job_id: JobId, session: SessionDep, _user: StaffUser) -> dict[str, Any]:
    settings = _settings(request)
    try:
        async with create_client(settings) as client:
            return await retry_job(session, client, settings, job_id)
    except JobError as error:
        raise _http(error) from None


@router.delete("/api/v1/jobs/{job_id}", status_code=204, tags=["jobs"])
async def forget_api(job_id: JobId, session: SessionDep, _user: StaffUser) -> Response:
    try:
        await forget_job(session, job_id)
    except JobError as error:
        raise _http(error) from None
    return Response(status_code=204)


@router.get("/api/v1/queues", tags=["jobs"])
async def queues_api(request: Request, _user: StaffUser) -> dict[str, Any]:
    """Depth, in-flight, delayed and oldest-message age of the clicks and conversions queues and their DLQs."""
    settings = _settings(request)
    async with create_client(settings) as client:
        return {"queues": [health.as_dict() for health in await queues_health(client, settings)]}


@router.get("/jobs", include_in_schema=False)
async def jobs_page(
    request: Request,
    session: SessionDep,
    _user: StaffUser,
    queue: QueueName = None,
    pending_only: bool = False,
    before_id: BeforeId = None,
) -> Response:
    settings = _settings(request)
    items, following = await list_jobs(
        session, queue=queue or None, pending_only=pending_only, limit=PAGE_SIZE, before_id=before_id
    )
    async with create_client(settings) as client:
        queues = await queues_health(client, settings)
    context = {
        "items": items,
        "next_before_id": following,
        "queue": queue or "",
        "pending_only": pending_only,
        "queues": queues,
        "counts": await count_jobs(session),
        "queue_names": [settings.clicks_queue, settings.conversions_queue],
    }
    return render(request, "jobs.html", context)


@router.get("/jobs/{job_id}", include_in_schema=False)
async def job_page(request: Request, job_id: JobId, session: SessionDep, _user: StaffUser) -> Response:
    try:
        job = job_dict(await get_job(session, job_id), full=True)
    except JobError as error:
        raise _http(error) from None
    return render(request, "jobs_detail.html", {"job": job})


@router.post("/jobs/{job_id}/retry", include_in_schema=False)
async def retry_page(request: Request, job_id: JobId, session: SessionDep, _user: StaffUser) -> Response:
    settings = _settings(request)
    try:
        async with create_client(settings) as client:
            await retry_job(session, client, settings, job_id)
    except JobError as error:
        flash(request, error.message, "error")
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)
    flash(request, f"Job {job_id} sent back to its queue.", "success")
    return RedirectResponse("/jobs", status_code=303)


@router.post("/jobs/{job_id}/forget", include_in_schema=False)
async def forget_page(request: Request, job_id: JobId, session: SessionDep, _user: StaffUser) -> Response:
    try:
        await forget_job(session, job_id)
    except JobError as error:
        raise _http(error) from None
    flash(request, f"Job {job_id} forgotten.", "success")
    return RedirectResponse("/jobs", status_code=303)


@router.post("/jobs/forget-retried", include_in_schema=False)
async def forget_retried_page(request: Request, session: SessionDep, _user: StaffUser) -> Response:
    count = await forget_retried(session)
    flash(request, f"{count} retried job(s) forgotten.", "success")
    return RedirectResponse("/jobs", status_code=303)
