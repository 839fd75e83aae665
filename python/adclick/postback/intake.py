"""Postback intake without a web framework: read a request's fields, check them, queue one conversion message.

The HTTP app and the Lambda handler both hand their requests to `Intake`, so both accept and refuse alike.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError, ConnectionClosedError
from prometheus_client import CollectorRegistry, Counter, Histogram
from redis import asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from adclick import _native
from adclick.core.networks import Network, client_ip, contains, parse_network
from adclick.core.settings import PostbackSettings
from adclick.core.sqs import SQSClient, create_client, is_missing_queue, queue_url
from adclick.core.tokens import TokenError, verify_token
from adclick.core.wire import CONVERSION_PREFIX, advertiser_key

log = logging.getLogger("adclick.postback")

# A 1x1 transparent GIF (43 bytes).
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

KNOWN_FIELDS = frozenset({"click_id", "txid", "amount", "currency", "status", "event", "token"})
STATUSES = frozenset({"pending", "approved", "rejected"})
MAX_CLICK_ID_CHARS = 64
MAX_TEXT_CHARS = 128  # txid, event
MAX_FIELDS = 64  # known fields and params together
MAX_PARAM_NAME_CHARS = 64
MAX_PARAM_VALUE_CHARS = 512
MAX_QUERY_CHARS = 8192
MAX_AMOUNT = Decimal(10) ** 12
MAX_AMOUNT_DECIMALS = 6

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_AMOUNT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
_CURRENCY = re.compile(r"[A-Za-z]{3}")


class Rejected(Exception):
    """A request refused before anything was queued: HTTP `status`, a stable `code` (a metric label), a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Incoming:
    """What the intake needs from a request, however it arrived.

    `query` is the raw (percent-encoded) query string; `query_pairs`, when given, replaces it with pairs that
    are already decoded (API Gateway REST events only carry those).
    """

    query: str | bytes = ""
    body: bytes = b""
    content_type: str | None = None
    cookies: Mapping[str, str] = field(default_factory=dict)
    query_pairs: list[tuple[str, str]] | None = None
    peer: str | None = None  # the connection's address (API Gateway: its sourceIp)
    forwarded_for: str | None = None  # X-Forwarded-For, read as the trusted-proxy setting says
    origin: str | None = None  # Origin header (pixels)
    referer: str | None = None  # Referer header (pixels)


@dataclass(frozen=True)
class Reply:
    """An answer for any transport: status, JSON body, extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


# -- parsing --


def _has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def _urlencoded_pairs(raw: str | bytes, what: str) -> list[tuple[str, str]]:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return urllib.parse.parse_qsl(
            text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=MAX_FIELDS
        )
    except ValueError as error:  # UnicodeDecodeError included
        raise Rejected(400, f"malformed_{what}", f"{what} is not valid UTF-8 urlencoded text: {error}") from None


def parse_query(raw: str | bytes) -> list[tuple[str, str]]:
    """Decoded (name, value) pairs of a raw query string, UTF-8 only; Rejected if too long or undecodable."""
    if len(raw) > MAX_QUERY_CHARS:
        raise Rejected(414, "query_too_long", f"query string is longer than {MAX_QUERY_CHARS} characters")
    return _urlencoded_pairs(raw, "query")


class _JsonObject(list[tuple[str, Any]]):
    """A JSON object as its (name, value) pairs, told apart from a JSON array."""


def _json_pairs(body: bytes) -> list[tuple[str, str]]:
    def reject_constant(name: str) -> None:
        raise ValueError(f"{name} is not a number")

    try:
        # Numbers keep their exact text: 49.90 must not become the float 49.9.
        loaded = json.loads(
            body, object_pairs_hook=_JsonObject, parse_float=str, parse_int=str, parse_constant=reject_constant
        )
    except (ValueError, RecursionError) as error:
        raise Rejected(400, "malformed_body", f"body is not valid JSON: {error}") from None
    if not isinstance(loaded, _JsonObject):
        raise Rejected(400, "malformed_body", "JSON body must be an object")
    pairs: list[tuple[str, str]] = []
    for name, value in loaded:
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, str):
            raise Rejected(400, "malformed_body", f"JSON field {name!r} must be a string or a number")
        pairs.append((name, value))
    return pairs


def parse_body(body: bytes, content_type: str | None) -> list[tuple[str, str]]:
    """(name, value) pairs of a form (the default when no type is given) or JSON body; Rejected otherwise."""
    if not body:
        return []
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in ("", "application/x-www-form-urlencoded"):
        return _urlencoded_pairs(body, "body")
    if media_type == "application/json" or media_type.endswith("+json"):
        return _json_pairs(body)
    raise Rejected(415, "unsupported_media_type", "send a query string, a urlencoded form or a JSON object")


def collect_fields(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """Split pairs into the known fields and the passthrough params, refusing anything malformed.

    A known field given twice must carry the same value both times; a repeated param keeps its first value.
    """
    fields: dict[str, str] = {}
    params: dict[str, str] = {}
    count = 0
    for name, value in pairs:
        count += 1
        if count > MAX_FIELDS:
            raise Rejected(400, "too_many_fields", f"more than {MAX_FIELDS} fields")
        if not name or len(name) > MAX_PARAM_NAME_CHARS or _has_control(name):
            raise Rejected(
                400, "malformed_field", f"field names must be 1 to {MAX_PARAM_NAME_CHARS} printable characters"
            )
        if name in KNOWN_FIELDS:
            if name in fields and fields[name] != value:
                raise Rejected(400, "conflicting_field", f"{name} given twice with different values")
            fields[name] = value
            continue
        if len(value) > MAX_PARAM_VALUE_CHARS or _has_control(value):
            raise Rejected(
                400, "malformed_param", f"{name} must be at most {MAX_PARAM_VALUE_CHARS} printable characters"
            )
        params.setdefault(name, value)
    return fields, params


def parse_amount(text: str) -> str | None:
    """The amount as canonical decimal text ("49.90" stays "49.90"), None when empty; Rejected when invalid."""
    if text == "":
        return None
    reason = f"amount must be a decimal number like 49.90, with at most {MAX_AMOUNT_DECIMALS} decimals, below 10^12"
    if len(text) > 40 or _AMOUNT.fullmatch(text) is None:
        raise Rejected(400, "invalid_amount", reason)
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise Rejected(400, "invalid_amount", reason) from None
    if not value.is_finite() or abs(value) >= MAX_AMOUNT:
        raise Rejected(400, "invalid_amount", reason)
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite, so never "n"/"N"/"F"
    if exponent < -MAX_AMOUNT_DECIMALS:
        value = value.normalize()  # 1.5000000 has 1 decimal, not 7
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)
        if exponent < -MAX_AMOUNT_DECIMALS:
            raise Rejected(400, "invalid_amount", reason)
    return format(value, "f")


def _text(fields: Mapping[str, str], name: str, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    value = fields.get(name, "")
    if value == "":
        return None
    if len(value) > max_chars or _has_control(value):
        raise Rejected(400, f"invalid_{name}", f"{name} must be at most {max_chars} printable characters")
    return value


def page_host(origin: str | None, referer: str | None) -> str | None:
    """The host of the page that fired a pixel: its Origin's, else its Referer's (None when neither is usable)."""
    for header in (origin, referer):
        if not header or header == "null" or len(header) > 2048:
            continue
        try:
            host = urllib.parse.urlsplit(header.strip()).hostname
        except ValueError:
            continue
        if host and not _has_control(host):
            return host[:253]
    return None


def build_message(
    fields: Mapping[str, str],
    params: Mapping[str, str],
    codec: _native.ClickIdCodec,
    *,
    source: str,
    advertiser_id: int | None,
    received_at: int | None = None,
    ip: str | None = None,
    origin: str | None = None,
) -> dict[str, Any]:
    """The conversion message of docs/contracts.md for valid fields; Rejected (400) naming the first bad one."""
    click_id = fields.get("click_id", "")
    if not click_id:
        raise Rejected(400, "missing_click_id", "click_id is required")
    if len(click_id) > MAX_CLICK_ID_CHARS:
        raise Rejected(400, "invalid_click_id", "click_id is not a valid ClickID")
    try:
        codec.verify(click_id)
    except _native.InvalidClickId:
        raise Rejected(400, "invalid_click_id", "click_id is not a valid ClickID (format or signature)") from None
    txid = _text(fields, "txid")
    event = _text(fields, "event") or "conversion"
    amount = parse_amount(fields.get("amount", ""))
    currency = fields.get("currency", "") or None
    if currency is not None:
        if _CURRENCY.fullmatch(currency) is None:
            raise Rejected(400, "invalid_currency", "currency must be a 3-letter ISO 4217 code like USD")
        currency = currency.upper()
    status = fields.get("status", "").lower() or None
    if status is not None and status not in STATUSES:
        raise Rejected(400, "invalid_status", "status must be one of pending, approved, rejected")
    message: dict[str, Any] = {
        "v": 1,
        "click_id": click_id,
        # The worker deduplicates on (offer, txid): a retried postback without txid must repeat the same key.
        "txid": txid if txid is not None else click_id,
        "event": event,
        "amount": amount,
        "currency": currency,
        "status": status,
        "advertiser_id": advertiser_id,
        "received_at": received_at if received_at is not None else int(time.time() * 1000),
        "source": source,
        "params": dict(params),
    }
    if ip is not None:
        message["ip"] = ip
    if origin is not None:
        message["origin"] = origin
    return message


def encode_message(message: Mapping[str, Any]) -> str:
    """The SQS body: `v1:` and compact JSON (ASCII, so any text survives SQS's character rules)."""
    return CONVERSION_PREFIX + json.dumps(message, separators=(",", ":"))


# -- the intake --


class PostbackMetrics:
    """Prometheus metrics of one intake, in a registry the caller owns."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.accepted = Counter(
            "adclick_postbacks_accepted", "Conversions queued, by source", ["source"], registry=registry
        )
        self.rejected = Counter(
            "adclick_postbacks_rejected", "Postbacks refused, by source and reason", ["source", "reason"],
            registry=registry,
        )  # fmt: skip
        self.sqs_failures = Counter(
            "adclick_postback_sqs_failures", "Conversion messages SQS did not take", registry=registry
        )
        self.redis_failures = Counter(
            "adclick_postback_redis_failures", "Token version look-ups Redis did not answer", registry=registry
        )
        self.latency = Histogram(
            "adclick_postback_latency_seconds",
            "Time from a parsed request to its answer, by endpoint",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )


class Intake:
    """Checks postbacks and pixels and queues the valid ones; SQS and Redis clients open on first use."""

    def __init__(self, settings: PostbackSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.metrics = PostbackMetrics(self.registry)
        previous = settings.click_previous_secret
        self.codec = _native.ClickIdCodec(
            settings.click_key_id,
            settings.click_secret.get_secret_value().encode(),
            settings.click_previous_key_id if previous is not None else None,
            previous.get_secret_value().encode() if previous is not None else None,
        )
        self._token_secret = settings.postback_secret.get_secret_value().encode()
        self._resources = AsyncExitStack()
        self._sqs_client: SQSClient | None = None
        self._sqs_open_lock = asyncio.Lock()
        self._queue_url: str | None = None
        self._redis_client: aioredis.Redis | None = None
        self._redis_down_until = 0.0

    # -- requests --

    def refused(self, rejection: Rejected, *, source: str) -> Reply:
        """The answer to a refused request, counted and logged (never with its token)."""
        self.metrics.rejected.labels(source, rejection.code).inc()
        log.info("refused a %s postback: %s (%s)", source, rejection.code, rejection.message)
        headers = {"Retry-After": "5"} if rejection.status == 503 else {}
        body = {"status": "rejected", "reason": rejection.code, "detail": rejection.message}
        return Reply(rejection.status, body, headers)

    def _fields(self, incoming: Incoming) -> tuple[dict[str, str], dict[str, str]]:
        if len(incoming.body) > self.settings.postback_max_body_bytes:
            raise Rejected(413, "body_too_large", f"body is larger than {self.settings.postback_max_body_bytes} bytes")
        if incoming.query_pairs is not None:
            if sum(len(k) + len(v) + 2 for k, v in incoming.query_pairs) > MAX_QUERY_CHARS:
                raise Rejected(414, "query_too_long", f"query string is longer than {MAX_QUERY_CHARS} characters")
            query = incoming.query_pairs
        else:
            query = parse_query(incoming.query)
        return collect_fields([*query, *parse_body(incoming.body, incoming.content_type)])

    async def postback(self, incoming: Incoming, *, source: str = "s2s") -> Reply:
        """Check an advertiser's postback and queue it: 200 once SQS holds it, 4xx/503 with nothing queued."""
        started = time.perf_counter()
        try:
            fields, params = self._fields(incoming)
            token = fields.get("token", "")
            if not token:
                raise Rejected(401, "missing_token", "token is required")
            try:
                advertiser_id, version = verify_token(self._token_secret, token)
            except TokenError as error:
                raise Rejected(401, error.code, str(error)) from None
            ip = client_ip(incoming.peer, incoming.forwarded_for, self.settings.postback_trusted_proxies)
            message = build_message(fields, params, self.codec, source=source, advertiser_id=advertiser_id, ip=ip)
            known = await self._advertiser(advertiser_id)
            if known is not None:
                floor, allowlist = known
                if version < floor:
                    raise Rejected(401, "revoked_token", "token was revoked: the advertiser has a newer one")
                if allowlist is not None and not contains(allowlist, ip):
                    raise Rejected(
                        403, "ip_not_allowed", f"{ip or 'this address'} may not send this advertiser's postbacks"
                    )
            await self._send(encode_message(message))
        except Rejected as rejection:
            return self.refused(rejection, source=source)
        finally:
            self.metrics.latency.labels("postback").observe(time.perf_counter() - started)
        self.metrics.accepted.labels(source).inc()
        return Reply(200, {"status": "accepted", "click_id": message["click_id"], "txid": message["txid"]})

    async def pixel(self, incoming: Incoming) -> bool:
        """Queue a browser-side conversion when it is valid; the caller answers with the GIF either way.

        A pixel carries no token: advertiser_id is null and the worker takes the advertiser from the offer, checks
        that the offer takes pixels (and from this page), and gives the conversion the offer's pixel status: a
        pixel's own `status` is dropped here. The ClickID comes from the query, else from the tracker's cookie.
        """
        started = time.perf_counter()
        try:
            fields, params = self._fields(incoming)
            if not fields.get("click_id"):
                cookie = incoming.cookies.get(self.settings.cookie_name, "")
                if cookie:
                    fields["click_id"] = cookie
            fields.pop("token", None)
            fields.pop("status", None)
            origin = page_host(incoming.origin, incoming.referer)
            message = build_message(fields, params, self.codec, source="pixel", advertiser_id=None, origin=origin)
            await self._send(encode_message(message))
        except Rejected as rejection:
            self.refused(rejection, source="pixel")
            return False
        finally:
            self.metrics.latency.labels("pixel").observe(time.perf_counter() - started)
        self.metrics.accepted.labels("pixel").inc()
        return True

    # -- Redis: the token version floor --

    def _redis(self) -> aioredis.Redis:
        if self._redis_client is None:
            timeout = self.settings.postback_redis_timeout_ms / 1000
            self._redis_client = aioredis.Redis.from_url(
                self.settings.redis_url,
                decode_responses=True,
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                # One immediate retry heals a connection Redis closed (or a thawed Lambda's stale one).
                retry=Retry(NoBackoff(), 1),
            )
        return self._redis_client

    async def _advertiser(self, advertiser_id: int) -> tuple[int, tuple[Network, ...] | None] | None:
        """The advertiser's lowest valid token version and postback allowlist, or None when Redis cannot say.

        Without Redis the postback still goes through: the worker checks both against the database.
        """
        if not self.settings.redis_url or time.monotonic() < self._redis_down_until:
            return None
        key = advertiser_key(advertiser_id)
        try:
            raw = await self._redis().get(key)
        except (RedisError, OSError, TimeoutError) as error:
            self.metrics.redis_failures.inc()
            pause = self.settings.postback_redis_retry_after_ms / 1000
            self._redis_down_until = time.monotonic() + pause
            log.warning("Redis did not answer (%s): token versions and allowlists unchecked for %.1f s", error, pause)
            return None
        if raw is None:
            return 1, None
        try:
            doc = json.loads(raw)
            version = doc["token_version"]
            if isinstance(version, bool) or not isinstance(version, int):
                raise TypeError("token_version is not an integer")
            listed = doc.get("postback_ips")
            if listed is not None and not isinstance(listed, list):
                raise TypeError("postback_ips is not a list")
            allowlist = None if listed is None else tuple(parse_network(str(entry)) for entry in listed)
        except (ValueError, KeyError, TypeError) as error:  # NetworkListError included
            log.error("%s holds no valid advertiser document (%s): unchecked", key, error)
            return None
        return version, allowlist

    # -- SQS --

    async def _sqs(self) -> tuple[SQSClient, str]:
        client = self._sqs_client
        if client is None:
            async with self._sqs_open_lock:
                if self._sqs_client is None:
                    timeout = self.settings.postback_sqs_timeout_seconds
                    self._sqs_client = await self._resources.enter_async_context(
                        create_client(self.settings, connect_timeout=timeout, read_timeout=timeout)
                    )
                client = self._sqs_client
        assert client is not None
        if self._queue_url is None:
            self._queue_url = await queue_url(client, self.settings, "conversions")
        return client, self._queue_url

    async def _send(self, body: str) -> None:
        """Put one message on the conversions queue, or raise Rejected(503) having queued nothing we know of."""
        for attempt in (1, 2):
            try:
                client, queue_url = await self._sqs()
                await client.send_message(QueueUrl=queue_url, MessageBody=body)
                return
            except ConnectionClosedError as error:
                # A pooled connection SQS (or a frozen Lambda) dropped: one fresh connection is worth a try.
                if attempt == 1:
                    continue
                failure: Exception = error
            except ClientError as error:
                if is_missing_queue(error):
                    self._queue_url = None
                failure = error
            except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as error:
                failure = error
            self.metrics.sqs_failures.inc()
            log.warning("SQS did not take a conversion message: %s", failure)
            raise Rejected(503, "queue_unavailable", "conversion queue unavailable; nothing was recorded, retry later")

    async def aclose(self) -> None:
        """Close the SQS and Redis clients."""
        if self._redis_client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis_client.aclose()
            self._redis_client = None
        await self._resources.aclose()
        self._sqs_client = None
        self._queue_url = None
