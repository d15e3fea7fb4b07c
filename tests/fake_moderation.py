"""A fake moderation service: a real aiohttp HTTP server on a loopback port, in a thread of its own.

`POST /v1/moderations` answers in the OpenAI format, `POST /webhook` in a webhook format of ours
(the text is read from `document.text` or `text`). Scores come from trigger words in the text (`TRIGGERS`).
`behaviour` makes every request fail in one way, for fault injection; the server records what it
saw (requests, headers, bodies, the most requests in flight at once, clients that went away).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from tests.loopback import LoopbackServer

# A word in the text → the OpenAI category it triggers, at score HIT.
TRIGGERS = {"hateful": "hate", "menace": "harassment/threatening", "gore": "violence/graphic",
            "contraband": "illicit"}
HIT, MISS = 0.9, 0.01
OPENAI_CATEGORIES = ("sexual", "sexual/minors", "hate", "hate/threatening", "harassment", "harassment/threatening",
                     "self-harm", "self-harm/intent", "self-harm/instructions", "violence", "violence/graphic",
                     "illicit", "illicit/violent")

Behaviour = Literal["ok", "hang", "slow", "error500", "garbage", "wrong-shape", "close", "no-scores"]


@dataclass
class Seen:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    bodies: list[dict] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    clients_gone: int = 0


class FakeModeration(LoopbackServer):
    """`behaviour`: ok (answer), hang (no answer for 30 s, noticing a client that leaves), slow (answer
    after `delay_s`), error500, garbage (HTTP 200 with an HTML page), wrong-shape (JSON, but not a
    moderation answer), close (drop the connection without answering), no-scores (OpenAI format:
    categories and `flagged`, no `category_scores`)."""

    def __init__(self) -> None:
        super().__init__()
        self.behaviour: Behaviour = "ok"
        self.delay_s = 0.0
        self.seen = Seen()

    def wait_for_client_gone(self, timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.seen.clients_gone:
                return True
            time.sleep(0.01)
        return False

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/moderations", self._openai)
        app.router.add_post("/webhook", self._webhook)

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        async def answer(text: str) -> web.Response:
            hits = {category for word, category in TRIGGERS.items() if word in text.lower()}
            result: dict = {"flagged": bool(hits), "categories": {name: name in hits for name in OPENAI_CATEGORIES}}
            if self.behaviour != "no-scores":
                result["category_scores"] = {name: HIT if name in hits else MISS for name in OPENAI_CATEGORIES}
            return web.json_response({"id": "modr-fake", "model": "fake-moderation", "results": [result]})

        return await self._serve(request, lambda body: answer(body["input"]))

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        async def answer(text: str) -> web.Response:
            hateful = "hateful" in text.lower()
            return web.json_response({"result": {"score": HIT if hateful else MISS,
                                                 "labels": {"hate": hateful, "violence": "gore" in text.lower()},
                                                 "spans": [{"score": HIT if hateful else MISS}]}})

        # The text is at `document.text`, or at `text` (the hook's default template).
        return await self._serve(request, lambda body: answer(body.get("document", body)["text"]))

    async def _serve(self, request: web.Request, answer) -> web.StreamResponse:
        body = await request.json()
        with self.seen.lock:
            self.seen.requests += 1
            self.seen.bodies.append(body)
            self.seen.headers.append({name.lower(): value for name, value in request.headers.items()})
            self.seen.in_flight += 1
            self.seen.max_in_flight = max(self.seen.max_in_flight, self.seen.in_flight)
        try:
            return await self._behave(request, body, answer)
        finally:
            with self.seen.lock:
                self.seen.in_flight -= 1

    async def _behave(self, request: web.Request, body: dict, answer) -> web.StreamResponse:
        behaviour = self.behaviour
        if behaviour == "hang":  # polls: aiohttp does not cancel a handler whose client left
            for _ in range(600):
                if request.transport is None or request.transport.is_closing():
                    with self.seen.lock:
                        self.seen.clients_gone += 1
                    return web.Response()
                await asyncio.sleep(0.05)
        if behaviour == "slow":
            await asyncio.sleep(self.delay_s)
        if behaviour == "error500":
            return web.json_response({"error": "moderation model crashed"}, status=500)
        if behaviour == "garbage":
            return web.Response(text="<html><body>moderation</body></html>", content_type="text/html")
        if behaviour == "wrong-shape":
            return web.json_response({"status": "ok"})
        if behaviour == "close":
            request.transport.close()
            return web.Response()
        return await answer(body)
