"""Errors as the API answers them: `{"error": {"code": ..., "message": ...}}`, never a traceback.

A refusal or failure of a service keeps its gRPC status, mapped to the HTTP status that
means the same (docs/api.md, "Errors"); the message is the service's own one line, so the
API words nothing differently from the CLI.
"""

from __future__ import annotations

import logging

import grpc
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

log = logging.getLogger(__name__)

# gRPC status -> HTTP status. Anything else (INTERNAL, UNKNOWN, ...) is a 502: the API
# itself worked, the service behind it failed.
GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 503,
}


class ApiError(Exception):
    """A request answered with an error: HTTP status, a short code, one line for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def from_rpc_error(exc: grpc.RpcError) -> ApiError:
    """The API error for a failed gRPC call: same meaning, the service's message."""
    code = exc.code()
    details = " ".join((exc.details() or "").split())
    if code == grpc.StatusCode.UNAVAILABLE:
        details = f"a Quarry service is unreachable ({details}); retry shortly"
    return ApiError(GRPC_TO_HTTP.get(code, 502), code.name.lower(), details or code.name)


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": error.code, "message": error.message}}
    return JSONResponse(body, status_code=error.status, headers=headers)


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (no such route, method not allowed) in the same shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    message = {
        404: f"no such resource: {request.url.path} (see /api/v1/openapi.json)",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    return error_response(ApiError(exc.status_code, code, message), exc.headers)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback here, answered as one line."""
    log.exception("%s %s failed", request.method, request.url.path)
    return error_response(
        ApiError(500, "internal", "the API failed to answer; the error is in its log")
    )
