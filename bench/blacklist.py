#!/usr/bin/env python3
"""The blacklist stage against its peers, in one run: 10,000 patterns over 1 KB, 4 KB and 64 KB.

Patterns: 90% literals, 10% regexes with a gap (``word1.{0,20}word2``), half English, half
Chinese. The words are real where the data has them (the Davidson hate n-grams, the SWSR Chinese
sexism/abuse lexicon, both under ../shared/data) and made up to fill the rest (pronounceable
English pseudo-words, Chinese terms of two to four characters of the lexicon). Texts are real
prompts: Alpaca instructions (English) and BELLE questions and answers (Chinese), cut to size.
"No hit" is checked, not assumed: a pattern that occurs in a no-hit text, for our engine or as a
case-insensitive substring/regex on the raw text, is replaced before anything is measured, and
every engine's result on every text is checked (a WARNING line says when one disagrees). The hit
texts are the same texts with one literal of the set inserted in the middle.

Targets, each given all 10,000 patterns unless said otherwise:

* ``wardgate``       - ``Blacklist.scan(text)``: normalisation and scan, what a request pays;
* ``wardgate_scan``  - ``Blacklist.scan(normalized)`` on text normalised beforehand: the
                       Aho-Corasick pass, the phrases and regexes whose keys occur;
* ``normalize``      - ``normalize(text)`` alone;
* ``regex_alternation`` - one ``regex`` pattern, the alternation of every pattern (literals
                       escaped), IGNORECASE, ``finditer`` over the text;
* ``llm_guard_regex`` - LLM Guard's ``Regex`` input scanner with every pattern (literals escaped,
                       each with ``(?i)``), as a user puts a blacklist into it; it stops at the
                       first pattern that
                       matches, so its hit figures depend on where the term is in the list (the
                       inserted term is taken from the middle);
* ``llm_guard_ban_substrings`` - LLM Guard's ``BanSubstrings`` with the 9,000 literals (it takes
                       no regexes), case-insensitive, substring match (its defaults);
* ``hyperscan``      - Intel Hyperscan (block mode, UTF-8, caseless, every match reported) on
                       the text already encoded as UTF-8: the speed-of-light reference.

LLM Guard pins versions of transformers, tokenizers and regex that differ from ours, so it lives
in its own venv (.bench/llm-guard-venv, installed on first use) and runs this file as a worker.
hyperscan comes with the ``bench`` extra (``pip install -e '.[bench]'``). A peer that cannot be
loaded is reported UNAVAILABLE and the run goes on.

Usage::

    .venv/bin/python bench/blacklist.py            # everything (a few minutes)
    .venv/bin/python bench/blacklist.py --quick    # 1 KB and 4 KB, fewer repetitions

Figures are medians over repetitions (the fast targets, ours and hyperscan, in several rounds,
interleaved, so that a burst of other work on the machine moves them alike); ratios are between
targets of the same run. Absolute times hold for this machine only.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DATA = REPO_ROOT.parent / "shared" / "data"
LLM_GUARD_VENV = REPO_ROOT / ".bench" / "llm-guard-venv"
LLM_GUARD_PYTHON = LLM_GUARD_VENV / "bin" / "python"

PATTERNS = 10_000
REGEX_SHARE = 0.10
SIZES = {"1KB": 1024, "4KB": 4096, "64KB": 65536}
SEED = 20261121
REPETITIONS_MAX = 200  # calls per text and target in a round

# The goals, checked on 4 KB with no hit.
GOAL_SCAN_MS = 0.1
GOAL_TOTAL_MS = 0.3
GOAL_VS_LLM_GUARD_REGEX = 250
GOAL_VS_HYPERSCAN = 15


# ---------------------------------------------------------------------------------------------
# Patterns and texts


@dataclass(frozen=True)
class Corpus:
    literals: list[str]
    regexes: list[str]
    texts: dict[tuple[str, str, str], str]  # (language, size, "hit" | "nohit") → text
    hit_terms: dict[str, str]  # language → the literal inserted into its hit texts


def english_prompts() -> list[str]:
    rows = json.loads((DATA / "en" / "benign_prompts" / "alpaca_harmless_train.json").read_text(encoding="utf-8"))
    return [row["instruction"] for row in rows]


def chinese_prompts() -> list[str]:
    lines = (DATA / "zh" / "benign_prompts" / "belle_eval_set.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return [part for row in rows for part in (row["question"], row.get("std_answer", "")) if part]


def davidson_ngrams() -> list[str]:
    # The file uses old Mac line endings (\r).
    text = (DATA / "en" / "toxicity" / "davidson_hate_ngrams.csv").read_text(encoding="utf-8")
    rows = csv.reader(io.StringIO(text.replace("\r", "\n")))
    next(rows)
    return [row[0].strip() for row in rows if row and row[0].strip()]


def swsr_lexicon() -> list[str]:
    text = (DATA / "zh" / "offensive" / "swsr_sexhatelex.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def pseudo_word(rng: random.Random) -> str:
    onsets = ["b", "bl", "br", "d", "dr", "f", "fl", "g", "gr", "k", "kr", "m", "n", "p", "pr", "qu", "s",
              "sk", "st", "t", "tr", "v", "vr", "z", "zh"]
    vowels = ["a", "e", "i", "o", "u", "ae", "ou", "y"]
    codas = ["", "", "n", "x", "rk", "sk", "th", "lt", "mp", "rz"]
    return "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.randint(2, 3))) + rng.choice(codas)


def cut(prompts: list[str], size: int) -> str:
    """Prompts joined by newlines, cut to `size` UTF-8 bytes (at a character boundary)."""
    parts, total = [], 0
    for prompt in prompts:
        parts.append(prompt)
        total += len(prompt.encode()) + 1
        if total >= size:
            break
    return "\n".join(parts).encode()[:size].decode("utf-8", "ignore")


def insert_middle(text: str, term: str, language: str) -> str:
    middle = len(text) // 2
    if language == "en":
        middle = text.rfind(" ", 0, middle) + 1  # at a word boundary
        return text[:middle] + term + " " + text[middle:]
    return text[:middle] + term + text[middle:]


def build_corpus(sizes: dict[str, int]) -> Corpus:
    from filters.blacklist import Blacklist, Rule

    rng = random.Random(SEED)
    en_prompts, zh_prompts = english_prompts(), chinese_prompts()
    rng.shuffle(en_prompts)
    rng.shuffle(zh_prompts)
    largest = max(sizes.values())
    clean = {"en": cut(en_prompts, largest), "zh": cut(zh_prompts, largest)}
    haystacks = {language: text.casefold() for language, text in clean.items()}
    lexicon_chars = sorted({char for term in swsr_lexicon() for char in term if "\u4e00" <= char <= "\u9fff"})

    real = {"en": davidson_ngrams(), "zh": swsr_lexicon()}
    literal_count = round(PATTERNS * (1 - REGEX_SHARE))
    regex_count = PATTERNS - literal_count

    def new_literal(language: str) -> str:
        if real[language]:
            return real[language].pop(0)
        if language == "en":
            words = [pseudo_word(rng) for _ in range(2 if rng.random() < 0.1 else 1)]
            return " ".join(words)
        return "".join(rng.choice(lexicon_chars) for _ in range(rng.randint(2, 4)))

    def new_regex(language: str) -> str:
        if language == "en":
            return f"{pseudo_word(rng)}.{{0,20}}{rng.choice(english_words)}"
        return f"{new_literal('zh')}.{{0,10}}{''.join(rng.choice(lexicon_chars) for _ in range(2))}"

    english_words = sorted({word for ngram in davidson_ngrams() for word in ngram.split() if len(word) > 3})
    slots = [(language, kind) for kind, count in (("literal", literal_count), ("regex", regex_count))
             for language in ("en", "zh") for _ in range(count // 2)]
    patterns = [new_literal(language) if kind == "literal" else new_regex(language) for language, kind in slots]
    import regex

    # Replace every pattern that occurs in a no-hit text, by any engine's reading, until none does.
    for attempt in range(20):
        rules = [Rule(f"p{i}", "bench", "block", **({"literals": (p,)} if kind == "literal" else {"regexes": (p,)}))
                 for i, (p, (_, kind)) in enumerate(zip(patterns, slots, strict=True))]
        engine = Blacklist(rules)
        bad = {int(match.rule_id[1:]) for text in clean.values() for match in engine.scan(text)}
        for index, (pattern, (_, kind)) in enumerate(zip(patterns, slots, strict=True)):
            if kind == "literal":
                if any(pattern.casefold() in haystack for haystack in haystacks.values()):
                    bad.add(index)
            elif any(regex.search(pattern, text, regex.IGNORECASE) for text in clean.values()):
                bad.add(index)
        if len(set(patterns)) != len(patterns):
            seen: set[str] = set()
            for index, pattern in enumerate(patterns):
                if pattern in seen:
                    bad.add(index)
                seen.add(pattern)
        if not bad:
            break
        progress(f"patterns: replacing {len(bad)} that occur in the no-hit texts (pass {attempt + 1})")
        for index in bad:
            language, kind = slots[index]
            patterns[index] = new_literal(language) if kind == "literal" else new_regex(language)
    else:
        raise RuntimeError("could not find 10,000 patterns absent from the no-hit texts")

    def of(language: str | None, kind: str) -> list[str]:
        return [p for p, slot in zip(patterns, slots, strict=True) if slot[1] == kind and language in (None, slot[0])]

    literals, regexes, en_literals, zh_literals = of(None, "literal"), of(None, "regex"), of("en", "literal"), \
        of("zh", "literal")
    # Terms from the middle of the list: LLM Guard's Regex scanner stops at the first pattern that
    # matches.
    hit_terms = {
        "en": next(term for term in en_literals[len(en_literals) // 2:] if term.isalpha()),
        "zh": next(term for term in zh_literals[len(zh_literals) // 2:]
                   if all("\u4e00" <= char <= "\u9fff" for char in term)),
    }
    texts = {}
    for language, text in clean.items():
        for name, size in sizes.items():
            nohit = text.encode()[:size].decode("utf-8", "ignore")
            texts[(language, name, "nohit")] = nohit
            texts[(language, name, "hit")] = insert_middle(nohit, hit_terms[language], language)
    return Corpus(literals, regexes, texts, hit_terms)


# ---------------------------------------------------------------------------------------------
# Timing


def progress(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def time_calls(function: Callable[[], object], repetitions: int, budget_s: float) -> list[float]:
    """Seconds per call: `repetitions` calls, fewer if they take more than `budget_s` (at least 3)."""
    samples = []
    deadline = time.perf_counter() + budget_s
    for index in range(repetitions):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
        if index >= 2 and time.perf_counter() > deadline:
            break
    return samples


@dataclass
class Point:
    samples: list[float]
    found: int  # matches (or verdict) on this text, to check against the others

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1000


Results = dict[tuple[str, str, str], dict[str, Point]]  # (language, size, hit) → target → point


# A fast target: given a text, a function of no arguments that runs it once.
FastTarget = Callable[[str], Callable[[], object]]


def wardgate_targets(corpus: Corpus, results: Results) -> dict[str, FastTarget]:
    from filters.blacklist import Blacklist, Rule
    from filters.normalize import normalize

    progress("wardgate: compiling")
    started = time.perf_counter()
    rules = [Rule(f"literals{i}", "bench", "block", literals=tuple(corpus.literals[i::20])) for i in range(20)]
    rules += [Rule(f"regexes{i}", "bench", "block", regexes=tuple(corpus.regexes[i::5])) for i in range(5)]
    engine = Blacklist(rules)
    progress(f"wardgate: compiled in {time.perf_counter() - started:.1f} s, {len(engine.slow_patterns)} slow patterns")
    for key, text in corpus.texts.items():
        found = len(engine.scan(text))
        points = results.setdefault(key, {})
        points["wardgate"] = Point([], found)
        points["wardgate_scan"] = Point([], found)
        points["normalize"] = Point([], 0)

    def scan_prepared(text: str) -> Callable[[], object]:
        # A fresh normalised text per call: offsets are worked out once per text, on its first hit.
        prepared = [normalize(text) for _ in range(REPETITIONS_MAX)]
        return lambda: engine.scan(prepared.pop())

    return {
        "wardgate": lambda text: lambda: engine.scan(text),
        "wardgate_scan": scan_prepared,
        "normalize": lambda text: lambda: normalize(text),
    }


def hyperscan_target(corpus: Corpus, results: Results) -> FastTarget | str:
    """The hyperscan target, or why there is none."""
    try:
        import hyperscan
    except ImportError:
        return "hyperscan not installed (pip install -e '.[bench]')"
    progress("hyperscan: compiling")
    import re

    expressions = [re.escape(literal).encode() for literal in corpus.literals] + [r.encode() for r in corpus.regexes]
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    flags = hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_UTF8
    database.compile(expressions=expressions, ids=list(range(len(expressions))), flags=[flags] * len(expressions))
    hits: list[int] = []

    def on_match(pattern_id: int, start: int, end: int, flags: int, context: object) -> None:
        hits.append(pattern_id)

    for key, text in corpus.texts.items():
        hits.clear()
        database.scan(text.encode(), match_event_handler=on_match)
        results[key]["hyperscan"] = Point([], len(set(hits)))

    def scan(text: str) -> Callable[[], object]:
        data = text.encode()  # encoded beforehand: the engine alone
        return lambda: database.scan(data, match_event_handler=on_match)

    return scan


def measure_fast(corpus: Corpus, results: Results, targets: dict[str, FastTarget], rounds: int,
                 repetitions: int) -> None:
    """Rounds over every text and target, so that a burst of other work on the machine moves the
    targets alike and their ratios stay fair."""
    for round_index in range(rounds):
        progress(f"fast targets: round {round_index + 1}/{rounds}")
        for key, text in corpus.texts.items():
            count = repetitions if len(text) < 20_000 else max(3, repetitions // 10)
            for name, target in targets.items():
                results[key][name].samples += time_calls(target(text), count, 2.0)


def measure_regex_alternation(corpus: Corpus, results: Results, repetitions: int, budget_s: float) -> None:
    import regex

    progress("regex_alternation: compiling")
    alternation = regex.compile(
        "|".join([regex.escape(literal) for literal in corpus.literals] + [f"(?:{r})" for r in corpus.regexes]),
        regex.IGNORECASE,
    )
    for key, text in corpus.texts.items():
        progress(f"regex_alternation: {'/'.join(key)}")
        found = sum(1 for _ in alternation.finditer(text))
        samples = time_calls(lambda text=text: list(alternation.finditer(text)), repetitions, budget_s)
        results[key]["regex_alternation"] = Point(samples, found)


def ensure_llm_guard() -> None:
    if LLM_GUARD_PYTHON.exists():
        return
    progress(f"installing llm-guard into {LLM_GUARD_VENV} (once; torch first, from the same wheel as .venv)")
    subprocess.run([sys.executable, "-m", "venv", str(LLM_GUARD_VENV)], check=True)
    pip = [str(LLM_GUARD_VENV / "bin" / "pip"), "install", "-q"]
    # The CPU build of torch that setup installs: llm-guard would otherwise pull a CUDA one.
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, "llm-guard"], check=True)


def measure_llm_guard(corpus: Corpus, results: Results, repetitions: int, budget_s: float) -> str | None:
    try:
        ensure_llm_guard()
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"could not install llm-guard: {exc}"
    with tempfile.TemporaryDirectory(prefix="wardgate-bench-") as workdir:
        request = Path(workdir) / "request.json"
        request.write_text(json.dumps({
            "literals": corpus.literals,
            "regexes": corpus.regexes,
            "texts": [[list(key), text] for key, text in corpus.texts.items()],
            "repetitions": repetitions,
            "budget_s": budget_s,
        }), encoding="utf-8")
        response = Path(workdir) / "response.json"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1"}
        completed = subprocess.run(
            [str(LLM_GUARD_PYTHON), __file__, "--llm-guard-worker", str(request), str(response)], env=env
        )
        if completed.returncode != 0:
            return f"LLM Guard worker exited with {completed.returncode}"
        for key, target, samples, found in json.loads(response.read_text(encoding="utf-8")):
            results[tuple(key)][target] = Point(samples, found)
    return None


def llm_guard_worker(request_path: str, response_path: str) -> int:
    """Runs in LLM Guard's venv: its scanners on every text, timings back as JSON."""
    from llm_guard.input_scanners import BanSubstrings, Regex
    from llm_guard.input_scanners.regex import MatchType
    from llm_guard.util import configure_logger

    configure_logger(log_level="ERROR", stream=sys.stderr)  # it logs a warning for every blocked prompt

    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    import re

    # (?i): the Regex scanner compiles patterns as given, and the blacklist is case-insensitive.
    everything = [f"(?i){re.escape(literal)}" for literal in request["literals"]] + [
        f"(?i){pattern}" for pattern in request["regexes"]]
    scanners = {
        "llm_guard_regex": Regex(patterns=everything, is_blocked=True, match_type=MatchType.SEARCH, redact=False),
        "llm_guard_ban_substrings": BanSubstrings(substrings=request["literals"], case_sensitive=False, redact=False),
    }
    response = []
    for key, text in request["texts"]:
        for name, scanner in scanners.items():
            progress(f"{name}: {'/'.join(key)}")
            _, valid, _ = scanner.scan(text)
            samples = time_calls(lambda scanner=scanner, text=text: scanner.scan(text), request["repetitions"],
                                 request["budget_s"])
            response.append([key, name, samples, 0 if valid else 1])
    Path(response_path).write_text(json.dumps(response), encoding="utf-8")
    return 0


# ---------------------------------------------------------------------------------------------
# Report


PEERS = ("regex_alternation", "llm_guard_regex", "llm_guard_ban_substrings")


def check_findings(results: Results) -> list[str]:
    """Every engine must find the inserted term in a hit text and nothing in a no-hit text."""
    warnings = []
    for (language, size, hit), points in results.items():
        for target, point in points.items():
            if target == "normalize":
                continue
            if (point.found > 0) != (hit == "hit"):
                warnings.append(f"WARNING: {target} found {point.found} matches in {language}/{size}/{hit}")
    return warnings


def report(results: Results, unavailable: dict[str, str], corpus: Corpus, load_before: float) -> None:
    print(f"# {len(corpus.literals)} literals + {len(corpus.regexes)} regexes; hit terms: "
          f"en {corpus.hit_terms['en']!r}, zh {corpus.hit_terms['zh']!r}")
    print(f"# load average (1 min) before the run: {load_before:.2f}, CPUs: {os.cpu_count()}")
    for (language, size, hit), points in results.items():
        prefix = f"{language}.{size}.{hit}"
        for target, point in points.items():
            if point.samples:
                print(f"{prefix}.{target}: {point.median_ms:.4g} ms (median of {len(point.samples)})")
        ours = points.get("wardgate")
        for peer in PEERS:
            if peer in points and ours and points[peer].samples:
                print(f"{prefix}.{peer} / wardgate: {points[peer].median_ms / ours.median_ms:.3g}x")
        if "hyperscan" in points and points["hyperscan"].samples:
            for target in ("wardgate", "wardgate_scan"):
                print(f"{prefix}.{target} / hyperscan: {points[target].median_ms / points['hyperscan'].median_ms:.3g}x")
    for name, reason in unavailable.items():
        print(f"{name}: UNAVAILABLE - {reason}")
    for line in check_findings(results):
        print(line)
    print()
    for language in ("en", "zh"):
        points = results.get((language, "4KB", "nohit"))
        if not points:
            continue
        scan, total = points["wardgate_scan"].median_ms, points["wardgate"].median_ms
        goals = [
            (f"blacklist scan <= {GOAL_SCAN_MS} ms", scan <= GOAL_SCAN_MS, f"{scan:.3f} ms"),
            (f"normalisation + blacklist <= {GOAL_TOTAL_MS} ms", total <= GOAL_TOTAL_MS, f"{total:.3f} ms"),
        ]
        if points.get("llm_guard_regex") and points["llm_guard_regex"].samples:
            ratio = points["llm_guard_regex"].median_ms / total
            goals.append((f">= {GOAL_VS_LLM_GUARD_REGEX}x LLM Guard's Regex scanner", ratio >= GOAL_VS_LLM_GUARD_REGEX,
                          f"{ratio:.0f}x"))
        if points.get("hyperscan") and points["hyperscan"].samples:
            # The issue sets the ratio for the blacklist stage; hyperscan does not normalise, so the
            # scan alone is the like-for-like figure, and with normalisation the stricter one.
            for what, ours in (("blacklist scan", scan), ("normalisation + blacklist", total)):
                ratio = ours / points["hyperscan"].median_ms
                goals.append((f"{what} within {GOAL_VS_HYPERSCAN}x of hyperscan", ratio <= GOAL_VS_HYPERSCAN,
                              f"{ratio:.1f}x"))
        for goal, met, value in goals:
            print(f"goal {language}.4KB.nohit {goal}: {'met' if met else 'NOT met'} ({value})")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The blacklist stage against its peers (see module docstring).")
    parser.add_argument("--quick", action="store_true", help="1 KB and 4 KB only, fewer repetitions")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds of the fast targets (default 5)")
    parser.add_argument("--no-llm-guard", action="store_true", help="leave LLM Guard out (no install)")
    parser.add_argument("--llm-guard-worker", nargs=2, metavar=("REQUEST", "RESPONSE"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.llm_guard_worker:
        return llm_guard_worker(*args.llm_guard_worker)
    sys.path.insert(0, str(REPO_ROOT))
    load_before = os.getloadavg()[0]
    sizes = {name: size for name, size in SIZES.items() if not (args.quick and size > 4096)}
    rounds = args.rounds or (2 if args.quick else 5)
    repetitions, slow_budget_s = (100, 1.0) if args.quick else (REPETITIONS_MAX, 3.0)
    corpus = build_corpus(sizes)
    results: Results = {}
    unavailable: dict[str, str] = {}
    targets = wardgate_targets(corpus, results)
    hyperscan = hyperscan_target(corpus, results)
    if isinstance(hyperscan, str):
        unavailable["hyperscan"] = hyperscan
    else:
        targets["hyperscan"] = hyperscan
    measure_fast(corpus, results, targets, rounds, repetitions)
    measure_regex_alternation(corpus, results, 5, slow_budget_s)
    if args.no_llm_guard:
        unavailable["llm_guard"] = "left out (--no-llm-guard)"
    else:
        reason = measure_llm_guard(corpus, results, 5, slow_budget_s)
        if reason:
            unavailable["llm_guard"] = reason
    report(results, unavailable, corpus, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
