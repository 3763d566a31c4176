"""Every error leaves the service as ``ErrorResponse`` JSON: domain errors as 4xx/503, the rest as 500.

Handlers never echo request input (it may be huge or not encodable) and never send a traceback.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.data.events import EventStoreUnavailable, InvalidEvent
from recsys.pipeline.served import NoSearchIndex, UnknownItemError
from serving.schemas import ErrorResponse

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 5
_MAX_LOC_PART = 64
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 415: "unsupported_media_type"}
_FRIENDLY_MESSAGES = {
    "string_pattern_mismatch": "must contain a visible character and no control characters",
}


class ServingError(Exception):
    """An error the client can act on; ``status`` and ``code`` say how it is answered."""

    status = 500
    code = "internal_error"

    def __init__(self, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class NotReady(ServingError):
    status, code = 503, "not_ready"


class Overloaded(ServingError):
    """Shed load: the model's queue is full or the request waited past its deadline (with ``Retry-After``)."""

    status, code = 503, "overloaded"


class InvalidRequest(ServingError):
    status, code = 422, "invalid_request"


class BundlePathInvalid(ServingError):
    status, code = 404, "bundle_not_found"


class NotInBundle(ServingError):
    """A valid request naming something the served bundle does not have (e.g. a context column)."""

    status, code = 409, "not_in_bundle"


class NoReport(ServingError):
    """A report GET /reports serves is missing or unreadable: the detail says which command writes it."""

    status, code = 404, "no_report"


class BundleRefused(ServingError):
    status, code = 409, "bundle_refused"


class AdminDisabled(ServingError):
    status, code = 403, "admin_disabled"


class Unauthorized(ServingError):
    status, code = 401, "unauthorized"


# Errors raised by recsys (which knows nothing about HTTP): status, code, and the detail to send.
def _unknown_item(exc: Exception) -> str:
    return (f"unknown item {exc.args[0]!r}: it is not in the served bundle "
            "(new items become known after the next retrain)")


def _no_search_index(exc: Exception) -> str:
    return (f"{exc}; /search needs a bundle built by `python -m compression` (without --no-search) from a "
            "dataset whose catalogue has titles")


def _event_store_busy(exc: Exception) -> str:
    return f"event store unavailable ({exc}); nothing from this request was stored, retry later"


def _event_store_unreachable(exc: Exception) -> str:
    # A connection lost during COMMIT leaves the outcome unknown, so this cannot say "nothing stored".
    return (f"event store unavailable ({exc}); the request was probably not stored: retry later with the "
            "same event ids (an event_id already stored is not stored again)")


_FOREIGN: dict[type[Exception], tuple[int, str, Any]] = {
    UnknownItemError: (404, "unknown_item", _unknown_item),
    NoSearchIndex: (404, "no_search_index", _no_search_index),
    InvalidEvent: (422, "invalid_event", str),
    sqlite3.OperationalError: (503, "event_store_unavailable", _event_store_busy),
    EventStoreUnavailable: (503, "event_store_unavailable", _event_store_unreachable),  # e.g. PostgreSQL down
}


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=code, detail=_printable(detail)).model_dump(), status, headers=headers)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ServingError):
        return error_response(exc.status, exc.code, exc.detail, exc.headers)
    for kind, (status, code, describe) in _FOREIGN.items():
        if isinstance(exc, kind):
            if status >= 500:
                log.warning("%s %s: %s", request.method, request.url.path, exc)
            return error_response(status, code, describe(exc))
    return await _unexpected(request, exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, "invalid_request", describe_validation_errors(exc.errors()))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400:  # FastAPI's answer to a body it cannot decode (e.g. not UTF-8)
        return error_response(422, "invalid_request", "body: could not be decoded; send UTF-8 encoded JSON")
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:  # Starlette names only the first route of the path in Allow
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return error_response(exc.status_code, code, str(exc.detail), headers)


def _allowed_methods(request: Request) -> list[str]:
    path = request.url.path
    methods = {method for route in request.app.routes
               if getattr(route, "path", None) == path for method in (getattr(route, "methods", None) or ())}
    return sorted(methods)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "unexpected server error; the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    for kind in (ServingError, *_FOREIGN):
        app.add_exception_handler(kind, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def describe_validation_errors(errors: Sequence[dict[str, Any]]) -> str:
    """``query.k: Input should be less than or equal to 100; body.events.3.user: Field required``."""
    parts = []
    for error in errors[:MAX_REPORTED_ERRORS]:
        loc = ".".join(str(part)[:_MAX_LOC_PART] for part in error.get("loc", ()))
        message = _FRIENDLY_MESSAGES.get(error.get("type"), error.get("msg", "invalid"))
        reason = (error.get("ctx") or {}).get("error")
        if error.get("type") == "json_invalid" and reason:
            message = f"{message} ({reason}): send a JSON object or a list of objects"
        parts.append(f"{loc}: {message}" if loc else message)
    if len(errors) > MAX_REPORTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_REPORTED_ERRORS} more")
    return "; ".join(parts)


def _printable(text: str) -> str:
    # A JSON key the client sent can hold a lone surrogate; UTF-8 cannot encode one.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class BodySizeLimit:
    """413 JSON for request bodies over ``max_bytes``, declared (Content-Length) or streamed (chunked).

    FastAPI's own ``max_body_size`` answers 413 in plain text, replacing any JSON error body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> StarletteHTTPException:
        return StarletteHTTPException(413, f"request body is larger than {self.max_bytes} bytes: send smaller batches")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            exc = self._too_large()
            await error_response(413, _HTTP_CODES[413], exc.detail)(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large()  # FastAPI re-raises HTTPExceptions met while reading the body
            return message

        await self.app(scope, receive_within_limit, send)
