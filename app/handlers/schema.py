"""/schema/asyncapi.json: the WebSocket protocol as an AsyncAPI document (beside Litestar's
OpenAPI schema of the HTTP routes, under the same /schema)."""

from __future__ import annotations

from litestar import MediaType, Response, get

from app.asyncapi import document_json


@get("/schema/asyncapi.json", media_type=MediaType.JSON, include_in_schema=False)
async def asyncapi() -> Response[bytes]:
    """The AsyncAPI 3.0.0 document of /api/ws/track/{track_id}, made from the wire types."""
    headers = {"Access-Control-Allow-Origin": "*", "Cache-Control": "no-cache"}
    return Response(document_json(), media_type=MediaType.JSON, headers=headers)


route_handlers = [asyncapi]
