"""Decode queue messages: packed click events (`c1:`) and conversion postbacks (`v1:`), per docs/contracts.md.

Two levels of failure, handled differently by the consumer:
- `UndecodableMessage`: the body itself is unreadable (wrong prefix, bad base64/zlib/JSON). It is recorded
  and left to SQS: redelivered until `maxReceiveCount`, then moved to the dead-letter queue, because a body
  this worker cannot read may be one a newer worker can (a new format during a rolling deploy).
- A readable click body (the Rust unpacker has checked every event's shape) with an event whose values are
  out of range: the good events are stored, each bad one is recorded in failed jobs on its own, and the
  message is done (retrying it could not fix the bad events).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from adclick import _native
from adclick.core.wire import CLICKS_PREFIX, CONVERSION_PREFIX

ONE_BODY = 1 << 30  # a body limit no test or tool reaches: every event in one message
_CLICK_ID = re.compile(r"[-0-9A-Za-z_]{1,40}")
_SUB_KEYS = ("sub1", "sub2", "sub3", "sub4", "sub5")
MAX_TEXT = 4096  # UA, referer, sub values: longer is junk or an attack, cut rather than fail the click
POSTBACK_STATUSES = frozenset({"pending", "approved", "rejected"})


class UndecodableMessage(ValueError):
    """The message body cannot be read at all."""


class InvalidEvent(ValueError):
    """One event inside a readable message is malformed."""


def _int(value: Any, name: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(f"{name} must be an integer, not {value!r}"[:200])
    return value


def _text(value: Any, name: str, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"{name} must be text, not {type(value).__name__}")
    # PostgreSQL text and jsonb cannot hold NUL: one `%00` in a query string would otherwise poison the whole
    # message, and every click packed with it.
    return (value.replace("\x00", "") if "\x00" in value else value)[:limit]


def _clean_params(params: dict[str, Any]) -> dict[str, Any]:
    if not any("\x00" in key or (isinstance(value, str) and "\x00" in value) for key, value in params.items()):
        return params
    return {
        key.replace("\x00", ""): value.replace("\x00", "") if isinstance(value, str) else value
        for key, value in params.items()
    }


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms_to_datetime(ms: int) -> datetime:
    """Exact (no float on the way): equal milliseconds always give equal datetimes."""
    return _EPOCH + timedelta(milliseconds=ms)


@dataclass(slots=True)
class ClickEvent:
    """One click as the tracker described it."""

    click_id: str
    ts_ms: int
    link_id: int
    offer_id: int | None
    affiliate_id: int | None
    ip: str | None
    ua: str | None
    referer: str | None
    country: str | None
    device: str | None
    os: str | None
    bot: bool
    subs: tuple[str | None, ...]
    params: dict[str, Any] | None
    dest: int | None
    fallback: bool
    blocked: bool = False  # the address was on the IP blocklist (the tracker writes the field only when true)
    capped: bool = False  # a full cap sent it to the offer's cap fallback (written only when true)

    @property
    def ts(self) -> datetime:
        return ms_to_datetime(self.ts_ms)


def parse_click(text: str) -> ClickEvent:
    """One click event (JSON text) into a ClickEvent; raises InvalidEvent."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise InvalidEvent(f"not JSON: {error}") from None
    if not isinstance(data, dict):
        raise InvalidEvent("a click event must be a JSON object")
    click_id = data.get("click_id")
    if not isinstance(click_id, str) or not _CLICK_ID.fullmatch(click_id):
        raise InvalidEvent(f"bad click_id {click_id!r}"[:200])
    ts_ms = _int(data.get("ts"), "ts")
    link_id = _int(data.get("link_id"), "link_id")
    assert ts_ms is not None and link_id is not None
    if not 0 < ts_ms < 1 << 48 or not 0 <= link_id < 1 << 40:
        raise InvalidEvent("ts or link_id out of range")
    country = _text(data.get("country"), "country")
    if country is not None and not re.fullmatch(r"[A-Z]{2}", country):
        country = None
    params = data.get("params")
    if params is not None and not isinstance(params, dict):
        raise InvalidEvent("params must be an object")
    dest = data.get("dest")
    return ClickEvent(
        click_id=click_id,
        ts_ms=ts_ms,
        link_id=link_id,
        offer_id=_int(data.get("offer_id"), "offer_id", optional=True),
        affiliate_id=_int(data.get("aff_id"), "aff_id", optional=True),
        ip=_text(data.get("ip"), "ip", 45),
        ua=_text(data.get("ua"), "ua"),
        referer=_text(data.get("referer"), "referer"),
        country=country,
        device=_text(data.get("device"), "device", 32),
        os=_text(data.get("os"), "os", 32),
        bot=bool(data.get("bot", False)),
        subs=tuple(_text(data.get(key), key) for key in _SUB_KEYS),
        params=_clean_params(params) if params else None,
        dest=dest if isinstance(dest, int) and not isinstance(dest, bool) and 0 <= dest < 32768 else None,
        fallback=bool(data.get("fallback", False)),
        blocked=bool(data.get("blocked", False)),
        capped=bool(data.get("capped", False)),
    )


@dataclass(slots=True)
class ClickBatch:
    """What one packed click message holds: good events and (event text, error) for the bad ones."""

    events: list[ClickEvent] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)


def decode_clicks(body: str) -> ClickBatch:
    """A `c1:` message body into its click events; raises UndecodableMessage if the body is unreadable."""
    if not body.startswith(CLICKS_PREFIX):
        raise UndecodableMessage(f"not a packed click message (prefix {body[:3]!r})")
    try:
        texts = _native.unpack_clicks(body)
    except (_native.AdclickError, ValueError) as error:
        raise UndecodableMessage(f"cannot unpack: {error}") from None
    batch = ClickBatch()
    for text in texts:
        try:
            batch.events.append(parse_click(text))
        except InvalidEvent as error:
            batch.invalid.append((text, str(error)))
    return batch


@dataclass(slots=True)
class ConversionEvent:
    """One postback as the postback role queued it. `amount` stays text: commissions parse it exactly."""

    click_id: str
    txid: str
    event: str
    amount: str | None
    currency: str | None
    status: str | None
    advertiser_id: int | None
    received_at_ms: int
    source: str | None
    params: dict[str, Any] | None
    ip: str | None = None  # the address the postback came from (s2s, lambda), for the advertiser's allowlist
    origin: str | None = None  # a pixel's page host (its Origin, else its Referer), for the offer's pixel domains

    @property
    def received_at(self) -> datetime:
        return ms_to_datetime(self.received_at_ms)


def decode_conversion(body: str) -> ConversionEvent:
    """A `v1:` message body into a ConversionEvent; raises UndecodableMessage.

    Only the shape is checked here; the ClickID's signature, the amount and the currency are the
    conversion processor's business (they end as rejections, not as undecodable messages).
    """
    if not body.startswith(CONVERSION_PREFIX):
        raise UndecodableMessage(f"not a conversion message (prefix {body[:3]!r})")
    try:
        data = json.loads(body[len(CONVERSION_PREFIX) :])
    except ValueError as error:
        raise UndecodableMessage(f"not JSON: {error}") from None
    if not isinstance(data, dict):
        raise UndecodableMessage("a conversion message must be a JSON object")
    try:
        click_id = _text(data.get("click_id"), "click_id", 255)
        if not click_id:
            raise InvalidEvent("click_id missing")
        txid = _text(data.get("txid"), "txid", 255) or click_id
        received_at = _int(data.get("received_at"), "received_at")
        assert received_at is not None
        if not 0 < received_at < 1 << 48:
            raise InvalidEvent("received_at out of range")
        status = data.get("status")
        if status is not None and status not in POSTBACK_STATUSES:
            raise InvalidEvent(f"status must be one of {sorted(POSTBACK_STATUSES)} or null, not {status!r}"[:200])
        amount = data.get("amount")
        if amount is not None and not isinstance(amount, str):
            raise InvalidEvent("amount must be a decimal string or null")
        amount = _text(amount, "amount", 64)
        params = data.get("params")
        if params is not None and not isinstance(params, dict):
            raise InvalidEvent("params must be an object")
        return ConversionEvent(
            click_id=click_id,
            txid=txid,
            event=_text(data.get("event"), "event", 64) or "conversion",
            amount=amount,
            currency=_text(data.get("currency"), "currency", 8),
            status=status,
            advertiser_id=_int(data.get("advertiser_id"), "advertiser_id", optional=True),
            received_at_ms=received_at,
            source=_text(data.get("source"), "source", 16),
            params=_clean_params(params) if params else None,
            ip=_text(data.get("ip"), "ip", 45),
            origin=_text(data.get("origin"), "origin", 253),
        )
    except InvalidEvent as error:
        raise UndecodableMessage(str(error)) from None


def encode_conversion(event: dict[str, Any]) -> str:
    """A conversion message body, as the postback role writes it (used by tests, tools and the bench)."""
    return CONVERSION_PREFIX + json.dumps(event, separators=(",", ":"))


def _as_tracker_writes(event: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in event.items() if key not in ("blocked", "capped") or value}


def pack_clicks(events: list[dict[str, Any]]) -> str:
    """A `c1:` body holding these events, as the tracker packs them (used by tests, tools and the bench).

    As the tracker does, `blocked` and `capped` are written only when true.
    """
    lines = [json.dumps(_as_tracker_writes(event), separators=(",", ":")).encode() for event in events]
    if not lines:
        raise ValueError("a click message holds at least one event")
    (body,) = _native.pack_clicks(lines, ONE_BODY)  # the tracker's own packing
    return body
