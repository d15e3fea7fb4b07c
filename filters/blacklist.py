"""The multi-pattern blacklist: literals and `regex` patterns matched in one pass over normalised text.

The engine never scans pattern by pattern. Every literal and the literal atoms of every regex go
into one Aho-Corasick automaton (`ahocorasick-rs`, a DFA over UTF-8 bytes); one overlapping pass
over the text finds every occurrence of every key, and tells which regexes can possibly match:
only those run. An atom set is a set of strings of which every match of the regex contains one
("(cook|make) meth" → {"cook meth", "make meth"}). A regex with no atom set runs on every text and
is listed by `Blacklist.slow_patterns` so that `policy validate` can warn about it. A regex of
bounded width runs only around its atoms' hits.

The words of a literal of several ASCII words ("pipe bomb") may be separated by any run of spaces
and punctuation ("pipe-bomb", "pipe.bomb", "pipe_bomb", "pipe  bomb"): its longest uncommon word
is the automaton's key, and a pattern for the whole phrase is tried only where that word occurs.

Rules match the views of `filters.views`: the output of `filters.normalize` with marks and accents
off, so the disguises it folds (full-width, homoglyphs, zero-width characters, inserted separators,
traditional characters, accents) do not hide a term, and the derived views made where a cheap test
says they can differ (symbols between letters, leetspeak, reversed text, decoded entities and
percent-escapes, base64 and hex runs up to `MAX_DECODE_DEPTH` deep, and for Chinese terms pinyin and
split components, see `filters.transliterate`). The scan of a derived view is the same scan; a match
is reported once per rule and span of the original, with the view that found it (`Match.view`).
Literals are normalised like the text, regex atoms folded character by character. A space between
the words of a regex stands for any run of separators or none (`filters.patterns`). Latin literals
and regex matches are whole words ("ass" does not match "class", "make meth" not "make methods");
CJK ones match anywhere. Spans are reported in the original text as well.
"""

from __future__ import annotations

import re
import warnings
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import accumulate, product
from typing import Literal

import ahocorasick_rs
import regex

from filters import regex_syntax as syntax
from filters.normalize import NormalizedText, fold, is_cjk, prepare
from filters.patterns import for_analysis, transliterate, whole_words, with_separators
from filters.transliterate import MIN_SYLLABLES, PinyinGate, Recomposer, spell, syllable_count
from filters.views import TextViews, View, decoded, encoded_runs, matching_form
from filters.views import prepare as prepare_views

Action = Literal["block", "flag", "redact"]
MIN_ATOM_CHARS = 2
# An atom set is grown by cross products ("(a|b)(c|d)" → {ac, ad, bc, bd}) up to this many atoms.
MAX_ATOMS = 64
# A character class of up to this many characters counts as a choice of literals ("[sz]").
MAX_CLASS_CHARS = 10
# The automaton is a DFA (~1.5x faster to search than the contiguous NFA) while its keys' UTF-8 take
# up to this many bytes: a DFA takes ~600 bytes of memory per key byte (54 MB for the benchmark's
# 10,000 patterns, the NFA 4 MB), in every stage with a blacklist and twice during a reload.
MAX_DFA_KEY_BYTES = 128 * 1024
# A match found in the reversed or the recomposed view is this many characters long at least: a
# two-character Chinese term backwards is often an ordinary word ("的吗" holds "吗的"), and so is a
# pair of components ("人本位" holds 亻本, 体).
MIN_REORDERED_MATCH = 3
# Decoded text (entities, percent-escapes, base64, hex) is decoded again this many times at most.
MAX_DECODE_DEPTH = 2


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
    # The view that found it (filters.views): "text", "joined", "leet", "reversed", "pinyin",
    # "components", or "decoded", "base64", "hex" (with the view of the decoded text after a '/').
    # start and end are offsets in that view's text.
    view: str = "text"


@dataclass
class _CompiledRegex:
    rule: int
    source: str
    pattern: regex.Pattern
    atoms: frozenset[str] | None
    # How far from an atom a match can reach (characters), None when unbounded: the regex then
    # runs only near its atoms' hits, not over the whole text.
    reach: int | None = None


# ---------------------------------------------------------------------------------------------
# Atoms: what every match of a regex must contain


@dataclass(frozen=True)
class _Info:
    """What is known of the strings a piece of a pattern matches: all of them (`exact`), or sets
    that each of them starts with, ends with, and contains one of."""

    exact: frozenset[str] | None = None
    prefix: frozenset[str] | None = None
    suffix: frozenset[str] | None = None
    required: tuple[frozenset[str], ...] = ()


_EMPTY = frozenset({""})
_UNKNOWN = _Info()


def literal_atoms(pattern: str) -> frozenset[str] | None:
    """A set of literal strings such that every match of `pattern` contains one of them, chosen for
    selectivity (its shortest string as long as possible), or None.

    Uses Python's own regex parser; a pattern in `regex`-only syntax it cannot parse (or parses
    differently: nested sets, fuzzy matching) has no atoms and is then run on every text."""
    try:
        with warnings.catch_warnings():
            # "Possible nested set" and friends: `regex` reads these differently.
            warnings.simplefilter("error", FutureWarning)
            parsed = syntax.parse(pattern)
    except (re.error, FutureWarning, OverflowError, RecursionError, ValueError):
        return None
    if _has_literal_brace(parsed):
        return None  # "{e<=1}" is fuzzy matching to `regex`, literal text to `re`
    info = _sequence(parsed)
    candidates = list(info.required)
    if info.exact is not None:
        candidates.insert(0, info.exact)
    best, best_score = None, None
    for candidate in candidates:
        atoms = _usable(candidate)
        if atoms is None:
            continue
        # Longest shortest atom first; then fewer atoms; then longer ones ("冰毒|海洛因" over "制作|合成").
        score = (min(map(len, atoms)), -len(atoms), sum(map(len, atoms)))
        if best_score is None or score > best_score:
            best, best_score = atoms, score
    return best


def _usable(candidate: frozenset[str]) -> frozenset[str] | None:
    """The atoms as the normalised text spells them, without redundant ones, or None when one of
    them is too short to be selective."""
    folded = {fold(atom) for atom in candidate}
    if any(len(atom) < MIN_ATOM_CHARS and (not atom or atom.isascii()) for atom in folded):
        return None
    # "kill" makes "killing" redundant: wherever the longer one occurs, so does the shorter.
    return frozenset(atom for atom in folded if not any(other != atom and other in atom for other in folded))


def _has_literal_brace(items: syntax.SubPattern) -> bool:
    for op, value in items:
        if op is syntax.LITERAL and value in (ord("{"), ord("}")):
            return True
        for child in _children(op, value):
            if _has_literal_brace(child):
                return True
    return False


# Anchors whose meaning depends on where a search starts or ends.
_STRING_ANCHORS = frozenset({syntax.AT_BEGINNING, syntax.AT_BEGINNING_STRING, syntax.AT_END,
                             syntax.AT_END_STRING})
MAX_REACH = 1000


def match_reach(pattern: str) -> int | None:
    """How many characters of normalised text around an atom a match of `pattern` can cover, or
    None: unbounded, too wide to be worth it, or with look-arounds or ^/$ (which see further)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            parsed = syntax.parse(pattern)
    except (re.error, FutureWarning, OverflowError, RecursionError, ValueError):
        return None
    widest = parsed.getwidth()[1]
    if widest > MAX_REACH or _has_context(parsed):
        return None
    # Full case folding lets a pattern character match up to three ("ß" ~ "ss", "ﬃ" ~ "ffi"), and
    # \b looks one character further.
    return 3 * widest + 1


def _has_context(items: syntax.SubPattern) -> bool:
    for op, value in items:
        if op in (syntax.ASSERT, syntax.ASSERT_NOT):
            return True
        if op is syntax.AT and value in _STRING_ANCHORS:
            return True
        if any(_has_context(child) for child in _children(op, value)):
            return True
    return False


def _children(op: object, value: object) -> list[syntax.SubPattern]:
    if op is syntax.SUBPATTERN:
        return [value[-1]]
    if op in (syntax.MAX_REPEAT, syntax.MIN_REPEAT, syntax.POSSESSIVE_REPEAT):
        return [value[2]]
    if op is syntax.BRANCH:
        return list(value[1])
    if op is syntax.ATOMIC_GROUP:
        return [value]
    if op in (syntax.ASSERT, syntax.ASSERT_NOT):
        return [value[1]]
    if op is syntax.GROUPREF_EXISTS:
        return [branch for branch in value[1:] if branch is not None]
    return []


def _cross(left: frozenset[str], right: frozenset[str]) -> frozenset[str] | None:
    if len(left) * len(right) > MAX_ATOMS:
        return None
    return frozenset(a + b for a, b in product(left, right))


def _power(choices: frozenset[str], times: int) -> frozenset[str] | None:
    result: frozenset[str] | None = _EMPTY
    for _ in range(times):
        result = _cross(result, choices) if result is not None else None
    return result


def _sequence(items: syntax.SubPattern) -> _Info:
    required: list[frozenset[str]] = []
    run = _EMPTY  # the exact strings matched since the last inexact item
    exact, prefix = True, None
    for op, value in items:
        info = _item(op, value)
        if info.exact is not None:
            grown = _cross(run, info.exact)
            if grown is not None:
                run = grown
                continue
            # Too many combinations: what came before is one candidate, and a new run starts.
            required.append(run)
            if exact:
                exact, prefix = False, run
            run = info.exact
            continue
        joined = _cross(run, info.prefix) if info.prefix is not None else None
        required.append(run)
        if joined is not None:
            required.append(joined)
        if exact:
            exact, prefix = False, joined if joined is not None else run
        required.extend(info.required)
        run = info.suffix if info.suffix is not None else _EMPTY
    if exact:
        return _Info(exact=run, prefix=run, suffix=run)
    required.append(run)
    return _Info(prefix=prefix, suffix=run, required=tuple(required))


def _item(op: object, value: object) -> _Info:
    if op is syntax.LITERAL:
        return _exact(frozenset({chr(value)}))
    if op is syntax.IN:
        chars = _class_chars(value)
        return _exact(chars) if chars is not None else _UNKNOWN
    if op in (syntax.AT, syntax.ASSERT, syntax.ASSERT_NOT):
        return _exact(_EMPTY)  # zero-width: adds nothing, breaks nothing
    if op is syntax.SUBPATTERN:
        return _sequence(value[-1])
    if op is syntax.ATOMIC_GROUP:
        return _sequence(value)
    if op is syntax.BRANCH:
        return _branch([_sequence(alternative) for alternative in value[1]])
    if op in (syntax.MAX_REPEAT, syntax.MIN_REPEAT, syntax.POSSESSIVE_REPEAT):
        return _repeat(value[0], value[1], _sequence(value[2]))
    return _UNKNOWN  # any character, negated or large classes, back-references, conditionals


def _exact(strings: frozenset[str]) -> _Info:
    return _Info(exact=strings, prefix=strings, suffix=strings)


def _class_chars(items: list[tuple[object, object]]) -> frozenset[str] | None:
    chars: set[str] = set()
    for op, value in items:
        if op is syntax.LITERAL:
            chars.add(chr(value))
        elif op is syntax.RANGE and value[1] - value[0] < MAX_CLASS_CHARS:
            chars.update(map(chr, range(value[0], value[1] + 1)))
        else:
            return None  # negation, categories (\d is every Unicode digit), large ranges
        if len(chars) > MAX_CLASS_CHARS:
            return None
    return frozenset(chars)


def _branch(alternatives: list[_Info]) -> _Info:
    if all(info.exact is not None for info in alternatives):
        union = frozenset().union(*(info.exact for info in alternatives))
        if len(union) <= MAX_ATOMS:
            return _exact(union)

    def union_of(sets: list[frozenset[str] | None]) -> frozenset[str] | None:
        if any(s is None or "" in s for s in sets):
            return None
        union = frozenset().union(*sets)
        return union if len(union) <= MAX_ATOMS else None

    # Every match goes through one alternative: one candidate from each makes a candidate.
    best = []
    for info in alternatives:
        options = [s for s in (info.exact, *info.required) if s is not None and _usable(s) is not None]
        best.append(max(options, key=lambda s: (min(map(len, s)), -len(s)), default=None))
    required = union_of(best)
    return _Info(
        prefix=union_of([info.prefix for info in alternatives]),
        suffix=union_of([info.suffix for info in alternatives]),
        required=(required,) if required is not None else (),
    )


def _repeat(low: int, high: int, info: _Info) -> _Info:
    if high == 0:
        return _exact(_EMPTY)
    if low == 0:
        if high == 1 and info.exact is not None and len(info.exact) < MAX_ATOMS:
            return _exact(info.exact | _EMPTY)
        return _UNKNOWN
    if info.exact is None:
        return _Info(prefix=info.prefix, suffix=info.suffix, required=info.required)  # at least once
    if low == high:
        repeated = _power(info.exact, low)
        if repeated is not None:
            return _exact(repeated)
    # Starts and ends with as many repetitions as fit in an atom set.
    times = low
    while times > 1 and _power(info.exact, times) is None:
        times -= 1
    repeated = _power(info.exact, times)
    if repeated is None:
        return _UNKNOWN
    return _Info(prefix=repeated, suffix=repeated, required=(repeated,))


# ---------------------------------------------------------------------------------------------
# The engine


def _is_word_char(char: str) -> bool:
    return char.isascii() and char.isalnum()


# A literal of two or more ASCII words: a phrase, whose words may be separated by anything in _GAP.
_PHRASE = re.compile(r"[a-z0-9]+(?:\s+[a-z0-9]+)+")
_GAP = r"[\p{P}\p{S}\s]+"
# Never a phrase's gate while it has a rarer word: these occur in most texts.
_COMMON_WORDS = frozenset({
    "a", "about", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can", "could",
    "did", "do", "does", "for", "from", "had", "has", "have", "he", "her", "him", "his", "how", "i", "if", "in",
    "into", "is", "it", "its", "just", "like", "me", "more", "my", "no", "not", "now", "of", "on", "one", "only",
    "or", "other", "our", "out", "she", "so", "some", "than", "that", "the", "their", "them", "then", "there",
    "these", "they", "this", "to", "too", "up", "us", "very", "was", "we", "were", "what", "when", "where", "which",
    "who", "why", "will", "with", "would", "you", "your"
})


@dataclass
class _Compiled:
    # Every literal, phrase gate word and regex atom, as UTF-8: the str automaton cannot take a lone
    # surrogate (in a key it silently drops the keys after it, in a text it raises), bytes can.
    automaton: ahocorasick_rs.BytesAhoCorasick
    # By key: its length in characters, and what a hit means: ("literal", rule index), ("phrase",
    # phrase index) or ("regex", regex index).
    key_lengths: list[int]
    payloads: list[list[tuple[str, int]]]
    phrases: list[tuple[int, regex.Pattern]]
    regexes: list[_CompiledRegex]
    always: list[int]  # regexes without atoms


class Blacklist:
    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self._index_by_id: dict[str, int] = {}
        for index, rule in enumerate(rules):
            if rule.id in self._index_by_id:
                raise RuleError(f"rule id {rule.id!r} is used twice")
            self._index_by_id[rule.id] = index
        prepare()  # when the policy loads, not on the first request with a non-ASCII character
        prepare_views()
        self._allow = [tuple(matching_form(phrase) for phrase in rule.allow) for rule in rules]
        # Each literal in its matching form, computed once: the automaton, pinyin and components use it.
        literals = []
        for index, rule in enumerate(rules):
            for literal in rule.literals:
                key = matching_form(literal)
                if not key:
                    raise RuleError(f"rule {rule.id}: literal {literal!r} is empty once normalised")
                literals.append((index, key))
        sources = [(index, source) for index, rule in enumerate(rules) for source in rule.regexes]
        self._compiled = self._compile(literals, self._regexes(sources), reversed_keys=True)
        # A pattern over syllables without literal atoms (too many readings to list) is left out:
        # the text would have to be read as pinyin all through for it.
        spelled = [compiled for compiled in self._regexes(_in_pinyin(literals, sources)) if compiled.atoms is not None]
        self._pinyin = self._compile([], spelled, reversed_keys=False) if spelled else None
        self._pinyin_gate = PinyinGate([atom for compiled in spelled for atom in compiled.atoms])
        self._recomposer = Recomposer(_cjk_chars(literals, sources), fold=matching_form)

    def _regexes(self, sources: list[tuple[int, str]]) -> list[_CompiledRegex]:
        compiled = []
        for index, source in sources:
            try:
                pattern = regex.compile(whole_words(with_separators(source)), regex.IGNORECASE | regex.V1)
            except regex.error as exc:
                raise RuleError(f"rule {self.rules[index].id}: invalid regex {source!r}: {exc}") from None
            analysed = for_analysis(source)
            atoms = literal_atoms(analysed)
            reach = match_reach(analysed) if atoms is not None else None
            # The whole-word test looks one character further on each side.
            compiled.append(_CompiledRegex(index, source, pattern, atoms, reach + 1 if reach is not None else None))
        return compiled

    def _compile(self, literals: list[tuple[int, str]], regexes: list[_CompiledRegex],
                 reversed_keys: bool) -> _Compiled:
        keys: dict[str, list[tuple[str, int]]] = {}
        phrases: list[tuple[int, regex.Pattern]] = []
        for index, key in literals:
            if _PHRASE.fullmatch(key):
                self._add_phrase(keys, phrases, key.split(), index)
            else:
                keys.setdefault(key, []).append(("literal", index))
        for position, compiled in enumerate(regexes):
            for atom in compiled.atoms or ():
                keys.setdefault(atom, []).append(("regex", position))
        if reversed_keys:
            # A key written backwards makes the scan look at the text backwards too.
            for key in list(keys):
                keys.setdefault(key[::-1], []).append(("reversed", 0))
        encoded = [key.encode("utf-8", "surrogatepass") for key in keys]
        kind = ahocorasick_rs.Implementation.DFA if sum(map(len, encoded)) <= MAX_DFA_KEY_BYTES \
            else ahocorasick_rs.Implementation.ContiguousNFA
        # Overlapping search (every key at every place, not only the leftmost-longest) needs the
        # standard match kind.
        automaton = ahocorasick_rs.BytesAhoCorasick(encoded, matchkind=ahocorasick_rs.MATCHKIND_STANDARD,
                                                    implementation=kind)
        return _Compiled(automaton, list(map(len, keys)), list(keys.values()), phrases, regexes,
                         [index for index, compiled in enumerate(regexes) if compiled.atoms is None])

    @staticmethod
    def _add_phrase(keys: dict[str, list[tuple[str, int]]], phrases: list[tuple[int, regex.Pattern]],
                    words: list[str], rule_index: int) -> None:
        # One of its words (the longest uncommon one) gates a pattern with any separators between
        # the words. The pattern starts with that word, so that it can be tried where the word is;
        # the words before it are matched backwards, in a look-behind whose group gives the start of
        # the match. Spelled out letter by letter ("p i p e b o m b") the phrase normalises to one
        # word, matched as such.
        gate_index = max(range(len(words)), key=lambda i: (words[i] not in _COMMON_WORDS, len(words[i])))
        gate = words[gate_index]
        head = "".join(f"{word}{_GAP}" for word in words[:gate_index]) + gate
        tail = "".join(f"{_GAP}{word}" for word in words[gate_index + 1:])
        phrases.append((rule_index, regex.compile(rf"{gate}(?<=(?<![a-z0-9])(?P<head>{head})){tail}(?![a-z0-9])")))
        keys.setdefault(gate, []).append(("phrase", len(phrases) - 1))
        keys.setdefault("".join(words), []).append(("literal", rule_index))

    @property
    def slow_patterns(self) -> list[tuple[str, str]]:
        """(rule id, pattern) of every regex without literal atoms: it runs on every text."""
        return [(self.rules[r.rule].id, r.source) for r in self._compiled.regexes if r.atoms is None]

    def scan(self, text: str | NormalizedText) -> list[Match]:
        """Every match of every rule in every view of `text` (see filters.views), once per rule and
        span of `text`, in the order of the spans. Text already normalised is scanned as it is."""
        if isinstance(text, NormalizedText):
            found, _ = self._scan_view(View("text", text.text, text.original_span), self._compiled, text.original)
        else:
            found = self._scan_text(text, depth=0)
        kept: dict[tuple[str, int, int], Match] = {}
        for match in found:
            kept.setdefault((match.rule_id, match.original_start, match.original_end), match)
        return sorted(kept.values(), key=lambda match: (match.original_start, match.original_end, match.rule_id))

    def _scan_text(self, text: str, depth: int) -> list[Match]:
        views = TextViews(text)
        found, reversed_key_seen = self._scan_view(views.base, self._compiled, text)
        for view in (*views.leet(), views.joined()):
            if view is not None:
                found += self._scan_view(view, self._compiled, text)[0]
        for view in (views.reversed() if reversed_key_seen else None, self._recomposer.view(views.base)):
            if view is not None:
                found += [match for match in self._scan_view(view, self._compiled, text)[0]
                          if match.end - match.start >= MIN_REORDERED_MATCH]
        if self._pinyin is not None and (spelled := self._pinyin_gate.view(views.base)) is not None:
            found += self._scan_view(spelled, self._pinyin, text)[0]
        if depth < MAX_DECODE_DEPTH:
            found += self._scan_decoded(text, depth)
        return found

    def _scan_decoded(self, text: str, depth: int) -> list[Match]:
        """Matches in the text's entity- and percent-decoded form and in its base64 and hex runs,
        each reported on the encoded span of `text`."""
        found = []
        entities = decoded(text)
        if entities is not None:
            inner, edits = entities
            found += [_carried(match, edits.back, "decoded", text) for match in self._scan_text(inner, depth + 1)]
        runs = list(encoded_runs(text))
        if runs:
            # One scan for all runs (a text of many short runs pays one scan, not one each); a line
            # break between them, where no phrase or regex of one run can go on into the next.
            inner = "\n".join(decoded_run for _, _, decoded_run, _ in runs)
            starts = list(accumulate((len(decoded_run) + 1 for _, _, decoded_run, _ in runs[:-1]), initial=0))

            def back(start: int, end: int) -> tuple[int, int]:
                first, last = bisect_right(starts, start) - 1, bisect_right(starts, end - 1) - 1
                return runs[first][0], runs[last][1]

            for match in self._scan_text(inner, depth + 1):
                kind = runs[bisect_right(starts, match.original_start) - 1][3]
                found.append(_carried(match, back, kind, text))
        return found

    def _scan_view(self, view: View, compiled: _Compiled, text: str) -> tuple[list[Match], bool]:
        """The matches in one view, and whether a key occurred backwards."""
        folded = view.text
        matches: list[Match] = []
        reversed_key_seen = False
        candidates: dict[int, list[tuple[int, int]]] = {index: [] for index in compiled.always}
        for key, start, end in self._hits(compiled, folded):
            for kind, index in compiled.payloads[key]:
                if kind == "regex":
                    candidates.setdefault(index, []).append((start, end))
                elif kind == "reversed":
                    reversed_key_seen = True
                elif not _whole_word(folded, start, end):
                    continue
                elif kind == "literal":
                    matches.append(self._match(index, view, text, start, end))
                else:
                    rule_index, pattern = compiled.phrases[index]
                    hit = pattern.match(folded, start)
                    if hit is not None:
                        matches.append(self._match(rule_index, view, text, hit.start("head"), hit.end()))
        for index in sorted(candidates):
            compiled_regex = compiled.regexes[index]
            for window_start, window_end in _windows(candidates[index], compiled_regex.reach, len(folded)):
                for hit in compiled_regex.pattern.finditer(folded, window_start, window_end):
                    if hit.end() > hit.start():
                        matches.append(self._match(compiled_regex.rule, view, text, hit.start(), hit.end()))
        return [match for match in matches if not self._allowed(match, folded)], reversed_key_seen

    @staticmethod
    def _hits(compiled: _Compiled, folded: str) -> list[tuple[int, int, int]]:
        """(key, start, end) of every key in `folded`, in characters, in the order of their ends."""
        encoded = folded.encode("utf-8", "surrogatepass")
        hits = compiled.automaton.find_matches_as_indexes(encoded, overlapping=True)
        if len(encoded) == len(folded):  # ASCII: a byte is a character
            return hits
        # Byte offsets → character offsets, in one pass over the hits. A key is whole UTF-8
        # characters, and UTF-8 never matches in the middle of a character.
        lengths, result, chars, last = compiled.key_lengths, [], 0, 0
        for key, _, byte_end in hits:
            chars += len(encoded[last:byte_end].decode("utf-8", "surrogatepass"))
            last = byte_end
            result.append((key, chars - lengths[key], chars))
        return result

    def _match(self, rule_index: int, view: View, text: str, start: int, end: int) -> Match:
        rule = self.rules[rule_index]
        original_start, original_end = view.back(start, end)
        return Match(rule.id, rule.category, rule.action, start, end, original_start, original_end,
                     text[original_start:original_end], view.name)

    def _allowed(self, match: Match, folded: str) -> bool:
        for phrase in self._allow[self._index_by_id[match.rule_id]]:
            search_from = max(0, match.end - len(phrase))
            position = folded.find(phrase, search_from, match.start + len(phrase))
            while position != -1:
                if position <= match.start and position + len(phrase) >= match.end:
                    return True
                position = folded.find(phrase, position + 1, match.start + len(phrase))
        return False


def _carried(match: Match, back: Callable[[int, int], tuple[int, int]], kind: str, text: str) -> Match:
    """A match found in a text decoded from `text`, on the span of `text` it was decoded from."""
    start, end = back(match.original_start, match.original_end)
    view = kind if match.view == "text" else f"{kind}/{match.view}"
    return replace(match, original_start=start, original_end=end, matched=text[start:end], view=view)


def _in_pinyin(literals: list[tuple[int, str]], sources: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The Chinese literals (in their matching form) and regexes of the rules as patterns over pinyin
    syllables, where they are long enough (`MIN_SYLLABLES`) and made of Chinese characters only."""
    spelled = []
    for index, key in literals:
        if all(is_cjk(char) for char in key) and syllable_count(key) >= MIN_SYLLABLES:
            pattern = transliterate(regex.escape(key), spell, is_cjk)
            if pattern is not None:
                spelled.append((index, pattern))
    for index, source in sources:
        pattern = transliterate(fold(source), spell, is_cjk)
        if pattern is not None and _shortest(source) >= MIN_SYLLABLES:
            spelled.append((index, pattern))
    return spelled


def _shortest(source: str) -> int:
    try:
        return syntax.match_widths(for_analysis(source))[0]
    except (re.error, OverflowError, RecursionError, ValueError):
        return 0


def _cjk_chars(literals: list[tuple[int, str]], sources: list[tuple[int, str]]) -> set[str]:
    text = "".join(key for _, key in literals) + "".join(fold(source) for _, source in sources)
    return {char for char in text if is_cjk(char)}


def _windows(atom_spans: list[tuple[int, int]], reach: int | None, length: int) -> list[tuple[int, int]]:
    """Where a regex can match: around its atoms' hits as far as it reaches (merged, in order), or
    the whole text. Matches in separate windows cannot overlap, so searching each window finds
    what one search over the text would."""
    if reach is None or not atom_spans:
        return [(0, length)]
    windows: list[tuple[int, int]] = []
    for start, end in sorted(atom_spans):
        window = (max(0, start - reach), min(length, end + reach))
        if windows and window[0] <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(windows[-1][1], window[1]))
        else:
            windows.append(window)
    return windows


def _whole_word(text: str, start: int, end: int) -> bool:
    """Latin terms match whole words only; CJK terms anywhere."""
    if _is_word_char(text[start]) and start > 0 and _is_word_char(text[start - 1]):
        return False
    return not (_is_word_char(text[end - 1]) and end < len(text) and _is_word_char(text[end]))
