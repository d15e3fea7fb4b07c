"""Relaying upstream responses to the client: buffered JSON and incremental SSE.

SSE is relayed event by event: each complete event is checked and forwarded as soon as it has
arrived, byte for byte, so the client sees tokens as the model produces them; with a policy, a gate
(enforcement.StreamChecker) inspects events and holds the most recent ones back. A problem in the
middle of a stream cannot change the status line any more, so it ends the stream with an error
event and `[DONE]`.
"""

from __future__ import annotations

import asyncio
import re
from typing import Protocol

import aiohttp
import orjson
from starlette.types import Receive, Scope, Send

from gateway.audit_trail import note_stream
from gateway.errors import POLICY_BLOCKED_OUTPUT, UPSTREAM_BAD_RESPONSE, GatewayError
from gateway.exchange import exchange_of
from gateway.request_body import ClientDisconnected
from gateway.upstream import transport_error

_EVENT_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_SSE_FIELDS = frozenset({b"event", b"id", b"retry"})
DONE_EVENT = b"data: [DONE]\n\n"


class StreamGate(Protocol):
    """Decides when events reach the client: `admit` inspects new events and returns those that may
    be sent now (it may hold some back, or raise GatewayError to end the stream); `release_all`
    returns what it still holds once the stream is over."""

    async def admit(self, events: list[bytes]) -> list[bytes]: ...

    async def release_all(self) -> list[bytes]: ...


class CancelOnDisconnect:
    """`async with CancelOnDisconnect(scope, receive):` cancels its body as soon as the client
    disconnects, and raises `ClientDisconnected` instead.

    Use only once the request body has been read: from then on the next ASGI message can only be
    `http.disconnect`. Cancelling tears down the upstream request, so the model stops generating
    for nobody. The watcher task starts only after `grace_s`: nearly all non-streamed answers come
    back sooner, and a task per request measurably cost proxy throughput.
    """

    def __init__(self, scope: Scope, receive: Receive, grace_s: float = 0.0) -> None:
        self.scope = scope
        self.receive = receive
        self.grace_s = grace_s
        self.disconnected = False
        self._task: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> None:
        self._task = asyncio.current_task()
        if self.grace_s > 0:
            self._timer = asyncio.get_running_loop().call_later(self.grace_s, self._start_watching)
        else:
            self._start_watching()

    def _start_watching(self) -> None:
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        if exc_type is asyncio.CancelledError and self.disconnected and self._task.uncancel() == 0:
            exchange_of(self.scope).client_disconnected = True
            raise ClientDisconnected
        return False


def event_problem(event: bytes) -> str | None:
    """What is wrong with one SSE event (its terminator may be included) for an OpenAI stream, or None."""
    data_lines = []
    for line in event.splitlines():
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if field == b"data":
            data_lines.append(value[1:] if value.startswith(b" ") else value)
        elif field not in _SSE_FIELDS:
            return f"unexpected line in event stream: {line[:60]!r}"
    if not data_lines:
        return None
    payload = b"\n".join(data_lines)
    if payload == b"[DONE]":
        return None
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return f"event data is not JSON: {payload[:60]!r}"
    return None if isinstance(parsed, dict) else "event data is not a JSON object"


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The complete events in `buffer`, each with its terminator, and the incomplete rest."""
    events = []
    start = 0
    for match in _EVENT_BOUNDARY.finditer(buffer):
        events.append(buffer[start:match.end()])
        start = match.end()
    return events, buffer[start:]


def error_event(error: GatewayError, request_id: str) -> bytes:
    return b"data: " + error.body(request_id) + b"\n\n" + DONE_EVENT


class RawResponse:
    """A complete response with exactly the given headers (Starlette's Response adds its own)."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = [*headers, (b"content-length", str(len(body)).encode())]
        self.body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


class SSERelayResponse:
    """Streams an upstream SSE response through, event by event; owns (and closes) `upstream`."""

    def __init__(
        self,
        upstream: aiohttp.ClientResponse,
        headers: list[tuple[bytes, bytes]],
        max_event_bytes: int,
        gate: StreamGate | None = None,
    ) -> None:
        self.upstream = upstream
        self.headers = headers
        self.max_event_bytes = max_event_bytes
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.upstream.status, "headers": self.headers})
        try:
            async with CancelOnDisconnect(scope, receive):
                await self._relay(scope, send)
        except ClientDisconnected:
            pass
        finally:
            # close(), not release(): an unfinished stream must drop the connection so that the
            # upstream notices and stops generating.
            self.upstream.close()

    async def _relay(self, scope: Scope, send: Send) -> None:
        pending = b""
        try:
            async for chunk in self.upstream.content.iter_any():
                events, pending = split_events(pending + chunk)
                if events and self.gate is None:  # a gate notes them itself, with their text
                    note_stream(exchange_of(scope), None, events)  # text and usage, for the audit and token limits
                if events:
                    await self._send_checked(events, send)
                if len(pending) > self.max_event_bytes:
                    raise GatewayError(UPSTREAM_BAD_RESPONSE, "The model server sent an oversized stream event.")
            if pending.strip():
                await self._send_checked([pending], send)
            await self._send_held(send)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except GatewayError as error:
            await self._finish_with_error(scope, send, error)
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self._finish_with_error(scope, send, transport_error(exc, response_started=True))

    async def _finish_with_error(self, scope: Scope, send: Send, error: GatewayError) -> None:
        if error.kind is not POLICY_BLOCKED_OUTPUT:
            try:
                await self._send_held(send)  # what passes inspection reaches the client before the error
            except GatewayError as blocked:
                error = blocked
        await self._end_with_error(scope, send, error)

    async def _send_checked(self, events: list[bytes], send: Send) -> None:
        """Forward the events, in one write, up to the first malformed one, which raises; with a
        gate, only the events it releases."""
        problem = None
        for index, event in enumerate(events):
            problem = event_problem(event)
            if problem:
                events = events[:index]
                break
        if events and self.gate is not None:
            events = await self.gate.admit(events)
        if events:
            await send({"type": "http.response.body", "body": b"".join(events), "more_body": True})
        if problem:
            raise GatewayError(UPSTREAM_BAD_RESPONSE, f"The model server's stream is malformed: {problem}.")

    async def _send_held(self, send: Send) -> None:
        held = await self.gate.release_all() if self.gate is not None else []
        if held:
            await send({"type": "http.response.body", "body": b"".join(held), "more_body": True})

    @staticmethod
    async def _end_with_error(scope: Scope, send: Send, error: GatewayError) -> None:
        exchange = exchange_of(scope)
        exchange.error_code = error.kind.code
        body = error_event(error, exchange.request_id)
        await send({"type": "http.response.body", "body": body, "more_body": False})

