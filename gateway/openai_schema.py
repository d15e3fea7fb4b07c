"""What the gateway checks of OpenAI requests before it forwards them, and the texts of answers.

Only the fields the gateway relies on (messages, prompts, inputs, `stream`) are typed; everything
else passes through as sent (`extra="allow"`), so new OpenAI parameters need no gateway release, and
gateway/request_texts.py walks all of it for the texts the model reads. Strict mode: `"stream": "yes"`
is a client bug to report, not a value to coerce.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from pydantic import BaseModel, Field, PrivateAttr

from gateway.openai_messages import PASS_THROUGH, ChatMessage
from gateway.request_texts import RequestTexts, walk_chat, walk_completion, walk_embedding


class _InspectedRequest(BaseModel):
    """A request whose texts the input stages read: `walk()` lists them (gateway/request_texts.py)."""

    model_config = PASS_THROUGH
    _walked: RequestTexts | None = PrivateAttr(default=None)

    def _walk(self) -> RequestTexts:
        raise NotImplementedError

    def walk(self) -> RequestTexts:
        """Every text the upstream reads in this request, and what it carries that no stage can read
        (walked once; the audit, the input stages and the shadow rollout share it)."""
        if self._walked is None:
            self._walked = self._walk()
        return self._walked

    def texts(self) -> list[str]:
        """Every text the upstream reads, each alone, in the order it reads them."""
        return [text.text for text in self.walk().texts]


class ChatCompletionRequest(_InspectedRequest):
    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    stream: bool = False

    def _walk(self) -> RequestTexts:
        return walk_chat(dict(self))


class CompletionRequest(_InspectedRequest):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    stream: bool = False

    def _walk(self) -> RequestTexts:
        return walk_completion(dict(self))


class EmbeddingRequest(_InspectedRequest):
    model: str
    input: str | list[str] | list[int] | list[list[int]]

    def _walk(self) -> RequestTexts:
        return walk_embedding(dict(self))


def completion_texts(document: object) -> list[str]:
    """The texts of a (non-streamed) chat or text completion response: per choice, the message's
    reasoning, content, refusal and the arguments of its tool or function calls, or the completion's text."""
    if not isinstance(document, dict):
        return []
    texts = []
    for choice in document.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            texts += [message[key] for key in _ANSWER_TEXT_KEYS if isinstance(message.get(key), str)]
            texts += [arguments for arguments, _ in _call_arguments(message)]
        if isinstance(choice.get("text"), str):
            texts.append(choice["text"])
    return texts


def stream_event_text(event: bytes) -> tuple[str, bool]:
    """The completion text an SSE event adds (a chat delta's reasoning, content, refusal and call
    arguments, or a completion's text), and whether it is the final `[DONE]`.

    Tool-call arguments arrive in fragments that continue each other, so they are returned as they
    come; a new call (its delta names the function) starts on a new line, so that the arguments of two
    calls, or a call and the content before it, are not read as one word."""
    parts = []
    for line in event.splitlines():
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return "".join(parts), True
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        for choice in document.get("choices") or [] if isinstance(document, dict) else []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict):
                parts += [delta[key] for key in _ANSWER_TEXT_KEYS if isinstance(delta.get(key), str)]
                parts += [("\n" if starts_call else "") + arguments
                          for arguments, starts_call in _call_arguments(delta)]
            elif isinstance(choice, dict) and isinstance(choice.get("text"), str):
                parts.append(choice["text"])
    return "".join(parts), False


# Text an answer's message (or a stream's delta) carries besides its calls, in the order it is written.
_ANSWER_TEXT_KEYS = ("reasoning_content", "reasoning", "content", "refusal")


def _call_arguments(message: dict) -> list[tuple[str, bool]]:
    """The arguments of a message's (or delta's) tool calls and legacy function call, each with
    whether it begins a call (the function's name comes with it)."""
    calls = [call.get("function") for call in message.get("tool_calls") or [] if isinstance(call, dict)]
    calls.append(message.get("function_call"))
    return [(call["arguments"], isinstance(call.get("name"), str)) for call in calls
            if isinstance(call, dict) and isinstance(call.get("arguments"), str)]
