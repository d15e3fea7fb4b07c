"""API keys: `Authorization: Bearer <key>` mapped to a tenant.

Keys are configured by their SHA-256 only (`wardgate keys hash`), so the config file, the
environment and the logs never hold a usable key. The gateway's key is consumed here and never
forwarded to the model server.
"""

from __future__ import annotations

import hashlib
import secrets

from starlette.types import Scope

from gateway.config import ApiKey
from gateway.errors import ADMIN_FORBIDDEN, ADMIN_UNAUTHORIZED, INVALID_API_KEY, MISSING_API_KEY, GatewayError
from gateway.exchange import exchange_of

ANONYMOUS_TENANT = "default"


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


class Authenticator:
    """Checks the bearer key of a /v1/ request and records its tenant in the request state.

    With no keys configured, every caller is the anonymous `default` tenant and the Authorization
    header is left for the upstream."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys_by_hash = {key.sha256: key for key in keys}
        self.has_admin_key = any(key.role == "admin" for key in keys)

    def authenticate(self, scope: Scope) -> None:
        exchange = exchange_of(scope)
        if not self.keys_by_hash:
            exchange.tenant = ANONYMOUS_TENANT
            return
        token = _bearer_token(scope["headers"])
        if token is None:
            raise GatewayError(MISSING_API_KEY)
        key = self.keys_by_hash.get(hashlib.sha256(token).hexdigest())
        if key is None:
            raise GatewayError(INVALID_API_KEY)
        exchange.tenant = key.tenant
        exchange.key_id = key.id
        exchange.role = key.role
        scope["headers"] = [(name, value) for name, value in scope["headers"] if name != b"authorization"]

    def authenticate_admin(self, scope: Scope) -> None:
        """Admin endpoints need a key with `role: admin`; with none configured they stay closed."""
        if not self.has_admin_key:
            raise GatewayError(ADMIN_UNAUTHORIZED, "Admin endpoints are closed: no API key has `role: admin`.")
        try:
            self.authenticate(scope)
        except GatewayError:
            raise GatewayError(ADMIN_UNAUTHORIZED) from None
        if exchange_of(scope).role != "admin":
            raise GatewayError(ADMIN_FORBIDDEN)
