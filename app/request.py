"""The request class: JSON bodies, and form-encoded ones read as if they were JSON."""

from __future__ import annotations

from typing import Any

from litestar import Request

FORM = "application/x-www-form-urlencoded"


class TracktalkRequest(Request[Any, Any, Any]):
    """Accepts the seed client's form-encoded POST and PUT bodies wherever JSON is expected."""

    async def json(self) -> Any:
        """The body as JSON, or the form's fields (strings, converted by the handler's types)."""
        if self.content_type[0] == FORM:
            form = await self.form()
            return {key: value for key, value in form.items()}
        return await super().json()
