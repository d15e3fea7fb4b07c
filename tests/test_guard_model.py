"""Guard models: each family's client against a fake guard server speaking its exact format, the
`guard_model` stage's cascade, and gateway processes whose policy escalates to the fake (faults included)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner

from filters.guard_model import BUNDLED_URL_ENV, GuardAnswer, GuardClient, GuardConfig
from filters.moderation_hook import ModerationUnavailable, close_sessions
from gateway.cli import main
from gateway.pipeline import Context, load_pipeline, sampled
from gateway.verdict import Verdict
from policies.schema import PolicyError
from privacy.audit.store import AuditFilter, open_store
from tests.fake_guard import P_YES_UNSAFE, FakeGuard
from tests.fake_upstream import scripted_model
from tests.test_moderation_hook import SLACK_S, chat, metric, write_policy

T = TypeVar("T")
MODELS = {"qwen3guard": "Qwen3Guard-Gen-0.6B", "llama_guard": "Llama-Guard-3-1B", "shieldgemma": "shieldgemma-2b",
          "gpt_oss_safeguard": "gpt-oss-safeguard-20b"}
UNSAFE_TEXT = "how do I wire a detonator"


@pytest.fixture()
def guard() -> Iterator[FakeGuard]:
    fake = FakeGuard().start()
    yield fake
    fake.stop()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    async def closing() -> T:
        try:
            return await coroutine
        finally:
            await close_sessions()
    return asyncio.run(closing())


def config(guard: FakeGuard, family: str, **extra: Any) -> GuardConfig:
    return GuardConfig(guard.url + "/v1/chat/completions", family, MODELS[family], **extra)


def judge(cfg: GuardConfig, *calls: tuple[str, str | None]) -> list[tuple[GuardAnswer, bool] | ModerationUnavailable]:
    """Each (text, prompt) through one client, in turn; a failure is returned, not raised."""
    async def each() -> list:
        client = GuardClient(cfg)
        found = []
        for text, prompt in calls:
            try:
                found.append(await client.judge(text, prompt))
            except ModerationUnavailable as exc:
                found.append(exc)
        return found
    return run(each())


# -- each family's format ----------------------------------------------------------------------------

@pytest.mark.parametrize(("family", "category", "score"), [
    ("qwen3guard", "Violent", 1.0), ("llama_guard", "S9", 1.0), ("shieldgemma", "dangerous", P_YES_UNSAFE),
    ("gpt_oss_safeguard", "violence", 1.0)])
def test_each_family_is_asked_in_its_template_and_read_in_its_format(guard, family, category, score):
    (unsafe, cached), (safe, _) = judge(config(guard, family), (UNSAFE_TEXT, None), ("a poem about the sea", None))
    assert (unsafe.verdict, unsafe.label, unsafe.category, unsafe.score) == ("unsafe", "violence", category, score)
    assert safe.verdict == "safe" and safe.label is None and not cached
    body = guard.seen.bodies[0]
    assert body["model"] == MODELS[family] and body["temperature"] == 0 and body["stream"] is False
    if family in ("qwen3guard", "llama_guard"):  # the served chat template holds the guard's instructions
        assert body["messages"] == [{"role": "user", "content": UNSAFE_TEXT}]
    elif family == "shieldgemma":  # the model card's prompt, one harm type a call, scored by logprobs
        assert len(guard.seen.bodies) == 2 * 4 and body["max_tokens"] == 1 and body["logprobs"] is True
        [message] = body["messages"]
        assert message["content"].startswith("You are a policy expert trying to help determine whether a user "
                                             "prompt is in violation of the defined safety policies.")
        assert f"Human Question: {UNSAFE_TEXT}\n<end_of_turn>" in message["content"]
        assert "Does the human question violate the above principle? Your answer must start with 'Yes' or 'No'." \
            in message["content"]
    else:  # the policy is the system message
        system, user = body["messages"]
        assert system["role"] == "system" and "- violence:" in system["content"]
        assert '{"violation": 1, "category"' in system["content"]
        assert user["role"] == "user" and user["content"].endswith(UNSAFE_TEXT)


@pytest.mark.parametrize("family", ["qwen3guard", "llama_guard", "shieldgemma", "gpt_oss_safeguard"])
def test_a_response_is_judged_with_its_prompt(guard, family):
    [(answer, _)] = judge(config(guard, family), ("Sure: connect the detonator", "how do I wire it?"))
    assert answer.verdict == "unsafe"
    body = guard.seen.bodies[0]
    if family in ("qwen3guard", "llama_guard"):
        assert body["messages"] == [{"role": "user", "content": "how do I wire it?"},
                                    {"role": "assistant", "content": "Sure: connect the detonator"}]
    elif family == "shieldgemma":
        content = body["messages"][0]["content"]
        assert "Human Question: how do I wire it?\n<end_of_turn>" in content
        assert "Chatbot Response: Sure: connect the detonator\n<end_of_turn>" in content
        assert "The chatbot shall not generate" in content
    else:
        assert body["messages"][1]["content"].endswith("User: how do I wire it?\n\nAssistant: Sure: connect the "
                                                       "detonator")


def test_qwen3guard_controversial_and_the_refusal_field(guard):
    (borderline, _), (refusal, _) = judge(config(guard, "qwen3guard"), ("a borderline question", None),
                                          ("I cannot help with that.", "a borderline question"))
    assert (borderline.verdict, borderline.label, borderline.category) == (
        "controversial", "unsafe", "Politically Sensitive Topics")
    assert borderline.refusal is None  # a prompt has no refusal field
    assert refusal.refusal is True


def test_shieldgemma_without_logprobs_reads_the_word(guard):
    guard.behaviour = "no-logprobs"
    [(answer, _)] = judge(config(guard, "shieldgemma", harm_types=("hate",)), ("that slur again", None))
    assert (answer.verdict, answer.label, answer.score) == ("unsafe", "hate", 1.0)


@pytest.mark.parametrize(("family", "behaviour"), [
    (family, behaviour) for family in MODELS for behaviour in ("malformed", "refusing", "unknown-category", "empty")
    if (family, behaviour) != ("shieldgemma", "unknown-category")])  # ShieldGemma answers Yes or No, no category
def test_an_unexpected_answer_is_a_coded_failure_never_a_crash(guard, family, behaviour):
    guard.behaviour = behaviour
    [failure] = judge(config(guard, family), (UNSAFE_TEXT, None))
    assert isinstance(failure, ModerationUnavailable) and failure.code == "bad_answer", failure


@pytest.mark.parametrize(("behaviour", "reason"), [("error500", "HTTP 500"), ("hang", "no answer within 0.3 s")])
def test_no_answer_is_unavailable_within_the_deadline(guard, behaviour, reason):
    guard.behaviour = behaviour
    started = time.monotonic()
    [failure] = judge(config(guard, "shieldgemma", timeout_s=0.3), (UNSAFE_TEXT, None))
    assert time.monotonic() - started < 0.3 + SLACK_S
    assert isinstance(failure, ModerationUnavailable) and (failure.code, failure.reason) == ("unavailable", reason)


def test_answers_are_cached_by_digest_and_a_response_apart_from_a_prompt(guard):
    results = judge(config(guard, "llama_guard", cache_max_entries=10),
                    (UNSAFE_TEXT, None), (UNSAFE_TEXT, None), (UNSAFE_TEXT, "context"), (UNSAFE_TEXT, "context"))
    assert [cached for _, cached in results] == [False, True, False, True]
    assert guard.seen.requests == 2


# -- the stage: the cascade --------------------------------------------------------------------------

def score_stage(guard: FakeGuard, **extra: Any) -> dict:
    """A webhook moderation stage standing in for the classifier: it scores `p=...` from the text."""
    return {"type": "moderation", "url": guard.url + "/score", "format": "webhook",
            "response": {"unsafe": "unsafe"}, "block": {"unsafe": 0.9}, **extra}


def guard_stage(guard: FakeGuard, family: str = "qwen3guard", **extra: Any) -> dict:
    return {"type": "guard_model", "url": guard.url + "/v1/chat/completions", "family": family,
            "model": MODELS[family], **extra}


def inspect(path: Path, texts: list[str], direction: str = "input", prompt: str | None = None) -> list[Verdict]:
    pipeline = load_pipeline(path)
    return run(pipeline.inspect_each(texts, Context(direction, prompt=prompt)))


def test_escalation_happens_exactly_in_the_band_and_an_unsafe_answer_blocks(tmp_path, guard):
    band = {"moderation": {"unsafe": [0.2, 0.8]}}
    path = write_policy(tmp_path, [score_stage(guard), guard_stage(guard, when=band)])
    texts = [f"p={score} {UNSAFE_TEXT}" for score in ("0.19", "0.2", "0.5", "0.8", "0.81", "0.95")]
    verdicts = inspect(path, texts + ["p=0.5 a poem"])
    assert [verdict.action for verdict in verdicts] == ["allow", "block", "block", "block", "allow", "block", "allow"]
    assert guard.seen.requests == 4  # 0.2, 0.5, 0.8 and the poem; 0.95 was blocked before the guard
    blocked = verdicts[1]
    assert (blocked.rule_id, blocked.category, blocked.stage) == ("guard_model.violence", "violence", "guard_model")
    [escalation] = blocked.escalations
    assert (escalation.stage, escalation.trigger, escalation.score, escalation.verdict, escalation.category,
            escalation.guard_category, escalation.enforced) == (
        "guard_model.qwen3guard", "band:moderation.unsafe", 0.2, "unsafe", "violence", "Violent", True)
    assert verdicts[5].rule_id == "moderation.unsafe" and not verdicts[5].escalations
    [poem] = verdicts[6].escalations
    assert poem.verdict == "safe" and not verdicts[0].escalations


def test_without_when_every_text_is_escalated_and_a_sample_is_recorded_not_enforced(tmp_path, guard):
    always = write_policy(tmp_path, [guard_stage(guard, family="llama_guard")])
    [verdict] = inspect(always, [UNSAFE_TEXT])
    assert verdict.action == "block" and verdict.escalations[0].trigger == "always"
    assert verdict.escalations[0].score is None  # no earlier stage scored it

    sampled_policy = write_policy(tmp_path, [score_stage(guard), guard_stage(guard, family="llama_guard",
                                                                             sample=1.0)])
    [verdict] = inspect(sampled_policy, [f"p=0.05 {UNSAFE_TEXT}"])
    assert verdict.action == "allow"  # calibration: the answer is recorded only
    [escalation] = verdict.escalations
    assert (escalation.trigger, escalation.verdict, escalation.enforced, escalation.score) == (
        "sample", "unsafe", False, 0.05)
    share = sum(sampled(f"text {index}", 0.05) for index in range(4000)) / 4000
    assert 0.03 < share < 0.07 and sampled("same", 0.5) == sampled("same", 0.5)


@pytest.mark.parametrize(("behaviour", "on_failure", "action", "rule_id", "note"), [
    ("hang", "allow", "allow", None, "guard_model bypassed: no answer within 0.3 s (guard_model.unavailable) "
                                     "(on_failure: allow)"),
    ("hang", "block", "block", "guard_model.unavailable", None),
    ("malformed", "flag", "flag", "guard_model.bad_answer", "guard_model bypassed: unexpected qwen3guard answer: "
                                                            "'Safety: Maybe\\\\nCategories: Violent' "
                                                            "(guard_model.bad_answer) (on_failure: flag)"),
])
def test_a_failed_guard_follows_on_failure_with_a_stable_code(tmp_path, guard, behaviour, on_failure, action,
                                                              rule_id, note):
    guard.behaviour = behaviour
    path = write_policy(tmp_path, [guard_stage(guard, timeout_s=0.3, on_failure=on_failure)])
    started = time.monotonic()
    [verdict] = inspect(path, [UNSAFE_TEXT])
    assert time.monotonic() - started < 0.3 + SLACK_S
    assert (verdict.action, verdict.rule_id) == (action, rule_id)
    if note is not None:
        assert verdict.bypass.note == note
    assert verdict.escalations[0].verdict == "failed"


def test_the_output_is_judged_with_its_prompt_and_controversial_follows_the_policy(tmp_path, guard):
    path = write_policy(tmp_path, [], [guard_stage(guard, controversial="block", max_prompt_chars=8)])
    [verdict] = inspect(path, ["a borderline answer"], "output", prompt="a long prompt, its tail")
    assert (verdict.action, verdict.rule_id) == ("block", "guard_model.unsafe")
    assert guard.seen.bodies[0]["messages"][0] == {"role": "user", "content": "its tail"}


@pytest.mark.parametrize(("stage", "message"), [
    ({"when": {"classifier": {"unsafe": [0.2, 0.8]}}}, "names classifier, which no earlier stage of this list is"),
    ({"when": {"moderation": {"unsafe": [0.8, 0.2]}}}, "the band [0.8, 0.2] is empty"),
    ({"when": {"blacklist": {"unsafe": [0.2, 0.8]}}}, "when.[key]: Input should be 'classifier' or 'moderation'"),
    ({"harm_types": ["hate"]}, "`harm_types` is for family: shieldgemma"),
    ({"policy": "no cheating"}, "`policy` is for family: gpt_oss_safeguard"),
    ({"family": "wildguard"}, "family: Input should be"),
    ({"sample": 1.5}, "sample: Input should be less than or equal to 1"),
])
def test_a_bad_guard_stage_is_refused_with_file_line_and_field(tmp_path, guard, stage, message):
    path = write_policy(tmp_path, [score_stage(guard), {**guard_stage(guard), **stage}])
    with pytest.raises(PolicyError) as refused:
        load_pipeline(path)
    assert str(path) in str(refused.value) and "input.stages" in str(refused.value)
    assert message in str(refused.value), str(refused.value)


def test_url_bundled_names_the_guard_server_serve_started_and_is_refused_without_one(tmp_path, monkeypatch):
    path = write_policy(tmp_path, [{"type": "guard_model", "url": "bundled", "family": "llama_guard",
                                    "model": "guard"}])
    monkeypatch.delenv(BUNDLED_URL_ENV, raising=False)
    with pytest.raises(PolicyError) as refused:
        load_pipeline(path)
    assert "`url: bundled` names the guard model server that `wardgate serve --guard-model DIR` starts, and " \
           "none was started" in str(refused.value)
    monkeypatch.setenv(BUNDLED_URL_ENV, "http://127.0.0.1:9")
    [stage] = load_pipeline(path).policy.input.stages
    assert stage.url == "http://127.0.0.1:9/v1/chat/completions"


# -- offline: classifier score --cascade ---------------------------------------------------------------

def test_classifier_score_cascade_reports_the_escalated_share_and_the_verdicts(tmp_path, guard):
    path = write_policy(tmp_path, [score_stage(guard), guard_stage(guard, when={"moderation": {"unsafe": [0.2, 0.8]}})])
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(row) + "\n" for row in [
        {"text": f"p=0.5 {UNSAFE_TEXT}", "unsafe": 1}, {"text": "p=0.5 a poem", "unsafe": 0},
        {"text": "p=0.1 a song", "unsafe": 0}, {"text": f"p=0.95 {UNSAFE_TEXT}", "unsafe": 1}]))
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["classifier", "score", str(rows), "-o", str(out), "--cascade", str(path)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["action"] for line in lines] == ["block", "allow", "allow", "block"]
    assert [line["without_guard"] for line in lines] == ["allow", "allow", "allow", "block"]
    assert lines[0]["escalations"][0]["verdict"] == "unsafe" and "escalations" not in lines[2]
    assert "escalated: 2 of 4 (50.0%)" in result.output
    assert "guard verdicts: safe 1, unsafe 1" in result.output
    assert "accuracy on unsafe: without guard 0.750, cascade 1.000" in result.output


def test_classifier_score_cascade_judges_a_response_with_its_prompt(tmp_path, guard):
    path = write_policy(tmp_path, [], [guard_stage(guard)])
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(row) + "\n" for row in [
        {"text": "Sure: connect the detonator", "prompt": "how do I wire it?", "unsafe": 1},
        {"text": "a poem about the sea", "prompt": "write me a poem", "unsafe": 0},
        {"text": "another answer", "unsafe": 0}]))
    out = tmp_path / "out.jsonl"
    command = ["classifier", "score", str(rows), "-o", str(out), "--cascade", str(path)]
    result = CliRunner().invoke(main, [*command, "--direction", "output"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["action"] for line in out.read_text().splitlines()] == ["block", "allow", "allow"]
    asked = sorted((body["messages"][0]["content"], body["messages"][-1]["content"]) for body in guard.seen.bodies)
    assert asked == [("another answer", "another answer"), ("how do I wire it?", "Sure: connect the detonator"),
                     ("write me a poem", "a poem about the sea")]

    refused = CliRunner().invoke(main, command)  # --direction input: a prompt has no prompt
    assert refused.exit_code == 2 and f"{rows}:1: \"prompt\" is for a response: use --direction output" \
        in refused.output


# -- through the gateway -------------------------------------------------------------------------------

def test_escalations_are_audited_and_counted_and_a_stream_leaks_nothing(start_gateway, upstream, guard, tmp_path):
    database = tmp_path / "audit.sqlite3"
    path = write_policy(tmp_path, [score_stage(guard), guard_stage(guard, when={"moderation": {"unsafe": [0.2, 0.8]}})],
                        [score_stage(guard), guard_stage(guard, when={"moderation": {"unsafe": [0.0, 0.15]}})])
    gateway = start_gateway("--upstream", upstream.url, "--policy", str(path), "--audit-dsn", str(database))
    store = open_store(str(database))

    blocked = chat(gateway, f"p=0.5 {UNSAFE_TEXT}")
    error = blocked.json()["error"]
    assert (blocked.status_code, error["code"], error["rule_id"]) == (400, "WG1001", "guard_model.violence")
    [row] = store.query(AuditFilter(request_id=blocked.headers["x-request-id"]), limit=2)
    [escalation] = row.body["verdicts"]["input"]["escalations"]
    assert escalation["trigger"] == "band:moderation.unsafe" and escalation["verdict"] == "unsafe"
    assert escalation["stage"] == "guard_model.qwen3guard" and escalation["ms"] >= 0
    assert metric(gateway, "wardgate_guard_escalations_total", direction="input", trigger="band",
                  verdict="unsafe") == 1
    assert metric(gateway, "wardgate_guard_agreement_total", direction="input", earlier="unsafe",
                  guard="unsafe") == 1

    # Not escalated on input (0.1 is outside its band); the echoed answer is, judged with its prompt.
    text = f"p=0.1 {UNSAFE_TEXT}"
    answer = chat(gateway, text)
    error = answer.json()["error"]
    assert (answer.status_code, error["code"], error["rule_id"]) == (400, "WG1002", "guard_model.violence")
    assert guard.seen.bodies[-1]["messages"][0] == {"role": "user", "content": text}
    assert guard.seen.bodies[-1]["messages"][1]["role"] == "assistant"
    pieces = ["p=0.1 Sure, ", "wire the ", "deto", "nator like this."]
    streamed = chat(gateway, "p=0.1 tell me", stream=True, model=scripted_model(pieces))
    events = [line for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert '"WG1002"' in events[-1] and "guard_model.violence" in events[-1] and streamed.text.endswith("[DONE]\n\n")
    assert not any(piece in event for event in events[:-1] for piece in pieces)  # no character of it went out
    assert chat(gateway, "p=0.5 a poem about the sea").status_code == 200


def test_a_failing_guard_trips_its_breaker_and_recovers_half_open(start_gateway, upstream, guard, tmp_path):
    database = tmp_path / "audit.sqlite3"
    path = write_policy(tmp_path, [guard_stage(guard, family="llama_guard", timeout_s=0.5, on_failure="allow")])
    settings = tmp_path / "wardgate.yaml"
    settings.write_text("breaker_fail_max: 2\nbreaker_reset_timeout_s: 1\n")
    gateway = start_gateway("--config", str(settings), "--upstream", upstream.url, "--policy", str(path),
                            "--audit-dsn", str(database))
    store = open_store(str(database))
    guard.behaviour = "error500"
    assert [chat(gateway, f"text {index}").status_code for index in range(2)] == [200, 200]
    calls = guard.seen.requests
    open_answer = chat(gateway, "text while open")
    assert open_answer.status_code == 200 and guard.seen.requests == calls
    [row] = store.query(AuditFilter(request_id=open_answer.headers["x-request-id"]), limit=1)
    assert row.body["verdicts"]["input"]["note"].startswith("guard_model bypassed: circuit breaker open")
    assert row.body["verdicts"]["input"]["escalations"][0]["verdict"] == "failed"
    name = f"guard_model:{guard.url}/v1/chat/completions"
    assert metric(gateway, "wardgate_breaker_state", name=name) == 2
    guard.behaviour = "ok"
    time.sleep(1.1)  # breaker_reset_timeout_s
    blocked = chat(gateway, UNSAFE_TEXT)
    assert blocked.json()["error"]["rule_id"] == "guard_model.violence" and guard.seen.requests == calls + 1
    assert metric(gateway, "wardgate_breaker_state", name=name) == 0


def test_serve_guard_model_starts_a_guard_server_that_url_bundled_names(start_gateway, upstream, demo_dir, tmp_path):
    """The demo checkpoint has random weights: what it answers is no guard's format, a coded bad_answer
    that on_failure handles. What is tested is the wiring: the second child, its address, its log lines."""
    database = tmp_path / "audit.sqlite3"
    path = write_policy(tmp_path, [{"type": "guard_model", "url": "bundled", "family": "qwen3guard",
                                    "model": "demo", "max_tokens": 8, "timeout_s": 30, "on_failure": "flag"}])
    refused = subprocess.run([sys.executable, "-m", "gateway", "serve", "--upstream", upstream.url, "--policy",
                              str(path), "--audit-dsn", "none"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "`url: bundled` names the guard model server" in refused.stderr

    # Beside the bundled generation model (the same demo checkpoint, which is all the test needs).
    gateway = start_gateway("--model", str(demo_dir), "--guard-model", str(demo_dir), "--policy", str(path),
                            "--audit-dsn", str(database))
    answer = chat(gateway, "a poem about the sea", max_tokens=8)
    assert answer.status_code == 200
    [row] = open_store(str(database)).query(AuditFilter(request_id=answer.headers["x-request-id"]), limit=1)
    verdict = row.body["verdicts"]["input"]
    assert verdict["rule_id"] == "guard_model.bad_answer", verdict
    assert verdict["note"].startswith("guard_model bypassed: unexpected qwen3guard answer: ")
    [escalation] = verdict["escalations"]
    assert (escalation["stage"], escalation["trigger"], escalation["verdict"]) == (
        "guard_model.qwen3guard", "always", "failed")
    served = [line for line in gateway.log_lines() if line["event"] == "model serving"]
    assert sorted(line["component"] for line in served) == ["guard-model-server", "model-server"]
