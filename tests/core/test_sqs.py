"""`adclick.core.sqs`, the SQS client of the roles that talk to SQS from Python (worker, postback, manager), against a
real SQS endpoint (moto server): batching, queue creation, and sends that say what failed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from adclick.core.settings import Settings
from adclick.core.sqs import MAX_BATCH_ENTRIES, batch_bodies, create_client, ensure_queues, send_batches, send_bodies
from hypothesis import given
from hypothesis import strategies as st
from support.servers import SqsServer


def bodies(prefix: str, n: int, size: int = 64) -> list[str]:
    return [f"c1:{prefix}-{i:05d}-".ljust(size, "x") for i in range(n)]


def settings_for(**overrides: Any) -> Settings:
    # Not a timeout test: moto's first calls (creating its backend) can take longer than a tight timeout here.
    return Settings(**{"clicks_queue": "clicks", "conversions_queue": "conversions", **overrides})


# -- batching --


def test_batches_hold_at_most_ten_entries_in_order() -> None:
    given_bodies = bodies("b", 25)
    batches = batch_bodies(given_bodies, 262_144)
    assert [len(batch) for batch in batches] == [10, 10, 5]
    assert [body for batch in batches for body in batch] == given_bodies


def test_batches_stay_under_the_total_size() -> None:
    big = bodies("big", 5, size=100_000)
    assert [len(batch) for batch in batch_bodies(big, 262_144)] == [2, 2, 1]


def test_a_body_over_the_limit_goes_alone() -> None:
    mixed = ["a", "x" * 300, "b"]
    assert batch_bodies(mixed, 100) == [["a"], ["x" * 300], ["b"]]


def test_batch_size_counts_utf8_bytes() -> None:
    assert batch_bodies(["é" * 30, "é" * 30], 100) == [["é" * 30], ["é" * 30]]


@given(st.lists(st.integers(min_value=0, max_value=3000), max_size=60), st.integers(min_value=1, max_value=5000))
def test_batching_keeps_every_body_within_limits(sizes: list[int], limit: int) -> None:
    given_bodies = ["x" * size for size in sizes]
    batches = batch_bodies(given_bodies, limit)
    assert [body for batch in batches for body in batch] == given_bodies
    for batch in batches:
        assert 1 <= len(batch) <= MAX_BATCH_ENTRIES
        assert len(batch) == 1 or sum(len(body) for body in batch) <= limit


# -- core.sqs against the endpoint --


def test_ensure_queues_creates_dead_letter_queues_and_is_idempotent(
    adclick_env: dict[str, str], sqs_server: SqsServer
) -> None:
    settings = settings_for(sqs_max_receives=4)

    async def scenario() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        async with create_client(settings) as client:
            first = await ensure_queues(client, settings)
            second = await ensure_queues(client, settings)
            attributes = await client.get_queue_attributes(QueueUrl=first["clicks"], AttributeNames=["All"])
            return first, second, attributes["Attributes"]

    first, second, attributes = asyncio.run(scenario())
    assert first == second
    assert set(first) == {"clicks", "clicks-dlq", "conversions", "conversions-dlq"}
    assert first["clicks-dlq"].endswith("/clicks-dlq")
    assert '"maxReceiveCount": 4' in attributes["RedrivePolicy"].replace('"4"', "4")
    assert "clicks-dlq" in attributes["RedrivePolicy"]


def test_send_batches_respects_sqs_limits(adclick_env: dict[str, str], sqs_server: SqsServer) -> None:
    settings = settings_for()
    big = bodies("big", 12, size=60_000)

    async def scenario() -> Any:
        async with create_client(settings) as client:
            url = (await ensure_queues(client, settings))["clicks"]
            return url, await send_batches(client, url, big)

    url, outcome = asyncio.run(scenario())
    assert outcome.requests == 3  # 4 x 60 kB fit in 256 KiB, 5 do not
    assert sorted(outcome.sent) == sorted(big)
    assert sorted(sqs_server.drain(url)) == sorted(big)


def test_one_oversize_body_is_refused_and_the_others_arrive(
    adclick_env: dict[str, str], sqs_server: SqsServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for()
    good = bodies("good", 4)
    oversize = "oversize:" + "x" * 300_000

    async def scenario() -> Any:
        async with create_client(settings) as client:
            url = (await ensure_queues(client, settings))["clicks"]
            # A generous batch limit puts the bad body in the same SendMessageBatch as the good ones.
            return url, await send_bodies(client, url, [*good[:2], oversize, *good[2:]], max_total_bytes=1 << 20)

    with caplog.at_level(logging.ERROR, logger="adclick.core.sqs"):
        url, failed = asyncio.run(scenario())
    assert failed == [oversize]
    assert sorted(sqs_server.drain(url)) == sorted(good)
    assert any("refused" in record.getMessage() for record in caplog.records)
