"""The request class: JSON bodies, and form-encoded ones read as if they were JSON."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import ClientException, SerializationException

FORM = "application/x-www-form-urlencoded"


class TracktalkRequest(Request[Any, Any, Any]):
    """Accepts the seed client's form-encoded POST and PUT bodies wherever JSON is expected."""

    async def json(self) -> Any:
        """The body as JSON, or the form's non-empty fields (strings, converted by the handler's types)."""
        if self.content_type[0] == FORM:
            form = await self.form()
            # An empty field (a form's blank `parent_id`) is an absent one; a repeated field
            # (`ids=1&ids=2`) is a list.
            fields = {key: [v for v in form.getall(key) if v != ""] for key in form}
            return {key: values if len(values) > 1 else values[0] for key, values in fields.items() if values}
        try:
            return await super().json()
        except SerializationException as exc:
            raise ClientException(detail=f"the body is not valid JSON: {exc.detail}") from None
