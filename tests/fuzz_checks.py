"""schemathesis checks for the gateway (loaded by `st run` through SCHEMATHESIS_HOOKS, see
tests/test_openapi.py): whatever a client sends, the gateway answers it, without failing itself."""

from __future__ import annotations

import json

import schemathesis

TRACEBACK_SIGNS = ("Traceback (most recent call last)", 'File "/', '.py", line ')


@schemathesis.check
def gateway_answered(ctx, response, case) -> None:
    """No traceback or source path in any answer; a 5xx only where it reports the upstream's failure
    (WG2xxx) or an unready /readyz."""
    text = (response.content or b"").decode("utf-8", "replace")
    for sign in TRACEBACK_SIGNS:
        if sign in text:
            raise AssertionError(f"the answer shows internals ({sign!r}): {text[:300]}")
    if response.status_code < 500 or (case.path == "/readyz" and response.status_code == 503):
        return
    try:
        code = json.loads(text)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    if not (isinstance(code, str) and code.startswith("WG2")):
        raise AssertionError(f"the gateway itself failed: HTTP {response.status_code}, code {code}: {text[:300]}")
