"""A fake guard model server: a real aiohttp HTTP server on a loopback port, in a thread of its own.

`POST /v1/chat/completions` answers as an OpenAI-compatible server serving a guard model, in the exact
output format of the family its `model` names (qwen3guard..., llama-guard..., shieldgemma...,
gpt-oss-safeguard...). The verdict comes from trigger words in the judged text (a response's when one is
judged, else the prompt's): `UNSAFE` words are unsafe in their category, `BORDERLINE` is Qwen3Guard's
Controversial (safe to the others), and an assistant text with "cannot help" is a refusal.

`POST /score` stands in for the classifier as a webhook moderation stage: `{"unsafe": p}` where the text
says `p=0.37` (0.0 when it says nothing), so that a test puts a text exactly where it wants in a band.

`behaviour` makes every answer go wrong in one way; the server records the bodies it saw.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from tests.loopback import LoopbackServer

# trigger word → (Qwen3Guard category, Llama Guard code, ShieldGemma harm, gpt-oss-safeguard category)
UNSAFE = {
    "detonator": ("Violent", "S9", "dangerous", "violence"),
    "slur": ("Unethical Acts", "S10", "hate", "hate"),
    "counterfeit": ("Non-violent Illegal Acts", "S2", "dangerous", "illegal"),
}
BORDERLINE = "borderline"
P_YES_UNSAFE, P_YES_SAFE = 0.92, 0.03

Behaviour = Literal["ok", "slow", "hang", "error500", "malformed", "refusing", "unknown-category", "no-logprobs",
                    "empty"]


@dataclass
class Seen:
    lock: threading.Lock = field(default_factory=threading.Lock)
    bodies: list[dict] = field(default_factory=list)

    @property
    def requests(self) -> int:
        with self.lock:
            return len(self.bodies)


class FakeGuard(LoopbackServer):
    """`behaviour`: ok; slow (answer after `delay_s`); hang (no answer for 30 s); error500; malformed (the
    family's format, mangled); refusing (the model declines to judge, in prose); unknown-category (a
    category the family does not have); no-logprobs (ShieldGemma's word without logprobs); empty (no choices)."""

    def __init__(self) -> None:
        super().__init__()
        self.behaviour: Behaviour = "ok"
        self.delay_s = 0.0
        self.seen = Seen()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/score", self._score)

    async def _score(self, request: web.Request) -> web.Response:
        text = (await request.json())["text"]
        found = re.search(r"p=([0-9.]+)", text)
        return web.json_response({"unsafe": float(found.group(1)) if found else 0.0})

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self.seen.lock:
            self.seen.bodies.append(body)
        behaviour = self.behaviour
        if behaviour == "hang":
            await asyncio.sleep(30)
        if behaviour == "slow":
            await asyncio.sleep(self.delay_s)
        if behaviour == "error500":
            return web.json_response({"error": {"message": "CUDA out of memory"}}, status=500)
        if behaviour == "empty":
            return web.json_response({"id": "x", "object": "chat.completion", "choices": []})
        model = body["model"]
        family = next(name for name in ("qwen3guard", "llama-guard", "shieldgemma", "gpt-oss-safeguard")
                      if model.lower().startswith(name))
        judged, is_response, harm = judged_text(family, body["messages"])
        content, logprobs, reasoning = self._answer(family, judged, is_response, harm)
        if behaviour == "refusing":
            content, logprobs = "I'm sorry, but I can't help with evaluating that request.", None
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
        if logprobs is not None and behaviour != "no-logprobs":
            choice["logprobs"] = logprobs
        return web.json_response({"id": "chatcmpl-guard", "object": "chat.completion", "model": model,
                                  "choices": [choice], "usage": {"prompt_tokens": 100, "completion_tokens": 5}})

    def _answer(self, family: str, text: str, is_response: bool,
                harm: str | None) -> tuple[str, dict | None, str | None]:
        lowered = text.lower()
        hit = next((categories for word, categories in UNSAFE.items() if word in lowered), None)
        mangled = self.behaviour == "malformed"
        unknown = self.behaviour == "unknown-category"
        if family == "qwen3guard":
            safety = "Unsafe" if hit else "Controversial" if BORDERLINE in lowered else "Safe"
            category = "Alien Invasion" if unknown else hit[0] if hit else "Politically Sensitive Topics" \
                if safety == "Controversial" else "None"
            lines = [f"Safety: {'Maybe' if mangled else safety}", f"Categories: {category}"]
            if is_response:
                lines.append(f"Refusal: {'Yes' if 'cannot help' in lowered else 'No'}")
            return "\n".join(lines), None, None
        if family == "llama-guard":
            if mangled:
                return "\n\nunsafe S1", None, None
            return ("\n\nunsafe\n" + ("S99" if unknown else hit[1])) if hit else "\n\nsafe", None, None
        if family == "shieldgemma":
            violates = hit is not None and hit[2] == harm
            word = "Maybe" if mangled else "Yes" if violates else "No"
            p_yes = P_YES_UNSAFE if violates else P_YES_SAFE
            logprobs = {"content": [{"token": word, "logprob": math.log(max(p_yes, 1 - p_yes)),
                                     "top_logprobs": [{"token": "Yes", "logprob": math.log(p_yes)},
                                                      {"token": "No", "logprob": math.log(1 - p_yes)}]}]}
            return word, logprobs, None
        reasoning = "The policy's categories were checked against the content."
        if mangled:
            return '{"violation": "maybe"}', None, reasoning
        if hit:
            return f'{{"violation": 1, "category": "{"weapons" if unknown else hit[3]}"}}', None, reasoning
        return '{"violation": 0, "category": null}', None, reasoning


SHIELDGEMMA_HARMS = {"Dangerous Content": "dangerous", "Harassment": "harassment", "Hate Speech": "hate",
                     "Sexually Explicit Information": "sexual"}


def judged_text(family: str, messages: list[dict]) -> tuple[str, bool, str | None]:
    """The text the guard is asked about (the response, if there is one), whether it is a response, and
    (ShieldGemma) the harm type the prompt asks about."""
    if family == "shieldgemma":
        prompt = messages[-1]["content"]
        harm = SHIELDGEMMA_HARMS[re.search(r'^\* "No ([A-Za-z ]+)"', prompt, re.MULTILINE).group(1)]
        response = re.search(r"Chatbot Response: (.*?)\n<end_of_turn>", prompt, re.DOTALL)
        if response:
            return response.group(1), True, harm
        return re.search(r"Human Question: (.*?)\n<end_of_turn>", prompt, re.DOTALL).group(1), False, harm
    if family == "gpt-oss-safeguard":
        content = messages[-1]["content"].split("\n\n", 1)[1]
        if "\n\nAssistant: " in content:
            return content.split("\n\nAssistant: ", 1)[1], True, None
        return content, False, None
    return messages[-1]["content"], messages[-1]["role"] == "assistant", None
