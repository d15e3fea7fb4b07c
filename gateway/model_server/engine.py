"""Batched generation: concurrent requests share forward passes.

Continuous batching: every decode step is one forward pass for all running sequences. Requests
that arrive while a batch runs are prefilled together at the next step and merged into it (their
KV cache is left-padded or the batch's is, and the padding is masked out); finished sequences leave
at once. Up to `max_batch_size` sequences and `max_batch_tokens` (prompt + max_tokens) run at a
time; the rest wait in a bounded queue. An idle engine waits `max_wait_s` for concurrent arrivals
before its first prefill. The model runs in a worker thread, one step per hop; the event loop only
schedules and streams.

Text is detokenised incrementally: a delta is released only when it cannot be the start of a stop
sequence and does not end inside a multi-byte character.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import structlog
import torch
from transformers import DynamicCache

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
class RunningBatch:
    """Sequences decoding together: their shared KV cache, attention mask (left-padded), the position
    of each row's last token, and the token each row feeds next."""

    sequences: list[Sequence]
    cache: DynamicCache
    attention_mask: torch.Tensor
    positions: torch.Tensor
    next_tokens: list[int]

    @property
    def size(self) -> int:
        return len(self.sequences)

    def merged_with(self, other: RunningBatch) -> RunningBatch:
        """One batch of both: the shorter history is left-padded (and masked out) to the longer one."""
        width = max(self.attention_mask.shape[1], other.attention_mask.shape[1])
        self._left_pad(width)
        other._left_pad(width)
        for layer, other_layer in zip(self.cache.layers, other.cache.layers, strict=True):
            layer.keys = torch.cat([layer.keys, other_layer.keys])
            layer.values = torch.cat([layer.values, other_layer.values])
        return RunningBatch(
            [*self.sequences, *other.sequences],
            self.cache,
            torch.cat([self.attention_mask, other.attention_mask]),
            torch.cat([self.positions, other.positions]),
            [*self.next_tokens, *other.next_tokens],
        )

    def _left_pad(self, width: int) -> None:
        missing = width - self.attention_mask.shape[1]
        if missing == 0:
            return
        for layer in self.cache.layers:
            layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, missing, 0))
            layer.values = torch.nn.functional.pad(layer.values, (0, 0, missing, 0))
        self.attention_mask = torch.nn.functional.pad(self.attention_mask, (missing, 0))

    def selected(self, rows: list[int]) -> RunningBatch:
        index = torch.tensor(rows, device=self.attention_mask.device)
        self.cache.batch_select_indices(index)
        return RunningBatch(
            [self.sequences[row] for row in rows],
            self.cache,
            self.attention_mask[index],
            self.positions[index],
            [self.next_tokens[row] for row in rows],
        )

    def trimmed(self) -> RunningBatch:
        """Drop history columns that no remaining row attends to (the padding of departed rows)."""
        attended = self.attention_mask.any(dim=0).nonzero()
        first = int(attended[0]) if len(attended) else 0
        if first == 0:
            return self
        for layer in self.cache.layers:
            layer.keys = layer.keys[:, :, first:, :]
            layer.values = layer.values[:, :, first:, :]
        self.attention_mask = self.attention_mask[:, first:]
        return self


@dataclass
class EngineStats:
    forward_passes: int = 0
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
        self._finished_since_last_step = 0

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
        running: RunningBatch | None = None
        while True:
            if running is None:
                # Sleep only while there is nothing to do: requests queued behind a full batch must
                # not wait for the next submit() to be noticed.
                while not self._pending:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                # An idle engine gives concurrent requests a moment to arrive together.
                if len(self._pending) < self.max_batch_size:
                    await asyncio.sleep(self.max_wait_s)
            admitted = self._take(running)
            try:
                running = await asyncio.to_thread(self._step, running, admitted)
            except Exception:  # a model failure must end these requests, not hang them or the engine
                failed = [*(running.sequences if running else ()), *admitted]
                log.exception("generation failed", model=self.loaded.name, batch_size=len(failed))
                for sequence in failed:
                    if sequence.finish_reason is None:
                        sequence.finish_reason = "error"
                        sequence.push(Delta("", "error"))
                        self._finished_since_last_step += 1
                running = None
            self._in_flight -= self._finished_since_last_step
            self._finished_since_last_step = 0

    def _take(self, running: RunningBatch | None) -> list[Sequence]:
        """Pending sequences that fit into the running batch now (size and token budget)."""
        size = running.size if running else 0
        tokens = sum(sequence.budget for sequence in running.sequences) if running else 0
        admitted: list[Sequence] = []
        while self._pending and size + len(admitted) < self.max_batch_size:
            candidate = self._pending[0]
            if size + len(admitted) and tokens + candidate.budget > self.max_batch_tokens:
                break
            admitted.append(self._pending.pop(0))
            tokens += candidate.budget
        return admitted

    # -- model thread --------------------------------------------------------------------------

    @torch.inference_mode()
    def _step(self, running: RunningBatch | None, admitted: list[Sequence]) -> RunningBatch | None:
        """Prefill `admitted` and merge it into `running`, then one decode step for every sequence;
        returns what is still generating (None when nothing is). Steps never overlap: the scheduler
        awaits each one before it takes the next."""
        if admitted:
            joined = self._without_finished(self._prefill(admitted))
            if joined is not None:
                running = joined if running is None else running.merged_with(joined)
        if running is not None:
            running = self._without_finished(self._decode(running))
        return running

    def _forward(self, batch_size: int, **inputs: object) -> object:
        output = self.model(**inputs, use_cache=True)
        self.stats.forward_passes += 1
        self.on_batch(batch_size)
        return output

    def _prefill(self, sequences: list[Sequence]) -> RunningBatch:
        device = self.loaded.device
        width = max(len(sequence.prompt_ids) for sequence in sequences)
        pad = self.tokenizer.pad_token_id
        # Left padding: every row's next token is in the last column.
        input_ids = torch.tensor([[pad] * (width - len(s.prompt_ids)) + s.prompt_ids for s in sequences], device=device)
        attention_mask = torch.tensor(
            [[0] * (width - len(s.prompt_ids)) + [1] * len(s.prompt_ids) for s in sequences], device=device
        )
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        output = self._forward(len(sequences), input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=positions)
        batch = RunningBatch(sequences, output.past_key_values, attention_mask, positions[:, -1:], [])
        batch.next_tokens = self._advance_all(batch, output.logits[:, -1, :])
        return batch

    def _decode(self, batch: RunningBatch) -> RunningBatch:
        batch.attention_mask = torch.cat([batch.attention_mask, batch.attention_mask.new_ones((batch.size, 1))], dim=1)
        batch.positions = batch.positions + 1
        output = self._forward(
            batch.size,
            input_ids=torch.tensor([[token] for token in batch.next_tokens], device=self.loaded.device),
            attention_mask=batch.attention_mask,
            position_ids=batch.positions,
            past_key_values=batch.cache,
        )
        batch.cache = output.past_key_values
        batch.next_tokens = self._advance_all(batch, output.logits[:, -1, :])
        return batch

    def _advance_all(self, batch: RunningBatch, logits: torch.Tensor) -> list[int]:
        tokens = self._sample(logits.float(), batch.sequences)
        generated_before = self.stats.generated_tokens
        for sequence, token in zip(batch.sequences, tokens, strict=True):
            if self._advance(sequence, token):
                self._finished_since_last_step += 1
        self.on_forward(self.stats.generated_tokens - generated_before)
        return tokens

    @staticmethod
    def _without_finished(batch: RunningBatch) -> RunningBatch | None:
        keep = [index for index, sequence in enumerate(batch.sequences) if sequence.finish_reason is None]
        if not keep:
            return None
        if len(keep) < batch.size:
            batch = batch.selected(keep)
        return batch.trimmed()

    def _sample(self, logits: torch.Tensor, sequences: list[Sequence]) -> list[int]:
        tokens = logits.argmax(dim=-1).tolist()
        for row, sequence in enumerate(sequences):
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
