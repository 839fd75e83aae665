"""Commission arithmetic: CPA, RevShare, currencies' minor units, half-even rounding, bad amounts and rules."""

from __future__ import annotations

from decimal import Decimal

import pytest
from adclick.worker.commissions import (
    CPA,
    REVSHARE,
    CommissionError,
    Rule,
    choose_rule,
    commission,
    from_minor,
    minor_units,
    parse_amount,
    quantize,
    to_minor,
)
from hypothesis import given
from hypothesis import strategies as st

D = Decimal


def revshare(percent: str) -> Rule:
    return Rule(REVSHARE, D(percent))


def cpa(amount: str) -> Rule:
    return Rule(CPA, D(amount))


@pytest.mark.parametrize(
    ("currency", "places"),
    [("USD", 2), ("EUR", 2), ("BRL", 2), ("JPY", 0), ("KRW", 0), ("CLP", 0), ("BHD", 3), ("KWD", 3), ("OMR", 3)],
)
def test_minor_units_follow_iso_4217(currency: str, places: int) -> None:
    assert minor_units(currency) == places


@pytest.mark.parametrize("currency", ["usd", "US", "USDX", "", "U$D", None, 840])
def test_malformed_currency_codes_are_refused(currency: object) -> None:
    with pytest.raises(CommissionError) as caught:
        minor_units(currency)  # type: ignore[arg-type]
    assert caught.value.reason == "invalid_currency"


def test_cpa_pays_the_fixed_amount_whatever_the_sale() -> None:
    assert commission(cpa("12.50"), D("999.99"), "USD", "USD") == D("12.50")
    assert commission(cpa("12.50"), None, None, "USD") == D("12.50")
    assert commission(cpa("12.50"), D("0"), "EUR", "USD") == D("12.50")  # the sale's currency does not matter
    assert commission(cpa("0"), D("10"), "USD", "USD") == D("0.00")


def test_cpa_amount_is_rounded_to_the_offer_currency() -> None:
    assert commission(cpa("500"), None, None, "JPY") == D("500")
    assert str(commission(cpa("500"), None, None, "JPY")) == "500"
    assert str(commission(cpa("1.2345"), None, None, "KWD")) == "1.234"  # half-even: 4 is even, stays
    assert str(commission(cpa("1.2355"), None, None, "KWD")) == "1.236"
    assert str(commission(cpa("7"), None, None, "USD")) == "7.00"


@pytest.mark.parametrize(
    ("percent", "amount", "currency", "expected"),
    [
        ("10", "49.90", "USD", "4.99"),
        ("12.5", "49.90", "USD", "6.24"),  # 6.2375 -> 6.24
        ("5", "52.50", "USD", "2.62"),  # 2.625: tie, 2 is even
        ("5", "52.70", "USD", "2.64"),  # 2.635: tie, goes to the even 4
        ("50", "0.01", "USD", "0.00"),  # 0.005: tie, goes to the even 0
        ("50", "0.03", "USD", "0.02"),  # 0.015: tie, goes to the even 2
        ("33.333", "100", "USD", "33.33"),
        ("100", "19.99", "USD", "19.99"),
        ("0", "19.99", "USD", "0.00"),
        ("10", "1005", "JPY", "100"),  # 100.5: tie, 100 is even
        ("10", "1015", "JPY", "102"),  # 101.5: tie, goes to the even 102
        ("10", "1234", "KRW", "123"),
        ("2.5", "10.100", "KWD", "0.252"),  # 0.2525: tie, 2 is even
        ("2.5", "10.140", "BHD", "0.254"),  # 0.2535: tie, goes to the even 4
        ("7.5", "3.333", "OMR", "0.250"),  # 0.249975 -> 0.250
    ],
)
def test_revshare_is_a_percent_of_the_sale_rounded_half_even(
    percent: str, amount: str, currency: str, expected: str
) -> None:
    result = commission(revshare(percent), D(amount), currency, currency)
    assert str(result) == expected


def test_revshare_rounds_once_on_the_exact_product() -> None:
    # 28-digit arithmetic would round 1.4999...9 % up to 0.015 and then half-even up to 0.02: double rounding.
    amount = D("0.01499999999999999999999999999999")
    assert str(commission(revshare("100"), amount, "USD", "USD")) == "0.01"
    assert str(commission(revshare("99.99999999999999999999999999"), D("1000000"), "USD", "USD")) == "1000000.00"


def test_revshare_uses_the_offer_currency_when_the_sale_has_none() -> None:
    assert commission(revshare("10"), D("1000"), None, "JPY") == D("100")


def test_revshare_refuses_a_sale_in_another_currency() -> None:
    with pytest.raises(CommissionError) as caught:
        commission(revshare("10"), D("100"), "EUR", "USD")
    assert caught.value.reason == "currency_mismatch"


def test_revshare_needs_an_amount() -> None:
    with pytest.raises(CommissionError) as caught:
        commission(revshare("10"), None, "USD", "USD")
    assert caught.value.reason == "missing_amount"


def test_zero_sale_pays_zero_and_negative_sale_is_refused() -> None:
    assert commission(revshare("30"), D("0"), "USD", "USD") == D("0")
    assert commission(revshare("30"), D("-0"), "USD", "USD") == D("0")
    for rule in (revshare("30"), cpa("5")):
        with pytest.raises(CommissionError) as caught:
            commission(rule, D("-0.01"), "USD", "USD")
        assert caught.value.reason == "negative_amount"


def test_no_rule_pays_nothing() -> None:
    assert str(commission(None, D("100"), "USD", "USD")) == "0.00"
    assert str(commission(None, None, None, "JPY")) == "0"


@pytest.mark.parametrize(
    ("model", "value"),
    [("cpa", "-1"), ("revshare", "-0.5"), ("revshare", "100.01"), ("cps", "5"), ("cpa", "NaN"), ("cpa", "Infinity")],
)
def test_invalid_rules_are_refused(model: str, value: str) -> None:
    with pytest.raises(CommissionError) as caught:
        Rule(model, D(value))  # type: ignore[arg-type]
    assert caught.value.reason == "invalid_rule"


def test_rule_value_must_be_decimal_not_float() -> None:
    with pytest.raises(CommissionError):
        Rule(CPA, 1.5)  # type: ignore[arg-type]


def test_most_specific_rule_wins() -> None:
    override, default = cpa("7"), revshare("10")
    assert choose_rule(override, default) is override
    assert choose_rule(None, default) is default
    assert choose_rule(None, None) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("49.90", D("49.90")), (" 10 ", D("10")), ("0", D("0")), ("-3.5", D("-3.5")), ("1e2", D("100")), (None, None)],
)
def test_parse_amount(text: str | None, expected: Decimal | None) -> None:
    assert parse_amount(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "NaN", "sNaN", "Infinity", "-inf", "1e15", "12,50", "1.2.3"])
def test_parse_amount_refuses_junk(text: str) -> None:
    with pytest.raises(CommissionError) as caught:
        parse_amount(text)
    assert caught.value.reason == "invalid_amount"


def test_parse_amount_refuses_non_strings() -> None:
    with pytest.raises(CommissionError):
        parse_amount(49.9)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amount", "currency", "units"),
    [("12.34", "USD", 1234), ("500", "JPY", 500), ("1.234", "KWD", 1234), ("0.005", "USD", 0), ("0.015", "USD", 2)],
)
def test_minor_unit_conversion(amount: str, currency: str, units: int) -> None:
    assert to_minor(D(amount), currency) == units
    assert from_minor(units, currency) == quantize(D(amount), currency)


@given(
    cents=st.integers(min_value=0, max_value=10**12),
    percent=st.decimals(min_value=0, max_value=100, places=4, allow_nan=False, allow_infinity=False),
    currency=st.sampled_from(["USD", "JPY", "KWD", "EUR"]),
)
def test_revshare_never_exceeds_the_sale_and_matches_integer_half_even(
    cents: int, percent: Decimal, currency: str
) -> None:
    amount = from_minor(cents, currency)
    result = commission(Rule(REVSHARE, percent), amount, currency, currency)
    assert D(0) <= result <= amount
    # The same sum in pure integers: cents * percent(1e-4 units) / 1e6, rounded half to even.
    numerator = cents * int(percent.scaleb(4))
    quotient, remainder = divmod(numerator, 10**6)
    if remainder * 2 > 10**6 or (remainder * 2 == 10**6 and quotient % 2 == 1):
        quotient += 1
    assert to_minor(result, currency) == quotient
