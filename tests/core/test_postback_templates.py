"""The affiliate-postback format: what a template may be, which changes fire, how values are encoded and masked."""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse

import pytest
from adclick.core.affiliate_postbacks import (
    TemplateError,
    check_template,
    check_triggers,
    mask,
    parse_triggers,
    render,
    signature,
    trigger_of,
    uses_click,
)
from hypothesis import given, settings
from hypothesis import strategies as st

GOOD = "https://aff.example/pb?cid={p:clickid}&tx={txid}&amt={payout}&cur={currency}&s={status}#{event}"


def test_a_good_template_is_kept_as_written() -> None:
    assert check_template(f"  {GOOD}  ") == GOOD
    assert check_template("http://aff.example:8080/{sub1}/{sub2}?c={click_id}&o={offer_id}&a={aff_id}") != ""


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("", "empty"),
        ("ftp://aff.example/{txid}", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("//aff.example/{txid}", "http:// or https://"),
        ("https://{sub1}.example/pb", "host or port"),
        ("https://aff.example:{sub1}/pb", "host or port"),
        ("{p:scheme}://aff.example/pb", "http:// or https://"),
        ("https://user:pw@aff.example/pb", "user name or password"),
        ("https://aff.example/pb?x={nope}", "unknown macro {nope}"),
        ("https://aff.example/pb?x={p:}", "click parameter's name"),
        ("https://aff.example/pb?x={p:a b}", "control characters"),
        ("https://aff.example/pb?x={p:a/b}", "click parameter's name"),
        ("https://aff.example/pb?x={txid", "opens or closes no macro"),
        ("https://aff.example/pb?x=}", "opens or closes no macro"),
        ("https://aff.example/pb\r\nX-Injected: 1", "control characters"),
        ("https://aff.example/pb?x=\n&y=1", "control characters"),
        ("https:///pb", "no host"),
        ("https://aff.example:99999/pb", "not valid"),
        ("https://aff.example/" + "a" * 2100, "longer than"),
    ],
)
def test_templates_that_could_go_elsewhere_or_break_a_request_are_refused(template: str, why: str) -> None:
    with pytest.raises(TemplateError, match=why.replace("{", r"\{").replace("}", r"\}").replace("?", r"\?")):
        check_template(template)


def test_values_are_percent_encoded_and_never_change_the_host_or_add_a_line() -> None:
    values = {"txid": "a&b=c", "payout": "1.50", "currency": "USD", "status": "approved", "event": "sale"}
    url = render(GOOD, values, {"clickid": "x\r\nHost: evil.example/#?"})
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname == "aff.example" and "\r" not in url and "\n" not in url
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert query == {"cid": "x\r\nHost: evil.example/#?", "tx": "a&b=c", "amt": "1.50", "cur": "USD", "s": "approved"}
    assert parts.fragment == "sale"
    # A macro without a value is empty, a parameter the click lacked too.
    assert render("https://a.example/?x={sub3}&y={p:gclid}", {}, None) == "https://a.example/?x=&y="


@settings(max_examples=300, deadline=None)
@given(
    value=st.text(max_size=80),
    param=st.text(max_size=80),
    macro=st.sampled_from(["{txid}", "{sub1}", "{p:clickid}", "{status}", "{event}"]),
)
def test_no_value_moves_the_postback_to_another_host(value: str, param: str, macro: str) -> None:
    template = check_template(f"https://aff.example/p/{macro}?a={macro}#{macro}")
    url = render(template, {"txid": value, "sub1": value, "status": value, "event": value}, {"clickid": param})
    parts = urllib.parse.urlsplit(url)
    assert parts.scheme == "https" and parts.netloc == "aff.example"
    assert all(ord(c) > 0x20 and ord(c) < 0x7F for c in url)


def test_which_changes_fire_which_trigger() -> None:
    assert trigger_of(None, "approved") == "approved"
    assert trigger_of(None, "pending") == "pending"
    assert trigger_of("pending", "approved") == "approved"
    assert trigger_of("approved", "rejected") == "reversal"
    assert trigger_of(None, "rejected") is None  # a bot's or a blocked click's conversion: nothing to tell
    assert trigger_of(None, "capped") is None
    assert trigger_of("pending", "rejected") is None
    assert trigger_of("approved", "approved") is None
    assert parse_triggers(None) == ("approved",)
    assert parse_triggers("reversal, pending,bogus") == ("pending", "reversal")
    assert check_triggers(["reversal", "approved"]) == ("approved", "reversal")
    with pytest.raises(TemplateError, match="unknown postback trigger"):
        check_triggers(["approved", "everything"])


def test_click_macros_are_known_so_the_deliverer_waits_for_the_click() -> None:
    assert uses_click("https://a.example/?c={p:gclid}")
    assert uses_click("https://a.example/{sub2}")
    assert not uses_click("https://a.example/?c={click_id}&t={txid}")


def test_secrets_are_masked_for_display() -> None:
    shown = mask("https://aff.example/pb?cid=abc&token=s3cr3t&api_key=k&x=1")
    assert "s3cr3t" not in shown and "=k&" not in shown
    assert "cid=abc" in shown and "token=****" in shown and "api_key=****" in shown and "x=1" in shown
    assert mask("https://u:p@aff.example/pb") == "https://****@aff.example/pb"
    assert mask("https://aff.example/pb?cid=abc") == "https://aff.example/pb?cid=abc"
    assert mask(None) == ""


def test_the_signature_is_an_hmac_of_time_and_url_the_affiliate_can_check() -> None:
    header = signature("shared", 1_700_000_000, "https://aff.example/pb?x=1")
    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    expected = hmac.new(b"shared", f"{t}.https://aff.example/pb?x=1".encode(), hashlib.sha256).hexdigest()
    assert t == "1700000000" and hmac.compare_digest(v1, expected)
    assert signature("other", 1_700_000_000, "https://aff.example/pb?x=1") != header
