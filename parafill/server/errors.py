"""OpenAI-style error bodies (`{"error": {message, type, param, code}}`) and the API-key gate.

Every failure the server answers — malformed JSON, validation (FastAPI's 422 becomes 400),
unknown routes and models, limits, a missing key — goes out in this one shape, naming the real
error (unwrapped from exception groups). The key gate is a
plain ASGI middleware so it runs before the body is read or validated.
"""

from __future__ import annotations

import hmac
import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from parafill.errors import real_error

log = logging.getLogger("parafill.server")

_TYPES = {401: "authentication_error", 404: "not_found_error", 500: "server_error"}


class APIError(Exception):
    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, dict[str, str | None]]:
        kind = _TYPES.get(self.status, "invalid_request_error")
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    if exc.status >= 500:  # the server's failure, not the client's: keep its traceback
        cause = exc.__cause__ or exc
        log.error("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message,
                  exc_info=cause)  # fmt: skip
    return exc.response()


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        why = first.get("ctx", {}).get("error", "")
        msg = f"request body is not valid JSON ({why})" if why else "request body is not valid JSON"
        return APIError(400, msg, code="invalid_json").response()
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    detail = first.get("msg", "invalid request")
    msg = f"{param}: {detail}" if param else str(detail)
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return APIError(400, msg, param=param, code="invalid_value").response()


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return APIError(exc.status_code, str(exc.detail)).response()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    real = real_error(exc)
    if isinstance(real, APIError):  # raised inside a task group
        return await _api_error(request, real)
    log.error("%s %s -> 500: %s: %s", request.method, request.url.path, type(real).__name__, real,
              exc_info=exc)  # fmt: skip
    return APIError(500, f"internal error: {type(real).__name__}: {real}").response()


class APIKeyGate:
    """Refuses /v1 requests without `Authorization: Bearer <key>` (401, OpenAI error body),
    and those that send the header more than once: neither copy may win."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v1"):
            await self.app(scope, receive, send)
            return
        why = self._refusal([v for k, v in scope.get("headers") or [] if k == b"authorization"])
        if why is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            APIError(401, f"{why}: send Authorization: Bearer <key>", code="invalid_api_key").body()
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, sent: list[bytes]) -> str | None:
        """Why the request's Authorization headers (ASGI lowercases names) are refused; None:
        exactly one, with the key."""
        if len(sent) > 1:
            return f"more than one Authorization header ({len(sent)} sent)"
        scheme, _, token = (sent[0] if sent else b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return None
        return "missing API key" if not sent or not sent[0] else "incorrect API key"
