"""Check the rollup projections against `hourly_rollups`: each projection row must be the sum of its rows there."""

from __future__ import annotations

from typing import Any

from adclick.core.counting import HOURLY, METRICS, NO_ID, ROLLUPS_WRITE_ORDER, Rollup
from adclick.core.db.types import Money
from sqlalchemy import func, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession


def _projected_key(rollup: Rollup) -> list[Any]:
    base = HOURLY.table.c
    return [
        func.coalesce(base[name], NO_ID).label(name) if name in ("offer_id", "affiliate_id") else base[name]
        for name in rollup.key
    ]


def _sum(table_column: Any, name: str) -> Any:
    total = func.sum(table_column)
    return (type_coerce(total, Money) if name in ("revenue", "payout") else total).label(name)


async def projection_mismatches(
    database: AsyncEngine | AsyncSession,
) -> dict[str, dict[tuple[Any, ...], tuple[Any, Any]]]:
    """Per projection table, {key: (sum of hourly_rollups, projection row)} where they differ; {} when all agree.

    Rows must match one for one, zero rows included: every write to a projection is a write to hourly_rollups.
    Give the test's session rather than its engine while that session is in a transaction (SQLite would wait for
    its write lock).
    """
    if isinstance(database, AsyncSession):
        return await _mismatches(database)
    async with database.connect() as connection:
        return await _mismatches(connection)


async def _mismatches(connection: AsyncConnection | AsyncSession) -> dict[str, dict[tuple[Any, ...], tuple[Any, Any]]]:
    out: dict[str, dict[tuple[Any, ...], tuple[Any, Any]]] = {}
    base = HOURLY.table.c
    for rollup in ROLLUPS_WRITE_ORDER[1:]:
        keys = _projected_key(rollup)
        expected_rows = await connection.execute(
            select(*keys, *(_sum(base[name], name) for name in METRICS)).group_by(*keys)
        )
        table = rollup.table.c
        stored_rows = await connection.execute(select(*(table[name] for name in (*rollup.key, *METRICS))))
        width = len(rollup.key)
        expected = {_normal(row[:width]): tuple(row[width:]) for row in expected_rows}
        stored = {_normal(row[:width]): tuple(row[width:]) for row in stored_rows}
        wrong = {
            key: (expected.get(key), stored.get(key))
            for key in expected.keys() | stored.keys()
            if expected.get(key) != stored.get(key)
        }
        if wrong:
            out[rollup.table.name] = wrong
    return out


def _normal(key: tuple[Any, ...]) -> tuple[Any, ...]:
    # CHAR(2) pads '' to '  ' on PostgreSQL.
    return tuple(value.rstrip() if isinstance(value, str) else value for value in key)
