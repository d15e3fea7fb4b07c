"""OpenTelemetry traces: a server span per request, a child span per inspection stage and one for
the upstream call, with W3C trace context taken from the client and passed on to the model server.

Exporters: `otlp` (OTLP over HTTP to `otel_endpoint`, or the standard OTEL_EXPORTER_OTLP_* variables),
`console` (spans as JSON on stderr, for a quick look), `none` (the default: no provider is installed
and the request path skips every tracing call, so tracing off costs nothing).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

TracingExporter = Literal["none", "console", "otlp"]
TRACER_NAME = "wardgate"

_provider = None


def configure_tracing(exporter: TracingExporter, endpoint: str | None, service_name: str = "wardgate") -> None:
    """Install the tracer provider once per process (the OpenTelemetry API allows only one)."""
    global _provider
    if exporter == "none" or _provider is not None:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    else:
        span_exporter = ConsoleSpanExporter()
    _provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    # Batched: exporting never happens on the request path.
    _provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(_provider)


def shutdown_tracing() -> None:
    """Flush the spans still batched (at shutdown)."""
    if _provider is not None:
        _provider.shutdown()


def tracing_enabled() -> bool:
    return _provider is not None


class RequestSpan:
    """The server span of one request, made current for everything the request awaits."""

    def __init__(self, headers: list[tuple[bytes, bytes]], method: str, route: str) -> None:
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers
                   if name in (b"traceparent", b"tracestate")}
        parent = propagate.extract(carrier) if carrier else None
        self.span = trace.get_tracer(TRACER_NAME).start_span(
            f"{method} {route}", context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route})
        self._token = context.attach(trace.set_span_in_context(self.span))

    @property
    def trace_id(self) -> str:
        return format(self.span.get_span_context().trace_id, "032x")

    def end(self, status: int, attributes: dict[str, str | int | float]) -> None:
        self.span.set_attribute("http.response.status_code", status)
        for name, value in attributes.items():
            if value is not None:
                self.span.set_attribute(name, value)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()
        context.detach(self._token)


@contextmanager
def child_span(name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: str) -> Iterator[Span | None]:
    """A span under the current one, only if that one is being recorded (tracing on, request sampled)."""
    if not trace.get_current_span().is_recording():
        yield None
        return
    with trace.get_tracer(TRACER_NAME).start_as_current_span(name, kind=kind, attributes=attributes) as span:
        yield span


def trace_headers() -> list[tuple[str, str]]:
    """`traceparent` (and `tracestate`) for the current span, to send upstream."""
    if not trace.get_current_span().is_recording():
        return []
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())
