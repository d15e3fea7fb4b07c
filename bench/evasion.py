"""How well the default policy resists evasion, and what resisting costs.

Prints, as `name: value unit` lines:
- the block rate of the evasion corpus (tests/evasion_corpus.yaml) per kind, as a prompt, as a whole
  completion and as a streamed completion (and how many characters of a blocked text a stream let
  through), and the false-block rate of its controls, through a live gateway on the default policy;
- the blacklist's normalisation cost in ms per MiB for plain and adversarial text shapes, with each
  shape's ratio to plain text of its script (bench/evasion_normalize.py);
- the default policy's p50 added latency on short prompts, and with `--baseline-ref REF` the same
  for the code at REF (a git worktree under .bench/, served from the same virtualenv), measured in
  the same run, and the ratio.

    .venv/bin/python bench/evasion.py [--baseline-ref COMMIT] [--requests 300]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from evasion_normalize import normalisation_figures  # noqa: E402
from harness import percentile, progress, ratio, wardgate_serving  # noqa: E402

from tests.evasion_client import (  # noqa: E402
    CONTROLS,
    OPENING,
    PIECE_SIZES,
    REQUEST_CASES,
    TEXT_CASES,
    chat,
    error_of,
    pieces_of,
    say,
    send_request_case,
    stream,
    stream_after_opening,
)
from tests.fake_upstream import FakeUpstream  # noqa: E402

SHORT_PROMPTS = [
    "What is the capital of France?", "请用 Python 实现快速排序", "Summarise the plot of Hamlet in two lines.",
    "今天天气怎么样？", "How do I reverse a list in Python?", "推荐几本关于历史的书",
]


def block_rates(url: str) -> list[str]:
    lines = []
    counts: dict[tuple[str, str], list[int]] = {}
    leaked_chars = 0
    for kind, case in TEXT_CASES:
        blocked_input = error_of(chat(url, case["text"]))[1] == "WG1001"
        blocked_output = error_of(say(url, case["text"]))[1] == "WG1002"
        streams_blocked = 0
        for size in PIECE_SIZES:
            delivered, error = stream_after_opening(url, case, size)
            streams_blocked += error is not None and error.get("code") == "WG1002"
            opening = OPENING[case["lang"]]
            leaked_chars += len(delivered) - len(os.path.commonprefix([opening, delivered]))
        for mode, blocked, total in (("input", blocked_input, 1), ("output", blocked_output, 1),
                                     ("stream", streams_blocked, len(PIECE_SIZES))):
            tally = counts.setdefault((kind, mode), [0, 0])
            tally[0] += int(blocked)
            tally[1] += total
    for kind, case in REQUEST_CASES:
        tally = counts.setdefault((kind, "input"), [0, 0])
        tally[0] += int(send_request_case(url, case).status_code == 400)
        tally[1] += 1
    for (kind, mode), (blocked, total) in counts.items():
        lines.append(f"evasion_block_rate[{kind},{mode}]: {blocked / total:.3f} ({blocked}/{total})")
    everything = [tally for tally in counts.values()]
    blocked, total = sum(t[0] for t in everything), sum(t[1] for t in everything)
    lines.append(f"evasion_block_rate[all]: {blocked / total:.3f} ({blocked}/{total})")
    lines.append(f"evasion_stream_chars_of_blocked_text_delivered: {leaked_chars} chars")
    false_blocks = total_controls = 0
    for control in CONTROLS:
        outcomes = [chat(url, control).status_code == 200, say(url, control).status_code == 200]
        outcomes += [stream(url, pieces_of(control, size)) == (control, None) for size in PIECE_SIZES]
        false_blocks += outcomes.count(False)
        total_controls += len(outcomes)
    lines.append(f"evasion_control_false_block_rate: {false_blocks / total_controls:.3f} "
                 f"({false_blocks}/{total_controls})")
    return lines


def interleaved_latencies_ms(urls: dict[str, str], requests: int) -> dict[str, list[float]]:
    """Sequential short prompts (one client: the added latency, not throughput), sent to each target
    in turn, so that every target meets the same moments of the machine's other load."""
    found: dict[str, list[float]] = {name: [] for name in urls}
    with httpx.Client(timeout=30) as client:
        for index in range(requests + 20):
            prompt = SHORT_PROMPTS[index % len(SHORT_PROMPTS)]
            for name, url in urls.items():
                started = time.perf_counter()
                response = client.post(url + "/v1/chat/completions",
                                       json={"model": "echo", "messages": [{"role": "user", "content": prompt}]})
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise SystemExit(f"{name}: a short prompt got HTTP {response.status_code}: {response.text[:200]}")
                if index >= 20:  # the first requests warm caches and connections
                    found[name].append(elapsed)
    return found


def baseline_tree(ref: str) -> Path:
    """A worktree of `ref` under .bench/ (created once per commit)."""
    commit = subprocess.run(["git", "rev-parse", ref], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    tree = ROOT / ".bench" / f"baseline-{commit[:12]}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                       capture_output=True)
    return tree


def state_dir(workdir: Path, name: str) -> Path:
    """A fresh state directory (audit log, policy history) per gateway."""
    path = workdir / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True)
    return path


def added_latency(upstream_url: str, requests: int, baseline_ref: str | None, workdir: Path) -> list[str]:
    targets: dict[str, Path | None] = {"current": None}
    if baseline_ref is not None:
        targets["baseline"] = baseline_tree(baseline_ref)
    with contextlib.ExitStack() as servers:
        urls = {"direct": upstream_url}
        for name, tree in targets.items():
            env = {**os.environ, "WARDGATE_STATE_DIR": str(state_dir(workdir, name))}
            if tree is not None:  # the baseline's modules first on the path: the same virtualenv serves older code
                env["PYTHONPATH"] = str(tree)
            urls[name] = servers.enter_context(
                wardgate_serving(["--upstream", upstream_url], workdir / f"{name}.log", 120, env=env))
        progress(f"{requests} short prompts each to the model server and the default policy on {list(targets)}")
        measured = interleaved_latencies_ms(urls, requests)
    direct_p50 = statistics.median(measured["direct"])
    p50s, lines = {}, []
    for name in targets:
        p50s[name] = statistics.median(measured[name]) - direct_p50
        lines.append(f"default_policy_added_latency_p50[{name}]: {p50s[name]:.2f} ms")
        lines.append(f"default_policy_added_latency_p99[{name}]: "
                     f"{percentile(measured[name], 0.99) - direct_p50:.2f} ms")
    if "baseline" in p50s:
        lines.append(f"default_policy_added_latency_p50_ratio_current_vs_baseline: "
                     f"{ratio(p50s['current'], p50s['baseline']):.2f}x")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-ref", help="a commit to measure the default policy's added latency against")
    parser.add_argument("--requests", type=int, default=300, help="short prompts per latency measurement")
    parser.add_argument("--skip-corpus", action="store_true", help="only the cost figures")
    args = parser.parse_args(argv)
    workdir = ROOT / ".bench" / "evasion"
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"load_average_before: {os.getloadavg()[0]:.2f}")
    for line in normalisation_figures():
        print(line, flush=True)
    # The fake model server logs a traceback for every stream the gateway cuts off: expected here.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    upstream = FakeUpstream()
    upstream.start()
    try:
        if not args.skip_corpus:
            progress("evasion corpus through the default policy")
            env = {**os.environ, "WARDGATE_STATE_DIR": str(state_dir(workdir, "corpus"))}
            with wardgate_serving(["--upstream", upstream.url], workdir / "corpus.log", 120, env=env) as url:
                for line in block_rates(url):
                    print(line, flush=True)
        for line in added_latency(upstream.url, args.requests, args.baseline_ref, workdir):
            print(line, flush=True)
    finally:
        upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
