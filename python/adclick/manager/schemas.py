"""What the manager accepts (validated, with clear 422s) and returns, for the JSON API and the forms alike."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from adclick.core.affiliate_postbacks import TRIGGERS, TemplateError, check_template, check_triggers, parse_triggers
from adclick.core.db.models import MODELS, POSTBACK_STATUSES, ROLES, STATUSES
from adclick.core.networks import NetworkListError, canonical, parse_networks

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Status = Literal["active", "paused", "archived"]
LinkStatus = Literal["active", "paused"]
Model = Literal["cpa", "revshare"]
PostbackStatus = Literal["pending", "approved", "rejected"]
Role = Literal["admin", "manager", "affiliate"]
# NUMERIC(18,6): 12 integer digits and 6 decimals; never a float.
Amount = Annotated[Decimal, Field(ge=0, lt=Decimal(10) ** 12, decimal_places=6, allow_inf_nan=False)]
Id = Annotated[int, Field(ge=1, le=2**31 - 1)]
Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=8, max_length=2048)]
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
SLUG_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

assert set(STATUSES) == {"active", "paused", "archived"} and set(MODELS) == {"cpa", "revshare"}
assert set(POSTBACK_STATUSES) == {"pending", "approved", "rejected"} and set(ROLES) == {"admin", "manager", "affiliate"}


def _email(value: str) -> str:
    value = value.strip().lower()
    if len(value) > 320 or not _EMAIL.fullmatch(value):
        raise ValueError("not an email address")
    return value


Email = Annotated[str, AfterValidator(_email)]


def _networks(value: str) -> str:
    """A list of addresses and CIDR networks in canonical form ("" for none); ValueError names a bad entry."""
    try:
        networks = parse_networks(value)
    except NetworkListError as error:
        raise ValueError(str(error)) from None
    return "" if networks is None else canonical(networks)


NetworkList = Annotated[str, StringConstraints(max_length=100_000), AfterValidator(_networks)]

_HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def _domains(value: str) -> str:
    """Host names, lower case, comma separated ("" for none); a page on one of them or under it matches."""
    names = [name.lower().strip(".") for name in re.split(r"[\s,]+", value) if name.strip(".")]
    for name in names:
        if not _HOSTNAME.fullmatch(name):
            raise ValueError(f"{name[:80]!r} is not a host name like shop.example")
    if len(names) > 100:
        raise ValueError("at most 100 domains")
    return ", ".join(dict.fromkeys(names))


DomainList = Annotated[str, StringConstraints(max_length=20_000), AfterValidator(_domains)]


def _postback_template(value: str) -> str:
    """An affiliate postback template, checked as the worker will render it (adclick.core.affiliate_postbacks)."""
    try:
        return check_template(value)
    except TemplateError as error:
        raise ValueError(str(error)) from None


def _triggers(value: list[str]) -> list[str]:
    try:
        return list(check_triggers(value))
    except TemplateError as error:
        raise ValueError(str(error)) from None


# No strip before the check: a template with a CR, LF or space anywhere is refused, not quietly trimmed.
PostbackTemplate = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_postback_template)]
Triggers = Annotated[list[str], Field(max_length=len(TRIGGERS)), AfterValidator(_triggers)]
# What signs an affiliate's postbacks (HMAC-SHA256); printable ASCII so that both sides type it alike.
PostbackSecret = Annotated[str, StringConstraints(min_length=16, max_length=128, pattern=r"^[\x21-\x7e]+$")]
BotConversions = Literal["reject", "accept"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# -- advertisers --


class AdvertiserIn(Strict):
    name: Name
    status: Status = "active"
    postback_ips: NetworkList | None = Field(
        None, description="addresses or CIDR networks its server-to-server postbacks may come from; empty: anywhere"
    )


class AdvertiserPatch(Strict):
    name: Name | None = None
    status: Status | None = None
    postback_ips: NetworkList | None = Field(None, description="an empty list lets postbacks come from anywhere")


class AdvertiserOut(Out):
    id: int
    name: str
    status: str
    token_version: int
    postback_ips: str | None
    created_at: datetime
    postback_token: str
    postback_url: str
    live: bool | None = Field(
        None, description="after a status change: whether its links' new state reached Redis (false: not yet live)"
    )


# -- affiliates --


POSTBACK_URL_HELP = "its server's postback URL template (macros in the path, query or fragment only); null: none"
TRIGGERS_HELP = f"which changes fire it, of {', '.join(TRIGGERS)}; null: approved only (the default)"


class AffiliateIn(Strict):
    name: Name
    email: Email | None = None
    status: Status = "active"
    postback_url: PostbackTemplate | None = Field(None, description=POSTBACK_URL_HELP)
    postback_triggers: Triggers | None = Field(None, description=TRIGGERS_HELP)
    postback_secret: PostbackSecret | None = Field(None, description="signs each postback (X-Adclick-Signature)")


class AffiliatePatch(Strict):
    name: Name | None = None
    email: Email | None = None
    status: Status | None = None
    postback_url: PostbackTemplate | None = Field(None, description="null clears it: no postbacks")
    postback_triggers: Triggers | None = Field(None, description="null: the default (approved only)")
    postback_secret: PostbackSecret | None = Field(None, description="null clears it: postbacks go unsigned")


class AffiliateOut(Out):
    id: int
    name: str
    email: str | None
    status: str
    created_at: datetime
    postback_url: str | None
    postback_triggers: list[str] = Field(description="the changes that fire its postback")
    postback_secret: str | None = Field(description="staff only; masked in listings")

    @field_validator("postback_triggers", mode="before")
    @classmethod
    def _stored_triggers(cls, value: object) -> object:
        """The column's comma list (NULL: the default) as a list."""
        return list(parse_triggers(value)) if value is None or isinstance(value, str) else value

    live: bool | None = Field(
        None, description="after a status change: whether its links' new state reached Redis (false: not yet live)"
    )


class DeliveryOut(Out):
    """A postback to an affiliate's server (an outbox row), secrets masked."""

    id: int = Field(description="also sent as X-Adclick-Delivery, for the receiver to drop a repeat")
    kind: str = Field(description="conversion, redelivery or test")
    trigger: str = Field(description="pending, approved, reversal, or test")
    state: str = Field(description="pending (to be sent or retried), delivered, failed (retries ran out)")
    conversion_id: int | None
    affiliate_id: int
    template: str = Field(description="the template it is rendered from, secrets masked")
    url: str | None = Field(description="as last sent, secrets masked; null before the first attempt")
    last_status: int | None = Field(description="the HTTP status of the last answer; null: none (an error)")
    attempts: int
    last_error: str | None
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None = Field(description="while pending: when it is tried next")
    delivered_at: datetime | None


class AffiliatePostbackOut(BaseModel):
    """An affiliate's postback as the affiliate itself may see it: no secret, the template masked."""

    affiliate_id: int
    postback_url: str | None = Field(description="its template, secrets masked; null: no postbacks")
    postback_triggers: list[str]
    signed: bool = Field(description="whether requests carry X-Adclick-Signature (staff hold the secret)")
    deliveries: list[DeliveryOut] = Field(description="the latest, newest first")


# -- offers --


def _check_rates(model: str | None, amount: Decimal | None, what: str) -> None:
    if model == "revshare" and amount is not None and amount > 100:
        raise ValueError(f"{what}: a revshare amount is a percentage, at most 100")


def _known_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone (e.g. UTC, America/New_York, Europe/Berlin)") from None
    return name


CapCount = Annotated[int, Field(ge=0, le=2**31 - 1)]
TimeZone = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_known_zone)]


class OfferIn(Strict):
    advertiser_id: Id
    name: Name
    status: Status = "active"
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "USD"
    revenue_model: Model = "cpa"
    revenue_amount: Amount = Decimal(0)
    payout_model: Model = "cpa"
    payout_amount: Amount = Decimal(0)
    attribution_window_hours: Annotated[int, Field(ge=1, le=24 * 366)] = 720
    default_status: PostbackStatus = "pending"
    daily_cap: CapCount | None = None
    monthly_cap: CapCount | None = Field(None, description="conversions per calendar month; null: none")
    lifetime_cap: CapCount | None = Field(None, description="conversions ever; null: none")
    cap_timezone: TimeZone = Field("UTC", description="the IANA time zone whose midnight resets the caps")
    cap_fallback_url: Url | None = Field(
        None,
        description="where a capped offer's clicks go until its caps reset (a URL template, e.g. another offer's "
        "tracking link); null: each link's own fallback, else the offer as before",
    )
    destination_template: Url | None = Field(
        None, description="URL template of the links that have none of their own; they follow its changes"
    )
    pixel_enabled: bool = Field(False, description="take browser pixel conversions (no token) for this offer")
    pixel_status: PostbackStatus = Field("pending", description="the status of every pixel conversion")
    pixel_max_amount: Amount | None = Field(None, description="the largest sale amount a pixel may report (revshare)")
    pixel_domains: DomainList | None = Field(
        None, description="pages allowed to fire the pixel (Origin or Referer host, subdomains included); empty: any"
    )
    bot_conversions: BotConversions = Field(
        "reject", description="reject: a conversion on a bot click is stored rejected (reason bot); accept: counted"
    )

    @model_validator(mode="after")
    def _rates(self) -> OfferIn:
        _check_rates(self.revenue_model, self.revenue_amount, "revenue")
        _check_rates(self.payout_model, self.payout_amount, "payout")
        if self.pixel_enabled and "revshare" in (self.revenue_model, self.payout_model) and not self.pixel_max_amount:
            raise ValueError("pixel_max_amount: a revshare offer that takes the pixel needs a maximum sale amount")
        return self


class OfferPatch(Strict):
    advertiser_id: Id | None = None
    name: Name | None = None
    status: Status | None = None
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = None
    revenue_model: Model | None = None
    revenue_amount: Amount | None = None
    payout_model: Model | None = None
    payout_amount: Amount | None = None
    attribution_window_hours: Annotated[int, Field(ge=1, le=24 * 366)] | None = None
    default_status: PostbackStatus | None = None
    daily_cap: CapCount | None = None
    monthly_cap: CapCount | None = Field(None, description="null clears it")
    lifetime_cap: CapCount | None = Field(None, description="null clears it")
    cap_timezone: TimeZone | None = None
    cap_fallback_url: Url | None = Field(None, description="null clears it")
    destination_template: Url | None = Field(None, description="null clears it (refused while links follow it)")
    pixel_enabled: bool | None = None
    pixel_status: PostbackStatus | None = None
    pixel_max_amount: Amount | None = Field(None, description="null clears it")
    pixel_domains: DomainList | None = Field(None, description="null or empty clears it")
    bot_conversions: BotConversions | None = None


class OfferOut(Out):
    id: int
    advertiser_id: int
    name: str
    status: str
    currency: str
    revenue_model: str
    revenue_amount: Decimal
    payout_model: str
    payout_amount: Decimal
    attribution_window_hours: int
    default_status: str
    daily_cap: int | None
    monthly_cap: int | None
    lifetime_cap: int | None
    cap_timezone: str
    cap_fallback_url: str | None
    capped_until: datetime | None = Field(
        None, description="the offer's own caps are full until then (its clicks go to the cap fallback); null: not"
    )
    destination_template: str | None
    pixel_enabled: bool
    pixel_status: str
    pixel_max_amount: Decimal | None
    pixel_domains: str | None
    bot_conversions: str
    created_at: datetime
    live: bool | None = Field(
        None, description="after a status or template change: whether its links reached Redis (false: not yet live)"
    )


class OverrideIn(Strict):
    payout_model: Model | None = None
    payout_amount: Amount | None = None
    daily_cap: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    postback_url: PostbackTemplate | None = Field(None, description="this offer's postback, not the affiliate's")

    @model_validator(mode="after")
    def _rates(self) -> OverrideIn:
        _check_rates(self.payout_model, self.payout_amount, "payout")
        return self


class OverrideOut(Out):
    offer_id: int
    affiliate_id: int
    payout_model: str | None
    payout_amount: Decimal | None
    daily_cap: int | None
    postback_url: str | None


# -- links --


class Destination(Strict):
    url: Url
    weight: Annotated[int, Field(ge=1, le=1_000_000)] = 1


class Rule(Strict):
    countries: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$")]] = Field(default_factory=list)
    devices: list[Annotated[str, StringConstraints(min_length=1, max_length=32)]] = Field(default_factory=list)
    os: list[Annotated[str, StringConstraints(min_length=1, max_length=32)]] = Field(default_factory=list)
    url: Url | None = None
    destinations: list[Destination] | None = None

    @model_validator(mode="after")
    def _target(self) -> Rule:
        if self.url is None and not self.destinations:
            raise ValueError("a rule needs a url or destinations")
        return self


class LinkFields(Strict):
    """What the tracker serves; without `url` or weighted `destinations` the link follows its offer's template."""

    url: Url | None = None
    destinations: Annotated[list[Destination], Field(max_length=100)] | None = None
    rules: Annotated[list[Rule], Field(max_length=100)] = Field(default_factory=list)
    fallback_url: Url | None = None
    cookie: bool = False
    status: LinkStatus = "active"
    expires_at: datetime | None = None

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2026-01-31T23:59:00Z)")
        return value


class LinkIn(LinkFields):
    offer_id: Id
    affiliate_id: Id
    slug: Annotated[str, StringConstraints(pattern=SLUG_PATTERN)] | None = None


class LinkPatch(Strict):
    offer_id: Id | None = None
    affiliate_id: Id | None = None
    slug: Annotated[str, StringConstraints(pattern=SLUG_PATTERN)] | None = None
    url: Url | None = None
    destinations: Annotated[list[Destination], Field(max_length=100)] | None = None
    rules: Annotated[list[Rule], Field(max_length=100)] | None = None
    fallback_url: Url | None = None
    cookie: bool | None = None
    status: LinkStatus | None = None
    expires_at: datetime | None = None


class LinkOut(BaseModel):
    id: int
    slug: str
    offer_id: int
    affiliate_id: int
    status: str
    url: str | None = Field(description="its own URL template; null with no destinations: its offer's template")
    follows_offer_template: bool = Field(description="true: it serves (and follows) its offer's destination template")
    destinations: list[dict[str, Any]] | None
    rules: list[dict[str, Any]]
    fallback_url: str | None
    cookie: bool
    expires_at: datetime | None
    tracking_url: str
    created_at: datetime
    updated_at: datetime
    live: bool | None = Field(None, description="after a write: whether Redis took the config (false: not yet live)")


# -- users and tokens --


class UserIn(Strict):
    email: Email
    password: Annotated[str, StringConstraints(min_length=12, max_length=1024)]
    role: Role
    affiliate_id: Id | None = None

    @model_validator(mode="after")
    def _affiliate(self) -> UserIn:
        if (self.role == "affiliate") != (self.affiliate_id is not None):
            raise ValueError("an affiliate user needs an affiliate_id, and only an affiliate user has one")
        return self


class UserPatch(Strict):
    email: Email | None = None
    password: Annotated[str, StringConstraints(min_length=12, max_length=1024)] | None = None
    role: Role | None = None
    affiliate_id: Id | None = None
    is_active: bool | None = None


class UserOut(Out):
    id: int
    email: str
    role: str
    affiliate_id: int | None
    is_active: bool
    created_at: datetime


class TokenIn(Strict):
    name: Name


class TokenOut(Out):
    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None


class NewTokenOut(TokenOut):
    token: str = Field(description="shown once; only its SHA-256 is stored")
