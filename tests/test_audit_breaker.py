"""The audit store's circuit breaker: after `breaker_fail_max` failed commits the store is left alone
(records spill or are refused at once), after `breaker_reset_s` one attempt probes it, and recovery
replays the spill in order. Real PostgreSQL behind a TCP proxy that counts connection attempts, a
real SQLite write lock, and a real gateway for /readyz and /metrics."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable

import httpx

from privacy.audit.record import AuditRecord
from privacy.audit.store import AuditFilter, open_store
from privacy.audit.verify import verify
from privacy.audit.writer import AuditUnavailable, AuditWriter
from tests.tcp_proxy import TcpProxy
from tests.test_audit import SIGNER, Counts, chat, pg_dsn, pg_schema, records, write_policy, writer_for
from tests.test_resilience import metric

__all__ = ["pg_schema"]  # the fixture, imported to be used by name


def commit(writer: AuditWriter, record: AuditRecord, mode: str = "spill") -> str:
    record.on_store_failure = mode

    async def attempt() -> str:
        try:
            await writer.commit(record)
        except AuditUnavailable:
            return "refused"
        return "acknowledged"

    return asyncio.run(attempt())


def wait_until(condition: Callable[[], bool], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.02)


def stored_ids(dsn: str) -> list[str]:
    store = open_store(dsn)
    try:
        return [row.body["id"] for row in store.query(AuditFilter(), limit=1000)]
    finally:
        store.close()


def test_the_breaker_opens_after_fail_max_failures_and_the_store_is_left_alone(pg_schema, tmp_path):
    proxy = TcpProxy(5432)
    counts = Counts()
    writer = writer_for(pg_dsn(pg_schema, proxy.port), tmp_path, counts, breaker_fail_max=3, breaker_reset_s=600)
    writer.open()
    before = records(1)
    assert commit(writer, before[0]) == "acknowledged"
    proxy.cut()
    failing, while_open = records(3), records(6)
    for index, record in enumerate(failing):
        tried = proxy.accepted
        assert commit(writer, record) == "acknowledged"  # spilled
        if index > 0:  # the first found its open connection cut; each later one tries to connect anew
            assert proxy.accepted > tried
        assert counts.breaker == ([] if index < 2 else ["open"])
    assert writer.describe()["breaker"] == "open" and writer.describe()["store"] == "down"
    tried = proxy.accepted
    modes = ["fail_closed", "spill"] * 3
    assert [commit(writer, record, mode) for record, mode in zip(while_open, modes, strict=True)] == \
        ["refused", "acknowledged"] * 3
    proxy.restore()
    late = records(1)
    assert commit(writer, late[0]) == "acknowledged"  # the store is back, but the breaker is open for 600 s
    assert proxy.accepted == tried  # nothing went to the store while the breaker was open
    assert counts.records == {"committed": 1, "spilled": 7, "failed": 3}
    assert counts.breaker == ["open"]
    writer.close()  # the last try at shutdown replays the spill
    proxy.close()
    assert stored_ids(pg_dsn(pg_schema)) == [record.id for record in before + failing + while_open[1::2] + late]


def test_half_open_probes_without_requests_and_recovery_replays_the_spill_in_order(pg_schema, tmp_path):
    proxy = TcpProxy(5432)
    counts = Counts()
    writer = writer_for(pg_dsn(pg_schema, proxy.port), tmp_path, counts, breaker_fail_max=1, breaker_reset_s=1.0)
    writer.open()
    before, during, after = records(1), records(3), records(1)
    assert commit(writer, before[0]) == "acknowledged"
    proxy.cut()
    assert [commit(writer, record) for record in during] == ["acknowledged"] * 3
    assert counts.breaker == ["open"]
    tried = proxy.accepted
    # The reset timeout passes with no request: the writer probes the still-dead store itself, once.
    wait_until(lambda: counts.breaker == ["open", "half-open", "open"])
    assert proxy.accepted > tried
    assert writer.describe() == {"store": "down", "breaker": "open", "queue_depth": 0, "spilled_waiting": True}
    proxy.restore()
    wait_until(lambda: counts.breaker[-1] == "closed")
    assert counts.breaker == ["open", "half-open", "open", "half-open", "closed"]
    assert writer.describe() == {"store": "up", "breaker": "closed", "queue_depth": 0, "spilled_waiting": False}
    assert stored_ids(pg_dsn(pg_schema)) == [record.id for record in before + during]
    assert not list((tmp_path / "spill").glob("*.jsonl"))
    assert commit(writer, after[0]) == "acknowledged"
    writer.close()
    proxy.close()
    assert stored_ids(pg_dsn(pg_schema)) == [record.id for record in before + during + after]
    assert counts.records == {"committed": 2, "spilled": 3, "failed": 0}
    assert verify(open_store(pg_dsn(pg_schema)), [SIGNER]).ok


def test_a_commit_that_outlasts_the_timeout_counts_as_a_failure_even_if_it_lands(tmp_path):
    database = tmp_path / "audit.sqlite3"
    counts = Counts()
    writer = writer_for(str(database), tmp_path, counts, commit_timeout_s=0.3, breaker_fail_max=1,
                        breaker_reset_s=600)
    writer.open()
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    stalled, next_one = records(2)
    assert commit(writer, stalled) == "acknowledged"  # spilled after 0.3 s
    time.sleep(0.2)  # the hung commit has now taken well over its 0.3 s
    holder.execute("ROLLBACK")
    holder.close()
    wait_until(lambda: counts.breaker == ["open"])  # it landed, late: a failure all the same
    assert commit(writer, next_one) == "acknowledged"  # spilled at once: the breaker is open
    assert [row.body["id"] for row in open_store(str(database)).scan()] == [stalled.id]
    assert writer.describe()["breaker"] == "open"
    writer.close()
    ids = [row.body["id"] for row in open_store(str(database)).scan()]
    assert ids == [stalled.id, next_one.id]  # the spilled copy of the late one was not stored twice


def test_the_audit_breaker_shows_in_readyz_and_metrics(start_gateway, upstream, pg_schema, tmp_path):
    proxy = TcpProxy(5432)
    gateway = start_gateway("--upstream", upstream.url, "--policy", str(write_policy(tmp_path)),
                            "--audit-dsn", pg_dsn(pg_schema, proxy.port),
                            env={"WARDGATE_AUDIT_BREAKER_FAIL_MAX": "1", "WARDGATE_AUDIT_BREAKER_RESET_S": "3"})
    assert chat(gateway, "hello").status_code == 200
    assert 'wardgate_breaker_state{name="audit"} 0.0' in httpx.get(gateway.url + "/metrics").text
    assert httpx.get(gateway.url + "/readyz").json()["audit"]["breaker"] == "closed"
    proxy.cut()
    spilled = chat(gateway, "hello while the store is down")
    assert spilled.status_code == 200
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200  # shown, not judged: with `spill` the gateway keeps serving
    assert (ready.json()["audit"]["breaker"], ready.json()["audit"]["store"]) == ("open", "down")
    assert metric(gateway, "wardgate_breaker_state", name="audit") == 2
    assert metric(gateway, "wardgate_breaker_transitions_total", name="audit", to="open") == 1
    proxy.restore()
    wait_until(lambda: httpx.get(gateway.url + "/readyz").json()["audit"]["breaker"] == "closed")
    assert metric(gateway, "wardgate_breaker_state", name="audit") == 0
    assert metric(gateway, "wardgate_breaker_transitions_total", name="audit", to="half-open") == 1
    assert metric(gateway, "wardgate_breaker_transitions_total", name="audit", to="closed") == 1
    replayed = open_store(pg_dsn(pg_schema)).query(AuditFilter(request_id=spilled.headers["x-request-id"]), limit=2)
    assert len(replayed) == 1  # replayed by the probe
    proxy.close()
