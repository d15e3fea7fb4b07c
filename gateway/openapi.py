"""`GET /openapi.json`: the gateway's own API as an OpenAPI 3.1 document, built from what the code checks.

The request bodies are the JSON Schemas of the pydantic models the proxy routes validate with
(gateway/openai_schema.py), the error body's `code` lists the catalogue (gateway/errors.py), and the
audit query's parameters are the filters `GET /admin/audit` parses (gateway/admin_audit.py): the
document cannot drift from the code. Answers the gateway only relays (the model server's completions)
are described as JSON objects or event streams, not re-specified.

Served without a key, like the probes: it describes routes any OpenAI client already knows and holds
nothing about this deployment (no keys, tenants, policy or upstream), and API fuzzers and SDK
generators need it before they hold a key. Built once per process.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import orjson
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.admin_audit import DECISIONS, FILTERS, KINDS, MAX_LIMIT
from gateway.errors import CATALOGUE, ErrorKind
from gateway.openai_schema import ChatCompletionRequest, CompletionRequest, EmbeddingRequest


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable code; docs/errors.md gives its cause and fix",
                      json_schema_extra={"enum": list(CATALOGUE)})
    name: str
    type: str = Field(description="OpenAI-style error type")
    message: str
    request_id: str = Field(description="Also in the X-Request-ID header and the gateway's log line")
    param: str | None = Field(None, description="The request field at fault, when one is")
    rule_id: str | None = Field(None, description="The policy rule that decided, when one did")


class ErrorBody(BaseModel):
    error: ErrorDetail


_REQUEST_MODELS = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest,
                   "/v1/embeddings": EmbeddingRequest}
_BEARER = [{"bearer": []}]
_OPEN: list[dict] = []  # no credential


def _kinds(*codes: str, prefixes: tuple[str, ...] = ()) -> list[ErrorKind]:
    return [kind for code, kind in CATALOGUE.items() if code in codes or code.startswith(prefixes)]


# Which coded errors each kind of route can answer (router-level 404/405 and the connection-level 431
# are not an operation's answers).
_NOT_AN_OPERATIONS = ("WG4005", "WG4006", "WG4008")
_PROXY_ERRORS = [kind for kind in _kinds("WG3001", "WG3002", "WG9001", prefixes=("WG1", "WG2", "WG4", "WG5"))
                 if kind.code not in _NOT_AN_OPERATIONS]
_ADMIN_ERRORS = _kinds("WG3003", "WG3004", "WG4003", "WG5002", "WG9001")


def _error_responses(kinds: list[ErrorKind]) -> dict[str, dict]:
    by_status: dict[int, list[ErrorKind]] = {}
    for kind in kinds:
        by_status.setdefault(kind.status, []).append(kind)
    return {
        str(status): {
            "description": "; ".join(f"{kind.code} {kind.name}" for kind in group),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
        for status, group in sorted(by_status.items())
    }


def _json(description: str, schema: dict | None = None) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def _proxy_operation(path: str) -> dict:
    model = _REQUEST_MODELS[path]
    ok = _json("The model server's answer, relayed (after output inspection)")
    if "stream" in model.model_fields:
        ok["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    return {"post": {
        "summary": f"OpenAI-compatible {path.removeprefix('/v1/')}, inspected by the active policy",
        "operationId": path.removeprefix("/v1/").replace("/", "_"),
        "security": _BEARER,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}},
        "responses": {"200": ok, **_error_responses(_PROXY_ERRORS)},
    }}


def _audit_parameters() -> list[dict]:
    special: dict[str, dict[str, Any]] = {
        "decision": {"type": "string", "enum": list(DECISIONS)},
        "kind": {"type": "string", "enum": list(KINDS)},
        "after_seq": {"type": "integer", "minimum": 0},
    }
    described = {"since": "ISO 8601 date or datetime (naive: UTC), unix seconds, or an age (30m, 2h, 7d)",
                 "until": "as `since`", "text": "a substring of a stored, redacted prompt or completion",
                 "after_seq": "paging: the `next_after_seq` of the previous page"}
    parameters = [{"name": name, "in": "query", "required": False,
                   "schema": special.get(name, {"type": "string", "minLength": 1}),
                   **({"description": described[name]} if name in described else {})} for name in FILTERS]
    parameters.append({"name": "limit", "in": "query", "required": False,
                       "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100}})
    return parameters


def _probe(summary: str, responses: dict) -> dict:
    return {"get": {"summary": summary, "security": _OPEN, "responses": responses}}


def openapi_document() -> dict:
    _, definitions = models_json_schema(
        [(model, "validation") for model in (*_REQUEST_MODELS.values(), ErrorBody)],
        ref_template="#/components/schemas/{model}")
    admin_errors = _error_responses(_ADMIN_ERRORS)
    paths: dict[str, dict] = {path: _proxy_operation(path) for path in _REQUEST_MODELS}
    paths["/v1/models"] = {"get": {
        "summary": "The model server's models, relayed", "operationId": "models", "security": _BEARER,
        "responses": {"200": _json("The model server's list"),
                      **_error_responses(_kinds("WG3001", "WG3002", "WG9001", prefixes=("WG2", "WG5")))}}}
    paths["/healthz"] = _probe("Liveness: the process serves", {"200": _json("Alive")})
    paths["/readyz"] = _probe("Readiness: an upstream is reachable (and the breakers' and audit store's state)",
                              {"200": _json("Ready"), "503": _json("Not ready")})
    paths["/metrics"] = _probe("Prometheus metrics", {"200": {
        "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}})
    paths["/openapi.json"] = _probe("This document", {"200": _json("OpenAPI 3.1")})
    paths["/admin/policy"] = {"get": {
        "summary": "The active policy, the last refused file and the recent history (admin key)",
        "security": _BEARER, "responses": {"200": _json("The policy state"), **admin_errors}}}
    paths["/admin/audit"] = {"get": {
        "summary": "Audit records matching the filters, oldest first, a page at a time (admin key)",
        "security": _BEARER, "parameters": _audit_parameters(),
        "responses": {"200": _json("A page of records", {
            "type": "object", "required": ["records", "next_after_seq"],
            "properties": {"records": {"type": "array", "items": {"type": "object"}},
                           "next_after_seq": {"type": ["integer", "null"]}}}), **admin_errors}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "wardgate", "version": version("wardgate"),
                 "description": "Safety gateway in front of an OpenAI-compatible model server. Error codes: "
                                "docs/errors.md."},
        "paths": paths,
        "components": {"schemas": definitions["$defs"],
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def openapi_route() -> Route:
    body = orjson.dumps(openapi_document())

    async def serve(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Route("/openapi.json", serve, methods=["GET"])
