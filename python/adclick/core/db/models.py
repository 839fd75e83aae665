"""SQLAlchemy models of every table, shared by the worker (writes events) and the manager (CRUD, reports).

Conventions: money is `Money` (exact Decimal, never float); timestamps are `UtcDateTime` (aware, UTC);
event tables (clicks, conversions, rollups, rejections) carry ids without foreign keys, because an event
may name a link that only exists in Redis yet, and because those tables take the write load.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    CHAR,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .types import BigIntegerPK, JSONDocument, Money, UtcDateTime, utc_now

# Named constraints, so migrations (and SQLite's batch mode) can refer to them by a stable name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

LINK_ID_LIMIT = 1 << 40  # a ClickID carries the link id in 40 bits

STATUSES = ("active", "paused", "archived")
LINK_STATUSES = ("active", "paused")
MODELS = ("cpa", "revshare")
POSTBACK_STATUSES = ("pending", "approved", "rejected")
CONVERSION_STATUSES = ("pending", "approved", "rejected", "capped")
# A cap row's scope: the offer's daily cap, an affiliate's daily cap on it, the offer's monthly and lifetime caps.
CAP_SCOPES = ("offer", "affiliate_offer", "offer_month", "offer_total")
BOT_CONVERSIONS = ("reject", "accept")  # what a conversion on a bot click becomes
ROLES = ("admin", "manager", "affiliate")


def _one_of(column: str, values: tuple[str, ...], name: str) -> CheckConstraint:
    listed = ", ".join(f"'{value}'" for value in values)
    return CheckConstraint(f"{column} IN ({listed})", name=name)


class Base(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Advertiser(Base):
    """Who pays for conversions. `token_version` is the postback secret: bumping it revokes old tokens."""

    __tablename__ = "advertisers"
    __table_args__ = (_one_of("status", STATUSES, "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    token_version: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    # Addresses and networks (CIDR, comma or space separated) its server-to-server postbacks may come from; NULL:
    # anywhere. Published to Redis with the token version (adclick:advertiser:{id}) and checked again by the worker.
    postback_ips: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)


class Affiliate(Base):
    """Who sends traffic and earns payouts."""

    __tablename__ = "affiliates"
    __table_args__ = (_one_of("status", STATUSES, "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    # Its own server's postback (adclick.core.affiliate_postbacks): the URL template, which changes fire it
    # ('approved' by default; 'pending', 'reversal'), and the secret that signs each request (none: unsigned).
    postback_url: Mapped[str | None] = mapped_column(String(2048))
    postback_triggers: Mapped[str | None] = mapped_column(String(64))
    postback_secret: Mapped[str | None] = mapped_column(String(128))


class Offer(Base):
    """What an advertiser pays (revenue) and what affiliates earn (payout) per conversion.

    `*_amount` is money in `currency` for 'cpa', a percentage of the sale amount for 'revshare'.
    """

    __tablename__ = "offers"
    __table_args__ = (
        _one_of("status", STATUSES, "status"),
        _one_of("revenue_model", MODELS, "revenue_model"),
        _one_of("payout_model", MODELS, "payout_model"),
        _one_of("default_status", POSTBACK_STATUSES, "default_status"),
        CheckConstraint("attribution_window_hours > 0", name="attribution_window_hours"),
        CheckConstraint("daily_cap IS NULL OR daily_cap >= 0", name="daily_cap"),
        CheckConstraint("monthly_cap IS NULL OR monthly_cap >= 0", name="monthly_cap"),
        CheckConstraint("lifetime_cap IS NULL OR lifetime_cap >= 0", name="lifetime_cap"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    advertiser_id: Mapped[int] = mapped_column(ForeignKey("advertisers.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    currency: Mapped[str] = mapped_column(CHAR(3), default="USD", server_default="USD")
    revenue_model: Mapped[str] = mapped_column(String(16), default="cpa", server_default="cpa")
    revenue_amount: Mapped[Decimal] = mapped_column(Money, default=Decimal(0), server_default=text("0"))
    payout_model: Mapped[str] = mapped_column(String(16), default="cpa", server_default="cpa")
    payout_amount: Mapped[Decimal] = mapped_column(Money, default=Decimal(0), server_default=text("0"))
    attribution_window_hours: Mapped[int] = mapped_column(Integer, default=720, server_default=text("720"))
    default_status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    daily_cap: Mapped[int | None] = mapped_column(Integer)  # conversions per day (cap_timezone); NULL: no cap
    monthly_cap: Mapped[int | None] = mapped_column(Integer)  # per calendar month in cap_timezone
    lifetime_cap: Mapped[int | None] = mapped_column(Integer)  # ever
    # The IANA time zone whose midnight (and first of the month) resets the caps: the advertiser's day.
    cap_timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    # Where a capped offer's clicks go until its caps reset: a URL template, e.g. another offer's tracking link.
    cap_fallback_url: Mapped[str | None] = mapped_column(Text)
    # Set by whoever fills or frees a cap (adclick.core.capping): the offer-wide caps are full until then.
    capped_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The URL template of links that have none of their own; they follow it when it changes.
    destination_template: Mapped[str | None] = mapped_column(Text)
    # The browser pixel (/pixel.gif, no token): off unless enabled here. Its conversions always take
    # `pixel_status`, one per click; a sale amount counts only for revshare terms, up to `pixel_max_amount`;
    # `pixel_domains` (comma or space separated), when set, must hold the page's Origin or Referer host.
    pixel_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    pixel_status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    pixel_max_amount: Mapped[Decimal | None] = mapped_column(Money)
    pixel_domains: Mapped[str | None] = mapped_column(Text)
    # 'reject': a conversion on a bot click is stored `rejected` with reason 'bot'; 'accept': as any other.
    bot_conversions: Mapped[str] = mapped_column(String(16), default="reject", server_default="reject")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)


class OfferAffiliateOverride(Base):
    """Per-affiliate terms on an offer; a NULL column falls back to the offer's value."""

    __tablename__ = "offer_affiliate_overrides"
    __table_args__ = (
        _one_of("payout_model", MODELS, "payout_model"),
        CheckConstraint("daily_cap IS NULL OR daily_cap >= 0", name="daily_cap"),
    )

    offer_id: Mapped[int] = mapped_column(ForeignKey("offers.id", ondelete="CASCADE"), primary_key=True)
    affiliate_id: Mapped[int] = mapped_column(ForeignKey("affiliates.id", ondelete="CASCADE"), primary_key=True)
    payout_model: Mapped[str | None] = mapped_column(String(16))
    payout_amount: Mapped[Decimal | None] = mapped_column(Money)
    daily_cap: Mapped[int | None] = mapped_column(Integer)
    # The affiliate's daily cap on the offer is full until then (adclick.core.capping).
    capped_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    postback_url: Mapped[str | None] = mapped_column(String(2048))  # this offer's, instead of the affiliate's


class Link(Base):
    """A tracking link `/c/{slug}`; `config` holds the rest of the Redis link config (rules, rotation, ...).

    `template` NULL: the link follows its offer's `destination_template`.
    """

    __tablename__ = "links"
    __table_args__ = (
        _one_of("status", LINK_STATUSES, "status"),
        CheckConstraint(f"id > 0 AND id < {LINK_ID_LIMIT}", name="id_40_bits"),
        # A ClickID seals the link id: SQLite must never hand a deleted link's id out again.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntegerPK, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    offer_id: Mapped[int] = mapped_column(ForeignKey("offers.id"), index=True)
    affiliate_id: Mapped[int] = mapped_column(ForeignKey("affiliates.id"), index=True)
    template: Mapped[str | None] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now, onupdate=utc_now)


class Click(Base):
    """One click, keyed by its ClickID (time-ordered text, so the primary key index is also a time index)."""

    __tablename__ = "clicks"
    __table_args__ = (
        Index("ix_clicks_link_id_ts", "link_id", "ts"),
        # Clicks arrive in time order, so a BRIN index on ts is tiny and fast for time ranges (PostgreSQL only).
        Index("ix_clicks_ts_brin", "ts", postgresql_using="brin", info={"dialects": ("postgresql",)}).ddl_if(
            dialect="postgresql"
        ),
    )

    click_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    ts: Mapped[datetime] = mapped_column(UtcDateTime)
    link_id: Mapped[int] = mapped_column(BigInteger)
    offer_id: Mapped[int | None] = mapped_column(Integer)
    affiliate_id: Mapped[int | None] = mapped_column(Integer)
    ip: Mapped[str | None] = mapped_column(String(45))
    ua: Mapped[str | None] = mapped_column(Text)
    referer: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(CHAR(2))
    device: Mapped[str | None] = mapped_column(String(32))
    os: Mapped[str | None] = mapped_column(String(32))
    bot: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    blocked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))  # IP blocklist
    unique: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    sub1: Mapped[str | None] = mapped_column(Text)
    sub2: Mapped[str | None] = mapped_column(Text)
    sub3: Mapped[str | None] = mapped_column(Text)
    sub4: Mapped[str | None] = mapped_column(Text)
    sub5: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    dest: Mapped[int | None] = mapped_column(SmallInteger)
    fallback: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    capped: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))  # sent to cap fallback


class Conversion(Base):
    """One conversion per (offer, txid); a later postback for the same txid may change its status."""

    __tablename__ = "conversions"
    __table_args__ = (
        UniqueConstraint("offer_id", "txid"),
        Index("ix_conversions_created_at", "created_at"),
        _one_of("status", CONVERSION_STATUSES, "status"),
    )

    id: Mapped[int] = mapped_column(BigIntegerPK, primary_key=True)
    offer_id: Mapped[int] = mapped_column(Integer)
    txid: Mapped[str] = mapped_column(String(255))
    click_id: Mapped[str] = mapped_column(String(40), index=True)
    link_id: Mapped[int] = mapped_column(BigInteger, index=True)
    affiliate_id: Mapped[int | None] = mapped_column(Integer, index=True)
    advertiser_id: Mapped[int | None] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(64), default="conversion", server_default="conversion")
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32))  # why the system stored it rejected: 'bot', 'blocked'
    amount: Mapped[Decimal | None] = mapped_column(Money)  # the sale amount from the postback
    currency: Mapped[str] = mapped_column(CHAR(3))
    revenue: Mapped[Decimal] = mapped_column(Money, default=Decimal(0), server_default=text("0"))
    payout: Mapped[Decimal] = mapped_column(Money, default=Decimal(0), server_default=text("0"))
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now, onupdate=utc_now)


class ConversionRejection(Base):
    """A postback that did not make (or change) a conversion: reason 'forged', 'expired', 'duplicate', ...

    `fingerprint` (e.g. SHA-256 of the queue message body) makes recording idempotent: a redelivered
    message inserts nothing new. NULL fingerprints never collide.
    """

    __tablename__ = "conversion_rejections"

    id: Mapped[int] = mapped_column(BigIntegerPK, primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), index=True)
    fingerprint: Mapped[str | None] = mapped_column(String(64), unique=True)
    offer_id: Mapped[int | None] = mapped_column(Integer)
    txid: Mapped[str | None] = mapped_column(String(255))
    click_id: Mapped[str | None] = mapped_column(String(255))
    conversion_id: Mapped[int | None] = mapped_column(BigInteger)  # the existing conversion, for 'duplicate'
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)


class DailyCap(Base):
    """Conversions taken per cap and period; `upsert.take_cap` claims a slot atomically.

    `day` is the period's first day in the offer's cap time zone: the day itself for the daily caps, the first of
    the month for 'offer_month', 1970-01-01 for 'offer_total' (lifetime).
    """

    __tablename__ = "daily_caps"
    __table_args__ = (_one_of("scope", CAP_SCOPES, "scope"),)

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    offer_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    affiliate_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0 for scope 'offer'
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    used: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class RollupCounters:
    """The counters every rollup table carries (a mixin: each table gets its own columns).

    `clicks` counts clicks that can earn: bot and blocked clicks are only in `bot_clicks` and `blocked_clicks`, and
    clicks a full cap sent to the offer's cap fallback only in `capped_clicks`.
    """

    clicks: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    unique_clicks: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    bot_clicks: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    blocked_clicks: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    capped_clicks: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    conversions: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    revenue: Mapped[Decimal] = mapped_column(Money, default=Decimal(0), server_default=text("0"))
    payout: Mapped[Decimal] = mapped_column(Money, default=Decimal(0), server_default=text("0"))


# The counters of RollupCounters, named once for every writer and reader of rollups: the counts, then the money.
ROLLUP_COUNTS = ("clicks", "unique_clicks", "bot_clicks", "blocked_clicks", "capped_clicks", "conversions")
ROLLUP_MONEY = ("revenue", "payout")
ROLLUP_METRICS = ROLLUP_COUNTS + ROLLUP_MONEY


class HourlyRollup(RollupCounters, Base):
    """Counters by hour x link x country x device, incremented in the transaction that stores the events.

    `offer_id` and `affiliate_id` are those of the row's first event. adclick.core.counting writes this table and
    its two smaller projections below; reports read the smallest one that holds what they ask for.
    """

    __tablename__ = "hourly_rollups"
    __table_args__ = (
        Index("ix_hourly_rollups_offer_id_hour", "offer_id", "hour"),
        Index("ix_hourly_rollups_affiliate_id_hour", "affiliate_id", "hour"),
    )

    hour: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    link_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    country: Mapped[str] = mapped_column(CHAR(2), primary_key=True, default="", server_default="")
    device: Mapped[str] = mapped_column(String(32), primary_key=True, default="", server_default="")
    offer_id: Mapped[int | None] = mapped_column(Integer)
    affiliate_id: Mapped[int | None] = mapped_column(Integer)


class HourlyLinkRollup(RollupCounters, Base):
    """`hourly_rollups` summed over country and device: hour x link, keyed by the rows' offer and affiliate too.

    Offer and affiliate are in the key (0 for a NULL in `hourly_rollups`), so a link whose rows name different
    offers sums exactly as `hourly_rollups` does.
    """

    __tablename__ = "hourly_link_rollups"
    __table_args__ = (
        Index("ix_hourly_link_rollups_offer_id_hour", "offer_id", "hour"),
        Index("ix_hourly_link_rollups_affiliate_id_hour", "affiliate_id", "hour"),
    )

    hour: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    link_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    offer_id: Mapped[int] = mapped_column(Integer, primary_key=True, default=0, server_default=text("0"))
    affiliate_id: Mapped[int] = mapped_column(Integer, primary_key=True, default=0, server_default=text("0"))


class HourlyCountryDeviceRollup(RollupCounters, Base):
    """`hourly_rollups` summed over links (and so offers and affiliates): hour x country x device."""

    __tablename__ = "hourly_country_device_rollups"

    hour: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    country: Mapped[str] = mapped_column(CHAR(2), primary_key=True, default="", server_default="")
    device: Mapped[str] = mapped_column(String(32), primary_key=True, default="", server_default="")


class HourlySubRollup(RollupCounters, Base):
    """Counters by hour x link x country x sub key (1-5) x sub value: the sub-id reports (adclick.core.subs).

    A click adds one row per sub key ('' for a sub it did not carry). Per link, UTC day and key only the first
    `ADCLICK_SUB_VALUES_PER_LINK_DAY` distinct values get rows of their own (`sub_values` admits them); later ones,
    and values longer than `subs.MAX_VALUE`, count under `other` (their value ''), and are found in the click log.
    """

    __tablename__ = "hourly_sub_rollups"
    __table_args__ = (
        CheckConstraint("sub_key BETWEEN 1 AND 5", name="sub_key"),
        Index("ix_hourly_sub_rollups_sub_key_hour", "sub_key", "hour"),
        Index("ix_hourly_sub_rollups_offer_id_hour", "offer_id", "hour"),
        Index("ix_hourly_sub_rollups_affiliate_id_hour", "affiliate_id", "hour"),
    )

    hour: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    link_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    country: Mapped[str] = mapped_column(CHAR(2), primary_key=True, default="", server_default="")
    sub_key: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    other: Mapped[bool] = mapped_column(Boolean, primary_key=True, default=False, server_default=text("false"))
    sub_value: Mapped[str] = mapped_column(String(200), primary_key=True, default="", server_default="")
    offer_id: Mapped[int | None] = mapped_column(Integer)
    affiliate_id: Mapped[int | None] = mapped_column(Integer)


class SubValue(Base):
    """The sub values admitted to `hourly_sub_rollups` as rows of their own, per UTC day, link and sub key."""

    __tablename__ = "sub_values"
    __table_args__ = (CheckConstraint("sub_key BETWEEN 1 AND 5", name="sub_key"),)

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    link_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sub_key: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    sub_value: Mapped[str] = mapped_column(String(200), primary_key=True)


class BlockedNetwork(Base):
    """An address or network (CIDR) whose clicks trackers refuse; published to Redis as `adclick:ipblock`."""

    __tablename__ = "ip_blocklist"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cidr: Mapped[str] = mapped_column(String(64), unique=True)
    note: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)


class FailedJob(Base):
    """A queue message that could not be processed, kept for the manager to show and retry."""

    __tablename__ = "failed_jobs"
    __table_args__ = (UniqueConstraint("queue", "message_id"),)

    id: Mapped[int] = mapped_column(BigIntegerPK, primary_key=True)
    queue: Mapped[str] = mapped_column(String(80))
    message_id: Mapped[str] = mapped_column(String(128))
    body: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)
    receive_count: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    retried_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class User(Base):
    """A person who signs in to the manager; role 'affiliate' users see only their `affiliate_id`."""

    __tablename__ = "users"
    __table_args__ = (_one_of("role", ROLES, "role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    affiliate_id: Mapped[int | None] = mapped_column(ForeignKey("affiliates.id"))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)


class ApiToken(Base):
    """An API token; only its hash is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class ConversionAudit(Base):
    """Who changed a conversion, when, and from what to what (manager edits; `user_id` NULL for the system)."""

    __tablename__ = "conversion_audit"

    id: Mapped[int] = mapped_column(BigIntegerPK, primary_key=True)
    conversion_id: Mapped[int] = mapped_column(ForeignKey("conversions.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)


DELIVERY_STATES = ("pending", "delivered", "failed")
DELIVERY_KINDS = ("conversion", "redelivery", "test")


class PostbackDelivery(Base):
    """A postback to an affiliate's server: the outbox row written with the conversion change it reports.

    The worker sends it (retrying with backoff for a bounded time); `key` makes the row once per change, whatever
    redelivers the message that made it. The values are the change's; the URL is rendered when sent (the click's
    subs and parameters are read then) and kept as sent.
    """

    __tablename__ = "postback_deliveries"
    __table_args__ = (
        Index("ix_postback_deliveries_due", "state", "next_attempt_at"),
        _one_of("state", DELIVERY_STATES, "state"),
        _one_of("kind", DELIVERY_KINDS, "kind"),
    )

    id: Mapped[int] = mapped_column(BigIntegerPK, primary_key=True)
    key: Mapped[str] = mapped_column(String(120), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="conversion", server_default="conversion")
    conversion_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    affiliate_id: Mapped[int] = mapped_column(Integer, index=True)
    trigger: Mapped[str] = mapped_column(String(16))  # 'pending', 'approved', 'reversal' (or 'test')
    template: Mapped[str] = mapped_column(String(2048))
    click_id: Mapped[str | None] = mapped_column(String(40))
    values: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    url: Mapped[str | None] = mapped_column(Text)  # as last sent
    state: Mapped[str] = mapped_column(String(12), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)  # the HTTP status of the last answer
    last_error: Mapped[str | None] = mapped_column(String(500))
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
