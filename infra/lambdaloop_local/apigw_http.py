"""The local gateway's HTTP edge: API Gateway HTTP API's request limits and its JSON answers.

aiohttp answers the requests its parser refuses (a bad request line, a bare CR, a line over
its limit) itself, in text/plain; :class:`GatewayServer` makes connections whose protocol
answers them as API Gateway answers its own errors, ``{"message": "..."}``, and closes.
The limits (:class:`GatewayLimits`) are API Gateway HTTP API's quotas; the timeouts are the
emulator's own (AWS does not publish HTTP API's), small enough that a slow or lying client
gets an answer in bounded time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong

__all__ = [
    "GatewayLimits",
    "GatewayServer",
    "gateway_error",
    "head_too_large",
    "read_body",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """What the gateway accepts, and how long it waits for it."""

    #: HTTP API quota "Payload size": 10 MB.
    payload_bytes: int = 10 * 1024 * 1024
    #: HTTP API quota "Total combined size of request line and header values": 10240 bytes.
    head_bytes: int = 10240
    #: How long a connection may go without a complete request head (at its start, or
    #: between keep-alive requests) before the gateway closes it.
    idle_timeout_s: float = 30.0
    #: How long the gateway waits for a request's whole body once its head has arrived.
    body_timeout_s: float = 10.0

    @property
    def header_line_bytes(self) -> int:
        # The quota counts header values only, so the parser gets room to let the handler
        # measure them; the request line gets exactly the quota (a longer URL alone breaks
        # it), which is also how a parser LineTooLong tells one from the other.
        return 2 * self.head_bytes


#: The gateway's messages, fixed: Python 3.13 renamed some statuses' phrases after RFC 9110
#: ("Content Too Large"), and what the gateway says must not depend on the Python it runs on.
_MESSAGES: dict[int, str] = {
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "Request Entity Too Large",
    HTTPStatus.REQUEST_URI_TOO_LONG: "Request-URI Too Long",
}


def gateway_error(
    status: int, message: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    """An answer of the gateway's own, as API Gateway writes them: {"message":"Not Found"}."""
    text = message if message is not None else _MESSAGES.get(status, HTTPStatus(status).phrase)
    body = json.dumps({"message": text}, separators=(",", ":"))
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def head_too_large(request: web.BaseRequest, limit: int) -> web.Response | None:
    """414 when the request line alone is over the quota, 431 when its line and header
    values together are; None within it."""
    major, minor = request.version
    line = len(request.method) + len(request.raw_path.encode()) + len(f"  HTTP/{major}.{minor}")
    if line > limit:
        return _closing(gateway_error(HTTPStatus.REQUEST_URI_TOO_LONG))
    if line + sum(len(value) for _, value in request.raw_headers) > limit:
        return _closing(gateway_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE))
    return None


async def read_body(request: web.BaseRequest, limits: GatewayLimits) -> bytes | web.Response:
    """The request's body, or the gateway's answer when it is too large (413), does not
    arrive in time (408, and the connection is closed) or is malformed (400)."""
    declared = request.content_length
    if declared is not None and declared > limits.payload_bytes:
        return _closing(gateway_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE))
    if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limits.payload_bytes:
                    return _closing(gateway_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE))
                chunks.append(chunk)
    except TimeoutError:
        logger.info(
            "%s %s: no whole body within %ss", request.method, request.path, limits.body_timeout_s
        )
        # A slow client may still be sending: read and drop it for a while (_closing), so
        # that it gets this answer rather than a reset of a close with its bytes unread.
        return _closing(gateway_error(HTTPStatus.REQUEST_TIMEOUT))
    except HttpProcessingError as exc:
        logger.info("%s %s: malformed body: %s", request.method, request.path, exc.message)
        return await _answer_and_close(request, gateway_error(HTTPStatus.BAD_REQUEST))
    return b"".join(chunks)


def _closing(response: web.Response) -> web.Response:
    # The rest of the request is not read: the connection cannot carry another one. aiohttp
    # still reads (and drops) what the client goes on sending for a while, so that a client
    # that writes its whole body before reading gets this answer, not a reset.
    response.force_close()
    return response


async def _answer_and_close(request: web.BaseRequest, response: web.Response) -> web.Response:
    """Send ``response`` and close at once: the body cannot be read on (it is malformed), so
    there is nothing to wait for (the transport still flushes the answer before it closes)."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


class _GatewayProtocol(web.RequestHandler):
    """aiohttp's connection protocol, answering what its parser refuses in JSON."""

    def __init__(self, manager: web.Server, *, limits: GatewayLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 and not isinstance(exc, HttpProcessingError):
            self.log_exception("the gateway failed on %s", request.path, exc_info=exc)
        else:
            status = self._status_of(exc, status)
            reason = exc.message if isinstance(exc, HttpProcessingError) else exc
            logger.info("refused a request from %s: %s %s", request.remote, status, reason)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already sent on this connection")
        response = gateway_error(status)
        response.force_close()
        return response

    def _status_of(self, exc: BaseException | None, status: int) -> int:
        if isinstance(exc, LineTooLong):
            request_line = exc.args[1] == self._limits.head_bytes
            return (
                HTTPStatus.REQUEST_URI_TOO_LONG
                if request_line
                else HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            )
        if isinstance(exc, BadHttpMethod):
            # RFC 9110 9.1: a method the server does not recognise is 501.
            return HTTPStatus.NOT_IMPLEMENTED
        return status


class GatewayServer(web.Server):
    """aiohttp's low-level server with the gateway's protocol and limits: serve it with
    ``web.ServerRunner``."""

    def __init__(
        self, handler: Any, limits: GatewayLimits, *, access_log: logging.Logger | None = None
    ) -> None:
        self._protocol_args: dict[str, Any] = {
            "limits": limits,
            "access_log": access_log,
            "keepalive_timeout": limits.idle_timeout_s,
            "lingering_time": limits.body_timeout_s,
            "max_line_size": limits.head_bytes,
            "max_field_size": limits.header_line_bytes,
            # API Gateway passes a compressed body as it came; aiohttp would inflate it.
            "auto_decompress": False,
        }
        super().__init__(handler)

    def __call__(self) -> web.RequestHandler:
        return _GatewayProtocol(self, loop=asyncio.get_running_loop(), **self._protocol_args)
