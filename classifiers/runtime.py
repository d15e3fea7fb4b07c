"""Scoring texts: int8 on CPU with ONNX Runtime, sliding windows for long texts, and an async micro-batcher.

Long texts: the token sequence is cut into windows of `max_length` tokens overlapping by a quarter,
every window is scored, and a text's score per label is the maximum over its windows (one harmful
paragraph in a long document is enough). Past MAX_WINDOWS windows, that many are taken evenly
spaced over the text: the cost stays bounded and the whole text is still sampled; the blacklist
still reads every character.

One window per forward pass, on as many single-threaded runs at once as there are CPUs. Measured
here (ONNX Runtime int8, 2 cores, 512 short prompts of 27 tokens, tokenised beforehand): one window
at a time 490 texts/s with two intra-op threads, 600 with two one-thread runs side by side, 250 in
padded batches of 8 or 32 (a batch pays for its longest text). And int8 quantises activations per
call, so a window scored beside others would get another scale — and another score — than alone.
Scored alone, a text's scores never depend on its company.

Micro-batching: concurrent requests are scored together (up to `max_batch` texts: those that queued
while the previous batch ran, after waiting at most `max_wait_ms` for company) in one call to a worker
thread, so that inference never blocks the event loop and the hand-off is paid once per batch rather
than once per text. The wait defaults to 0: windows run one per pass, so a lone request gains nothing
from company it waits for (measured through the gateway at 100 requests/s: p50 added 3.3 ms with no
wait, 5.4 ms with 2 ms), while under load the queue fills the batches by itself.

Fairness: texts wait in one queue per caller key (the gateway passes the request id), and a batch takes
one text from each key in turn, so a request with 10,000 texts shares the classifier with a request of
one instead of going before it (it once held everyone's classifier work for 8-9 s). A batch also stops
at `max_batch_chars` characters (at least one text): a token covers at least one character, so this
bounds a batch's windows, and with them how long a batch of long texts keeps the next one waiting. A
text whose caller has gone (a request blocked by another stage, a client that left) is dropped unscored.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime

from classifiers.artifact import ArtifactConfig, read_config
from classifiers.checkpoint import checkpoint_config, load_tokenizer, read_checkpoint_config
from classifiers.export import onnx_graph
from classifiers.labels import LABELS, ClassifierError
from classifiers.model import base_model_dir, build_tokenizer
from filters.normalize import normalize

MAX_WINDOWS = 64


def inference_session(graph: Path) -> onnxruntime.InferenceSession:
    """A session whose runs use one thread each (the parallelism is across windows, see RiskClassifier).
    ONNX Runtime sessions are safe to run from several threads at once."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


class RiskClassifier:
    def __init__(self, session: onnxruntime.InferenceSession, tokenizer, config: ArtifactConfig,
                 quantize: str = "int8", threads: int | None = None) -> None:
        self.session = session
        # One run per CPU this process may use (the affinity, not the machine's core count).
        self.threads = threads or len(os.sched_getaffinity(0))
        self._runs = ThreadPoolExecutor(self.threads, thread_name_prefix="classifier-run") if self.threads > 1 else None
        self.tokenizer = tokenizer
        self.config = config
        self.window = config.max_length - 2  # room for [CLS] and [SEP]
        self.stride = max(1, self.window * 3 // 4)
        # int8 shifts the logits, so an artifact carries a calibration fitted on its int8 scores too.
        chosen = config.calibration_int8 if quantize == "int8" and config.calibration_int8 else config.calibration
        calibration = [chosen.get(name, [1.0, 0.0]) for name in LABELS]
        self.scale = np.array([pair[0] for pair in calibration], dtype=np.float32)
        self.bias = np.array([pair[1] for pair in calibration], dtype=np.float32)

    @classmethod
    def load(cls, directory: Path, quantize: str = "int8", threads: int | None = None) -> RiskClassifier:
        checkpoint = read_checkpoint_config(directory)
        if checkpoint is not None:  # any local BERT-architecture classifier (classifiers/checkpoint.py)
            config, tokenizer = checkpoint_config(directory, checkpoint), load_tokenizer(directory)
        else:
            config = read_config(directory)
            tokenizer = build_tokenizer(base_model_dir(), config.added_characters)
        session = inference_session(onnx_graph(directory, quantize))
        return cls(session, tokenizer, config, quantize, threads)

    def windows(self, text: str) -> list[list[int]]:
        ids = self.tokenizer(normalize(text).text if self.config.normalize else text,
                             add_special_tokens=False)["input_ids"]
        starts = list(range(0, max(1, len(ids) - self.window + self.stride), self.stride)) or [0]
        if len(starts) > MAX_WINDOWS:
            starts = [starts[round(i * (len(starts) - 1) / (MAX_WINDOWS - 1))] for i in range(MAX_WINDOWS)]
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        return [[cls_id, *ids[start:start + self.window], sep_id] for start in starts]

    def score(self, texts: list[str]) -> np.ndarray:
        """Calibrated probabilities, one row per text, one column per label (LABELS order)."""
        return 1.0 / (1.0 + np.exp(-(self.logits(texts) * self.scale + self.bias)))

    def logits(self, texts: list[str]) -> np.ndarray:
        """Uncalibrated logits, the maximum over each text's windows."""
        if any(not isinstance(text, str) for text in texts):
            raise ClassifierError("every input must be a string")
        owners, windows = [], []
        for row, text in enumerate(texts):
            for window in self.windows(text):
                owners.append(row)
                windows.append(window)
        scored = map(self._run, windows) if self._runs is None or len(windows) == 1 else self._runs.map(
            self._run, windows)
        logits = np.full((len(texts), len(LABELS)), -np.inf, dtype=np.float32)
        for row, window_logits in zip(owners, scored, strict=True):
            np.maximum(logits[row], window_logits, out=logits[row])
        return logits

    def _run(self, window: list[int]) -> np.ndarray:
        input_ids = np.array([window], dtype=np.int64)
        return self.session.run(None, {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)})[0][0]


class MicroBatcher:
    """`await batcher.score(text, key)` → that text's scores, computed in a batch with concurrent callers,
    the keys served in turn (see the module doc)."""

    def __init__(self, classifier: RiskClassifier, max_batch: int = 32, max_wait_ms: float = 0.0,
                 max_batch_chars: int = 16 * 1024) -> None:
        self.classifier = classifier
        self.labels = LABELS
        self.max_batch = max_batch
        self.max_batch_chars = max_batch_chars
        self.max_wait_s = max_wait_ms / 1000
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classifier")
        self._queues: dict[asyncio.AbstractEventLoop, _FairQueue] = {}

    async def score(self, text: str, key: Hashable = None) -> np.ndarray:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:  # one collector per event loop (the gateway's, or a CLI's asyncio.run)
            queue = self._queues[loop] = _FairQueue()
            loop.create_task(self._collect(queue))
        future = loop.create_future()
        queue.put(key, text, future)
        return await future

    async def _collect(self, queue: _FairQueue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await queue.filled.wait()
            batch = _Batch(self.max_batch, self.max_batch_chars)
            queue.fill(batch)
            deadline = loop.time() + self.max_wait_s
            # Wait for company only while everything queued is in the batch and it has room.
            while batch.texts and batch.has_room() and not queue.filled.is_set():
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(queue.filled.wait(), left)
                except TimeoutError:
                    break
                queue.fill(batch)
            if not batch.texts:  # every caller queued meanwhile had gone
                continue
            try:
                scores = await loop.run_in_executor(self._executor, self.classifier.score, batch.texts)
            except Exception as exc:  # every waiter learns of the failure; the collector lives on
                for future in batch.futures:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for future, row in zip(batch.futures, scores, strict=True):
                if not future.done():
                    future.set_result(row)


class _Batch:
    """The texts of one classifier call, bounded in number and in characters."""

    def __init__(self, max_texts: int, max_chars: int) -> None:
        self.texts: list[str] = []
        self.futures: list[asyncio.Future] = []
        self.max_texts = max_texts
        self.chars_left = max_chars

    def has_room(self) -> bool:
        return len(self.texts) < self.max_texts and self.chars_left > 0

    def admits(self, text: str) -> bool:
        return not self.texts or (len(self.texts) < self.max_texts and len(text) <= self.chars_left)

    def add(self, text: str, future: asyncio.Future) -> None:
        self.texts.append(text)
        self.futures.append(future)
        self.chars_left -= len(text)


class _FairQueue:
    """Texts waiting to be scored, by caller key; `fill` serves the keys in turn, one text each."""

    def __init__(self) -> None:
        self._waiting: dict[Hashable, deque[tuple[str, asyncio.Future]]] = {}
        self._turns: deque[Hashable] = deque()  # the keys with texts waiting, the next to serve first
        self.filled = asyncio.Event()  # set while any text waits

    def put(self, key: Hashable, text: str, future: asyncio.Future) -> None:
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = deque()
            self._turns.append(key)
        waiting.append((text, future))
        self.filled.set()

    def fill(self, batch: _Batch) -> None:
        while self._turns:
            key = self._turns[0]
            text, future = self._waiting[key][0]
            if future.done():  # its caller has gone: nothing to score
                self._pop_front()
                continue
            if not batch.admits(text):
                break
            self._pop_front()
            batch.add(text, future)
        if not self._turns:
            self.filled.clear()

    def _pop_front(self) -> None:
        """The front key's first text leaves; the key goes to the back of the turns if it has more."""
        key = self._turns.popleft()
        waiting = self._waiting[key]
        waiting.popleft()
        if waiting:
            self._turns.append(key)
        else:
            del self._waiting[key]
