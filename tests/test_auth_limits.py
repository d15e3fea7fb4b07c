"""API keys and admission control, against real gateway processes."""

from __future__ import annotations

import hashlib
import threading

import httpx

from tests.test_errors import CHAT, assert_coded_error

KEY = "wg-test-key-acme"


def _keyed_gateway(start_gateway, upstream, tmp_path, *extra: str):
    config = tmp_path / "wardgate.yaml"
    config.write_text(
        "api_keys:\n"
        f"  - {{id: acme-ci, tenant: acme, sha256: {hashlib.sha256(KEY.encode()).hexdigest()}}}\n"
    )
    return start_gateway("--config", str(config), "--upstream", upstream.url, *extra)


def test_api_keys(client, start_gateway, upstream, tmp_path):
    gateway = _keyed_gateway(start_gateway, upstream, tmp_path)
    url = gateway.url + "/v1/chat/completions"
    assert_coded_error(client.post(url, json=CHAT), "WG3001")
    assert_coded_error(client.post(url, json=CHAT, headers={"Authorization": "Bearer wrong"}), "WG3002")
    assert_coded_error(client.post(url, json=CHAT, headers={"Authorization": "Basic " + KEY}), "WG3001")
    ok = client.post(url, json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    # The gateway's key is consumed, never shown to the model server.
    assert "authorization" not in upstream.observed.last_headers
    # Probes stay open for the orchestrator.
    assert client.get(gateway.url + "/healthz").status_code == 200
    access = [line for line in gateway.wait_for_log(lambda line: line.get("tenant") == "acme")
              if line.get("route") == "/v1/chat/completions"]
    assert [line["tenant"] for line in access] == [None, None, None, "acme"]


def test_upstream_key_replaces_client_key(client, start_gateway, upstream, tmp_path):
    gateway = _keyed_gateway(start_gateway, upstream, tmp_path)
    gateway2 = start_gateway(
        "--upstream", upstream.url, env={"WARDGATE_UPSTREAM_API_KEY": "sk-upstream-secret"}
    )
    client.post(gateway2.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer client"})
    assert upstream.observed.last_headers["authorization"] == "Bearer sk-upstream-secret"
    client.post(gateway.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
    assert "authorization" not in upstream.observed.last_headers


def test_without_keys_the_client_authorization_reaches_the_upstream(client, gateway, upstream):
    client.post(gateway.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-model"})
    assert upstream.observed.last_headers["authorization"] == "Bearer sk-model"


def test_excess_load_gets_429_with_retry_after(client, start_gateway, upstream):
    gateway = start_gateway("--upstream", upstream.url, "--max-concurrency", "1", "--max-queue", "0")
    first_event = threading.Event()
    finished = []

    def hold_the_only_slot() -> None:
        body = {**CHAT, "model": "slow-stream", "stream": True}
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=30) as response:
            for _ in response.iter_lines():
                first_event.set()
        finished.append(response.status_code)

    holder = threading.Thread(target=hold_the_only_slot)
    holder.start()
    assert first_event.wait(10)
    refused = client.post(gateway.url + "/v1/chat/completions", json=CHAT)
    assert_coded_error(refused, "WG5001")
    assert int(refused.headers["retry-after"]) >= 1
    assert client.get(gateway.url + "/healthz").status_code == 200  # probes are never queued
    holder.join(30)
    assert finished == [200]
    assert client.post(gateway.url + "/v1/chat/completions", json=CHAT).status_code == 200
    metrics = client.get(gateway.url + "/metrics").text
    assert "wardgate_requests_rejected_total 1.0" in metrics


def test_queued_request_waits_for_a_slot(start_gateway, upstream):
    gateway = start_gateway(
        "--upstream", upstream.url, "--max-concurrency", "1", "--max-queue", "4", "--queue-timeout", "20"
    )
    finished: list[tuple[str, int]] = []

    def call(name: str) -> None:
        body = {**CHAT, "model": "slow-stream", "stream": True}
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=30) as response:
            response.read()
            finished.append((name, response.status_code))

    seen_before = upstream.observed.requests
    first = threading.Thread(target=call, args=("first",))
    first.start()
    while upstream.observed.requests == seen_before:  # the first request holds the slot before the second comes
        threading.Event().wait(0.01)
    second = threading.Thread(target=call, args=("second",))
    second.start()
    first.join(30)
    second.join(30)
    assert finished == [("first", 200), ("second", 200)]
