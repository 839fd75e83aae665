"""The IP blocklist's pages and API: addresses and networks whose clicks trackers refuse.

adclick.core.publisher publishes the list to Redis (`adclick:ipblock`, then `!ipblock` on the invalidation
channel) and its reconciler converges it. Trackers check every click against it in Rust: a blocked click gets the
link's fallback (or a 403, `ADCLICK_BLOCKED_ACTION`), is counted in `blocked_clicks`, and its ClickID carries a
flag that makes any conversion on it `rejected` with reason `blocked`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import Field
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from adclick.core.db.models import BlockedNetwork
from adclick.core.networks import MAX_ENTRIES, NetworkListError, parse_networks
from adclick.core.publisher import blocklist_entries
from adclick.core.publisher import publish_blocklist as publish
from adclick.manager.deps import SessionDep, StaffUser
from adclick.manager.forms import form_fields
from adclick.manager.schemas import Strict
from adclick.manager.templating import flash, render

router = APIRouter()
EntryId = Annotated[int, Path(ge=1, le=2**31 - 1)]


class BlocklistIn(Strict):
    cidrs: Annotated[str, Field(min_length=1, max_length=200_000)] = Field(
        description="addresses or CIDR networks, separated by commas, spaces or new lines"
    )
    note: Annotated[str, Field(max_length=200)] | None = None


class BlockedOut(Strict):
    id: int
    cidr: str
    note: str | None


# -- the list --


async def entries(session: AsyncSession) -> list[BlockedNetwork]:
    return await blocklist_entries(session)


async def add(session: AsyncSession, text: str, note: str | None) -> list[BlockedNetwork]:
    """Add every network of `text` not listed yet; NetworkListError names a bad entry (nothing is added then)."""
    networks = parse_networks(text) or ()
    listed = {row.cidr for row in await entries(session)}
    if len(listed) + len(networks) > MAX_ENTRIES:
        raise NetworkListError(f"the blocklist holds at most {MAX_ENTRIES} entries")
    added = []
    for network in networks:
        cidr = str(network)
        if cidr in listed:
            continue
        listed.add(cidr)
        row = BlockedNetwork(cidr=cidr, note=(note or "").strip() or None)
        session.add(row)
        added.append(row)
    await session.commit()
    return added


async def remove(session: AsyncSession, entry_id: int) -> bool:
    result = await session.execute(delete(BlockedNetwork).where(BlockedNetwork.id == entry_id))
    await session.commit()
    return bool(getattr(result, "rowcount", 0))


# -- JSON API --


def _out(row: BlockedNetwork) -> dict[str, Any]:
    return BlockedOut(id=row.id, cidr=row.cidr, note=row.note).model_dump()


@router.get("/api/v1/blocklist", tags=["blocklist"])
async def list_api(session: SessionDep, _user: StaffUser) -> dict[str, Any]:
    """Every blocked address and network."""
    return {"items": [_out(row) for row in await entries(session)]}


@router.post("/api/v1/blocklist", status_code=201, tags=["blocklist"])
async def add_api(request: Request, data: BlocklistIn, session: SessionDep, _user: StaffUser) -> dict[str, Any]:
    """Block addresses or networks; `live`: whether trackers were told (false: the reconciler will, within a minute)."""
    try:
        added = await add(session, data.cidrs, data.note)
    except NetworkListError as error:
        raise HTTPException(422, str(error)) from None
    live = await publish(request.app.state.redis, session)
    return {"items": [_out(row) for row in added], "live": live}


@router.delete("/api/v1/blocklist/{entry_id}", status_code=204, tags=["blocklist"])
async def remove_api(request: Request, entry_id: EntryId, session: SessionDep, _user: StaffUser) -> Response:
    if not await remove(session, entry_id):
        raise HTTPException(404, "no such blocklist entry")
    await publish(request.app.state.redis, session)
    return Response(status_code=204)


# -- pages --


def _page(request: Request, rows: list[BlockedNetwork], **extra: Any) -> Response:
    status = 422 if extra.get("errors") else 200
    return render(request, "blocklist.html", {"rows": rows, **extra}, status_code=status)


@router.get("/blocklist", include_in_schema=False)
async def blocklist_page(request: Request, session: SessionDep, _user: StaffUser) -> Response:
    return _page(request, await entries(session))


@router.post("/blocklist", include_in_schema=False)
async def add_page(request: Request, session: SessionDep, _user: StaffUser) -> Response:
    fields = await form_fields(request, "cidrs", "note")
    try:
        if not fields.get("cidrs"):
            raise NetworkListError("give at least one address or network")
        if len(fields.get("note", "")) > 200:
            raise NetworkListError("a note has at most 200 characters")
        added = await add(session, fields["cidrs"], fields.get("note"))
    except NetworkListError as error:
        await session.rollback()
        return _page(request, await entries(session), errors=[str(error)], form=fields)
    if await publish(request.app.state.redis, session):
        flash(
            request,
            f"Blocked {len(added)} new entr{'y' if len(added) == 1 else 'ies'}; trackers apply it within a second.",
            "success",
        )
    else:
        flash(
            request,
            "Saved, not yet live: Redis could not be reached. The reconciler publishes it when it answers.",
            "warning",
        )
    return RedirectResponse("/blocklist", status_code=303)


@router.post("/blocklist/{entry_id}/delete", include_in_schema=False)
async def remove_page(request: Request, entry_id: EntryId, session: SessionDep, _user: StaffUser) -> Response:
    if await remove(session, entry_id):
        await publish(request.app.state.redis, session)
        flash(request, "Unblocked.", "success")
    return RedirectResponse("/blocklist", status_code=303)
