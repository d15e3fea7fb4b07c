"""A fake OpenAI-compatible model server: a real aiohttp HTTP server on a loopback port.

The request's `model` picks a behaviour (see `FakeUpstream._chat`), so that the same client call can
go to the fake directly and through the gateway. It runs in a thread with its own event loop and
records what it observed (request headers, a client that went away) for the tests to assert on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

from tests.loopback import LoopbackServer

STREAM_WORDS = ["Hello", " from", " the", " fake", " model", ",", " 你好", "!"]
SCRIPTED_PREFIX = "say:"
SPLIT_STREAM_PIECES = ["A harmless opening sentence. ", "The word is for", "bidden", "-output!"]


@dataclass
class Observations:
    lock: threading.Lock = field(default_factory=threading.Lock)
    events: list[tuple[str, str]] = field(default_factory=list)  # (event, model)
    last_headers: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    arrivals: list[tuple[str, float]] = field(default_factory=list)  # (model, monotonic time), resilience models

    def arrive(self, model: str) -> int:
        """Notes a request for `model`; returns how many came before it."""
        with self.lock:
            earlier = sum(1 for seen, _ in self.arrivals if seen == model)
            self.arrivals.append((model, time.monotonic()))
            return earlier

    def arrival_times(self, model: str) -> list[float]:
        with self.lock:
            return [when for seen, when in self.arrivals if seen == model]

    def record(self, event: str, model: str) -> None:
        with self.lock:
            self.events.append((event, model))

    def mark(self) -> int:
        """A position in the event list: pass it to `wait_for` to ignore what happened before."""
        with self.lock:
            return len(self.events)

    def seen(self, event: str, model: str, since: int = 0) -> bool:
        with self.lock:
            return (event, model) in self.events[since:]

    def wait_for(self, event: str, model: str, timeout: float = 5.0, since: int = 0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.seen(event, model, since):
                return True
            time.sleep(0.01)
        return False


def scripted_model(pieces: list[str]) -> str:
    """A model name that makes the fake answer with `pieces` joined, or stream them one event each.
    The answer rides in the model name because the gateway never inspects that field: what the
    model "says" reaches the output side untouched by input inspection."""
    encoded = base64.urlsafe_b64encode(json.dumps(pieces).encode()).decode().rstrip("=")
    return SCRIPTED_PREFIX + encoded


def scripted_pieces(model: str) -> list[str]:
    encoded = model.removeprefix(SCRIPTED_PREFIX)
    return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))


def completion_body(model: str, content: str) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13},
    }


def chunk_event(model: str, delta: dict, finish_reason: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"


class FakeUpstream(LoopbackServer):
    def __init__(self) -> None:
        super().__init__()
        self.observed = Observations()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)

    def _observe(self, request: web.Request) -> None:
        with self.observed.lock:
            self.observed.last_headers = {k.lower(): v for k, v in request.headers.items()}
            self.observed.requests += 1

    async def _models(self, request: web.Request) -> web.Response:
        self._observe(request)
        return web.json_response({"object": "list", "data": [{"id": "echo", "object": "model", "owned_by": "fake"}]})

    async def _embeddings(self, request: web.Request) -> web.Response:
        self._observe(request)
        body = await request.json()
        return web.json_response({
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.125]}],
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        })

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        self._observe(request)
        body = await request.json()
        if body.get("stream"):
            return await self._stream(request, body["model"], delay=0.0)
        return web.json_response({
            "id": "cmpl-fake", "object": "text_completion", "created": 1700000000, "model": body["model"],
            "choices": [{"index": 0, "text": " world", "finish_reason": "stop"}],
        })

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        """Behaviour by model name:

        echo           answers with the last user message (streams word by word if asked)
        slow-stream    streams a chunk every 100 ms for 5 s; records `stream_done` or `client_gone`
        hang           sends nothing for 30 s, noticing a client that goes away (`client_gone`)
        garbage        HTTP 200 with an HTML page
        garbage-stream a valid event, then an event whose data is not JSON
        cut-stream     two events, then the connection is dropped mid-stream
        stall-stream   one event, then silence for 30 s
        split-stream   streams SPLIT_STREAM_PIECES (a sentence, then a term split across three events),
                       then nothing for 5 s unless the client leaves
        error500       HTTP 500 with an error body
        bad-request    HTTP 400 with an OpenAI-style error body (to be passed through)
        say:*          answers with the pieces `scripted_model(pieces)` encoded, joined (or one event each)
        503-once-*     HTTP 503 for the first request with this exact model name, then like echo
        retry-after-N-*  the same, with `Retry-After: N` on the 503
        always-503*    HTTP 503 every time
        """
        self._observe(request)
        body = await request.json()
        model = body["model"]
        stream = body.get("stream", False)
        if model == "echo" and not stream:
            return web.json_response(completion_body(model, "echo: " + body["messages"][-1]["content"]))
        if model.startswith(SCRIPTED_PREFIX):
            pieces = scripted_pieces(model)
            if not stream:
                return web.json_response(completion_body(model, "".join(pieces)))
            return await self._stream(request, model, delay=0.0, words=pieces)
        if model == "echo":
            return await self._stream(request, model, delay=0.0)
        if model == "slow-stream":
            return await self._stream(request, model, delay=0.1, repeat=6)
        if model == "hang":
            await self._idle_until_client_leaves(request, model, 30)
            return web.json_response(completion_body(model, "too late"))
        if model == "garbage":
            return web.Response(text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        if model == "garbage-stream":
            response = await self._start_sse(request)
            await response.write(chunk_event(model, {"role": "assistant", "content": "ok"}))
            await response.write(b"data: <html>not json</html>\n\n")
            await response.write_eof()
            return response
        if model == "cut-stream":
            response = await self._start_sse(request)
            await response.write(chunk_event(model, {"role": "assistant", "content": "part"}))
            await response.write(chunk_event(model, {"content": "ial"}))
            await asyncio.sleep(0.05)
            request.transport.close()
            return response
        if model == "split-stream":
            response = await self._start_sse(request)
            for piece in SPLIT_STREAM_PIECES:
                await response.write(chunk_event(model, {"content": piece}))
                await asyncio.sleep(0.05)
            # Keeps generating until the client (the gateway) hangs up, as a model would.
            await self._idle_until_client_leaves(request, model, 5)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        if model == "stall-stream":
            response = await self._start_sse(request)
            await response.write(chunk_event(model, {"role": "assistant", "content": "thinking"}))
            await self._idle_until_client_leaves(request, model, 30)
            return response
        if model == "error500":
            return web.json_response({"error": {"message": "model crashed"}}, status=500)
        if model == "bad-request":
            return web.json_response(
                {"error": {"message": "unknown model", "type": "invalid_request_error", "code": "model_not_found"}},
                status=400,
            )
        if model.startswith(("503-once-", "retry-after-", "always-503")):
            if self.observed.arrive(model) == 0 or model.startswith("always-503"):
                headers = {"Retry-After": model.split("-")[2]} if model.startswith("retry-after-") else None
                return web.json_response({"error": {"message": "overloaded"}}, status=503, headers=headers)
            if stream:
                return await self._stream(request, model, delay=0.0)
            return web.json_response(completion_body(model, "echo: " + body["messages"][-1]["content"]))
        raise web.HTTPNotFound(text=f"fake upstream has no model {model!r}")

    async def _idle_until_client_leaves(self, request: web.Request, model: str, seconds: float) -> None:
        """Send nothing for `seconds`, noticing (and recording) a client that closes the connection."""
        for _ in range(int(seconds / 0.05)):
            if request.transport is None or request.transport.is_closing():
                self.observed.record("client_gone", model)
                return
            await asyncio.sleep(0.05)

    @staticmethod
    async def _start_sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        return response

    async def _stream(self, request: web.Request, model: str, delay: float, repeat: int = 1,
                      words: list[str] = STREAM_WORDS) -> web.StreamResponse:
        response = await self._start_sse(request)
        try:
            await response.write(chunk_event(model, {"role": "assistant", "content": ""}))
            for word in words * repeat:
                await asyncio.sleep(delay)
                await response.write(chunk_event(model, {"content": word}))
            await response.write(chunk_event(model, {}, finish_reason="stop"))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            self.observed.record("stream_done", model)
        except (ConnectionError, asyncio.CancelledError):
            self.observed.record("client_gone", model)
            raise
        return response
