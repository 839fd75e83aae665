"""Idempotent bulk writes that read the same on PostgreSQL and SQLite: insert-or-ignore, add-to-counters, cap slots.

Each function takes an `AsyncSession` or `AsyncConnection` and runs inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import Any

from sqlalchemy import Column, Row, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from .models import DailyCap

Executor = AsyncSession | AsyncConnection
TableLike = Table | type[Any]


def _table(target: TableLike) -> Table:
    table = getattr(target, "__table__", target)
    if not isinstance(table, Table):
        raise TypeError(f"expected a Table or a mapped class, got {target!r}")
    return table


def _dialect_name(executor: Executor) -> str:
    if isinstance(executor, AsyncSession):
        return executor.get_bind().dialect.name
    return executor.dialect.name


def _insert(executor: Executor, table: Table) -> Any:
    name = _dialect_name(executor)
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"no upsert for dialect {name!r}")


def _sorted(rows: list[dict[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    # Concurrent transactions that lock the same keys in the same order cannot deadlock each other.
    if all(all(row.get(name) is not None for name in columns) for row in rows):
        rows.sort(key=lambda row: tuple(row[name] for name in columns))
    return rows


async def insert_ignore(
    executor: Executor,
    table: TableLike,
    rows: Iterable[Mapping[str, Any]],
    *,
    returning: Sequence[Column[Any]] | None = None,
) -> list[Row[Any]]:
    """Insert the rows, skipping any that conflict with a unique key; return the rows really inserted.

    Each returned row holds the primary key columns (or `returning`). Every row must have the same keys.
    """
    target = _table(table)
    batch = [dict(row) for row in rows]
    if not batch:
        return []
    _sorted(batch, [column.name for column in target.primary_key.columns])
    columns = list(returning) if returning is not None else list(target.primary_key.columns)
    statement = _insert(executor, target).on_conflict_do_nothing().returning(*columns)
    result = await executor.execute(statement, batch)
    return list(result.all())


async def increment(
    executor: Executor,
    table: TableLike,
    key_cols: Sequence[str],
    values: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    deltas: Sequence[str],
    *,
    returning: Sequence[Column[Any]] | None = None,
) -> list[Row[Any]]:
    """Upsert-add: insert each row, or add its `deltas` columns to the stored row with the same `key_cols`.

    Rows with equal keys are summed first (one statement may not update a row twice on PostgreSQL); other
    columns are set only when the row is new. With `returning`, returns those columns of every row written (as
    stored after the write, in no particular order); else an empty list.
    """
    target = _table(table)
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in [values] if isinstance(values, Mapping) else values:
        key = tuple(row[name] for name in key_cols)
        existing = merged.get(key)
        if existing is None:
            merged[key] = {**row, **{name: row.get(name, 0) for name in deltas}}
        else:
            for name in deltas:
                existing[name] += row.get(name, 0)
    if not merged:
        return []
    batch = [merged[key] for key in sorted(merged)]
    insert = _insert(executor, target)
    statement = insert.on_conflict_do_update(
        index_elements=[target.c[name] for name in key_cols],
        set_={name: target.c[name] + insert.excluded[name] for name in deltas},
    )
    if returning is None:
        await executor.execute(statement, batch)
        return []
    return list((await executor.execute(statement.returning(*returning), batch)).all())


async def take_cap(executor: Executor, *, scope: str, offer_id: int, affiliate_id: int, day: date, cap: int) -> bool:
    """Claim one of `cap` slots for (scope, offer, affiliate, day); False when all are taken.

    One statement, so two workers can never both take the last slot: PostgreSQL locks the row and
    re-checks `used < cap`; SQLite serialises writers.
    """
    if cap <= 0:
        return False
    table = _table(DailyCap)
    insert = _insert(executor, table).values(scope=scope, offer_id=offer_id, affiliate_id=affiliate_id, day=day, used=1)
    statement = insert.on_conflict_do_update(
        index_elements=[table.c.scope, table.c.offer_id, table.c.affiliate_id, table.c.day],
        set_={"used": table.c.used + 1},
        where=table.c.used < cap,
    ).returning(table.c.used)
    result = await executor.execute(statement)
    return result.first() is not None


async def release_cap(executor: Executor, *, scope: str, offer_id: int, affiliate_id: int, day: date) -> bool:
    """Give back a slot taken by `take_cap` (e.g. the other cap was full, or the conversion was reversed)."""
    table = _table(DailyCap)
    statement = (
        table.update()
        .where(
            table.c.scope == scope,
            table.c.offer_id == offer_id,
            table.c.affiliate_id == affiliate_id,
            table.c.day == day,
            table.c.used > 0,
        )
        .values(used=table.c.used - 1)
        .returning(table.c.used)
    )
    result = await executor.execute(statement)
    return result.first() is not None
