"""Traces: a span per request and per stage, exported over OTLP to a collector (a real HTTP server
here), with the client's trace continued and passed on to the model server; logs name the trace."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class FakeCollector:
    """Receives OTLP/HTTP protobuf exports on loopback and keeps the spans."""

    def __init__(self) -> None:
        self.spans: list = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1/traces"
        self._ready.set()
        self._loop.run_forever()

    async def _export(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        with self._lock:
            for resource_spans in export.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self.spans += list(scope_spans.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    def wait_for(self, count: int, timeout_s: float = 10) -> list:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.spans) >= count:
                    return list(self.spans)
            time.sleep(0.05)
        return list(self.spans)


def test_a_request_is_traced_across_its_stages_and_the_upstream(start_gateway, upstream, tmp_path):
    collector = FakeCollector()
    policy = tmp_path / "policy.yaml"
    policy.write_text('version: "trace"\ninput:\n  stages:\n    - type: blacklist\n      rules:\n'
                      '        - {id: in.bomb, category: illegal, literals: [pipe bomb]}\n')
    gateway = start_gateway("--upstream", upstream.url, "--policy", str(policy), "--otel-exporter", "otlp",
                            "--otel-endpoint", collector.url, env={"OTEL_BSP_SCHEDULE_DELAY": "50"})
    response = httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                          json={"model": "echo", "messages": [{"role": "user", "content": "hello"}]},
                          headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
    assert response.status_code == 200
    spans = {span.name: span for span in collector.wait_for(3)}
    assert set(spans) >= {"POST /v1/chat/completions", "inspect blacklist", "upstream"}
    server = spans["POST /v1/chat/completions"]
    assert server.trace_id.hex() == CLIENT_TRACE and server.parent_span_id.hex() == CLIENT_SPAN
    for child in ("inspect blacklist", "upstream"):
        assert spans[child].trace_id.hex() == CLIENT_TRACE
        assert spans[child].parent_span_id == server.span_id
    # The model server continues the trace from the gateway's upstream span, not from the client's.
    forwarded = upstream.observed.last_headers["traceparent"]
    assert forwarded == f"00-{CLIENT_TRACE}-{spans['upstream'].span_id.hex()}-01"
    request_id = response.headers["x-request-id"]
    [line] = [entry for entry in gateway.wait_for_log(lambda entry: entry.get("request_id") == request_id)
              if entry.get("request_id") == request_id and entry.get("event") == "request"]
    assert line["trace_id"] == CLIENT_TRACE


def test_without_an_exporter_the_client_trace_context_passes_through(gateway, upstream):
    response = httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                          json={"model": "echo", "messages": [{"role": "user", "content": "hello"}]},
                          headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
    assert response.status_code == 200
    assert upstream.observed.last_headers["traceparent"] == f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
