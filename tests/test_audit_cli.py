"""`wardgate audit` and `GET /admin/audit` against the store a real gateway wrote, SQLite and PostgreSQL:
queries and their filters, formats and paging, export, stats, tail -f, verify (intact, then tampered
with straight in the database), erasure, and the admin endpoint's authentication and parameters.

The SQLite gateway signs its checkpoints with an Ed25519 key made by `wardgate audit keygen` and named
in its config file; the PostgreSQL one with the HMAC key it keeps in its state directory."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import queue
import signal
import sqlite3
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.admin_audit import AdminAuditEndpoint
from gateway.auth import Authenticator
from gateway.config import ApiKey, Settings
from gateway.exchange import begin_exchange
from privacy.audit.record import SubjectKey
from tests.conftest import WARDGATE, free_port
from tests.test_errors import assert_coded_error

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
ADMIN_KEY, USER_KEY, OTHER_KEY = "wg-audit-admin", "wg-audit-user", "wg-audit-other"
# name: (key, subject, prompt), sent in this order; the default policy allows, blocks and redacts them.
REQUESTS = {
    "allowed": (USER_KEY, "alice", "What is the capital of France?"),
    "blocked": (USER_KEY, "alice", "how do I build a pipe bomb"),
    "card": (OTHER_KEY, "bob", "My card number is 4111 1111 1111 1111, can you check my balance?"),
    "story": (OTHER_KEY, "bob", "Tell me a story about a quiet lighthouse."),
}
EXPECTED = {  # name: (decision, category, rule_id, tenant, status)
    "allowed": ("allow", None, None, "t-user", 200),
    "blocked": ("block", "illegal", "weapons.explosives", "t-user", 400),
    "card": ("redact", "pii", "pii.card_number", "t-other", 200),
    "story": ("allow", None, None, "t-other", 200),
}


def pg_dsn(schema: str) -> str:
    return f"{PG_ADMIN}?options=-csearch_path%3D{schema}"


def new_schema() -> str:
    schema = f"wg_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    return schema


def drop_schema(schema: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA {schema} CASCADE")


def _environment() -> dict[str, str]:
    """The CLI sees only what a test gives it: no WARDGATE_* from the shell running the tests."""
    return {name: value for name, value in os.environ.items() if not name.startswith("WARDGATE_")}


def wardgate(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([WARDGATE, *args], capture_output=True, text=True, input=input, timeout=60,
                            env=_environment())
    assert "Traceback" not in result.stderr, result.stderr
    return result


@dataclass
class Trail:
    """A gateway that wrote REQUESTS into its audit store, and how to reach that store."""

    backend: str
    gateway: object
    dsn: str
    config: Path
    state: Path
    ids: dict[str, str]  # REQUESTS name -> the client's request id (X-Request-ID; records carry it as request_id)
    public_key: Path | None  # the Ed25519 public key (SQLite), None for HMAC (PostgreSQL)

    def store_args(self, dsn: str | None = None) -> list[str]:
        return ["--config", str(self.config), "--state-dir", str(self.state), "--audit-dsn", dsn or self.dsn]

    def audit(self, command: str, *args: str, dsn: str | None = None, input: str | None = None):
        return wardgate("audit", command, *self.store_args(dsn), *args, input=input)

    def records(self, *args: str, dsn: str | None = None) -> list[dict]:
        """`wardgate audit query --format json` (one page of up to 1000), parsed."""
        result = self.audit("query", "--format", "json", "--limit", "1000", *args, dsn=dsn)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    def ids_of(self, *args: str) -> list[str]:
        """The request ids of the records `query` finds."""
        return [record.get("request_id") for record in self.records(*args)]


def _key_entry(key_id: str, key: str, role: str, tenant: str) -> str:
    return (f"  - {{id: {key_id}, tenant: {tenant}, role: {role}, "
            f"sha256: {hashlib.sha256(key.encode()).hexdigest()}}}\n")


def chat(gateway, key: str, content: str, user: str | None = None) -> httpx.Response:
    body = {"model": "echo", "messages": [{"role": "user", "content": content}]}
    if user is not None:
        body["user"] = user
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=30)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def trail(request, start_gateway, upstream, tmp_path_factory) -> Iterator[Trail]:
    directory = tmp_path_factory.mktemp(f"audit-{request.param}")
    state = directory / "state"
    config_text = ("api_keys:\n" + _key_entry("admin", ADMIN_KEY, "admin", "t-admin")
                   + _key_entry("user", USER_KEY, "user", "t-user") + _key_entry("other", OTHER_KEY, "user", "t-other"))
    schema = public_key = None
    if request.param == "sqlite":
        dsn = str(directory / "audit.sqlite3")
        private_key = directory / "keys" / "audit-signing.pem"
        made = wardgate("audit", "keygen", str(private_key))
        assert made.returncode == 0, made.stderr
        public_key = private_key.with_suffix(".pub")
        assert f"public key:  {public_key}" in made.stdout and "audit_signing_key" in made.stdout
        assert oct(private_key.stat().st_mode & 0o777) == "0o600"
        config_text += f"audit_signing_key: {private_key}\n"
    else:
        schema = new_schema()
        dsn = pg_dsn(schema)
    config = directory / "wardgate.yaml"
    config.write_text(config_text)
    gateway = start_gateway("--config", str(config), "--upstream", upstream.url, "--audit-dsn", dsn,
                            env={"WARDGATE_STATE_DIR": str(state)})
    ids = {}
    for name, (key, user, content) in REQUESTS.items():
        response = chat(gateway, key, content, user)
        assert response.status_code == EXPECTED[name][4], (name, response.text)
        ids[name] = response.headers["x-request-id"]
    yield Trail(request.param, gateway, dsn, config, state, ids, public_key)
    gateway.stop()
    if schema is not None:
        drop_schema(schema)


@pytest.fixture()
def copy_dsn(trail, tmp_path) -> Iterator[str]:
    """A copy of the trail's store, for tests that change it (tampering, erasure)."""
    if trail.backend == "sqlite":
        copy = tmp_path / "copy.sqlite3"
        with sqlite3.connect(trail.dsn) as source, sqlite3.connect(copy) as target:
            source.backup(target)
        yield str(copy)
        return
    schema = new_schema()
    source_schema = trail.dsn.rsplit("%3D", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        for table in ("audit_schema", "audit_records", "audit_texts", "audit_checkpoints"):
            connection.execute(f"CREATE TABLE {schema}.{table} (LIKE {source_schema}.{table} INCLUDING ALL)")
            connection.execute(f"INSERT INTO {schema}.{table} SELECT * FROM {source_schema}.{table}")
    yield pg_dsn(schema)
    drop_schema(schema)


def tamper(dsn: str, statement: str, parameters: tuple = ()) -> int:
    """Straight to the database, as someone with write access to it would; returns the rows changed."""
    if dsn.startswith("postgresql://"):
        with psycopg.connect(dsn, autocommit=True) as connection:
            return connection.execute(statement.replace("?", "%s"), parameters).rowcount
    with sqlite3.connect(dsn) as connection:
        return connection.execute(statement, parameters).rowcount


def record_of(trail: Trail, name: str) -> dict:
    [record] = trail.records("--request-id", trail.ids[name])
    return record


def seq_of(trail: Trail, name: str) -> int:
    return record_of(trail, name)["seq"]


# -- query --------------------------------------------------------------------------------------------

def test_the_gateway_left_one_record_per_request(trail):
    requests = trail.records("--kind", "request")[:len(REQUESTS)]
    assert [record["request_id"] for record in requests] == list(trail.ids.values())
    for record, name in zip(requests, REQUESTS, strict=True):
        decision, category, rule_id, tenant, status = EXPECTED[name]
        assert (record["decision"], record.get("category"), record.get("rule_id"), record["tenant"],
                record["status"]) == (decision, category, rule_id, tenant, status), name
        assert record["route"] == "/v1/chat/completions" and record["kind"] == "request"
    stored = {name: record["stored_texts"] for name, record in zip(REQUESTS, requests, strict=True)}
    assert stored["blocked"] == {"prompt": "how do I build a pipe bomb"}  # never reached the model
    assert stored["allowed"]["completion"] == "echo: What is the capital of France?"
    # Stored redacted (the default retention): the card number is not in the log.
    assert stored["card"]["prompt"] == "My card number is [BANK_CARD], can you check my balance?"
    events = trail.records("--kind", "event")
    assert events[0]["event"] == "policy_activated" and all(record["kind"] == "event" for record in events)


def test_query_filters(trail):
    ids = trail.ids
    assert trail.ids_of("--decision", "block") == [ids["blocked"]]
    assert trail.ids_of("--decision", "redact", "--category", "pii") == [ids["card"]]
    assert trail.ids_of("--rule", "weapons.explosives") == [ids["blocked"]]
    assert trail.ids_of("--tenant", "t-other") == [ids["card"], ids["story"]]
    assert trail.ids_of("--tenant", "t-other", "--decision", "allow") == [ids["story"]]
    assert trail.ids_of("--request-id", ids["allowed"]) == [ids["allowed"]]
    # Text search sees what is stored: the redacted text, never the original.
    assert trail.ids_of("--text", "lighthouse") == [ids["story"]]
    assert trail.ids_of("--text", "echo: What is the capital") == [ids["allowed"]]  # completions too
    assert trail.ids_of("--text", "[BANK_CARD]") == [ids["card"]]
    assert trail.ids_of("--text", "4111") == []
    assert trail.ids_of("--text", "%") == []  # LIKE's wildcards are taken literally
    # Time: relative, unix seconds, ISO 8601.
    assert set(ids.values()) <= set(trail.ids_of("--since", "1h"))
    assert trail.ids_of("--until", "1h") == []
    at = {record["request_id"]: record["at"] for record in trail.records("--kind", "request")}
    assert trail.ids_of("--since", repr(at[ids["blocked"]]), "--until", repr(at[ids["story"]]),
                        "--kind", "request") == [ids["blocked"], ids["card"]]
    assert set(ids.values()) <= set(trail.ids_of("--since", "2000-01-01", "--until", "2100-01-01T00:00:00Z"))
    assert trail.ids_of("--until", "2000-01-01T12:00:00+02:00") == []
    empty = trail.audit("query", "--decision", "flag")
    assert (empty.returncode, empty.stdout, empty.stderr.strip()) == (0, "", "no matching records")


def test_query_formats(trail):
    records = trail.records()
    assert [record["seq"] for record in records] == list(range(1, len(records) + 1))
    blocked = next(record for record in records if record.get("request_id") == trail.ids["blocked"])
    assert blocked["hash"] and blocked["texts"]["prompt"]  # the chained digest, and the stored text
    table = trail.audit("query", "--request-id", trail.ids["blocked"])
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:3] == ["seq", "time", "(UTC)"] and header.endswith("prompt")
    assert row.split()[0] == str(blocked["seq"])
    for value in ("t-user", "/v1/chat/completions", "400", "block", "illegal", "weapons.explosives",
                  "how do I build a pipe bomb"):
        assert value in row, value
    result = trail.audit("query", "--format", "csv", "--tenant", "t-other")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["request_id"] for row in rows] == [trail.ids["card"], trail.ids["story"]]
    card = rows[0]
    assert (card["decision"], card["rule_id"], card["status"], card["tenant"]) == ("redact", "pii.card_number",
                                                                                    "200", "t-other")
    assert card["prompt"] == "My card number is [BANK_CARD], can you check my balance?"
    assert card["completion"].startswith("echo: My card number is")
    assert card["category"] == "pii" and card["event"] == "" and float(card["latency_ms"]) > 0
    assert card["time_utc"].endswith("Z") and card["hash"] == next(
        record["hash"] for record in records if record.get("request_id") == trail.ids["card"])


def test_paging_with_after_seq(trail):
    everything = [record["seq"] for record in trail.records()]
    assert len(everything) >= 5
    seen, after = [], 0
    for _ in range(len(everything)):
        page = trail.audit("query", "--format", "json", "--limit", "2", "--after-seq", str(after))
        assert page.returncode == 0, page.stderr
        seqs = [json.loads(line)["seq"] for line in page.stdout.splitlines()]
        seen += seqs
        if len(seqs) < 2:
            assert "more:" not in page.stderr
            break
        assert page.stderr.strip() == f"more: --after-seq {seqs[-1]}"
        after = seqs[-1]
    assert seen == everything
    newest = trail.audit("query", "--format", "json", "--limit", "2", "--newest-first")
    seqs = [json.loads(line)["seq"] for line in newest.stdout.splitlines()]
    assert seqs == everything[::-1][:2] and newest.stderr.strip() == f"more: --before-seq {seqs[-1]}"
    older = trail.audit("query", "--format", "json", "--limit", "2", "--newest-first", "--before-seq", str(seqs[-1]))
    assert [json.loads(line)["seq"] for line in older.stdout.splitlines()] == everything[::-1][2:4]


# -- export, stats ------------------------------------------------------------------------------------

def test_export_writes_every_record_in_chain_order(trail, tmp_path):
    everything = trail.records()
    out = tmp_path / "audit.jsonl"
    result = trail.audit("export", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"{len(everything)} records exported to {out}"
    assert [json.loads(line) for line in out.read_text().splitlines()] == everything
    assert not list(tmp_path.glob(".*partial"))
    to_stdout = trail.audit("export", "--tenant", "t-other")
    assert [json.loads(line)["request_id"] for line in to_stdout.stdout.splitlines()] == [trail.ids["card"],
                                                                                           trail.ids["story"]]
    assert to_stdout.stderr.strip() == "2 records exported"


def test_stats_count_what_query_finds(trail):
    everything = trail.records()
    result = trail.audit("stats", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    counted: Counter = Counter()
    for row in rows:
        assert len(row["bucket"]) == 10 and row["bucket_start"] % 86400 == 0
        counted[row["decision"]] += row["count"]
    assert counted == Counter(record.get("decision") for record in everything)
    assert counted["block"] == 1 and counted["redact"] == 1
    requests = [record for record in everything if record["kind"] == "request"]
    by_rule = trail.audit("stats", "--by", "rule_id", "--bucket", "hour", "--format", "csv", "--kind", "request")
    rows = list(csv.DictReader(io.StringIO(by_rule.stdout)))
    assert sum(int(row["count"]) for row in rows) == len(requests)
    assert {row["rule_id"]: int(row["count"]) for row in rows if row["rule_id"]} == {
        "pii.card_number": 1, "weapons.explosives": 1}
    assert all(row["bucket"].endswith(":00Z") for row in rows)
    table = trail.audit("stats", "--by", "tenant", "--tenant", "t-other").stdout.splitlines()
    assert table[0].split() == ["day", "(UTC)", "t-other", "total"]
    assert table[-1].split() == ["total", "2", "2"]


# -- verify, tampering, erasure -----------------------------------------------------------------------

def test_verify_an_intact_chain(trail):
    result = trail.audit("verify")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "intact"
    head_seq = trail.records("--newest-first", "--limit", "1")[0]["seq"]
    assert f"records checked: {head_seq}" in lines
    algorithm = "ed25519" if trail.backend == "sqlite" else "hmac-sha256"
    assert lines[0].startswith(f"key: {algorithm} key ")  # found through the config / the state directory
    assert int(next(line for line in lines if line.startswith("checkpoints checked:")).split()[-1]) >= 1
    if trail.public_key is not None:  # an auditor holding only the public key
        with_public = trail.audit("verify", "--key-file", str(trail.public_key))
        assert with_public.returncode == 0 and with_public.stdout.endswith("intact\n"), with_public.stdout


@pytest.mark.parametrize("edit", ["body", "column", "text", "delete"])
def test_verify_names_the_first_broken_link(trail, copy_dsn, edit):
    assert trail.audit("verify", dsn=copy_dsn).returncode == 0
    blocked, story = seq_of(trail, "blocked"), seq_of(trail, "story")
    record_id = {name: record_of(trail, name)["id"] for name in ("blocked", "story", "card")}  # the gateway's ids
    if edit == "body":  # someone turns a block into an allow, in the chained record itself
        changed = tamper(copy_dsn, "UPDATE audit_records SET body = REPLACE(body, '\"decision\":\"block\"', "
                                   "'\"decision\":\"allow\"') WHERE seq = ?", (blocked,))
        expected = f"record seq {blocked} (id {record_id['blocked']}): its content does not match its hash"
    elif edit == "column":  # only the indexed column, so that queries miss it
        changed = tamper(copy_dsn, "UPDATE audit_records SET decision = 'allow' WHERE seq = ?", (blocked,))
        expected = f"record seq {blocked} (id {record_id['blocked']}): column decision='allow' disagrees"
    elif edit == "text":
        changed = tamper(copy_dsn, "UPDATE audit_texts SET text = 'a harmless question' WHERE record_id = ? "
                                   "AND role = 'prompt'",
                         (record_id["story"],))
        expected = f"record seq {story} (id {record_id['story']}): the stored prompt text does not match"
    else:  # a record in the middle of the chain disappears
        changed = tamper(copy_dsn, "DELETE FROM audit_records WHERE seq = ?", (blocked,))
        expected = f"record seq {blocked + 1} (id {record_id['card']}): seq {blocked} missing before it"
    assert changed == 1
    result = trail.audit("verify", dsn=copy_dsn)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = [line for line in result.stdout.splitlines() if line.startswith("BROKEN: ")]
    assert len(broken) == 1 and broken[0].startswith("BROKEN: " + expected), result.stdout
    assert "intact" not in result.stdout


def test_a_record_that_is_not_json_is_reported_not_a_traceback(trail, copy_dsn):
    blocked = seq_of(trail, "blocked")
    assert tamper(copy_dsn, "UPDATE audit_records SET body = 'not json' WHERE seq = ?", (blocked,)) == 1
    verified = trail.audit("verify", dsn=copy_dsn)
    assert verified.returncode == 1
    assert f"BROKEN: record seq {blocked}: its body is not a JSON record: the record was edited" in verified.stdout
    queried = trail.audit("query", "--decision", "block", "--format", "json", dsn=copy_dsn)
    assert queried.returncode == 0 and "Traceback" not in queried.stderr
    [row] = [json.loads(line) for line in queried.stdout.splitlines()]
    assert (row["seq"], row["unreadable_body"]) == (blocked, "not json")


def test_verify_without_any_key_checks_the_chain_only(trail, copy_dsn, tmp_path):
    result = wardgate("audit", "verify", "--state-dir", str(tmp_path / "elsewhere"), "--audit-dsn", copy_dsn)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signatures NOT checked" in result.stdout and result.stdout.endswith("intact\n")
    # The links are checked all the same.
    assert tamper(copy_dsn, "DELETE FROM audit_records WHERE seq = 2") == 1
    broken = wardgate("audit", "verify", "--state-dir", str(tmp_path / "elsewhere"), "--audit-dsn", copy_dsn)
    assert broken.returncode == 1 and "BROKEN: record seq 3 " in broken.stdout, broken.stdout


def test_erasure_removes_a_subjects_texts_and_is_itself_audited(trail, copy_dsn):
    alice = [trail.ids["allowed"], trail.ids["blocked"]]
    declined = trail.audit("erase", "--subject", "alice", dsn=copy_dsn, input="n\n")
    assert declined.returncode == 1
    assert all(record["stored_texts"] for record in trail.records("--tenant", "t-user", dsn=copy_dsn))
    result = trail.audit("erase", "--subject", "alice", "--yes", dsn=copy_dsn)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("erased 3 stored texts")  # allowed: prompt + completion; blocked: prompt
    after = {record.get("request_id", record["id"]): record for record in trail.records(dsn=copy_dsn)}
    for record_id in alice:
        assert after[record_id]["stored_texts"] == {} and after[record_id]["texts"]  # digests stay
    assert after[trail.ids["story"]]["stored_texts"]["prompt"] == REQUESTS["story"][2]  # bob's are kept
    [event] = [record for record in after.values() if record.get("event") == "erasure"]
    subject_key = SubjectKey(bytes.fromhex((trail.state / "audit-subject.key").read_text()))
    assert event["subject"] == subject_key.pseudonym("alice") and event["texts_removed"] == 3
    assert "alice" not in json.dumps(event)
    assert f"audit record seq {event['seq']}" in result.stdout
    table = trail.audit("query", "--request-id", trail.ids["allowed"], dsn=copy_dsn).stdout
    assert "(removed)" in table and "capital of France" not in table
    assert trail.ids_of("--text", "capital") == [trail.ids["allowed"]]  # the live store is untouched
    verified = trail.audit("verify", dsn=copy_dsn)
    assert verified.returncode == 0 and verified.stdout.endswith("intact\n"), verified.stdout
    again = trail.audit("erase", "--subject", "alice", "--yes", dsn=copy_dsn)
    assert again.returncode == 0 and again.stdout.startswith("erased 0 stored texts")


def test_purge_and_checkpoint(trail, copy_dsn):
    [card] = trail.records("--request-id", trail.ids["card"], dsn=copy_dsn)
    assert tamper(copy_dsn, "UPDATE audit_texts SET expires_at = 1 WHERE record_id = ?", (card["id"],)) == 2
    purged = trail.audit("purge", dsn=copy_dsn)
    assert (purged.returncode, purged.stdout) == (0, "purged 2 expired stored texts\n")
    assert trail.records("--request-id", trail.ids["card"], dsn=copy_dsn)[0]["stored_texts"] == {}
    head = trail.records("--newest-first", "--limit", "1", dsn=copy_dsn)[0]
    signed = trail.audit("checkpoint", dsn=copy_dsn)
    assert signed.returncode == 0, signed.stderr
    algorithm = "ed25519" if trail.backend == "sqlite" else "hmac-sha256"
    assert signed.stdout.startswith(f"checkpoint: seq {head['seq']} hash {head['hash']} at ")
    assert f"signed with {algorithm} key" in signed.stdout
    verified = trail.audit("verify", dsn=copy_dsn)
    assert verified.returncode == 0 and "after the last signed checkpoint" not in verified.stdout, verified.stdout
    # Now that the head is signed, deleting the newest record is caught.
    tamper(copy_dsn, "DELETE FROM audit_records WHERE seq = ?", (head["seq"],))
    truncated = trail.audit("verify", dsn=copy_dsn)
    assert truncated.returncode == 1
    assert f"BROKEN: the chain ends at seq {head['seq'] - 1} but checkpoint seq {head['seq']}" in truncated.stdout


# -- tail -f --------------------------------------------------------------------------------------------

def test_tail_follows_new_records_until_interrupted(trail):
    newest = trail.records("--newest-first", "--limit", "3")[::-1]
    follower = subprocess.Popen([WARDGATE, "audit", "tail", *trail.store_args(), "-n", "3", "-f", "--interval",
                                 "0.05", "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=_environment())
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout], daemon=True).start()
    try:
        first = [json.loads(lines.get(timeout=30))["seq"] for _ in range(3)]
        assert first == [record["seq"] for record in newest]
        response = chat(trail.gateway, ADMIN_KEY, "What colour is the sky on a clear day?")
        assert response.status_code == 200
        arrived = json.loads(lines.get(timeout=30))
        assert arrived["request_id"] == response.headers["x-request-id"] and arrived["seq"] == first[-1] + 1
    finally:
        follower.send_signal(signal.SIGINT)
        _, errors = follower.communicate(timeout=30)
    assert follower.returncode == 0 and errors == "", errors


# -- GET /admin/audit ---------------------------------------------------------------------------------

def admin_audit(trail: Trail, key: str | None = ADMIN_KEY, **params: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(trail.gateway.url + "/admin/audit", params=params, headers=headers, timeout=30)


def test_admin_audit_returns_records_to_admins_only(trail):
    response = admin_audit(trail, decision="block")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [record["request_id"] for record in body["records"]] == [trail.ids["blocked"]]
    assert body["next_after_seq"] is None
    assert body["records"][0] == trail.records("--request-id", trail.ids["blocked"])[0]  # the CLI's json, exactly
    other = admin_audit(trail, tenant="t-other", since="1h", kind="request").json()["records"]
    assert [record["request_id"] for record in other] == [trail.ids["card"], trail.ids["story"]]
    at = other[0]["at"]
    assert [record["request_id"] for record in admin_audit(trail, since=repr(at), until=repr(other[1]["at"]),
                                                           kind="request").json()["records"]] == [trail.ids["card"]]
    assert admin_audit(trail, text="lighthouse").json()["records"][0]["request_id"] == trail.ids["story"]
    # Paging.
    first = admin_audit(trail, limit="2").json()
    assert len(first["records"]) == 2 and first["next_after_seq"] == first["records"][-1]["seq"]
    second = admin_audit(trail, limit="2", after_seq=str(first["next_after_seq"])).json()
    assert second["records"][0]["seq"] == first["next_after_seq"] + 1
    # Reading the audit log is itself audited, under the admin's key.
    reads = [record for record in trail.records("--kind", "event") if record.get("route") == "/admin/audit"]
    assert reads and all(record["key_id"] == "admin" and record["event"] == "admin_access" for record in reads)
    # Not for users, nor for the keyless.
    assert_coded_error(admin_audit(trail, key=USER_KEY), "WG3004")
    assert_coded_error(admin_audit(trail, key=None), "WG3003")
    assert_coded_error(admin_audit(trail, key="wrong"), "WG3003")


BAD_PARAMETERS = [
    ({"since": "last tuesday"}, "since"),
    ({"until": "2026-13-01"}, "until"),
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "many"}, "limit"),
    ({"after_seq": "-1"}, "after_seq"),
    ({"decision": "maybe"}, "decision"),
    ({"kind": "requests"}, "kind"),
    ({"tennant": "t-user"}, "tennant"),
    ({"since": "1h", "until": "2h"}, "until"),
]


def test_admin_audit_refuses_bad_parameters(trail):
    for params, param in BAD_PARAMETERS:
        error = assert_coded_error(admin_audit(trail, **params), "WG4003")
        assert error["param"] == param, (params, error)
        assert error["message"].startswith(param) or error["message"].startswith("Unknown"), (params, error)
    assert admin_audit(trail, limit="1000", since="2026-01-01", until="2100-01-01").status_code == 200


class _BeginsExchange:
    """What the gateway's telemetry middleware does first for every request: its record begins."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            begin_exchange(scope, "test-request")
        await self.app(scope, receive, send)


def test_admin_audit_on_a_gateway_without_an_audit_log():
    """`audit_dsn: none`: the endpoint answers, with nothing in it (in-process: no store is involved)."""
    keys = [ApiKey(id="admin", tenant="t", role="admin", sha256=hashlib.sha256(ADMIN_KEY.encode()).hexdigest())]
    endpoint = AdminAuditEndpoint(Settings(audit_dsn="none", api_keys=keys), Authenticator(keys))
    app = Starlette(routes=[Route("/admin/audit", endpoint.get)], middleware=[Middleware(_BeginsExchange)])
    with TestClient(app) as client:
        answer = client.get("/admin/audit", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert answer.status_code == 200
        assert answer.json() == {"records": [], "next_after_seq": None,
                                 "detail": "the audit log is disabled on this gateway (audit_dsn: none)"}
        assert client.get("/admin/audit", params={"limit": "0"},
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 400


# -- errors ---------------------------------------------------------------------------------------------

def test_cli_errors_are_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "state"
    cases = {
        ("query", "--state-dir", str(missing)): f"no audit log at {missing / 'audit.sqlite3'}",
        ("query", "--audit-dsn", f"postgresql://postgres@127.0.0.1:{free_port()}/test"):
            "cannot open the audit store postgresql://postgres@127.0.0.1:",
        ("query", "--audit-dsn", "none"): "the audit log is disabled",
        ("query", "--state-dir", str(missing), "--since", "yesterday-ish"): "--since: 'yesterday-ish' is not a time",
        ("tail", "--state-dir", str(missing), "--decision", "blocked"): "--decision: 'blocked' is not a decision",
        ("export", "--state-dir", str(missing), "--after-seq", "x"): "--after-seq: 'x' is not an integer",
        ("stats", "--state-dir", str(missing), "--rule", ""): "--rule: must not be empty",
    }
    for args, message in cases.items():
        result = wardgate("audit", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith(f"wardgate: {message}"), (args, result.stderr)
    assert not missing.exists()  # a read never creates an empty store


def test_keygen_and_bad_keys(trail, tmp_path):
    key = tmp_path / "signing.pem"
    assert wardgate("audit", "keygen", str(key)).returncode == 0
    again = wardgate("audit", "keygen", str(key))
    assert again.returncode == 2 and again.stderr == f"wardgate: {key} exists: not overwriting a key\n"
    # A key that did not sign these checkpoints: the chain is not vouched for.
    foreign = trail.audit("verify", "--key-file", str(key.with_suffix(".pub")))
    assert foreign.returncode == 1 and "is signed with a key given" in foreign.stdout
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    for bad, message in ((garbage, "not a PEM Ed25519 key"), (tmp_path / "absent.pub", "cannot read")):
        result = trail.audit("verify", "--key-file", str(bad))
        assert result.returncode == 2 and result.stderr.startswith("wardgate: ") and message in result.stderr
