"""Errors as the API answers them: JSON `{status_code, detail}`, the detail saying what to fix.

The one place where what went wrong (app/problems.py, the database, the identity provider)
becomes an HTTP status."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from litestar import MediaType, Request, Response
from litestar.exceptions import NotAuthorizedException, ValidationException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.types import ExceptionHandlersMap
from psycopg_pool import PoolTimeout

from app.auth.claims import IdentityProviderUnavailable
from app.bounds import MAX_BODY
from app.problems import Conflict, Forbidden, NotFound, Problem, TooMany, Unprocessable

log = logging.getLogger(__name__)


def unauthorized(detail: str = "sign in: send `Authorization: Bearer <token>`") -> NotAuthorizedException:
    """401: no usable token."""
    return NotAuthorizedException(detail=detail)


_STATUS: dict[type[Problem], int] = {
    NotFound: 404,
    Forbidden: 403,
    Conflict: 409,
    Unprocessable: 422,
    TooMany: 429,
}
"""The HTTP status of each kind of problem."""


def _json(status: int, detail: str, headers: dict[str, str] | None = None) -> Response[dict[str, Any]]:
    return Response(
        {"status_code": status, "detail": detail},
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    """Say which field is wrong and why, as 422 (400 when the body is not JSON at all)."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for problem in problems:
        if isinstance(problem, dict):
            key = problem.get("key")
            message = str(problem.get("message", "invalid value"))
            if key == "data":  # Litestar's name for the whole body
                key = "body"
                if message == "'data'":  # no body at all (Litestar's KeyError)
                    message = "it is empty: send the fields as a JSON object or a form"
            parts.append(f"{key}: {message}" if key else message)
    if not parts:
        detail = str(exc.detail)
        status = 400 if "JSON" in detail or "decode" in detail.lower() else 422
        return _json(status, "the body is not valid JSON" if status == 400 else detail)
    return _json(422, "; ".join(parts))


def _too_large(_: Request[Any, Any, Any], __: RequestEntityTooLarge) -> Response[dict[str, Any]]:
    return _json(413, f"the request body is too large: send at most {MAX_BODY} bytes")


def _database_down(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.warning("database unavailable: %s", type(exc).__name__)
    return _json(
        503, "the database is unavailable or too slow right now; try again shortly", {"Retry-After": "2"}
    )


def _identity_provider_down(
    _: Request[Any, Any, Any], exc: IdentityProviderUnavailable
) -> Response[dict[str, Any]]:
    """A token whose key cannot be fetched now: 503, to be tried again (not 401, signed out)."""
    return _json(503, str(exc), {"Retry-After": str(exc.retry_after)})


def _database_refused(
    _: Request[Any, Any, Any], exc: psycopg.errors.IntegrityError
) -> Response[dict[str, Any]]:
    """A constraint the API's own checks did not catch (e.g. a row deleted meanwhile)."""
    diag = exc.diag
    log.info("constraint refused a write: %s", diag.constraint_name)
    return _json(422, diag.message_primary or "the change conflicts with the data; reload and retry")


def _problem(_: Request[Any, Any, Any], exc: Problem) -> Response[dict[str, Any]]:
    """What the data layer or a check found: its status, and its message as the detail."""
    status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooMany) else None
    return _json(status, str(exc), headers)


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Anything unforeseen: logged with its traceback (Litestar logs it only in debug mode)."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _json(500, "the server failed on this request (it is logged); try again shortly")


exception_handlers: ExceptionHandlersMap = {
    500: _internal,
    ValidationException: _validation,
    RequestEntityTooLarge: _too_large,
    Problem: _problem,
    PoolTimeout: _database_down,
    psycopg.OperationalError: _database_down,
    psycopg.errors.QueryCanceled: _database_down,
    psycopg.errors.IntegrityError: _database_refused,
    IdentityProviderUnavailable: _identity_provider_down,
}
