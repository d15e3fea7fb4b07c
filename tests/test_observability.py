"""Probes, Prometheus metrics and the one JSON access line per request."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import free_port
from tests.test_errors import CHAT
from tests.test_passthrough import raw_chat_request


def test_healthz_and_readyz(client, gateway, start_gateway):
    assert client.get(gateway.url + "/healthz").json() == {"status": "ok"}
    ready = client.get(gateway.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    orphan = start_gateway("--upstream", f"http://127.0.0.1:{free_port()}")
    assert client.get(orphan.url + "/healthz").status_code == 200
    not_ready = client.get(orphan.url + "/readyz")
    assert not_ready.status_code == 503
    assert "unreachable" in not_ready.json()["upstream"]


def test_metrics_count_requests_and_errors(client, gateway):
    client.post(gateway.url + "/v1/chat/completions", json=CHAT)
    client.post(gateway.url + "/v1/chat/completions", content=b"{")
    client.get(gateway.url + "/no/such/route")
    response = client.get(gateway.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'wardgate_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert 'wardgate_requests_total{route="unmatched",status="404"}' in text
    assert 'wardgate_errors_total{code="WG4001"}' in text
    assert 'wardgate_upstream_duration_seconds_count{route="/v1/chat/completions"}' in text
    assert "wardgate_requests_in_flight" in text


def test_one_json_access_line_per_request(client, gateway):
    response = client.post(gateway.url + "/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "log-me-1"})
    refused = client.post(gateway.url + "/v1/chat/completions", content=b"[", headers={"X-Request-ID": "log-me-2"})
    assert response.status_code == 200 and refused.status_code == 400
    for request_id in ("log-me-1", "log-me-2"):
        gateway.wait_for_log(lambda line, request_id=request_id: line.get("request_id") == request_id)
    lines = {line.get("request_id"): line for line in gateway.log_lines()}
    ok = lines["log-me-1"]
    assert ok["event"] == "request" and ok["level"] == "info"
    assert ok["tenant"] == "default"
    assert ok["route"] == "/v1/chat/completions"
    assert ok["status"] == 200
    assert ok["latency_ms"] >= ok["upstream_ms"] > 0
    assert lines["log-me-2"]["error_code"] == "WG4001"
    assert lines["log-me-2"]["upstream_ms"] is None


def test_client_disconnect_is_logged_as_499(start_gateway, upstream):
    gateway = start_gateway("--upstream", upstream.url, "--read-timeout", "30")
    mark = upstream.observed.mark()
    sock = raw_chat_request(gateway.port, {**CHAT, "model": "hang"})
    time.sleep(0.3)
    sock.close()
    assert upstream.observed.wait_for("client_gone", "hang", timeout=3, since=mark)
    deadline = time.monotonic() + 3
    statuses: list[int] = []
    while 499 not in statuses and time.monotonic() < deadline:
        time.sleep(0.05)
        statuses = [line["status"] for line in gateway.log_lines() if line.get("route") == "/v1/chat/completions"]
    assert statuses == [499]


LIBRARY_CHATTER = """
import logging, warnings
from gateway.telemetry import configure_logging
configure_logging({level!r}, lambda text: text)
warnings.warn("a library's deprecation", FutureWarning)
logging.getLogger("onnxruntime").warning("a library's advice")
logging.getLogger("onnxruntime").error("a library's error")
logging.getLogger("uvicorn.error").info("Started server process [1]")
logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
"""


@pytest.mark.parametrize("level", ["info", "debug"])
def test_library_warnings_reach_the_console_only_when_debugging(level):
    printed = subprocess.run([sys.executable, "-c", LIBRARY_CHATTER.format(level=level)], capture_output=True,
                             text=True, timeout=60, check=True)
    lines = [json.loads(line) for line in printed.stdout.splitlines()]
    assert printed.stderr == ""

    def levels(text: str) -> list[str]:
        return [line["level"] for line in lines if text in line["event"]]

    assert levels("a library's error") == ["error"]
    assert levels("Invalid HTTP request received.") == ["warning"]
    for chatter in ("a library's deprecation", "a library's advice", "Started server process"):
        assert levels(chatter) == (["debug"] if level == "debug" else [])
