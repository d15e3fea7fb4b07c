"""`wardgate serve` and `wardgate model-server`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from gateway.cli import main
from gateway.cli.common import settings_or_exit
from gateway.config import Settings


@main.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="WARDGATE_CONFIG", help="YAML config file (env WARDGATE_CONFIG).")
@click.option("--upstream", help="Base URL of the OpenAI-compatible model server, without /v1 "
              "(default: start the bundled model server).")
@click.option("--model", "bundled_model_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Model directory for the bundled model server (default: the demo model).")
@click.option("--guard-model", "guard_model_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Guard model checkpoint to serve in a second bundled model server (int8), which a policy's "
                   "guard_model stage names as `url: bundled`.")
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8080).")
@click.option("--policy", help="Policy file; `default` (the shipped one, the default) or `none`.")
@click.option("--workers", type=int, help="Worker processes (default 1).")
@click.option("--max-body-bytes", type=int, help="Largest request body accepted (default 1 MiB).")
@click.option("--max-concurrency", type=int, help="Requests in flight at once (default 256).")
@click.option("--max-queue", type=int, help="Requests allowed to wait for a slot (default 256).")
@click.option("--queue-timeout", "queue_timeout_s", type=float, help="Longest wait for a slot, s (default 5).")
@click.option("--connect-timeout", "connect_timeout_s", type=float, help="Upstream connect timeout, s.")
@click.option("--read-timeout", "read_timeout_s", type=float, help="Longest upstream silence, s.")
@click.option("--total-timeout", "total_timeout_s", type=float, help="Longest upstream exchange, s.")
@click.option("--fallback-upstream", "fallback_upstreams", multiple=True,
              callback=lambda _ctx, _param, urls: list(urls) or None,  # none given: the config file decides
              help="Model server to use when the upstream's breaker is open or it fails (repeatable, in order).")
@click.option("--redis-url", help="Redis for state shared by replicas (rate limits, circuit breakers), "
              "e.g. redis://127.0.0.1:6379/0.")
@click.option("--audit-dsn", help="Audit store: a SQLite file, postgresql://..., or `none` "
              "(default: audit.sqlite3 in the state directory).")
@click.option("--otel-exporter", type=click.Choice(["none", "console", "otlp"]), help="Where traces go (default none).")
@click.option("--otel-endpoint", help="OTLP/HTTP traces URL (default: the OTEL_EXPORTER_OTLP_* environment).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def serve(config_file: Path | None, **options: object) -> None:
    """Run the gateway. Every option can also come from the config file or WARDGATE_<OPTION>."""
    from filters.pii import redact_pii  # imported here so that the other commands start fast
    from gateway.telemetry import configure_logging

    settings = settings_or_exit(config_file, options)
    configure_logging(settings.log_level, redact_pii)
    from filters.guard_model import BUNDLED_URL_ENV
    from gateway.app import policy_path
    from gateway.bundled_model import BundledModelError, free_port, start_bundled_model_server, stop

    # A guard_model stage's `url: bundled` reads the guard server's address from the environment (this
    # process's policy loads and its workers'): known before the policy is checked, so its port is chosen now.
    guard_port = free_port() if settings.guard_model_dir is not None else None
    if guard_port is not None:
        os.environ[BUNDLED_URL_ENV] = f"http://127.0.0.1:{guard_port}"
    else:
        os.environ.pop(BUNDLED_URL_ENV, None)
    path = policy_path(settings.policy)
    if path is not None:
        _check_policy_or_exit(path, settings)  # refuse a broken policy before starting anything
    if settings.audit_enabled:
        _check_audit_or_exit(settings)
    children = []
    try:
        try:
            if guard_port is not None:
                children.append(start_bundled_model_server(settings.guard_model_dir, settings.bundled_quantize,
                                                           "guard-model-server", guard_port)[0])
            if settings.upstream is None:
                bundled, upstream = start_bundled_model_server(settings.bundled_model_dir, settings.bundled_quantize)
                children.append(bundled)
                settings = settings.model_copy(update={"upstream": upstream})
        except BundledModelError as exc:
            click.echo(f"wardgate: {exc}", err=True)
            sys.exit(1)
        _run_gateway(settings)
    finally:
        for child in children:
            stop(child)


def _check_policy_or_exit(path: Path, settings: Settings) -> None:
    import asyncio

    from classifiers.deployment import ClassifierDeployment
    from gateway.policy_reload import failed_golden_tests, prepare
    from policies.schema import PolicyError

    try:
        failures = asyncio.run(failed_golden_tests(prepare(path, None, ClassifierDeployment(settings.state_dir))))
    except PolicyError as exc:
        click.echo(f"wardgate: invalid policy:\n{exc}", err=True)
        sys.exit(2)
    if failures:
        click.echo("wardgate: policy refused:\n" + "\n".join(failures), err=True)
        sys.exit(2)


def _check_audit_or_exit(settings: Settings) -> None:
    """The audit store must be reachable (and its schema current) and the signing key usable before
    the gateway starts: it never serves a request it cannot record."""
    from gateway.audit_trail import audit_signer, audit_store
    from privacy.audit.signing import SigningError
    from privacy.audit.store import StoreError

    try:
        audit_signer(settings)
        store = audit_store(settings)
        try:
            store.migrate()
        finally:
            store.close()
    except (StoreError, SigningError) as exc:
        click.echo(f"wardgate: audit log unavailable: {exc}", err=True)
        sys.exit(2)


def _run_gateway(settings: Settings) -> None:
    import uvicorn

    if settings.workers > 1:
        # Worker processes import gateway.asgi, which reads the environment layer: hand them the
        # fully resolved settings there so that file, env and command line agree in every worker.
        os.environ.update(settings.as_environment())
        app: object = "gateway.asgi:app"
    else:
        from gateway.app import create_app

        app = create_app(settings)
    from gateway.http_server import bounded_protocol

    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=bounded_protocol(settings),  # httptools, with deadlines and a size cap for request heads
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]  # a float works
        log_config=None,
        access_log=False,  # RequestTelemetry writes the one access line per request
        server_header=False,
        proxy_headers=False,  # nothing here uses the client address; don't pay to rewrite it
        lifespan="on",
    )


@main.group("model-server", invoke_without_command=True)
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="WARDGATE_MODEL_DIR", help="Local Hugging Face causal-LM directory.")
@click.option("--quantize", type=click.Choice(["int8", "none"]), default="int8", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--max-batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--max-wait-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="How long a request waits for others to share its batch.")
@click.option("--max-queue", type=click.IntRange(1), default=256, show_default=True,
              help="Requests allowed to wait; beyond: 429 WG6001.")
@click.option("--max-batch-tokens", type=click.IntRange(1), default=65536, show_default=True,
              help="Prompt + max_tokens summed over a batch (the KV-cache budget).")
@click.option("--admin-token", envvar="WARDGATE_MODEL_SERVER_ADMIN_TOKEN",
              help="Bearer token for POST /admin/model (env WARDGATE_MODEL_SERVER_ADMIN_TOKEN).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@click.option("--log-component", default="model-server", show_default=True,
              help="The `component` field of its log lines (which server wrote them, beside others in one console).")
@click.pass_context
def model_server(ctx: click.Context, model_dir: Path | None, log_level: str, log_component: str, host: str,
                 port: int, **options: object) -> None:
    """Run the bundled OpenAI-compatible model server (or a subcommand)."""
    if ctx.invoked_subcommand is not None:
        return
    if model_dir is None:
        raise click.UsageError("--model DIR is required (or create one: wardgate model-server init-demo DIR)")
    from filters.pii import redact_pii
    from gateway.telemetry import configure_logging

    # Before the server's imports: transformers reads its verbosity when it is first imported. The
    # server imports no moderation code; the CLI gives it the gateway's masking of personal data.
    configure_logging(log_level, redact_pii, component=log_component)
    import uvicorn

    from gateway.model_server.app import ModelServerSettings, create_model_server_app

    app = create_model_server_app(ModelServerSettings(model_dir=model_dir, **options), redact_request_id=redact_pii)
    uvicorn.run(app, host=host, port=port, loop="uvloop", http="httptools", log_config=None,
                access_log=False, server_header=False, lifespan="on")


@model_server.command("init-demo")
@click.argument("directory", type=click.Path(path_type=Path))
def init_demo_cmd(directory: Path) -> None:
    """Write a small demo model (Llama architecture, RANDOM weights, local tokenizer) into DIRECTORY."""
    from gateway.model_server.demo import DemoDirectoryError, init_demo

    try:
        init_demo(directory)
    except DemoDirectoryError as exc:
        click.echo(f"wardgate: {exc}", err=True)
        sys.exit(2)
    click.echo(f"demo model written to {directory} (random weights: it produces gibberish)")
