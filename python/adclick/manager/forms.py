"""HTML form fields into the pydantic models: blanks are "not given", and errors read well above the form."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


async def form_fields(request: Request, *names: str) -> dict[str, str]:
    """The named fields of the posted form (missing or blank ones left out)."""
    form = await request.form()
    fields: dict[str, str] = {}
    for name in names:
        value = form.get(name)
        if isinstance(value, str) and value.strip():
            fields[name] = value.strip()
    return fields


def parse(model: type[M], data: dict[str, Any]) -> tuple[M | None, list[str]]:
    """The model, or None and one readable line per error."""
    try:
        return model.model_validate(data), []
    except ValidationError as error:
        return None, [_line(e) for e in error.errors(include_url=False)]


def _line(error: Any) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()))
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
