"""The database layer on real PostgreSQL and SQLite: migrations, idempotent upserts, caps, exact money."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from adclick.core.db.migrate import alembic_config, include_object_for, upgrade
from adclick.core.db.models import (
    Advertiser,
    Affiliate,
    Base,
    Click,
    Conversion,
    DailyCap,
    HourlyLinkRollup,
    HourlyRollup,
    Link,
    Offer,
)
from adclick.core.db.session import session_factory
from adclick.core.db.upsert import increment, insert_ignore, release_cap, take_cap
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import column, func, insert, inspect, select, table, text, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from support.database import PostgresServer, engine_on, unique_name
from support.rollups import projection_mismatches
from support.seeding import seed_campaign

pytestmark = pytest.mark.anyio

D = Decimal
HOUR = datetime(2026, 3, 1, 12, tzinfo=UTC)
ROLLUP_KEY = ["hour", "link_id", "country", "device"]


def click(click_id: str, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "click_id": click_id,
        "ts": HOUR + timedelta(minutes=1),
        "link_id": 42,
        "offer_id": 7,
        "affiliate_id": 3,
        "ip": "203.0.113.9",
        "ua": "Mozilla/5.0",
        "country": "US",
        "device": "smartphone",
        "bot": False,
        "unique": True,
        "params": {"gclid": "abc"},
    }
    row.update(overrides)
    return row


def rollup(**values: Any) -> dict[str, Any]:
    return {"hour": HOUR, "link_id": 42, "country": "US", "device": "smartphone", "offer_id": 7, **values}


async def make_offer(session: AsyncSession, **values: Any) -> Offer:
    offer = (await seed_campaign(session, offer={"name": "Summer sale", **values})).offer
    await session.commit()
    return offer


def _schema_differences(connection: Connection) -> tuple[list[Any], str | None]:
    options = {"include_object": include_object_for(connection.dialect.name), "compare_type": True}
    context = MigrationContext.configure(connection, opts=options)
    return compare_metadata(context, Base.metadata), context.get_current_revision()


async def test_migrated_schema_matches_the_models(database_url: str, db_engine: AsyncEngine) -> None:
    async with db_engine.connect() as connection:
        differences, revision = await connection.run_sync(_schema_differences)
    assert differences == []
    assert revision == ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()


def _migrate_command(url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ADCLICK_DATABASE_URL": url}
    argv = [sys.executable, "-m", "adclick.cli", "migrate"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


async def _tables(url: str) -> set[str]:
    async with engine_on(url) as engine, engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_migrate_command_builds_an_empty_database_and_is_repeatable(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        name = unique_name("adclick_migrate")
        url = server.create_database(name)
        request.addfinalizer(lambda: server.drop_database(name))
    else:
        url = f"sqlite+aiosqlite:///{tmp_path}/not/yet/there/adclick.db"
    for _ in range(2):
        done = _migrate_command(url)
        assert done.returncode == 0, done.stderr
        assert "is at head" in done.stdout
    tables = asyncio.run(_tables(url))
    assert {"clicks", "conversions", "hourly_rollups", "daily_caps", "alembic_version"} <= tables
    if backend == "sqlite":
        assert (tmp_path / "not/yet/there/adclick.db").is_file()


@pytest.fixture(params=["postgresql", "sqlite"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database, no table in it yet, for a test to migrate step by step (on PostgreSQL and SQLite)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/adclick.db"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = unique_name("adclick_migrate")
    request.addfinalizer(lambda: server.drop_database(name))
    return server.create_database(name)


def _as_of(model: Any, *names: str) -> Any:
    """A model's table with only the named columns (their types kept): an insert that an older schema takes."""
    columns = model.__table__.c
    return table(model.__tablename__, *(column(name, columns[name].type) for name in names))


async def _insert_hourly_rollups(url: str, rows: list[dict[str, Any]]) -> None:
    """Rows of hourly_rollups as the schema of 0001 to 0003 holds them."""
    async with engine_on(url) as engine, engine.begin() as connection:
        metrics = ("clicks", "unique_clicks", "bot_clicks", "conversions", "revenue", "payout")
        values = [{**dict.fromkeys(metrics, 0), **row} for row in rows]
        names = sorted({name for row in values for name in row})
        await connection.execute(insert(_as_of(HourlyRollup, *names)), values)


async def _projections(url: str) -> tuple[dict[str, Any], dict[tuple[Any, ...], tuple[int, Decimal]]]:
    async with engine_on(url) as engine:
        mismatches = await projection_mismatches(engine)
        async with engine.connect() as connection:
            found = await connection.execute(
                select(
                    HourlyLinkRollup.hour,
                    HourlyLinkRollup.link_id,
                    HourlyLinkRollup.offer_id,
                    HourlyLinkRollup.affiliate_id,
                    HourlyLinkRollup.clicks,
                    HourlyLinkRollup.revenue,
                )
            )
            by_link = {tuple(row[:4]): (row.clicks, row.revenue) for row in found}
        return mismatches, by_link


def test_migration_0002_fills_the_rollup_projections_from_existing_rollups(fresh_url: str) -> None:
    url = fresh_url
    upgrade(url, "0001_initial")
    later, zero = HOUR + timedelta(hours=1), HOUR + timedelta(hours=2)
    rows = [
        rollup(affiliate_id=3, clicks=5, unique_clicks=3, bot_clicks=1),
        rollup(affiliate_id=3, country="DE", device="desktop", clicks=2, unique_clicks=2),
        # The link's conversions named another offer than its clicks: they stay apart, as in hourly_rollups.
        rollup(affiliate_id=3, offer_id=8, country="", device="", conversions=2, revenue=D("10.5"), payout=D("4.25")),
        rollup(link_id=43, offer_id=None, affiliate_id=None, clicks=1),
        rollup(hour=later, affiliate_id=3, clicks=4),
        rollup(hour=zero, affiliate_id=3, country="", device=""),  # a conversion counted, then taken back
    ]
    asyncio.run(_insert_hourly_rollups(url, rows))
    upgrade(url)
    mismatches, by_link = asyncio.run(_projections(url))
    assert mismatches == {}
    assert by_link == {
        (HOUR, 42, 7, 3): (6, D(0)),  # 5 + 2 clicks, less the bot that 0004 takes out of clicks
        (HOUR, 42, 8, 3): (0, D("10.5")),
        (HOUR, 43, 0, 0): (1, D(0)),  # 0: no offer, no affiliate
        (later, 42, 7, 3): (4, D(0)),
        (zero, 42, 7, 3): (0, D(0)),
    }
    # Down and up again: the projections are dropped and filled anew.
    command.downgrade(alembic_config(url), "0001_initial")
    upgrade(url)
    assert asyncio.run(_projections(url)) == (mismatches, by_link)


async def _execute(url: str, *statements: Any) -> list[list[Any] | None]:
    """Run the statements in one transaction: the rows of each (None where it returns none)."""
    async with engine_on(url) as engine, engine.begin() as connection:
        results: list[list[Any] | None] = []
        for statement in statements:
            result = await connection.execute(statement)
            results.append([tuple(row) for row in result] if result.returns_rows else None)
        return results


def _links_schema(connection: Connection) -> dict[str, Any]:
    found = inspect(connection)
    return {
        "template_nullable": {c["name"]: c["nullable"] for c in found.get_columns("links")}["template"],
        "offer_columns": {c["name"] for c in found.get_columns("offers")},
        "checks": {c["name"] for c in found.get_check_constraints("links")},
        "uniques": {c["name"] for c in found.get_unique_constraints("links")},
        "indexes": {i["name"] for i in found.get_indexes("links")},
        "foreign_keys": {
            (fk["referred_table"], tuple(fk["constrained_columns"])) for fk in found.get_foreign_keys("links")
        },
    }


async def _schema_of_links(url: str) -> dict[str, Any]:
    async with engine_on(url) as engine, engine.connect() as connection:
        return await connection.run_sync(_links_schema)


def test_migration_0003_lets_links_follow_their_offers_template_and_downgrades(fresh_url: str) -> None:
    url = fresh_url
    upgrade(url, "0002_rollup_projections")
    asyncio.run(
        _execute(
            url,
            insert(_as_of(Advertiser, "id", "name", "created_at")).values(id=1, name="Shop", created_at=HOUR),
            insert(_as_of(Affiliate, "id", "name", "created_at")).values(id=1, name="Mine", created_at=HOUR),
            insert(_as_of(Offer, "id", "advertiser_id", "name", "created_at")).values(
                id=1, advertiser_id=1, name="Summer", created_at=HOUR
            ),
            insert(Link.__table__).values(
                id=1, slug="own", offer_id=1, affiliate_id=1, template="https://own.example/"
            ),
        )
    )
    before = asyncio.run(_schema_of_links(url))
    assert before["template_nullable"] is False and "destination_template" not in before["offer_columns"]

    upgrade(url)
    after = asyncio.run(_schema_of_links(url))
    assert after["template_nullable"] is True and "destination_template" in after["offer_columns"]
    # SQLite rebuilt the table: its constraints and indexes came along
    assert {k: after[k] for k in ("checks", "uniques", "indexes", "foreign_keys")} == {
        k: before[k] for k in ("checks", "uniques", "indexes", "foreign_keys")
    }
    assert {"ck_links_status", "ck_links_id_40_bits"} <= after["checks"]
    template = "https://offer.example/?c={click_id}"
    asyncio.run(
        _execute(
            url,
            update(Offer.__table__).values(destination_template=template),
            insert(Link.__table__).values(id=2, slug="follows", offer_id=1, affiliate_id=1, template=None),
        )
    )

    # Down: a link that followed its offer keeps serving what it served, as its own template.
    command.downgrade(alembic_config(url), "0002_rollup_projections")
    assert asyncio.run(_schema_of_links(url)) == before
    [rows] = asyncio.run(
        _execute(url, select(Link.__table__.c.slug, Link.__table__.c.template).order_by(Link.__table__.c.id))
    )
    assert rows == [("own", "https://own.example/"), ("follows", template)]
    with pytest.raises(IntegrityError):
        asyncio.run(
            _execute(url, insert(Link.__table__).values(id=3, slug="none", offer_id=1, affiliate_id=1, template=None))
        )
    upgrade(url)
    assert asyncio.run(_schema_of_links(url)) == after


def test_migration_0004_takes_bots_out_of_rollup_clicks_and_downgrades(fresh_url: str) -> None:
    url = fresh_url
    upgrade(url, "0003")
    rows = [
        rollup(affiliate_id=3, clicks=5, unique_clicks=3, bot_clicks=2),  # before 0004, bots were also clicks
        rollup(affiliate_id=3, country="DE", device="desktop", clicks=4, unique_clicks=4),
    ]
    asyncio.run(_insert_hourly_rollups(url, rows))
    # 0003 has no projections writer here: fill them as the worker would have.
    asyncio.run(
        _execute(
            url,
            text(
                "INSERT INTO hourly_link_rollups (hour, link_id, offer_id, affiliate_id, clicks, unique_clicks, "
                "bot_clicks, conversions, revenue, payout) SELECT hour, link_id, offer_id, affiliate_id, sum(clicks), "
                "sum(unique_clicks), sum(bot_clicks), 0, 0, 0 FROM hourly_rollups "
                "GROUP BY hour, link_id, offer_id, affiliate_id"
            ),
            text(
                "INSERT INTO hourly_country_device_rollups (hour, country, device, clicks, unique_clicks, bot_clicks, "
                "conversions, revenue, payout) SELECT hour, country, device, sum(clicks), sum(unique_clicks), "
                "sum(bot_clicks), 0, 0, 0 FROM hourly_rollups GROUP BY hour, country, device"
            ),
        )
    )
    sums = "SELECT sum(clicks), sum(bot_clicks) FROM "
    tables = ("hourly_rollups", "hourly_link_rollups", "hourly_country_device_rollups")

    def totals() -> list[Any]:
        return [
            row
            for result in asyncio.run(_execute(url, *(text(sums + name) for name in tables)))
            for row in result or []
        ]

    assert totals() == [(9, 2)] * 3
    upgrade(url)
    assert totals() == [(7, 2)] * 3  # the two bots are in bot_clicks only
    assert asyncio.run(_projections(url))[0] == {}
    command.downgrade(alembic_config(url), "0003")
    assert totals() == [(9, 2)] * 3


def test_migrate_command_reports_an_unreachable_database(postgres_server: PostgresServer) -> None:
    url = postgres_server.url(unique_name("adclick_missing"))
    done = _migrate_command(url)
    assert done.returncode == 1
    assert "adclick migrate:" in done.stderr and "does not exist" in done.stderr


async def test_insert_ignore_returns_only_new_rows(db_session: AsyncSession) -> None:
    first = await insert_ignore(db_session, Click, [click("A1"), click("A2"), click("A3")])
    await db_session.commit()
    assert sorted(row.click_id for row in first) == ["A1", "A2", "A3"]

    again = [click("A2", ua="changed"), click("B1"), click("A3"), click("B2"), click("B1")]
    second = await insert_ignore(db_session, Click, again)
    await db_session.commit()
    assert sorted(row.click_id for row in second) == ["B1", "B2"]

    assert await db_session.scalar(select(func.count()).select_from(Click)) == 5
    assert await db_session.scalar(select(Click.ua).where(Click.click_id == "A2")) == "Mozilla/5.0"
    assert await insert_ignore(db_session, Click, []) == []


async def test_increment_adds_to_existing_rows_and_sums_repeated_keys(db_session: AsyncSession) -> None:
    table = HourlyRollup.__table__
    written = await increment(
        db_session,
        HourlyRollup,
        ROLLUP_KEY,
        [
            rollup(clicks=1, unique_clicks=1, revenue=Decimal("0.1")),
            rollup(clicks=1, bot_clicks=1, revenue=Decimal("0.1")),
            rollup(country="DE", clicks=1),
        ],
        ["clicks", "unique_clicks", "bot_clicks", "revenue"],
        returning=[table.c.country, table.c.clicks],
    )
    assert sorted((row.country, row.clicks) for row in written) == [("DE", 1), ("US", 2)]
    again = await increment(
        db_session,
        HourlyRollup,
        ROLLUP_KEY,
        rollup(offer_id=99, clicks=5, revenue=Decimal("0.1"), payout=Decimal("1")),
        ["clicks", "revenue"],
        returning=[table.c.offer_id, table.c.clicks],
    )
    assert [(row.offer_id, row.clicks) for row in again] == [(7, 7)]  # as stored after the write
    await db_session.commit()

    us = (await db_session.execute(select(HourlyRollup).where(HourlyRollup.country == "US"))).scalar_one()
    assert (us.clicks, us.unique_clicks, us.bot_clicks) == (7, 1, 1)
    assert us.revenue == Decimal("0.300000")
    assert us.payout == Decimal(0)  # not a delta: only set when the row is new
    assert us.offer_id == 7
    assert us.hour == HOUR
    de = (await db_session.execute(select(HourlyRollup).where(HourlyRollup.country == "DE"))).scalar_one()
    assert (de.clicks, de.unique_clicks, de.revenue) == (1, 0, Decimal(0))


async def test_conversions_are_unique_per_offer_and_transaction_id(db_session: AsyncSession) -> None:
    offer = await make_offer(db_session)
    other = await make_offer(db_session)

    def conversion(offer_id: int) -> dict[str, Any]:
        return {
            "offer_id": offer_id,
            "txid": "ORDER-1",
            "click_id": "C" * 40,
            "link_id": 42,
            "status": "pending",
            "currency": "USD",
            "amount": Decimal("49.90"),
        }

    assert len(await insert_ignore(db_session, Conversion, [conversion(offer.id)])) == 1
    assert await insert_ignore(db_session, Conversion, [conversion(offer.id)]) == []
    assert len(await insert_ignore(db_session, Conversion, [conversion(other.id)])) == 1
    await db_session.commit()

    db_session.add(Conversion(**conversion(offer.id)))
    with pytest.raises(IntegrityError):
        await db_session.commit()
    await db_session.rollback()
    assert await db_session.scalar(select(func.count()).select_from(Conversion)) == 2


MONEY = [
    Decimal("0.000001"),
    Decimal("-0.000001"),
    Decimal("49.90"),
    Decimal("0.1"),
    Decimal("999999999999.999999"),
    Decimal("-999999999999.999999"),
    Decimal("12345678901.234567"),
]


async def test_money_round_trips_exactly_as_decimal(db_session: AsyncSession) -> None:
    offer = await make_offer(db_session, revenue_amount=Decimal("12.345678"), payout_amount=Decimal("7.5"))
    rows = [
        {"offer_id": offer.id, "txid": f"T{index}", "click_id": "C" * 40, "link_id": 42, "status": "approved"}
        | {"currency": "EUR", "amount": value, "revenue": value, "payout": -value}
        for index, value in enumerate(MONEY)
    ]
    await insert_ignore(db_session, Conversion, rows)
    await db_session.commit()
    db_session.expunge_all()

    stored = (await db_session.execute(select(Conversion.amount, Conversion.payout).order_by(Conversion.txid))).all()
    for (amount, payout), expected in zip(stored, MONEY, strict=True):
        assert type(amount) is Decimal and amount == expected and amount.as_tuple().exponent == -6
        assert payout == -expected
    reloaded = await db_session.get(Offer, offer.id)
    assert reloaded is not None
    assert (reloaded.revenue_amount, reloaded.payout_amount) == (Decimal("12.345678"), Decimal("7.500000"))

    tenths = [{**row, "txid": f"S{index}", "amount": Decimal("0.1")} for index, row in enumerate(rows * 2)]
    await insert_ignore(db_session, Conversion, tenths)
    total = await db_session.scalar(select(func.sum(Conversion.amount)).where(Conversion.txid.like("S%")))
    assert total == Decimal("1.400000")
    assert await db_session.scalar(select(func.count()).where(Conversion.amount > Decimal("49.899999"))) == 3


async def test_money_refuses_floats_and_out_of_range_amounts(db_session: AsyncSession) -> None:
    offer = await make_offer(db_session)
    offer.payout_amount = 0.1  # type: ignore[assignment]
    with pytest.raises(StatementError, match="money must be Decimal"):
        await db_session.commit()
    await db_session.rollback()
    offer.payout_amount = Decimal("1000000000000")
    with pytest.raises(StatementError, match="out of range"):
        await db_session.commit()


async def test_timestamps_come_back_aware_in_utc(db_session: AsyncSession) -> None:
    paris = timezone(timedelta(hours=2))
    await insert_ignore(db_session, Click, [click("T1", ts=datetime(2026, 3, 1, 14, 30, 0, 123000, tzinfo=paris))])
    await db_session.commit()
    ts = await db_session.scalar(select(Click.ts).where(Click.click_id == "T1"))
    assert ts == datetime(2026, 3, 1, 12, 30, 0, 123000, tzinfo=UTC)
    assert ts is not None and ts.utcoffset() == timedelta(0)
    with pytest.raises(StatementError, match="naive datetime"):
        await insert_ignore(db_session, Click, [click("T2", ts=datetime(2026, 3, 1, 12))])


async def test_foreign_keys_are_enforced(db_session: AsyncSession) -> None:
    db_session.add(Offer(advertiser_id=12345, name="orphan"))
    with pytest.raises(IntegrityError):
        await db_session.commit()


async def test_take_cap_stops_at_the_cap_and_release_gives_a_slot_back(db_session: AsyncSession) -> None:
    slot = {"scope": "affiliate_offer", "offer_id": 7, "affiliate_id": 3, "day": date(2026, 3, 1)}
    assert [await take_cap(db_session, **slot, cap=2) for _ in range(3)] == [True, True, False]
    assert await take_cap(db_session, **{**slot, "day": date(2026, 3, 2)}, cap=2)
    assert not await take_cap(db_session, **{**slot, "offer_id": 8}, cap=0)
    assert await release_cap(db_session, **slot)
    assert await take_cap(db_session, **slot, cap=2)
    assert not await take_cap(db_session, **slot, cap=2)
    await db_session.commit()
    used = await db_session.scalar(select(DailyCap.used).filter_by(**slot))
    assert used == 2


async def test_concurrent_transactions_never_take_more_than_the_cap(db_engine: AsyncEngine) -> None:
    sessions = session_factory(db_engine)
    slot = {"scope": "offer", "offer_id": 7, "affiliate_id": 0, "day": date(2026, 3, 1)}

    async def attempt() -> bool:
        async with sessions() as session, session.begin():
            return await take_cap(session, **slot, cap=5)

    results = await asyncio.gather(*(attempt() for _ in range(12)))
    assert results.count(True) == 5
    async with sessions() as session:
        assert await session.scalar(select(DailyCap.used).filter_by(**slot)) == 5


async def test_clicks_have_a_brin_index_on_postgresql_only(db_engine: AsyncEngine) -> None:
    async with db_engine.connect() as connection:
        indexes = await connection.run_sync(lambda sync: inspect(sync).get_indexes("clicks"))
        names = {index["name"] for index in indexes}
        assert "ix_clicks_link_id_ts" in names
        if connection.dialect.name == "postgresql":
            definition = await connection.scalar(
                text("SELECT indexdef FROM pg_indexes WHERE tablename = 'clicks' AND indexname = 'ix_clicks_ts_brin'")
            )
            assert definition is not None and "USING brin (ts)" in definition
        else:
            assert "ix_clicks_ts_brin" not in names
            assert await connection.scalar(text("PRAGMA journal_mode")) == "wal"
            assert await connection.scalar(text("PRAGMA foreign_keys")) == 1


async def _count_clicks(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(Click)) or 0)


def test_postgres_restart_keeps_data_and_the_engine_reconnects(postgres_server: PostgresServer) -> None:
    name = unique_name("adclick_restart")
    url = postgres_server.create_database(name, template="template0")
    try:
        upgrade(url)

        async def scenario() -> None:
            async with engine_on(url) as engine:
                async with session_factory(engine)() as session:
                    await insert_ignore(session, Click, [click("R1"), click("R2")])
                    await session.commit()
                assert await _count_clicks(engine) == 2
                port = make_url(url).port
                await asyncio.to_thread(postgres_server.stop)
                with pytest.raises((OSError, DBAPIError)):
                    await _count_clicks(engine)
                await asyncio.to_thread(postgres_server.start)
                assert make_url(postgres_server.url(name)).port == port
                assert await _count_clicks(engine) == 2  # a pooled connection died with the server; a new one works

        asyncio.run(scenario())
    finally:
        postgres_server.drop_database(name)


def test_a_deleted_links_id_is_never_handed_out_again(fresh_url: str) -> None:
    """A ClickID seals its link id: a new link must never take the id of one that had clicks."""
    url = fresh_url
    upgrade(url)
    links = Link.__table__
    setup = [
        insert(Advertiser.__table__).values(id=1, name="Shop"),
        insert(Affiliate.__table__).values(id=1, name="Mine"),
        insert(Offer.__table__).values(id=1, advertiser_id=1, name="Summer"),
    ]
    asyncio.run(_execute(url, *setup))

    def new_link(slug: str) -> int:
        [rows] = asyncio.run(
            _execute(url, insert(links).values(slug=slug, offer_id=1, affiliate_id=1).returning(links.c.id))
        )
        assert rows is not None
        return int(rows[0][0])

    first, second = new_link("a"), new_link("b")
    asyncio.run(_execute(url, links.delete().where(links.c.id == second)))
    assert new_link("c") not in (first, second)
