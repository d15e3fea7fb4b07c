"""Every string the upstream model reads as text in an OpenAI request: the one walker that lists them.

The input stages inspect each text this module finds alone and, joined with "\\n" in the order the
model reads them, the texts it reads together (a conversation; a prompt with its suffix), so that a
phrase split across messages, roles or parts is still one phrase. "\\n" glues nothing: the blacklist
reads it as a word separator between Latin words ("pipe\\nbomb" is "pipe bomb", "pipe\\nbombastic"
stays two words) and normalisation joins CJK characters across it ("制作\\n炸弹" is "制作炸弹").

What the model reads, per route (decided from the OpenAI request schemas and from what chat
templates render; a field not listed under "not read" is inspected):

chat completions, in this order (templates put tool definitions in the system prompt):
    tools[]                  each tool whole: every key and string of its definition (name,
                             description, parameters with their property names, descriptions, enums,
                             defaults, titles) as one text, since the model reads the JSON of it
    functions[]              (legacy) the same
    response_format          the json_schema (name, description, schema) as one text
    tool_choice, function_call   the named function
    messages[]               every string of every message, in its order (name, reasoning, content,
                             refusal, function_call, tool_calls, then other keys): content strings and
                             the text of `text` and `refusal` parts, file parts' filename, tool calls'
                             id, name and arguments (and, where the arguments' JSON has escapes, its
                             decoded strings), tool_call_id, and the strings of keys the schema does not
                             name (vendor fields such as reasoning_content, which templates render)
    prediction               the predicted content
    other top-level keys     every string (vendor extensions: chat_template, documents, guided_choice...)
completions: prompt (each of a list, each read with the suffix), suffix, other top-level keys.
embeddings: input (each of a list alone: an embedding reads one input), other top-level keys.

Not read by the model as text, so not inspected: role, the `type` of parts, tools and calls, image
URLs and detail, audio data and format, file data and ids, and the top-level parameters in
`_NOT_READ` (model, user, stop, metadata...). `stop` only cuts the answer; `user`, `metadata`,
`safety_identifier` and `prompt_cache_key` are for the provider's records and caches, never in the
context (a server that put `metadata` into the prompt would need it moved out of that list).

Content the gateway cannot read is listed, not inspected, for the policy to decide on:
- non-text: image, audio, file and video parts, and prompts or inputs given as token ids;
- unknown: a content part of a type the schema does not have, or a key a part's type does not have.
  Parts are a closed schema: the text the model reads in an unknown part cannot be told apart.
  Messages and the top level are open (vendors extend them), so their unknown keys are inspected.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel

from gateway.errors import INSPECTION_BUDGET_EXCEEDED, GatewayError

Location = tuple[str | int, ...]

# Joins the texts the model reads together: a word separator for every stage, a CJK joiner for normalisation.
JOIN_SEPARATOR = "\n"

# Top-level parameters whose strings the model does not read (sampling settings, routing, records).
_NOT_READ = {
    "chat": frozenset({"model", "stream", "stream_options", "stop", "user", "metadata", "store", "service_tier",
                       "logit_bias", "modalities", "audio", "reasoning_effort", "verbosity", "prompt_cache_key",
                       "safety_identifier", "parallel_tool_calls", "n", "seed", "temperature", "top_p",
                       "max_tokens", "max_completion_tokens", "presence_penalty", "frequency_penalty",
                       "logprobs", "top_logprobs"}),
    "completions": frozenset({"model", "stream", "stream_options", "stop", "user", "echo", "best_of", "logit_bias",
                              "logprobs", "n", "seed", "temperature", "top_p", "max_tokens", "presence_penalty",
                              "frequency_penalty"}),
    "embeddings": frozenset({"model", "user", "encoding_format", "dimensions"}),
}
# A message's keys in the order templates render them; other keys follow in the request's order.
_MESSAGE_ORDER = ("name", "reasoning_content", "reasoning", "content", "refusal", "function_call", "tool_calls")
# Content parts: each type's one field, and for the non-text types the keys that field may have.
_TEXT_PARTS = {"text": "text", "refusal": "refusal"}
_NON_TEXT_PARTS = {
    "image_url": frozenset({"url", "detail"}),
    "input_audio": frozenset({"data", "format"}),
    "file": frozenset({"file_data", "file_id", "filename"}),
    "audio_url": frozenset({"url"}),  # vLLM
    "video_url": frozenset({"url"}),  # vLLM
}
_READ_IN_NON_TEXT_PART = {"file": "filename"}
_CHOICE_SETTINGS = frozenset({"auto", "none", "required"})
# The values of `type` in tool calls, tool choices and predictions.
_SCHEMA_TYPES = frozenset({"function", "custom", "allowed_tools", "content"})
# Key names shown in paths (errors, audit records) as they are; others are client text and are not repeated.
_SHOWN_KEY = re.compile(r"[A-Za-z0-9_$-]{1,64}")


def format_location(location: Location) -> str:
    """`("messages", 2, "content", 0, "text")` → `messages[2].content[0].text`."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + (part if _SHOWN_KEY.fullmatch(part) else "<key>")
    return path


class RequestText(NamedTuple):  # a tuple: a request can have tens of thousands of them
    location: Location
    text: str
    # True: the text is one string of the request, which redaction can mask in place. False: several
    # strings read as one (a tool definition): it can block or flag the request, not be masked.
    one_string: bool = True


@dataclass
class RequestTexts:
    texts: list[RequestText] = field(default_factory=list)
    # Indexes into `texts` of the texts the model reads together, in its order: each group of two or
    # more is also inspected joined.
    together: list[list[int]] = field(default_factory=list)
    non_text: list[Location] = field(default_factory=list)
    unknown: list[Location] = field(default_factory=list)
    messages: int = 0

    def joined(self) -> list[str]:
        return [JOIN_SEPARATOR.join(self.texts[index].text for index in group)
                for group in self.together if len(group) > 1]

    def add(self, location: Location, text: str, one_string: bool = True) -> None:
        if text:
            self.texts.append(RequestText(location, text, one_string))


# A request with more characters, or more separate texts, than this to inspect is heavy: heavy requests
# take turns, and their stages run in the background (see InspectionBudget.is_heavy).
HEAVY_INSPECTION_CHARS = 64 * 1024
HEAVY_INSPECTION_TEXTS = 256


@dataclass(frozen=True)
class InspectionBudget:
    """The most a request may ask the input stages to read: characters, messages, texts."""

    max_chars: int
    max_messages: int
    max_texts: int
    # One heavy inspection at a time per process: two clients sending megabyte prompts back to back
    # would otherwise keep both cores (and the GIL) busy, and every other request would wait for them.
    _heavy: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1), compare=False, repr=False)

    @staticmethod
    def is_heavy(request: RequestTexts) -> bool:
        """Whether the request asks for far more inspection than most: its stages then run at a lower
        priority (the classifier's background lane, the blacklist's scan process), so that it pays for
        its size in its own latency rather than in everyone else's."""
        if len(request.texts) > HEAVY_INSPECTION_TEXTS:
            return True
        chars = 0
        for text in request.texts:
            chars += len(text.text)
            if chars > HEAVY_INSPECTION_CHARS:
                return True
        return False

    def turn(self, heavy: bool) -> contextlib.AbstractAsyncContextManager[object]:
        """What a request's inspection runs inside: its turn among the heavy ones, or nothing to wait for."""
        return self._heavy if heavy else contextlib.nullcontext()

    def check(self, request: RequestTexts) -> None:
        """Raise the coded error (413) for a request beyond the budget: nothing has been inspected yet."""
        if request.messages > self.max_messages:
            self._refuse(f"{request.messages} messages", "max_messages", self.max_messages)
        if len(request.texts) > self.max_texts:
            self._refuse(f"{len(request.texts)} texts", "max_texts", self.max_texts)
        chars = sum(len(text.text) for text in request.texts)
        if chars > self.max_chars:
            self._refuse(f"{chars} characters of text", "max_inspect_chars", self.max_chars)

    def check_messages(self, body: bytes) -> None:
        """Raise the coded error for a chat request body with more messages than the budget allows,
        counted on a plain parse (a few milliseconds for 10,000 messages) before the validation that
        costs ten times more. A body that does not parse is left to the validation to explain."""
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        messages = document.get("messages") if isinstance(document, dict) else None
        if isinstance(messages, list) and len(messages) > self.max_messages:
            self._refuse(f"{len(messages)} messages", "max_messages", self.max_messages)

    @staticmethod
    def _refuse(found: str, setting: str, limit: int) -> None:
        raise GatewayError(INSPECTION_BUDGET_EXCEEDED,
                           f"The request carries {found} to inspect; this gateway inspects at most {limit} "
                           f"per request (`{setting}`).")


def walk_chat(request: Mapping[str, Any]) -> RequestTexts:
    found = RequestTexts()
    for key in ("tools", "functions"):
        _definitions(found, key, request.get(key))
    response_format = request.get("response_format")
    if isinstance(response_format, Mapping):
        for key, value in response_format.items():
            if key != "type":
                found.add(("response_format", key), _definition_text(value), one_string=False)
    for key in ("tool_choice", "function_call"):
        _choice(found, key, request.get(key))
    messages = request.get("messages") or []
    found.messages = len(messages)
    for index, message in enumerate(messages):
        _message(found, ("messages", index), _fields(message))
    _strings(found, ("prediction",), _without_type(request.get("prediction")))
    _unnamed_keys(found, request, "chat", {"messages", "tools", "functions", "response_format", "tool_choice",
                                           "function_call", "prediction"})
    found.together = [list(range(len(found.texts)))]
    return found


def walk_completion(request: Mapping[str, Any]) -> RequestTexts:
    found = RequestTexts()
    prompts = _token_or_text_list(found, "prompt", request.get("prompt"))
    first_suffix = len(found.texts)
    _strings(found, ("suffix",), request.get("suffix"))
    suffix = list(range(first_suffix, len(found.texts)))
    _unnamed_keys(found, request, "completions", {"prompt", "suffix"})
    found.together = [[prompt, *suffix] for prompt in prompts] or [suffix]
    return found


def walk_embedding(request: Mapping[str, Any]) -> RequestTexts:
    found = RequestTexts()
    _token_or_text_list(found, "input", request.get("input"))
    _unnamed_keys(found, request, "embeddings", {"input"})
    return found


def _definitions(found: RequestTexts, key: str, definitions: object) -> None:
    """`tools` or `functions`: each definition one text (the whole value, if it is not a list)."""
    if isinstance(definitions, list):
        for index, definition in enumerate(definitions):
            found.add((key, index), _definition_text(definition), one_string=False)
    else:
        found.add((key,), _definition_text(definitions), one_string=False)


def _choice(found: RequestTexts, key: str, choice: object) -> None:
    """`tool_choice` or `function_call`: a setting ("auto", "none", "required"), or the function to call."""
    if not (isinstance(choice, str) and choice in _CHOICE_SETTINGS):
        _strings(found, (key,), _without_type(choice))


def _token_or_text_list(found: RequestTexts, key: str, value: object) -> list[int]:
    """A `prompt` or `input`: a string, strings, token ids or lists of token ids. Returns the indexes
    of the texts added."""
    first = len(found.texts)
    if isinstance(value, str):
        found.add((key,), value)
    elif isinstance(value, list) and value and all(isinstance(item, int) for item in value):
        found.non_text.append((key,))
    else:
        for index, item in _items(value):
            if isinstance(item, str):
                found.add((key, index), item)
            else:
                found.non_text.append((key, index))
    return list(range(first, len(found.texts)))


def _message(found: RequestTexts, location: Location, message: Mapping[str, Any]) -> None:
    ordered = [key for key in _MESSAGE_ORDER if key in message]
    ordered += [key for key in message if key not in _MESSAGE_ORDER and key != "role"]
    for key in ordered:
        if key == "content":
            _content(found, (*location, key), message[key])
        elif key == "tool_calls" and isinstance(message[key], list):
            for index, call in enumerate(message[key]):
                _strings(found, (*location, key, index), _without_type(call))
                if isinstance(call, Mapping):
                    _escaped_arguments(found, (*location, key, index, "function"), call.get("function"))
        else:
            _strings(found, (*location, key), message[key])
            if key == "function_call":
                _escaped_arguments(found, (*location, key), message[key])


def _escaped_arguments(found: RequestTexts, location: Location, function: object) -> None:
    """A call's arguments are JSON, often written with escapes (`json.dumps` writes 制 as "\\u5236"),
    which the model reads through: where they have any, their decoded keys and strings are one more text."""
    arguments = function.get("arguments") if isinstance(function, Mapping) else None
    if isinstance(arguments, str) and "\\" in arguments:
        try:
            decoded = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return
        found.add((*location, "arguments"), _definition_text(decoded), one_string=False)


def _content(found: RequestTexts, location: Location, content: object) -> None:
    if isinstance(content, str):
        found.add(location, content)
        return
    for index, part in _items(content):
        _part(found, (*location, index), _fields(part))


def _part(found: RequestTexts, location: Location, part: Mapping[str, Any]) -> None:
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        field_name = _TEXT_PARTS[kind]
        if isinstance(part.get(field_name), str):
            found.add((*location, field_name), part[field_name])
        found.unknown += _other_keys(location, part, field_name)
    elif kind in _NON_TEXT_PARTS:
        found.non_text.append(location)
        found.unknown += _other_keys(location, part, kind)
        inner = part.get(kind)
        if isinstance(inner, Mapping):
            found.unknown += [(*location, kind, key) for key in inner if key not in _NON_TEXT_PARTS[kind]]
            read = _READ_IN_NON_TEXT_PART.get(kind)
            if read is not None and isinstance(inner.get(read), str):
                found.add((*location, kind, read), inner[read])
        elif not isinstance(inner, str):  # a bare URL is a common spelling; anything else is not the schema
            found.unknown.append((*location, kind))
    else:
        found.unknown.append(location)


def _other_keys(location: Location, part: Mapping[str, Any], field_name: str) -> list[Location]:
    """The keys of a part besides its `type` and its type's field (keys sent as null carry nothing, and
    a prompt-caching marker is a setting that no model reads)."""
    if len(part) <= 2:  # the usual part: nothing else
        return [] if part.keys() <= {"type", field_name} else [(*location, key) for key in part if key != "type"]
    return [(*location, key) for key, value in part.items()
            if key not in ("type", field_name) and value is not None
            and not (key == "cache_control" and _is_cache_marker(value))]


def _is_cache_marker(value: object) -> bool:
    """Anthropic-style `cache_control` as LiteLLM and others send it: {"type": "ephemeral", "ttl": "5m"}."""
    return isinstance(value, Mapping) and value.get("type") == "ephemeral" and value.keys() <= {"type", "ttl"} \
        and (value.get("ttl") is None or (isinstance(value["ttl"], str) and len(value["ttl"]) <= 8))


def _unnamed_keys(found: RequestTexts, request: Mapping[str, Any], route: str, walked: set[str]) -> None:
    for key, value in request.items():
        if key not in walked and key not in _NOT_READ[route]:
            _strings(found, (key,), value)


def _strings(found: RequestTexts, location: Location, value: object) -> None:
    """Every string in `value`, each a text of its own."""
    if isinstance(value, str):
        found.add(location, value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _strings(found, (*location, key), item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _strings(found, (*location, index), item)


def _without_type(value: object) -> object:
    """`value` without its `type` where that is one of the schema's kinds ("function"): a setting, not text."""
    if isinstance(value, Mapping) and value.get("type") in _SCHEMA_TYPES:
        return {key: item for key, item in value.items() if key != "type"}
    return value


def _definition_text(value: object) -> str:
    """A definition as the model reads it: its keys and strings, in order, one text."""
    return JOIN_SEPARATOR.join(_definition_strings(value))


def _definition_strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield key
            yield from _definition_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _definition_strings(item)


def _items(value: object) -> Iterator[tuple[int, Any]]:
    return enumerate(value) if isinstance(value, list) else iter(())


def _fields(value: object) -> Mapping[str, Any]:
    """A message or part as a mapping: parsed models (fields and extra keys) or plain JSON objects."""
    if isinstance(value, BaseModel):
        extra = value.__pydantic_extra__  # (read directly: iterating the model costs ~10x as much)
        return {**value.__dict__, **extra} if extra else value.__dict__
    return value if isinstance(value, Mapping) else {}
