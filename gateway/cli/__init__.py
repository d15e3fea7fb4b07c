"""`wardgate` command line: the `main` group here, each command group in a module of its own, which
holds the command-line side only (options, messages, exit statuses); what the commands do lives with
its readers (policies/, classifiers/, privacy/audit/, gateway/)."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wardgate")
def main() -> None:
    """wardgate: safety and compliance gateway for self-hosted LLMs."""


# Each module adds its commands to `main` as it is imported.
from gateway.cli import audit, classifier, keys, policy, serve  # noqa: E402, F401
