"""Alembic environment: runs migrations through the async engine of adclick.core.db.session."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from adclick.core.db.migrate import include_object_for
from adclick.core.db.models import Base
from adclick.core.db.session import create_engine, database_url
from adclick.core.db.types import Money, UtcDateTime

config = context.config
target_metadata = Base.metadata


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Autogenerate writes adclick's own column types by their public import path.
    if type_ == "type" and isinstance(obj, Money | UtcDateTime):
        autogen_context.imports.add("from adclick.core.db import types as adclick_types")
        return f"adclick_types.{type(obj).__name__}()"
    return False


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        **kwargs,  # type: ignore[arg-type]
    )


def _run(connection: Connection) -> None:
    # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
    dialect = connection.dialect.name
    _configure(connection=connection, render_as_batch=dialect == "sqlite", include_object=include_object_for(dialect))
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(config.attributes["database_url"], poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    _configure(url=database_url(config.attributes["database_url"]), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    _run(connection)
else:
    asyncio.run(_run_async())
