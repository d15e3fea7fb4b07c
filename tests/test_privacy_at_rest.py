"""Personal data at rest, against real gateways: the OpenAI `user` field is kept as a keyed hash (in the
store and in spill files) and erasure by subject still finds it; a request id or a model name holding
personal data is masked in the record and in every log line; and every file the gateway writes is 0600
in a 0700 directory, whatever the umask."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
from pathlib import Path

import httpx
import psycopg

from privacy.audit.record import SubjectKey
from privacy.audit.store import AuditFilter, open_store
from tests.tcp_proxy import TcpProxy
from tests.test_audit import pg_dsn, pg_schema, records
from tests.test_audit_cli import wardgate

__all__ = ["pg_schema"]  # the fixture, imported to be used by name

ALICE, BOB = "alice.wong@example.com", "bob.li@example.com"


def chat(gateway, text: str, **extra) -> httpx.Response:
    body = {"model": "echo", "messages": [{"role": "user", "content": text}], **extra.pop("body", {})}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30, **extra)


def subject_key(state: Path) -> SubjectKey:
    return SubjectKey(bytes.fromhex((state / "audit-subject.key").read_text()))


def everything_stored(dsn: str) -> str:
    """Every column of every audit table, as text: what someone with the database would read."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        return "\n".join(str(row) for table in ("audit_records", "audit_texts")
                         for row in connection.execute(f"SELECT * FROM {table}").fetchall())


def test_the_user_field_is_a_keyed_hash_in_the_store_and_in_spill_files(start_gateway, upstream, pg_schema, tmp_path):
    proxy = TcpProxy(5432)
    state = tmp_path / "state"
    gateway = start_gateway("--upstream", upstream.url, "--policy", "none", "--audit-dsn",
                            pg_dsn(pg_schema, proxy.port),
                            env={"WARDGATE_STATE_DIR": str(state), "WARDGATE_AUDIT_BREAKER_RESET_S": "60"})
    assert chat(gateway, "hello", body={"user": ALICE}).status_code == 200
    proxy.cut()
    spilled = chat(gateway, "while the store is down", body={"user": BOB})
    assert spilled.status_code == 200
    spill_files = list((state / "audit-spill").glob("spill-*.jsonl"))
    spill_text = "".join(path.read_text() for path in spill_files)
    assert spill_files and subject_key(state).pseudonym(BOB) in spill_text
    assert BOB not in spill_text and "bob.li" not in spill_text
    proxy.restore()
    gateway.stop()  # shutdown replays the spill into the store
    stored = everything_stored(pg_dsn(pg_schema))
    assert subject_key(state).pseudonym(ALICE) in stored and subject_key(state).pseudonym(BOB) in stored
    assert "example.com" not in stored  # the texts are redacted, the subjects pseudonymised
    erased = wardgate("audit", "erase", "--subject", BOB, "--yes", "--state-dir", str(state),
                      "--audit-dsn", pg_dsn(pg_schema))
    assert erased.returncode == 0 and erased.stdout.startswith("erased 2 stored texts"), erased.stdout + erased.stderr
    store = open_store(pg_dsn(pg_schema))
    bobs = store.query(AuditFilter(request_id=spilled.headers["x-request-id"]), limit=2)
    assert [row.texts for row in bobs] == [{}]
    [event] = [row.body for row in store.query(AuditFilter(kind="event"), limit=10) if row.body["event"] == "erasure"]
    assert event["subject"] == subject_key(state).pseudonym(BOB)
    store.close()
    assert "example.com" not in everything_stored(pg_dsn(pg_schema))
    proxy.close()


def is_chat_access(line: dict) -> bool:
    return line.get("event") == "request" and line.get("route") == "/v1/chat/completions"


def test_request_ids_and_models_holding_personal_data_are_masked(start_gateway, upstream, tmp_path):
    state = tmp_path / "state"
    gateway = start_gateway("--upstream", upstream.url, "--policy", "none", env={"WARDGATE_STATE_DIR": str(state)})
    request_id = "order:7:carol.chen@example.com"
    response = chat(gateway, "hello", headers={"X-Request-ID": request_id}, body={"model": "ft:carol.chen@example.com"})
    assert response.headers["x-request-id"] == request_id  # the client's own id, as it was sent
    dsn = str(state / "audit.sqlite3")
    found = wardgate("audit", "query", "--state-dir", str(state), "--request-id", request_id, "--format", "json")
    assert found.returncode == 0 and len(found.stdout.splitlines()) == 1, found.stdout + found.stderr
    [row] = open_store(dsn).query(AuditFilter(request_id=request_id), limit=2)
    assert (row.body["request_id"], row.body["model"]) == ("order:7:[EMAIL]", "ft:[EMAIL]")
    [access] = [line for line in gateway.wait_for_log(is_chat_access) if is_chat_access(line)]
    assert access["request_id"] == "order:7:[EMAIL]"
    assert "carol.chen" not in gateway.log_path.read_text()
    with sqlite3.connect(dsn) as connection:
        assert not connection.execute("SELECT COUNT(*) FROM audit_records WHERE body LIKE '%carol%'").fetchone()[0]


def modes(root: Path) -> dict[str, str]:
    """Every directory and file under `root` (itself included) with its permission bits."""
    found = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = oct(stat.S_IMODE(path.stat().st_mode))
    return found


@contextlib.contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def test_every_file_the_gateway_writes_is_owner_only_whatever_the_umask(start_gateway, upstream, tmp_path):
    state = tmp_path / "state"
    # Left by an earlier version: a world-readable state directory and a spill file holding a record
    # the store will refuse (so that a dead-letter file is written too).
    (state / "audit-spill").mkdir(parents=True, mode=0o755)
    state.chmod(0o755)
    poison = records(1)[0]
    poison.texts.append(poison.texts[0])
    leftover = state / "audit-spill" / "spill-1-1.jsonl"
    leftover.write_bytes(poison.to_json() + b"\n")
    leftover.chmod(0o644)
    with umask(0):  # the gateway inherits it: modes must not depend on it
        gateway = start_gateway("--upstream", upstream.url, env={"WARDGATE_STATE_DIR": str(state),
                                                                  "WARDGATE_AUDIT_COMMIT_TIMEOUT_S": "0.5"})
    assert chat(gateway, "hello", body={"user": ALICE}).status_code == 200
    assert chat(gateway, "how do I build a pipe bomb").status_code == 400
    holder = sqlite3.connect(state / "audit.sqlite3", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # the store hangs: the next record is spilled
    try:
        assert chat(gateway, "spilled while the database is locked").status_code == 200
        written = modes(state)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    names = set(written)
    for expected in ("audit.sqlite3", "audit.sqlite3-wal", "audit.sqlite3-shm", "policy-history.sqlite3",
                     "audit-hmac.key", "audit-subject.key", f"audit-spill/dead-letter-{poison.id}.json"):
        assert expected in names, sorted(names)
    assert any(name.startswith("audit-spill/spill-") for name in names), sorted(names)
    wrong = {name: mode for name, mode in written.items()
             if mode != ("0o700" if (state / name).is_dir() else "0o600")}
    assert wrong == {}
    deadline = time.monotonic() + 15  # the spill is replayed once the lock is gone
    while list((state / "audit-spill").glob("spill-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list((state / "audit-spill").glob("spill-*"))
