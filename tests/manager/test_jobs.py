"""Failed jobs against a real SQS endpoint (moto server) on PostgreSQL and SQLite: retry puts the body back on its
queue, forget deletes, queue health reads depths and the oldest message's age without touching main queues."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from adclick.core.db.models import FailedJob
from adclick.core.settings import Settings
from adclick.core.sqs import create_client, ensure_queues
from adclick.manager.jobs import (
    JobError,
    count_jobs,
    forget_job,
    forget_retried,
    get_job,
    list_jobs,
    queues_health,
    readable_payload,
    retry_job,
)
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from support.manager import Manager, form
from support.servers import SqsServer

pytestmark = pytest.mark.anyio

CONVERSION_BODY = 'v1:{"click_id":"abc","txid":"T-1","received_at":1773000000000}'
BAD_EVENT = '{"click_id":"x","ts":-5,"link_id":1}'


@pytest.fixture
def settings(adclick_env: dict[str, str]) -> Settings:
    return Settings()


@pytest.fixture
async def sqs(settings: Settings) -> AsyncIterator[Any]:
    async with create_client(settings) as client:
        await ensure_queues(client, settings)
        yield client


async def add_jobs(session: AsyncSession, settings: Settings) -> list[FailedJob]:
    jobs = [
        FailedJob(queue=settings.conversions_queue, message_id="m-1", body=CONVERSION_BODY,
                  error="IntegrityError: boom\nTraceback ...", receive_count=3),
        FailedJob(queue=settings.clicks_queue, message_id="m-2#4", body=BAD_EVENT,
                  error="invalid click event: ts must be positive"),
        FailedJob(queue="adclick-gone", message_id="m-3", body="v1:{}", error="x"),
    ]  # fmt: skip
    session.add_all(jobs)
    await session.commit()
    return jobs


async def test_retry_puts_the_body_back_on_its_queue_and_marks_the_job(
    db_session: AsyncSession, settings: Settings, sqs: Any, sqs_server: SqsServer
) -> None:
    conversion_job, click_job, _ = await add_jobs(db_session, settings)
    retried = await retry_job(db_session, sqs, settings, conversion_job.id)
    assert retried["retried_at"] is not None and retried["sent_message_id"]
    assert sqs_server.drain(sqs_server.queue_url(settings.conversions_queue)) == [CONVERSION_BODY]

    # One bad event of a packed click message goes back packed, as the worker reads click messages.
    await retry_job(db_session, sqs, settings, click_job.id)
    (body,) = sqs_server.drain(sqs_server.queue_url(settings.clicks_queue))
    assert body.startswith("c1:") and readable_payload(body) == BAD_EVENT

    refreshed = await get_job(db_session, conversion_job.id)
    await db_session.refresh(refreshed)
    assert refreshed.retried_at is not None and refreshed.retried_at <= datetime.now(UTC)
    pending, _ = await list_jobs(db_session, pending_only=True)
    assert [job["message_id"] for job in pending] == ["m-3"]
    assert await count_jobs(db_session) == {"adclick-gone": 1}


async def test_retry_to_a_missing_queue_fails_and_leaves_the_job_as_it_was(
    db_session: AsyncSession, settings: Settings, sqs: Any
) -> None:
    *_, orphan = await add_jobs(db_session, settings)
    with pytest.raises(JobError, match="does not exist") as raised:
        await retry_job(db_session, sqs, settings, orphan.id)
    assert raised.value.status == 409
    job = await get_job(db_session, orphan.id)
    await db_session.refresh(job)
    assert job.retried_at is None
    with pytest.raises(JobError, match="no failed job"):
        await retry_job(db_session, sqs, settings, 9999)


async def test_forget_deletes(db_session: AsyncSession, settings: Settings, sqs: Any) -> None:
    first, second, third = await add_jobs(db_session, settings)
    await forget_job(db_session, first.id)
    with pytest.raises(JobError) as raised:
        await forget_job(db_session, first.id)
    assert raised.value.status == 404
    listed, following = await list_jobs(db_session)
    assert [job["id"] for job in listed] == [third.id, second.id] and following is None
    assert listed[1]["error"] == "invalid click event: ts must be positive"
    await retry_job(db_session, sqs, settings, second.id)
    assert await forget_retried(db_session) == 1
    assert await db_session.scalar(select(func.count()).select_from(FailedJob)) == 1


async def test_list_pages_and_filters_by_queue(db_session: AsyncSession, settings: Settings) -> None:
    jobs = await add_jobs(db_session, settings)
    page, following = await list_jobs(db_session, limit=2)
    assert [job["id"] for job in page] == [jobs[2].id, jobs[1].id] and following == jobs[1].id
    rest, following = await list_jobs(db_session, limit=2, before_id=following)
    assert [job["id"] for job in rest] == [jobs[0].id] and following is None
    clicks, _ = await list_jobs(db_session, queue=settings.clicks_queue)
    assert [job["message_id"] for job in clicks] == ["m-2#4"]


async def test_queue_health_reads_depth_and_peeks_only_dead_letter_queues(
    settings: Settings, sqs: Any, sqs_server: SqsServer
) -> None:
    client = sqs_server.client()
    main = sqs_server.queue_url(settings.conversions_queue)
    dlq = sqs_server.queue_url(f"{settings.conversions_queue}-dlq")
    try:
        for n in range(3):
            client.send_message(QueueUrl=main, MessageBody=f"main-{n}")
        for n in range(2):
            client.send_message(QueueUrl=dlq, MessageBody=f"dead-{n}")
        await anyio.sleep(1.1)  # so the oldest dead letter is at least a second old
        health = {q.name: q for q in await queues_health(sqs, settings)}
        assert set(health) == {
            settings.clicks_queue,
            f"{settings.clicks_queue}-dlq",
            settings.conversions_queue,
            f"{settings.conversions_queue}-dlq",
        }
        conversions, dead = health[settings.conversions_queue], health[f"{settings.conversions_queue}-dlq"]
        assert (conversions.visible, conversions.in_flight, conversions.dead_letter) == (3, 0, False)
        assert (conversions.oldest_age_seconds, conversions.oldest_source) == (None, None)
        assert (dead.visible, dead.dead_letter, dead.oldest_source) == (2, True, "peek")
        assert dead.oldest_age_seconds is not None and dead.oldest_age_seconds >= 1
        assert health[settings.clicks_queue].visible == 0
        # The main queue's messages were never received: nothing moved them toward the dead-letter queue.
        received = client.receive_message(
            QueueUrl=main, MaxNumberOfMessages=10, AttributeNames=["ApproximateReceiveCount"], VisibilityTimeout=0
        )["Messages"]
        assert {m["Attributes"]["ApproximateReceiveCount"] for m in received} == {"1"}
        # Peeking left the dead letters visible.
        assert sqs_server.count(dlq) == 2
    finally:
        client.close()


async def test_queue_health_says_when_a_queue_is_missing(adclick_env: dict[str, str], sqs_server: SqsServer) -> None:
    settings = Settings(clicks_queue="nope-clicks")
    async with create_client(settings) as client:
        health = {q.name: q for q in await queues_health(client, settings)}
    assert health["nope-clicks"].exists is False and health["nope-clicks"].visible is None
    assert json.dumps(health["nope-clicks"].as_dict())


async def test_ids_beyond_the_column_are_a_clear_422_and_the_largest_id_a_404(manager: Manager) -> None:
    api = await manager.api("manager")
    browser = await manager.as_role("manager")
    too_big, largest = "99999999999999999999", str(2**63 - 1)
    for method, path in [
        ("GET", "/api/v1/jobs/{}"),
        ("POST", "/api/v1/jobs/{}/retry"),
        ("DELETE", "/api/v1/jobs/{}"),
        ("GET", "/api/v1/jobs?before_id={}"),
    ]:
        reply = await api.request(method, path.format(too_big))
        assert reply.status_code == 422, (method, path, reply.text)
        assert "less than or equal to 9223372036854775807" in reply.text
        if "before_id" not in path and "retry" not in path:
            assert (await api.request(method, path.format(largest))).status_code == 404, (method, path)
    assert (await api.get("/api/v1/jobs/0")).status_code == 422
    assert (await api.get(f"/api/v1/jobs?before_id={largest}")).json() == {"items": [], "next_before_id": None}
    assert (await api.get(f"/api/v1/jobs?queue={'q' * 81}")).status_code == 422
    assert (await browser.get(f"/jobs/{too_big}")).status_code == 422
    assert (await browser.get(f"/jobs/{largest}")).status_code == 404
    assert (await browser.get(f"/jobs?before_id={too_big}")).status_code == 422
    reply = await browser.post(f"/jobs/{too_big}/forget", data=form(browser))
    assert reply.status_code == 422 and "less than or equal to" in reply.text
