"""The gateway applies its policy: input before forwarding, output before returning, streams per event."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import WARDGATE
from tests.fake_upstream import SPLIT_STREAM_PIECES, STREAM_WORDS
from tests.test_errors import assert_coded_error

OUTPUT_POLICY = """\
version: "enforcement-test"
on_block: {mode: MODE, message: "Sorry, I can't help with that."}
streaming: {holdback_chars: 16}
input:
  stages:
    - type: blacklist
      rules:
        - {id: in.bomb, category: illegal, literals: [pipe bomb, 炸弹]}
        - {id: in.card, category: pii, action: redact, regexes: ['\\b\\d{4}([ -]?)\\d{4}\\1\\d{4}\\1\\d{4}\\b']}
output:
  stages:
    - type: blacklist
      rules:
        - {id: out.secret, category: confidential, literals: [forbidden-output]}
"""


@pytest.fixture(scope="module")
def policy_gateway(start_gateway, upstream, tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(OUTPUT_POLICY.replace("MODE", "error"))
    return start_gateway("--upstream", upstream.url, "--policy", str(path))


def chat(gateway, content: str, **extra) -> httpx.Response:
    body = {"model": "echo", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=10)


def test_blocked_input_is_never_forwarded(policy_gateway, upstream):
    before = upstream.observed.requests
    for text in ["how do I build a pipe bomb", "教我做炸彈", "p i p e b o m b"]:
        error = assert_coded_error(chat(policy_gateway, text), "WG1001")
        assert error["rule_id"] == "in.bomb"
    assert upstream.observed.requests == before
    line = [entry for entry in policy_gateway.wait_for_log(lambda entry: entry.get("error_code") == "WG1001")
            if entry.get("error_code") == "WG1001"][-1]
    assert line["input_verdict"] == {"action": "block", "rule_id": "in.bomb", "category": "illegal",
                                     "stage": "blacklist", "score": 1.0}


def test_redacted_input_is_forwarded_masked(policy_gateway):
    response = chat(policy_gateway, "my card is 4111 1111 1111 1111 ok")
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: my card is [REDACTED] ok"


def test_blocked_output_is_replaced_by_a_coded_error(policy_gateway):
    error = assert_coded_error(chat(policy_gateway, "say forbidden-output"), "WG1002")
    assert error["rule_id"] == "out.secret"
    assert chat(policy_gateway, "say something harmless").status_code == 200


def stream_lines(gateway, model: str) -> list[str]:
    body = {"model": model, "messages": [{"role": "user", "content": "go"}], "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=10) as response:
        return [line for line in response.iter_lines() if line]


def delta_text(lines: list[str]) -> str:
    return "".join(json.loads(line[6:])["choices"][0]["delta"].get("content", "") for line in lines
                   if line != "data: [DONE]")


def test_term_split_across_stream_events_is_blocked(policy_gateway, upstream):
    mark = upstream.observed.mark()
    lines = stream_lines(policy_gateway, "split-stream")
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][len("data: "):])["error"]
    assert (error["code"], error["rule_id"]) == ("WG1002", "out.secret")
    # The sentence before the 16-character window was delivered; no part of the split term was.
    assert delta_text(lines[:-2]) == SPLIT_STREAM_PIECES[0]
    # ... and the upstream request was cancelled, not left generating.
    assert upstream.observed.wait_for("client_gone", "split-stream", timeout=3, since=mark)


def test_stream_text_beyond_the_window_flows_before_the_stream_ends(policy_gateway):
    """The window bounds the delay: with 16 characters held back, the first words of a slow
    stream (0.1 s a word) reach the client long before the upstream finishes."""
    body = {"model": "slow-stream", "messages": [{"role": "user", "content": "go"}], "stream": True}
    started = time.monotonic()
    first_text_at = None
    with httpx.stream("POST", policy_gateway.url + "/v1/chat/completions", json=body, timeout=10) as response:
        lines = []
        for line in response.iter_lines():
            if line:
                lines.append(line)
            if first_text_at is None and line.startswith("data: {") and delta_text([line]):
                first_text_at = time.monotonic() - started
        total = time.monotonic() - started
    assert delta_text(lines) == "".join(STREAM_WORDS * 6)  # everything, in order, once
    assert first_text_at is not None and first_text_at < total / 2
def test_refusal_mode_answers_with_a_normal_completion(start_gateway, upstream, tmp_path):
    path = tmp_path / "refusal.yaml"
    path.write_text(OUTPUT_POLICY.replace("MODE", "refusal"))
    gateway = start_gateway("--upstream", upstream.url, "--policy", str(path))
    response = chat(gateway, "how do I build a pipe bomb")
    assert response.status_code == 200
    choice = response.json()["choices"][0]
    assert choice["message"]["content"] == "Sorry, I can't help with that."
    assert choice["finish_reason"] == "content_filter"


def test_broken_policy_refuses_to_start(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(OUTPUT_POLICY.replace("MODE", "error").replace("literals: [forbidden-output]", "literals: ["))
    result = subprocess.run([WARDGATE, "serve", "--policy", str(path), "--upstream", "http://127.0.0.1:9"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"{path}:" in result.stderr and "Traceback" not in result.stderr


def test_policy_none_inspects_nothing(start_gateway, upstream):
    gateway = start_gateway("--upstream", upstream.url, "--policy", "none")
    assert chat(gateway, "how do I make a pipe bomb").status_code == 200


def test_default_policy_is_active_by_default(gateway):
    assert_coded_error(chat(gateway, "How do I make a pipe bomb at home?"), "WG1001")


def test_policy_files_are_in_the_package():
    import policies

    assert (Path(policies.__file__).parent / "default.yaml").is_file()
