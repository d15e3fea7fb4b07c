"""Reading a request body with a size cap enforced while it arrives, and a deadline; parsing it into
the model a route expects, with the coded error that says what is wrong."""

from __future__ import annotations

import asyncio
import functools
import random
from typing import TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.types import Receive, Scope

from gateway.errors import BODY_TIMEOUT, BODY_TOO_LARGE, INVALID_JSON, INVALID_REQUEST, INVALID_UTF8, GatewayError

RequestModel = TypeVar("RequestModel", bound=BaseModel)
BODY_DEADLINE_SPREAD = 0.25  # a body's deadline lies between 75% and 100% of its timeout


class ClientDisconnected(Exception):
    """The client closed the connection; the upstream exchange was abandoned."""


async def read_body(scope: Scope, receive: Receive, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, refused as soon as it is known to exceed `limit` bytes: by its declared
    Content-Length before reading anything, or by counting while it streams in. With `timeout_s`, a
    body that is not whole by then is refused too (a client trickling bytes would otherwise hold
    the connection, and whatever the request holds, for as long as it likes)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _too_large(limit)
    if timeout_s is not None:
        # Connections opened together (a slow-upload attack opens hundreds at once) would otherwise
        # all time out in one tick of the event loop, and every other request would wait for their
        # answers, audit records and reconnections: spread over the last quarter of the allowance.
        timeout_s *= random.uniform(1 - BODY_DEADLINE_SPREAD, 1)
    try:
        async with asyncio.timeout(timeout_s):
            return await _receive_all(receive, limit)
    except TimeoutError:
        # The rest of the body may still be on its way: closing is the only way to stop reading it.
        raise GatewayError(BODY_TIMEOUT, f"The request body did not arrive within {timeout_s:.1f} s.",
                           headers={"Connection": "close"}) from None


async def _receive_all(receive: Receive, limit: int) -> bytes:
    chunks = []
    received = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away mid-upload
            raise ClientDisconnected
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(BODY_TOO_LARGE, f"The request body is larger than {limit} bytes.")


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
