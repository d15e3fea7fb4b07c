"""`wardgate` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from gateway.config import ConfigError, Settings, load_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wardgate")
def main() -> None:
    """wardgate: safety and compliance gateway for self-hosted LLMs."""


@main.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="WARDGATE_CONFIG", help="YAML config file (env WARDGATE_CONFIG).")
@click.option("--upstream", help="Base URL of the OpenAI-compatible model server, without /v1.")
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8080).")
@click.option("--workers", type=int, help="Worker processes (default 1).")
@click.option("--max-body-bytes", type=int, help="Largest request body accepted (default 1 MiB).")
@click.option("--max-concurrency", type=int, help="Requests in flight at once (default 256).")
@click.option("--max-queue", type=int, help="Requests allowed to wait for a slot (default 256).")
@click.option("--queue-timeout", "queue_timeout_s", type=float, help="Longest wait for a slot, s (default 5).")
@click.option("--connect-timeout", "connect_timeout_s", type=float, help="Upstream connect timeout, s.")
@click.option("--read-timeout", "read_timeout_s", type=float, help="Longest upstream silence, s.")
@click.option("--total-timeout", "total_timeout_s", type=float, help="Longest upstream exchange, s.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def serve(config_file: Path | None, **options: object) -> None:
    """Run the gateway. Every option can also come from the config file or WARDGATE_<OPTION>."""
    import uvicorn  # imported here so that the other commands start fast

    from gateway.telemetry import configure_logging

    settings = _settings_or_exit(config_file, options)
    configure_logging(settings.log_level)
    if settings.workers > 1:
        # Worker processes import gateway.asgi, which reads the environment layer: hand them the
        # fully resolved settings there so that file, env and command line agree in every worker.
        os.environ.update(settings.as_environment())
        app: object = "gateway.asgi:app"
    else:
        from gateway.app import create_app

        app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,  # RequestTelemetry writes the one access line per request
        server_header=False,
        proxy_headers=False,  # nothing here uses the client address; don't pay to rewrite it
        lifespan="on",
    )


def _settings_or_exit(config_file: Path | None, options: dict[str, object]) -> Settings:
    try:
        return load_settings(config_file, **options)
    except ConfigError as exc:
        click.echo(f"wardgate: {exc}", err=True)
        sys.exit(2)


@main.group()
def keys() -> None:
    """Manage API keys (only their SHA-256 is ever configured)."""


@keys.command("new")
@click.option("--tenant", required=True, help="Tenant the key belongs to.")
@click.option("--id", "key_id", required=True, help="Name of the key in logs and audit records.")
def keys_new(tenant: str, key_id: str) -> None:
    """Generate a key: prints the key once (give it to the client) and its config entry."""
    from gateway.auth import generate_key, hash_key

    key = generate_key()
    click.echo(f"key (shown once, give it to the client): {key}", err=True)
    click.echo(f"- {{id: {key_id}, tenant: {tenant}, sha256: {hash_key(key)}}}")


@keys.command("hash")
def keys_hash() -> None:
    """Print the SHA-256 of a key read from standard input (so it stays out of shell history)."""
    from gateway.auth import hash_key

    key = sys.stdin.readline().strip()
    if not key:
        raise click.UsageError("no key on standard input")
    click.echo(hash_key(key))


@main.command("errors")
@click.option("--markdown", is_flag=True, help="Print docs/errors.md.")
def errors_cmd(markdown: bool) -> None:
    """List the error catalogue."""
    from gateway.errors import CATALOGUE, render_markdown

    if markdown:
        click.echo(render_markdown(), nl=False)
        return
    for kind in CATALOGUE.values():
        click.echo(f"{kind.code}  {kind.status}  {kind.name:<28} {kind.message}")
