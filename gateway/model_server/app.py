"""The bundled model server: an OpenAI-compatible ASGI app around one `GenerationEngine`.

Routes: /v1/chat/completions, /v1/completions (both with `stream: true`), /v1/models, /v1/batch
(many prompts, one call, one batch), POST /admin/model (hot swap), /healthz, /readyz, /metrics;
/v1/embeddings answers a coded "not served" (a causal LM makes no embeddings here).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import orjson
import structlog
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from transformers import PreTrainedTokenizerBase

from gateway.errors import (
    ADMIN_UNAUTHORIZED,
    EMBEDDINGS_NOT_SERVED,
    GENERATION_FAILED,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    MODEL_OVERLOADED,
    MODEL_SWAP_FAILED,
    PROMPT_TOO_LONG,
    GatewayError,
    on_gateway_error,
    on_http_exception,
)
from gateway.model_server.engine import EngineOverloaded, GenerationEngine, PromptTooLong, SamplingParams, Sequence
from gateway.model_server.loading import DeviceChoice, LoadedModel, ModelLoadError, Quantize, load_model
from gateway.openai_messages import PASS_THROUGH, ChatMessage
from gateway.request_body import RequestModel, parse_request, read_body
from gateway.telemetry import LATENCY_BUCKETS, Metrics, Redact, RequestTelemetry

log = structlog.get_logger("wardgate.model_server")

MAX_BODY_BYTES = 4 * 1024 * 1024
SMOKE_TEST_PROMPT = "Hello"


@dataclass(frozen=True)
class ModelServerSettings:
    model_dir: Path
    quantize: Quantize = "int8"
    device: DeviceChoice = "auto"
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_batch_tokens: int = 65536
    default_max_tokens: int = 256
    admin_token: str | None = None


# -- request schemas ---------------------------------------------------------------------------


class _Sampling(BaseModel):
    model_config = PASS_THROUGH
    model: str = ""
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    n: Literal[1] = 1
    seed: int | None = None
    stream: bool = False

    def params(self, default_max_tokens: int) -> SamplingParams:
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(stop for stop in stops if stop),
            seed=self.seed,
        )


class ChatRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1)]


class BatchRequest(_Sampling):
    prompts: Annotated[list[str], Field(min_length=1, max_length=1024)]


class SwapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model_dir: str
    quantize: Quantize | None = None


# -- metrics -------------------------------------------------------------------------------------


class ModelMetrics:
    def __init__(self, metrics: Metrics) -> None:
        registry = metrics.registry
        self.queue_depth = Gauge("wardgate_model_queue_depth", "Requests waiting for a batch.", registry=registry)
        self.in_flight = Gauge("wardgate_model_requests_in_flight", "Requests queued or generating.", registry=registry)
        self.batch_size = Histogram(
            "wardgate_model_batch_size", "Sequences in each forward pass (prefill or decode step).",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=registry,
        )
        self.forward_passes = Counter("wardgate_model_forward_passes_total", "Forward passes run.", registry=registry)
        self.generated_tokens = Counter(
            "wardgate_model_generated_tokens_total", "Tokens generated (rate() gives tokens/s).", registry=registry
        )
        self.time_to_first_token = Histogram(
            "wardgate_model_time_to_first_token_seconds", "From submission to the first generated token.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.swaps = Counter("wardgate_model_swaps_total", "Hot swaps, by outcome.", ["outcome"], registry=registry)


# -- the server ----------------------------------------------------------------------------------


class ModelServer:
    def __init__(self, settings: ModelServerSettings, metrics: ModelMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine: GenerationEngine | None = None
        self._swap_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()

    @property
    def current(self) -> GenerationEngine:
        if self.engine is None:
            raise GatewayError(INTERNAL_ERROR, "No model is loaded yet.")
        return self.engine

    async def swap(self, model_dir: Path, quantize: Quantize | None = None) -> LoadedModel:
        """Load `model_dir` beside the serving model, smoke-test it, then route new requests to it.
        In-flight requests finish on the model they started with; on any failure nothing changes."""
        async with self._swap_lock:
            quantize = quantize or self.settings.quantize
            started = time.perf_counter()
            try:
                loaded = await asyncio.to_thread(load_model, model_dir, quantize, self.settings.device)
            except ModelLoadError as exc:
                self.metrics.swaps.labels("refused").inc()
                log.warning("model refused", model_dir=str(model_dir), reason=str(exc))
                raise GatewayError(MODEL_SWAP_FAILED, f"Model not swapped: {exc}") from None
            engine = self._engine_for(loaded)
            engine.start()
            try:
                prompt_ids = loaded.tokenizer(SMOKE_TEST_PROMPT)["input_ids"]
                _, finish_reason, _ = await engine.generate(prompt_ids, SamplingParams(max_tokens=2, temperature=0))
                if finish_reason == "error":
                    raise RuntimeError("the smoke-test generation failed")
            except Exception as exc:
                await engine.close()
                self.metrics.swaps.labels("refused").inc()
                log.warning("model refused", model_dir=str(model_dir), reason=str(exc))
                raise GatewayError(MODEL_SWAP_FAILED, f"Model not swapped: smoke test failed: {exc}") from None
            previous, self.engine = self.engine, engine
            if previous is not None:
                task = asyncio.create_task(self._retire(previous))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            self.metrics.swaps.labels("swapped").inc()
            log.info("model serving", model=loaded.name, model_dir=str(model_dir), quantize=quantize,
                     device=loaded.device, load_s=round(time.perf_counter() - started, 3))
            return loaded

    def _engine_for(self, loaded: LoadedModel) -> GenerationEngine:
        settings, metrics = self.settings, self.metrics
        return GenerationEngine(
            loaded,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
            max_batch_tokens=settings.max_batch_tokens,
            on_batch=metrics.batch_size.observe,
            on_first_token=metrics.time_to_first_token.observe,
            on_forward=lambda tokens: (metrics.forward_passes.inc(), metrics.generated_tokens.inc(tokens)),
        )

    @staticmethod
    async def _retire(engine: GenerationEngine) -> None:
        while engine.in_flight:
            await asyncio.sleep(0.05)
        await engine.close()

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        if self.engine is not None:
            await self.engine.close()


def _chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[ChatMessage]) -> list[int]:
    turns = [{"role": message.role, "content": _message_text(message)} for message in messages]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    # No template in the model directory: a plain transcript the base model can continue.
    transcript = "".join(f"{turn['role']}: {turn['content']}\n" for turn in turns) + "assistant:"
    return tokenizer(transcript)["input_ids"]


def _message_text(message: ChatMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    return "".join(part.text or "" for part in message.content or [])


def _completion_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(12).hex()}"


def _sse(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class Routes:
    def __init__(self, server: ModelServer, metrics: Metrics, model_metrics: ModelMetrics) -> None:
        self.server = server
        self.metrics = metrics
        self.model_metrics = model_metrics

    async def _parse(self, request: Request, model: type[RequestModel]) -> RequestModel:
        return parse_request(model, await read_body(request.scope, request.receive, MAX_BODY_BYTES))

    def _submit(self, engine: GenerationEngine, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        try:
            return engine.submit(prompt_ids, params)
        except EngineOverloaded as exc:
            raise GatewayError(MODEL_OVERLOADED, f"Refused: {exc.reason}.", headers={"Retry-After": "1"}) from None
        except PromptTooLong as exc:
            raise GatewayError(PROMPT_TOO_LONG, f"{exc}.") from None

    async def chat_completions(self, request: Request) -> Response:
        body = await self._parse(request, ChatRequest)
        engine = self.server.current
        prompt_ids = _chat_prompt_ids(engine.tokenizer, body.messages)
        return await self._respond(request, engine, body, [prompt_ids], chat=True)

    async def completions(self, request: Request) -> Response:
        body = await self._parse(request, CompletionRequest)
        engine = self.server.current
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if body.stream and len(prompts) > 1:
            raise GatewayError(INVALID_REQUEST, "Streaming takes one prompt.", param="prompt")
        prompt_ids = [engine.tokenizer(prompt)["input_ids"] for prompt in prompts]
        return await self._respond(request, engine, body, prompt_ids, chat=False)

    async def batch(self, request: Request) -> Response:
        body = await self._parse(request, BatchRequest)
        engine = self.server.current
        prompt_ids = [engine.tokenizer(prompt)["input_ids"] for prompt in body.prompts]
        params = body.params(self.server.settings.default_max_tokens)
        sequences = [self._submit(engine, ids, params) for ids in prompt_ids]
        results = []
        for sequence, ids in zip(sequences, prompt_ids, strict=True):
            text, finish_reason = await _collect(engine, sequence)
            results.append({"text": text, "finish_reason": finish_reason,
                            "usage": _usage(len(ids), len(sequence.generated))})
        return JSONResponse({"object": "batch.completion", "model": engine.loaded.name, "results": results})

    async def _respond(
        self, request: Request, engine: GenerationEngine, body: _Sampling, prompts: list[list[int]], *, chat: bool
    ) -> Response:
        params = body.params(self.server.settings.default_max_tokens)
        sequences = [self._submit(engine, ids, params) for ids in prompts]
        created = int(time.time())
        model_name = engine.loaded.name
        if body.stream:
            completion_id = _completion_id("chatcmpl" if chat else "cmpl")
            stream = _stream_chat if chat else _stream_completion
            return StreamingResponse(
                stream(engine, sequences[0], completion_id, created, model_name),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
            )
        choices, completion_tokens = [], 0
        for index, sequence in enumerate(sequences):
            text, finish_reason = await _collect(engine, sequence)
            completion_tokens += len(sequence.generated)
            if chat:
                choices.append({"index": index, "message": {"role": "assistant", "content": text},
                                "finish_reason": finish_reason, "logprobs": None})
            else:
                choices.append({"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None})
        return JSONResponse({
            "id": _completion_id("chatcmpl" if chat else "cmpl"),
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model_name,
            "choices": choices,
            "usage": _usage(sum(len(ids) for ids in prompts), completion_tokens),
        })

    async def models(self, request: Request) -> Response:
        engine = self.server.current
        return JSONResponse({"object": "list", "data": [
            {"id": engine.loaded.name, "object": "model", "created": 0, "owned_by": "wardgate",
             "quantization": engine.loaded.quantize, "device": engine.loaded.device},
        ]})

    async def embeddings(self, request: Request) -> Response:
        # A coded answer of this server's own, which the gateway passes through as it is, instead
        # of a 404 that reads as if the gateway had no such route.
        raise GatewayError(EMBEDDINGS_NOT_SERVED)

    async def swap_model(self, request: Request) -> Response:
        token = self.server.settings.admin_token
        if token is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise GatewayError(ADMIN_UNAUTHORIZED)
        body = await self._parse(request, SwapRequest)
        loaded = await self.server.swap(Path(body.model_dir), body.quantize)
        return JSONResponse({"status": "swapped", "model": loaded.name, "model_dir": str(loaded.directory),
                             "quantize": loaded.quantize, "device": loaded.device})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        engine = self.server.engine
        if engine is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready", "model": engine.loaded.name, "queue_depth": engine.queue_depth})

    async def metrics_text(self, request: Request) -> Response:
        engine = self.server.engine
        if engine is not None:
            self.model_metrics.queue_depth.set(engine.queue_depth)
            self.model_metrics.in_flight.set(engine.in_flight)
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def _collect(engine: GenerationEngine, sequence: Sequence) -> tuple[str, str]:
    parts, finish_reason = [], "stop"
    async for delta in engine.stream(sequence):
        parts.append(delta.text)
        finish_reason = delta.finish_reason or finish_reason
    if finish_reason == "error":
        raise GatewayError(GENERATION_FAILED)
    return "".join(parts), finish_reason


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# Once a stream has begun its status cannot change: a failure ends it with this event and [DONE].
_GENERATION_FAILED_EVENT = _sse({"error": {"code": GENERATION_FAILED.code, "name": GENERATION_FAILED.name,
                                           "type": GENERATION_FAILED.type, "message": GENERATION_FAILED.message}})


async def _stream_chat(
    engine: GenerationEngine, sequence: Sequence, completion_id: str, created: int, model: str
) -> AsyncIterator[bytes]:
    def chunk(delta: dict, finish_reason: str | None) -> bytes:
        return _sse({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]})

    yield chunk({"role": "assistant", "content": ""}, None)
    async for delta in engine.stream(sequence):
        if delta.finish_reason == "error":
            yield _GENERATION_FAILED_EVENT
            break
        if delta.text:
            yield chunk({"content": delta.text}, None)
        if delta.finish_reason is not None:
            yield chunk({}, delta.finish_reason)
    yield b"data: [DONE]\n\n"


async def _stream_completion(
    engine: GenerationEngine, sequence: Sequence, completion_id: str, created: int, model: str
) -> AsyncIterator[bytes]:
    async for delta in engine.stream(sequence):
        if delta.finish_reason == "error":
            yield _GENERATION_FAILED_EVENT
            break
        yield _sse({"id": completion_id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": delta.text, "finish_reason": delta.finish_reason,
                                 "logprobs": None}]})
    yield b"data: [DONE]\n\n"


async def _swap_logged(server: ModelServer, model_dir: Path) -> None:
    # A refusal is already logged and counted by swap(); the old model keeps serving.
    with contextlib.suppress(GatewayError):
        await server.swap(model_dir)


def create_model_server_app(settings: ModelServerSettings, redact_request_id: Redact | None = None) -> Starlette:
    """`redact_request_id` masks personal data in the request ids clients send before logs and traces
    get them (the gateway's forwards its clients' ids); this server has no masking of its own."""
    metrics = Metrics()
    model_metrics = ModelMetrics(metrics)
    server = ModelServer(settings, model_metrics)
    routes = Routes(server, metrics, model_metrics)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await server.swap(settings.model_dir)
        except GatewayError as exc:
            # The first model must load: a server that cannot serve should not report ready.
            raise SystemExit(f"wardgate model-server: {exc.message}") from None
        # SIGHUP: reload the configured directory (e.g. after its symlink was pointed at new weights).
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_swap_logged(server, settings.model_dir)))
        yield
        loop.remove_signal_handler(signal.SIGHUP)
        await server.close()

    route_list = [
        Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
        Route("/v1/completions", routes.completions, methods=["POST"]),
        Route("/v1/batch", routes.batch, methods=["POST"]),
        Route("/v1/models", routes.models, methods=["GET"]),
        Route("/v1/embeddings", routes.embeddings, methods=["POST"]),
        Route("/admin/model", routes.swap_model, methods=["POST"]),
        Route("/healthz", routes.healthz, methods=["GET"]),
        Route("/readyz", routes.readyz, methods=["GET"]),
        Route("/metrics", routes.metrics_text, methods=["GET"]),
    ]
    return Starlette(
        routes=route_list,
        middleware=[Middleware(RequestTelemetry, metrics=metrics,
                               route_paths=frozenset(route.path for route in route_list),
                               redact_request_id=redact_request_id)],
        exception_handlers={GatewayError: on_gateway_error, HTTPException: on_http_exception},
        lifespan=lifespan,
    )
