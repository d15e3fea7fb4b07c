"""`GET /admin/audit`: query the audit log over HTTP; and the query's filters, which `wardgate audit`
parses the same way.

Filters (query parameters here, `--options` on the command line): since, until (ISO 8601 date or
datetime, naive meaning UTC; unix seconds; or how long ago: 90s, 30m, 2h, 7d, 2w), tenant, decision,
category, rule_id, request_id, kind, text (a substring of a stored, redacted prompt or completion),
after_seq (paging). Over HTTP also limit (1..1000, default 100). The answer is
`{"records": [record...], "next_after_seq": N | null}`, oldest first: `next_after_seq` is set when the
page is full, and passing it back as `after_seq` gives the next page.

A gateway whose audit log is disabled (`audit_dsn: none`) answers 200 with no records and a `detail`
saying so, as `GET /admin/policy` does for `--policy none`: the endpoint exists, there is nothing in it.
Each call opens the store, queries it in a thread and closes it: the audit writer's connection belongs
to its own thread, and admin queries are rare.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response

from gateway.audit_trail import audit_store
from gateway.auth import Authenticator
from gateway.config import Settings
from gateway.errors import AUDIT_UNAVAILABLE, INVALID_REQUEST, GatewayError, error_response
from privacy.audit.store import AuditFilter, StoreError

log = structlog.get_logger("wardgate.audit")

DECISIONS = ("allow", "flag", "redact", "block", "error")
KINDS = ("request", "event")
# The filters both the HTTP endpoint and the CLI take (AuditFilter fields, each given as a string).
FILTERS = ("since", "until", "tenant", "decision", "category", "rule_id", "request_id", "kind", "text", "after_seq")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_UNIX = re.compile(r"^\d+(?:\.\d+)?$")


class FilterError(ValueError):
    """A filter value that cannot be used; `param` names it, the message says why."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def parse_when(param: str, value: str, now: float) -> float:
    """Unix seconds for an ISO 8601 date or datetime (naive: UTC), unix seconds, or an age (`2h` ago)."""
    text = value.strip()
    ago = _AGO.match(text)
    if ago:
        return now - float(ago.group(1)) * _UNIT_S[ago.group(2)]
    if _UNIX.match(text):
        return float(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise FilterError(param, f"{value!r} is not a time: give an ISO 8601 date or datetime (2026-12-01, "
                                 "2026-12-01T09:30:00Z), unix seconds, or how long ago (30m, 2h, 7d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def audit_filter(values: Mapping[str, str | None], now: float | None = None) -> AuditFilter:
    """An AuditFilter from string values keyed by FILTERS (None or missing: no filter); raises FilterError."""
    now = time.time() if now is None else now
    fields: dict[str, object] = {}
    for name in FILTERS:
        value = values.get(name)
        if value is None:
            continue
        if name in ("since", "until"):
            fields[name] = parse_when(name, value, now)
        elif name == "after_seq":
            fields[name] = _integer(name, value, 0)
        elif name == "decision" and value not in DECISIONS:
            raise FilterError(name, f"{value!r} is not a decision: one of {', '.join(DECISIONS)}")
        elif name == "kind" and value not in KINDS:
            raise FilterError(name, f"{value!r} is not a record kind: one of {', '.join(KINDS)}")
        elif value == "":
            raise FilterError(name, "must not be empty")
        else:
            fields[name] = value
    where = AuditFilter(**fields)
    if where.since is not None and where.until is not None and where.since >= where.until:
        raise FilterError("until", "must be later than since")
    return where


def _integer(param: str, value: str, minimum: int, maximum: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise FilterError(param, f"{value!r} is not an integer") from None
    if number < minimum or (maximum is not None and number > maximum):
        raise FilterError(param, f"must be between {minimum} and {maximum}" if maximum is not None
                          else f"must be {minimum} or more")
    return number


class AdminAuditEndpoint:
    """`GET /admin/audit`: the records matching the query's filters, a page at a time."""

    def __init__(self, settings: Settings, authenticator: Authenticator) -> None:
        self.settings = settings if settings.audit_enabled else None
        self.authenticator = authenticator

    async def get(self, request: Request) -> Response:
        try:
            self.authenticator.authenticate_admin(request.scope)
            where, limit = self._parameters(request)
            if self.settings is None:
                return _json({"records": [], "next_after_seq": None,
                              "detail": "the audit log is disabled on this gateway (audit_dsn: none)"})
            records = await asyncio.to_thread(self._query, where, limit)
        except GatewayError as error:
            return error_response(request.scope, error)
        full = len(records) == limit
        return _json({"records": records, "next_after_seq": records[-1]["seq"] if full else None})

    def _parameters(self, request: Request) -> tuple[AuditFilter, int]:
        params = request.query_params
        for name in params:
            if name not in FILTERS and name != "limit":
                raise GatewayError(INVALID_REQUEST, f"Unknown query parameter {name!r}; known: "
                                   f"{', '.join((*FILTERS, 'limit'))}.", param=name)
        try:
            limit = _integer("limit", params["limit"], 1, MAX_LIMIT) if "limit" in params else DEFAULT_LIMIT
            return audit_filter(params), limit
        except FilterError as exc:
            raise GatewayError(INVALID_REQUEST, f"{exc.param}: {exc.message}", param=exc.param) from None

    def _query(self, where: AuditFilter, limit: int) -> list[dict]:
        store = audit_store(self.settings)
        try:
            return [record.as_dict() for record in store.query(where, limit)]
        except StoreError as exc:
            # The operator's message names the file or host: it goes to the log, not to the client.
            log.error("audit_query_failed", error=str(exc))
            raise GatewayError(AUDIT_UNAVAILABLE, "The audit store cannot be read right now; the gateway's "
                               "log names the error.") from None
        finally:
            store.close()


def _json(document: dict) -> Response:
    return Response(orjson.dumps(document), media_type="application/json")
