"""The multi-pattern blacklist: literals and `regex` patterns matched in one pass over normalised text.

The engine never scans pattern by pattern. Every literal, and the longest mandatory literal run
("atom") of every regex, goes into one Aho-Corasick automaton (pyahocorasick); one pass over the
text finds all literal hits and tells which regexes can possibly match, and only those run. A regex
with no extractable atom runs on every text and is listed by `Blacklist.slow_patterns` so that
`policy validate` can warn about it.

Rules match the output of `filters.normalize`, so the disguises it folds (full-width, homoglyphs,
zero-width characters, inserted separators, traditional characters) do not hide a term; literals
and atoms are normalised the same way. Latin literals only match whole words ("ass" does not match
"class"); CJK literals match anywhere. Spans are reported in the original text as well.
"""

from __future__ import annotations

import re
import re._constants as sre_constants
import re._parser as sre_parser
from dataclasses import dataclass, field
from typing import Literal

import ahocorasick
import regex

from filters.normalize import NormalizedText, normalize

Action = Literal["block", "flag", "redact"]
MIN_ATOM_CHARS = 2


class RuleError(ValueError):
    """A rule cannot be compiled; the message names the rule and the pattern."""


@dataclass(frozen=True)
class Rule:
    id: str
    category: str
    action: Action
    literals: tuple[str, ...] = ()
    regexes: tuple[str, ...] = ()
    # Phrases that, when they cover a hit, make it harmless ("kill process" for a rule on "kill").
    allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class Match:
    rule_id: str
    category: str
    action: Action
    start: int  # in the normalised text
    end: int
    original_start: int
    original_end: int
    matched: str  # the original text of the span


@dataclass
class _CompiledRegex:
    rule: int
    source: str
    pattern: regex.Pattern
    atom: str | None


@dataclass
class _Compiled:
    automaton: ahocorasick.Automaton = field(default_factory=ahocorasick.Automaton)
    regexes: list[_CompiledRegex] = field(default_factory=list)


def literal_atom(pattern: str) -> str | None:
    """The longest run of literal characters every match of `pattern` must contain, or None.

    Uses Python's own regex parser; a pattern in `regex`-only syntax it cannot parse has no atom
    (and is then run on every text)."""
    try:
        parsed = sre_parser.parse(pattern)
    except (re.error, OverflowError, RecursionError, ValueError):
        return None
    runs: list[str] = []
    _mandatory_runs(parsed, runs)
    best = max(runs, key=len, default="")
    return best if len(best) >= MIN_ATOM_CHARS or (best and not best.isascii()) else None


def _mandatory_runs(items: sre_parser.SubPattern, runs: list[str]) -> None:
    current: list[str] = []
    for op, value in items:
        if op is sre_constants.LITERAL:
            current.append(chr(value))
            continue
        runs.append("".join(current))
        current = []
        if op is sre_constants.SUBPATTERN:
            _mandatory_runs(value[-1], runs)
        elif op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT) and value[0] >= 1:
            _mandatory_runs(value[2], runs)
        # Anything else (alternation, classes, optional parts, anchors) breaks the run and adds
        # nothing mandatory.
    runs.append("".join(current))


def _is_word_char(char: str) -> bool:
    return char.isascii() and char.isalnum()


class Blacklist:
    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self._index_by_id: dict[str, int] = {}
        for index, rule in enumerate(rules):
            if rule.id in self._index_by_id:
                raise RuleError(f"rule id {rule.id!r} is used twice")
            self._index_by_id[rule.id] = index
        self._allow = [tuple(normalize(phrase).text for phrase in rule.allow) for rule in rules]
        self._compiled = self._compile(rules)

    def _compile(self, rules: list[Rule]) -> _Compiled:
        compiled = _Compiled()
        keys: dict[str, list[tuple[str, int]]] = {}
        for index, rule in enumerate(rules):
            for literal in rule.literals:
                key = normalize(literal).text
                if not key:
                    raise RuleError(f"rule {rule.id}: literal {literal!r} is empty once normalised")
                keys.setdefault(key, []).append(("literal", index))
                # A phrase spelled out letter by letter ("p i p e b o m b") normalises without its
                # word gaps: match that form too.
                if " " in key:
                    keys.setdefault(key.replace(" ", ""), []).append(("literal", index))
            for source in rule.regexes:
                try:
                    pattern = regex.compile(source, regex.IGNORECASE | regex.V1)
                except regex.error as exc:
                    raise RuleError(f"rule {rule.id}: invalid regex {source!r}: {exc}") from None
                atom = literal_atom(source)
                atom_key = normalize(atom).text if atom else None
                compiled.regexes.append(_CompiledRegex(index, source, pattern, atom_key or None))
                if atom_key:
                    keys.setdefault(atom_key, []).append(("regex", len(compiled.regexes) - 1))
        for key, payloads in keys.items():
            compiled.automaton.add_word(key, (key, payloads))
        if keys:
            compiled.automaton.make_automaton()
        return compiled

    @property
    def slow_patterns(self) -> list[tuple[str, str]]:
        """(rule id, pattern) of every regex without a literal atom: it runs on every text."""
        return [(self.rules[r.rule].id, r.source) for r in self._compiled.regexes if r.atom is None]

    def scan(self, text: str | NormalizedText) -> list[Match]:
        normalized = text if isinstance(text, NormalizedText) else normalize(text)
        folded = normalized.text
        matches: list[Match] = []
        candidate_regexes = {index for index, r in enumerate(self._compiled.regexes) if r.atom is None}
        if self._compiled.automaton.kind == ahocorasick.AHOCORASICK:
            for end, (key, payloads) in self._compiled.automaton.iter(folded):
                start = end - len(key) + 1
                for kind, index in payloads:
                    if kind == "regex":
                        candidate_regexes.add(index)
                    elif _whole_word(folded, start, end + 1, key):
                        matches.append(self._match(index, normalized, start, end + 1))
        for index in sorted(candidate_regexes):
            compiled = self._compiled.regexes[index]
            for hit in compiled.pattern.finditer(folded):
                if hit.end() > hit.start():
                    matches.append(self._match(compiled.rule, normalized, hit.start(), hit.end()))
        kept = [match for match in matches if not self._allowed(match, folded)]
        return sorted(kept, key=lambda match: (match.start, match.end, match.rule_id))

    def _match(self, rule_index: int, normalized: NormalizedText, start: int, end: int) -> Match:
        rule = self.rules[rule_index]
        original_start, original_end = normalized.original_span(start, end)
        return Match(rule.id, rule.category, rule.action, start, end, original_start, original_end,
                     normalized.original[original_start:original_end])

    def _allowed(self, match: Match, folded: str) -> bool:
        for phrase in self._allow[self._index_by_id[match.rule_id]]:
            search_from = max(0, match.end - len(phrase))
            position = folded.find(phrase, search_from, match.start + len(phrase))
            while position != -1:
                if position <= match.start and position + len(phrase) >= match.end:
                    return True
                position = folded.find(phrase, position + 1, match.start + len(phrase))
        return False


def _whole_word(text: str, start: int, end: int, key: str) -> bool:
    """Latin terms match whole words only; CJK terms anywhere."""
    if _is_word_char(key[0]) and start > 0 and _is_word_char(text[start - 1]):
        return False
    return not (_is_word_char(key[-1]) and end < len(text) and _is_word_char(text[end]))
