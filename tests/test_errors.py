"""Every failure reaches the client as its documented code, status and body, and the gateway keeps
serving afterwards."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gateway.errors import CATALOGUE, render_markdown
from tests.conftest import free_port

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello"}]}
ROOT = Path(__file__).resolve().parent.parent


def assert_coded_error(response: httpx.Response, code: str) -> dict:
    kind = CATALOGUE[code]
    assert response.status_code == kind.status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["type"] == kind.type
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text and "/gateway/" not in response.text
    return error


def assert_still_serving(client: httpx.Client, gateway) -> None:
    response = client.post(gateway.url + "/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: hello"


def test_malformed_json(client, gateway):
    response = client.post(gateway.url + "/v1/chat/completions", content=b'{"model": "echo", "messages": [')
    error = assert_coded_error(response, "WG4001")
    assert "line 1 column" in error["message"]
    assert_still_serving(client, gateway)


def test_body_over_the_cap_is_refused_by_content_length(client, gateway):
    response = client.post(gateway.url + "/v1/chat/completions", content=b"x" * (5 * 1024 * 1024))
    assert_coded_error(response, "WG4004")
    assert_still_serving(client, gateway)


def test_body_over_the_cap_is_refused_while_streaming_in(client, gateway):
    """Without a Content-Length (chunked upload) the cap is enforced by counting as it arrives."""

    def chunks():
        for _ in range(5 * 16):
            yield b"x" * 65536

    response = client.post(gateway.url + "/v1/chat/completions", content=chunks())
    assert_coded_error(response, "WG4004")
    assert_still_serving(client, gateway)


def test_invalid_utf8(client, gateway):
    body = b'{"model": "echo", "messages": [{"role": "user", "content": "caf\xe9"}]}'
    error = assert_coded_error(client.post(gateway.url + "/v1/chat/completions", content=body), "WG4002")
    assert "byte offset" in error["message"]
    assert_still_serving(client, gateway)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**CHAT, "stream": "yes"}, "stream"),
        ({**CHAT, "messages": "hello"}, "messages"),
        ({**CHAT, "messages": [{"role": "user", "content": 42}]}, "messages.0.content"),
        ({"messages": CHAT["messages"]}, "model"),
        ({**CHAT, "messages": []}, "messages"),
    ],
)
def test_wrong_field_types(client, gateway, body, param):
    error = assert_coded_error(client.post(gateway.url + "/v1/chat/completions", json=body), "WG4003")
    assert error["param"].startswith(param)
    assert_still_serving(client, gateway)


def test_body_that_is_not_an_object(client, gateway):
    assert_coded_error(client.post(gateway.url + "/v1/completions", json=["a", "b"]), "WG4003")


def test_unknown_route(client, gateway):
    assert_coded_error(client.post(gateway.url + "/v1/fine_tuning/jobs", json={}), "WG4005")
    assert_coded_error(client.get(gateway.url + "/admin"), "WG4005")
    assert_still_serving(client, gateway)


def test_wrong_method(client, gateway):
    response = client.get(gateway.url + "/v1/chat/completions")
    assert_coded_error(response, "WG4006")
    assert response.headers["allow"] == "POST"


def test_dead_upstream(client, start_gateway):
    gateway = start_gateway("--upstream", f"http://127.0.0.1:{free_port()}")
    error = assert_coded_error(client.post(gateway.url + "/v1/chat/completions", json=CHAT), "WG2001")
    assert "could not be reached" in error["message"]
    stream = client.post(gateway.url + "/v1/chat/completions", json={**CHAT, "stream": True})
    assert_coded_error(stream, "WG2001")
    assert client.get(gateway.url + "/healthz").status_code == 200


def test_slow_upstream_times_out(client, gateway):
    """The default test gateway has a 1 s read timeout; the `hang` model answers after 30 s."""
    response = client.post(gateway.url + "/v1/chat/completions", json={**CHAT, "model": "hang"})
    assert_coded_error(response, "WG2002")
    assert response.elapsed.total_seconds() < 5
    assert_still_serving(client, gateway)


def test_upstream_returning_garbage(client, gateway):
    error = assert_coded_error(
        client.post(gateway.url + "/v1/chat/completions", json={**CHAT, "model": "garbage"}), "WG2005"
    )
    assert "not a JSON object" in error["message"]
    assert_still_serving(client, gateway)


def test_upstream_server_error(client, gateway):
    error = assert_coded_error(
        client.post(gateway.url + "/v1/chat/completions", json={**CHAT, "model": "error500"}), "WG2004"
    )
    assert "HTTP 500" in error["message"]
    assert_still_serving(client, gateway)


def _stream_events(client: httpx.Client, gateway, model: str) -> list[str]:
    body = {**CHAT, "model": model, "stream": True}
    with client.stream("POST", gateway.url + "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line]


@pytest.mark.parametrize(
    ("model", "code"), [("garbage-stream", "WG2005"), ("cut-stream", "WG2006"), ("stall-stream", "WG2002")]
)
def test_broken_stream_ends_with_coded_error_event(client, gateway, model, code):
    events = _stream_events(client, gateway, model)
    assert events[-1] == "data: [DONE]"
    error = httpx.Response(200, content=events[-2][len("data: "):]).json()["error"]
    assert error["code"] == code
    # The valid events the upstream sent before the fault were delivered.
    assert '"chat.completion.chunk"' in events[0]
    assert_still_serving(client, gateway)


def test_docs_errors_md_is_generated_from_the_catalogue():
    documented = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    assert documented == render_markdown(), "regenerate: wardgate errors --markdown > docs/errors.md"
    for code in CATALOGUE:
        assert f"## {code}" in documented
