"""`wardgate keys` and `wardgate errors`."""

from __future__ import annotations

import sys

import click

from gateway.cli import main


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
