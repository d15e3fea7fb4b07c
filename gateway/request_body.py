"""Reading a request body with a size cap enforced while it arrives, and a deadline."""

from __future__ import annotations

import asyncio

from starlette.types import Receive, Scope

from gateway.errors import BODY_TIMEOUT, BODY_TOO_LARGE, GatewayError
from gateway.streaming import ClientDisconnected


async def read_body(scope: Scope, receive: Receive, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, refused as soon as it is known to exceed `limit` bytes: by its declared
    Content-Length before reading anything, or by counting while it streams in. With `timeout_s`, a
    body that is not whole by then is refused too (a client trickling bytes would otherwise hold
    the connection, and whatever the request holds, for as long as it likes)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _too_large(limit)
    try:
        async with asyncio.timeout(timeout_s):
            return await _receive_all(receive, limit)
    except TimeoutError:
        # The rest of the body may still be on its way: closing is the only way to stop reading it.
        raise GatewayError(BODY_TIMEOUT, f"The request body did not arrive within {timeout_s:g} s.",
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
