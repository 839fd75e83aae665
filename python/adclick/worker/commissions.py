"""Commission arithmetic: CPA and RevShare in exact Decimal, rounded once, half-even, to the currency's minor units.

Pure functions, no I/O: the worker picks the rules (per-affiliate override first, then the offer default) and
this module turns a rule and a sale into money. Money is `Decimal` here and integer minor units at the edges.

Decisions, so that every caller gets the same answer:
- A RevShare commission is computed on the exact sale amount and rounded once, at the end (never per step).
- A sale amount of zero pays zero; a negative sale amount is refused (`negative_amount`): refunds and
  chargebacks are status changes of the original conversion, not negative sales.
- RevShare needs an amount (`missing_amount`) in the offer's currency (`currency_mismatch`): without exchange
  rates a commission in another currency could not be added to the offer's rollups.
- CPA pays its fixed amount whatever the sale amount or currency says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, Inexact, InvalidOperation, localcontext
from typing import Literal

CPA = "cpa"
REVSHARE = "revshare"
Model = Literal["cpa", "revshare"]

# ISO 4217 currencies whose minor unit is not 1/100; every other well-formed code has 2 decimals.
_MINOR_UNITS: dict[str, int] = {
    **dict.fromkeys("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    **dict.fromkeys("CLF UYW".split(), 4),
}
_CURRENCY = re.compile(r"[A-Z]{3}")
# A sale above this is a typo or an attack, not a purchase; refusing it keeps Decimal contexts and columns sane.
MAX_AMOUNT = Decimal("1e15")
_HUNDRED = Decimal(100)


class CommissionError(ValueError):
    """A sale or a rule that cannot be turned into money; `reason` is a short stable code for rejections."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Rule:
    """How one side (revenue from the advertiser, or payout to the affiliate) is computed.

    `value` is the fixed amount in the offer's currency for CPA, a percent of the sale amount for RevShare.
    """

    model: Model
    value: Decimal

    def __post_init__(self) -> None:
        if self.model not in (CPA, REVSHARE):
            raise CommissionError("invalid_rule", f"unknown commission model {self.model!r}")
        if not isinstance(self.value, Decimal) or not self.value.is_finite():
            raise CommissionError("invalid_rule", f"commission value must be a finite Decimal, not {self.value!r}")
        if self.value < 0:
            raise CommissionError("invalid_rule", f"commission value must not be negative: {self.value}")
        if self.model == REVSHARE and self.value > _HUNDRED:
            raise CommissionError("invalid_rule", f"a RevShare percent is at most 100: {self.value}")


def minor_units(currency: str) -> int:
    """Decimal places of the currency's minor unit (JPY 0, USD 2, KWD 3); refuses a malformed code."""
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise CommissionError("invalid_currency", f"currency must be three upper-case letters, not {currency!r}")
    return _MINOR_UNITS.get(currency, 2)


def quantize(amount: Decimal, currency: str) -> Decimal:
    """`amount` rounded half-even to the currency's minor units (2.675 USD -> 2.68, 2.665 USD -> 2.66)."""
    return amount.quantize(Decimal(1).scaleb(-minor_units(currency)), rounding=ROUND_HALF_EVEN)


def to_minor(amount: Decimal, currency: str) -> int:
    """An amount as an integer count of minor units (12.34 USD -> 1234), rounded half-even first."""
    return int(quantize(amount, currency).scaleb(minor_units(currency)))


def from_minor(units: int, currency: str) -> Decimal:
    """An integer count of minor units as a Decimal amount (1234 USD -> 12.34)."""
    return Decimal(units).scaleb(-minor_units(currency))


def parse_amount(text: str | None) -> Decimal | None:
    """A sale amount from a message ("49.90"), None when absent; refuses floats' cousins: NaN, inf, junk, huge."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise CommissionError("invalid_amount", f"amount must be a decimal string, not {type(text).__name__}")
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise CommissionError("invalid_amount", f"amount is not a decimal number: {text[:40]!r}") from None
    if not amount.is_finite():
        raise CommissionError("invalid_amount", f"amount must be finite: {text[:40]!r}")
    if abs(amount) >= MAX_AMOUNT:
        raise CommissionError("invalid_amount", f"amount out of range: {text[:40]!r}")
    return amount


def choose_rule(*candidates: Rule | None) -> Rule | None:
    """The most specific rule that is set: pass them most specific first (affiliate override, offer default)."""
    for rule in candidates:
        if rule is not None:
            return rule
    return None


def commission(rule: Rule | None, amount: Decimal | None, amount_currency: str | None, offer_currency: str) -> Decimal:
    """Money owed under `rule` for a sale of `amount` `amount_currency`, in the offer's currency, rounded.

    No rule means nothing is owed. `amount_currency` None means the offer's currency.
    """
    minor_units(offer_currency)
    if rule is None:
        return quantize(Decimal(0), offer_currency)
    if amount is not None:
        if not amount.is_finite():
            raise CommissionError("invalid_amount", f"amount must be finite: {amount}")
        if amount < 0:
            raise CommissionError("negative_amount", f"a sale amount cannot be negative: {amount}")
    if rule.model == CPA:
        return quantize(rule.value, offer_currency)
    if amount is None:
        raise CommissionError("missing_amount", "a RevShare commission needs the sale amount")
    currency = offer_currency if amount_currency is None else amount_currency
    minor_units(currency)
    if currency != offer_currency:
        raise CommissionError("currency_mismatch", f"sale in {currency}, offer pays in {offer_currency}")
    # Enough precision that the product is exact, so the only rounding is the final half-even one.
    with localcontext() as context:
        context.prec = len(amount.as_tuple().digits) + len(rule.value.as_tuple().digits) + 4
        context.traps[Inexact] = True
        exact = amount * rule.value / _HUNDRED
    return quantize(exact, offer_currency)
