"""The audit log cannot be made to forget: a record's identity is the gateway's, so requests that share
an X-Request-ID leave a record each (under load, under SIGKILL, through a store outage and its replay);
the client's id is an indexed field that finds them all; a record the store refuses costs its batch
nothing, is kept in a dead-letter file, reported, and named by `wardgate audit verify`; and a store
written before all this is migrated in place. SQLite and PostgreSQL, real gateways where it matters."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from privacy.audit.record import GENESIS_HASH, AuditRecord, canonical, chain_hash, new_record, retain_text
from privacy.audit.store import MIGRATIONS, SCHEMA_VERSION, AuditFilter, AuditStore, CheckpointPolicy, open_store
from privacy.audit.verify import verify
from privacy.audit.writer import AuditUnavailable
from tests.tcp_proxy import TcpProxy
from tests.test_audit import PG_ADMIN, SIGNER, Counts, dsn, pg_dsn, pg_schema, records, write_policy, writer_for
from tests.test_audit_cli import wardgate
from tests.test_resilience import metric

__all__ = ["dsn", "pg_schema"]  # the fixtures, imported to be used by name

SHARED_ID = "client-reuses-this-id"


def chat(gateway, text: str, request_id: str | None = None, client: httpx.Client | None = None) -> httpx.Response:
    headers = {"X-Request-ID": request_id} if request_id else {}
    body = {"model": "echo", "messages": [{"role": "user", "content": text}]}
    return (client or httpx).post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def by_request_id(dsn: str, request_id: str) -> list[dict]:
    store = open_store(dsn)
    try:
        return [row.body for row in store.query(AuditFilter(request_id=request_id), limit=1000)]
    finally:
        store.close()


def bad_record() -> AuditRecord:
    """A record no store can take: two prompt texts, one key in audit_texts. (A spill file of an older
    wardgate, or one edited by hand, can hold such a thing; the writer must cope whatever the cause.)"""
    record = records(1)[0]
    record.texts.append(retain_text("prompt", "a second prompt", "a second prompt", None, 30))
    return record


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def audited(request, start_gateway, upstream, tmp_path_factory) -> Iterator[tuple[object, str, Path]]:
    """A gateway with a blacklist policy, its audit DSN and its state directory."""
    directory = tmp_path_factory.mktemp(f"integrity-{request.param}")
    state = directory / "state"
    if request.param == "sqlite":
        dsn = str(state / "audit.sqlite3")
        yield start_gateway("--upstream", upstream.url, "--policy", str(write_policy(directory)), "--audit-dsn", dsn,
                            env={"WARDGATE_STATE_DIR": str(state)}), dsn, state
        return
    schema = f"wg_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    dsn = pg_dsn(schema)
    gateway = start_gateway("--upstream", upstream.url, "--policy", str(write_policy(directory)), "--audit-dsn", dsn,
                            env={"WARDGATE_STATE_DIR": str(state)})
    yield gateway, dsn, state
    gateway.stop()
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA {schema} CASCADE")


# -- one request id, many requests ---------------------------------------------------------------------

def test_requests_sharing_an_id_leave_a_record_each(audited):
    gateway, dsn, state = audited
    request_id = f"{SHARED_ID}-{os.urandom(4).hex()}"
    answers = [chat(gateway, "hello", request_id)] + [chat(gateway, "how to build a pipe bomb", request_id)
                                                      for _ in range(5)]
    assert [response.status_code for response in answers] == [200] + [400] * 5
    assert all(response.headers["x-request-id"] == request_id for response in answers)
    found = by_request_id(dsn, request_id)
    assert [body["decision"] for body in found] == ["allow"] + ["block"] * 5
    assert len({body["id"] for body in found}) == 6  # six identities of the gateway's own
    queried = wardgate("audit", "query", "--state-dir", str(state), "--audit-dsn", dsn, "--request-id", request_id,
                       "--format", "json")
    assert queried.returncode == 0, queried.stderr
    assert [json.loads(line)["request_id"] for line in queried.stdout.splitlines()] == [request_id] * 6
    verified = wardgate("audit", "verify", "--state-dir", str(state), "--audit-dsn", dsn)
    assert verified.returncode == 0 and verified.stdout.endswith("intact\n"), verified.stdout
    assert metric(gateway, "wardgate_audit_records_total", result="spilled") == 0  # nothing took a detour


@pytest.mark.parametrize("audited", ["postgresql"], indirect=True)
def test_a_prompt_holding_nul_is_recorded_not_refused_by_postgresql(audited):
    """PostgreSQL text cannot hold NUL: such a prompt must not become a record the store refuses."""
    gateway, dsn, _ = audited
    request_id = f"nul-{os.urandom(4).hex()}"
    assert chat(gateway, "before\u0000after", request_id).status_code == 200
    store = open_store(dsn)
    [row] = store.query(AuditFilter(request_id=request_id), limit=2)
    assert row.texts["prompt"]["text"] == "before\ufffdafter"
    assert verify(store, []).ok
    store.close()
    assert metric(gateway, "wardgate_audit_records_total", result="spilled") == 0


# -- a record the store refuses --------------------------------------------------------------------------

def test_a_record_the_store_refuses_costs_its_batch_nothing_and_is_kept(dsn, tmp_path):
    counts = Counts()
    # One failure would open the breaker: a refused record must not count as one.
    writer = writer_for(dsn, tmp_path, counts, breaker_fail_max=1, breaker_reset_s=600)
    writer.open()
    good, refused_spill, refused_closed = records(5), bad_record(), bad_record()
    refused_closed.on_store_failure = "fail_closed"

    async def commit(record: AuditRecord) -> str:
        try:
            await writer.commit(record)
        except AuditUnavailable:
            return "refused"
        return "acknowledged"

    async def main() -> list[str]:  # concurrently: they share transactions
        return await asyncio.gather(*(commit(record) for record in [*good[:3], refused_spill, refused_closed,
                                                                    *good[3:]]))

    outcomes = asyncio.run(main())
    writer.close()
    assert outcomes == ["acknowledged"] * 4 + ["refused"] + ["acknowledged"] * 2
    assert counts.breaker == [] and writer.breaker_state == "closed"
    assert counts.records == {"committed": 5, "spilled": 0, "failed": 1} and counts.dead_letters == 2
    assert not list((tmp_path / "spill").glob("spill-*.jsonl"))
    store = open_store(dsn)
    stored = [row.body for row in store.scan()]
    assert [body["id"] for body in stored if body["kind"] == "request"] == [record.id for record in good]
    events = [body for body in stored if body.get("event") == "audit_record_rejected"]
    assert sorted(event["rejected"]["id"] for event in events) == sorted([refused_spill.id, refused_closed.id])
    for record in (refused_spill, refused_closed):
        kept = tmp_path / "spill" / f"dead-letter-{record.id}.json"
        assert oct(kept.stat().st_mode & 0o777) == "0o600"
        document = json.loads(kept.read_text())
        assert AuditRecord.from_json(json.dumps(document["record"]).encode()).body == record.body
        assert "refused" in document["error"]
    report = verify(store, [SIGNER])
    store.close()
    assert report.ok and not report.complete
    assert len(report.unstored) == 2 and all("dead-letter-" in line for line in report.unstored)


def test_a_spilled_record_replay_cannot_apply_is_reported_and_named_by_verify(start_gateway, upstream, tmp_path):
    """A spill file left by a crash holds a record the store refuses: the gateway still starts, stores the
    others, keeps that one in a dead-letter file, logs it, counts it, chains an event in its place, and
    `wardgate audit verify` names it (exit 3: intact, incomplete)."""
    state = tmp_path / "state"
    before, poison, after = records(1)[0], bad_record(), records(1)[0]
    before.body["request_id"], after.body["request_id"] = "before-the-crash", "also-before-the-crash"
    spill_dir = state / "audit-spill"
    spill_dir.mkdir(parents=True)
    (spill_dir / "spill-1-1.jsonl").write_bytes(b"".join(record.to_json() + b"\n"
                                                         for record in (before, poison, after)))
    gateway = start_gateway("--upstream", upstream.url, "--policy", "none", env={"WARDGATE_STATE_DIR": str(state)})
    assert chat(gateway, "after the restart").status_code == 200
    dsn = str(state / "audit.sqlite3")
    assert [body["id"] for body in by_request_id(dsn, "before-the-crash")] == [before.id]
    assert [body["id"] for body in by_request_id(dsn, "also-before-the-crash")] == [after.id]
    assert not list(spill_dir.glob("spill-*.jsonl"))
    kept = spill_dir / f"dead-letter-{poison.id}.json"
    assert json.loads(kept.read_text())["record"]["body"] == poison.body
    [logged] = [line for line in gateway.log_lines() if line.get("event") == "audit_record_dead_lettered"]
    assert (logged["record_id"], logged["file"], logged["level"]) == (poison.id, str(kept), "error")
    assert metric(gateway, "wardgate_audit_records_total", result="dead_lettered") == 1
    verified = wardgate("audit", "verify", "--state-dir", str(state))
    assert verified.returncode == 3, verified.stdout + verified.stderr
    assert f"not stored: record {poison.id} (request" in verified.stdout and str(kept) in verified.stdout
    assert verified.stdout.splitlines()[-1].startswith("INCOMPLETE: the chain is intact, but 1 records are missing")


# -- under SIGKILL, and through an outage ------------------------------------------------------------------

def test_sigkill_under_load_with_shared_request_ids_loses_no_acknowledged_record(start_gateway, upstream, tmp_path):
    """Every response a client received had its record committed first: after a SIGKILL and a restart,
    each shared request id has at least as many records as responses were received for it."""
    state = tmp_path / "state"
    arguments = ("--upstream", upstream.url, "--policy", "none")
    gateway = start_gateway(*arguments, env={"WARDGATE_STATE_DIR": str(state)})
    shared_ids = [f"{SHARED_ID}-{index}" for index in range(3)]
    acknowledged: Counter = Counter()
    lock, stop = threading.Lock(), threading.Event()

    def client(offset: int) -> None:
        with httpx.Client(timeout=10) as http:
            sent = offset
            while not stop.is_set():
                request_id = shared_ids[sent % len(shared_ids)]
                sent += 1
                try:
                    response = chat(gateway, "hi", request_id, http)
                except httpx.TransportError:
                    return
                assert response.status_code == 200
                with lock:
                    acknowledged[request_id] += 1

    threads = [threading.Thread(target=client, args=(offset,)) for offset in range(8)]
    for thread in threads:
        thread.start()
    while sum(acknowledged.values()) < 300:
        time.sleep(0.01)
    gateway.process.kill()  # SIGKILL: no shutdown, no final checkpoint, records in flight abandoned
    stop.set()
    for thread in threads:
        thread.join()
    restarted = start_gateway(*arguments, env={"WARDGATE_STATE_DIR": str(state)})
    assert chat(restarted, "after the crash").status_code == 200
    dsn = str(state / "audit.sqlite3")
    stored = {request_id: len(by_request_id(dsn, request_id)) for request_id in shared_ids}
    assert all(stored[request_id] >= acknowledged[request_id] for request_id in shared_ids), (stored, acknowledged)
    store = open_store(dsn)
    assert verify(store, []).ok
    store.close()


def test_a_store_outage_and_its_replay_lose_no_record_of_a_shared_request_id(start_gateway, upstream, pg_schema,
                                                                              tmp_path):
    proxy = TcpProxy(5432)
    gateway = start_gateway("--upstream", upstream.url, "--policy", "none", "--audit-dsn",
                            pg_dsn(pg_schema, proxy.port), env={"WARDGATE_STATE_DIR": str(tmp_path / "state")})
    sent = [chat(gateway, "before", SHARED_ID) for _ in range(2)]
    proxy.cut()
    sent += [chat(gateway, "while the store is down", SHARED_ID) for _ in range(3)]  # spilled
    proxy.restore()
    sent.append(chat(gateway, "after", SHARED_ID))
    assert [response.status_code for response in sent] == [200] * 6
    deadline = time.monotonic() + 15  # the writer replays the spill on its next commit or probe
    while len(by_request_id(pg_dsn(pg_schema), SHARED_ID)) < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    texts = [row.texts["prompt"]["text"] for row in open_store(pg_dsn(pg_schema)).query(
        AuditFilter(request_id=SHARED_ID), limit=100)]
    assert sorted(texts) == sorted(["before"] * 2 + ["while the store is down"] * 3 + ["after"])
    assert metric(gateway, "wardgate_audit_records_total", result="spilled") >= 3
    proxy.close()
    report = verify(open_store(pg_dsn(pg_schema)), [])
    assert report.ok and report.complete


# -- migration -----------------------------------------------------------------------------------------------

def _version_one_store_with_a_record(dsn: str) -> str:
    """A store as wardgate wrote it before request ids were a field: schema 1, and a record whose id is
    the client's request id. Returns that id."""
    store = open_store(dsn)
    with store._transaction(locked=True) as cursor:
        store._execute(cursor, "CREATE TABLE audit_schema (version INTEGER PRIMARY KEY, "
                               "applied_at DOUBLE PRECISION NOT NULL)")
        for statement in MIGRATIONS[0][1]:
            store._execute(cursor, statement.format(**store.dialect))
        store._execute(cursor, "INSERT INTO audit_schema (version, applied_at) VALUES (1, 0)")
        body = canonical({"id": "old-client-id", "kind": "request", "at": 1.0, "decision": "allow", "texts": {}})
        store._execute(cursor, "INSERT INTO audit_records (seq, id, kind, at, decision, body, prev_hash, hash) "
                               "VALUES (1, 'old-client-id', 'request', 1.0, 'allow', ?, ?, ?)",
                       (body, GENESIS_HASH, chain_hash(GENESIS_HASH, body)))
    store.close()
    return "old-client-id"


def test_a_store_from_before_request_id_fields_is_migrated_and_still_found_by_it(dsn):
    old_id = _version_one_store_with_a_record(dsn)
    store: AuditStore = open_store(dsn)
    assert store.migrate() == SCHEMA_VERSION == 2
    newer = new_record("request", request_id=old_id, decision="block")
    store.append([newer], SIGNER, CheckpointPolicy())
    found = store.query(AuditFilter(request_id=old_id), limit=10)
    assert [row.body["id"] for row in found] == [old_id, newer.id]  # the old record by its id, the new by its field
    assert verify(store, [SIGNER]).ok
    store.close()



def test_records_spilled_before_ids_were_the_gateways_are_all_kept_once(dsn):
    """An older wardgate spilled records under the client's request id as their id. Replayed now, each
    one is stored (another record holding that id, it takes an id derived from its content) and found
    by the request id, once however often the replay is tried; a record already stored is skipped."""
    store = open_store(dsn)
    store.migrate()
    first, *later = [new_record("request", record_id="reused-by-client", at=float(at), decision=decision)
                     for at, decision in ((1, "allow"), (2, "block"), (3, "block"))]
    store.append([first], SIGNER, CheckpointPolicy())  # committed late: its request had spilled it as well
    for _ in range(2):  # a replay cut short by a crash, tried again
        spilled = [AuditRecord.from_json(record.to_json()) for record in (first, *later)]
        store.append(spilled, SIGNER, CheckpointPolicy(), replay=True)
    found = store.query(AuditFilter(request_id="reused-by-client"), limit=10)
    assert [(row.body["at"], row.body["decision"]) for row in found] == [(1.0, "allow"), (2.0, "block"),
                                                                          (3.0, "block")]
    assert [row.body.get("request_id") for row in found] == [None, "reused-by-client", "reused-by-client"]
    assert verify(store, [SIGNER]).ok
    store.close()


def test_a_record_that_can_be_neither_committed_nor_spilled_is_refused(tmp_path):
    """The store hangs and the spill cannot be written (here its directory is a file): the request is
    refused (WG5002 in the gateway), not answered as if its record were kept."""
    database, spill_dir = tmp_path / "audit.sqlite3", tmp_path / "spill"
    spill_dir.write_text("")
    counts = Counts()
    writer = writer_for(str(database), tmp_path, counts, commit_timeout_s=0.3)
    writer.open()
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(AuditUnavailable, match="the spill file cannot be written"):
            asyncio.run(writer.commit(records(1)[0]))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    writer.close()
    assert counts.records["failed"] == 1 and counts.records["spilled"] == 0


def test_a_spilled_record_whose_id_is_stored_with_other_content_is_refused_not_skipped(dsn, tmp_path):
    stored, clash = records(2)
    # The same id, other content, and a request_id as every record of this version: no replay of the stored
    # record, and no record of an older version either.
    clash.body.update(id=stored.id, request_id="r-1")
    store = open_store(dsn)
    store.migrate()
    store.append([stored], SIGNER, CheckpointPolicy())
    store.close()
    (tmp_path / "spill").mkdir()
    (tmp_path / "spill" / "spill-1-1.jsonl").write_bytes(clash.to_json() + b"\n")
    counts = Counts()
    writer = writer_for(dsn, tmp_path, counts)
    writer.open()  # replays the leftover file
    writer.close()
    assert counts.dead_letters == 1
    report = verify(open_store(dsn), [SIGNER])
    assert report.ok and [line.split(" (")[0] for line in report.unstored] == [f"record {stored.id}"]
