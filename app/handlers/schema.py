"""/schema: the HTTP API as an OpenAPI document (/schema/openapi.json, browsable at /schema and
/schema/swagger) and the WebSocket protocol as an AsyncAPI one (/schema/asyncapi.json).

Litestar makes the OpenAPI document from the handlers; each handler declares who may call it
(`security=SIGNED_IN` or `TOKEN_OPTIONAL`) and every error status it can answer
(`responses=errors(401, 404, …)`), and `complete()` adds what Litestar cannot say: the
form-encoded bodies beside the JSON ones, `Retry-After` on 429 and 503, the type of the
headers it declares (a string), and nothing of the
errors a handler does not declare (Litestar adds a 400 of its own to every handler with a
parameter). The docs page's script and style come from the `swagger-ui-bundle-v2` package (Swagger
UI, kept current by the maintainers of connexion; the older `swagger-ui-bundle` ships Swagger UI
4, which cannot show OpenAPI 3.1), served under /schema/assets/: the page fetches nothing from
another host.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, MediaType, Response, get
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.datastructures import CacheControlHeader
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, SecurityRequirement, SecurityScheme
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from app.handlers.asyncapi import document_json
from app.handlers.request import FORM
from app.wire import PROTOCOL, ErrorBody

BEARER = "BearerToken"
"""The security scheme's name in the document."""
SIGNED_IN: list[SecurityRequirement] = [{BEARER: []}]
"""A route that needs a token (401 without)."""
TOKEN_OPTIONAL: list[SecurityRequirement] = [{}, {BEARER: []}]
"""A route that answers without a token too (more with one); a bad token still gets 401."""
ASSETS = "/schema/assets"
"""Where the docs page's script, style and icon are served from (the package's files)."""

WHEN = {
    400: "The body is not valid JSON.",
    401: "No token where one is needed, or a token that is invalid or expired (`detail` says which).",
    403: "Signed in, but not allowed to do this (or not in a locked forum thread).",
    404: (
        "No such track, comment, user, forum category, thread or post, or a private one (a track, "
        "a team-only category and what is in it) the caller may not see."
    ),
    409: "It clashes with what is there already (a second report of the same comment).",
    413: "The body is over 64 KiB.",
    422: "A value is not acceptable: `detail` names the field and says why.",
    429: "Too many writes of this user for now: try again after `Retry-After` seconds.",
    503: (
        "The database, or the identity provider that holds the token's key, cannot be reached in "
        "time: try again after `Retry-After` seconds."
    ),
}
"""What each error status means, as the document says it."""
RETRY_AFTER = {
    "description": "Whole seconds to wait before trying again.",
    "schema": {"type": "integer", "minimum": 1},
}


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """The error answers a route can give, each with the error body (for `responses=`)."""
    return {
        status: ResponseSpec(data_container=ErrorBody, description=WHEN[status], generate_examples=False)
        for status in statuses
    }


def openapi_config() -> OpenAPIConfig:
    """The OpenAPI document's settings: the bearer token, and a docs page that works offline."""
    return OpenAPIConfig(
        title="tracktalk",
        version=str(PROTOCOL),
        description=(
            "Realtime time-coded comments: the HTTP API. The live messages are on the WebSocket "
            "described at /schema/asyncapi.json. Request bodies are JSON or form-encoded."
        ),
        path="/schema",
        components=Components(
            security_schemes={
                BEARER: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    bearer_format="JWT",
                    description=(
                        "An access token: tracktalk's own (`tracktalk token USER_ID`) or, where "
                        "configured, one of the host's identity provider."
                    ),
                )
            }
        ),
        render_plugins=[
            SwaggerRenderPlugin(
                path="/swagger",
                js_url=f"{ASSETS}/swagger-ui-bundle.js",
                css_url=f"{ASSETS}/swagger-ui.css",
                standalone_preset_js_url=f"{ASSETS}/swagger-ui-standalone-preset.js",
                favicon=f"<link rel='icon' type='image/png' href='{ASSETS}/favicon-32x32.png'>",
            ),
            YamlRenderPlugin(),
        ],
    )


def complete(app: Litestar) -> None:
    """Finish the app's OpenAPI document (made once, here, and served as it is from then on)."""
    document = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()
    declared = {
        (route.path_format, method.lower()): set(map(str, handler.responses or {}))
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        for method in handler.http_methods
    }
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            _complete_operation(operation, declared.get((path, method), set()))


def _complete_operation(operation: dict[str, Any], declared: set[str]) -> None:
    responses = operation["responses"]
    for status in [s for s in responses if int(s) >= 400 and s not in declared]:
        del responses[status]  # Litestar's own 400, where the route answers none
    for status in ("429", "503"):
        if status in responses:
            responses[status].setdefault("headers", {})["Retry-After"] = RETRY_AFTER
    for response in responses.values():
        for header in response.get("headers", {}).values():
            if "schema" not in header and "content" not in header:
                header["schema"] = {"type": "string"}  # Litestar's ResponseHeader has none to give
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        content[FORM] = content["application/json"]


@get("/schema/asyncapi.json", media_type=MediaType.JSON, include_in_schema=False)
async def asyncapi() -> Response[bytes]:
    """The AsyncAPI 3.0.0 document of /api/ws/track/{track_id}, made from the wire types."""
    headers = {"Access-Control-Allow-Origin": "*", "Cache-Control": "no-cache"}
    return Response(document_json(), media_type=MediaType.JSON, headers=headers)


route_handlers = [
    asyncapi,
    create_static_files_router(
        path=ASSETS,
        directories=[swagger_ui_path],
        include_in_schema=False,
        cache_control=CacheControlHeader(max_age=86400, public=True),
    ),
]
