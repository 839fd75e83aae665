"""Sub-id rollups: what sub1..sub5 reports read instead of raw clicks (issue 18).

`hourly_sub_rollups` counts by hour x link x country x sub key x sub value, written by the worker in the
transaction that stores the clicks (as adclick.core.counting writes the hourly rollups): a click adds one row per
key, '' for a sub it did not carry.

A sub whose values are unique per click (a click id of the traffic source, a timestamp) would make the table as big
as the clicks. So per UTC day, link and key only the first `limit` distinct values are admitted (`sub_values`, one
row each) and count under their own value; every later value of that day counts under `other` (value ''), as does
a value longer than `MAX_VALUE`. Such values are exact lookups, which the click log answers from raw clicks.
Admission is decided once per (day, link, key, value) and stored, so a redelivered batch, a second worker or a
later conversion of the same click finds the same answer. Two workers admitting at once may each take the last
free places: a day's values may then exceed `limit` by a few, never unboundedly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

from sqlalchemy import Table, func, select, tuple_

from adclick.core.db.models import ROLLUP_METRICS, HourlySubRollup, SubValue
from adclick.core.db.upsert import Executor, increment, insert_ignore

SUB_KEYS = (1, 2, 3, 4, 5)
MAX_VALUE = 200  # characters: a longer value is never a group (the column's width)
DEFAULT_LIMIT = 1000  # distinct values per UTC day, link and key
KEY = ("hour", "link_id", "country", "sub_key", "other", "sub_value")
_TABLE = cast(Table, HourlySubRollup.__table__)
_VALUES = cast(Table, SubValue.__table__)
_LOOKUP_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Slot:
    """Where one sub value of one click counts: its value, or `other` (value '')."""

    other: bool
    value: str


NONE = Slot(False, "")
OTHER = Slot(True, "")


Admission = tuple[date, int, int, str]  # UTC day, link, sub key, value


async def admit(executor: Executor, wanted: Iterable[Admission], limit: int) -> set[Admission]:
    """The (day, link, key, value) of `wanted` that count under their own value: those admitted before, and new ones
    while their day, link and key have fewer than `limit` values (the most frequent in `wanted` first)."""
    frequency = Counter(w for w in wanted if w[3] and len(w[3]) <= MAX_VALUE)
    if not frequency:
        return set()
    distinct = sorted(frequency)
    admitted = await admitted_of(executor, distinct)
    c = _VALUES.c
    new: dict[tuple[date, int, int], list[str]] = {}
    for day, link_id, key, value in sorted(
        (w for w in distinct if w not in admitted), key=lambda w: (w[:3], -frequency[w], w[3])
    ):
        new.setdefault((day, link_id, key), []).append(value)
    if not new:
        return admitted
    groups = sorted(new)
    held: dict[tuple[date, int, int], int] = {}
    for start in range(0, len(groups), _LOOKUP_CHUNK):
        group_chunk = groups[start : start + _LOOKUP_CHUNK]
        rows = await executor.execute(
            select(c.day, c.link_id, c.sub_key, func.count())
            .where(tuple_(c.day, c.link_id, c.sub_key).in_(group_chunk))
            .group_by(c.day, c.link_id, c.sub_key)
        )
        held.update({(row[0], row[1], row[2]): int(row[3]) for row in rows.all()})
    inserts: list[dict[str, Any]] = []
    for group in groups:
        room = max(0, limit - held.get(group, 0))
        for value in new[group][:room]:
            inserts.append({"day": group[0], "link_id": group[1], "sub_key": group[2], "sub_value": value})
    if inserts:
        # A value another worker admitted meanwhile is admitted all the same (its row is there).
        await insert_ignore(executor, _VALUES, inserts)
        admitted.update((row["day"], row["link_id"], row["sub_key"], row["sub_value"]) for row in inserts)
    return admitted


async def admitted_of(executor: Executor, wanted: Iterable[Admission]) -> set[Admission]:
    """Those of `wanted` admitted already (admits nothing: a conversion counts where its click did)."""
    distinct = sorted({w for w in wanted if w[3] and len(w[3]) <= MAX_VALUE})
    admitted: set[Admission] = set()
    c = _VALUES.c
    for start in range(0, len(distinct), _LOOKUP_CHUNK):
        chunk = distinct[start : start + _LOOKUP_CHUNK]
        rows = await executor.execute(
            select(c.day, c.link_id, c.sub_key, c.sub_value).where(
                tuple_(c.day, c.link_id, c.sub_key, c.sub_value).in_(chunk)
            )
        )
        admitted.update((row[0], row[1], row[2], row[3]) for row in rows.all())
    return admitted


def slot(day: date, link_id: int, key: int, value: str | None, admitted: set[Admission]) -> Slot:
    """Where a click's value of sub `key` counts, given what `admit` answered."""
    if not value:
        return NONE
    return Slot(False, value) if (day, link_id, key, value) in admitted else OTHER


async def slots_for(
    executor: Executor, clicks: Sequence[tuple[date, int, Sequence[str | None]]], limit: int | None
) -> list[tuple[Slot, ...]]:
    """Each click's slots (sub1..sub5), given its UTC day, link and sub values: admitting new values up to `limit`
    per day, link and key (the worker storing clicks), or with `limit` None only reading what was admitted (a
    conversion counts where its click did)."""
    wanted = [
        (day, link_id, key, value)
        for day, link_id, values in clicks
        for key, value in zip(SUB_KEYS, values, strict=True)
        if value
    ]
    admitted = await (admitted_of(executor, wanted) if limit is None else admit(executor, wanted, limit))
    return [
        tuple(slot(day, link_id, key, value, admitted) for key, value in zip(SUB_KEYS, values, strict=True))
        for day, link_id, values in clicks
    ]


def rows_for(
    hour: datetime,
    link_id: int,
    country: str,
    slots: Sequence[Slot],
    offer_id: int | None,
    affiliate_id: int | None,
    counts: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """The five rows (one per key) that add `counts` for one event counted at `slots` (sub1..sub5)."""
    return [
        {
            "hour": hour,
            "link_id": link_id,
            "country": country,
            "sub_key": key,
            "other": where.other,
            "sub_value": where.value,
            "offer_id": offer_id,
            "affiliate_id": affiliate_id,
            **counts,
        }
        for key, where in zip(SUB_KEYS, slots, strict=True)
    ]


async def add_to_sub_rollups(executor: Executor, rows: Iterable[Mapping[str, Any]]) -> None:
    """Add rows (from `rows_for`) to `hourly_sub_rollups` in the caller's transaction; rows that add nothing are
    skipped. A row's offer and affiliate are those of its first event, as in `hourly_rollups`."""
    batch = [row for row in rows if any(row.get(name) for name in ROLLUP_METRICS)]
    if not batch:
        return
    deltas = [name for name in ROLLUP_METRICS if any(name in row for row in batch)]
    await increment(executor, _TABLE, KEY, batch, deltas)
