"""Column types that behave the same on PostgreSQL and SQLite: exact money, timezone-aware UTC timestamps."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, Numeric
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import operators
from sqlalchemy.types import TypeDecorator, TypeEngine

MONEY_PRECISION = 18
MONEY_SCALE = 6
_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)
_LIMIT = Decimal(10) ** (MONEY_PRECISION - MONEY_SCALE)

_MONEY_OPERATORS = frozenset(
    {operators.add, operators.sub, operators.eq, operators.ne, operators.lt, operators.le, operators.gt, operators.ge}
)

# SQLite only aliases the rowid (and so auto-increments) for a column declared exactly INTEGER PRIMARY KEY.
BigIntegerPK = BigInteger().with_variant(Integer(), "sqlite")

# JSONB on PostgreSQL (comparable, indexable), JSON text elsewhere.
JSONDocument = JSON().with_variant(postgresql.JSONB(), "postgresql")


def utc_now() -> datetime:
    return datetime.now(UTC)


class Money(TypeDecorator[Decimal]):
    """NUMERIC(18,6) on PostgreSQL; on SQLite an INTEGER of millionths, because SQLite's NUMERIC is a double.

    Values go in as Decimal or int (a float is refused: it has already lost the exact amount) and come out
    as Decimal with 6 places on both databases. Sums and `col + excluded.col` stay exact on both.
    """

    impl = Numeric(MONEY_PRECISION, MONEY_SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(MONEY_PRECISION, MONEY_SCALE, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, float) or isinstance(value, bool):
            raise TypeError(f"money must be Decimal, int or str, not {type(value).__name__}: {value!r}")
        amount = Decimal(value).quantize(_QUANTUM, rounding=ROUND_HALF_UP)
        if not amount.is_finite() or abs(amount) >= _LIMIT:
            raise ValueError(f"money out of range for NUMERIC({MONEY_PRECISION},{MONEY_SCALE}): {value!r}")
        if dialect.name == "sqlite":
            return int(amount.scaleb(MONEY_SCALE))
        return amount

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-MONEY_SCALE).quantize(_QUANTUM)
        return Decimal(value).quantize(_QUANTUM)

    def coerce_compared_value(self, op: Any, value: Any) -> TypeEngine[Any]:
        # `Money + 1` or `Money > 0` binds the literal as money, so SQLite compares millionths with millionths;
        # a factor (`Money * 2`) stays a plain number.
        if op in _MONEY_OPERATORS:
            return self
        return super().coerce_compared_value(op, value)


class UtcDateTime(TypeDecorator[datetime]):
    """TIMESTAMP WITH TIME ZONE; accepts only aware datetimes and always returns them in UTC (SQLite included)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
