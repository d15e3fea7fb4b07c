"""`wardgate audit`: query, tail, export, stats, verify, erase, purge, checkpoint, keygen."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gateway.cli import main
from gateway.cli.common import CONFIG_OPTION, STATE_DIR_OPTION, settings_or_exit
from gateway.config import Settings
from privacy.audit.report import RecordPrinter, stats_table, utc_text

if TYPE_CHECKING:
    from privacy.audit.store import AuditFilter, AuditStore


@main.group()
def audit() -> None:
    """Query, export, verify and maintain the audit log (the store the gateway writes to)."""


_AUDIT_DSN_OPTION = click.option(
    "--audit-dsn", help="Audit store: a SQLite file or postgresql://... (default: from the config, else "
    "audit.sqlite3 in the state directory).")
_FORMAT_OPTION = click.option("--format", "output_format", type=click.Choice(["table", "json", "csv"]),
                              default="table", show_default=True,
                              help="json: one record per line, as stored; csv: flat columns.")
_AUDIT_FILTER_OPTIONS = (
    click.option("--since", metavar="WHEN", help="From this time on: ISO 8601 date or datetime (UTC unless it says "
                 "otherwise), unix seconds, or how long ago (30m, 2h, 7d)."),
    click.option("--until", metavar="WHEN", help="Before this time (same forms as --since)."),
    click.option("--tenant"),
    click.option("--decision", help="allow, flag, redact, block or error."),
    click.option("--category", help="The deciding verdict's category (illegal, pii, unsafe, ...)."),
    click.option("--rule", "rule_id", help="The deciding rule (rule_id)."),
    click.option("--request-id", help="A client's request id (its X-Request-ID header): every record carrying it."),
    click.option("--kind", help="request or event (policy activations, erasures, admin access)."),
    click.option("--text", help="Substring of a stored prompt or completion (as stored: redacted)."),
    click.option("--after-seq", metavar="SEQ", help="Only records after this sequence number (paging)."),
)
_FILTER_NAMES = ("since", "until", "tenant", "decision", "category", "rule_id", "request_id", "kind", "text",
                 "after_seq")
_OPTION_OF = {"rule_id": "--rule"}


def _audit_store_options(function):
    for option in reversed((CONFIG_OPTION, STATE_DIR_OPTION, _AUDIT_DSN_OPTION)):
        function = option(function)
    return function


def _audit_filter_options(function):
    for option in reversed(_AUDIT_FILTER_OPTIONS):
        function = option(function)
    return function


class _AuditCommandError(Exception):
    """An argument or a state the command cannot work with: `wardgate: <message>`, exit status 2."""


@contextlib.contextmanager
def _audit_errors() -> Iterator[None]:
    """Store, key and argument problems end the command with `wardgate: <message>` and exit status 2,
    never a traceback; a reader that went away (`| head`) ends it quietly."""
    from privacy.audit.signing import SigningError
    from privacy.audit.store import StoreError

    try:
        yield
    except (StoreError, SigningError, _AuditCommandError) as exc:
        click.echo(f"wardgate: {exc}", err=True)
        sys.exit(2)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        sys.exit(0)


@contextlib.contextmanager
def _opened_audit_store(config_file: Path | None, state_dir: Path | None,
                        audit_dsn: str | None) -> Iterator[tuple[Settings, AuditStore]]:
    """The gateway's audit store as its settings name it; closed on the way out."""
    from gateway.audit_trail import audit_store
    from privacy.audit.store import SQLiteStore

    settings = settings_or_exit(config_file, {"state_dir": state_dir, "audit_dsn": audit_dsn})
    if not settings.audit_enabled:
        raise _AuditCommandError("the audit log is disabled (audit_dsn: none); give --audit-dsn to name a store")
    store = audit_store(settings)
    if isinstance(store, SQLiteStore) and not store.path.is_file():
        # Opening it would create an empty database: say plainly that there is no log there.
        raise _AuditCommandError(f"no audit log at {store.path}: has the gateway run with this state directory? "
                                 "(--state-dir, --config or --audit-dsn name another)")
    try:
        yield settings, store
    finally:
        store.close()


def _audit_where_or_exit(filters: dict[str, object]) -> AuditFilter:
    """The filter options as a query; checked before the store is opened."""
    from gateway.admin_audit import FilterError, audit_filter

    values = {name: None if filters.get(name) is None else str(filters[name]) for name in _FILTER_NAMES}
    try:
        return audit_filter(values)
    except FilterError as exc:
        option = _OPTION_OF.get(exc.param, "--" + exc.param.replace("_", "-"))
        click.echo(f"wardgate: {option}: {exc.message}", err=True)
        sys.exit(2)


@audit.command("query")
@_audit_store_options
@_audit_filter_options
@click.option("--before-seq", type=int, help="Only records before this sequence number (paging with --newest-first).")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--newest-first", is_flag=True, help="Newest records first (default: chain order, oldest first).")
@_FORMAT_OPTION
def audit_query(config_file: Path | None, state_dir: Path | None, audit_dsn: str | None, before_seq: int | None,
                limit: int, newest_first: bool, output_format: str, **filters: object) -> None:
    """Print the records that match the filters.

    A page at a time, oldest first: when the page is full, `more: --after-seq N` on stderr says where
    the next one starts."""
    import dataclasses

    where = dataclasses.replace(_audit_where_or_exit(filters), before_seq=before_seq)
    with _audit_errors(), _opened_audit_store(config_file, state_dir, audit_dsn) as (_, store):
        records = store.query(where, limit, newest_first=newest_first)
        if records or output_format == "csv":
            RecordPrinter(output_format).write(records)
        if len(records) == limit:
            click.echo(f"more: --{'before' if newest_first else 'after'}-seq {records[-1].seq}", err=True)
        elif not records:
            click.echo("no matching records", err=True)


@audit.command("tail")
@_audit_store_options
@_audit_filter_options
@click.option("-n", "--lines", type=click.IntRange(1), default=20, show_default=True, help="How many records.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new records as they are committed (Ctrl-C ends).")
@click.option("--interval", type=click.FloatRange(0.01), default=1.0, show_default=True,
              help="Seconds between polls with --follow.")
@_FORMAT_OPTION
def audit_tail(config_file: Path | None, state_dir: Path | None, audit_dsn: str | None, lines: int, follow: bool,
               interval: float, output_format: str, **filters: object) -> None:
    """Print the newest records; -f follows new ones.

    The newest N matching records, oldest of them first; with -f, then every new one as it is committed,
    until Ctrl-C."""
    import dataclasses
    import time

    where = _audit_where_or_exit(filters)
    printer = RecordPrinter(output_format)
    try:
        with _audit_errors(), _opened_audit_store(config_file, state_dir, audit_dsn) as (_, store):
            records = store.query(where, lines, newest_first=True)[::-1]
            printer.write(records)
            # Older matching records were all in that query: anything after the last shown one is new.
            last = records[-1].seq if records else (where.after_seq or 0)
            page = 500
            while follow:
                time.sleep(interval)
                while True:
                    records = store.query(dataclasses.replace(where, after_seq=last), page)
                    printer.write(records)
                    if records:
                        last = records[-1].seq
                    if len(records) < page:
                        break
    except KeyboardInterrupt:
        sys.exit(0)


@audit.command("export")
@_audit_store_options
@_audit_filter_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (default: standard output).")
def audit_export(config_file: Path | None, state_dir: Path | None, audit_dsn: str | None, output: Path | None,
                 **filters: object) -> None:
    """Write every matching record as JSON lines.

    In chain order, read from the store a page at a time; the count goes to stderr."""
    import dataclasses

    import orjson

    page = 1000
    where = _audit_where_or_exit(filters)
    with _audit_errors(), _opened_audit_store(config_file, state_dir, audit_dsn) as (_, store):
        temporary = output.with_name(f".{output.name}.partial") if output is not None else None
        try:
            sink = temporary.open("wb") if temporary is not None else click.get_binary_stream("stdout")
        except OSError as exc:
            raise _AuditCommandError(f"cannot write {output}: {exc.strerror or exc}") from None
        count = 0
        try:
            while True:
                records = store.query(where, page)
                sink.write(b"".join(orjson.dumps(record.as_dict()) + b"\n" for record in records))
                count += len(records)
                if len(records) < page:
                    break
                where = dataclasses.replace(where, after_seq=records[-1].seq)
            sink.flush()
        except BaseException:
            if temporary is not None:  # a failed export leaves no half-written file behind
                sink.close()
                temporary.unlink(missing_ok=True)
            raise
        if temporary is not None:
            sink.close()
            temporary.replace(output)
        click.echo(f"{count} records exported" + (f" to {output}" if output is not None else ""), err=True)


@audit.command("stats")
@_audit_store_options
@_audit_filter_options
@click.option("--by", type=click.Choice(["decision", "category", "tenant", "rule_id"]), default="decision",
              show_default=True)
@click.option("--bucket", type=click.Choice(["hour", "day"]), default="day", show_default=True,
              help="Time buckets, in UTC.")
@_FORMAT_OPTION
def audit_stats(config_file: Path | None, state_dir: Path | None, audit_dsn: str | None, by: str, bucket: str,
                output_format: str, **filters: object) -> None:
    """Count records per time bucket and decision.

    Or per category, tenant or rule (--by); buckets are UTC hours or days."""
    where = _audit_where_or_exit(filters)
    with _audit_errors(), _opened_audit_store(config_file, state_dir, audit_dsn) as (_, store):
        rows = store.stats(where, 3600 if bucket == "hour" else 86400, by)
    label = (lambda at: utc_text(at, "minutes")) if bucket == "hour" else (lambda at: utc_text(at)[:10])
    if output_format == "json":
        import orjson

        for start, value, count in rows:
            click.echo(orjson.dumps({"bucket": label(start), "bucket_start": start, by: value,
                                     "count": count}).decode())
    elif output_format == "csv":
        import csv

        writer = csv.writer(click.get_text_stream("stdout"), lineterminator="\n")
        writer.writerow(["bucket", by, "count"])
        writer.writerows([label(start), "" if value is None else value, count] for start, value, count in rows)
    elif rows:
        stats_table(rows, bucket, label)
    else:
        click.echo("no matching records", err=True)


def _verify_signers(settings: Settings, key_files: tuple[Path, ...]) -> tuple[list, list[str]]:
    """The keys to check checkpoint signatures with, and words for where each came from."""
    from gateway.audit_trail import audit_signer
    from privacy.audit.signing import load_ed25519

    if key_files:
        return [load_ed25519(path) for path in key_files], [str(path) for path in key_files]
    if settings.audit_signing_key is not None:
        return [audit_signer(settings, create=False)], [f"audit_signing_key {settings.audit_signing_key}"]
    if settings.audit_hmac_key:
        return [audit_signer(settings, create=False)], ["audit_hmac_key"]
    # audit_signer's last resort, the HMAC key the gateway created in its state directory.
    if settings.audit_hmac_key_path.exists():
        return [audit_signer(settings, create=False)], [str(settings.audit_hmac_key_path)]
    return [], []


@audit.command("verify")
@_audit_store_options
@click.option("--key-file", "key_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Ed25519 public or private key (PEM) to check checkpoint signatures with; repeat it for the "
              "keys used before a rotation (default: the gateway's own key, as configured).")
def audit_verify(config_file: Path | None, state_dir: Path | None, audit_dsn: str | None,
                 key_files: tuple[Path, ...]) -> None:
    """Check the hash chain and its signed checkpoints.

    Exit status 0: intact; 1: broken (the first broken link is named); 2: the store or the key cannot
    be used; 3: intact, but records the store refused are missing from it (each is named, with the
    dead-letter file that keeps it). With no key at all, only the hash chain is checked, and the output
    says so."""
    from privacy.audit.verify import verify

    with _audit_errors(), _opened_audit_store(config_file, state_dir, audit_dsn) as (settings, store):
        signers, sources = _verify_signers(settings, key_files)
        report = verify(store, signers)
    if not signers:
        click.echo("key: none found (no --key-file, audit_signing_key, audit_hmac_key or key in the state "
                   "directory): checkpoint signatures NOT checked, hash chain only")
    for signer, source in zip(signers, sources, strict=True):
        click.echo(f"key: {signer.algorithm} key {signer.key_id} ({source})")
    click.echo(f"records checked: {report.records}")
    click.echo(f"checkpoints checked: {report.checkpoints}")
    if not report.ok:
        click.echo(f"BROKEN: {report.problem}")
        sys.exit(1)
    click.echo(f"head: seq {report.head_seq} hash {report.head_hash}")
    for note in report.notes:
        click.echo(f"note: {note}")
    for missing in report.unstored:
        click.echo(f"not stored: {missing}")
    if not report.complete:
        click.echo(f"INCOMPLETE: the chain is intact, but {len(report.unstored)} records are missing from it "
                   "(named above)")
        sys.exit(3)
    click.echo("intact")


@audit.command("erase")
@_audit_store_options
@click.option("--subject", required=True, help="The data subject: the `user` field the requests carried (records "
              "keep it pseudonymised with the gateway's subject key, which must be in the state directory).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def audit_erase(config_file: Path | None, state_dir: Path | None, audit_dsn: str | None, subject: str,
                yes: bool) -> None:
    """Erase a data subject's stored texts.

    Removes the subject's stored prompts and completions (records and digests stay, so the chain still
    verifies) and records the erasure as an audit event."""
    from gateway.audit_trail import audit_signer, audit_subject_key, checkpoint_policy

    with _audit_errors(), _opened_audit_store(config_file, state_dir, audit_dsn) as (settings, store):
        if not subject:
            raise _AuditCommandError("--subject must not be empty")
        signer = audit_signer(settings, create=False)
        subject_key = audit_subject_key(settings, create=False)
        if not yes:
            click.confirm(f"Erase every stored prompt and completion of subject {subject!r}?", abort=True)
        # One transaction: the texts go and the erasure event is chained, or neither happens.
        removed, seq = store.erase_subject(subject, subject_key, signer, checkpoint_policy(settings))
    click.echo(f"erased {removed} stored texts of the subject; the erasure is audit record seq {seq}")


@audit.command("purge")
@_audit_store_options
def audit_purge(config_file: Path | None, state_dir: Path | None, audit_dsn: str | None) -> None:
    """Remove stored texts past their retention.

    The policy's audit.retention_days; the gateway also does this every hour."""
    with _audit_errors(), _opened_audit_store(config_file, state_dir, audit_dsn) as (_, store):
        removed = store.purge_expired()
    click.echo(f"purged {removed} expired stored texts")


@audit.command("checkpoint")
@_audit_store_options
def audit_checkpoint(config_file: Path | None, state_dir: Path | None, audit_dsn: str | None) -> None:
    """Sign the chain's head now.

    So that deleting the newest records is detected too (the gateway signs every
    audit_checkpoint_every records or audit_checkpoint_interval_s)."""
    from gateway.audit_trail import audit_signer

    with _audit_errors(), _opened_audit_store(config_file, state_dir, audit_dsn) as (settings, store):
        checkpoint = store.checkpoint_now(audit_signer(settings, create=False))
    if checkpoint is None:
        click.echo("the audit log is empty: nothing to sign")
        return
    click.echo(f"checkpoint: seq {checkpoint.seq} hash {checkpoint.hash} at {utc_text(checkpoint.at)} "
               f"signed with {checkpoint.algorithm} key {checkpoint.key_id}")


@audit.command("keygen")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def audit_keygen(path: Path) -> None:
    """Write an Ed25519 key pair for checkpoints.

    The private key to PATH (mode 600), the public key next to it (.pub)."""
    from privacy.audit.signing import generate_ed25519

    with _audit_errors():
        if path.suffix == ".pub":
            raise _AuditCommandError(f"{path}: name the private key's file (e.g. audit-signing.pem); the public "
                                     "key is written next to it as .pub")
        for existing in (path, path.with_suffix(".pub")):
            if existing.exists():
                raise _AuditCommandError(f"{existing} exists: not overwriting a key")
        try:
            public = generate_ed25519(path)
        except OSError as exc:
            raise _AuditCommandError(f"cannot write {exc.filename or path}: {exc.strerror or exc}") from None
    click.echo(f"private key: {path} (signs checkpoints: keep it secret, readable only by the gateway)")
    click.echo(f"public key:  {public} (checks them: `wardgate audit verify --key-file {public}`)")
    click.echo(f"to sign with it, set `audit_signing_key: {path.resolve()}` in the gateway's config "
               f"(or WARDGATE_AUDIT_SIGNING_KEY) and restart it")
