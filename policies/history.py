"""Past policy versions and what happened to them, in SQLite, so that rollback works after a restart.

Every version that becomes active is stored whole (the text of each of its source files, keyed by
its digest), and every activation, refusal and rollback is an event. Several gateway workers may
write at once: WAL mode, a busy timeout, and versions inserted idempotently by digest. Like every
file the gateway writes, the database is 0600 in the 0700 state directory (privacy/files.py).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from policies.schema import Policy, policy_digest
from privacy.files import private_directory, private_sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS policy_versions (
    digest TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    policy_path TEXT NOT NULL,
    files TEXT NOT NULL,          -- JSON {path: text}, the policy file first
    first_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS policy_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    event TEXT NOT NULL,          -- activated | refused | rollback
    digest TEXT,
    version TEXT,
    policy_path TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS policy_events_at ON policy_events (at);
"""


class HistoryError(Exception):
    """The history cannot answer; worded for the operator."""


@dataclass(frozen=True)
class StoredVersion:
    digest: str
    version: str
    policy_path: Path
    files: dict[str, str]
    first_seen: float


@dataclass(frozen=True)
class PolicyEvent:
    at: float
    event: str
    digest: str | None
    version: str | None
    policy_path: str
    reason: str


class PolicyHistory:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            private_directory(self.path.parent)  # the state directory
            private_sqlite(self.path)
            connection = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(f"cannot open the policy history {self.path}: {exc}") from None
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)
            yield connection
        except sqlite3.Error as exc:
            raise HistoryError(f"policy history {self.path}: {exc}") from None
        finally:
            connection.close()

    def record_activation(self, policy: Policy, event: str = "activated", reason: str = "") -> None:
        files = {str(path): data.decode("utf-8") for path, data in policy.source_bytes}
        digest = policy_digest(policy)
        policy_path = str(policy.source_files[0])
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR IGNORE INTO policy_versions (digest, version, policy_path, files, first_seen)"
                " VALUES (?, ?, ?, ?, ?)",
                (digest, policy.version, policy_path, json.dumps(files, ensure_ascii=False), time.time()),
            )
            db.execute(
                "INSERT INTO policy_events (at, event, digest, version, policy_path, reason, pid)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (time.time(), event, digest, policy.version, policy_path, reason, os.getpid()),
            )
            db.execute("COMMIT")

    def record_rollback(self, stored: StoredVersion, reason: str) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO policy_events (at, event, digest, version, policy_path, reason, pid)"
                " VALUES (?, 'rollback', ?, ?, ?, ?, ?)",
                (time.time(), stored.digest, stored.version, str(stored.policy_path), reason, os.getpid()),
            )

    def record_refusal(self, policy_path: Path, reason: str, digest: str | None = None) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO policy_events (at, event, digest, version, policy_path, reason, pid)"
                " VALUES (?, 'refused', ?, NULL, ?, ?, ?)",
                (time.time(), digest, str(policy_path), reason, os.getpid()),
            )

    def events(self, limit: int = 50) -> list[PolicyEvent]:
        """The latest events, newest first; consecutive activations of one digest (one per worker
        process) are shown once."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT at, event, digest, version, policy_path, reason FROM policy_events ORDER BY id DESC LIMIT ?",
                (limit * 8,),
            ).fetchall()
        events: list[PolicyEvent] = []
        for row in rows:
            event = PolicyEvent(*row)
            previous = events[-1] if events else None
            if previous and (previous.event, previous.digest, previous.reason) == (event.event, event.digest,
                                                                                   event.reason):
                continue
            events.append(event)
        return events[:limit]

    def activations(self) -> list[PolicyEvent]:
        """Distinct activations (activated or rolled back to), newest first."""
        return [event for event in self.events(limit=10_000) if event.event in ("activated", "rollback")]

    def version(self, wanted: str) -> StoredVersion:
        """A stored version by its `version` string (the latest activation of it) or a digest prefix."""
        # A digest prefix needs a few characters to be unambiguous enough to act on.
        digest_prefix = wanted.lower() if len(wanted) >= 6 and all(c in "0123456789abcdef" for c in wanted.lower()) \
            else None
        with self._connect() as db:
            row = db.execute(
                "SELECT v.digest, v.version, v.policy_path, v.files, v.first_seen FROM policy_versions v"
                " JOIN policy_events e ON e.digest = v.digest"
                " WHERE v.version = ? OR (? IS NOT NULL AND v.digest LIKE ? || '%') ORDER BY e.id DESC LIMIT 1",
                (wanted, digest_prefix, digest_prefix),
            ).fetchone()
        if row is None:
            raise HistoryError(f"no stored policy version {wanted!r} (see `wardgate policy history`)")
        digest, version, policy_path, files, first_seen = row
        return StoredVersion(digest, version, Path(policy_path), json.loads(files), first_seen)

    def previous_version(self) -> StoredVersion:
        """The version that was active before the current one."""
        current = None
        for event in self.activations():
            if current is None:
                current = event.digest
            elif event.digest != current:
                return self.version(event.digest)
        raise HistoryError("no earlier policy version in the history to roll back to")


def materialize(stored: StoredVersion, directory: Path) -> Path:
    """Write a stored version's files under `directory`, mirroring their absolute paths so that
    relative lexicon references resolve as they did; returns the policy file's path there."""
    for path, text in stored.files.items():
        target = directory / Path(path).relative_to(Path(path).anchor)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text.encode("utf-8"))
    return directory / stored.policy_path.relative_to(stored.policy_path.anchor)


def restore(stored: StoredVersion) -> list[str]:
    """Write a stored version's files back where they were, each atomically, the policy file last so
    that a watching gateway sees its lexicons first. Shipped (builtin) lexicons belong to the package
    and are never written: returns a warning for each that differs from the stored version."""
    from importlib.resources import files

    builtin_dir = Path(str(files("policies").joinpath("lexicons"))).resolve()
    warnings = []
    for name in sorted(stored.files, key=lambda name: name == str(stored.policy_path)):
        path = Path(name)
        if path.resolve().is_relative_to(builtin_dir):
            if not path.is_file() or path.read_text(encoding="utf-8") != stored.files[name]:
                warnings.append(f"shipped lexicon {path.name} differs from the stored version")
            continue
        temporary = path.with_name(f".{path.name}.rollback-{os.getpid()}")
        try:
            temporary.write_bytes(stored.files[name].encode("utf-8"))
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    return warnings
