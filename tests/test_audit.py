"""The audit log: the chain and its checkpoints on SQLite and PostgreSQL, group commit, spill and
replay, and the gateway leaving one committed record per request before its response completes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from privacy.audit.record import SubjectKey, canonical, chain_hash, new_record, retain_text
from privacy.audit.signing import HmacSigner, generate_ed25519, load_ed25519
from privacy.audit.store import SCHEMA_VERSION, AuditFilter, AuditStore, CheckpointPolicy, StoreError, open_store
from privacy.audit.verify import verify
from privacy.audit.writer import AuditUnavailable, AuditWriter, WriterSettings, leftover_spill_files
from tests.tcp_proxy import TcpProxy
from tests.test_errors import assert_coded_error

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
SIGNER = HmacSigner(b"test-key-" * 4)
SUBJECTS = SubjectKey(b"subject-key-" * 3)
EVERY_3 = CheckpointPolicy(every_records=3, every_s=3600)


def pg_dsn(schema: str, port: int = 5432) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/test?options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A PostgreSQL schema of the test's own, dropped afterwards."""
    schema = f"wg_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    yield schema
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def dsn(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "audit.sqlite3")
    return pg_dsn(request.getfixturevalue("pg_schema"))


@pytest.fixture
def store(dsn) -> Iterator[AuditStore]:
    store = open_store(dsn)
    store.migrate()
    yield store
    store.close()


def records(count: int, subject: str | None = "alice", tenant: str = "acme") -> list:
    made = []
    for index in range(count):
        record = new_record("request", tenant=tenant, route="/v1/chat/completions",
                            decision="block" if index % 3 == 0 else "allow", status=200)
        record.texts.append(retain_text("prompt", f"prompt {index} of a@b.example", f"prompt {index} of [EMAIL]",
                                        SUBJECTS.pseudonym(subject) if subject else None, retention_days=30))
        made.append(record)
    return made


def execute(dsn: str, statement: str, parameters: tuple = ()) -> None:
    """Tampering from outside wardgate: straight to the database."""
    tamper = open_store(dsn)
    with tamper._transaction() as cursor:
        tamper._execute(cursor, statement, parameters)
    tamper.close()


# -- the chain ----------------------------------------------------------------------------------------

def test_an_untouched_chain_verifies(store):
    for _ in range(3):
        store.append(records(4), SIGNER, EVERY_3)
    report = verify(store, [SIGNER])
    assert report.ok, report.problem
    assert (report.records, report.head_seq) == (12, 12)
    assert report.checkpoints == 3  # at seq 4, 8, 12: one per batch once 3 records have gathered
    assert [checkpoint.seq for checkpoint in store.checkpoints()] == [4, 8, 12]


TAMPERINGS = {
    "edited body": ("UPDATE audit_records SET body = REPLACE(body, '\"block\"', '\"allow\"') WHERE seq = 4",
                    "record seq 4", "the record was edited"),
    "unreadable body": ("UPDATE audit_records SET body = 'not json' WHERE seq = 3", "record seq 3",
                        "not a JSON record"),
    "reordered records": ("UPDATE audit_records SET seq = -seq WHERE seq IN (6, 7); "
                          "UPDATE audit_records SET seq = CASE seq WHEN -6 THEN 7 ELSE 6 END WHERE seq < 0",
                          "record seq 6", "a record was removed, inserted or moved"),
    "deleted record": ("DELETE FROM audit_records WHERE seq = 5", "record seq 6", "seq 5 missing"),
    "edited column": ("UPDATE audit_records SET decision = 'allow' WHERE seq = 5", "record seq 5",
                      "column decision"),
    "edited text": ("UPDATE audit_texts SET text = 'something else' WHERE record_id = "
                    "(SELECT id FROM audit_records WHERE seq = 2)", "record seq 2", "the text was edited"),
    "deleted tail": ("DELETE FROM audit_records WHERE seq > 6", "the chain ends at seq 6",
                     "records were deleted"),
    "forged checkpoint": ("UPDATE audit_checkpoints SET signature = REPLACE(signature, SUBSTR(signature, 1, 1), "
                          "CASE WHEN SUBSTR(signature, 1, 1) = 'a' THEN 'b' ELSE 'a' END) WHERE seq = 8",
                          "checkpoint at seq 8", "does not verify"),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_every_kind_of_tampering_is_named_precisely(store, dsn, tampering):
    for _ in range(3):
        store.append(records(4), SIGNER, EVERY_3)
    statements, where, what = TAMPERINGS[tampering]
    for statement in statements.split("; "):
        execute(dsn, statement)
    report = verify(store, [SIGNER])
    assert not report.ok
    assert where in report.problem and what in report.problem, report.problem


def test_a_chain_rewritten_with_fresh_hashes_is_caught_by_its_checkpoint(store, dsn):
    """An attacker who recomputes every hash after editing a record still cannot sign a checkpoint."""
    for _ in range(3):
        store.append(records(4), SIGNER, EVERY_3)
    rows = store.query(AuditFilter(), limit=100)
    prev_hash = rows[2].hash
    for row in rows[3:]:  # edit seq 4 (a block), then rebuild the chain from there on
        assert row.seq != 4 or row.body["decision"] == "block"
        body = dict(row.body, decision="allow") if row.seq == 4 else row.body
        text, new_hash = canonical(body), chain_hash(prev_hash, canonical(body))
        execute(dsn, "UPDATE audit_records SET body = ?, prev_hash = ?, hash = ?, decision = ? WHERE seq = ?",
                (text, prev_hash, new_hash, body.get("decision"), row.seq))
        prev_hash = new_hash
    report = verify(store, [SIGNER])
    assert report.problem == "checkpoint at seq 4: the signed hash is not the chain's hash there: the chain was " \
                             "rewritten"


def test_erasure_removes_a_subjects_texts_and_the_chain_still_verifies(store):
    store.append(records(3, subject="alice") + records(2, subject="bob"), SIGNER, EVERY_3)
    assert store.erase_subject("alice", SUBJECTS, SIGNER, EVERY_3) == (3, 6)
    remaining = store.query(AuditFilter(), limit=10)
    assert [bool(row.texts) for row in remaining] == [False, False, False, True, True, False]
    assert remaining[-1].body["event"] == "erasure" and remaining[-1].body["texts_removed"] == 3
    assert remaining[-1].body["subject"] == SUBJECTS.pseudonym("alice")  # named by its pseudonym, not in the clear
    assert verify(store, [SIGNER]).ok
    assert store.query(AuditFilter(text="[EMAIL]"), limit=10)[0].seq == 4


def test_purge_removes_only_expired_texts(store):
    store.append(records(2), SIGNER, EVERY_3)
    assert store.purge_expired() == 0
    assert store.purge_expired(now=10**11) == 2
    assert verify(store, [SIGNER]).ok


def test_replayed_records_are_not_chained_twice(store):
    batch = records(3)
    store.append(batch, SIGNER, EVERY_3)
    assert store.append(batch + records(1), SIGNER, EVERY_3, replay=True) == 4
    assert verify(store, [SIGNER]).ok


def test_writers_in_parallel_share_one_chain(dsn):
    """Several gateway processes append to one store: the lock keeps one gapless chain."""
    open_store(dsn).migrate()

    def write() -> None:
        own = open_store(dsn)
        for _ in range(10):
            own.append(records(5), SIGNER, EVERY_3)
        own.close()

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = verify(open_store(dsn), [SIGNER])
    assert report.ok, report.problem
    assert report.records == 200


def test_migrations_are_numbered_and_a_newer_schema_is_refused(store, dsn):
    assert store.migrate() == SCHEMA_VERSION  # idempotent
    execute(dsn, "INSERT INTO audit_schema (version, applied_at) VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this wardgate"):
        open_store(dsn).migrate()


def test_ed25519_checkpoints_verify_with_the_public_key_alone(store, tmp_path):
    public = generate_ed25519(tmp_path / "audit.key")
    signer = load_ed25519(tmp_path / "audit.key")
    store.append(records(4), signer, EVERY_3)
    report = verify(store, [load_ed25519(public)])
    assert report.ok and report.checkpoints == 1


def test_after_a_key_rotation_every_key_in_use_is_needed(store, tmp_path):
    generate_ed25519(tmp_path / "old.key")
    old_key = load_ed25519(tmp_path / "old.key")
    store.append(records(4), old_key, EVERY_3)
    store.append(records(4), SIGNER, EVERY_3)
    both = verify(store, [old_key, SIGNER])
    assert both.ok and both.checkpoints == 2 and both.notes == []
    only_new = verify(store, [SIGNER])
    assert only_new.ok and only_new.checkpoints == 1
    assert only_new.notes == [f"1 checkpoints are signed with ed25519 {old_key.key_id}, a key not given: "
                              "signatures not checked"]


def test_query_filters_and_stats(store):
    store.append(records(6, tenant="acme") + records(3, tenant="globex"), SIGNER, EVERY_3)
    assert len(store.query(AuditFilter(tenant="globex"), limit=100)) == 3
    assert len(store.query(AuditFilter(decision="block"), limit=100)) == 3
    page = store.query(AuditFilter(), limit=4)
    assert [row.seq for row in store.query(AuditFilter(after_seq=page[-1].seq), limit=4)] == [5, 6, 7, 8]
    assert [row.seq for row in store.query(AuditFilter(text="prompt 4 of"), limit=100)] == [5]
    counts: dict[str, int] = {}
    for _, value, count in store.stats(AuditFilter(), 86400, "decision"):
        counts[value] = counts.get(value, 0) + count
    assert counts == {"block": 3, "allow": 6}  # indexes 0 and 3 of the 6, index 0 of the 3


# -- the writer ---------------------------------------------------------------------------------------

class Counts:
    """The writer's observer: how many transactions, what became of the records, and the states its
    store's breaker went through."""

    def __init__(self) -> None:
        self.transactions = 0
        self.records = {"committed": 0, "spilled": 0, "failed": 0}
        self.dead_letters = 0
        self.breaker: list[str] = []

    def committed(self, records: int, seconds: float) -> None:
        self.transactions += 1
        self.records["committed"] += records

    def spilled(self, records: int) -> None:
        self.records["spilled"] += records

    def failed(self, records: int) -> None:
        self.records["failed"] += records

    def dead_lettered(self, records: int) -> None:
        self.dead_letters += records

    def breaker_changed(self, state: str) -> None:
        self.breaker.append(state)


def writer_for(dsn: str, tmp_path: Path, counts: Counts, **settings) -> AuditWriter:
    return AuditWriter(open_store(dsn), SIGNER, tmp_path / "spill", WriterSettings(**settings), counts)


def test_concurrent_commits_share_transactions(dsn, tmp_path):
    counts = Counts()
    writer = writer_for(dsn, tmp_path, counts)
    writer.open()

    async def main() -> None:
        await asyncio.gather(*(writer.commit(record) for record in records(300)))

    asyncio.run(main())
    writer.close()
    assert counts.records["committed"] == 300
    assert counts.transactions < 300  # many records per transaction
    report = verify(open_store(dsn), [SIGNER])
    assert report.ok and report.records == 300
    assert report.notes == []  # close() signed the head


def test_store_down_spills_or_fails_closed_then_replays_in_order(pg_schema, tmp_path):
    proxy = TcpProxy(5432)
    counts = Counts()
    # Every commit tries the store: the breaker that stops that is tests/test_audit_breaker.py's subject.
    writer = writer_for(pg_dsn(pg_schema, proxy.port), tmp_path, counts, breaker_fail_max=100)
    writer.open()

    async def commit(record, mode: str) -> str:
        record.on_store_failure = mode
        try:
            await writer.commit(record)
        except AuditUnavailable:
            return "refused"
        return "acknowledged"

    async def main() -> None:
        before, during, after = records(2), records(6), records(2)
        assert [await commit(record, "spill") for record in before] == ["acknowledged"] * 2
        proxy.cut()
        results = [await commit(record, "spill" if index % 2 else "fail_closed")
                   for index, record in enumerate(during)]
        assert results == ["refused", "acknowledged"] * 3
        assert not writer.store_up
        proxy.restore()
        for record in after:
            assert await commit(record, "spill") == "acknowledged"
        stored = [row.body["id"] for row in open_store(pg_dsn(pg_schema)).query(AuditFilter(), limit=100)]
        # Spilled records went in before the newer ones, and nothing refused was stored.
        assert stored == [record.id for record in before + during[1::2] + after]

    asyncio.run(main())
    writer.close()
    proxy.close()
    assert counts.records == {"committed": 4, "spilled": 3, "failed": 3}  # spilled ones count once
    assert not list((tmp_path / "spill").glob("*.jsonl"))
    assert verify(open_store(pg_dsn(pg_schema)), [SIGNER]).ok


def test_a_spill_file_left_by_a_crash_is_replayed_at_the_next_start(pg_schema, tmp_path):
    proxy = TcpProxy(5432)
    # The first failure opens the breaker for longer than the test: nothing tries to replay the spill.
    writer = writer_for(pg_dsn(pg_schema, proxy.port), tmp_path, Counts(), breaker_fail_max=1, breaker_reset_s=60.0)
    writer.open()
    proxy.cut()

    async def spill_three() -> None:
        for record in records(3):
            await writer.commit(record)

    asyncio.run(spill_three())
    # The process "dies" here: no close(), its file lock goes with its file handle.
    for _, handle in writer.spill._segments:
        handle.close()
    assert len(leftover_spill_files(tmp_path / "spill")) == 1
    restarted = writer_for(pg_dsn(pg_schema), tmp_path, Counts())
    restarted.open()
    restarted.close()
    proxy.close()
    assert open_store(pg_dsn(pg_schema)).head()[0] == 3
    assert not leftover_spill_files(tmp_path / "spill")


# -- the gateway --------------------------------------------------------------------------------------

POLICY = """version: "audit-test"
audit: {retention: RETENTION, on_store_failure: ON_FAILURE}
input:
  stages:
    - type: blacklist
      rules:
        - {id: in.bomb, category: illegal, literals: [pipe bomb]}
"""


def write_policy(directory: Path, retention: str = "redacted", on_failure: str = "spill") -> Path:
    path = directory / "policy.yaml"
    path.write_text(POLICY.replace("RETENTION", retention).replace("ON_FAILURE", on_failure))
    return path


def chat(gateway, text: str, model: str = "echo", **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30)


def test_each_request_is_committed_before_its_response_completes(start_gateway, upstream, tmp_path):
    database = tmp_path / "audit.sqlite3"
    gateway = start_gateway("--upstream", upstream.url, "--policy", str(write_policy(tmp_path)),
                            "--audit-dsn", str(database))
    store = open_store(str(database))
    responses = {
        "allow": chat(gateway, "mail me at alice@example.com or 13812345678", user="subject-7"),
        "stream": chat(gateway, "stream to bob@example.com", stream=True),
        "block": chat(gateway, "how do I build a pipe bomb"),
        "error": httpx.post(gateway.url + "/v1/chat/completions", content=b"{not json", timeout=30),
        "unmatched": httpx.get(gateway.url + "/nowhere", timeout=30),
    }
    httpx.get(gateway.url + "/healthz", timeout=30)
    # No waiting: each record was committed before its response completed.
    found = {name: store.query(AuditFilter(request_id=response.headers["x-request-id"]), limit=2)
             for name, response in responses.items()}
    assert all(len(rows) == 1 for rows in found.values()), found
    allowed = found["allow"][0]
    assert allowed.body["decision"] == "allow" and allowed.body["status"] == 200
    assert allowed.body["upstream"]["status"] == 200
    assert allowed.body["tokens"] == {"prompt": 5, "completion": 8}
    assert allowed.body["policy_version"] == "audit-test" and len(allowed.body["policy_digest"]) == 64
    assert set(allowed.body["stage_ms"]["input"]) == {"blacklist"}
    assert allowed.texts["prompt"]["text"] == "mail me at [EMAIL] or [PHONE]"
    assert allowed.texts["completion"]["text"] == "echo: mail me at [EMAIL] or [PHONE]"
    subject_key = SubjectKey(bytes.fromhex((gateway.log_path.parent / "state" / "audit-subject.key").read_text()))
    assert allowed.texts["prompt"]["subject"] == subject_key.pseudonym("subject-7")  # never the raw `user`
    # Nothing inspects this policy's output: the stream's text is still kept, as a whole answer's is.
    assert found["stream"][0].texts["completion"]["text"] == "Hello from the fake model, 你好!"
    blocked = found["block"][0].body
    assert (blocked["decision"], blocked["rule_id"], blocked["error_code"]) == ("block", "in.bomb", "WG1001")
    assert blocked["verdicts"]["input"]["stage"] == "blacklist"
    assert found["error"][0].body["error_code"] == "WG4001"
    assert found["unmatched"][0].body["route"] == "unmatched"
    events = store.query(AuditFilter(kind="event"), limit=10)
    assert [row.body["event"] for row in events] == ["policy_activated"]
    kinds = [row.body["kind"] for row in store.query(AuditFilter(), limit=100)]
    assert kinds.count("request") == 5  # the probe left none
    assert verify(store, []).ok
    metrics = httpx.get(gateway.url + "/metrics", timeout=30).text
    assert 'wardgate_audit_records_total{result="committed"}' in metrics
    assert 'wardgate_decisions_total{action="block",category="illegal",direction="input",rule_id="in.bomb"} 1.0' \
        in metrics
    assert "wardgate_audit_queue_depth 0.0" in metrics


@pytest.mark.parametrize("retention", ["none", "full"])
def test_retention_mode_decides_what_text_is_kept(start_gateway, upstream, tmp_path, retention):
    database = tmp_path / "audit.sqlite3"
    gateway = start_gateway("--upstream", upstream.url, "--policy", str(write_policy(tmp_path, retention)),
                            "--audit-dsn", str(database))
    text = "call 13812345678"
    response = chat(gateway, text)
    [row] = open_store(str(database)).query(AuditFilter(request_id=response.headers["x-request-id"]), limit=1)
    stored = row.texts["prompt"]
    assert stored["text"] == (None if retention == "none" else text)
    # Hash-only still proves what was said, to whoever holds the text.
    assert hashlib.sha256(bytes.fromhex(stored["salt"]) + text.encode()).hexdigest() == row.body["texts"]["prompt"]


def test_a_store_outage_fails_closed_or_spills_per_policy(start_gateway, upstream, pg_schema, tmp_path):
    proxy = TcpProxy(5432)
    closed_dir, spill_dir = tmp_path / "closed", tmp_path / "spill"
    closed_dir.mkdir(), spill_dir.mkdir()
    fail_closed = start_gateway("--upstream", upstream.url, "--policy", str(write_policy(closed_dir, "redacted",
                                "fail_closed")), "--audit-dsn", pg_dsn(pg_schema, proxy.port))
    spilling = start_gateway("--upstream", upstream.url, "--policy", str(write_policy(spill_dir)),
                             "--audit-dsn", pg_dsn(pg_schema, proxy.port))
    assert chat(fail_closed, "hello").status_code == 200
    proxy.cut()
    assert_coded_error(chat(fail_closed, "hello"), "WG5002")
    spilled = chat(spilling, "hello while the store is down")
    assert spilled.status_code == 200  # acknowledged: it is in the spill file, fsynced
    audit_state = httpx.get(spilling.url + "/readyz", timeout=30).json()["audit"]
    assert (audit_state["store"], audit_state["spilled_waiting"]) == ("down", True)
    assert "error" not in audit_state  # the probe is open to anyone: the error stays in the log
    proxy.restore()
    store = open_store(pg_dsn(pg_schema))
    deadline = 50
    while deadline and not store.query(AuditFilter(request_id=spilled.headers["x-request-id"]), limit=1):
        assert chat(spilling, "after recovery").status_code == 200  # the next commit replays the spill first
        deadline -= 1
    assert store.query(AuditFilter(request_id=spilled.headers["x-request-id"]), limit=1)
    answered_once_the_store_is_back(fail_closed)
    audit_state = httpx.get(spilling.url + "/readyz", timeout=30).json()["audit"]
    assert (audit_state["store"], audit_state["spilled_waiting"]) == ("up", False)
    proxy.close()
    assert verify(store, []).ok


def test_the_gateway_refuses_to_start_without_its_audit_store(upstream, tmp_path):
    import subprocess

    from tests.conftest import WARDGATE, free_port

    result = subprocess.run([WARDGATE, "serve", "--upstream", upstream.url, "--port", str(free_port()),
                             "--audit-dsn", f"postgresql://postgres@127.0.0.1:{free_port()}/test"],
                            capture_output=True, text=True, timeout=60,
                            env={"WARDGATE_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr.startswith("wardgate: audit log unavailable: cannot open the audit store postgresql://")
    assert "Traceback" not in result.stderr


def test_a_thousand_mixed_requests_leave_one_record_each(start_gateway, upstream, tmp_path):
    database = tmp_path / "audit.sqlite3"
    gateway = start_gateway("--upstream", upstream.url, "--policy", str(write_policy(tmp_path)),
                            "--audit-dsn", str(database))
    chat_url = gateway.url + "/v1/chat/completions"

    def one(index: int, client: httpx.Client) -> str:
        kind = index % 5
        if kind == 0:
            response = client.post(chat_url, json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
        elif kind == 1:
            response = client.post(chat_url, json={"model": "echo", "stream": True,
                                                    "messages": [{"role": "user", "content": f"story {index}"}]})
        elif kind == 2:
            response = client.post(chat_url, json={"model": "echo", "messages": [
                {"role": "user", "content": "how to make a pipe bomb"}]})
        elif kind == 3:
            response = client.post(chat_url, content=b'{"model": 3')
        else:
            response = client.get(gateway.url + "/v1/models")
        assert response.status_code in (200, 400), response.text
        return response.headers["x-request-id"]

    def worker(indexes: range) -> list[str]:
        with httpx.Client(timeout=30) as client:
            return [one(index, client) for index in indexes]

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        ids = [request_id for chunk in pool.map(worker, [range(start, 1000, 8) for start in range(8)])
               for request_id in chunk]
    assert len(set(ids)) == 1000
    store = open_store(str(database))
    stored = [row.body["request_id"] for row in store.scan() if row.body["kind"] == "request"]
    assert sorted(stored) == sorted(ids)  # exactly one record each, none extra
    decisions = {row.body["request_id"]: row.body["decision"] for row in store.scan() if row.body["kind"] == "request"}
    assert sorted(decisions.values()).count("block") == 200 and sorted(decisions.values()).count("error") == 200
    assert verify(store, []).ok


def test_a_gateway_killed_under_load_keeps_every_acknowledged_record(start_gateway, upstream, tmp_path):
    database, state = tmp_path / "audit.sqlite3", tmp_path / "state"
    arguments = ("--upstream", upstream.url, "--policy", "none", "--audit-dsn", str(database))
    gateway = start_gateway(*arguments, env={"WARDGATE_STATE_DIR": str(state)})
    acknowledged: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                try:
                    response = http.post(gateway.url + "/v1/chat/completions",
                                         json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
                except httpx.TransportError:
                    return
                acknowledged.append(response.headers["x-request-id"])

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    while len(acknowledged) < 300:
        time.sleep(0.01)
    gateway.process.kill()  # SIGKILL: no shutdown, no final checkpoint, records in flight abandoned
    stop.set()
    for thread in threads:
        thread.join()
    restarted = start_gateway(*arguments, env={"WARDGATE_STATE_DIR": str(state)})
    assert chat(restarted, "after the crash").status_code == 200
    store = open_store(str(database))
    stored = stored_request_ids(store)
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged requests have no record"
    assert verify(store, []).ok


def test_an_audit_store_of_an_unknown_kind_is_refused_before_start(tmp_path):
    import subprocess

    from tests.conftest import WARDGATE

    result = subprocess.run([WARDGATE, "serve", "--audit-dsn", "mysql://root@127.0.0.1/audit"], capture_output=True,
                            text=True, timeout=60, env={"WARDGATE_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "audit_dsn: Value error, must be a SQLite file path" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing was created


def test_a_bad_audit_section_names_its_line(tmp_path):
    from policies.schema import PolicyError, load_policy

    path = tmp_path / "policy.yaml"
    path.write_text('version: "x"\naudit:\n  retention: partial\n  retention_days: 0\n')
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    lines = str(raised.value).splitlines()
    assert lines[0].startswith(f"{path}:3: audit.retention: Input should be 'none', 'redacted' or 'full'")
    assert lines[1].startswith(f"{path}:4: audit.retention_days: Input should be greater than 0")


class OwnPostgres:
    """A PostgreSQL cluster of the test's own (initdb in a scratch directory), so that it can be
    stopped and started mid-run without touching the shared server."""

    BIN = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]) if Path("/usr/lib/postgresql").is_dir() \
        else Path("/usr/bin")

    def __init__(self) -> None:
        import shutil
        import subprocess
        import tempfile

        from tests.conftest import free_port

        self.directory = Path(tempfile.mkdtemp(prefix="wardgate-pg-"))
        shutil.chown(self.directory, "postgres")
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run = lambda *args: subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True,
                                                 capture_output=True, timeout=60)
        self._run(str(self.BIN / "initdb"), "-D", str(self.directory / "data"), "-A", "trust", "-U", "postgres",
                  "--no-sync")
        self.start()

    def start(self) -> None:
        self._run(str(self.BIN / "pg_ctl"), "-D", str(self.directory / "data"), "-w", "-l",
                  str(self.directory / "log"), "-o", f"-p {self.port} -k {self.directory} "
                  "-c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        """`immediate`: the way a crashed or killed database server goes away."""
        self._run(str(self.BIN / "pg_ctl"), "-D", str(self.directory / "data"), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        import shutil

        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    cluster = OwnPostgres()
    yield cluster
    cluster.remove()


def test_postgresql_stopped_mid_run_then_restarted(start_gateway, upstream, own_postgres, tmp_path):
    """The database server itself goes down under live traffic: the spilling gateway keeps answering,
    the fail-closed one refuses with WG5002, and after the restart every acknowledged request has its
    record and the chain verifies."""
    closed_dir, spill_dir = tmp_path / "closed", tmp_path / "spill"
    closed_dir.mkdir(), spill_dir.mkdir()
    spilling = start_gateway("--upstream", upstream.url, "--policy", str(write_policy(spill_dir)),
                             "--audit-dsn", own_postgres.dsn)
    fail_closed = start_gateway("--upstream", upstream.url, "--policy", str(write_policy(closed_dir, "redacted",
                                "fail_closed")), "--audit-dsn", own_postgres.dsn)
    acknowledged = [chat(gateway, "before").headers["x-request-id"] for gateway in (spilling, fail_closed)]
    own_postgres.stop()
    during = [chat(spilling, f"while the database is down {index}") for index in range(5)]
    assert [response.status_code for response in during] == [200] * 5
    acknowledged += [response.headers["x-request-id"] for response in during]
    assert_coded_error(chat(fail_closed, "while the database is down"), "WG5002")
    own_postgres.start()
    acknowledged.append(chat(spilling, "after").headers["x-request-id"])
    store = open_store(own_postgres.dsn)
    deadline = time.monotonic() + 15  # the writer tries the store again every second, requests or not
    while not set(acknowledged) <= stored_request_ids(store) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(acknowledged) <= stored_request_ids(store)
    answered_once_the_store_is_back(fail_closed)
    assert verify(store, []).ok
    store.close()


def stored_request_ids(store: AuditStore) -> set[str]:
    return {row.body.get("request_id") for row in store.scan()}


def answered_once_the_store_is_back(gateway, timeout_s: float = 15) -> None:
    """A fail-closed gateway refuses (WG5002, nothing else) until its writer has seen the store again."""
    deadline = time.monotonic() + timeout_s
    while (response := chat(gateway, "is the store back?")).status_code != 200 and time.monotonic() < deadline:
        assert_coded_error(response, "WG5002")
        time.sleep(0.2)
    assert response.status_code == 200


def test_a_store_that_hangs_does_not_hang_the_request(tmp_path):
    """Another process holds the SQLite write lock: a commit gives up after commit_timeout_s — spilled or
    refused per policy — and once the lock goes every acknowledged record is stored exactly once."""
    import sqlite3

    database = tmp_path / "audit.sqlite3"
    writer = writer_for(str(database), tmp_path, Counts(), commit_timeout_s=0.5, breaker_reset_s=0.1)
    writer.open()
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    spilled, refused, later = records(1)[0], records(1)[0], records(1)[0]
    refused.on_store_failure = "fail_closed"

    async def main() -> None:
        started = time.monotonic()
        await writer.commit(spilled)  # acknowledged: in the spill file, after one timeout
        with pytest.raises(AuditUnavailable, match="a commit is hanging"):
            await writer.commit(refused)  # at once: the store is known to hang
        assert time.monotonic() - started < 0.5 + 4  # one timeout of 0.5 s, generously
        holder.execute("ROLLBACK")
        await asyncio.sleep(0.5)  # the hung commit completes
        await writer.commit(later)

    asyncio.run(main())
    holder.close()
    writer.close()
    ids = [row.body["id"] for row in open_store(str(database)).scan()]
    assert sorted(ids) == sorted([spilled.id, later.id])  # each once; the refused request left none
    assert verify(open_store(str(database)), [SIGNER]).ok
