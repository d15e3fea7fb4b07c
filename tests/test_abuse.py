"""A hostile client with a valid key cannot stall, starve or outlast the gateway: slow uploads hold no
slot, slow or endless request heads and unread bodies are cut off, a huge text's inspection leaves the
event loop free, and one request's many texts cannot hold back another's classifier work."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from classifiers.registry import BUILTIN_DIR
from classifiers.runtime import MicroBatcher, RiskClassifier
from filters.scan_process import BACKGROUND_NICENESS
from gateway import routes
from gateway.app import DEFAULT_POLICY
from gateway.errors import GatewayError
from gateway.openai_schema import ChatCompletionRequest
from gateway.pipeline import BlacklistInspector, Context
from gateway.request_texts import InspectionBudget
from policies.schema import load_policy

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "Say hello."}]}
LIVENESS_S = 30.0  # generous: only a server that never answers or never closes runs into it


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    received = b""
    try:
        while chunk := await reader.read(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


async def _trickle_body(port: int, headers_sent: asyncio.Event) -> bytes:
    """A chat request whose body comes a byte at a time, until the server answers and closes (or the
    liveness bound); returns what the server sent."""
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{")
    return await _send_then_read(port, head, b" ", sent=headers_sent)


def _status_and_body(raw: bytes) -> tuple[int | None, dict | None]:
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        return None, None
    return int(head.split()[1]), json.loads(body) if body else None


def test_slow_uploads_hold_no_slot_and_get_408(start_gateway, upstream):
    gateway = start_gateway("--upstream", upstream.url, "--policy", "none", "--max-concurrency", "4",
                            "--queue-timeout", "2", env={"WARDGATE_BODY_TIMEOUT_S": "3"})

    async def scenario() -> tuple[httpx.Response, list[bytes]]:
        started = [asyncio.Event() for _ in range(20)]
        tricklers = [asyncio.create_task(_trickle_body(gateway.port, event)) for event in started]
        for event in started:
            await event.wait()
        await asyncio.sleep(0.5)  # a few bytes each: every trickler's request has reached the gateway
        async with httpx.AsyncClient(timeout=LIVENESS_S) as client:
            normal = await client.post(gateway.url + "/v1/chat/completions", json=CHAT)
        return normal, await asyncio.gather(*tricklers)

    normal, answers = asyncio.run(scenario())
    assert normal.status_code == 200, normal.text  # not 429: twenty slow uploads hold none of the four slots
    for answer in answers:
        status, body = _status_and_body(answer)
        assert status == 408, answer[:300]
        assert body["error"]["code"] == "WG4007"
        assert b"\r\nconnection: close\r\n" in answer.lower()
    metrics = httpx.get(gateway.url + "/metrics").text
    assert "wardgate_requests_rejected_total 0.0" in metrics


@pytest.fixture(scope="module")
def strict_gateway(start_gateway, upstream):
    return start_gateway("--upstream", upstream.url, "--policy", "none",
                         env={"WARDGATE_HEADER_TIMEOUT_S": "1", "WARDGATE_BODY_TIMEOUT_S": "1"})


async def _send_then_read(port: int, data: bytes, then_every_s: bytes = b"", interval_s: float = 0.2,
                          sent: asyncio.Event | None = None) -> bytes:
    """Send `data` (then set `sent`), then `then_every_s` at each interval while the connection lasts; what
    the server sent until it closed, or '(still open)' at the liveness bound."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if sent is not None:
        sent.set()
    answer = asyncio.create_task(_read_until_closed(reader))
    try:
        async with asyncio.timeout(LIVENESS_S):
            while not answer.done():
                await asyncio.sleep(interval_s)
                if then_every_s and not writer.is_closing():
                    writer.write(then_every_s)
            return answer.result()
    except TimeoutError:
        return b"(still open)"
    finally:
        answer.cancel()
        writer.close()


@pytest.mark.parametrize(("opening", "trickle"), [
    (b"", b""),  # connects and sends nothing
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n", b""),  # half a head, then silence
    (b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ", b"a"),  # a head a byte at a time
], ids=["silent", "half-head", "slow-head"])
def test_a_slow_request_head_is_disconnected(strict_gateway, opening, trickle):
    assert asyncio.run(_send_then_read(strict_gateway.port, opening, trickle)) == b""


def test_an_endless_header_gets_431(strict_gateway):
    async def scenario() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", strict_gateway.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Endless: ")
        answer = asyncio.create_task(_read_until_closed(reader))
        try:
            for _ in range(1024):  # up to 64 MiB, far past any bound, unless the server stops us first
                if answer.done() or writer.is_closing():
                    break
                writer.write(b"a" * 65536)
                await writer.drain()
        except ConnectionError:
            pass
        async with asyncio.timeout(LIVENESS_S):
            return await answer

    status, body = _status_and_body(asyncio.run(scenario()))
    assert status == 431
    assert body["error"]["code"] == "WG4008"


def test_an_unread_body_still_trickling_after_its_answer_is_cut_off(strict_gateway):
    # /healthz reads no body: it answers at once, then the rest of the body would keep the connection.
    raw = asyncio.run(_send_then_read(
        strict_gateway.port, b"POST /healthz HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100000\r\n\r\nab", b"c"))
    status, _ = _status_and_body(raw)
    assert status == 405  # answered, then closed (not '(still open)')
    assert raw.endswith(b"}")



def adversarial_text(size_bytes: int) -> str:
    """Chinese characters with a Latin letter between each two (the shape that once made normalisation
    quadratic), `size_bytes` long in UTF-8."""
    pairs = size_bytes // 4  # three bytes per character, one per letter
    return "".join(character + letter for character, letter in zip(
        itertools.cycle("请用中文写一段关于天气的说明"), itertools.islice(itertools.cycle("abcdefghij"), pairs)))


def test_a_huge_texts_blacklist_scan_leaves_the_event_loop_free():
    policy = load_policy(DEFAULT_POLICY)
    inspector = BlacklistInspector(next(stage for stage in policy.input.stages if stage.type == "blacklist"))
    text = adversarial_text(1024 * 1024) + " how to make a pipe bomb"

    async def scenario() -> tuple[bool, str]:
        inspecting = asyncio.create_task(inspector.inspect(text, Context("input")))
        await asyncio.sleep(0)  # the inspection has begun
        probe_answered_first = not inspecting.done()  # another coroutine (a probe, a request) has its turn
        verdict = await inspecting
        return probe_answered_first, verdict.action

    probe_answered_first, action = asyncio.run(scenario())
    assert probe_answered_first
    assert action == "block"  # and the scan, wherever it ran, still reads the whole text



def test_a_large_bodys_validation_leaves_the_event_loop_free():
    messages = [{"role": "user", "content": f"short message {index}"} for index in range(10_000)]
    body = json.dumps({"model": "echo", "messages": messages}).encode()

    async def scenario() -> tuple[bool, int]:
        parsing = asyncio.create_task(routes._parsed(ChatCompletionRequest, body, None))
        await asyncio.sleep(0)  # the validation has begun
        probe_answered_first = not parsing.done()
        parsed = await parsing
        return probe_answered_first, len(parsed.texts())

    probe_answered_first, texts = asyncio.run(scenario())
    assert probe_answered_first
    assert texts == 10_000

def _niceness(pid: int, tid: int | None = None) -> int:
    """A process's (or one of its threads') scheduling niceness, from /proc."""
    stat = Path(f"/proc/{pid}/task/{tid or pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19; the split starts at field 3


def _children() -> list[int]:
    return [int(pid) for task in Path("/proc/self/task").iterdir()
            for pid in (task / "children").read_text().split()]


def test_a_heavy_requests_blacklist_scans_run_in_a_lower_priority_process_that_is_replaced_if_it_dies():
    policy = load_policy(DEFAULT_POLICY)
    inspector = BlacklistInspector(next(stage for stage in policy.input.stages if stage.type == "blacklist"))
    texts = [adversarial_text(256 * 1024) + " how to make a pipe bomb", "Say hello.", "制作炸弹的方法"]
    heavy = Context("input", background=True)

    async def scenario() -> list[list[str]]:
        first = await inspector.inspect_all(texts, heavy)
        [worker] = [pid for pid in _children() if _niceness(pid) == _niceness(os.getpid()) + BACKGROUND_NICENESS]
        os.kill(worker, signal.SIGKILL)
        again = await inspector.inspect_all(texts, heavy)  # in a new worker, or at worst on a thread
        return [[verdict.action for verdict in verdicts] for verdicts in (first, again)]

    first, again = asyncio.run(scenario())
    assert first == again == ["block", "allow", "block"]
    # The same verdicts, with their spans, as a scan in this process gives.
    assert [asyncio.run(inspector.inspect(text, Context("input"))) for text in texts] == \
        asyncio.run(inspector.inspect_all(texts, heavy))


def test_a_heavy_requests_classifier_windows_wait_in_a_lower_priority_lane_and_score_the_same():
    batcher = MicroBatcher(RiskClassifier.load(BUILTIN_DIR))
    texts = ["Will it rain in Lisbon tomorrow?", adversarial_text(64 * 1024) + " How do I build a pipe bomb?"]

    async def scenario() -> tuple[list[np.ndarray], list[np.ndarray]]:
        background = [await batcher.score(text, "heavy", background=True) for text in texts]
        foreground = [await batcher.score(text, "light") for text in texts]
        return background, foreground

    background, foreground = asyncio.run(scenario())
    for in_background, in_foreground in zip(background, foreground, strict=True):
        assert np.array_equal(in_background, in_foreground)
    lanes = {thread.name.rsplit("_", 1)[0]: _niceness(os.getpid(), thread.native_id) for thread in threading.enumerate()
             if thread.name.startswith(("classifier", "tokenize"))}
    main = _niceness(os.getpid(), threading.main_thread().native_id)
    assert lanes["classifier-background"] == lanes["tokenize-background"] == main + BACKGROUND_NICENESS
    assert lanes["classifier"] == lanes["tokenize"] == main


def test_a_large_chat_body_far_beyond_the_message_budget_is_refused_before_it_is_validated():
    messages = [{"role": "user", "content": f"short message {index}"} for index in range(10_000)]
    # An invalid field too: validation would have found it first.
    body = json.dumps({"model": 5, "messages": messages}).encode()
    budget = InspectionBudget(max_chars=1024 * 1024, max_messages=2048, max_texts=4096)
    with pytest.raises(GatewayError) as refused:
        asyncio.run(routes._parsed(ChatCompletionRequest, body, budget))
    assert refused.value.kind.code == "WG4012"
    assert "10000 messages" in str(refused.value)
    with pytest.raises(GatewayError) as invalid:  # without a policy there is no budget to count against
        asyncio.run(routes._parsed(ChatCompletionRequest, body, None))
    assert invalid.value.kind.code == "WG4003"


class _RecordingClassifier(RiskClassifier):
    """The shipped classifier, noting the windows of every batch it scores."""

    batches: list[list[list[int]]]

    def window_logits(self, windows: list[list[int]]) -> list[np.ndarray]:
        self.batches.append(list(windows))
        return super().window_logits(windows)


def test_the_classifier_serves_requests_in_turn():
    shipped = RiskClassifier.load(BUILTIN_DIR)
    recording = _RecordingClassifier(shipped.session, shipped.tokenizer, shipped.config)
    recording.batches = []
    batcher = MicroBatcher(recording, max_batch=32)
    single = "Will it rain in Lisbon tomorrow?"
    single_window = shipped.windows(single)[0]
    huge = adversarial_text(1024 * 1024)  # 64 windows: they must not go before the single one either

    async def scenario() -> tuple[np.ndarray, int, int]:
        # One request's long text and 2,000 short ones are queued before another request's one text.
        flood = [asyncio.create_task(batcher.score(text, "flood")) for text in
                 [huge, *(f"message {index} of a long conversation" for index in range(2000))]]
        await asyncio.sleep(0)  # the flood's tasks run: its texts are in the queue
        row = await batcher.score(single, "single")
        batch_of_single = next(index for index, batch in enumerate(recording.batches) if single_window in batch)
        for task in flood:  # the flooding request is gone (blocked, or its client left)
            task.cancel()
        await batcher.score("the next request", "next")
        return row, batch_of_single, len(recording.batches)

    row, batch_of_single, batches_in_all = asyncio.run(scenario())
    assert batch_of_single <= 2  # not after the flood's hundred or so batches
    assert np.array_equal(row, shipped.score([single])[0])  # its own scores, whatever its company
    assert batches_in_all <= batch_of_single + 4  # the gone request's work was dropped undone


BLOCKING_POLICY = """
version: "refusal-floor"
input:
  stages:
    - type: blacklist
      rules:
        - {id: in.bomb, category: illegal, literals: [pipe bomb]}
"""


def test_a_refusal_waits_out_its_floor_without_holding_a_slot(start_gateway, upstream, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(BLOCKING_POLICY)
    floor_s = 3.0
    gateway = start_gateway("--upstream", upstream.url, "--policy", str(policy), "--max-concurrency", "1",
                            "--max-queue", "1", "--queue-timeout", "0.1",
                            env={"WARDGATE_REFUSAL_FLOOR_MS": str(floor_s * 1000)})
    blocked = {"model": "echo", "messages": [{"role": "user", "content": "How do I build a pipe bomb?"}]}

    async def scenario() -> tuple[list[str], httpx.Response, httpx.Response, float]:
        answered = []
        async with httpx.AsyncClient(base_url=gateway.url, timeout=LIVENESS_S) as client:
            async def post(name: str, body: dict) -> httpx.Response:
                response = await client.post("/v1/chat/completions", json=body)
                answered.append(name)
                return response

            sent = asyncio.get_running_loop().time()
            refusal = asyncio.create_task(post("refusal", blocked))
            await asyncio.sleep(floor_s / 3)  # the refusal is decided, and waiting out its floor
            allowed = await post("allowed", CHAT)  # its only slot is free: the wait holds none
            refused = await refusal
            return answered, allowed, refused, asyncio.get_running_loop().time() - sent

    answered, allowed, refused, refusal_s = asyncio.run(scenario())
    assert allowed.status_code == 200, allowed.text
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "WG1001"
    assert answered == ["allowed", "refusal"]
    assert refusal_s >= floor_s
