"""Requests and streams pass through the gateway unchanged."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "Say hi in two languages, 你好"}]}


def _post_both(client: httpx.Client, upstream, gateway, path: str, body: dict) -> tuple[httpx.Response, httpx.Response]:
    direct = client.post(upstream.url + path, json=body)
    proxied = client.post(gateway.url + path, json=body)
    return direct, proxied


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", {"model": "echo", "prompt": "Hello"}),
        ("/v1/embeddings", {"model": "echo", "input": ["a sentence", "另一个句子"]}),
    ],
)
def test_non_streaming_response_is_byte_identical(client, upstream, gateway, path, body):
    direct, proxied = _post_both(client, upstream, gateway, path, body)
    assert direct.status_code == proxied.status_code == 200
    assert proxied.content == direct.content
    assert proxied.headers["content-type"] == direct.headers["content-type"]


def test_models_list_is_passed_through(client, upstream, gateway):
    direct = client.get(upstream.url + "/v1/models")
    proxied = client.get(gateway.url + "/v1/models")
    assert proxied.status_code == 200
    assert proxied.content == direct.content


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "stream": True}),
        ("/v1/completions", {"model": "echo", "prompt": "Hello", "stream": True}),
    ],
)
def test_stream_is_byte_identical(client, upstream, gateway, path, body):
    with client.stream("POST", upstream.url + path, json=body) as direct:
        direct_bytes = direct.read()
    with client.stream("POST", gateway.url + path, json=body) as proxied:
        assert proxied.headers["content-type"].startswith("text/event-stream")
        proxied_bytes = proxied.read()
    assert proxied_bytes == direct_bytes
    assert proxied_bytes.endswith(b"data: [DONE]\n\n")


def test_upstream_error_status_is_passed_through(client, upstream, gateway):
    """A 4xx from the model server is the client's business: same status, same body."""
    direct, proxied = _post_both(client, upstream, gateway, "/v1/chat/completions", {**CHAT, "model": "bad-request"})
    assert proxied.status_code == direct.status_code == 400
    assert proxied.content == direct.content


def test_stream_chunks_arrive_before_upstream_finishes(client, upstream, gateway):
    body = {**CHAT, "model": "slow-stream", "stream": True}
    mark = upstream.observed.mark()
    with client.stream("POST", gateway.url + "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        first = next(lines)
        # The upstream needs ~5 s for the whole stream; the first event is already here.
        assert first.startswith("data: ")
        assert json.loads(first[len("data: "):])["object"] == "chat.completion.chunk"
        assert not upstream.observed.seen("stream_done", "slow-stream", since=mark)
        assert upstream.observed.wait_for("stream_done", "slow-stream", timeout=15, since=mark)
        assert [line for line in lines if line][-1] == "data: [DONE]"


def raw_chat_request(port: int, body: dict) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
    )
    return sock


def test_client_disconnect_mid_stream_cancels_upstream(upstream, gateway):
    mark = upstream.observed.mark()
    sock = raw_chat_request(gateway.port, {**CHAT, "model": "slow-stream", "stream": True})
    assert b"200 OK" in sock.recv(65536)  # headers and the first events
    sock.close()
    # The whole stream would take ~5 s: the upstream sees its client go well before that.
    assert upstream.observed.wait_for("client_gone", "slow-stream", timeout=3, since=mark)
    assert not upstream.observed.seen("stream_done", "slow-stream", since=mark)


def test_client_disconnect_while_waiting_cancels_upstream(upstream, start_gateway):
    gateway = start_gateway("--upstream", upstream.url, "--read-timeout", "30")
    mark = upstream.observed.mark()
    sock = raw_chat_request(gateway.port, {**CHAT, "model": "hang"})
    time.sleep(0.3)  # the gateway is now waiting for the upstream's answer
    sock.close()
    assert upstream.observed.wait_for("client_gone", "hang", timeout=3, since=mark)


def test_request_id_is_accepted_echoed_and_forwarded(client, upstream, gateway):
    response = client.post(gateway.url + "/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42"
    assert upstream.observed.last_headers["x-request-id"] == "trace-42"


def test_request_id_is_generated_when_missing_or_unsafe(client, upstream, gateway):
    generated = client.post(gateway.url + "/v1/chat/completions", json=CHAT)
    request_id = generated.headers["x-request-id"]
    assert len(request_id) == 32 and int(request_id, 16) >= 0
    assert upstream.observed.last_headers["x-request-id"] == request_id
    unsafe = client.post(gateway.url + "/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "x" * 500})
    assert len(unsafe.headers["x-request-id"]) == 32


def test_hop_by_hop_headers_are_not_forwarded(client, upstream, gateway):
    headers = {
        "Connection": "keep-alive, X-Private-Hop",
        "X-Private-Hop": "secret",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "X-Tenant-Trace": "kept",
    }
    client.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=headers)
    seen = upstream.observed.last_headers
    for name in ("x-private-hop", "keep-alive", "te", "proxy-authorization"):
        assert name not in seen
    assert seen["x-tenant-trace"] == "kept"
    assert seen["accept-encoding"] == "identity"
