"""The external moderation hook: its client against a fake moderation service, the `moderation`
policy stage, and gateway processes whose policy calls the fake (fault injection included)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from filters.moderation_hook import HookConfig, ModerationClient, ModerationUnavailable, close_sessions
from gateway.enforcement import Enforcer
from gateway.exchange import begin_exchange
from gateway.pipeline import Context, load_pipeline
from gateway.verdict import Bypass, Verdict
from policies.schema import PolicyError
from privacy.audit.store import AuditFilter, open_store
from tests.conftest import free_port
from tests.fake_moderation import HIT, MISS, FakeModeration

T = TypeVar("T")
AUTH_ENV = "WARDGATE_TEST_MODERATION_KEY"
# Generous: a bound on a configured timeout, never a benchmark figure.
SLACK_S = 4.0


@pytest.fixture()
def moderation() -> Iterator[FakeModeration]:
    fake = FakeModeration().start()
    yield fake
    fake.stop()


@pytest.fixture()
def second_moderation() -> Iterator[FakeModeration]:
    fake = FakeModeration().start()
    yield fake
    fake.stop()


def moderate(config: HookConfig, *texts: str) -> list[dict[str, float] | ModerationUnavailable]:
    """Each text through one client, concurrently; a failure is returned, not raised."""
    async def each() -> list:
        client = ModerationClient(config)
        return await asyncio.gather(*(client.moderate(text) for text in texts), return_exceptions=True)
    return run(each())


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, closing the hook's pooled session before the loop goes."""
    async def closing() -> T:
        try:
            return await coroutine
        finally:
            await close_sessions()
    return asyncio.run(closing())


def openai_stage(fake: FakeModeration, **extra: object) -> dict:
    return {"type": "moderation", "url": fake.url + "/v1/moderations", **extra}


def write_policy(tmp_path: Path, input_stages: list[dict], output_stages: list[dict] | None = None,
                 **top: object) -> Path:
    path = tmp_path / "policy.yaml"
    document = {"version": "moderation-test", "input": {"stages": input_stages},
                "output": {"stages": output_stages or []}, **top}
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    return path


def chat(gateway, text: str, **extra: object) -> httpx.Response:
    body = {"model": "echo", "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30)


def metric(gateway, metric_name: str, **labels: str) -> float:
    """The sample's value on /metrics once it is there (metrics are recorded just after a response
    completes), or 0.0."""
    wanted = metric_name + "{" + ",".join(f'{key}="{value}"' for key, value in labels.items()) + "}"
    deadline = time.monotonic() + 5
    while True:
        for line in httpx.get(gateway.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        if time.monotonic() > deadline:
            return 0.0
        time.sleep(0.02)


# -- the client --------------------------------------------------------------------------------------

def test_openai_categories_map_onto_our_labels(moderation):
    config = HookConfig(moderation.url + "/v1/moderations", model="omni-moderation-latest")
    hateful, benign = moderate(config, "A hateful menace", "a poem about the sea")
    assert hateful == {"unsafe": HIT, "sexual": MISS, "sexual_minors": MISS, "hate": HIT, "harassment": HIT,
                       "self_harm": MISS, "violence": MISS, "illegal": MISS}
    assert benign["unsafe"] == MISS and set(benign.values()) == {MISS}
    assert {"input": "A hateful menace", "model": "omni-moderation-latest"} in moderation.seen.bodies
    [gore] = moderate(config, "contraband gore")
    assert (gore["violence"], gore["illegal"], gore["hate"]) == (HIT, HIT, MISS)


def test_an_openai_result_flagged_without_scores_counts_as_unsafe(moderation):
    moderation.behaviour = "no-scores"
    flagged, clean = moderate(HookConfig(moderation.url + "/v1/moderations"), "hateful", "fine")
    assert flagged["unsafe"] == 1.0 and flagged["hate"] == 1.0 and flagged["violence"] == 0.0
    assert set(clean.values()) == {0.0}
    assert moderation.seen.bodies[0] == {"input": "hateful"}  # no model named: the service's default


def test_the_webhook_template_is_filled_as_json_and_the_mapping_is_read(moderation):
    text = 'He said "hateful" \\ {text}\n\t你好 </script>'
    config = HookConfig(moderation.url + "/webhook", format="webhook",
                        request={"document": {"text": "{text}", "lang": "en"}, "tags": ["gw", "said: {text}"],
                                 "n": 3, "{text}": None},
                        response={"unsafe": "result.score", "hate": "result.labels.hate",
                                  "violence": "result.spans.0.score"})
    [scores] = moderate(config, text)
    assert scores == {"unsafe": HIT, "hate": 1.0, "violence": HIT}
    assert moderation.seen.bodies == [{"document": {"text": text, "lang": "en"}, "tags": ["gw", "said: " + text],
                                       "n": 3, "{text}": None}]


@pytest.mark.parametrize(("path", "reason"), [
    ("result.nope", "response has no field result.nope"),
    ("result.spans.7.score", "response has no field result.spans.7.score"),
    ("result.labels", "response field result.labels is not a number"),
])
def test_a_missing_mapped_field_makes_the_hook_unavailable(moderation, path, reason):
    config = HookConfig(moderation.url + "/webhook", format="webhook", response={"unsafe": path})
    [failure] = moderate(config, "anything")
    assert isinstance(failure, ModerationUnavailable) and failure.reason == reason


def test_answers_are_cached_by_normalised_text_in_an_lru_with_a_ttl(moderation):
    url = moderation.url + "/v1/moderations"

    async def calls(config: HookConfig, *texts: str, pause_s: float = 0.0) -> list:
        client = ModerationClient(config)
        found = []
        for text in texts:
            found.append(await client.moderate(text))
            await asyncio.sleep(pause_s)
        return found

    first, again = run(calls(HookConfig(url, cache_max_entries=10), "Hateful words", "ＨＡＴＥＦＵＬ words"))
    assert first == again and moderation.seen.requests == 1
    run(calls(HookConfig(url, cache_max_entries=1), "a", "b", "a"))  # b evicts a
    assert moderation.seen.requests == 4
    run(calls(HookConfig(url, cache_max_entries=10, cache_ttl_s=0.2), "c", "c", pause_s=0.3))
    assert moderation.seen.requests == 6
    moderation.behaviour = "error500"  # a failure is not cached
    config = HookConfig(url, cache_max_entries=10)
    assert all(isinstance(found, ModerationUnavailable) for found in moderate(config, "d"))
    moderation.behaviour = "ok"
    assert moderate(config, "d")[0]["unsafe"] == MISS and moderation.seen.requests == 8


@pytest.mark.parametrize(("behaviour", "path", "reason"), [
    ("hang", "/v1/moderations", "no answer within 0.5 s"),
    ("slow", "/v1/moderations", "no answer within 0.5 s"),
    ("error500", "/v1/moderations", "HTTP 500"),
    ("garbage", "/v1/moderations", "response is not JSON (HTTP 200)"),
    ("close", "/v1/moderations", "the service closed the connection"),
    ("wrong-shape", "/v1/moderations", "response has no results.0.categories"),
    ("ok", "/nowhere", "HTTP 404"),
])
def test_every_failure_raises_moderation_unavailable_within_the_timeout(moderation, behaviour, path, reason):
    moderation.behaviour, moderation.delay_s = behaviour, 3.0
    started = time.monotonic()
    [failure] = moderate(HookConfig(moderation.url + path, timeout_s=0.5), "hello")
    assert time.monotonic() - started < 0.5 + SLACK_S
    assert isinstance(failure, ModerationUnavailable) and failure.reason == reason
    if behaviour == "hang":
        assert moderation.wait_for_client_gone()  # the request was abandoned, not left running


def test_an_unreachable_service_is_unavailable():
    [failure] = moderate(HookConfig(f"http://127.0.0.1:{free_port()}/v1/moderations"), "hello")
    assert isinstance(failure, ModerationUnavailable) and failure.reason.startswith("connection failed")


def test_a_slow_answer_within_the_timeout_is_used(moderation):
    moderation.behaviour, moderation.delay_s = "slow", 0.2
    [scores] = moderate(HookConfig(moderation.url + "/v1/moderations", timeout_s=10), "hateful")
    assert scores["hate"] == HIT


def test_concurrency_is_capped(moderation):
    moderation.behaviour, moderation.delay_s = "slow", 0.2
    found = moderate(HookConfig(moderation.url + "/v1/moderations", max_concurrency=2, timeout_s=30),
                     *(f"text {n}" for n in range(6)))
    assert all(isinstance(scores, dict) for scores in found)
    assert moderation.seen.requests == 6 and moderation.seen.max_in_flight == 2


def test_waiting_for_a_concurrency_slot_counts_against_the_timeout(moderation):
    moderation.behaviour = "hang"

    async def wait_then_call() -> float:
        client = ModerationClient(HookConfig(moderation.url + "/v1/moderations", max_concurrency=1, timeout_s=1.0))
        first = asyncio.ensure_future(client.moderate("first"))
        while not moderation.seen.requests:  # the first call holds the only slot
            await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(ModerationUnavailable, match="no answer within 1 s"):
            await client.moderate("second")
        elapsed = time.monotonic() - started
        with pytest.raises(ModerationUnavailable):
            await first
        return elapsed

    # Had the wait not counted, the second call would take the first's remaining second plus its own.
    assert run(wait_then_call()) < 1.8


# -- the policy stage --------------------------------------------------------------------------------

@pytest.mark.parametrize(("stage", "message"), [
    ({"url": "ftp://example.com/m"}, "url: Value error, 'ftp://example.com/m' is not an http:// or https:// URL"),
    ({"format": "webhook"}, "needs a `response` mapping"),
    ({"format": "webhook", "response": {"toxicity": "score"}}, "response.toxicity"),
    ({"format": "webhook", "response": {"unsafe": "a..b"}}, "response paths with an empty part: a..b"),
    ({"format": "webhook", "request": {"q": "text"}, "response": {"unsafe": "s"}}, "never says {text}"),
    ({"format": "webhook", "model": "m", "response": {"unsafe": "s"}}, "`model` is for format: openai"),
    ({"response": {"unsafe": "s"}}, "`request` and `response` are for format: webhook"),
    ({"block": {"jailbreak": 0.5}}, "thresholds on labels this hook does not score: jailbreak"),
    ({"format": "webhook", "response": {"unsafe": "s"}, "flag": {"hate": 0.5}}, "does not score: hate"),
    ({"on_failure": "ignore"}, "on_failure: Input should be 'block', 'allow' or 'flag'"),
    ({"timeout_s": 0}, "timeout_s: Input should be greater than 0"),
    ({"auth_env": AUTH_ENV}, f"auth_env: Value error, environment variable {AUTH_ENV} is not set"),
])
def test_a_bad_moderation_stage_is_refused_with_file_line_and_field(tmp_path, monkeypatch, stage, message):
    monkeypatch.delenv(AUTH_ENV, raising=False)
    path = write_policy(tmp_path, [{"type": "moderation", "url": "http://127.0.0.1:1/v1/moderations", **stage}])
    with pytest.raises(PolicyError) as refused:
        load_pipeline(path)
    assert re.match(rf"{re.escape(str(path))}:[2-9]: input\.stages\.0", str(refused.value)), str(refused.value)
    assert message in str(refused.value)


def test_adjacent_expensive_stages_run_concurrently_and_a_block_cancels_the_hook(tmp_path, moderation,
                                                                                  second_moderation):
    """A classifier that blocks everything and a hook that hangs: the block does not wait for the hook,
    whichever comes first in the policy. A hook that blocks first does not wait for one that hangs."""
    moderation.behaviour = "hang"
    hanging = openai_stage(moderation, timeout_s=30, on_failure="allow")
    classifier = {"type": "classifier", "block": {"unsafe": 0.0}}
    for stages in ([classifier, hanging], [hanging, classifier]):
        pipeline = load_pipeline(write_policy(tmp_path, stages))
        timings: dict[str, float] = {}
        started = time.monotonic()
        [verdict] = run(pipeline.inspect_each(["hello there"], Context("input"), timings=timings))
        assert time.monotonic() - started < SLACK_S  # far below the hook's 30 s
        assert (verdict.action, verdict.stage) == ("block", "classifier") and verdict.rule_id.startswith("classifier.")
        assert set(timings) == {"classifier", "moderation"}  # the cancelled stage's time is counted too
        assert moderation.wait_for_client_gone()
        moderation.seen.clients_gone = 0
    pipeline = load_pipeline(write_policy(tmp_path, [hanging, openai_stage(second_moderation, block={"hate": 0.5})]))
    started = time.monotonic()
    verdict = run(pipeline.inspect(["hateful"], Context("input")))
    assert time.monotonic() - started < SLACK_S
    assert (verdict.action, verdict.rule_id, verdict.score) == ("block", "moderation.hate", HIT)


def test_a_bypass_is_kept_whichever_verdict_wins(tmp_path, moderation):
    """Across the stages and texts of one check, and across the checks of one stream."""
    moderation.behaviour = "error500"
    blacklist = {"type": "blacklist", "rules": [{"id": "in.flagme", "category": "test", "action": "flag",
                                                 "literals": ["flagme"]}]}
    path = write_policy(tmp_path, [blacklist, openai_stage(moderation, on_failure="allow")])
    pipeline = load_pipeline(path)
    verdict = run(pipeline.inspect(["please flagme", "other text"], Context("input")))
    assert (verdict.action, verdict.rule_id) == ("flag", "in.flagme")
    assert verdict.bypass == Bypass("allow", "HTTP 500")
    assert verdict.bypass.note == "moderation bypassed: HTTP 500 (on_failure: allow)"
    enforcer, scope = Enforcer(pipeline), {}
    exchange = begin_exchange(scope, "request")
    enforcer.record(scope, "output", Verdict(stage="moderation", bypass=Bypass("allow", "HTTP 500")))
    enforcer.record(scope, "output", Verdict(stage="moderation", scores={"unsafe": 0.2}))
    kept = exchange.verdicts["output"]
    assert kept.scores == {"unsafe": 0.2} and kept.bypass == Bypass("allow", "HTTP 500")


# -- through the gateway -----------------------------------------------------------------------------

def test_hook_down_with_on_failure_block_blocks_with_a_code_in_time(start_gateway, upstream, moderation, tmp_path):
    blacklist = {"type": "blacklist", "rules": [{"id": "in.forbidden", "category": "test",
                                                 "literals": ["forbidden"]}]}
    path = write_policy(tmp_path, [blacklist, openai_stage(moderation, timeout_s=0.5, auth_env=AUTH_ENV,
                                                           block={"hate": 0.5}, flag={"unsafe": 0.5})])
    with pytest.raises(RuntimeError, match=f"environment variable {AUTH_ENV} is not set"):
        start_gateway("--upstream", upstream.url, "--policy", str(path), env={AUTH_ENV: ""})
    gateway = start_gateway("--upstream", upstream.url, "--policy", str(path), env={AUTH_ENV: "s3cret"})

    assert chat(gateway, "a poem about the sea").status_code == 200
    hateful = chat(gateway, "something hateful")
    assert hateful.status_code == 400
    assert (hateful.json()["error"]["code"], hateful.json()["error"]["rule_id"]) == ("WG1001", "moderation.hate")
    assert {headers.get("authorization") for headers in moderation.seen.headers} == {"Bearer s3cret"}

    requests = moderation.seen.requests
    blocked = chat(gateway, "this is forbidden")  # the blacklist decides first: the hook is never asked
    assert blocked.json()["error"]["rule_id"] == "in.forbidden" and moderation.seen.requests == requests

    moderation.behaviour = "hang"
    started = time.monotonic()
    response = chat(gateway, "a poem about the hills")
    assert time.monotonic() - started < 0.5 + SLACK_S
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["rule_id"]) == ("WG1001", "moderation.unavailable")
    assert metric(gateway, "wardgate_moderation_bypass_total", direction="input", outcome="block") == 1


def test_on_failure_is_per_direction_and_every_bypass_is_audited_and_counted(
        start_gateway, upstream, moderation, second_moderation, tmp_path):
    database = tmp_path / "audit.sqlite3"
    path = write_policy(tmp_path, [openai_stage(moderation, timeout_s=0.5, on_failure="allow")],
                        [openai_stage(second_moderation, timeout_s=0.5, on_failure="block")],
                        streaming={"holdback_chars": 8})
    gateway = start_gateway("--upstream", upstream.url, "--policy", str(path), "--audit-dsn", str(database))
    store = open_store(str(database))

    moderation.behaviour = "error500"
    passed = chat(gateway, "tell me about the sea")
    assert passed.status_code == 200 and passed.json()["choices"][0]["message"]["content"].startswith("echo:")
    [row] = store.query(AuditFilter(request_id=passed.headers["x-request-id"]), limit=2)
    assert row.body["decision"] == "allow"
    assert row.body["verdicts"]["input"]["note"] == "moderation bypassed: HTTP 500 (on_failure: allow)"
    assert "note" not in row.body["verdicts"]["output"]  # the output hook answered
    assert metric(gateway, "wardgate_moderation_bypass_total", direction="input", outcome="allow") == 1

    moderation.behaviour, second_moderation.behaviour = "ok", "close"
    blocked = chat(gateway, "tell me about the sea")
    error = blocked.json()["error"]
    assert (blocked.status_code, error["code"], error["rule_id"]) == (400, "WG1002", "moderation.unavailable")
    [row] = store.query(AuditFilter(request_id=blocked.headers["x-request-id"]), limit=2)
    assert row.body["verdicts"]["output"]["note"] == ("moderation bypassed: the service closed the connection "
                                                      "(on_failure: block)")
    assert "note" not in row.body["verdicts"]["input"]
    assert metric(gateway, "wardgate_moderation_bypass_total", direction="output", outcome="block") == 1

    second_moderation.behaviour = "ok"
    streamed = chat(gateway, "hi", stream=True)
    assert streamed.status_code == 200 and "WG1002" not in streamed.text and streamed.text.endswith("[DONE]\n\n")
    second_moderation.behaviour = "hang"
    started = time.monotonic()
    cut = chat(gateway, "hi", stream=True)
    assert time.monotonic() - started < 0.5 + SLACK_S
    events = [line for line in cut.text.splitlines() if line.startswith("data: {")]
    assert '"WG1002"' in events[-1] and "moderation.unavailable" in events[-1] and cut.text.endswith("[DONE]\n\n")
    assert metric(gateway, "wardgate_moderation_bypass_total", direction="output", outcome="block") == 2


def test_a_failing_hook_trips_its_breaker_and_recovers_half_open(start_gateway, upstream, moderation, tmp_path):
    """After breaker_fail_max failures the hook is not called any more (the policy's on_failure answers at
    once); after the reset timeout one trial call goes through and, answered, closes the breaker."""
    database = tmp_path / "audit.sqlite3"
    path = write_policy(tmp_path, [openai_stage(moderation, timeout_s=0.5, on_failure="allow")])
    config = tmp_path / "wardgate.yaml"
    config.write_text("breaker_fail_max: 2\nbreaker_reset_timeout_s: 1\n")
    gateway = start_gateway("--config", str(config), "--upstream", upstream.url, "--policy", str(path),
                            "--audit-dsn", str(database))
    store = open_store(str(database))
    moderation.behaviour = "error500"
    assert [chat(gateway, f"text {index}").status_code for index in range(2)] == [200, 200]
    calls = moderation.seen.requests
    open_answer = chat(gateway, "text while open")
    assert open_answer.status_code == 200 and moderation.seen.requests == calls  # not called: the breaker is open
    [row] = store.query(AuditFilter(request_id=open_answer.headers["x-request-id"]), limit=1)
    assert row.body["verdicts"]["input"]["note"].startswith("moderation bypassed: circuit breaker open")
    assert metric(gateway, "wardgate_breaker_state", name=f"moderation:{moderation.url}/v1/moderations") == 2
    moderation.behaviour = "ok"
    time.sleep(1.1)  # breaker_reset_timeout_s
    recovered = chat(gateway, "text after recovery")
    assert recovered.status_code == 200 and moderation.seen.requests == calls + 1
    [row] = store.query(AuditFilter(request_id=recovered.headers["x-request-id"]), limit=1)
    assert "note" not in row.body["verdicts"]["input"]
    assert metric(gateway, "wardgate_breaker_state", name=f"moderation:{moderation.url}/v1/moderations") == 0
