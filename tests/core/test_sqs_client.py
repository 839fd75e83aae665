"""`adclick.core.sqs.create_client` over real HTTP: the User-Agent is ours and fixed, not rebuilt per request."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import ClassVar

import pytest
from adclick.core.settings import TrackerSettings
from adclick.core.sqs import USER_AGENT, create_client
from support.servers import DUMMY_AWS_ENV
from support.stubs import StubHandler, StubServer


class Recorder(StubHandler):
    """Answers every SQS JSON-protocol call with a queue URL and remembers the User-Agent of each request."""

    agents: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Recorder.agents.append(self.headers.get("User-Agent", ""))
        body = json.dumps({"QueueUrl": "http://127.0.0.1/000000000000/clicks"}).encode()
        self.reply(body, "application/x-amz-json-1.0")


@pytest.fixture
def endpoint() -> Iterator[str]:
    Recorder.agents = []
    with contextlib.closing(StubServer(Recorder)) as server:
        yield server.base


def test_every_request_carries_adclicks_fixed_user_agent(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    settings = TrackerSettings(sqs_endpoint_url=endpoint, aws_region="us-east-1")

    async def calls() -> None:
        async with create_client(settings) as client:
            for _ in range(3):
                assert (await client.get_queue_url(QueueName="clicks"))["QueueUrl"].endswith("/clicks")

    asyncio.run(calls())
    assert len(Recorder.agents) == 3
    # botocore's own string starts with "Botocore/" or "aiobotocore/" and lists "ua/2.1" and feature ids,
    # rebuilt for every request; ours is set once on the client and sent as is.
    (sent,) = set(Recorder.agents)
    assert sent.startswith(USER_AGENT + " ") or sent == USER_AGENT
    assert sent.startswith("adclick/") and "ua/2.1" not in sent
