"""What the postback suites share: valid ClickIDs and tokens, and reading conversion messages off SQS."""

from __future__ import annotations

import json
import time
from typing import Any

from adclick import _native
from adclick.core.tokens import make_token
from adclick.core.wire import advertiser_key
from support.servers import RedisServer, SqsServer

CLICK_SECRET = b"dev-only-click-secret-change-me"
POSTBACK_SECRET = "dev-only-postback-secret-change-me"
CODEC = _native.ClickIdCodec(1, CLICK_SECRET)
QUEUE = "adclick-conversions"


def click_id(link_id: int = 42) -> str:
    """A ClickID the postback role accepts, signed with the default development secret."""
    return CODEC.generate(link_id, int(time.time() * 1000))


def tampered(cid: str) -> str:
    """The same ClickID with one character of its MAC changed."""
    last = "A" if cid[-1] != "A" else "B"
    return cid[:-1] + last


def token(advertiser_id: int = 5, version: int = 1) -> str:
    return make_token(POSTBACK_SECRET, advertiser_id, version)


def publish_advertiser(redis_server: RedisServer, token_version: int, advertiser_id: int = 5, **doc: object) -> None:
    """What the manager publishes of an advertiser for the postback role: its lowest valid token version and,
    as `postback_ips=[...]`, its allowlist."""
    with redis_server.client() as client:
        client.set(advertiser_key(advertiser_id), json.dumps({"token_version": token_version, **doc}))


def conversions(sqs_server: SqsServer, queue_url: str) -> list[dict[str, Any]]:
    """Every conversion message on the queue (deleting them), decoded from `v1:` + JSON."""
    messages = []
    for body in sqs_server.drain(queue_url):
        assert body.startswith("v1:"), body
        messages.append(json.loads(body[3:]))
    return messages
