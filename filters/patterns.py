"""Rewriting blacklist regexes at compile time: separators between words, whole-word edges, and
Chinese characters spelled as pinyin syllables.

A small tokenizer reads a `regex` (V1) source into literal characters, escapes, character sets,
groups, quantifiers and other syntax, so that a rewrite touches only what it means to: a space
inside a set (`[ -]`), an escaped space in a quantifier-bearing position or a `{2,3}` are each
seen for what they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# A run of separators of any kind (spaces, punctuation, symbols such as emoji) or none at all:
# what a space between two words of a rule stands for.
SEPARATORS_OR_NONE = r"[\p{P}\p{S}\s]*"
# ... and at least one, where the space is followed by something that is not a word ("mix .{0,40}"
# must not match inside "mixture").
SEPARATORS = r"[\p{P}\p{S}\s]+"
# The same for `re`'s parser, which works out a regex's literal atoms and reach: any run of
# non-word characters, counted as at most this many characters wide when the reach is measured.
SEPARATOR_REACH = 64
_ANALYSIS_SEPARATORS = rf"\W{{0,{SEPARATOR_REACH}}}"
# Latin words match whole (as literals do): no match starts or ends between two ASCII letters or
# digits. Inside the pattern, so that backtracking can pick another alternative ("meth" in
# "methamphetamine" fails, "methamphetamine" matches).
WORD_EDGE = r"(?!(?<=[a-z0-9])[a-z0-9])"

_QUANTIFIER = re.compile(r"(?:[?*+]|\{\d*(?:,\d*)?\})[?+]?")
_GROUP_OPEN = re.compile(r"\(\?(?:#[^)]*\)|P?<[^=!>][^>]*>|P=[^)]*\)|<[=!]|[=!>|]|\(|[a-zA-Z-]*[:)])|\(")
_ESCAPE = re.compile(r"\\(?:[pPNgk]\{[^}]*\}|[pP][A-Za-z]|[gk]<[^>]*>|x[0-9a-fA-F]{2}|x\{[0-9a-fA-F]+\}"
                     r"|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|0[0-7]{0,2}|[1-9][0-9]?|.)", re.DOTALL)
_VERBOSE = re.compile(r"\(\?[a-zA-Z]*x")


@dataclass(frozen=True)
class Token:
    kind: str  # literal, escape, set, quantifier, group, meta
    text: str


def tokens(source: str) -> Iterator[Token]:
    position = 0
    while position < len(source):
        char = source[position]
        if char == "\\":
            match = _ESCAPE.match(source, position)
            end = match.end() if match else len(source)
            yield Token("escape", source[position:end])
        elif char == "[":
            end = _set_end(source, position)
            yield Token("set", source[position:end])
        elif char == "(":
            end = _GROUP_OPEN.match(source, position).end()
            yield Token("group", source[position:end])
        elif (match := _QUANTIFIER.match(source, position)) is not None:
            end = match.end()
            yield Token("quantifier", source[position:end])
        elif char in ".^$|)":
            end = position + 1
            yield Token("meta", char)
        else:
            end = position + 1
            yield Token("literal", char)
        position = end


def _set_end(source: str, start: int) -> int:
    """Where the set opened at `start` ends (sets nest in V1 syntax: `[[a-z]--[aeiou]]`)."""
    position, depth = start + 1, 1
    if source.startswith("^", position):
        position += 1
    if source.startswith("]", position):
        position += 1  # a leading ']' is a literal
    while position < len(source) and depth:
        char = source[position]
        if char == "\\":
            position += 1
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        position += 1
    return position


def _is_space(token: Token) -> bool:
    return (token.kind == "literal" and token.text == " ") or (token.kind == "escape" and token.text in ("\\ ", "\\s"))


def _rewrite_spaces(source: str, or_none: str, at_least_one: str) -> str:
    if _VERBOSE.search(source):
        return source  # spaces are not literal there
    listed = list(tokens(source))
    out: list[str] = []
    index = 0
    while index < len(listed):
        token = listed[index]
        index += 1
        if not _is_space(token):
            out.append(token.text)
            continue
        while index < len(listed) and (listed[index].kind == "quantifier" or _is_space(listed[index])):
            index += 1  # "  ", " +", " ?": one run of separators covers them
        following = listed[index] if index < len(listed) else None
        before_word = following is None or following.kind in ("literal", "group") or following.text in "|)"
        out.append(or_none if before_word else at_least_one)
    return "".join(out)


def with_separators(source: str) -> str:
    """`source` with each space between words (' ', '\\ ', '\\s', with any quantifier) standing for
    any run of separators, or none where a word follows ("cook meth" matches "cook_meth",
    "cook  meth", "cookmeth")."""
    return _rewrite_spaces(source, SEPARATORS_OR_NONE, SEPARATORS)


def for_analysis(source: str) -> str:
    """The same rewrite in `re` syntax, for working out literal atoms and reach."""
    return _rewrite_spaces(source, _ANALYSIS_SEPARATORS, _ANALYSIS_SEPARATORS)


def whole_words(source: str) -> str:
    return f"{WORD_EDGE}(?:{source}){WORD_EDGE}"


def transliterate(source: str, spell: Callable[[str], str | None], is_foreign: Callable[[str], bool]) -> str | None:
    """`source` with every character for which `is_foreign` holds replaced by `spell(char)` (a
    pattern matching its spellings), inside sets too; None when a character cannot be spelled or
    the pattern has a letter or digit of its own (it is not made of such characters only)."""
    out: list[str] = []
    for token in tokens(source):
        if token.kind == "literal" and is_foreign(token.text):
            spelled = spell(token.text)
            if spelled is None:
                return None
            out.append(spelled)
        elif token.kind == "literal" and token.text.isalnum():
            return None
        elif token.kind == "set" and any(is_foreign(char) for char in token.text):
            spelled_set = _transliterate_set(token.text, spell, is_foreign)
            if spelled_set is None:
                return None
            out.append(spelled_set)
        else:
            out.append(token.text)
    return "".join(out)


def _transliterate_set(text: str, spell: Callable[[str], str | None], is_foreign: Callable[[str], bool]) -> str | None:
    body = text[1:-1]
    negated = body.startswith("^")
    if negated or "-" in body or "[" in body or "\\" in body:
        return None  # ranges, negations and nested sets of ideographs have no finite spelling here
    alternatives = []
    for char in body:
        if not is_foreign(char):
            return None
        spelled = spell(char)
        if spelled is None:
            return None
        alternatives.append(spelled)
    return "(?:" + "|".join(alternatives) + ")"
