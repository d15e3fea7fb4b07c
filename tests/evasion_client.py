"""The evasion corpus (tests/evasion_corpus.yaml) and how a client sends its cases: shared by
tests/test_evasion.py, which asserts every case, and bench/evasion.py, which counts them."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import yaml

from tests.fake_upstream import scripted_model

CORPUS = yaml.safe_load((Path(__file__).parent / "evasion_corpus.yaml").read_text(encoding="utf-8"))
TEXT_CASES = [(kind, case) for kind, cases in CORPUS["texts"].items() for case in cases]
REQUEST_CASES = [(kind, case) for kind, cases in CORPUS["requests"].items() for case in cases]
CONTROLS: list[str] = CORPUS["controls"]
# A harmless opening long enough to be released before the disguised text arrives in a stream.
OPENING = {
    "en": "Here is a short note about the weather. Mornings will be sunny with a light breeze, and the "
          "afternoon brings a few clouds over the hills. Evenings stay mild, so a walk by the river is a "
          "good idea. Remember to drink water and enjoy the long days of the season. Now, as asked: ",
    "zh": "下面先说一说今天的天气。早上阳光明媚，微风轻拂，下午山上会有一些云。傍晚气温适中，很适合去河边散步。"
          "记得多喝水，好好享受这个季节的长白天。周末可能会有小雨，出门请带伞。好了，按照你的要求：",
}
# How a stream cuts a text into events: one character each, a few, many.
PIECE_SIZES = (1, 3, 11)
HARMLESS_PROMPT = "Tell me something."


def chat(base_url: str, content: str, model: str = "echo") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    return httpx.post(base_url + "/v1/chat/completions", json=body, timeout=30)


def say(base_url: str, completion: str) -> httpx.Response:
    """A harmless prompt whose (non-streamed) answer is `completion`."""
    return chat(base_url, HARMLESS_PROMPT, model=scripted_model([completion]))


def send_request_case(base_url: str, case: dict) -> httpx.Response:
    path = case.get("path", "/v1/chat/completions")
    return httpx.post(base_url + path, json={"model": "echo", **case["body"]}, timeout=30)


def error_of(response: httpx.Response) -> tuple[int, str | None, str | None]:
    error = response.json().get("error") or {}
    return response.status_code, error.get("code"), error.get("rule_id")


def stream(base_url: str, pieces: list[str]) -> tuple[str, dict | None]:
    """The completion text a client receives for a stream of `pieces`, and the error event if any."""
    body = {"model": scripted_model(pieces), "messages": [{"role": "user", "content": HARMLESS_PROMPT}],
            "stream": True}
    delivered, error = [], None
    with httpx.stream("POST", base_url + "/v1/chat/completions", json=body, timeout=30) as response:
        if response.status_code != 200:
            response.read()
            return "", response.json().get("error")
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[len("data: "):])
            if "error" in event:
                error = event["error"]
                continue
            for choice in event.get("choices", []):
                delivered.append((choice.get("delta") or {}).get("content") or "")
    return "".join(delivered), error


def pieces_of(text: str, size: int) -> list[str]:
    return [text[start:start + size] for start in range(0, len(text), size)]


def stream_after_opening(base_url: str, case: dict, size: int) -> tuple[str, dict | None]:
    """A long harmless opening (released while the rest arrives), then the case's text in pieces of `size`."""
    return stream(base_url, pieces_of(OPENING[case["lang"]], 17) + pieces_of(case["text"], size))
