"""`wardgate policy`: validate, test, history, diff, rollback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gateway.cli import main
from gateway.cli.common import CONFIG_OPTION, STATE_DIR_OPTION, pipeline_or_exit, record_admin_event, settings_or_exit

if TYPE_CHECKING:
    from policies.history import PolicyHistory
    from policies.schema import Policy


@main.group()
def policy() -> None:
    """Validate and test policy files."""


@policy.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def policy_validate(file: Path) -> None:
    """Check FILE against the schema and compile its patterns; warn about slow regexes."""
    pipeline = pipeline_or_exit(file)
    for rule_id, pattern in pipeline.slow_patterns():
        click.echo(f"warning: rule {rule_id}: regex {pattern!r} has no literal atoms: it runs on every text")
    click.echo(f"{file}: valid (version {pipeline.policy.version}, {len(pipeline.policy.tests)} golden tests)")


@policy.command("test")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--state-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Test with the classifier this gateway state directory has activated "
                   "(`wardgate classifier activate`; default: the shipped one).")
def policy_test(file: Path, state_dir: Path | None) -> None:
    """Run FILE's golden tests; exit 1 if any fails."""
    import asyncio

    from gateway.pipeline import golden_failures

    pipeline = pipeline_or_exit(file, state_dir)
    results = asyncio.run(pipeline.run_golden_tests())
    width = max([len("expected"), *(max(len(r.expected), len(r.got)) for r in results)])
    click.echo(f"{'result':<6}  {'direction':<9}  {'expected':<{width}}  {'got':<{width}}  text")
    for result in results:
        text = result.test.text if len(result.test.text) <= 40 else result.test.text[:37] + "..."
        status = "ok" if result.passed else "FAIL"
        direction = result.test.direction
        click.echo(f"{status:<6}  {direction:<9}  {result.expected:<{width}}  {result.got:<{width}}  {text}")
    failures = golden_failures(results, pipeline.policy)
    for failure in failures:
        click.echo(failure, err=True)
    click.echo(f"{len(results) - len(failures)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


def _history(config_file: Path | None, state_dir: Path | None) -> PolicyHistory:
    from policies.history import PolicyHistory

    return PolicyHistory(settings_or_exit(config_file, {"state_dir": state_dir}).policy_history_path)


def _exit_on_history_error(exc: object) -> None:
    click.echo(f"wardgate: {exc}", err=True)
    sys.exit(2)


@policy.command("history")
@CONFIG_OPTION
@STATE_DIR_OPTION
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
def policy_history(config_file: Path | None, state_dir: Path | None, limit: int) -> None:
    """List policy activations, refusals and rollbacks, newest first."""
    from datetime import UTC, datetime

    from policies.history import HistoryError

    history = _history(config_file, state_dir)
    try:
        events = history.events(limit)
    except HistoryError as exc:
        _exit_on_history_error(exc)
    if not events:
        click.echo(f"no policy history yet in {history.path}")
        return
    click.echo(f"{'at (UTC)':<19}  {'event':<9}  {'version':<20}  {'digest':<12}  reason")
    for event in events:
        at = datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        reason = event.reason.splitlines()[0] if event.reason else ""
        click.echo(f"{at:<19}  {event.event:<9}  {event.version or '-':<20}  {(event.digest or '-')[:12]:<12}  "
                   f"{reason or event.policy_path}")


@policy.command("diff")
@click.argument("old")
@click.argument("new")
@CONFIG_OPTION
@STATE_DIR_OPTION
def policy_diff(old: str, new: str, config_file: Path | None, state_dir: Path | None) -> None:
    """What changed from OLD to NEW: each a policy file, or a version (or digest prefix) from the
    history. Exit status 0: no difference, 1: differences, 2: an error."""
    import tempfile

    from policies.diff import diff_policies

    with tempfile.TemporaryDirectory() as scratch:
        before, after = (_policy_from_file_or_history(name, Path(scratch) / label, config_file, state_dir)
                         for name, label in ((old, "old"), (new, "new")))
    lines = diff_policies(before, after)
    for line in lines:
        click.echo(line)
    if not lines:
        click.echo("no differences")
    sys.exit(1 if lines else 0)


def _policy_from_file_or_history(name: str, scratch: Path, config_file: Path | None,
                                 state_dir: Path | None) -> Policy:
    from policies.history import HistoryError, materialize

    path = Path(name)
    if not path.is_file():
        try:
            path = materialize(_history(config_file, state_dir).version(name), scratch)
        except HistoryError as exc:
            _exit_on_history_error(f"{name!r} is neither a policy file nor a version in the history: {exc}")
    return pipeline_or_exit(path).policy


@policy.command("rollback")
@click.argument("version", required=False)
@CONFIG_OPTION
@STATE_DIR_OPTION
@click.option("--print", "print_only", is_flag=True,
              help="Print the stored policy file instead of restoring it (for a read-only file, e.g. a ConfigMap).")
def policy_rollback(version: str | None, config_file: Path | None, state_dir: Path | None, print_only: bool) -> None:
    """Restore a past policy version (default: the one active before the current one) into its
    files; a running gateway picks it up like any edit, after validating it again."""
    import asyncio
    import tempfile

    from gateway.pipeline import golden_failures
    from policies.history import HistoryError, materialize, restore

    history = _history(config_file, state_dir)
    try:
        target = history.version(version) if version else history.previous_version()
    except HistoryError as exc:
        _exit_on_history_error(exc)
    if print_only:
        click.echo(target.files[str(target.policy_path)], nl=False)
        return
    with tempfile.TemporaryDirectory() as scratch:  # check it still passes before touching anything
        pipeline = pipeline_or_exit(materialize(target, Path(scratch)))
        failures = golden_failures(asyncio.run(pipeline.run_golden_tests()), pipeline.policy)
    if failures:
        click.echo(f"wardgate: version {target.version} fails its golden tests now:\n" + "\n".join(failures), err=True)
        sys.exit(2)
    try:
        for warning in restore(target):
            click.echo(f"warning: {warning}", err=True)
        history.record_rollback(target, "restored by `wardgate policy rollback`")
    except OSError as exc:
        click.echo(f"wardgate: cannot restore {target.policy_path}: {exc}\nIf the file is read-only (a "
                   f"ConfigMap), restore it there; `wardgate policy rollback {target.version} --print` prints it.",
                   err=True)
        sys.exit(1)
    except HistoryError as exc:
        _exit_on_history_error(exc)
    record_admin_event(settings_or_exit(config_file, {"state_dir": state_dir}), "policy_rolled_back",
                        policy_version=target.version, policy_digest=target.digest,
                        policy_path=str(target.policy_path))
    click.echo(f"restored {target.policy_path} to version {target.version} ({target.digest[:12]}); "
               "a running gateway activates it within a second (see GET /admin/policy)")
