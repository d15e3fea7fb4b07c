"""API keys: `Authorization: Bearer <key>` mapped to a tenant.

Keys are configured by their SHA-256 only (`wardgate keys hash`), so the config file, the
environment and the logs never hold a usable key. The gateway's key is consumed here and never
forwarded to the model server.
"""

from __future__ import annotations

import hashlib
import secrets

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import ApiKey
from gateway.errors import INVALID_API_KEY, MISSING_API_KEY, GatewayError, error_response

ANONYMOUS_TENANT = "default"
_PROTECTED_PREFIX = "/v1/"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return "wg-" + secrets.token_urlsafe(32)


def _bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" and token.strip() else None
    return None


class ApiKeyAuth:
    """ASGI middleware guarding the /v1/ routes. With no keys configured, every caller is the
    anonymous `default` tenant and the Authorization header is left for the upstream."""

    def __init__(self, app: ASGIApp, keys: list[ApiKey]) -> None:
        self.app = app
        self.keys_by_hash = {key.sha256: key for key in keys}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self.keys_by_hash or not scope["path"].startswith(_PROTECTED_PREFIX):
            state["tenant"] = ANONYMOUS_TENANT
            await self.app(scope, receive, send)
            return
        token = _bearer_token(scope["headers"])
        if token is None:
            await error_response(scope, GatewayError(MISSING_API_KEY))(scope, receive, send)
            return
        key = self.keys_by_hash.get(hashlib.sha256(token).hexdigest())
        if key is None:
            await error_response(scope, GatewayError(INVALID_API_KEY))(scope, receive, send)
            return
        state["tenant"] = key.tenant
        state["key_id"] = key.id
        state["role"] = key.role
        scope["headers"] = [(name, value) for name, value in scope["headers"] if name != b"authorization"]
        await self.app(scope, receive, send)
