"""What the command groups share: settings and policies loaded or a clean exit, the options that
name the gateway's state, and admin events chained into its audit log."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gateway.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from gateway.pipeline import Pipeline


def settings_or_exit(config_file: Path | None, options: dict[str, object]) -> Settings:
    try:
        return load_settings(config_file, **options)
    except ConfigError as exc:
        click.echo(f"wardgate: {exc}", err=True)
        sys.exit(2)


CONFIG_OPTION = click.option(
    "--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), envvar="WARDGATE_CONFIG",
    help="The gateway's config file, for its state_dir (env WARDGATE_CONFIG).")
STATE_DIR_OPTION = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path),
    help="The gateway's state directory (default: from the config, else $XDG_STATE_HOME/wardgate).")


def pipeline_or_exit(path: Path, state_dir: Path | None = None) -> Pipeline:
    """`state_dir`: whose activated classifier `model: builtin` means (None: the shipped one)."""
    from classifiers.deployment import ClassifierDeployment
    from classifiers.labels import ClassifierError
    from gateway.pipeline import load_pipeline
    from policies.schema import PolicyError

    try:
        deployed = ClassifierDeployment(state_dir).active() if state_dir is not None else None
    except ClassifierError as exc:
        click.echo(f"wardgate: {exc}", err=True)
        sys.exit(2)
    try:
        return load_pipeline(path, deployed=deployed)
    except PolicyError as exc:
        click.echo(f"wardgate: invalid policy:\n{exc}", err=True)
        sys.exit(2)


def record_admin_event(settings: Settings, event: str, **fields: object) -> None:
    """Chain an admin event into the gateway's audit log. The change it records has happened either
    way: a log that cannot take it is reported on stderr, not fatal."""
    from gateway.audit_trail import append_admin_event
    from privacy.audit.signing import SigningError
    from privacy.audit.store import StoreError

    try:
        append_admin_event(settings, event, **fields)
    except (StoreError, SigningError) as exc:
        click.echo(f"wardgate: warning: the {event} event could not be written to the audit log: {exc}", err=True)
