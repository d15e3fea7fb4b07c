"""wardgate's HTTP side: the Starlette app, OpenAI-compatible routes, upstream proxy, streaming, CLI
and telemetry. gateway/model_server/ is the bundled model server."""
