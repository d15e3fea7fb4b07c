"""Scoring texts: int8 on CPU with ONNX Runtime, sliding windows for long texts, and an async micro-batcher.

Long texts: the token sequence is cut into windows of `max_length` tokens overlapping by a quarter,
every window is scored, and a text's score per label is the maximum over its windows (one harmful
paragraph in a long document is enough). Past MAX_WINDOWS windows, that many are taken evenly
spaced over the text: the cost stays bounded and the whole text is still sampled; the blacklist
still reads every character. A text with more characters than MAX_WINDOWS windows could hold (a token
covers at least one character) is not even normalised and tokenised whole (1 MiB took 3 s here, in
the thread every request's scoring waits on): MAX_WINDOWS stretches evenly spaced over its characters
are, each long enough for one window, the last one ending where the text ends.

One window per forward pass, on as many single-threaded runs at once as there are CPUs. Measured
here (ONNX Runtime int8, 2 cores, 512 short prompts of 27 tokens, tokenised beforehand): one window
at a time 490 texts/s with two intra-op threads, 600 with two one-thread runs side by side, 250 in
padded batches of 8 or 32 (a batch pays for its longest text). And int8 quantises activations per
call, so a window scored beside others would get another scale — and another score — than alone.
Scored alone, a text's scores never depend on its company.

Micro-batching: concurrent requests are scored together. A text goes through two stages, each a
worker thread fed in batches (so that neither tokenising nor inference blocks the event loop, and the
hand-off is paid once per batch rather than once per text): tokenising (texts to windows), then scoring
(windows to logits, up to `max_batch` windows and `max_batch_tokens` tokens a batch: what queued while
the previous batch ran, after waiting at most `max_wait_ms` for company). The wait defaults to 0:
windows run one per pass, so a lone request gains nothing from company it waits for (measured through
the gateway at 100 requests/s: p50 added 3.3 ms with no wait, 5.4 ms with 2 ms), while under load the
queue fills the batches by itself.

Fairness: in each stage, work waits in one queue per caller key (the gateway passes the request id),
and a batch takes one item from each key in turn, so a request with 10,000 texts, or with a long text's
64 windows, shares the classifier with a request of one instead of going before it (10,000 messages
once held everyone's classifier work for 8-9 s). The token bound keeps a batch short (a full window
costs about five short ones): with two requests sending 1 MiB texts without pause, a short text waited
201 ms (p50) at 1,024 tokens a batch, 71 ms at 512, 63 ms at 256 (2 cores, measured here). Work whose
caller has gone (a request blocked by another stage, a client that left) is dropped undone.

Priority: a heavy request's texts (see gateway/request_texts.py) go through a background lane of their
own, one thread per stage at OS niceness BACKGROUND_NICENESS, one window a pass. Turns alone could not
protect the others: a 1 MiB text's 64 windows cost ~2.3 s of CPU (a 126-token window ~36 ms here,
against ~6 ms for a short prompt), and on two cores that work slowed every other request's windows
down however the batches alternated (a normal client's p50 went from 26 to 389 ms). In the background
lane the OS runs it on what CPU the others leave.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import onnxruntime

from classifiers.artifact import ArtifactConfig, artifact_tokenizer, read_config
from classifiers.checkpoint import checkpoint_config, load_tokenizer, read_checkpoint_config
from classifiers.export import onnx_graph
from classifiers.labels import LABELS, ClassifierError
from filters.normalize import normalize
from filters.scan_process import BACKGROUND_NICENESS, lower_thread_priority

Item = TypeVar("Item")
Result = TypeVar("Result")

MAX_WINDOWS = 64
# Sampled without tokenising it whole: a text longer than MAX_WINDOWS windows of this many characters a
# token (English has four or five: such a text has more than MAX_WINDOWS windows anyway).
SAMPLE_ABOVE_WINDOWS_OF_CHARS = 4
SAMPLE_MAX_CHARS_PER_TOKEN = 16  # a sampled stretch grows to at most this many characters per window token


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
            tokenizer = artifact_tokenizer(config)
        session = inference_session(onnx_graph(directory, quantize))
        return cls(session, tokenizer, config, quantize, threads)

    def windows(self, text: str) -> list[list[int]]:
        if len(text) > SAMPLE_ABOVE_WINDOWS_OF_CHARS * MAX_WINDOWS * self.stride:
            return self._framed(self._sampled_windows(text))
        ids = self._token_ids([text])[0]
        starts = list(range(0, max(1, len(ids) - self.window + self.stride), self.stride)) or [0]
        if len(starts) > MAX_WINDOWS:
            starts = [starts[round(i * (len(starts) - 1) / (MAX_WINDOWS - 1))] for i in range(MAX_WINDOWS)]
        return self._framed([ids[start:start + self.window] for start in starts])

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        texts = [normalize(text).text for text in texts] if self.config.normalize else texts
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _sampled_windows(self, text: str) -> list[list[int]]:
        """MAX_WINDOWS windows from stretches of `text` evenly spaced over its characters, each stretch
        tokenised alone and widened until it fills a window (Chinese: about one character a token;
        English: four or five)."""
        chars = 2 * self.window
        starts = [round(i * (len(text) - chars) / (MAX_WINDOWS - 1)) for i in range(MAX_WINDOWS)]
        ids = self._token_ids([text[start:start + chars] for start in starts])
        short = [i for i, found in enumerate(ids) if len(found) < self.window]
        while short and chars < SAMPLE_MAX_CHARS_PER_TOKEN * self.window:
            chars *= 2
            # The last stretch grows backwards: it keeps ending where the text ends.
            spans = [(max(0, len(text) - chars), len(text)) if i == MAX_WINDOWS - 1 else (starts[i], starts[i] + chars)
                     for i in short]
            for i, found in zip(short, self._token_ids([text[start:end] for start, end in spans]), strict=True):
                ids[i] = found
            short = [i for i in short if len(ids[i]) < self.window]
        return [found[-self.window:] if i == MAX_WINDOWS - 1 else found[:self.window] for i, found in enumerate(ids)]

    def _framed(self, pieces: list[list[int]]) -> list[list[int]]:
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        return [[cls_id, *piece, sep_id] for piece in pieces]

    def score(self, texts: list[str]) -> np.ndarray:
        """Calibrated probabilities, one row per text, one column per label (LABELS order)."""
        return self.calibrated(self.logits(texts))

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(logits * self.scale + self.bias)))

    def logits(self, texts: list[str]) -> np.ndarray:
        """Uncalibrated logits, the maximum over each text's windows."""
        if any(not isinstance(text, str) for text in texts):
            raise ClassifierError("every input must be a string")
        owners, windows = [], []
        for row, text in enumerate(texts):
            for window in self.windows(text):
                owners.append(row)
                windows.append(window)
        logits = np.full((len(texts), len(LABELS)), -np.inf, dtype=np.float32)
        for row, window_logits in zip(owners, self.window_logits(windows), strict=True):
            np.maximum(logits[row], window_logits, out=logits[row])
        return logits

    def window_logits(self, windows: list[list[int]]) -> list[np.ndarray]:
        """Each window's uncalibrated logits, the windows run side by side on the CPUs."""
        if self._runs is None or len(windows) == 1:
            return list(map(self._run, windows))
        return list(self._runs.map(self._run, windows))

    def _run(self, window: list[int]) -> np.ndarray:
        input_ids = np.array([window], dtype=np.int64)
        return self.session.run(None, {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)})[0][0]


class MicroBatcher:
    """`await batcher.score(text, key)` → that text's scores, computed in batches with concurrent callers,
    the keys served in turn (see the module doc)."""

    def __init__(self, classifier: RiskClassifier, max_batch: int = 32, max_wait_ms: float = 0.0,
                 max_batch_tokens: int = 512, max_tokenize_chars: int = 16 * 1024) -> None:
        self.classifier = classifier
        self.labels = LABELS
        wait_s = max_wait_ms / 1000
        # Two stages, each with its own thread, each fair: a long text's tokenising does not hold up
        # scoring, and one request's windows do not hold up another's.
        self._tokenizing = FairStage(self._windows_of, max_batch, max_tokenize_chars, len, wait_s, "tokenize")
        self._scoring = FairStage(classifier.window_logits, max_batch, max_batch_tokens, len, wait_s, "classifier")
        # The background lane: one thread at a lower OS priority, one window a pass, for the texts of
        # requests that ask for far more inspection than most (see the module doc).
        self._background_tokenizing = FairStage(self._windows_of, 1, max_tokenize_chars, len, 0.0,
                                                "tokenize-background", BACKGROUND_NICENESS)
        # One window a pass: window_logits then runs it on the stage's own (lowered) thread, not the pool.
        self._background_scoring = FairStage(classifier.window_logits, 1, max_batch_tokens, len, 0.0,
                                             "classifier-background", BACKGROUND_NICENESS)

    async def score(self, text: str, key: Hashable = None, background: bool = False) -> np.ndarray:
        """`background`: scored in the background lane, after (in the OS's eyes) everyone else's texts."""
        tokenizing, scoring = ((self._background_tokenizing, self._background_scoring) if background
                               else (self._tokenizing, self._scoring))
        windows = await tokenizing.run(key, text)
        rows = await asyncio.gather(*(scoring.run(key, window) for window in windows))
        return self.classifier.calibrated(np.max(np.stack(rows), axis=0))

    def _windows_of(self, texts: list[str]) -> list[list[list[int]]]:
        return [self.classifier.windows(text) for text in texts]


class FairStage(Generic[Item, Result]):
    """`await stage.run(key, item)` → `work([item, ...])`'s result for it, computed on this stage's thread in
    batches of at most `max_items` items and `max_cost` (an item over it goes alone), taken from the keys
    in turn: one text, or window, of each waiting key before a second of any."""

    def __init__(self, work: Callable[[list[Item]], list[Result]], max_items: int, max_cost: int,
                 cost: Callable[[Item], int], max_wait_s: float, name: str, niceness: int = 0) -> None:
        """`niceness`: added to the OS scheduling niceness of the stage's thread."""
        self.work = work
        self.max_items = max_items
        self.max_cost = max_cost
        self.cost = cost
        self.max_wait_s = max_wait_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name,
                                            initializer=lower_thread_priority, initargs=(niceness,))
        self._queues: dict[asyncio.AbstractEventLoop, _FairQueue] = {}

    async def run(self, key: Hashable, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:  # one collector per event loop (the gateway's, or a CLI's asyncio.run)
            queue = self._queues[loop] = _FairQueue()
            loop.create_task(self._collect(queue))
        future = loop.create_future()
        queue.put(key, item, future)
        return await future

    async def _collect(self, queue: _FairQueue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await queue.filled.wait()
            batch = _Batch(self.max_items, self.max_cost, self.cost)
            queue.fill(batch)
            deadline = loop.time() + self.max_wait_s
            # Wait for company only while everything queued is in the batch and it has room.
            while batch.items and batch.has_room() and not queue.filled.is_set():
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(queue.filled.wait(), left)
                except TimeoutError:
                    break
                queue.fill(batch)
            if not batch.items:  # every caller queued meanwhile had gone
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.work, batch.items)
            except Exception as exc:  # every waiter learns of the failure; the collector lives on
                for future in batch.futures:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for future, result in zip(batch.futures, results, strict=True):
                if not future.done():
                    future.set_result(result)


class _Batch:
    """The items of one call, bounded in number and in cost."""

    def __init__(self, max_items: int, max_cost: int, cost: Callable[[Any], int]) -> None:
        self.items: list = []
        self.futures: list[asyncio.Future] = []
        self.max_items = max_items
        self.cost_left = max_cost
        self.cost = cost

    def has_room(self) -> bool:
        return len(self.items) < self.max_items and self.cost_left > 0

    def admits(self, item: object) -> bool:
        return not self.items or (len(self.items) < self.max_items and self.cost(item) <= self.cost_left)

    def add(self, item: object, future: asyncio.Future) -> None:
        self.items.append(item)
        self.futures.append(future)
        self.cost_left -= self.cost(item)


class _FairQueue:
    """Items waiting, by caller key; `fill` serves the keys in turn, one item each."""

    def __init__(self) -> None:
        self._waiting: dict[Hashable, deque[tuple[object, asyncio.Future]]] = {}
        self._turns: deque[Hashable] = deque()  # the keys with items waiting, the next to serve first
        self.filled = asyncio.Event()  # set while any item waits

    def put(self, key: Hashable, item: object, future: asyncio.Future) -> None:
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = deque()
            self._turns.append(key)
        waiting.append((item, future))
        self.filled.set()

    def fill(self, batch: _Batch) -> None:
        while self._turns:
            key = self._turns[0]
            item, future = self._waiting[key][0]
            if future.done():  # its caller has gone: nothing to compute
                self._pop_front()
                continue
            if not batch.admits(item):
                break
            self._pop_front()
            batch.add(item, future)
        if not self._turns:
            self.filled.clear()

    def _pop_front(self) -> None:
        """The front key's first item leaves; the key goes to the back of the turns if it has more."""
        key = self._turns.popleft()
        waiting = self._waiting[key]
        waiting.popleft()
        if waiting:
            self._turns.append(key)
        else:
            del self._waiting[key]
