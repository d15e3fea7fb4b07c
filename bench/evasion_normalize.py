#!/usr/bin/env python3
"""What the blacklist's views cost: ms per MiB of `Blacklist.scan` on plain and adversarial texts.

The rules are the default policy's input blacklist (policies/default.yaml, with its lexicons). Each
text is about 1 MiB of UTF-8:

* ``plain_en``, ``plain_zh``: Alpaca instructions and BELLE questions and answers (../shared/data);
* ``cjk_latin``, ``cjk_digits``: the Chinese text with a single Latin letter, or digit, between
  every two characters (the shape that made normalisation quadratic);
* ``combining``: the English text with a combining mark on every letter (Zalgo);
* ``entities``: the English text written as HTML numeric entities;
* ``base64``: the English text as one base64 run;
* ``leet``: the English text with letters written as digits and symbols.

Each shape's ratio is to plain text of its script, measured in the same run; the target is linear
and at most 3x. The short-prompt line compares a ~60-character prompt with the blacklist as it was
before the views (the parent of the commit that added filters/views.py, loaded from git).

Usage::

    .venv/bin/python bench/evasion_normalize.py
"""

from __future__ import annotations

import base64
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from filters.blacklist import Blacklist, Rule  # noqa: E402
from policies.schema import load_policy  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
MIB = 1 << 20
REPETITIONS = 5
SHORT_PROMPT = "Could you please help me write a polite email to my landlord?"
_LEET = str.maketrans({"o": "0", "i": "1", "e": "3", "a": "4", "s": "5", "t": "7"})


def default_rules(rule_class: type = Rule) -> list:
    policy = load_policy(ROOT / "policies" / "default.yaml")
    stage = policy.input.stages[0]
    return [rule_class(rule.id, rule.category, rule.action, tuple(rule.literals), tuple(rule.regexes),
                       tuple(rule.allow)) for rule in stage.rules]


def _to_size(text: str) -> str:
    """`text` repeated or cut to about 1 MiB of UTF-8."""
    per_char = len(text.encode()) / len(text)
    wanted = int(MIB / per_char)
    return (text * (wanted // len(text) + 1))[:wanted]


def shapes() -> dict[str, tuple[str, str]]:
    """name → (text, name of the plain text it is compared with)."""
    english = " ".join(row["instruction"] for row in
                       json.loads((DATA / "en/benign_prompts/alpaca_harmless_val.json").read_text()))
    chinese = "".join(json.loads(line)["question"] + json.loads(line)["std_answer"] for line in
                      (DATA / "zh/benign_prompts/belle_eval_set.jsonl").read_text().splitlines())
    rng = random.Random(7)
    han = [char for char in chinese if "\u4e00" <= char <= "\u9fff"]
    english_mib, han_mib = _to_size(english), _to_size("".join(han))
    return {
        "plain_en": (english_mib, "plain_en"),
        "plain_zh": (_to_size(chinese), "plain_zh"),
        "cjk_latin": (_to_size("".join(char + rng.choice("abcdefghijklmnopqrstuvwxyz") for char in han_mib)),
                      "plain_zh"),
        "cjk_digits": (_to_size("".join(char + rng.choice("0123456789") for char in han_mib)), "plain_zh"),
        "combining": (_to_size("".join(char + "\u0337" if char.isalpha() else char for char in english_mib)),
                      "plain_en"),
        "entities": (_to_size("".join(f"&#{ord(char)};" for char in english_mib[:MIB // 6])), "plain_en"),
        "base64": (base64.b64encode(english_mib[: MIB * 3 // 4].encode()).decode(), "plain_en"),
        "leet": (english_mib.lower().translate(_LEET), "plain_en"),
    }


def _median_seconds(function: Callable[[], object], repetitions: int) -> float:
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _blacklist_before() -> type | None:
    """The Blacklist class as it was before the views, from git (None when git cannot tell)."""
    try:
        added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "filters/views.py"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
        if not added:
            return None
        sources = {name: subprocess.run(["git", "show", f"{added[-1]}~1:filters/{name}.py"], cwd=ROOT,
                                        capture_output=True, text=True, check=True).stdout
                   for name in ("normalize", "blacklist")}
    except (OSError, subprocess.CalledProcessError):
        return None
    folder = Path(tempfile.mkdtemp(prefix="wardgate-before-"))
    (folder / "before_normalize.py").write_text(sources["normalize"])
    (folder / "before_blacklist.py").write_text(sources["blacklist"].replace("from filters.normalize",
                                                                             "from before_normalize"))
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("before_blacklist", folder / "before_blacklist.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["before_blacklist"] = module
    spec.loader.exec_module(module)
    return module


def _short_prompt_us(blacklist: object, repetitions: int = 2000) -> float:
    for _ in range(200):
        blacklist.scan(SHORT_PROMPT)
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repetitions):
            blacklist.scan(SHORT_PROMPT)
        rounds.append((time.perf_counter() - start) / repetitions * 1e6)
    return statistics.median(rounds)


def normalisation_figures() -> list[str]:
    """`name: value unit` lines: ms per MiB of each shape and its ratio to plain text, and the
    short prompt's scan time now and before the views."""
    blacklist = Blacklist(default_rules())
    texts = shapes()
    # Rounds over all shapes, medians per shape: a burst of other work on the machine moves a
    # round's shapes alike instead of one shape's repetitions.
    times: dict[str, list[float]] = {name: [] for name in texts}
    for _ in range(REPETITIONS):
        for name, (text, _) in texts.items():
            times[name].append(_median_seconds(lambda text=text: blacklist.scan(text), 1))
    lines, per_mib = [], {}
    for name, (text, plain) in texts.items():
        per_mib[name] = statistics.median(times[name]) * 1000 / (len(text.encode("utf-8", "surrogatepass")) / MIB)
        lines.append(f"scan_{name}: {per_mib[name]:.1f} ms/MiB")
        if name != plain:
            lines.append(f"scan_{name}_vs_{plain}: {per_mib[name] / per_mib[plain]:.2f} x")
    now = _short_prompt_us(blacklist)
    lines.append(f"scan_short_prompt_{len(SHORT_PROMPT)}_chars: {now:.1f} us")
    before = _blacklist_before()
    if before is not None:
        then = _short_prompt_us(before.Blacklist(default_rules(before.Rule)))
        lines.append(f"scan_short_prompt_before_views: {then:.1f} us")
        lines.append(f"scan_short_prompt_vs_before_views: {now / then:.2f} x")
    return lines


if __name__ == "__main__":
    for line in normalisation_figures():
        print(line, flush=True)
