"""What the gateway checks of OpenAI requests before it forwards them.

Only the fields the gateway relies on (the texts to inspect, `stream`) are typed; everything else
passes through untouched (`extra="allow"`), so new OpenAI parameters need no gateway release.
Strict mode: `"stream": "yes"` is a client bug to report, not a value to coerce.
"""

from __future__ import annotations

import functools
from typing import Annotated, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from gateway.errors import INVALID_JSON, INVALID_REQUEST, INVALID_UTF8, GatewayError

RequestModel = TypeVar("RequestModel", bound=BaseModel)

_PASS_THROUGH = ConfigDict(extra="allow", strict=True)


class ContentPart(BaseModel):
    model_config = _PASS_THROUGH
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = _PASS_THROUGH
    role: str
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(BaseModel):
    model_config = _PASS_THROUGH
    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    stream: bool = False

    def texts(self) -> list[str]:
        """Every text the policy's input stages inspect: all message contents and text parts."""
        texts = []
        for message in self.messages:
            if isinstance(message.content, str):
                texts.append(message.content)
            elif message.content:
                texts += [part.text for part in message.content if part.text]
        return texts


class CompletionRequest(BaseModel):
    model_config = _PASS_THROUGH
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    stream: bool = False

    def texts(self) -> list[str]:
        # Token-id prompts carry no text to inspect here.
        return [self.prompt] if isinstance(self.prompt, str) else [p for p in self.prompt if isinstance(p, str)]


class EmbeddingRequest(BaseModel):
    model_config = _PASS_THROUGH
    model: str
    input: str | list[str] | list[int] | list[list[int]]

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else [i for i in self.input if isinstance(i, str)]


def completion_texts(document: object) -> list[str]:
    """The texts of a (non-streamed) chat or text completion response."""
    if not isinstance(document, dict):
        return []
    texts = []
    for choice in document.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            texts.append(message["content"])
        if isinstance(choice.get("text"), str):
            texts.append(choice["text"])
    return texts


def stream_event_text(event: bytes) -> tuple[str, bool]:
    """The completion text an SSE event adds (chat delta content or completion text), and whether
    it is the final `[DONE]`."""
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
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                parts.append(delta["content"])
            elif isinstance(choice, dict) and isinstance(choice.get("text"), str):
                parts.append(choice["text"])
    return "".join(parts), False


@functools.cache
def _adapter(model: type[BaseModel]) -> TypeAdapter:
    return TypeAdapter(model)


def parse_request(model: type[RequestModel], body: bytes) -> RequestModel:
    """Validate `body` as `model`, or raise the coded error that says precisely what is wrong."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GatewayError(
            INVALID_UTF8, f"The request body is not valid UTF-8 (byte offset {exc.start})."
        ) from None
    try:
        return _adapter(model).validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise GatewayError(INVALID_JSON, f"The request body is not valid JSON: {first['ctx']['error']}.") from None
        if first["type"] == "model_type":
            raise GatewayError(INVALID_REQUEST, "The request body must be a JSON object.") from None
        param = ".".join(str(part) for part in first["loc"])
        raise GatewayError(INVALID_REQUEST, f"Invalid field `{param}`: {first['msg']}.", param=param) from None
