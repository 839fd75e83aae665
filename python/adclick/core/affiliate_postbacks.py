"""Postbacks out to affiliates: the template format, which status changes fire, rendering, masking and signing.

Shared by the worker (which writes the outbox row in the conversion's own transaction and delivers it), and the
manager (which validates templates when they are saved, writes the outbox row of a staff status edit, redelivers,
and shows deliveries with their secrets masked).

A template is an http(s) URL whose path, query or fragment may hold macros: `{click_id} {txid} {conversion_id}
{offer_id} {aff_id} {sub1}`...`{sub5} {payout} {currency} {status} {event}`, and `{p:NAME}`, any parameter the
click's URL carried (a traffic source's own click id: `{p:clickid}`, `{p:gclid}`). Every value is percent-encoded
as one URL component, and no macro may sit in the scheme, host or port: a value can never send the postback to
another server, nor put a CR or LF into the request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MAX_TEMPLATE = 2048
MACROS = frozenset(
    {
        "click_id",
        "txid",
        "conversion_id",
        "offer_id",
        "aff_id",
        "sub1",
        "sub2",
        "sub3",
        "sub4",
        "sub5",
        "payout",
        "currency",
        "status",
        "event",
    }
)
# What the click's URL may name: query parameter names as trackers and ad platforms spell them.
PARAM_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_MACRO = re.compile(r"\{([^{}]*)\}")
CLICK_MACROS = frozenset({"sub1", "sub2", "sub3", "sub4", "sub5"})  # and every {p:NAME}: they need the click

# Which changes an affiliate may be told about. `approved` is the default; `pending` adds conversions stored
# pending; `reversal` adds an approved conversion turned rejected (a chargeback).
TRIGGERS = ("pending", "approved", "reversal")
DEFAULT_TRIGGERS = ("approved",)

SIGNATURE_HEADER = "X-Adclick-Signature"
DELIVERY_HEADER = "X-Adclick-Delivery"
_SECRET_KEYS = re.compile(r"(token|key|secret|sig|signature|pass|password|auth|hash)", re.IGNORECASE)
MASK = "****"


class TemplateError(ValueError):
    """A template that cannot be saved; the message says why, for the form or the API."""


def check_template(template: str) -> str:
    """The template, stripped, if it is one a postback can be built from; else TemplateError."""
    text = template.strip()
    if not text:
        raise TemplateError("the postback URL is empty")
    if len(text) > MAX_TEMPLATE:
        raise TemplateError(f"the postback URL is longer than {MAX_TEMPLATE} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise TemplateError("the postback URL may not hold spaces, CR, LF or other control characters")
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise TemplateError("the postback URL must start with http:// or https://")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "{" in authority or "}" in authority:
        raise TemplateError("macros may not be in the host or port, only in the path, query or fragment")
    if "@" in authority:
        raise TemplateError("the postback URL may not carry a user name or password before its host")
    try:
        parts = urllib.parse.urlsplit(_MACRO.sub("x", text))
        port = parts.port
    except ValueError as error:
        raise TemplateError(f"the postback URL is not valid: {error}") from None
    if not parts.hostname:
        raise TemplateError("the postback URL has no host")
    if port == 0:
        raise TemplateError("the postback URL's port is not valid")
    for name in _MACRO.findall(text):
        if name.startswith("p:"):
            if not PARAM_NAME.fullmatch(name[2:]):
                raise TemplateError(f"{{{name}}}: a click parameter's name is 1-64 of A-Z a-z 0-9 _ . -")
        elif name not in MACROS:
            raise TemplateError(f"unknown macro {{{name}}}; known: {', '.join(sorted(MACROS))} and {{p:NAME}}")
    if "{" in _MACRO.sub("", text) or "}" in _MACRO.sub("", text):
        raise TemplateError("a '{' or '}' that opens or closes no macro")
    return text


def check_triggers(values: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(t for t in TRIGGERS if t in set(values))
    unknown = set(values) - set(TRIGGERS)
    if unknown:
        raise TemplateError(f"unknown postback trigger(s) {sorted(unknown)}; known: {', '.join(TRIGGERS)}")
    return chosen


def parse_triggers(text: str | None) -> tuple[str, ...]:
    """An affiliate's stored triggers ('approved,reversal'); NULL is the default."""
    if text is None:
        return DEFAULT_TRIGGERS
    return tuple(t for t in TRIGGERS if t in {part.strip() for part in text.split(",")})


def trigger_of(before: str | None, after: str) -> str | None:
    """The trigger a conversion's change fires: None for a new `rejected` or `capped`, or a move back."""
    if before == after:
        return None
    if after == "approved":
        return "approved"
    if after == "pending" and before is None:
        return "pending"
    if after == "rejected" and before == "approved":
        return "reversal"
    return None


def uses_click(template: str) -> bool:
    """Whether rendering needs the stored click (its subs or parameters)."""
    return any(name in CLICK_MACROS or name.startswith("p:") for name in _MACRO.findall(template))


def render(template: str, values: Mapping[str, object], params: Mapping[str, object] | None = None) -> str:
    """The template with every macro replaced by its percent-encoded value ('' when it has none)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("p:"):
            raw = (params or {}).get(name[2:])
        else:
            raw = values.get(name)
        if raw is None:
            return ""
        return urllib.parse.quote(str(raw), safe="-._~")

    return _MACRO.sub(value, template)


def mask(url: str | None) -> str:
    """The URL with its secrets hidden: query values whose names look like credentials, and any user:password."""
    if not url:
        return ""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if any(_SECRET_KEYS.search(key) for key, _ in pairs):
        query = "&".join(
            f"{urllib.parse.quote(key, safe='')}="
            + (MASK if _SECRET_KEYS.search(key) else urllib.parse.quote(value, safe="-._~"))
            for key, value in pairs
        )
    else:
        query = parts.query
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def signature(secret: str, timestamp: int, url: str) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<url>">`: the affiliate checks it with its shared secret."""
    digest = hmac.new(secret.encode(), f"{timestamp}.{url}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True, slots=True)
class Sample:
    """The values of a test postback (the manager's "send a test"): plainly not a real conversion."""

    values: Mapping[str, object]
    params: Mapping[str, object]


def sample(affiliate_id: int) -> Sample:
    values = {
        "click_id": "TEST-CLICK-ID",
        "txid": "test",
        "conversion_id": 0,
        "offer_id": 0,
        "aff_id": affiliate_id,
        "payout": "0.00",
        "currency": "USD",
        "status": "approved",
        "event": "test",
        **{f"sub{n}": f"test-sub{n}" for n in range(1, 6)},
    }
    return Sample(values, {})
