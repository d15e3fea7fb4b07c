#!/usr/bin/env python3
"""How well risk scorers do on whole sources they were not trained on (leave-source-out), per *kind*
of text, against a floor any classifier must beat.

A classifier's own validation split flatters it (the shipped v1 scored 0.99 on its split and lost to a
TF-IDF baseline on five of eleven public held-out kinds). Here each kind in KINDS names whole sources
of classifiers.data (English harmful requests, English jailbreaks, Chinese offensive speech, ...). For
each kind:

- **floor**: character n-grams (2-4, within word boundaries, hashed: nothing is learned from the
  held-out texts) + TF-IDF + logistic regression (scikit-learn, class-balanced), trained on every
  example of ``classifiers.data.load_examples()`` except the kind's sources, their translation pairs
  and split groups (``Example.group``), the sources that embed them (``data.EMBEDS``: a jailbreak
  template filled with a held-out question is held out too) and any text equal to a held-out one
  (``held_out_split``); at most FLOOR_MAX_PER_SOURCE examples a source (file plus sub-label, chosen by
  hash), texts cut at FLOOR_MAX_CHARS;
- **shipped**: the bundled classifier (classifiers/wardgate-risk, int8, the ``unsafe`` column). It was
  trained on many of these sources: a kind with any source in its model card's training table is
  marked ``no: trained on``, and its figures there are NOT held-out; a second row, "(sources new to
  shipped)", scores all three on the kind's rows from sources the card does not name;
- **profanity**: alt-profanity-check (a linear model over word n-grams trained on English profanity;
  meaningless for Chinese, a cheap peer for English).

Reported per kind, at threshold 0.5 on the `unsafe` score: rows (positives / negatives), AUPRC (where
both classes exist), recall (positives scored >= 0.5) and false-block rate (negatives scored >= 0.5).
Kinds marked *weak* are eval-only sources (``data.load_eval_only``) whose labels are readings of a
scenario, not per-text judgements: read their recall as "flag rate".

``--decisions`` measures labelling decisions instead: the floor trained with an eval-only source added
(XSafety's mixed scenarios as unsafe, FLAMES as unsafe, ...) against the floor without it, on the
held-out kinds each could move. docs/classifier-benchmark.md has the figures of one run.

Usage::

    .venv/bin/python bench/classifier_quality.py                    # every kind (12 minutes on 2 shared cores)
    .venv/bin/python bench/classifier_quality.py --kinds zh_offensive,en_jailbreaks --max-rows 500
    .venv/bin/python bench/classifier_quality.py --decisions

Held-out sets larger than ``--max-rows`` (default 2000) are subsampled, deterministically (by a hash of
the text) and per class in proportion; the rows used are printed.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from harness import progress  # bench/harness.py

from classifiers import data
from classifiers.data import EVAL_ONLY_MARK, Example, split_key

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "classifiers" / "wardgate-risk"
FLOOR_MAX_CHARS = 3000  # a jailbreak prompt's first 3,000 characters hold its framing and its request
FLOOR_MAX_PER_SOURCE = 1500
DEFAULT_MAX_ROWS = 2000
THRESHOLD = 0.5


@dataclass(frozen=True)
class Kind:
    name: str
    title: str
    sources: tuple[str, ...]  # source prefixes (file, or file:sub-label) held out of training and evaluated
    lang: str | None = None  # evaluate only this language's examples (all of `sources` stay held out)
    role: str | None = None
    weak: bool = False  # the sources are eval-only (data.load_eval_only): scenario readings, not labels


_EN_HARMFUL = (
    "en/harmful_prompts/advbench_behaviors.csv",
    "en/harmful_prompts/malicious_instruct.txt",
    "en/harmful_prompts/refusal_direction_harmful_train.json",
    "en/harmful_prompts/gptfuzz_questions.csv",
    "en/harmful_prompts/forbidden_question_set.csv",  # its advice areas are the negatives
    "en/harmful_prompts/harmfulqa.json",
    "en/harmful_prompts/catqa_english.json",
    "zh/harmful_prompts/multijail.csv",
)
_RESPONSES = (
    "en/responses/gptfuzz_responses_train.csv",
    "en/toxicity/diasafety_train.json",
    "en/toxicity/diasafety_val.json",
    "en/benign_prompts/coconot_pref.jsonl:chosen",
    "zh/responses/latent_jailbreak_P1/",
)

KINDS: tuple[Kind, ...] = (
    Kind("en_harmful_requests", "English harmful requests (AdvBench, MaliciousInstruct, refusal_direction, "
         "GPTFuzz, forbidden questions, HarmfulQA, CatQA, MultiJail)", _EN_HARMFUL, lang="en"),
    Kind("en_jailbreaks", "English jailbreak prompts (in the wild, GPTFuzz templates, TensorTrust, BIPIA, SAP, "
         "GCG / adaptive suffixes, role-play frames)",
         ("en/jailbreak/", "wardgate/roleplay_en"), lang="en"),
    Kind("en_safe_trigger", "English safe prompts with trigger words (CoCoNot contrast)",
         ("en/benign_prompts/coconot_contrast_eval.jsonl", "en/benign_prompts/coconot_pref.jsonl"), role="prompt"),
    Kind("en_hate_matched", "English emoji hate with matched non-hate (HatemojiBuild)",
         ("en/toxicity/hatemoji_build_",)),
    Kind("en_toxicity", "English toxicity (Davidson, ToxiGen)",
         ("en/toxicity/davidson_labeled_data.csv", "en/toxicity/toxigen/")),
    Kind("en_user_moderation", "English messages users sent to chatbots and forums (ConvAbuse, EDOS sexist)",
         ("en/toxicity/convabuse_", "en/toxicity/edos_labelled_aggregated.csv")),
    Kind("zh_offensive", "Chinese offensive speech (COLD, SWSR)",
         ("zh/offensive/cold_", "zh/offensive/swsr_sexcomment.csv")),
    Kind("zh_harmful_questions", "Chinese harmful questions (JADE, CatQA zh, MultiJail zh) vs sensitive but "
         "benign (CValues)",
         ("zh/harmful_prompts/jade_", "zh/harmful_prompts/catqa_chinese.json", "zh/harmful_prompts/multijail.csv",
          "zh/benign_prompts/cvalues_sensitive_but_benign.jsonl"), lang="zh"),
    Kind("responses_en", "English model responses (GPTFuzz, DiaSafety safe, CoCoNot answers, Latent Jailbreak)",
         _RESPONSES, lang="en", role="response"),
    Kind("responses_zh", "Chinese model responses (GPTFuzz translator persona, Latent Jailbreak)",
         _RESPONSES, lang="zh", role="response"),
    Kind("weak_redteam_openers", "weak: HH-RLHF red-team first turns (read as unsafe)",
         ("en/responses/hh_rlhf_harmless_base_test.jsonl",), weak=True),
    Kind("weak_flames", "weak: FLAMES value-violation prompts (read as unsafe)",
         ("zh/harmful_prompts/flames_1k.jsonl",), weak=True),
    Kind("weak_xsafety_mixed", "weak: XSafety mixed scenarios, en + zh (read as unsafe)",
         ("eval-only:mixed",), weak=True),
    Kind("weak_xsafety_benign", "weak: XSafety mostly benign scenarios, en + zh (read as safe)",
         ("eval-only:benign",), weak=True),
    Kind("weak_edos_not_sexist", "weak: EDOS not sexist (read as safe; some posts are hateful or violent)",
         ("en/toxicity/edos_labelled_aggregated.csv",), weak=True),
)
KINDS_BY_NAME = {kind.name: kind for kind in KINDS}


def _sources(ex: Example) -> tuple[str, ...]:
    return (ex.source, *ex.also_in)


def in_kind(ex: Example, kind: Kind) -> bool:
    """Whether any source of `ex` (de-duplication merges sources) is one of the kind's: by prefix, or for a
    weak kind by any part of an eval-only source's name (XSafety's readings: "eval-only:mixed")."""
    if kind.weak:
        return any(EVAL_ONLY_MARK in s and any(p in s for p in kind.sources) for s in _sources(ex))
    return any(s.startswith(kind.sources) for s in _sources(ex))


def embedding_sources(prefixes: Iterable[str]) -> tuple[str, ...]:
    """The sources (data.EMBEDS) whose texts embed a text of one of `prefixes`."""
    prefixes = tuple(prefixes)
    return tuple(derived for derived, bases in data.EMBEDS.items()
                 if any(base.startswith(prefixes) or p.startswith(base) for base in bases for p in prefixes))


def held_out_split(examples: Sequence[Example], eval_only: Sequence[Example],
                   kind: Kind) -> tuple[list[Example], list[Example]]:
    """(training examples for the floor, the kind's evaluated examples). Held out of training: every
    example with a source of the kind, whatever language or role is evaluated; every example sharing a
    split group with one of those (translation pairs, template fillings, a text and its contrast); every
    example of a source that embeds a held-out source; for a weak kind, every text equal (after folding)
    to a held-out one (load_examples() has one example per folded text, load_eval_only() another)."""
    pool = eval_only if kind.weak else examples
    held = [e for e in pool if in_kind(e, kind)]
    evaluated = [e for e in held if (kind.lang is None or e.lang == kind.lang)
                 and (kind.role is None or e.role == kind.role)]
    groups = {e.group for e in held if e.group}
    prefixes = () if kind.weak else (*kind.sources, *embedding_sources(kind.sources))
    # Each source name decided once (a few hundred of them), not once per example.
    excluded = {s for s in {s for e in examples for s in _sources(e)} if s.startswith(prefixes)}
    train = [e for e in examples
             if not (e.source in excluded or (e.also_in and not excluded.isdisjoint(e.also_in)))
             and not (e.group and e.group in groups)]
    if kind.weak:
        keys = {split_key(e.text) for e in held}
        train = [e for e in train if split_key(e.text) not in keys]
    return train, evaluated


# ---------------------------------------------------------------------------------------------- scoring


def _text_hash(ex: Example) -> bytes:
    return hashlib.sha256(("quality\x00" + split_key(ex.text)).encode()).digest()


def subsample(examples: list[Example], max_rows: int | None) -> list[Example]:
    """At most max_rows, each class in proportion, the smallest hashes of the text: deterministic."""
    if max_rows is None or len(examples) <= max_rows:
        return examples
    out = []
    for cls in (True, False):
        members = [e for e in examples if e.unsafe == cls]
        out += sorted(members, key=_text_hash)[:round(max_rows * len(members) / len(examples))]
    return out


def metrics(scores: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    from sklearn.metrics import average_precision_score

    pos, neg = truth.sum(), (~truth).sum()
    return {
        "auprc": float(average_precision_score(truth, scores)) if pos and neg else None,
        "recall": float((scores[truth] >= THRESHOLD).mean()) if pos else None,
        "false_block": float((scores[~truth] >= THRESHOLD).mean()) if neg else None,
    }


def capped(examples: Iterable[Example], per_source: int = FLOOR_MAX_PER_SOURCE) -> list[Example]:
    """Per source (file plus sub-label, as data.training_mix counts them) the `per_source` examples with the
    smallest text hashes: the same rows whichever kind is held out, so their n-grams are counted once."""
    by_source: dict[str, list[Example]] = {}
    for ex in examples:
        by_source.setdefault(ex.source, []).append(ex)
    return [e for source in sorted(by_source) for e in sorted(by_source[source], key=_text_hash)[:per_source]]


class Floor:
    """Character n-gram TF-IDF + logistic regression, trained on the members of `pool` a split allows.
    The hashing needs no vocabulary, so every text is turned into counts once (`pool` and the texts to
    score) and each fit sees only its own training rows."""

    def __init__(self, pool: Sequence[Example], to_score: Iterable[str]) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.pool = {id(e) for e in pool}
        self.row = {text: i for i, text in enumerate(dict.fromkeys([*(e.text for e in pool), *to_score]))}
        vectorizer = HashingVectorizer(analyzer="char_wb", ngram_range=(2, 4), n_features=2**20,
                                       alternate_sign=False, norm=None, dtype=np.float32)
        self.counts = vectorizer.transform([text[:FLOOR_MAX_CHARS] for text in self.row])

    def fit(self, train: Iterable[Example]) -> Callable[[Sequence[str]], np.ndarray]:
        from sklearn.feature_extraction.text import TfidfTransformer
        from sklearn.linear_model import LogisticRegression

        rows = [e for e in train if id(e) in self.pool]
        counts = self.counts[[self.row[e.text] for e in rows]]
        tfidf = TfidfTransformer(sublinear_tf=True).fit(counts)
        model = LogisticRegression(C=1.0, solver="liblinear", class_weight="balanced", tol=1e-3, max_iter=300)
        model.fit(tfidf.transform(counts), [e.unsafe for e in rows])
        return lambda texts: model.predict_proba(tfidf.transform(self.counts[[self.row[t] for t in texts]]))[:, 1]


def shipped_scorer() -> Callable[[Sequence[str]], np.ndarray] | str:
    try:
        from classifiers.labels import LABELS
        from classifiers.runtime import RiskClassifier

        classifier = RiskClassifier.load(SHIPPED_DIR)
    except Exception as exc:  # a missing artifact or graph build: report it, measure the rest
        return f"UNAVAILABLE ({type(exc).__name__}: {exc})"
    column = LABELS.index("unsafe")
    return lambda texts: classifier.score(list(texts))[:, column]


def profanity_scorer() -> Callable[[Sequence[str]], np.ndarray] | str:
    try:
        from profanity_check import predict_prob
    except ImportError:
        return "UNAVAILABLE (pip install alt-profanity-check)"
    return lambda texts: np.asarray(predict_prob(list(texts)))


def shipped_training_files() -> list[re.Pattern[str]]:
    """The files the shipped artifact's model card says it was trained on."""
    return [data.file_pattern(name) for name in data.markdown_table_files(SHIPPED_DIR / "MODEL_CARD.md")]


def trained_on(evaluated: Sequence[Example], card: list[re.Pattern[str]]) -> list[str]:
    """Files (or project sets) of `evaluated` that the shipped artifact was trained on."""
    files = {s.split(":")[0] for e in evaluated for s in _sources(e) if EVAL_ONLY_MARK not in s}
    return sorted(f for f in files if f.startswith("wardgate/") or any(p.fullmatch(f) for p in card))


# ---------------------------------------------------------------------------------------------- report


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _row(name: str, truth: np.ndarray, results: dict[str, dict | str], note: str) -> str:
    pos = int(truth.sum())
    cells = [name, f"{pos} / {len(truth) - pos}"]
    for target in ("floor", "shipped", "profanity"):
        found = results[target]
        if isinstance(found, str):
            cells += ["n/a"] * 3
        else:
            cells += [_cell(found["auprc"]), _cell(found["recall"]), _cell(found["false_block"])]
    return "| " + " | ".join(cells + [note]) + " |"


HEADER = ("| kind | rows pos / neg | floor AUPRC | floor recall | floor false-block | shipped AUPRC | shipped recall "
          "| shipped false-block | profanity AUPRC | profanity recall | profanity false-block | shipped held out? |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def load() -> tuple[list[Example], list[Example]]:
    progress("loading the data (classifiers.data)")
    examples, eval_only = data.load_examples(), data.load_eval_only()
    progress(f"{len(examples)} examples, {len(eval_only)} eval-only")
    return examples, eval_only


def run_kinds(kinds: Sequence[Kind], max_rows: int | None) -> None:
    started = time.monotonic()
    examples, eval_only = load()
    splits = []
    for kind in kinds:
        train, evaluated = held_out_split(examples, eval_only, kind)
        splits.append((kind, train, subsample(evaluated, max_rows), len(evaluated)))
    progress("counting character n-grams")
    floor = Floor(capped(examples), (e.text for _, _, evaluated, _ in splits for e in evaluated))
    shipped, profanity = shipped_scorer(), profanity_scorer()
    card = shipped_training_files()
    print(f"# Leave-source-out quality, threshold {THRESHOLD}, at most {max_rows} held-out rows per kind\n")
    for name, scorer in (("shipped", shipped), ("profanity", profanity)):
        if isinstance(scorer, str):
            print(f"{name}: {scorer}")
    # The weak kinds hold out no training source, only texts equal to theirs: one floor serves them all,
    # trained without any of those texts.
    weak_train = set.intersection(*({id(e) for e in train} for kind, train, _, _ in splits if kind.weak)) \
        if any(kind.weak for kind, *_ in splits) else set()
    weak_floor = None
    rows, notes = [], []
    for kind, train, evaluated, total in splits:
        progress(f"{time.monotonic() - started:.0f} s: {kind.name}: training the floor without it, "
                 f"scoring {len(evaluated)} of {total} rows")
        texts = [e.text for e in evaluated]
        truth = np.array([e.unsafe for e in evaluated], dtype=bool)
        if kind.weak:
            weak_floor = weak_floor or floor.fit([e for e in examples if id(e) in weak_train])
            scores = {"floor": weak_floor(texts)}
        else:
            scores = {"floor": floor.fit(train)(texts)}
        for name, scorer in (("shipped", shipped), ("profanity", profanity)):
            scores[name] = scorer if isinstance(scorer, str) else scorer(texts)
        seen = trained_on(evaluated, card)
        # The rows whose every source is new to the shipped classifier: its held-out figures within the kind.
        fresh = np.array([not trained_on([e], card) for e in evaluated], dtype=bool)
        parts = [(kind.name, np.ones(len(evaluated), dtype=bool), "no: trained on" if seen else "yes")]
        if seen and fresh.any():
            parts.append((f"{kind.name} (sources new to shipped)", fresh, "yes"))
        for label, chosen, note in parts:
            results = {name: found if isinstance(found, str) else metrics(found[chosen], truth[chosen])
                       for name, found in scores.items()}
            rows.append(_row(label, truth[chosen], results, note))
        notes.append(f"- {kind.name}: {kind.title}; {len(evaluated)} of {total} rows used"
                     + (f"; the shipped classifier was trained on {', '.join(seen)}" if seen else ""))
    print(HEADER)
    print("\n".join(rows))
    print()
    print("\n".join(notes))
    print(f"\nelapsed: {time.monotonic() - started:.0f} s")


# ------------------------------------------------------------------------------------ labelling decisions

# (decision, eval-only sources added to the floor's training set, the held-out kinds it could move)
DECISIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("XSafety mixed scenarios as unsafe", "eval-only:mixed",
     ("zh_harmful_questions", "zh_offensive", "en_harmful_requests", "en_safe_trigger")),
    ("XSafety mostly benign scenarios as safe", "eval-only:benign",
     ("zh_harmful_questions", "zh_offensive", "en_harmful_requests", "en_safe_trigger")),
    ("FLAMES as unsafe", "zh/harmful_prompts/flames_1k.jsonl", ("zh_harmful_questions", "zh_offensive")),
    ("HH-RLHF red-team openers as unsafe", "en/responses/hh_rlhf_harmless_base_test.jsonl",
     ("en_harmful_requests", "en_safe_trigger", "en_user_moderation")),
    ("EDOS not sexist as safe", "en/toxicity/edos_labelled_aggregated.csv", ("en_hate_matched", "en_toxicity")),
)


def run_decisions(max_rows: int | None, only: Sequence[str] | None) -> None:
    started = time.monotonic()
    examples, eval_only = load()
    kinds = sorted({name for _, _, names in DECISIONS for name in names if not only or name in only})
    splits = {}
    for name in kinds:
        train, evaluated = held_out_split(examples, eval_only, KINDS_BY_NAME[name])
        splits[name] = (train, subsample(evaluated, max_rows))
    progress("counting character n-grams")
    to_score = (e.text for _, evaluated in splits.values() for e in evaluated)
    floor = Floor([*capped(examples), *capped(eval_only)], to_score)
    print(f"# Labelling decisions measured with the floor, threshold {THRESHOLD}, at most {max_rows} rows per kind\n")
    print("| decision | held-out kind | rows pos / neg | added rows | AUPRC without → with | recall without → with "
          "| false-block without → with |\n|---|---|---|---:|---|---|---|")
    without: dict[str, dict] = {}
    for decision, added_source, names in DECISIONS:
        added = [e for e in eval_only if in_kind(e, Kind("added", decision, (added_source,), weak=True))]
        for name in names:
            if name not in splits:
                continue
            train, evaluated = splits[name]
            texts, truth = [e.text for e in evaluated], np.array([e.unsafe for e in evaluated], dtype=bool)
            if name not in without:
                progress(f"{time.monotonic() - started:.0f} s: {name}: the floor without eval-only sources")
                without[name] = metrics(floor.fit(train)(texts), truth)
            # Nothing equal to a held-out text, nothing from a held-out file (EDOS's negatives while its
            # positives are held out would teach the floor that file).
            held = {split_key(e.text) for e in examples if in_kind(e, KINDS_BY_NAME[name])}
            extra = [e for e in added if split_key(e.text) not in held and not in_kind(e, KINDS_BY_NAME[name])]
            progress(f"{time.monotonic() - started:.0f} s: {name}: the floor with {decision}")
            with_it = metrics(floor.fit([*train, *extra])(texts), truth)
            pos = int(truth.sum())
            changes = [f"{_cell(without[name][m])} → {_cell(with_it[m])}" for m in ("auprc", "recall", "false_block")]
            rows_added = sum(id(e) in floor.pool for e in extra)
            print(f"| {decision} | {name} | {pos} / {len(truth) - pos} | {rows_added} | " + " | ".join(changes) + " |")
    print(f"\nelapsed: {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", help=f"comma-separated, of: {', '.join(KINDS_BY_NAME)}")
    parser.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS,
                        help="held-out rows per kind at most (0: all)")
    parser.add_argument("--decisions", action="store_true", help="measure the labelling decisions instead")
    args = parser.parse_args(argv)
    names = args.kinds.split(",") if args.kinds else None
    if unknown := set(names or ()) - set(KINDS_BY_NAME):
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    max_rows = args.max_rows or None
    if args.decisions:
        run_decisions(max_rows, names)
    else:
        run_kinds([KINDS_BY_NAME[n] for n in names] if names else KINDS, max_rows)


if __name__ == "__main__":
    main()
