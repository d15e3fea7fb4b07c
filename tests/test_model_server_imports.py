"""The bundled model server is usable on its own: importing it loads nothing from the moderation side
(filters/, classifiers/, privacy/, policies/, nor the gateway's inspection, audit and resilience code)."""

from __future__ import annotations

import subprocess
import sys

PROJECT_PACKAGES = ("gateway", "filters", "classifiers", "privacy", "policies")

# What the model server shares with the gateway, each free of moderation code: coded errors, logs and
# metrics, traces (telemetry's spans), the per-request record telemetry keeps (with the verdict type it
# holds, a module with no imports), the chat message shape, and reading a request body.
ALLOWED = {
    "gateway",
    "gateway.model_server",
    "gateway.model_server.app",
    "gateway.model_server.engine",
    "gateway.model_server.loading",
    "gateway.errors",
    "gateway.exchange",
    "gateway.verdict",
    "gateway.telemetry",
    "gateway.log_filters",  # what of the libraries' logging reaches the console
    "gateway.tracing",
    "gateway.openai_messages",
    "gateway.request_body",
}


def test_model_server_imports_nothing_from_the_moderation_side():
    listing = (
        "import sys, gateway.model_server.app; "
        f"print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in {PROJECT_PACKAGES!r})))"
    )
    loaded = subprocess.run([sys.executable, "-c", listing], capture_output=True, text=True, check=True)
    modules = set(loaded.stdout.split())
    assert "gateway.model_server.app" in modules
    assert modules - ALLOWED == set()
