"""ASGI entry point for multi-worker uvicorn and other ASGI servers: `gateway.asgi:app`.

Settings come from the WARDGATE_* environment (and WARDGATE_CONFIG, a YAML file).
"""

import os
from pathlib import Path

from filters.pii import redact_pii
from gateway.app import create_app
from gateway.config import load_settings
from gateway.telemetry import configure_logging

_config_file = os.environ.get("WARDGATE_CONFIG")
settings = load_settings(Path(_config_file) if _config_file else None)
configure_logging(settings.log_level, redact_pii)
app = create_app(settings)
