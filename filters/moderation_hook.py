"""The external moderation hook: asks a moderation service to score a text, in one of two wire formats.

`openai`: the OpenAI `/v1/moderations` format (request `{"input": text, "model": ...}`); its
categories are mapped onto our labels and `unsafe` is the highest category score (1.0 for a result
flagged without scores). `webhook`: any JSON service: the request is a template in which every
string's `{text}` is replaced by the text (the object is built, then serialised, so any text stays
valid JSON), and the response is read through dotted paths, one per label (`result.labels.0.score`
indexes a list).

Every call has one deadline that covers waiting for a concurrency slot, connecting, sending and
reading. Whatever goes wrong — the deadline, the connection, an HTTP error status, a body that is not
the expected JSON — raises `ModerationUnavailable` with a short reason, so that the caller applies
one policy (`on_failure`) to all of them. Answers may be cached by the sha256 of the normalised text.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import weakref
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import cachetools
import orjson

from filters.normalize import normalize

HookFormat = Literal["openai", "webhook"]
# OpenAI's categories that map onto ours; any other category still counts towards `unsafe`.
OPENAI_CATEGORIES = {
    "sexual": "sexual",
    "sexual/minors": "sexual_minors",
    "hate": "hate",
    "hate/threatening": "hate",
    "harassment": "harassment",
    "harassment/threatening": "harassment",
    "self-harm": "self_harm",
    "self-harm/intent": "self_harm",
    "self-harm/instructions": "self_harm",
    "violence": "violence",
    "violence/graphic": "violence",
    "illicit": "illegal",
    "illicit/violent": "illegal",
}
OPENAI_LABELS = frozenset({"unsafe", *OPENAI_CATEGORIES.values()})
TEXT_PLACEHOLDER = "{text}"
# A moderation answer is a few hundred bytes; a service that sends megabytes is broken.
MAX_RESPONSE_BYTES = 1 << 20


class ModerationUnavailable(Exception):
    """The service gave no usable answer; `reason` says why in a few words (it reaches the audit log).
    `code`: `unavailable` (no answer: deadline, connection, HTTP error) or `bad_answer` (an answer that
    cannot be read): stable, so that a rule id and a dashboard can tell a sick service from a confused one."""

    def __init__(self, reason: str, code: str = "unavailable") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class ModerationConfigError(ValueError):
    """The hook cannot be set up (worded for the operator)."""


@dataclass(frozen=True)
class HookConfig:
    url: str
    format: HookFormat = "openai"
    model: str | None = None  # openai: the moderation model to ask for; None = the service's default
    request: dict[str, Any] = field(default_factory=lambda: {"text": TEXT_PLACEHOLDER})  # webhook template
    response: dict[str, str] = field(default_factory=dict)  # webhook: label -> dotted path
    timeout_s: float = 2.0
    max_concurrency: int = 32
    cache_max_entries: int = 0  # 0: no cache
    cache_ttl_s: float = 300.0
    auth_env: str | None = None  # the variable whose value is sent as `Authorization: Bearer ...`


class ResponseCache:
    """An LRU of answers (label scores, a guard's reading) by text digest, each entry good for `ttl_s`."""

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self._entries: cachetools.TTLCache[bytes, Any] = cachetools.TTLCache(max_entries, ttl_s)

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.sha256(normalize(text).text.encode("utf-8", "surrogatepass")).digest()

    def get(self, key: bytes) -> Any | None:
        return self._entries.get(key)

    def put(self, key: bytes, answer: Any) -> None:
        self._entries[key] = answer

    def __len__(self) -> int:
        return len(self._entries)


# One pooled session per event loop, shared by every hook of the process: a policy reload builds new
# clients but no new connection pool. Each client caps its own concurrency, so the pool does not.
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()


def _session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        session = _sessions[loop] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    return session


async def close_sessions() -> None:
    """Close the current event loop's pooled session (at shutdown)."""
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


class ServiceClient:
    """What every call to a JSON service shares (the moderation hook, a guard model): one deadline that
    covers the concurrency slot, connecting, sending and reading; a cap on concurrent calls; a bearer
    token from the environment; a capped response body; every failure as ModerationUnavailable."""

    def __init__(self, url: str, timeout_s: float, max_concurrency: int, auth_env: str | None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth_env is not None:
            token = os.environ.get(auth_env)
            if not token:
                raise ModerationConfigError(f"environment variable {auth_env} (auth_env) is not set")
            self.headers["Authorization"] = f"Bearer {token}"
        # Semaphores bind to the loop they first wait on: one per loop, like the session.
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary())

    async def call(self, request: Any) -> Any:
        """POST `request` as JSON; the parsed JSON answer. Raises ModerationUnavailable."""
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._slot():
                    return await self._post(orjson.dumps(request))
        except TimeoutError:
            raise ModerationUnavailable(f"no answer within {self.timeout_s:g} s") from None
        except aiohttp.ServerDisconnectedError:
            raise ModerationUnavailable("the service closed the connection") from None
        except aiohttp.ClientConnectionError as exc:
            raise ModerationUnavailable(f"connection failed: {type(exc).__name__}") from None
        except aiohttp.ClientError as exc:  # a malformed HTTP response, a broken body
            raise ModerationUnavailable(f"bad HTTP response: {type(exc).__name__}") from None

    def _slot(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        slot = self._slots.get(loop)
        if slot is None:
            slot = self._slots[loop] = asyncio.Semaphore(self.max_concurrency)
        return slot

    async def _post(self, body: bytes) -> Any:
        async with _session().post(self.url, data=body, headers=self.headers, allow_redirects=False) as response:
            if response.status >= 400:
                raise ModerationUnavailable(f"HTTP {response.status}")
            if response.content_length is not None and response.content_length > MAX_RESPONSE_BYTES:
                raise ModerationUnavailable("response too large", "bad_answer")
            raw = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                raw += chunk
                if len(raw) > MAX_RESPONSE_BYTES:
                    raise ModerationUnavailable("response too large", "bad_answer")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ModerationUnavailable(f"response is not JSON (HTTP {response.status})", "bad_answer") from None


class ModerationClient(ServiceClient):
    def __init__(self, config: HookConfig) -> None:
        super().__init__(config.url, config.timeout_s, config.max_concurrency, config.auth_env)
        self.config = config
        self.cache = ResponseCache(config.cache_max_entries, config.cache_ttl_s) if config.cache_max_entries else None

    async def moderate(self, text: str) -> dict[str, float]:
        """Label scores (0..1) for `text`; raises ModerationUnavailable."""
        key = self.cache.key(text) if self.cache is not None else None
        if key is not None and (cached := self.cache.get(key)) is not None:
            return cached
        scores = self._scores(await self.call(self._request(text)))
        if key is not None:
            self.cache.put(key, scores)
        return scores

    def _request(self, text: str) -> Any:
        if self.config.format == "openai":
            request: dict[str, Any] = {"input": text}
            if self.config.model is not None:
                request["model"] = self.config.model
            return request
        return fill_template(self.config.request, text)

    def _scores(self, document: Any) -> dict[str, float]:
        if self.config.format == "openai":
            return openai_scores(document)
        return {label: _number(document, path) for label, path in self.config.response.items()}


def fill_template(template: Any, text: str) -> Any:
    """`template` with `{text}` replaced by `text` in every string value (keys are left alone)."""
    if isinstance(template, str):
        return template.replace(TEXT_PLACEHOLDER, text)
    if isinstance(template, dict):
        return {key: fill_template(value, text) for key, value in template.items()}
    if isinstance(template, list):
        return [fill_template(value, text) for value in template]
    return template


def template_has_text(template: Any) -> bool:
    """Whether `{text}` appears in any string value of `template` (else the text would never be sent)."""
    if isinstance(template, str):
        return TEXT_PLACEHOLDER in template
    if isinstance(template, dict):
        return any(template_has_text(value) for value in template.values())
    if isinstance(template, list):
        return any(template_has_text(value) for value in template)
    return False


def _number(document: Any, path: str) -> float:
    """The number (or boolean, as 0/1) at a dotted path; raises ModerationUnavailable."""
    value = document
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise ModerationUnavailable(f"response has no field {path}", "bad_answer")
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    raise ModerationUnavailable(f"response field {path} is not a number", "bad_answer")


def openai_scores(document: Any) -> dict[str, float]:
    """Our labels' scores from an OpenAI moderation response; raises ModerationUnavailable."""
    results = document.get("results") if isinstance(document, dict) else None
    result = results[0] if isinstance(results, list) and results else None
    categories = result.get("categories") if isinstance(result, dict) else None
    if not isinstance(categories, dict):
        raise ModerationUnavailable("response has no results.0.categories", "bad_answer")
    category_scores = result.get("category_scores")
    if not isinstance(category_scores, dict):
        category_scores = {}
    by_category = {}
    for category, flagged in categories.items():
        score = category_scores.get(category)
        if isinstance(score, bool) or not isinstance(score, int | float):
            score = 1.0 if flagged is True else 0.0
        by_category[category] = float(score)
    scores = dict.fromkeys(sorted(OPENAI_LABELS - {"unsafe"}), 0.0)
    for category, score in by_category.items():
        label = OPENAI_CATEGORIES.get(category)
        if label is not None:
            scores[label] = max(scores[label], score)
    unsafe = max(by_category.values(), default=0.0)
    if result.get("flagged") is True and not category_scores:
        unsafe = 1.0
    return {"unsafe": unsafe, **scores}
