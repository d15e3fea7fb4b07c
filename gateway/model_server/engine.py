"""Batched generation: concurrent requests share forward passes.

Requests that arrive within `max_wait_s` of each other (up to `max_batch_size`) form one batch: the
prompts are prefilled together (left-padded) and every decode step is one forward pass for the
whole batch, until the last sequence in it finishes. Requests arriving meanwhile queue for the next
batch (request-level batching; merging new sequences into a running batch's KV cache is the next
step). The model runs in one worker thread; the event loop only schedules and streams.

Text is detokenised incrementally: a delta is released only when it cannot be the start of a stop
sequence and does not end inside a multi-byte character.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import structlog
import torch

from gateway.model_server.loading import LoadedModel

log = structlog.get_logger("wardgate.model_server")


class EngineOverloaded(Exception):
    """The queue or the token budget is full; the request was not accepted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PromptTooLong(Exception):
    """Prompt plus max_tokens exceed the model's context."""


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Delta:
    """What one step released for one sequence; `finish_reason` is set on the last one."""

    text: str
    finish_reason: str | None = None


@dataclass
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    deltas: asyncio.Queue = field(default_factory=asyncio.Queue)
    generated: list[int] = field(default_factory=list)
    released_chars: int = 0
    finish_reason: str | None = None
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    generator: torch.Generator | None = None

    @property
    def budget(self) -> int:
        return len(self.prompt_ids) + self.params.max_tokens

    def push(self, delta: Delta) -> None:
        self.loop.call_soon_threadsafe(self.deltas.put_nowait, delta)


@dataclass
class EngineStats:
    forward_passes: int = 0
    batches: int = 0
    generated_tokens: int = 0


class GenerationEngine:
    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch_size: int = 16,
        max_wait_s: float = 0.005,
        max_queue: int = 256,
        max_batch_tokens: int = 65536,
        on_batch: Callable[[int], None] | None = None,
        on_first_token: Callable[[float], None] | None = None,
        on_forward: Callable[[int], None] | None = None,  # called per forward pass with the tokens it produced
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.max_batch_tokens = max_batch_tokens
        self.on_batch = on_batch or (lambda size: None)
        self.on_first_token = on_first_token or (lambda seconds: None)
        self.on_forward = on_forward or (lambda tokens: None)
        self.stats = EngineStats()
        self._pending: list[Sequence] = []
        self._wakeup = asyncio.Event()
        self._scheduler: asyncio.Task | None = None
        self._in_flight = 0
        self._model_lock = threading.Lock()

    # -- asyncio side --------------------------------------------------------------------------

    def start(self) -> None:
        self._scheduler = asyncio.get_running_loop().create_task(self._schedule())

    async def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        if len(prompt_ids) + params.max_tokens > self.loaded.max_context:
            raise PromptTooLong(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceed the model's "
                f"context of {self.loaded.max_context} tokens"
            )
        if len(self._pending) >= self.max_queue:
            raise EngineOverloaded(f"the generation queue is full ({self.max_queue} requests waiting)")
        queued_tokens = sum(sequence.budget for sequence in self._pending)
        if queued_tokens + len(prompt_ids) + params.max_tokens > self.max_batch_tokens * 4:
            raise EngineOverloaded("the token budget of queued requests is exhausted")
        sequence = Sequence(list(prompt_ids), params, asyncio.get_running_loop())
        if params.temperature > 0:
            sequence.generator = torch.Generator().manual_seed(
                params.seed if params.seed is not None else torch.seed()
            )
        self._pending.append(sequence)
        self._in_flight += 1
        self._wakeup.set()
        return sequence

    async def stream(self, sequence: Sequence) -> AsyncIterator[Delta]:
        """The sequence's deltas as they are released; cancels it if the consumer stops early."""
        try:
            while True:
                delta = await sequence.deltas.get()
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            sequence.cancelled = True

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> tuple[str, str, int]:
        """(text, finish_reason, completion tokens) of a whole generation."""
        sequence = self.submit(prompt_ids, params)
        parts = []
        finish_reason = "stop"
        async for delta in self.stream(sequence):
            parts.append(delta.text)
            finish_reason = delta.finish_reason or finish_reason
        return "".join(parts), finish_reason, len(sequence.generated)

    async def _schedule(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                continue
            # Give concurrent requests a moment to join the batch.
            if len(self._pending) < self.max_batch_size:
                await asyncio.sleep(self.max_wait_s)
            batch = self._take_batch()
            if self._pending:
                self._wakeup.set()
            try:
                await asyncio.to_thread(self._run_batch, batch)
            except Exception:  # a model failure must end these requests, not hang them or the engine
                log.exception("generation failed", model=self.loaded.name, batch_size=len(batch))
                for sequence in batch:
                    if sequence.finish_reason is None:
                        sequence.finish_reason = "error"
                        sequence.push(Delta("", "error"))
            finally:
                self._in_flight -= len(batch)

    def _take_batch(self) -> list[Sequence]:
        batch, tokens = [], 0
        while self._pending and len(batch) < self.max_batch_size:
            candidate = self._pending[0]
            if batch and tokens + candidate.budget > self.max_batch_tokens:
                break
            batch.append(self._pending.pop(0))
            tokens += candidate.budget
        return batch

    # -- model thread --------------------------------------------------------------------------

    @torch.inference_mode()
    def _run_batch(self, batch: list[Sequence]) -> None:
        with self._model_lock:
            self.stats.batches += 1
            self.on_batch(len(batch))
            device = self.loaded.device
            width = max(len(sequence.prompt_ids) for sequence in batch)
            pad = self.tokenizer.pad_token_id
            # Left padding: every row's next token is in the last column.
            input_ids = torch.tensor(
                [[pad] * (width - len(s.prompt_ids)) + s.prompt_ids for s in batch], device=device
            )
            attention_mask = torch.tensor(
                [[0] * (width - len(s.prompt_ids)) + [1] * len(s.prompt_ids) for s in batch], device=device
            )
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            past = None
            steps = max(sequence.params.max_tokens for sequence in batch)
            for _ in range(steps):
                output = self.model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    past_key_values=past,
                    use_cache=True,
                )
                self.stats.forward_passes += 1
                past = output.past_key_values
                next_ids = self._sample(output.logits[:, -1, :].float(), batch)
                generated_before = self.stats.generated_tokens
                # Every sequence must see its token: a list, not a short-circuiting generator.
                finished = [self._advance(sequence, token) for sequence, token in zip(batch, next_ids, strict=True)]
                self.on_forward(self.stats.generated_tokens - generated_before)
                if all(finished):
                    return
                input_ids = torch.tensor([[token] for token in next_ids], device=device)
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(batch), 1))], dim=1)
                position_ids = position_ids[:, -1:] + 1

    def _sample(self, logits: torch.Tensor, batch: list[Sequence]) -> list[int]:
        tokens = logits.argmax(dim=-1).tolist()
        for row, sequence in enumerate(batch):
            params = sequence.params
            if params.temperature <= 0 or sequence.finish_reason is not None:
                continue
            probabilities = torch.softmax(logits[row] / params.temperature, dim=-1)
            if params.top_p < 1.0:
                sorted_probabilities, order = probabilities.sort(descending=True)
                outside = sorted_probabilities.cumsum(-1) - sorted_probabilities > params.top_p
                sorted_probabilities[outside] = 0.0
                probabilities = torch.zeros_like(probabilities).scatter(0, order, sorted_probabilities)
            tokens[row] = int(torch.multinomial(probabilities, 1, generator=sequence.generator))
        return tokens

    def _advance(self, sequence: Sequence, token: int) -> bool:
        """Record one token for `sequence`; push what can be released. True once it is finished."""
        if sequence.finish_reason is not None:
            return True
        if sequence.cancelled:
            sequence.finish_reason = "cancelled"
            return True
        if sequence.first_token_at is None:
            sequence.first_token_at = time.perf_counter()
            self.on_first_token(sequence.first_token_at - sequence.submitted_at)
        if token == self.tokenizer.eos_token_id:
            return self._finish(sequence, "stop")
        sequence.generated.append(token)
        self.stats.generated_tokens += 1
        text = self.tokenizer.decode(sequence.generated, skip_special_tokens=True)
        stop_at = min((index for stop in sequence.params.stop if (index := text.find(stop)) >= 0), default=-1)
        if stop_at >= 0:
            return self._finish(sequence, "stop", text[:stop_at])
        if len(sequence.generated) >= sequence.params.max_tokens:
            return self._finish(sequence, "length", text)
        releasable = len(text) - _held_back(text, sequence.params.stop)
        if releasable > sequence.released_chars:
            sequence.push(Delta(text[sequence.released_chars:releasable]))
            sequence.released_chars = releasable
        return False

    def _finish(self, sequence: Sequence, reason: str, text: str | None = None) -> bool:
        if text is None:
            text = self.tokenizer.decode(sequence.generated, skip_special_tokens=True)
        sequence.finish_reason = reason
        sequence.push(Delta(text[sequence.released_chars:], reason))
        sequence.released_chars = len(text)
        return True


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters must wait: an unfinished multi-byte character (decoded as
    U+FFFD), or a tail that could still grow into a stop sequence."""
    if text.endswith("\ufffd"):
        return len(text) - len(text.rstrip("\ufffd"))
    held = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:length]):
                held = length
                break
    return held
