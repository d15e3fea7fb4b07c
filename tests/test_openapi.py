"""`/openapi.json` describes the gateway's own API, from the models it validates with, and schemathesis,
pointed at it, finds no request that makes the gateway fail, leak a traceback or hang."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gateway.errors import CATALOGUE
from gateway.openai_schema import ChatCompletionRequest

FUZZ_KEY = "wg-fuzz-admin-key"
REQUEST_TIMEOUT_S = 10.0  # a hang is a failure, not a slow answer


@pytest.fixture(scope="module")
def fuzzed_gateway(start_gateway, upstream, tmp_path_factory):
    """The default policy and an admin key (it may call every route, the proxy ones included)."""
    config = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    config.write_text("api_keys:\n  - {id: fuzz, tenant: fuzz, role: admin, sha256: "
                      f"{hashlib.sha256(FUZZ_KEY.encode()).hexdigest()}}}\n")
    return start_gateway("--config", str(config), "--upstream", upstream.url)


def test_the_document_is_generated_from_the_validating_models(fuzzed_gateway):
    response = httpx.get(fuzzed_gateway.url + "/openapi.json")  # no key: served like the probes
    assert response.status_code == 200
    document = response.json()
    schemas = document["components"]["schemas"]
    assert schemas["ChatCompletionRequest"]["required"] == list(ChatCompletionRequest.model_json_schema()["required"])
    assert document["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"][
        "schema"] == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    assert schemas["ErrorDetail"]["properties"]["code"]["enum"] == list(CATALOGUE)
    assert {"/healthz", "/readyz", "/metrics", "/admin/policy", "/admin/audit", "/v1/models"} <= set(document["paths"])
    audit_parameters = {p["name"] for p in document["paths"]["/admin/audit"]["get"]["parameters"]}
    assert {"since", "decision", "request_id", "after_seq", "limit"} <= audit_parameters


def schemathesis_run(url: str, max_examples: int, seed: int) -> subprocess.CompletedProcess:
    """`st run` against the live gateway with the checks of tests/fuzz_checks.py (a 5xx only for the
    upstream's failures, no traceback) and the built-in one that no request goes unanswered in time."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "st"), "run", url + "/openapi.json", "--header",
         f"Authorization: Bearer {FUZZ_KEY}", "--checks", "gateway_answered,not_a_server_error",
         "--max-examples", str(max_examples), "--seed", str(seed), "--request-timeout", str(REQUEST_TIMEOUT_S),
         "--workers", "1"],  # more workers trip an error inside hypothesis here (AST recursion depth)
        capture_output=True, text=True, env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_checks"},
        cwd=Path(__file__).resolve().parent.parent, timeout=900)


def test_fuzzed_requests_never_make_the_gateway_fail(fuzzed_gateway):
    result = schemathesis_run(fuzzed_gateway.url, max_examples=10, seed=1)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "9 selected / 9 total" in result.stdout  # every operation was exercised


@pytest.mark.slow
def test_fuzzed_requests_never_make_the_gateway_fail_long_profile(fuzzed_gateway):
    result = schemathesis_run(fuzzed_gateway.url, max_examples=300, seed=2)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
