#!/usr/bin/env python3
"""What judging output in windows costs: classifier time per answer, and the delay a stream's first
text waits, for the default policy's output stages (blacklist + int8 classifier), in this process.

For a ~300-character answer, English and Chinese (benign, so that every check runs):

1. **Classifier time** - the output classifier on the windows `streaming.window_chars` /
   `window_overlap_chars` cut (what both a streamed and a whole answer now cost), against the
   baseline of one call on the whole text (what a whole answer cost before), and the scheme streams
   used before (every 64 new characters, the new text with 512 characters before it). Median of
   `--rounds`, milliseconds; ratio windows / whole.
2. **Non-streamed check** - `Enforcer.check_completion` (blacklist + windows) against the old path's
   work (`inspect_each` on the whole text: blacklist, then one classifier call): ms and ratio.
3. **First text of a stream** - the answer fed to a `StreamChecker` in 4-character events (about a
   token each): how many characters had arrived when the first text was released, and that delay at
   `--tokens-per-s` (4 characters a token in English, 1.5 in Chinese) plus the checking time spent
   before it. Once with the default policy's output stages, once with the classifier alone (the
   blacklist's hold-back, sized by its widest regex, can be the longer one).

`--windows 128:64,96:48` compares window/overlap settings in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import yaml

import policies
from gateway.enforcement import Enforcer
from gateway.exchange import begin_exchange
from gateway.holdback import HoldBack
from gateway.pipeline import Context, load_pipeline

ANSWERS = {
    "en": ("Thanks for the question. Here is a short overview of the quarterly plan, the budget review on Friday, "
           "and the list of action items for the team. The weather should be fine for the offsite as well, so "
           "we can keep the original schedule and meet at the usual place at nine in the morning, thanks."),
    "zh": ("快速排序是一种常用的排序算法。它先从数组中选一个基准元素，再把比基准小的元素放到"
           "左边，比基准大的元素放到右边，然后对左右两部分分别递归排序。平均情况下，它的时间"
           "复杂度是 O(n log n)，最坏情况下是 O(n^2)，比如每次都选到最大或"
           "最小的元素作为基准。为了避免最坏情况，可以随机选择基准，或者取首、中、尾三个元素"
           "的中位数。在 Python 中，可以用列表推导式写出一个简洁的版本，但原地排序的"
           "版本更节省内存。实际工程中，标准库的 sorted 函数使用的是 Timsort"
           "，它结合了归并排序和插入排序，对部分有序的数据特别快。如果还有其他问题，欢迎继续"
           "提问。"),
}
CHARS_PER_TOKEN = {"en": 4.0, "zh": 1.5}
SCOPE_PATH = "/v1/chat/completions"


def policy_file(directory: Path, window: int, overlap: int, with_blacklist: bool) -> Path:
    """The default policy's output stages (or its classifier alone) with these window settings."""
    document = yaml.safe_load((Path(policies.__file__).parent / "default.yaml").read_text())
    document["output"]["stages"] = [stage for stage in document["output"]["stages"]
                                    if with_blacklist or stage["type"] != "blacklist"]
    document.update(version=f"bench-{window}-{overlap}", input={"stages": []}, tests=[],
                    streaming={"window_chars": window, "window_overlap_chars": overlap})
    path = directory / f"{window}-{overlap}-{int(with_blacklist)}.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    return path


async def median_ms(run, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def old_stream_texts(answer: str) -> list[str]:
    """What the previous stream checker gave the classifier: each 64 new characters with 512 before them."""
    return [answer[max(0, end - 64 - 512):end] for end in [*range(64, len(answer), 64), len(answer)]]


def request_scope() -> dict:
    """An ASGI scope as the gateway's middleware leaves it for the route."""
    scope = {"path": SCOPE_PATH}
    begin_exchange(scope, "bench")
    return scope


async def first_release(enforcer: Enforcer, answer: str) -> tuple[int, float]:
    """Characters received when the first text went out, and the checking time spent until then (ms)."""
    checker = enforcer.stream_checker(request_scope())
    received, spent = 0, 0.0
    for start in range(0, len(answer), 4):
        piece = answer[start:start + 4]
        received += len(piece)
        began = time.perf_counter()
        event = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        released = await checker.admit([b"data: " + json.dumps(event).encode() + b"\n\n"])
        spent += time.perf_counter() - began
        if released:
            return received, spent * 1000
    return received, spent * 1000


async def costs(enforcer: Enforcer, name: str, answer: str, rounds: int) -> None:
    pipeline, settings = enforcer.pipeline, enforcer.policy.streaming
    ctx = Context("output", route=SCOPE_PATH)
    holdback = HoldBack(None, settings.window_chars, settings.window_overlap_chars)
    holdback.add(len(answer))
    holdback.finish()
    windows = [answer[window.start:window.end] for window in holdback.due().windows]
    document = {"choices": [{"message": {"content": answer}}]}

    async def old_stream() -> None:
        for text in old_stream_texts(answer):
            await pipeline.inspect_each([text], ctx, "expensive")

    async def check() -> None:
        await enforcer.check_completion(document, b"{}", request_scope())

    whole = await median_ms(lambda: pipeline.inspect_each([answer], ctx, "expensive"), rounds)
    windowed = await median_ms(lambda: pipeline.inspect_each(windows, ctx, "expensive"), rounds)
    previous = await median_ms(old_stream, rounds)
    checked = await median_ms(check, rounds)
    before = await median_ms(lambda: pipeline.inspect_each([answer], ctx), rounds)
    print(f"{name}: classifier windows: {len(windows)} count")
    print(f"{name}: classifier on windows: {windowed:.2f} ms")
    print(f"{name}: classifier on the whole text (baseline): {whole:.2f} ms")
    print(f"{name}: classifier as streams used to (64 new + 512 context): {previous:.2f} ms")
    print(f"{name}: ratio windows / whole: {windowed / whole:.2f}x")
    print(f"{name}: non-streamed check: {checked:.2f} ms")
    print(f"{name}: whole-text inspection (baseline): {before:.2f} ms")
    print(f"{name}: ratio non-streamed check / whole-text inspection: {checked / before:.2f}x")


async def measure(path: Path, with_blacklist: bool, rounds: int, tokens_per_s: float) -> None:
    enforcer = Enforcer(load_pipeline(path))
    settings = enforcer.policy.streaming
    tag = f"{settings.window_chars}/{settings.window_overlap_chars}" + ("" if with_blacklist else " classifier only")
    for language, answer in ANSWERS.items():
        name = f"{language} {len(answer)} chars, windows {tag}"
        if with_blacklist:
            await costs(enforcer, name, answer, rounds)
        chars, spent = await first_release(enforcer, answer)
        delay = chars / CHARS_PER_TOKEN[language] / tokens_per_s * 1000 + spent
        print(f"{name}: first text released after: {chars} chars")
        print(f"{name}: first text delay at {tokens_per_s:.0f} tokens/s: {delay:.0f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", default="128:64", help="window:overlap settings, comma-separated")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tokens-per-s", type=float, default=40.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        for setting in args.windows.split(","):
            window, overlap = map(int, setting.split(":"))
            for with_blacklist in (True, False):
                path = policy_file(Path(directory), window, overlap, with_blacklist)
                await measure(path, with_blacklist, args.rounds, args.tokens_per_s)


if __name__ == "__main__":
    asyncio.run(main())
