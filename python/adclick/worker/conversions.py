"""Conversions into the database: ClickID check, attribution, commissions, daily caps, status changes, rollups.

Rules (each message is one postback, see docs/contracts.md):
- The ClickID's signature is checked again; a forged one is a rejection (`forged`), never retried.
- The link id inside the ClickID attributes the conversion (link -> offer, affiliate): the click row is not
  needed, so a conversion may arrive before its click. A link the database does not know (yet) is a failure:
  the message stays queued, is retried, and ends in the dead-letter queue if the link never appears.
- A new conversion rolls up under its click's country and device when the click is stored by then, else under
  '' and '' for good; the choice is recorded in its params, so status changes move the same rollup rows
  (adclick.core.counting.Place).
- The postback's advertiser must own the offer (`advertiser_mismatch`), and a server-to-server postback must come
  from the advertiser's `postback_ips` when it has a list (`ip_not_allowed`): both are checked before a txid is
  looked up, so nobody else can change a stored conversion either. A new conversion must come within the offer's
  attribution window of the click (`expired`).
- A pixel (source `pixel`, no token) counts only where its offer enables it (`pixel_disabled`) and, when the offer
  lists pixel domains, from a page on one of them (`pixel_origin`). It never sets or changes a status: its
  conversion takes the offer's `pixel_status`, and its idempotency key is `pixel:{ClickID}`, so a click has at most
  one pixel conversion (the advertiser's txid stays in params). Its amount counts only where the offer's revenue or
  payout is revshare, and never above `pixel_max_amount` (`amount_over_max`).
- The ClickID's flags (sealed by the tracker): a conversion on a click from a blocked address is stored
  `rejected` with reason `blocked`; on a bot click, `rejected` with reason `bot` unless the offer accepts them.
- A postback may change a status only along STATUS_CHANGES (pending -> approved or rejected, approved -> rejected):
  never back from `rejected`, which takes staff in the manager (`status_locked`).
- One conversion per (offer, txid). A redelivered message changes nothing. Another postback for the same txid
  is a `duplicate` rejection, unless it carries a different status and is newer than the last one applied:
  then it changes the conversion's status (approval, chargeback), adjusts caps and rollups, and is audited.
- Revenue and payout by the rules, most specific first (per-affiliate override, then the offer).
- Status from the postback, else the offer's default. What counts, in the rollups and the daily caps, is the
  rule of adclick.core.counting, shared with the manager's edits. Over a cap the conversion is stored `capped`
  with revenue and payout 0, and a status change that would count again over a full cap makes it `capped` too.
- `created_at` is when the postback was received (not when the worker got to it) and `updated_at` when the
  postback that last changed the row was received: that is how a redelivery is told from a new postback.
- Links and offer terms are cached for `TERMS_TTL_SECONDS`: a changed payout applies within that delay.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import redis
from sqlalchemy import Table, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adclick import _native
from adclick.core import capping, subs
from adclick.core.counting import (
    CLICK_MISSING,
    NOWHERE,
    Cap,
    Place,
    Standing,
    add_to_rollups,
    caps_of,
    hour_of,
    move_caps,
    rollup_change,
    sub_rollup_change,
)
from adclick.core.db.models import (
    Advertiser,
    Click,
    Conversion,
    ConversionAudit,
    ConversionRejection,
    Link,
    Offer,
    OfferAffiliateOverride,
)
from adclick.core.db.upsert import insert_ignore
from adclick.core.networks import Network, NetworkListError, contains, parse_networks
from adclick.core.outbox import change_of, enqueue
from adclick.worker.batches import Applied, BatchHandler, Failure, Received, RetryBatch
from adclick.worker.commissions import CommissionError, Rule, choose_rule, commission, parse_amount
from adclick.worker.health import WorkerMetrics
from adclick.worker.messages import ConversionEvent, decode_conversion

log = logging.getLogger(__name__)

# Links, offers and overrides are read once per this many seconds per link, not once per batch: a change to an
# offer's terms reaches conversions within this delay. A link unknown to the database is never cached.
TERMS_TTL_SECONDS = 10.0
TERMS_CACHE_MAX = 100_000
_ZERO = Decimal(0)
# What a postback may do to a stored conversion's status; anything else takes staff (the manager's edit).
STATUS_CHANGES = frozenset({("pending", "approved"), ("pending", "rejected"), ("approved", "rejected")})
PIXEL_TXID_PREFIX = "pixel:"


class ConcurrentConversion(RetryBatch):
    """Another worker stored the same (offer, txid) while this batch ran: retry the batch, it will see it."""


def fingerprint(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def pixel_key(event: ConversionEvent) -> None:
    """Key a pixel by its click, whatever txid it brings: one pixel conversion per click, never a status."""
    if event.txid.startswith(PIXEL_TXID_PREFIX):
        return
    if event.txid != event.click_id:
        event.params = {**(event.params or {}), "txid": event.txid}
    event.txid = PIXEL_TXID_PREFIX + event.click_id
    event.status = None


def pixel_domains(text: str | None) -> tuple[str, ...]:
    """An offer's pixel domains, lower case, without a leading dot."""
    return tuple(part.lower().lstrip(".") for part in re.split(r"[\s,]+", text or "") if part.strip(". "))


def host_in(host: str | None, domains: tuple[str, ...]) -> bool:
    """Whether `host` is one of `domains` or under one of them (shop.example is under example)."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    return any(host == domain or host.endswith("." + domain) for domain in domains)


@dataclass(slots=True)
class Terms:
    """What a conversion on this link earns: the offer and, if any, the affiliate's override."""

    link_id: int
    offer: Offer
    affiliate_id: int
    override: OfferAffiliateOverride | None
    postback_ips: tuple[Network, ...] | None = None  # the advertiser's allowlist for server-to-server postbacks
    pixel_domains: tuple[str, ...] = ()

    def needs_amount(self) -> bool:
        """Whether a sale amount changes what this conversion earns (a revshare revenue or payout)."""
        return self.revenue_rule().model == "revshare" or self.payout_rule().model == "revshare"

    def revenue_rule(self) -> Rule:
        return Rule(self.offer.revenue_model, self.offer.revenue_amount)  # type: ignore[arg-type]

    def payout_rule(self) -> Rule:
        override = self.override
        if override is not None and (override.payout_model is not None or override.payout_amount is not None):
            # A NULL column of the override falls back to the offer's.
            model = override.payout_model or self.offer.payout_model
            amount = override.payout_amount if override.payout_amount is not None else self.offer.payout_amount
            specific: Rule | None = Rule(model, amount)  # type: ignore[arg-type]
        else:
            specific = None
        rule = choose_rule(specific, Rule(self.offer.payout_model, self.offer.payout_amount))  # type: ignore[arg-type]
        assert rule is not None
        return rule

    def caps(self) -> list[Cap]:
        return caps_of(self.offer, self.override, self.affiliate_id)


@dataclass(slots=True)
class Stored:
    """The columns of a stored conversion that a later postback for its txid needs."""

    id: int | None  # None: inserted at the end of this batch
    offer_id: int
    txid: str
    link_id: int
    affiliate_id: int | None
    status: str
    revenue: Decimal
    payout: Decimal
    created_at: datetime
    updated_at: datetime
    place: Place = NOWHERE  # where it rolls up (adclick.core.counting.Place)
    click_id: str = ""
    event: str = "conversion"
    currency: str = ""


_CONVERSIONS = cast(Table, Conversion.__table__)
_STORED_COLUMNS = [_CONVERSIONS.c[name] for name in Stored.__dataclass_fields__ if name != "place"]


@dataclass(slots=True)
class Item:
    message: Received
    event: ConversionEvent
    click_ts_ms: int
    link_id: int
    flags: int = 0  # the ClickID's: _native.FLAG_BOT, _native.FLAG_BLOCKED
    terms: Terms | None = None


class ConversionHandler(BatchHandler[ConversionEvent]):
    """The `conversions` queue: one postback per message."""

    kind = "conversions"
    max_messages = 100  # one postback per message: share a transaction's fixed cost among more of them

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        queue: str,
        metrics: WorkerMetrics,
        codec: _native.ClickIdCodec,
        links_redis: redis.Redis | None = None,
    ) -> None:
        super().__init__(sessions, queue, metrics)
        self.codec = codec
        self.terms_cache: dict[int, tuple[float, Terms]] = {}
        # Where the trackers read link configs: a batch that fills or frees a cap republishes its offer's links.
        self.links_redis = links_redis

    def decode(self, body: str) -> ConversionEvent:
        return decode_conversion(body)

    async def apply(self, session: AsyncSession, items: list[tuple[Received, ConversionEvent]]) -> Applied:
        return await _Batch(session, self.codec, self.terms_cache).run(items)

    async def committed(self, applied: Applied) -> None:
        if not applied.capped_offers or self.links_redis is None:
            return
        try:
            async with self.sessions() as session:
                published = await capping.publish(self.links_redis, session, applied.capped_offers)
        except Exception:  # the database holds the cap; the manager's reconciler publishes it
            log.exception("cap state of offers %s stored but not published", sorted(applied.capped_offers))
            return
        if published:
            log.info("caps of offers %s changed: their links republished", sorted(applied.capped_offers))


class _Batch:
    """One transaction's worth of conversions."""

    def __init__(
        self, session: AsyncSession, codec: _native.ClickIdCodec, terms_cache: dict[int, tuple[float, Terms]]
    ) -> None:
        self.session = session
        self.codec = codec
        self.terms_cache = terms_cache
        self.applied = Applied()
        self.rejections: list[dict[str, Any]] = []
        self.rollups: list[dict[str, Any]] = []
        self.sub_rollups: list[dict[str, Any]] = []
        self.known: dict[tuple[int, str], Stored] = {}
        self.new_rows: dict[tuple[int, str], dict[str, Any]] = {}  # inserted in one statement at the end
        self.audits: list[tuple[tuple[int, str], dict[str, Any]]] = []
        self.counts: dict[str, int] = {}
        self.places: dict[str, Place] = {}  # ClickID -> its stored click's country and device
        # (offer, txid), status before (None: new), after, when: what the affiliates' postbacks report
        self.changes: list[tuple[tuple[int, str], str | None, str, datetime]] = []

    def count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def reject(self, item: Item | tuple[Received, ConversionEvent], reason: str, detail: str, **fields: Any) -> None:
        message, event = (item.message, item.event) if isinstance(item, Item) else item
        self.rejections.append(
            {
                "reason": reason,
                "fingerprint": fingerprint(message.body),
                "offer_id": fields.get("offer_id"),
                "txid": event.txid,
                "click_id": event.click_id,
                "conversion_id": fields.get("conversion_id"),
                "_key": fields.get("key"),
                "payload": {
                    "detail": detail[:500],
                    "event": event.event,
                    "amount": event.amount,
                    "currency": event.currency,
                    "status": event.status,
                    "advertiser_id": event.advertiser_id,
                    "received_at": event.received_at_ms,
                    "source": event.source,
                    "message_id": message.message_id,
                },
                "created_at": event.received_at,
            }
        )

    async def run(self, pairs: list[tuple[Received, ConversionEvent]]) -> Applied:
        items: list[Item] = []
        for message, event in pairs:
            try:
                _version, _key_id, click_ts_ms, link_id, flags = self.codec.verify(event.click_id)
            except _native.InvalidClickId as error:
                self.reject((message, event), "forged", str(error))
                continue
            if event.source == "pixel":
                pixel_key(event)
            items.append(Item(message, event, click_ts_ms, link_id, flags))
        await self._load_terms(items)
        attributable = []
        for item in items:
            if item.terms is None:
                missing = f"link {item.link_id} of ClickID {item.event.click_id} is not in the database"
                self.applied.failures.append(Failure(item.message, missing))
            else:
                attributable.append(item)
        # One lock order for every worker: offer, affiliate, txid (then arrival, which decides within a txid).
        attributable.sort(
            key=lambda i: (i.terms.offer.id, i.terms.affiliate_id, i.event.txid, i.event.received_at_ms)  # type: ignore[union-attr]
        )
        await self._load_existing(attributable)
        await self._load_places(attributable)
        for item in attributable:
            await self._one(item)
        await self._insert_new()
        await self._enqueue_postbacks()
        await add_to_rollups(self.session, self.rollups)
        await subs.add_to_sub_rollups(self.session, self.sub_rollups)
        # A conversion that took (or gave back) the last slot of a cap moves the offer's clicks to its cap fallback.
        capped = {item.terms.offer.id for item in attributable if item.terms is not None and item.terms.caps()}
        self.applied.capped_offers = await capping.refresh(self.session, capped)
        for rejection in self.rejections:
            key = rejection.pop("_key")
            if rejection["conversion_id"] is None and key is not None:
                rejection["conversion_id"] = self.known[key].id
        # A redelivered rejected message inserts nothing (same fingerprint): count only what was recorded.
        table = cast(Table, ConversionRejection.__table__)
        for (reason,) in await insert_ignore(self.session, table, self.rejections, returning=[table.c.reason]):
            self.count(f"rejected:{reason}")
        self.applied.processed = dict(self.counts)
        return self.applied

    async def _insert_new(self) -> None:
        """The batch's new conversions in one statement, then the audit rows of their status changes."""
        if self.new_rows:
            table = _CONVERSIONS
            returned = await insert_ignore(
                self.session,
                Conversion,
                list(self.new_rows.values()),
                returning=[table.c.id, table.c.offer_id, table.c.txid],
            )
            if len(returned) < len(self.new_rows):
                raise ConcurrentConversion(f"{len(self.new_rows) - len(returned)} conversions stored meanwhile")
            for conversion_id, offer_id, txid in cast(list[tuple[int, int, str]], returned):
                self.known[(offer_id, txid)].id = conversion_id
        if self.audits:
            rows = [{**values, "conversion_id": self.known[key].id} for key, values in self.audits]
            await self.session.execute(insert(ConversionAudit), rows)

    async def _enqueue_postbacks(self) -> None:
        """The affiliates' postbacks of this batch's changes, in its transaction (adclick.core.outbox)."""
        changes = [change_of(self.known[key], before, after, when) for key, before, after, when in self.changes]
        queued = await enqueue(self.session, changes)
        if queued:
            self.counts["affiliate_postback"] = queued

    async def _load_terms(self, items: Sequence[Item]) -> None:
        """Each item's link -> offer, affiliate and override; from the handler's short-lived cache when it can."""
        now = time.monotonic()
        cache = self.terms_cache
        wanted = sorted({item.link_id for item in items if cache.get(item.link_id, (0.0, None))[0] <= now})
        if wanted:
            for link_id, terms in (await self._query_terms(wanted)).items():
                cache[link_id] = (now + TERMS_TTL_SECONDS, terms)
            if len(cache) > TERMS_CACHE_MAX:
                cache.clear()
        for item in items:
            cached = cache.get(item.link_id)
            item.terms = cached[1] if cached is not None else None

    async def _query_terms(self, link_ids: list[int]) -> dict[int, Terms]:
        links = {
            row.id: row
            for row in (
                await self.session.execute(
                    select(Link.id, Link.offer_id, Link.affiliate_id).where(Link.id.in_(link_ids))
                )
            ).all()
        }
        offer_ids = sorted({row.offer_id for row in links.values()})
        offers = {
            offer.id: offer
            for offer in (await self.session.execute(select(Offer).where(Offer.id.in_(offer_ids)))).scalars()
        }
        pairs = sorted({(row.offer_id, row.affiliate_id) for row in links.values()})
        overrides: dict[tuple[int, int], OfferAffiliateOverride] = {}
        if pairs:
            found = await self.session.execute(
                select(OfferAffiliateOverride).where(
                    tuple_(OfferAffiliateOverride.offer_id, OfferAffiliateOverride.affiliate_id).in_(pairs)
                )
            )
            overrides = {(o.offer_id, o.affiliate_id): o for o in found.scalars()}
        advertiser_ids = sorted({offer.advertiser_id for offer in offers.values()})
        allowlists: dict[int, tuple[Network, ...] | None] = {}
        if advertiser_ids:
            found_ips = await self.session.execute(
                select(Advertiser.id, Advertiser.postback_ips).where(Advertiser.id.in_(advertiser_ids))
            )
            for advertiser_id, text in found_ips.all():
                try:
                    allowlists[advertiser_id] = parse_networks(text)
                except NetworkListError:
                    allowlists[advertiser_id] = ()  # a list that no longer parses lets nothing through
        # Detached copies: the cache outlives this session.
        self.session.expunge_all()
        terms = {}
        for link in links.values():
            offer = offers.get(link.offer_id)
            if offer is None:
                continue
            terms[link.id] = Terms(
                link.id,
                offer,
                link.affiliate_id,
                overrides.get((link.offer_id, link.affiliate_id)),
                postback_ips=allowlists.get(offer.advertiser_id),
                pixel_domains=pixel_domains(offer.pixel_domains),
            )
        return terms

    async def _load_existing(self, items: Sequence[Item]) -> None:
        keys = sorted({(item.terms.offer.id, item.event.txid) for item in items if item.terms is not None})
        if not keys:
            return
        table = _CONVERSIONS
        found = await self.session.execute(
            select(*_STORED_COLUMNS, table.c.params).where(tuple_(table.c.offer_id, table.c.txid).in_(keys))
        )
        for row in found.all():
            values = dict(row._mapping)
            place = Place.of_params(values.pop("params"))
            stored = Stored(**values, place=place)
            self.known[(stored.offer_id, stored.txid)] = stored

    async def _load_places(self, items: Sequence[Item]) -> None:
        """The country and device of the clicks of the batch's new conversions, from the clicks stored so far."""
        wanted = sorted(
            {
                item.event.click_id
                for item in items
                if item.terms is not None and (item.terms.offer.id, item.event.txid) not in self.known
            }
        )
        if not wanted:
            return
        clicks = cast(Table, Click.__table__).c
        found = (
            await self.session.execute(
                select(
                    clicks.click_id,
                    clicks.ts,
                    clicks.link_id,
                    clicks.country,
                    clicks.device,
                    clicks.sub1,
                    clicks.sub2,
                    clicks.sub3,
                    clicks.sub4,
                    clicks.sub5,
                ).where(clicks.click_id.in_(wanted))
            )
        ).all()
        # Where each click counted in the sub-id rollups: its values as they were admitted then.
        slots = await subs.slots_for(
            self.session,
            [
                (hour_of(row.ts).date(), row.link_id, (row.sub1, row.sub2, row.sub3, row.sub4, row.sub5))
                for row in found
            ],
            None,
        )
        self.places = {
            row.click_id: Place.of_click(row.country, row.device, where)
            for row, where in zip(found, slots, strict=True)
        }

    async def _one(self, item: Item) -> None:
        terms = item.terms
        assert terms is not None
        event = item.event
        if not self._allowed(item, terms):
            return
        existing = self.known.get((terms.offer.id, event.txid))
        if existing is not None:
            await self._again(item, existing)
            return
        window_ms = terms.offer.attribution_window_hours * 3_600_000
        if event.received_at_ms - item.click_ts_ms > window_ms:
            hours = (event.received_at_ms - item.click_ts_ms) / 3_600_000
            detail = f"{hours:.1f} h after the click, window {terms.offer.attribution_window_hours} h"
            self.reject(item, "expired", detail, offer_id=terms.offer.id)
            return
        currency = terms.offer.currency
        pixel = event.source == "pixel"
        try:
            if pixel and not terms.needs_amount():
                event.amount = event.currency = None  # a pixel's amount counts only where it changes the money
            amount = parse_amount(event.amount)
            if pixel and amount is not None and amount > (terms.offer.pixel_max_amount or _ZERO):
                limit = terms.offer.pixel_max_amount
                raise CommissionError(
                    "amount_over_max", f"pixel amount {amount} is over the offer's pixel maximum {limit}"
                )
            revenue = commission(terms.revenue_rule(), amount, event.currency, currency)
            payout = commission(terms.payout_rule(), amount, event.currency, currency)
        except CommissionError as error:
            if error.reason == "invalid_rule":
                # The offer's configuration is wrong, not the postback: keep it queued until someone fixes it.
                self.applied.failures.append(Failure(item.message, f"offer {terms.offer.id}: {error}"))
            else:
                self.reject(item, error.reason, str(error), offer_id=terms.offer.id)
            return
        params = dict(event.params or {})
        stored_amount = amount
        if amount is not None and event.currency is not None and event.currency != currency:
            # The row's currency is the offer's (revenue and payout are in it); keep the sale as reported.
            params["sale_amount"], params["sale_currency"], stored_amount = event.amount, event.currency, None
        status = terms.offer.pixel_status if pixel else event.status or terms.offer.default_status
        reason = None
        if item.flags & _native.FLAG_BLOCKED:
            status, reason = "rejected", "blocked"
        elif item.flags & _native.FLAG_BOT and terms.offer.bot_conversions != "accept":
            status, reason = "rejected", "bot"
        when = event.received_at
        place = self.places.get(event.click_id, CLICK_MISSING)
        if await move_caps(self.session, terms.offer.id, when, terms.caps(), None, status) is not None:
            status, revenue, payout = "capped", _ZERO, _ZERO
        row = {
            "offer_id": terms.offer.id,
            "txid": event.txid,
            "click_id": event.click_id,
            "link_id": terms.link_id,
            "affiliate_id": terms.affiliate_id,
            "advertiser_id": terms.offer.advertiser_id,
            "event": event.event,
            "status": status,
            "reason": reason,
            "amount": stored_amount,
            "currency": currency,
            "revenue": revenue,
            "payout": payout,
            "params": place.record(params) or None,
            "created_at": when,
            "updated_at": when,
        }
        self.new_rows[(terms.offer.id, event.txid)] = row
        conversion = Stored(
            id=None,
            offer_id=terms.offer.id,
            txid=event.txid,
            link_id=terms.link_id,
            affiliate_id=terms.affiliate_id,
            status=status,
            revenue=revenue,
            payout=payout,
            created_at=when,
            updated_at=when,
            place=place,
            click_id=event.click_id,
            event=event.event,
            currency=currency,
        )
        self.known[(terms.offer.id, event.txid)] = conversion
        self.changes.append(((terms.offer.id, event.txid), None, status, when))
        self._roll(conversion, None, Standing(status, revenue, payout))
        self.count(reason or ("conversion" if status != "capped" else "capped"))

    def _allowed(self, item: Item, terms: Terms) -> bool:
        """Whether this sender may speak for the offer at all; a refusal is recorded as a rejection."""
        event = item.event
        offer = terms.offer
        if event.advertiser_id is not None and event.advertiser_id != offer.advertiser_id:
            self.reject(item, "advertiser_mismatch", f"offer {offer.id} is not advertiser {event.advertiser_id}'s")
            return False
        if event.source == "pixel":
            if not offer.pixel_enabled:
                self.reject(item, "pixel_disabled", f"offer {offer.id} takes no pixel", offer_id=offer.id)
                return False
            if terms.pixel_domains and not host_in(event.origin, terms.pixel_domains):
                detail = f"page {event.origin or '(none)'} is not on offer {offer.id}'s pixel domains"
                self.reject(item, "pixel_origin", detail, offer_id=offer.id)
                return False
        elif terms.postback_ips is not None and not contains(terms.postback_ips, event.ip):
            detail = f"{event.ip or 'an unknown address'} is not on advertiser {offer.advertiser_id}'s allowlist"
            self.reject(item, "ip_not_allowed", detail, offer_id=offer.id)
            return False
        return True

    def _roll(self, conversion: Stored, before: Standing | None, after: Standing) -> None:
        row = rollup_change(conversion, before, after, place=conversion.place)
        if row is not None:
            self.rollups.append(row)
            self.sub_rollups += sub_rollup_change(row, conversion.place)

    async def _again(self, item: Item, existing: Stored) -> None:
        """A postback for a txid already stored: a redelivery, a duplicate, or a status change."""
        terms = item.terms
        assert terms is not None
        event = item.event
        when = event.received_at
        if when in (existing.created_at, existing.updated_at):
            self.count("redelivered")
            return
        new = event.status
        if new is not None and new != existing.status and existing.status != "capped" and when > existing.updated_at:
            if (existing.status, new) not in STATUS_CHANGES:
                detail = f"a postback cannot change {existing.status} to {new}; staff can, in the manager"
                key = (existing.offer_id, existing.txid)
                self.reject(item, "status_locked", detail, offer_id=terms.offer.id, conversion_id=existing.id, key=key)
                return
        if new is None or new == existing.status or existing.status == "capped" or when < existing.updated_at:
            why = "same status" if new == existing.status or new is None else "older than the last change"
            if existing.status == "capped":
                why = "the conversion was capped"
            key = (existing.offer_id, existing.txid)
            self.reject(
                item,
                "duplicate",
                f"txid seen before ({why})",
                offer_id=terms.offer.id,
                conversion_id=existing.id,
                key=key,
            )
            return
        before = {"status": existing.status, "revenue": str(existing.revenue), "payout": str(existing.payout)}
        standing = Standing(existing.status, existing.revenue, existing.payout)
        revenue, payout = existing.revenue, existing.payout
        if await move_caps(self.session, terms.offer.id, existing.created_at, terms.caps(), existing.status, new):
            new, revenue, payout = "capped", _ZERO, _ZERO
        key = (existing.offer_id, existing.txid)
        if existing.id is None:  # stored by this very batch: change the row before it is inserted
            self.new_rows[key].update(status=new, revenue=revenue, payout=payout, updated_at=when)
        else:
            await self.session.execute(
                update(Conversion)
                .where(Conversion.id == existing.id)
                .values(status=new, revenue=revenue, payout=payout, updated_at=when)
            )
        self.changes.append((key, existing.status, new, when))
        existing.status, existing.revenue, existing.payout, existing.updated_at = new, revenue, payout, when
        self._roll(existing, standing, Standing(new, revenue, payout))
        after = {"status": new, "revenue": str(revenue), "payout": str(payout), "txid": event.txid}
        self.audits.append((key, {"user_id": None, "at": when, "before": before, "after": after}))
        self.count("status_change")
